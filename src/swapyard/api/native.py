"""llama.cpp's own routes, GET routes that name a model, and ``/upstream`` (issue 14).

Code-completion plugins (llama.vscode, llama.vim) and llama.cpp's own tools talk
to ``/infill``, ``/completion``, ``/tokenize``... with no ``model`` in the body:
the model comes from the body's ``model`` or a ``?model=NAME`` query parameter
(so a plugin's endpoint setting can carry it), and the request runs as every
other does (``exchange.serve``: the key's allow-list, admission, loading the
model, the model's parameters, metering).

- ``POST`` llama.cpp routes (``LLAMACPP_POST``): a request that names no model
  goes to the one model its API key may use (an allow-list of one), else is
  refused (400) with both ways to name one.
- ``GET /props``, ``GET /slots``, ``GET /v1/audio/voices`` (``ENGINE_GET``): the
  named model, else the key's one, else the one model that is loaded and the key
  may use (a status read should not load a model nobody named); with none or
  several, 400. No other GET reaches an engine but through ``/upstream``.
- ``/upstream/{model}/{path}``: any method, to that model's engine as sent (no
  parameters, no fixes), loading it first — llama-swap's ``/upstream``. It is not
  a data route: the admin key (``auth``).

The ``model`` query parameter is taken out of what the engine gets: it is
swapyard's to route by, and an engine may read it as something else (llama.cpp
in router mode picks a model by it).
"""

from __future__ import annotations

import time

from aiohttp import web

from swapyard.api.auth import ENGINE_GET, LLAMACPP_POST
from swapyard.api.exchange import Call, query_model, serve
from swapyard.api.limits import read_body
from swapyard.api.openai import parse_json
from swapyard.api.state import KEY_MODELS, STATE, AppState
from swapyard.errors import MissingModel
from swapyard.process.state import EngineState

_HOW = "name the model in the JSON body's `model` field or as a `?model=NAME` query parameter"


def engine_path(request: web.Request) -> str:
    """The request's path and query for the engine: without ``model=``."""
    if "model" not in request.query:
        return request.path_qs
    kept = [(k, v) for k, v in request.query.items() if k != "model"]
    return str(request.rel_url.with_query(kept))


async def native_post(request: web.Request) -> web.StreamResponse:
    """A llama.cpp route: the model from the body or ``?model=``."""
    t0 = time.perf_counter()
    server = request.app[STATE].config.server
    body = await read_body(request, server.max_body_bytes, server.body_timeout)
    doc = parse_json(body) if body.strip() else None
    name = query_model(request, doc) or _the_keys_one(request)
    if name is None:
        raise MissingModel(f"{request.path} needs a model: {_HOW} (e.g. {request.path}?model=NAME)")
    return await serve(request, Call(name, engine_path(request), body, doc), t0=t0)


async def native_get(request: web.Request) -> web.StreamResponse:
    """A GET for one model's engine: the named one, else the one loaded."""
    name = query_model(request, None) or _the_keys_one(request) or _the_loaded_one(request)
    return await serve(request, Call(name, engine_path(request), b""))


def _the_keys_one(request: web.Request) -> str | None:
    """The one model (or variant) the request's key may use, if it may use one only:
    llama.vscode appends ``/infill`` to its endpoint and sends no model, so a key
    of its own is how it names one."""
    allowed = request.get(KEY_MODELS)
    return next(iter(allowed)) if allowed is not None and len(allowed) == 1 else None


def _the_loaded_one(request: web.Request) -> str:
    state: AppState = request.app[STATE]
    allowed = request.get(KEY_MODELS)
    ready = [
        m.id
        for m in state.router.snapshot().models.values()
        if m.state == EngineState.READY and (allowed is None or m.id in allowed)
    ]
    if len(ready) == 1:
        return ready[0]
    loaded = f"{len(ready)} models are loaded ({', '.join(ready)})" if ready else "none is loaded"
    raise MissingModel(
        f"GET {request.path} goes to the one loaded model when it names none, and {loaded}: "
        f"{_HOW} (e.g. {request.path}?model=NAME)"
    )


async def upstream(request: web.Request) -> web.StreamResponse:
    """``/upstream/{model}/{path}``: the request as sent, to that model's engine."""
    t0 = time.perf_counter()
    server = request.app[STATE].config.server
    body = await read_body(request, server.max_body_bytes, server.body_timeout)
    # The raw (still percent-encoded) rest of the path, as the client sent it.
    parts = request.rel_url.raw_path.split("/", 3)
    path = "/" + (parts[3] if len(parts) > 3 else "")
    query = request.rel_url.raw_query_string
    call = Call(request.match_info["model"], path + ("?" + query if query else ""), body)
    return await serve(request, call, t0=t0)


def add_routes(app: web.Application) -> None:
    """llama.cpp's routes (``auth.LLAMACPP_POST``, ``auth.ENGINE_GET``) and ``/upstream``."""
    for path in LLAMACPP_POST:
        app.router.add_post(path, native_post)
    for path in ENGINE_GET:
        app.router.add_get(path, native_get)
    app.router.add_route("*", "/upstream/{model}", upstream)
    app.router.add_route("*", "/upstream/{model}/{path:.*}", upstream)
