"""Events as the dashboard and ``GET /api/events`` see them, fanned out to live
subscribers (each an SSE stream in ``api/live.py``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from swapyard.events import (
    EngineStateChanged,
    Event,
    EventBus,
    RequestAdmitted,
    RequestFinished,
    SwapStarted,
)


def event_json(ev: Event) -> dict[str, Any] | None:
    """An event as the dashboard and ``GET /api/events`` see it."""
    now = time.time()
    if isinstance(ev, EngineStateChanged):
        err = ev.error.message if ev.error else None
        return {"type": "state", "at": now, "model": ev.model, "old": str(ev.old),
                "new": str(ev.new), "error": err}  # fmt: skip
    if isinstance(ev, SwapStarted):
        return {"type": "swap", "at": now, "model": ev.old, "for": ev.new}
    if isinstance(ev, RequestAdmitted):
        return {"type": "admitted", "at": now, "model": ev.model, "waited_s": ev.waited}
    if isinstance(ev, RequestFinished):
        return {"type": "request", **ev.record.as_dict()}
    return None


class Broadcast:
    """Fans events out to live subscribers; a slow one loses events, never blocks."""

    def __init__(self, bus: EventBus) -> None:
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()
        bus.add_listener(self._on_event)

    def _on_event(self, ev: Event) -> None:
        if not self._subs:
            return
        doc = event_json(ev)
        if doc is None:
            return
        for q in tuple(self._subs):
            if not q.full():
                q.put_nowait(doc)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(1000)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subs.discard(q)
