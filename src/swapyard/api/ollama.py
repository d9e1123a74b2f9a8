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
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web

from swapyard import __version__
from swapyard.api.auth import OLLAMA_ROUTES, check_model_allowed
from swapyard.api.clients import client_of
from swapyard.api.exchange import Call, resolve, serve
from swapyard.api.limits import read_body
from swapyard.api.ollama_convert import (
    COMPLETIONS,
    INFILL,
    KEPT_FOR,
    KEPT_SECONDS,
    chat_body,
    generate_body,
    keep_alive_seconds,
)
from swapyard.api.ollama_info import EPOCH, capabilities, facts, iso
from swapyard.api.ollama_reply import Clock, Embed, Mode, Reply, now_iso
from swapyard.api.openai import parse_model
from swapyard.api.state import KEY_MODELS, STATE, AppState
from swapyard.errors import InvalidJSON, MissingModel, UnknownModel
from swapyard.process.state import EngineState
from swapyard.resources.context import served_context
from swapyard.surface import RouterSurface

Handler = Any
# The Ollama release whose API this front follows; clients compare versions.
OLLAMA_VERSION = "0.12.6"
REFUSED = ("/api/pull", "/api/push", "/api/delete", "/api/copy", "/api/create")
Kind = Literal["chat", "generate"]


def find(request: web.Request, name: str) -> tuple[str, str]:
    """(the model id, the name to send on) for a name as an Ollama client sends it
    (a model's or a variant's id or alias, also with Ollama's default tag
    ``:latest``), once the key may use it: ``exchange.resolve`` and the key check
    as ``exchange.serve`` makes them (issue 14: a key allowed only a variant was
    refused it). An unknown name lists only what the key may use."""
    config = _state(request).config
    if name.endswith(":latest") and config.resolve(name) is None:
        name = name.removesuffix(":latest")
    try:
        model = resolve(config, name)
    except UnknownModel:  # listing what this key may use, not every model
        listed = config.listing(request.get(KEY_MODELS))
        raise UnknownModel(name, [item.id for item in listed]) from None
    variant = config.variant(name)
    check_model_allowed(request, model, None if variant is None else variant.id)
    return model, name


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


def _model_of(request: web.Request, doc: dict[str, Any]) -> tuple[str, str]:
    name = doc.get("model") or doc.get("name")  # /api/show took `name` before `model`
    if not isinstance(name, str) or not name:
        raise MissingModel()
    return find(request, name)


def _load_time(router: RouterSurface, model: str, t0: float) -> float:
    """How long this request waited for ``model`` to load: since ``t0`` until it
    became ready, if it did after ``t0``."""
    engine = router.model(model).engine
    if engine.state is EngineState.READY and engine.state_since > t0:
        return engine.state_since - t0
    return 0.0


# -- reads --------------------------------------------------------------------------
async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": OLLAMA_VERSION, "swapyard": __version__})


async def tags(request: web.Request) -> web.Response:
    state = _state(request)
    cfg, started = state.config, datetime.fromtimestamp(state.started_at, UTC)
    listed = cfg.listing(request.get(KEY_MODELS))
    found = await asyncio.to_thread(lambda: {i.model: facts(cfg.models[i.model]) for i in listed})
    models = []
    for item in listed:
        f = found[item.model]
        models.append({
            "name": item.id, "model": item.id,
            "modified_at": iso(f.modified if f.modified != EPOCH else started),
            "size": f.size, "digest": f.digest, "details": f.details(),
        })  # fmt: skip
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
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    doc = await _doc(request, need_model=False)
    model, _ = _model_of(request, doc)
    state = _state(request)
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
    model, sent = _model_of(request, doc)
    keep = keep_alive_seconds(doc.get("keep_alive"))
    state = _state(request)
    router, spec = state.router, state.config.models[model]
    stream = doc.get("stream") is not False  # Ollama streams unless told not to
    if kind == "chat":
        if not doc.get("messages"):
            return await _load(request, model, doc["model"], keep, kind)
        path, body = "/v1/chat/completions", chat_body(doc, sent, spec.engine, stream)
    else:
        if not (doc.get("prompt") or doc.get("images") or doc.get("suffix")):
            return await _load(request, model, doc["model"], keep, kind)
        path, body = generate_body(doc, sent, spec.engine, stream)
    modes: dict[str, Mode] = {COMPLETIONS: "completion", INFILL: "infill"}
    mode = modes.get(path, kind)
    clock = Clock(t0, lambda: _load_time(router, model, t0))
    think = doc.get("think")
    reply = Reply(doc["model"], mode, stream, clock, think if isinstance(think, bool) else None)
    raw = json.dumps(body, ensure_ascii=False).encode()
    try:
        return await serve(request, Call(sent, path, raw, body, stream=stream), reply, t0=t0p)
    finally:
        if keep is not None:
            router.keep_alive(model, keep)


async def _load(
    request: web.Request, model: str, name: str, keep: float | None, kind: Kind
) -> web.Response:
    """Ollama's idiom for loading a model (no messages, no prompt), or unloading it
    with ``keep_alive: 0``."""
    router = _state(request).router
    if keep == 0:
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
    model, sent = _model_of(request, doc)
    keep = keep_alive_seconds(doc.get("keep_alive"))
    text = doc.get("prompt") if legacy else doc.get("input")
    ok = isinstance(text, str) or (isinstance(text, list) and all(isinstance(t, str) for t in text))
    if text is not None and not ok:
        field = "prompt" if legacy else "input"
        raise InvalidJSON(f"`{field}` must be a string or a list of strings")
    if not text:  # nothing to embed: Ollama loads the model
        await _load(request, model, doc["model"], keep, "generate")
        return web.json_response({"embedding": []} if legacy
                                 else {"model": doc["model"], "embeddings": []})  # fmt: skip
    body: dict[str, Any] = {"model": sent, "input": text}
    if isinstance(doc.get("dimensions"), int):
        body["dimensions"] = doc["dimensions"]
    router = _state(request).router
    translation = Embed(doc["model"], Clock(t0, lambda: _load_time(router, model, t0)), legacy)
    raw = json.dumps(body, ensure_ascii=False).encode()
    try:
        return await serve(request, Call(sent, "/v1/embeddings", raw, body, stream=False),
                           translation, t0=t0p)  # fmt: skip
    finally:
        if keep is not None:
            router.keep_alive(model, keep)


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
