"""OpenAI-compatible routes: ``/v1/models`` and every ``POST /v1/*`` that names a model."""

from __future__ import annotations

import json
import time
from email import policy
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from swapyard.api.exchange import Call, resolve, serve
from swapyard.api.limits import read_body
from swapyard.api.state import KEY_MODELS, STATE, AppState
from swapyard.errors import InvalidJSON, MissingModel

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
    field; anything else must be a JSON object, nested at most ``MAX_JSON_DEPTH``
    levels (deeper ones raised a RecursionError and a 500 per request, issue 11;
    an engine's own parser may not be safer).
    """
    if content_type.startswith("multipart/form-data"):
        return _form_model(content_type, body), None
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
    model = doc.get("model")
    if not isinstance(model, str) or not model:
        raise MissingModel()
    return model, doc


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
    state: AppState = request.app[STATE]
    cfg = state.config
    created = int(state.started_at)
    data: list[dict[str, Any]] = []
    snap = state.router.snapshot()
    for item in cfg.listing(request.get(KEY_MODELS)):
        engine_state = str(snap.models[item.model].state)
        entry = {"id": item.id, "object": "model", "created": created, "owned_by": "swapyard"}
        if item.alias_of is not None:
            data.append({**entry, "alias_of": item.alias_of, "state": engine_state})
        else:
            data.append({**entry, "name": item.name, "state": engine_state})
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    state: AppState = request.app[STATE]
    model = resolve(state.config, request.match_info["model"])
    return web.json_response(
        {
            "id": model,
            "object": "model",
            "created": int(state.started_at),
            "owned_by": "swapyard",
            "state": str(state.router.model(model).state),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_post("/v1/{tail:.+}", proxy_post)
