"""What the request handlers share, built by the lifespan."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from swapyard.config import Config
from swapyard.events import EventBus
from swapyard.peers.registry import Peers
from swapyard.process.logring import LogRing
from swapyard.surface import RouterSurface
from swapyard.usage.feed import Broadcast
from swapyard.usage.metrics import Metrics
from swapyard.usage.store import UsageStore
from swapyard.watch import Watches


@dataclass(slots=True)
class AppState:
    config: Config
    bus: EventBus
    http: aiohttp.ClientSession
    router: RouterSurface
    metrics: Metrics
    broadcast: Broadcast
    usage: UsageStore | None = None
    log: LogRing = field(default_factory=LogRing)
    started_at: float = field(default_factory=time.time)
    shutdown_deadline: float | None = None
    keep_engines: bool = False  # SIGUSR2: shut down, leave the engines for the next swapyard
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # ends live streams
    watches: Watches = field(default_factory=Watches)  # proxied requests, for shutdown
    peers: Peers | None = None  # issue 15: other swapyards, when the config names some
    # Issue 15: this running swapyard's id in the X-Swapyard-Via of requests it
    # sends to peers (a request that comes back with it went round a loop).
    instance: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


STATE = web.AppKey("swapyard_state", AppState)
# Set by auth on each request: the caller's key name, and the models it may use
# (absent: all of them).
KEY_NAME = web.RequestKey("swapyard_key_name", str)
KEY_MODELS = web.RequestKey("swapyard_key_models", frozenset)
# Issue 15: the host that served the request ("local" or a peer's name), sent as
# the X-Swapyard-Host header.
KEY_HOST = web.RequestKey("swapyard_host", str)
# Issue 15: the answer's head went out (no fallback, no failover from now on).
BEGUN = web.RequestKey("swapyard_answer_begun", bool)
CONFIG = web.AppKey("swapyard_config", Config)
ROUTER = web.AppKey("swapyard_router", RouterSurface)  # given instead of built (tests)
