"""Frozen event dataclasses and the in-process bus they travel on.

Events are the spine (house style 10): the process actors publish state changes,
the router publishes swaps and admissions, the API publishes each finished
request with its figures. The router, metrics, the usage store and the live
stream listen. ``publish`` calls each listener synchronously; listeners must not
block. This module depends on nothing but the error tree and the state names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from swapyard.errors import SwapyardError
from swapyard.process.state import EngineState


@dataclass(frozen=True, slots=True)
class EngineStateChanged:
    model: str
    old: EngineState
    new: EngineState
    error: SwapyardError | None = None
    pid: int | None = None
    at: float = field(default_factory=time.monotonic)
    # On ``ready``: seconds since the start (or wake) began, and whether it woke.
    load_s: float | None = None
    woke: bool = False
    port: str | None = None  # the engine's port, when it has one of ours
    exit_code: int | None = None  # when the change is the process exiting
    retry_in: float | None = None  # on ``backoff``: seconds until it may start again
    reason: str | None = None  # why, in a few words ("adopted", "idle", "crash", ...)


@dataclass(frozen=True, slots=True)
class EngineReaped:
    """An engine a previous swapyard left running was stopped (group and all):
    its config changed, it was unhealthy, or no model claims it any more."""

    model: str
    pid: int
    reason: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """A config reload was applied (``error`` None) or refused (nothing changed)."""

    source: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    error: str | None = None
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class SwapStarted:
    """The scheduler decided to stop ``old`` (may be None) to make room for ``new``;
    ``mode`` is how ``old`` goes: its fast swap ("sleep", "unload"...) or "stop"."""

    new: str
    old: str | None
    mode: str = "stop"
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RequestAdmitted:
    request_id: int
    model: str
    waited: float
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One proxied request's figures, as the usage store, metrics and headers see
    them. Built once, by ``swapyard.usage.meter.Metering.final``."""

    request_id: int
    model: str
    engine: str
    path: str
    status: int
    stream: bool
    key: str | None = None  # the API key's name, or a fingerprint; never the key
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_counted: bool = False  # True: counted here, the engine sent no usage
    ttft_s: float | None = None
    tok_s: float | None = None
    total_s: float = 0.0
    wait_s: float = 0.0
    loaded: bool = False  # waited for its model to load
    error: str | None = None
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """A proxied request is over (answered, failed, or its client went away)."""

    record: RequestRecord
    at: float = field(default_factory=time.monotonic)


Event = (
    EngineStateChanged
    | EngineReaped
    | ConfigReloaded
    | SwapStarted
    | RequestAdmitted
    | RequestFinished
)


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` synchronously on every event (it must not block or raise)."""
        self._listeners.append(fn)

    def publish(self, event: Event) -> None:
        for fn in self._listeners:
            fn(event)
