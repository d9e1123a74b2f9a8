"""An engine that answers whatever it is told to (issue 14): the body of its answer
to a chat completion is the last message's text, to an embedding request the
``input`` text, sent as they are with HTTP 200 and a JSON content type. The tests
of the client fronts send it what an engine may answer that is not a completion
(``{"choices": [1]}``, ``{"usage": 5}``, not JSON at all) and see what the client
gets.

    python tests/parrot_engine.py --port P
"""

from __future__ import annotations

import argparse
from typing import Any

from aiohttp import web


def said(text: Any) -> web.Response:
    body = text if isinstance(text, str) else "the parrot was given no text to answer"
    return web.Response(body=body.encode(), content_type="application/json")


async def chat(request: web.Request) -> web.Response:
    doc = await request.json()
    content = (doc.get("messages") or [{}])[-1].get("content")
    return said(content)


async def embeddings(request: web.Request) -> web.Response:
    return said((await request.json()).get("input"))


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    web.run_app(app, host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
