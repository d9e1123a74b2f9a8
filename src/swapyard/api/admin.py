"""Read-only admin routes: swapyard's health and each engine's state and logs."""

from __future__ import annotations

import time

from aiohttp import web

from swapyard.api.state import STATE
from swapyard.errors import UnknownModel


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    router = state.router
    models = {}
    for mid, engine in router.engines.items():
        snap = engine.snapshot()
        snap["in_flight"] = router.scheduler.inflight(mid)
        snap["queued"] = router.scheduler.queued(mid)
        models[mid] = snap
    return web.json_response(
        {"status": "ok", "uptime_s": round(time.time() - state.started_at, 3), "models": models}
    )


async def logs(request: web.Request) -> web.Response:
    """The engine's last output lines (``?lines=N``, default 200) as text or JSON."""
    state = request.app[STATE]
    model = state.config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel(request.match_info["model"], list(state.config.models))
    n = int(request.query.get("lines", "200"))
    lines = state.router.engines[model].logs.tail(n)
    if "application/json" in request.headers.get("Accept", ""):
        return web.json_response({"model": model, "lines": lines})
    return web.Response(text="\n".join(lines) + ("\n" if lines else ""))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/api/models/{model}/logs", logs)
