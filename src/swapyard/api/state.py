"""What the request handlers share, built by the lifespan."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from swapyard.config import Config
from swapyard.events import EventBus
from swapyard.process.logring import LogRing
from swapyard.router import Router
from swapyard.usage.metrics import Metrics
from swapyard.usage.store import UsageStore

if TYPE_CHECKING:
    from swapyard.api.live import Broadcast


@dataclass(slots=True)
class AppState:
    config: Config
    bus: EventBus
    http: aiohttp.ClientSession
    router: Router
    metrics: Metrics
    broadcast: Broadcast
    usage: UsageStore | None = None
    log: LogRing = field(default_factory=LogRing)
    started_at: float = field(default_factory=time.time)
    shutdown_deadline: float | None = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # ends live streams


STATE = web.AppKey("swapyard_state", AppState)
# Set by auth on each request: the caller's key name, and the models it may use
# (absent: all of them).
KEY_NAME = web.RequestKey("swapyard_key_name", str)
KEY_MODELS = web.RequestKey("swapyard_key_models", frozenset)
CONFIG = web.AppKey("swapyard_config", Config)
