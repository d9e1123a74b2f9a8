"""CORS for browser clients, off unless ``server.cors`` lists origins (``"*"``: any).

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``)
  is answered here, before the API keys are checked (browsers never send a key
  with it): 204 with the allowed methods, the headers it asked for and a max age
  for an allowed origin, 403 for another. The real request still needs its key.
- Every response to an allowed origin — streams and errors included — carries
  ``Access-Control-Allow-Origin`` (the origin itself, so it works with or without
  credentials mode) and ``Vary: Origin``; set in ``on_response_prepare``, the one
  hook that runs before a stream's headers go out. An engine's own CORS headers
  are removed from what it answers, whatever the setting.

The origins are read from the live config, so a reload changes them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from swapyard.api.state import STATE
from swapyard.errors import Forbidden
from swapyard.proxy import error_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = "GET, POST, DELETE, OPTIONS"
MAX_AGE = "86400"  # browsers cap it lower (Chromium: 2 h); it only saves preflights


def allowed_origin(request: web.Request) -> str | None:
    """The request's ``Origin`` when ``server.cors`` allows it, else None."""
    origin = request.headers.get(hdrs.ORIGIN)
    if not origin:
        return None
    allowed = request.app[STATE].config.server.cors
    return origin if "*" in allowed or origin in allowed else None


@web.middleware
async def preflight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    is_preflight = (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )
    if not is_preflight or not request.app[STATE].config.server.cors:
        return await handler(request)
    origin = allowed_origin(request)
    if origin is None:
        origin_name = request.headers[hdrs.ORIGIN][:200]
        return error_response(Forbidden(f"origin {origin_name!r} is not in server.cors"))
    headers = {
        hdrs.ACCESS_CONTROL_ALLOW_METHODS: METHODS,
        hdrs.ACCESS_CONTROL_MAX_AGE: MAX_AGE,
    }
    # "*" would not cover Authorization (Fetch standard): name what was asked for.
    if asked := request.headers.get(hdrs.ACCESS_CONTROL_REQUEST_HEADERS):
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = asked
    return web.Response(status=204, headers=headers)  # origin headers: on_response_prepare


async def add_origin_headers(request: web.Request, response: web.StreamResponse) -> None:
    # An engine's own CORS headers (llama-server allows every origin, with
    # credentials) never reach the client: server.cors alone decides. (No OPTIONS
    # request is proxied; the only one with such headers is our preflight answer.)
    if request.method != hdrs.METH_OPTIONS:
        for name in {h for h in response.headers if h.lower().startswith("access-control-")}:
            response.headers.popall(name, None)
    if not request.app[STATE].config.server.cors:
        return
    response.headers.add(hdrs.VARY, hdrs.ORIGIN)
    if (origin := allowed_origin(request)) is not None:
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin


def install(app: web.Application) -> None:
    """Answer preflights before any other middleware (auth included) and mark
    responses to allowed origins."""
    app.middlewares.insert(0, preflight_middleware)
    app.on_response_prepare.append(add_origin_headers)
