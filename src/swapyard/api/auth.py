"""API keys: ``Authorization: Bearer KEY`` or ``x-api-key: KEY``.

- ``/v1/*`` and the other data routes (``is_data_route``: the Ollama API,
  llama.cpp's own routes) need one of ``auth.keys`` (or the admin key) once any key is
  configured: none or an unknown one → 401; a key with a model allow-list asking
  for another model → 403 (checked where the model is resolved).
- Control and operator routes (``/api/*``, ``/metrics``) need the admin key: a
  plain key → 403, none → 401. With keys but no admin key, they answer loopback
  clients only.
- ``/health`` and the dashboard page itself are open (the page asks for the key).

Keys are compared in constant time, never logged, and stripped before anything
is forwarded to an engine (``proxy.request_headers``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from swapyard.api.state import KEY_MODELS, KEY_NAME, STATE
from swapyard.config import LOOPBACK, AuthSpec, KeySpec
from swapyard.errors import Forbidden, RequestError, Unauthorized, clip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN = ("/health", "/", "/dashboard")
# Data routes beside /v1/*, taking the same plain keys (issue 14): the Ollama API
# (its names do not clash with swapyard's own /api/* admin routes) and llama.cpp's
# own routes. `/upstream/{model}/...` reaches an engine raw: admin key.
OLLAMA_ROUTES = frozenset({
    "/api/version", "/api/tags", "/api/ps", "/api/show", "/api/chat", "/api/generate",
    "/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/delete", "/api/copy",
    "/api/create",
})  # fmt: skip
LLAMACPP_POST = (
    "/completion", "/completions", "/infill", "/tokenize", "/detokenize", "/apply-template",
    "/embedding", "/embeddings", "/rerank", "/reranking",
)  # fmt: skip
# GET routes that read one engine: llama.cpp's state, and a TTS server's voices. No
# other GET goes to an engine on a data key: a hosted API's GET /v1/files would
# read the operator's account with the engine's credentials.
ENGINE_GET = ("/props", "/slots", "/v1/audio/voices")
LLAMACPP_ROUTES = frozenset((*LLAMACPP_POST, *ENGINE_GET))


def is_data_route(path: str) -> bool:
    """Whether ``path`` serves model traffic (plain API keys) rather than control."""
    return path.startswith("/v1/") or path in OLLAMA_ROUTES or path in LLAMACPP_ROUTES


def presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip() or None
    return request.headers.get("x-api-key") or None


def _raw(text: str) -> bytes:
    # A header that is not UTF-8 reaches us with surrogates for its bytes (so may
    # a key from the environment); a plain .encode() raised on them, and the
    # client got a 500 (issue 11). Any str encodes this way, the same on both sides.
    return text.encode("utf-8", "surrogatepass")


def _match(auth: AuthSpec, key: str) -> KeySpec | None:
    found = None
    for k in auth.keys:
        if hmac.compare_digest(_raw(k.key), _raw(key)):
            found = k
    return found


def _is_admin(auth: AuthSpec, key: str) -> bool:
    return auth.admin_key is not None and hmac.compare_digest(_raw(auth.admin_key), _raw(key))


def _dot_segments(path: str) -> bool:
    return any(seg in (".", "..") for seg in path.split("/"))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[STATE].config.auth  # a reload may change the keys
    path = request.path
    # aiohttp routes /v1/../x to /v1/{tail} as sent, and the upstream client then
    # resolves it to the engine's /x: a data key would reach any engine route with
    # the engine's own credentials. No client needs dot segments (decoded or not).
    if _dot_segments(path) or _dot_segments(request.rel_url.raw_path):
        raise RequestError(f"{request.method} {clip(path)}: a path with '.' or '..' segments")
    if not auth.enabled or path in OPEN or path.startswith("/static/"):
        return await handler(request)
    key = presented_key(request)
    if is_data_route(path):
        if key is None:
            raise Unauthorized("an API key is required (Authorization: Bearer KEY)")
        if _is_admin(auth, key):
            request[KEY_NAME] = "admin"
            return await handler(request)
        spec = _match(auth, key)
        if spec is None:
            raise Unauthorized("the API key is not valid")
        request[KEY_NAME] = spec.name
        if spec.models is not None:
            request[KEY_MODELS] = spec.models
        return await handler(request)
    # control and operator routes
    if auth.admin_key is None:
        remote = request.remote or ""
        if remote in LOOPBACK or remote.startswith("127."):
            return await handler(request)
        raise Forbidden("admin routes answer loopback clients only (no admin key is configured)")
    if key is None:
        raise Unauthorized("the admin key is required for this route")
    if not _is_admin(auth, key):
        raise Forbidden("this route needs the admin key, not an API key")
    return await handler(request)


def check_model_allowed(request: web.Request, model: str, variant: str | None = None) -> None:
    """A key's allow-list holds model and variant ids: a model's id allows its
    variants, a variant's id only that variant (issue 14)."""
    allowed = request.get(KEY_MODELS)
    if allowed is None or model in allowed or (variant is not None and variant in allowed):
        return
    name = model if variant is None else variant
    raise Forbidden(f"the API key {request.get(KEY_NAME)!r} may not use model {name!r}")
