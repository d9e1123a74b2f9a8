"""Who a request comes from, as the scheduler tells people apart (issue 13).

One person's own requests (a chat, then its title and tags requests) must never
count as other people's demand for a model. The first that applies: the API key's
name; the session a client names (``X-Session-Id``, LiteLLM's
``X-Litellm-Session-Id``, Open WebUI's ``X-OpenWebUI-User-Id`` when it forwards
its users); the OpenAI ``user`` field; else the address the connection comes from.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from swapyard.api.state import KEY_NAME

# Open WebUI names its user with ENABLE_FORWARD_USER_INFO_HEADERS.
SESSION_HEADERS = ("X-Session-Id", "X-Litellm-Session-Id", "X-OpenWebUI-User-Id")


def client_of(request: web.Request, doc: dict[str, Any] | None) -> str:
    name = request.get(KEY_NAME)
    if name:
        return f"key:{name}"
    for header in SESSION_HEADERS:
        if value := request.headers.get(header, "").strip():
            return f"session:{value[:200]}"
    user = doc.get("user") if doc is not None else None
    if isinstance(user, str) and user.strip():
        return f"user:{user.strip()[:200]}"
    return f"addr:{request.remote}" if request.remote else ""
