"""Frozen event dataclasses and the in-process bus they travel on.

Events are the spine (house style 10): the process actors publish state changes,
the router publishes request admission/finish and swaps; the router listens, and
later metrics, the usage store and the dashboard will. ``publish`` calls each
listener synchronously; listeners must not block.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from swapyard.errors import SwapyardError
from swapyard.process.state import EngineState
from swapyard.usage.meter import RequestRecord


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


@dataclass(frozen=True, slots=True)
class SwapStarted:
    """The scheduler decided to stop ``old`` (may be None) to make room for ``new``."""

    new: str
    old: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RequestAdmitted:
    request_id: int
    model: str
    waited: float
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RequestFinished:
    request_id: int
    model: str
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class RequestCompleted:
    """A proxied request's figures (``swapyard.usage.meter.RequestRecord``), once
    its answer has been sent (or failed)."""

    record: RequestRecord
    at: float = field(default_factory=time.monotonic)


Event = EngineStateChanged | SwapStarted | RequestAdmitted | RequestFinished | RequestCompleted


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` synchronously on every event (it must not block or raise)."""
        self._listeners.append(fn)

    def publish(self, event: Event) -> None:
        for fn in self._listeners:
            fn(event)
