"""What the request handlers share, built by the lifespan."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from swapyard.config import Config
from swapyard.events import EventBus
from swapyard.router import Router


@dataclass(slots=True)
class AppState:
    config: Config
    bus: EventBus
    http: aiohttp.ClientSession
    router: Router
    started_at: float = field(default_factory=time.time)
    shutdown_deadline: float | None = None


STATE = web.AppKey("swapyard_state", AppState)
CONFIG = web.AppKey("swapyard_config", Config)
