"""Frozen event dataclasses and the in-process bus they travel on.

Events are the spine (house style 10): the process actors publish state changes,
the router publishes request admission/finish and swaps; the router itself, and
later metrics, the usage store and the dashboard, subscribe. ``publish`` never
blocks and never raises into the publisher.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

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


Event = EngineStateChanged | SwapStarted | RequestAdmitted | RequestFinished


class Subscription:
    """An unbounded queue of the events published after it was created."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def _put(self, event: Event) -> None:
        self._queue.put_nowait(event)

    async def get(self) -> Event:
        return await self._queue.get()

    def get_nowait(self) -> Event | None:
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def close(self) -> None:
        self._bus._subs.discard(self)

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()


class EventBus:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` synchronously on every event (it must not block or raise)."""
        self._listeners.append(fn)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        self._subs.add(sub)
        return sub

    def publish(self, event: Event) -> None:
        for fn in self._listeners:
            fn(event)
        for sub in tuple(self._subs):
            sub._put(event)
