"""The Ollama API on swapyard's own port, over every engine kind (issue 14).

Apps written for Ollama point at swapyard as they would at Ollama
(``OLLAMA_HOST=http://host:8080``) and see swapyard's models:

- ``/api/version``; ``/api/tags`` (the models every list shows, ``Config.listing``),
  ``/api/ps`` (those loaded or asleep), ``/api/show``: from the config, the model
  file (``ollama_info``) and the router's snapshot.
- ``/api/chat`` and ``/api/generate`` become chat (or text) completions for the
  engine (``ollama_convert``), its answer NDJSON or one JSON object
  (``ollama_reply``), through ``exchange.serve`` as every front's requests go.
  A request without messages or prompt loads the model (``keep_alive: 0``:
  unloads it), as Ollama's clients use it.
- ``/api/embed`` and ``/api/embeddings`` → ``/v1/embeddings``.
- ``keep_alive`` on any of them goes to the router (``RouterSurface.keep_alive``)
  once the request is done: 0 stops the model once idle, a duration is its idle
  TTL, a negative one (or one past Ollama's largest, 292 years) keeps it loaded;
  one that is no finite number is a 400.
- Issue 15: a virtual id and a peer's model are names as good as this host's,
  in the lists (``ollama_hosts``) and in requests: each name ``exchange.serve``
  tries (fallbacks, a virtual id's members, a peer) gets the body its engine
  takes (``ollama_shape``). A key with an allow-list sees this host's names only.
- ``/api/pull``, ``/api/push``, ``/api/delete``, ``/api/copy``, ``/api/create``:
  501, saying how models are added.

Ollama clients read errors as ``{"error": "message"}``: every error on these
routes (the key check's included) leaves in that shape with its status and
``Retry-After`` (``ollama_errors``, the outermost middleware).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from swapyard import __version__
from swapyard.api.auth import OLLAMA_ROUTES, check_model_allowed
from swapyard.api.clients import client_of
from swapyard.api.exchange import SERVED, Call, resolve, serve
from swapyard.api.limits import read_body
from swapyard.api.ollama_convert import KEPT_FOR, KEPT_SECONDS, keep_alive_seconds
from swapyard.api.ollama_hosts import first_name, peer_ps, peer_show, peer_tags, virtual_tags
from swapyard.api.ollama_info import EPOCH, capabilities, facts, iso
from swapyard.api.ollama_reply import Clock, Embed, now_iso
from swapyard.api.ollama_shape import Kind, Shape, load_time
from swapyard.api.openai import parse_model
from swapyard.api.state import KEY_HOST, KEY_MODELS, STATE, AppState
from swapyard.errors import InvalidJSON, MissingModel, UnknownModel
from swapyard.peers.listing import LOCAL
from swapyard.process.state import EngineState
from swapyard.resources.context import served_context

Handler = Any
# The Ollama release whose API this front follows; clients compare versions.
OLLAMA_VERSION = "0.12.6"
REFUSED = ("/api/pull", "/api/push", "/api/delete", "/api/copy", "/api/create")


def find(request: web.Request, name: str) -> tuple[str, str]:
    """(the model id, the name to send on) for a name as an Ollama client sends it
    (a model's or a variant's id or alias, also with Ollama's default tag
    ``:latest``), once the key may use it: ``exchange.resolve`` and the key check
    as ``exchange.serve`` makes them (issue 14: a key allowed only a variant was
    refused it). An unknown name lists only what the key may use."""
    config = _state(request).config
    name = _untagged(_state(request), name)
    try:
        model = resolve(config, name)
    except UnknownModel:  # listing what this key may use, not every model
        listed = config.listing(request.get(KEY_MODELS))
        raise UnknownModel(name, [item.id for item in listed]) from None
    variant = config.variant(name)
    check_model_allowed(request, model, None if variant is None else variant.id)
    return model, name


def _known(state: AppState, name: str) -> bool:
    """Whether ``name`` is a model's name here, a virtual id, or a peer's (issue 15)."""
    config, peers = state.config, state.peers
    if config.resolve(name) is not None or name in config.virtual:
        return True
    return peers is not None and bool(peers.hosts_of(name) or peers.down_hosts_of(name))


def _untagged(state: AppState, name: str) -> str:
    """``name`` without Ollama's default tag ``:latest`` unless the name with it is known."""
    if name.endswith(":latest") and not _known(state, name):
        return name.removesuffix(":latest")
    return name


def _target(request: web.Request, doc: dict[str, Any]) -> tuple[str | None, str]:
    """(this host's model, or None for a virtual id or a peer's model, issue 15;
    the name to send on). Those two are checked by ``exchange.serve`` (a peer's
    model is no name for a key with an allow-list); this host's by ``find``."""
    name = doc.get("model") or doc.get("name")  # /api/show took `name` before `model`
    if not isinstance(name, str) or not name:
        raise MissingModel()
    state = _state(request)
    sent = _untagged(state, name)
    if state.config.resolve(sent) is None and (
        sent in state.config.virtual
        or (request.get(KEY_MODELS) is None and state.peers is not None and _known(state, sent))
    ):
        return None, sent
    return find(request, sent)


def expires_at(wall: datetime, ttl: float, idle: float) -> datetime:
    """When a model with an idle ``ttl`` (0 or less: none), idle for ``idle``
    seconds, will be stopped: ``KEPT_FOR`` from now when never, or past it (a
    config's ttl may be any number: ``timedelta`` overflowed, issue 14)."""
    left = ttl - idle
    if ttl <= 0 or not math.isfinite(left) or left > KEPT_SECONDS:
        return wall + KEPT_FOR
    return wall + timedelta(seconds=left)


async def _doc(request: web.Request, *, need_model: bool = True) -> dict[str, Any]:
    """The request's JSON object (``model`` required when ``need_model``)."""
    server = request.app[STATE].config.server
    body = await read_body(request, server.max_body_bytes, server.body_timeout)
    try:
        _, doc = parse_model("application/json", body)
    except MissingModel:
        if need_model:
            raise
        doc = json.loads(body)
    assert doc is not None
    return doc


def _state(request: web.Request) -> AppState:
    return request.app[STATE]


# -- reads --------------------------------------------------------------------------
async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION, "swapyard": __version__})


async def tags(request: web.Request) -> web.Response:
    state = _state(request)
    cfg, started = state.config, datetime.fromtimestamp(state.started_at, UTC)
    allowed = request.get(KEY_MODELS)
    everything = cfg.listing(allowed, virtual=True)
    listed = [i for i in everything if not i.virtual]
    found = await asyncio.to_thread(lambda: {i.model: facts(cfg.models[i.model]) for i in listed})
    models = []
    for item in listed:
        f = found[item.model]
        models.append({
            "name": item.id, "model": item.id,
            "modified_at": iso(f.modified if f.modified != EPOCH else started),
            "size": f.size, "digest": f.digest, "details": f.details(),
        })  # fmt: skip
    models += virtual_tags(everything, started)  # issue 15
    if allowed is None:
        models += peer_tags(state, {i.id for i in everything}, started)
    return web.json_response({"models": models})


async def ps(request: web.Request) -> web.Response:
    state = _state(request)
    cfg, snap = state.config, state.router.snapshot()
    mono, wall = time.monotonic(), datetime.now(UTC)
    listed = [i for i in cfg.listing(request.get(KEY_MODELS)) if i.alias_of is None]
    loaded = {i.model for i in listed if (m := snap.models.get(i.model)) is not None
              and m.state in (EngineState.READY, EngineState.SLEEPING)}  # fmt: skip
    found = await asyncio.to_thread(lambda: {mid: facts(cfg.models[mid]) for mid in loaded})
    models = []
    for item in listed:
        if item.model not in loaded:
            continue
        m, f = snap.models[item.model], found[item.model]
        mem = m.memory
        asleep = m.state is EngineState.SLEEPING
        size = (mem.asleep if asleep else mem.measured or mem.scheduled) or f.size
        on_gpu = bool(m.devices) and all(d.isdigit() for d in m.devices)
        idle = mono - m.idle_since if m.idle_since is not None else 0.0
        expires = expires_at(wall, 0.0 if asleep else m.ttl, idle)
        models.append({
            "name": item.id, "model": item.id, "size": size, "digest": f.digest,
            "details": f.details(), "expires_at": iso(expires),
            "size_vram": size if on_gpu else 0,
            "context_length": served_context(cfg.models[item.model])[0] or f.context_length,
        })  # fmt: skip
    if request.get(KEY_MODELS) is None:  # issue 15: what the peers said they have loaded
        models += peer_ps(state, {i.id for i in cfg.listing(virtual=True)}, wall)
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    doc = await _doc(request, need_model=False)
    model, sent = _target(request, doc)
    state = _state(request)
    if model is None:  # issue 15: a virtual id's first member, or the peer's answer
        name = first_name(request, sent)
        model = state.config.resolve(name)
        if model is None:
            assert state.peers is not None
            hosts = state.peers.hosts_of(name)
            if not hosts:
                find(request, name)  # raises UnknownModel
            return await peer_show(state, hosts[0][0], name, sent)
    spec = state.config.models[model]
    f = await asyncio.to_thread(facts, spec)
    started = datetime.fromtimestamp(state.started_at, UTC)
    return web.json_response({
        "license": "",
        "modelfile": f"# {model} is served by swapyard (engine: {spec.engine}); "
                     "its config, not a Modelfile, describes it.\n",
        "parameters": "", "template": f.template, "details": f.details(),
        "model_info": f.model_info(), "capabilities": capabilities(spec, f),
        "modified_at": iso(f.modified if f.modified != EPOCH else started),
    })  # fmt: skip


# -- generation ---------------------------------------------------------------------
async def chat(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "chat")


async def generate(request: web.Request) -> web.StreamResponse:
    return await _complete(request, "generate")


async def _complete(request: web.Request, kind: Kind) -> web.StreamResponse:
    t0p, t0 = time.perf_counter(), time.monotonic()
    doc = await _doc(request)
    model, sent = _target(request, doc)
    keep = keep_alive_seconds(doc.get("keep_alive"))
    state = _state(request)
    stream = doc.get("stream") is not False  # Ollama streams unless told not to
    if kind == "chat" and not doc.get("messages"):
        return await _load(request, model, sent, doc["model"], keep, kind)
    if kind == "generate" and not (doc.get("prompt") or doc.get("images") or doc.get("suffix")):
        return await _load(request, model, sent, doc["model"], keep, kind)
    shape = Shape(state, doc, sent, kind, stream, t0)
    first, reply = shape.build(sent)  # a request the engine cannot take is a 400 here
    try:
        return await serve(request, replace(first, build=shape.build), reply, t0=t0p)
    finally:
        if keep is not None:
            _keep_alive(request, model, keep)


def _keep_alive(request: web.Request, model: str | None, keep: float) -> None:
    """``keep_alive`` for the model of this host that served the request (a
    fallback's, a virtual id's member), else the one the client named, if any (a
    peer's model keeps its own host's TTL: issue 15)."""
    state = _state(request)
    served = request.get(SERVED)
    if served is not None and served.model is not None:
        if request.get(KEY_HOST, LOCAL) != LOCAL:
            return
        model = state.config.resolve(served.model)
    if model is not None:
        state.router.keep_alive(model, keep)


async def _load(
    request: web.Request, model: str | None, sent: str, name: str, keep: float | None, kind: Kind
) -> web.Response:
    """Ollama's idiom for loading a model (no messages, no prompt), or unloading it
    with ``keep_alive: 0``. A virtual id loads its first member when this host
    runs it; a peer's model is left to its host (it loads at the first request)."""
    router = _state(request).router
    if model is None:
        model = _state(request).config.resolve(first_name(request, sent))
    if model is None:
        reason = "unload" if keep == 0 else "load"
    elif keep == 0:
        router.keep_alive(model, 0)
        reason = "unload"
    else:
        router.check_admission()
        lease = await router.acquire(model, client=client_of(request, None))
        router.release(lease)
        if keep is not None:
            router.keep_alive(model, keep)
        reason = "load"
    out: dict[str, Any] = {"model": name, "created_at": now_iso()}
    out.update({"message": {"role": "assistant", "content": ""}} if kind == "chat"
               else {"response": ""})  # fmt: skip
    return web.json_response({**out, "done": True, "done_reason": reason})


async def embed(request: web.Request) -> web.StreamResponse:
    return await _embed(request, legacy=False)


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _embed(request, legacy=True)


async def _embed(request: web.Request, *, legacy: bool) -> web.StreamResponse:
    t0p, t0 = time.perf_counter(), time.monotonic()
    doc = await _doc(request)
    model, sent = _target(request, doc)
    keep = keep_alive_seconds(doc.get("keep_alive"))
    text = doc.get("prompt") if legacy else doc.get("input")
    ok = isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))
    if text is not None and not ok:
        field = "prompt" if legacy else "input"
        raise InvalidJSON(f"`{field}` must be a string or a list of strings")
    if not text:  # nothing to embed: Ollama loads the model
        await _load(request, model, sent, doc["model"], keep, "generate")
        return web.json_response({"embedding": []} if legacy
                                 else {"model": doc["model"], "embeddings": []})  # fmt: skip
    body: dict[str, Any] = {"model": sent, "input": text}
    if isinstance(doc.get("dimensions"), int):
        body["dimensions"] = doc["dimensions"]
    router = _state(request).router
    translation = Embed(doc["model"], Clock(t0, lambda: load_time(router, model, t0)), legacy)
    raw = json.dumps(body, ensure_ascii=False).encode()
    try:
        return await serve(request, Call(sent, "/v1/embeddings", raw, body, stream=False),
                           translation, t0=t0p)  # fmt: skip
    finally:
        if keep is not None:
            _keep_alive(request, model, keep)


async def refused(request: web.Request) -> web.Response:
    # Any plain key reaches these routes: the config file's path is not theirs
    # to know (issue 14).
    return web.json_response({"error": (
        "swapyard serves the models in its config and does not "
        f"{request.path.removeprefix('/api/')} models; to add one, put it under `models:` "
        "(engine and model file) and reload: swapyard config reload"
    )}, status=501)  # fmt: skip


# -- errors -------------------------------------------------------------------------
@web.middleware
async def ollama_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Errors on the Ollama routes as Ollama's ``{"error": "message"}`` (its
    clients show ``error`` as the message); status and headers stay."""
    resp: web.StreamResponse = await handler(request)
    if (
        request.path not in OLLAMA_ROUTES
        or resp.status < 400
        or resp.prepared
        or not isinstance(resp, web.Response)
        or not isinstance(resp.body, bytes)
    ):
        return resp
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return resp
    err = doc.get("error") if isinstance(doc, dict) else None
    if not (isinstance(err, dict) and isinstance(err.get("message"), str)):
        return resp
    out = web.json_response({"error": err["message"]}, status=resp.status)
    for name in ("Retry-After", "X-Request-Id", "WWW-Authenticate"):
        if name in resp.headers:
            out.headers[name] = resp.headers[name]
    return out


def add_routes(app: web.Application) -> None:
    """The Ollama routes, and their error shape as the outermost middleware (as
    ``cors.install`` puts its own first)."""
    app.middlewares.insert(0, ollama_errors)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", embeddings)
    for path in REFUSED:
        app.router.add_route("*", path, refused)
