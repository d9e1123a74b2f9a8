"""What the router's run loop receives: requests coming and going, timers, admin
commands and measurements (engine state changes arrive as events)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from swapyard.events import EngineStateChanged

if TYPE_CHECKING:
    from swapyard.config import Config
    from swapyard.reload import ConfigDiff


@dataclass(frozen=True, slots=True)
class Arrive:
    request_id: int
    model: str
    client: str = ""


@dataclass(frozen=True, slots=True)
class Leave:
    """A request left: answered, failed, or its client went away (queued or running)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Idle:
    model: str
    token: int


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class Load:
    model: str


@dataclass(frozen=True, slots=True)
class Unload:
    model: str


@dataclass(frozen=True, slots=True)
class Pin:
    model: str
    pinned: bool


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A client's keep_alive for ``model`` (seconds; 0: stop once idle; < 0: keep)."""

    model: str
    ttl: float


@dataclass(frozen=True, slots=True)
class Measured:
    """What an engine's process group was measured to hold once ready (or, with
    ``asleep``, once asleep)."""

    model: str
    nbytes: int
    asleep: bool = False
    gpu: bool = True  # NVML's figure (else resident memory)
    pid: int | None = None  # the engine measured (a reload may have replaced it since)


@dataclass(frozen=True, slots=True)
class Refresh:
    """Time to read the GPUs again (what other processes hold changes on its own)."""


@dataclass(frozen=True, slots=True)
class Reload:
    """Apply a new (validated) config; the reply says what changed."""

    config: Config = field(repr=False)
    reply: asyncio.Future[ConfigDiff] = field(repr=False)


Message = (
    Arrive
    | Leave
    | Idle
    | Tick
    | Load
    | Unload
    | Pin
    | KeepAlive
    | Measured
    | Refresh
    | Reload
    | EngineStateChanged
)
