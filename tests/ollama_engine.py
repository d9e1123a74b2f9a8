"""A scripted OpenAI-style engine for the Ollama front's tests (issue 14): it writes
every request body it gets to ``--record`` (one JSON line each) and answers with
what real engines send for tools and thinking, which the fake engine does not
produce: tool calls whose arguments arrive in fragments (as llama.cpp and vLLM
stream them) when the request offers tools, and ``reasoning_content`` before the
answer when it asks to think; and llama.cpp's ``/infill`` (fill in the middle).

    python tests/ollama_engine.py --port P --record FILE
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from aiohttp import web

ARGS = '{"city": "Paris", "unit": "celsius"}'


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    doc = {"id": "s", "object": "chat.completion.chunk", "created": int(time.time()),
           "model": "scripted", "choices": [{"index": 0, "delta": delta,
                                              "finish_reason": finish}], **extra}  # fmt: skip
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


def plan(doc: dict[str, Any]) -> tuple[str, str, list[dict[str, Any]]]:
    """(thinking, text, tool calls) for a request."""
    thinking = (
        "Let me think." if (doc.get("chat_template_kwargs") or {}).get("enable_thinking") else ""
    )
    if doc.get("tools") and all(m["role"] != "tool" for m in doc["messages"]):
        calls = [{"id": "call_a", "type": "function",
                  "function": {"name": "get_weather", "arguments": ARGS}}]  # fmt: skip
        return thinking, "", calls
    return thinking, "It is sunny.", []


def record(path: Path, doc: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(doc) + "\n")


async def chat(request: web.Request) -> web.StreamResponse:
    doc = await request.json()
    record(request.app["record"], doc)
    thinking, text, calls = plan(doc)
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    finish = "tool_calls" if calls else "stop"
    if not doc.get("stream"):
        msg: dict[str, Any] = {"role": "assistant", "content": text or None}
        if thinking:
            msg["reasoning_content"] = thinking
        if calls:
            msg["tool_calls"] = calls
        choice = {"index": 0, "message": msg, "finish_reason": finish}
        return web.json_response({"id": "s", "object": "chat.completion", "model": "scripted",
                                  "choices": [choice], "usage": usage})  # fmt: skip
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    if thinking:
        await out.write(chunk({"reasoning_content": thinking}))
    for word in text.split(" ") if text else ():
        await out.write(chunk({"content": word + " "}))
    for i, call in enumerate(calls):
        args = call["function"]["arguments"]
        head = {"index": i, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": args[:9]}}  # fmt: skip
        await out.write(chunk({"tool_calls": [head]}))
        await out.write(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[9:]}}]}))
    await out.write(chunk({}, finish))
    if (doc.get("stream_options") or {}).get("include_usage"):
        await out.write(b"data: " + json.dumps({"choices": [], "usage": usage}).encode() + b"\n\n")
    await out.write(b"data: [DONE]\n\n")
    return out


async def infill(request: web.Request) -> web.StreamResponse:
    """llama.cpp's own /infill answer: the middle, with llama.cpp's fields."""
    doc = await request.json()
    record(request.app["record"], doc)
    timings = {"prompt_n": 4, "prompt_ms": 2.0, "predicted_n": 2, "predicted_ms": 3.0}
    if not doc.get("stream"):
        return web.json_response({"content": "a + b", "stop": True, "stop_type": "eos",
                                  "timings": timings})  # fmt: skip
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await out.prepare(request)
    for piece in ("a +", " b"):
        await out.write(
            b"data: " + json.dumps({"content": piece, "stop": False}).encode() + b"\n\n"
        )
    last = {"content": "", "stop": True, "stop_type": "limit", "timings": timings}
    await out.write(b"data: " + json.dumps(last).encode() + b"\n\n")
    return out


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--record", type=Path, required=True)
    a = p.parse_args()
    app = web.Application()
    app["record"] = a.record
    app.router.add_get("/health", health)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/infill", infill)
    web.run_app(app, host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
