"""Admin routes: health, the resident set, load/unload/pin, and engine logs.

``/health`` is open (no key), so it says states only: no log line, no command
line, no upstream URL (a remote engine's may carry a ``${env.*}`` secret), and
for the last failure only its code (issue 11). The keyed ``/api/models`` shows
each failure whole, its last log lines included. Load, unload, pin and logs of a
model only a peer serves are that peer's, asked with its admin key — for a
caller with this host's own admin key only (issue 15)."""

from __future__ import annotations

import contextlib
import hmac
import time

import aiohttp
from aiohttp import web

from swapyard.api.auth import presented_key
from swapyard.api.live import ring_response
from swapyard.api.state import STATE
from swapyard.config import Timeouts
from swapyard.errors import Forbidden, SwapyardError, UnknownModel, UpstreamUnavailable
from swapyard.peers.listing import peer_json
from swapyard.process.state import EngineState
from swapyard.watch import Watch

_HEALTH_KEYS = ("state", "pid", "state_for_s", "fast_swap", "in_flight", "queued")


async def health(request: web.Request) -> web.Response:
    """swapyard's and each engine's state; ``last_error`` is the failure's code
    (``engine_exited``...), never its text. ``current_models``: the ready ones, the
    latest first; ``current_model``: that one (None when none is ready)."""
    state = request.app[STATE]
    now = time.monotonic()
    models = {}
    snap = state.router.snapshot()
    for mid, m in snap.models.items():
        full = m.as_json(now)
        error = m.engine.last_error
        models[mid] = {k: full[k] for k in _HEALTH_KEYS}
        models[mid]["last_error"] = error.code if error is not None else None
    # Issue 14: what users' own routers say (`jq .current_model`): the ready
    # models, the one that became ready last first.
    ready = sorted(
        (m for m in snap.models.values() if m.state == EngineState.READY),
        key=lambda m: -m.engine.state_since,
    )
    current = [m.id for m in ready]
    return web.json_response({
        "status": "ok", "uptime_s": round(time.time() - state.started_at, 3),
        "current_model": current[0] if current else None, "current_models": current,
        "models": models,
    })  # fmt: skip


def _model_of(request: web.Request) -> str:
    config = request.app[STATE].config
    model = config.resolve(request.match_info["model"])
    if model is None:
        raise UnknownModel(request.match_info["model"], list(config.models))
    return model


async def resident(request: web.Request) -> web.Response:
    """The resident set: each model's state, placement, memory, the arguments
    swapyard added to its command (its memory share) and last failure (code,
    message and its last log lines); each device's budget, what swapyard's models
    hold, what other processes hold (``foreign``) and room; on GPUs the total and
    the processes holding memory as last read. A model with request parameters or
    variants shows them (``params``, ``variants``: each one's over the model's)."""
    state = request.app[STATE]
    snap = state.router.snapshot()
    devices = {
        d.id: {
            "budget": d.budget,
            "used": d.used,
            "foreign": d.foreign,
            "free": d.free,
            "total": d.total,
            "holders": list(d.holders),
        }
        for d in snap.devices.values()
    }
    models = {}
    now = time.monotonic()
    for mid, m in snap.models.items():
        spec = state.config.models.get(mid)  # None: removed by a reload, still stopping
        full = m.as_json(now)
        del full["upstream"]
        name, engine = (spec.name or mid, spec.engine) if spec else (mid, "(removed)")
        models[mid] = {"name": name, "engine": engine, **full}
        if spec is not None and spec.params:
            models[mid]["params"] = spec.params.as_json()
        if spec is not None and spec.variants:
            models[mid]["variants"] = {
                v.id: {"name": v.name, "aliases": list(v.aliases), "params": v.params.as_json()}
                for v in spec.variants.values()
            }
    out = {"devices": devices, "models": models}
    if state.peers is not None:  # issue 15: what each peer last said
        out["peers"] = {n: peer_json(v, now) for n, v in state.peers.views().items()}
    return web.json_response(out)


def _peer_of(request: web.Request) -> str | None:
    """Issue 15: the peer that owns the model the route names, when this host does
    not serve it (an up peer that does; every one down: 502 saying so)."""
    state = request.app[STATE]
    name = request.match_info["model"]
    if state.peers is None or state.config.resolve(name) is not None:
        return None
    hosts = state.peers.hosts_of(name)
    if hosts:
        return hosts[0][0]
    down = state.peers.down_hosts_of(name)
    if down:
        raise UpstreamUnavailable(name, f"peer {down[0].name!r}, which serves {name!r}, "
                                  f"is down: {down[0].error}")  # fmt: skip
    return None


def _check_lending(request: web.Request, peer: str) -> None:
    """Issue 15 review: this host sends an admin call to ``peer`` with the key it
    holds for it only for a caller who showed this host's own admin key; without
    one (``allow_unauthenticated``, loopback without an admin key) anyone could
    use the peer's admin rights. A peer this host holds no key for gets the call
    as the caller sent it (no key): nothing is lent."""
    state = request.app[STATE]
    assert state.peers is not None
    if not state.peers.admin_headers(peer):
        return
    mine = state.config.auth.admin_key
    if mine is None:
        raise Forbidden(
            f"{request.path} is served by peer {peer!r}, and this swapyard forwards "
            "admin calls with the peer's key only to a caller presenting its own admin "
            "key: none is configured here (set auth.admin_key_env)"
        )
    key = presented_key(request)
    if key is None or not hmac.compare_digest(_raw(key), _raw(mine)):
        raise Forbidden(f"{request.path} is served by peer {peer!r}: this swapyard's "
                        "admin key is required to forward it")  # fmt: skip


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


async def _to_peer(request: web.Request, peer: str) -> web.StreamResponse:
    """The same admin call on ``peer``, with its admin key (``_check_lending``);
    its answer piped back: a log follow as it comes, anything else whole.

    Bounded as a data request to the peer is (issue 15 review): by this host's
    ``server`` response/first-byte/idle timeouts (a log follow: only its head),
    and by the peer's watcher: a peer found hung ends the call (``UpstreamUnavailable``,
    502, before its answer began; a follow just ends)."""
    state = request.app[STATE]
    peers = state.peers
    assert peers is not None
    _check_lending(request, peer)
    name = request.match_info["model"]
    url = peers.specs[peer].url + request.path_qs
    headers = {**peers.admin_headers(peer)}
    if "Accept" in request.headers:
        headers["Accept"] = request.headers["Accept"]
    body = await request.read()
    limits = state.config.server.timeouts
    follow = request.path.endswith("/logs") and request.query.get("follow") in ("1", "true")
    if follow:
        limits = Timeouts(response=limits.response, first_byte=0, idle=0)
    watch = Watch(name, limits)
    watches = peers.watches(peer)
    watches.add(watch)
    try:
        try:
            async with watch:
                resp = await state.http.request(request.method, url, headers=headers, data=body)
        except (aiohttp.ClientError, OSError) as exc:
            peers.report_down(peer, str(exc) or type(exc).__name__)
            raise UpstreamUnavailable(name, f"cannot reach peer {peer!r}: {exc}") from exc
        watch.head()
        try:
            whole = None if follow else await _read(resp, watch, name, peer)
            out = web.StreamResponse(status=resp.status)
            for key in ("Content-Type", "Content-Encoding", "Cache-Control"):
                if key in resp.headers:
                    out.headers[key] = resp.headers[key]
            out.headers["X-Swapyard-Host"] = peer
            await out.prepare(request)
            if whole is not None:
                await out.write(whole)
            else:  # the follow ends where the peer's does, or when it is found hung
                with contextlib.suppress(aiohttp.ClientError, OSError, SwapyardError):
                    while True:
                        async with watch:
                            chunk = await resp.content.readany()
                        if not chunk:
                            break
                        watch.last = watch.now()
                        await out.write(chunk)
            await out.write_eof()
            return out
        finally:
            resp.close()
    finally:
        watch.close()
        watches.discard(watch)


async def _read(resp: aiohttp.ClientResponse, watch: Watch, name: str, peer: str) -> bytes:
    """A peer's whole answer, under ``watch``'s deadlines."""
    parts: list[bytes] = []
    try:
        while True:
            async with watch:
                chunk = await resp.content.readany()
            if not chunk:
                return b"".join(parts)
            watch.last = watch.now()
            parts.append(chunk)
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamUnavailable(name, f"peer {peer!r} broke off its answer: {exc}") from exc


async def load(request: web.Request) -> web.StreamResponse:
    if (peer := _peer_of(request)) is not None:
        return await _to_peer(request, peer)
    model = _model_of(request)
    result = await request.app[STATE].router.load(model)
    return web.json_response({"model": model, "state": str(result)})


async def unload(request: web.Request) -> web.StreamResponse:
    if (peer := _peer_of(request)) is not None:
        return await _to_peer(request, peer)
    model = _model_of(request)
    result = await request.app[STATE].router.unload(model)
    return web.json_response({"model": model, "state": str(result)})


async def pin(request: web.Request) -> web.StreamResponse:
    if (peer := _peer_of(request)) is not None:
        return await _to_peer(request, peer)
    model = _model_of(request)
    pinned = request.match_info["verb"] == "pin"
    result = await request.app[STATE].router.pin(model, pinned)
    return web.json_response({"model": model, "pinned": pinned, "state": str(result)})


async def logs(request: web.Request) -> web.StreamResponse:
    """The engine's last output lines (``?lines=N``, default 200) as text or JSON;
    ``?follow=1`` streams them and every new line (server-sent events)."""
    if (peer := _peer_of(request)) is not None:
        return await _to_peer(request, peer)
    model = _model_of(request)
    return await ring_response(request, request.app[STATE].router.logs(model), model)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/api/models", resident)
    app.router.add_get("/api/models/{model}/logs", logs)
    app.router.add_post("/api/models/{model}/load", load)
    app.router.add_post("/api/models/{model}/unload", unload)
    app.router.add_post("/api/models/{model}/{verb:pin|unpin}", pin)
