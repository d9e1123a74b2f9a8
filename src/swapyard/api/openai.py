"""OpenAI-compatible routes: ``/v1/models`` and every ``POST /v1/*`` that names a model.

The model list carries what clients beyond the ``openai`` package read (issue
14): llama.cpp router mode's ``status``, the context length, ``owned_by`` and
``created``, and ``variant_of`` / ``alias_of`` for names that share an engine."""

from __future__ import annotations

import asyncio
import json
import time
from email import policy
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from swapyard.api.auth import check_model_allowed
from swapyard.api.exchange import Call, resolve, serve
from swapyard.api.fallbacks import order
from swapyard.api.limits import read_body
from swapyard.api.state import KEY_MODELS, KEY_NAME, STATE, AppState
from swapyard.config import Listed
from swapyard.errors import Forbidden, InvalidJSON, MissingModel
from swapyard.peers.listing import merged_listing, peer_entry
from swapyard.process.state import EngineState
from swapyard.resources.context import served_context
from swapyard.surface import Snapshot

MAX_JSON_DEPTH = 100  # arrays and objects inside one another; JSON schemas need ~20


def nested_deeper_than(doc: Any, limit: int) -> bool:
    """Whether ``doc`` holds arrays/objects more than ``limit`` levels deep (no recursion)."""
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        items = node.values() if isinstance(node, dict) else node
        stack.extend((v, depth + 1) for v in items if isinstance(v, dict | list))
    return False


def parse_model(content_type: str, body: bytes) -> tuple[str, dict[str, Any] | None]:
    """The ``model`` the request names, and the JSON body when it is JSON.

    Multipart forms (audio transcription, image edits) carry ``model`` as a form
    field; anything else must be a JSON object (``parse_json``).
    """
    if content_type.startswith("multipart/form-data"):
        return _form_model(content_type, body), None
    doc = parse_json(body)
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise MissingModel()
    return model, doc


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, nested at most ``MAX_JSON_DEPTH`` levels (deeper
    ones raised a RecursionError and a 500 per request, issue 11; an engine's own
    parser may not be safer)."""
    too_deep = f"the request body nests arrays/objects deeper than {MAX_JSON_DEPTH} levels"
    try:
        doc = json.loads(body)
    except RecursionError as exc:  # deeper than Python's own limit
        raise InvalidJSON(too_deep) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from exc
    # Counting brackets runs at C speed; only a body with more of them is walked.
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and nested_deeper_than(
        doc, MAX_JSON_DEPTH
    ):
        raise InvalidJSON(too_deep)
    if not isinstance(doc, dict):
        raise InvalidJSON("the request body must be a JSON object")
    return doc


def _form_model(content_type: str, body: bytes) -> str:
    # The header as it came: aiohttp decodes bytes that are not UTF-8 as surrogates.
    head = content_type.encode("utf-8", "surrogateescape")
    try:
        msg = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + head + b"\r\n\r\n" + body
        )
        parts = list(msg.iter_parts())
    except RecursionError as exc:
        raise InvalidJSON("the multipart form nests too deeply") from exc
    for part in parts:
        if part.get_param("name", header="content-disposition") == "model":
            value = part.get_payload(decode=True)
            name = value.decode("utf-8", "replace").strip() if isinstance(value, bytes) else ""
            if name:
                return name
    raise MissingModel("the multipart form has no `model` field")


async def proxy_post(request: web.Request) -> web.StreamResponse:
    """Every ``POST /v1/*``: the model from the body (or a multipart form field)."""
    t0 = time.perf_counter()
    server = request.app[STATE].config.server
    body = await read_body(request, server.max_body_bytes, server.body_timeout)
    name, doc = parse_model(request.headers.get("Content-Type", ""), body)
    return await serve(request, Call(name, request.path_qs, body, doc), t0=t0)


async def list_models(request: web.Request) -> web.Response:
    """Every listed name, with swapyard's ``state`` and the fields other clients
    read (``model_entry``)."""
    state: AppState = request.app[STATE]
    snap = state.router.snapshot()
    items = state.config.listing(request.get(KEY_MODELS), virtual=True)
    # Off the loop: the first list after a model file changes reads its GGUF header.
    data = await asyncio.to_thread(
        lambda: [
            virtual_entry(state, item.id, snap)
            if item.virtual
            else model_entry(state, item, snap.models[item.model].state)
            for item in items
        ]
    )
    if state.peers is not None and request.get(KEY_MODELS) is None:
        data = merged_listing(data, state.peers.views())  # issue 15: every host's, once
    return web.json_response({"object": "list", "data": data})


def virtual_entry(state: AppState, vid: str, snap: Snapshot) -> dict[str, Any]:
    """A virtual id's entry (issue 15): ``virtual: true``, its ``members``, and the
    state of the model its pick rule would try first now."""
    v = state.config.virtual[vid]
    peers = None if state.peers is None else state.peers.views()
    first = order(v.models, v.pick, state.config, lambda: snap, peers)[0]
    model = state.config.resolve(first)
    held = snap.models.get(model) if model is not None else None
    engine = held.state if held is not None else EngineState.STOPPED
    if model is None and peers is not None:  # a peer's model: as its host said (issue 15)
        said = [pm.state for v in peers.values() if v.up
                and (pm := v.models.get(v.model_of(first) or "")) is not None]  # fmt: skip
        known = {str(e) for e in EngineState}
        engine = EngineState(said[0]) if said and said[0] in known else engine
    entry: dict[str, Any] = {
        "id": v.id, "object": "model", "created": int(state.started_at),
        "owned_by": "swapyard", "name": v.name or v.id, "state": str(engine),
        "status": llamacpp_status(engine), "virtual": True, "members": list(v.models),
        "pick": v.pick,
    }  # fmt: skip
    return entry


async def get_model(request: web.Request) -> web.Response:
    """The entry of the model or variant a name (an id or an alias) stands for, as
    ``/v1/models`` shows it: with peers (issue 15) and a key without an allow-list,
    its ``hosts``, and a name only peers serve as they list it."""
    state: AppState = request.app[STATE]
    name = request.match_info["model"]
    allowed = request.get(KEY_MODELS)
    peers = None if state.peers is None or allowed is not None else state.peers.views()
    if name in state.config.virtual:
        if allowed is not None and name not in allowed:
            raise Forbidden(f"the API key {request.get(KEY_NAME)!r} may not use model {name!r}")
        entry = virtual_entry(state, name, state.router.snapshot())
    elif peers is not None and state.config.resolve(name) is None:
        found = peer_entry(peers, name)
        if found is None:
            resolve(state.config, name)  # raises UnknownModel, naming the listed ones
        assert found is not None
        return web.json_response(found)
    else:
        model = resolve(state.config, name, allowed)
        variant = state.config.variant(name)
        check_model_allowed(request, model, None if variant is None else variant.id)
        item = state.config.listed(model if variant is None else variant.id)
        assert item is not None  # resolve() found it
        engine = state.router.model(model).state
        entry = await asyncio.to_thread(model_entry, state, item, engine)
    if peers is not None:
        entry = merged_listing([entry], peers)[0]  # ``hosts``, as /v1/models says them
    return web.json_response(entry)


def model_entry(state: AppState, item: Listed, engine: EngineState) -> dict[str, Any]:
    """One model-list entry (issue 14): OpenAI's fields, swapyard's ``state``,
    llama.cpp router mode's ``status`` (``{"value": "loaded"}``..., which Open
    WebUI's loaded badge reads) and the context length as clients look for it:
    ``context_length``, vLLM's ``max_model_len``, llama.cpp's ``meta.n_ctx``."""
    entry: dict[str, Any] = {
        "id": item.id, "object": "model", "created": int(state.started_at),
        "owned_by": "swapyard", "name": item.name, "state": str(engine),
        "status": llamacpp_status(engine),
    }  # fmt: skip
    if item.alias_of is not None:
        entry["alias_of"] = item.alias_of
    if item.variant_of is not None:
        entry["variant_of"] = item.variant_of
    n_ctx, n_ctx_train = served_context(state.config.models[item.model])
    if n_ctx is not None:
        entry["context_length"] = entry["max_model_len"] = n_ctx
        entry["meta"] = {"n_ctx": n_ctx}
        if n_ctx_train is not None:
            entry["meta"]["n_ctx_train"] = n_ctx_train
    return entry


# llama.cpp's router mode (tools/server/server-models.cpp) says loaded, loading,
# unloaded or sleeping; a failed model is unloaded with `failed: true`.
_STATUS = {
    EngineState.READY: "loaded",
    EngineState.STARTING: "loading",
    EngineState.WAKING: "loading",
    EngineState.WARMING: "loading",
    EngineState.SLEEPING: "sleeping",
}


def llamacpp_status(engine: EngineState) -> dict[str, Any]:
    status: dict[str, Any] = {"value": _STATUS.get(engine, "unloaded")}
    if engine in (EngineState.FAILED, EngineState.BACKOFF):
        status["failed"] = True
    return status


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_post("/v1/{tail:.+}", proxy_post)
