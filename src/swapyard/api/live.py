"""Operator routes fed by events: ``/metrics``, the usage store's queries, and live
streams (server-sent events) of engine logs, swapyard's own log and events."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from swapyard import sse
from swapyard.api.state import STATE
from swapyard.config import parse_duration
from swapyard.errors import NotFound, RequestError, clip
from swapyard.process.logring import LogRing
from swapyard.usage.metrics import CONTENT_TYPE

KEEPALIVE = 15.0


async def sse_stream(
    request: web.Request,
    history: list[str],
    queue: asyncio.Queue[Any],
    done: Callable[[], None],
) -> web.StreamResponse:
    """History lines as events, then whatever arrives on ``queue`` until the client
    goes away or swapyard shuts down (a comment every 15 s keeps proxies from
    closing it)."""
    closing = request.app[STATE].closing
    out = web.StreamResponse(headers=sse.HEADERS)
    await out.prepare(request)
    try:
        for item in history:
            await out.write(sse.frame(item))
        while not closing.is_set():
            getter = asyncio.ensure_future(queue.get())
            stop = asyncio.ensure_future(closing.wait())
            finished, _ = await asyncio.wait(
                {getter, stop}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
            )
            stop.cancel()
            if getter not in finished:
                getter.cancel()
                if not finished:
                    await out.write(sse.KEEPALIVE)
                continue
            await out.write(sse.frame(getter.result()))
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        done()
    return out


def query_count(request: web.Request, name: str, default: int) -> int:
    """The query parameter ``name`` as a count (0 or more); 400 naming it when it
    is not one (it was a 500, issue 11)."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise RequestError(f"?{name}={clip(raw)!r}: expected a whole number, 0 or more",
                           param=name)  # fmt: skip
    return value


async def ring_response(request: web.Request, ring: LogRing, name: str) -> web.StreamResponse:
    """A log ring's last ``?lines=N`` (default 200) as text, or JSON with ``Accept:
    application/json``; ``?follow=1`` streams them and every new line (SSE)."""
    n = query_count(request, "lines", 200)
    if request.query.get("follow") in ("1", "true"):
        q = ring.follow()
        return await sse_stream(request, ring.tail(n), q, lambda: ring.unfollow(q))
    lines = ring.tail(n)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"model": name, "lines": lines})
    return web.Response(text="\n".join(lines) + ("\n" if lines else ""))


async def metrics(request: web.Request) -> web.Response:
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _since(request: web.Request) -> float:
    raw = request.query.get("since")
    if not raw:
        return 0.0
    try:
        value = float(raw)
        if not math.isfinite(value):
            raise ValueError(raw)
    except ValueError:
        try:
            return time.time() - parse_duration(raw)
        except ValueError:
            raise RequestError(f"?since={clip(raw)!r}: expected a duration like 1h or 7d, "
                               "or a Unix time", param="since") from None  # fmt: skip
    return value if value > 10**8 else time.time() - value  # a Unix time, or seconds ago


def _store(request: web.Request) -> Any:
    store = request.app[STATE].usage
    if store is None:
        raise NotFound("the usage store is off (usage.enabled: false)")
    return store


async def usage(request: web.Request) -> web.Response:
    """``?since=1h|<unix time>&by=model|key``: totals from the usage store."""
    store = _store(request)
    await store.flush()
    by = request.query.get("by", "model")
    if by not in ("model", "key"):
        raise RequestError(f"?by={clip(by)!r}: expected model or key", param="by")
    rows = store.summary(_since(request), by)
    return web.json_response({"by": by, "since": _since(request), "rows": rows})


async def requests_recent(request: web.Request) -> web.Response:
    store = _store(request)
    await store.flush()
    limit = min(1000, query_count(request, "limit", 50))
    rows = store.recent(limit, request.query.get("model"))
    return web.json_response({"requests": rows})


async def events(request: web.Request) -> web.StreamResponse:
    """Live events (state changes, swaps, admissions, finished requests); with
    ``?history=N``, the last N stored requests first."""
    state = request.app[STATE]
    n = query_count(request, "history", 0)
    q = state.broadcast.subscribe()
    history: list[Any] = []
    if n and state.usage is not None:
        await state.usage.flush()
        history = [{"type": "request", **r} for r in reversed(state.usage.recent(n))]
    return await sse_stream(request, history, q, lambda: state.broadcast.unsubscribe(q))


async def own_logs(request: web.Request) -> web.StreamResponse:
    """swapyard's own log, as ``ring_response`` serves it."""
    return await ring_response(request, request.app[STATE].log, "swapyard")


DASHBOARD = Path(__file__).parent / "static" / "dashboard.html"


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard: one static page shipped in the package, no build step."""
    return web.Response(body=DASHBOARD.read_bytes(), content_type="text/html", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", dashboard)
    app.router.add_get("/dashboard", dashboard)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/usage", usage)
    app.router.add_get("/api/requests", requests_recent)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/logs", own_logs)


class RingHandler(logging.Handler):
    """A ``logging`` handler that keeps swapyard's own log lines in a ring."""

    def __init__(self, ring: LogRing) -> None:
        super().__init__()
        self.ring = ring
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.ring.append(self.format(record))
        except Exception:
            self.handleError(record)
