"""Anthropic's Messages API over any engine: ``POST /v1/messages`` and
``POST /v1/messages/count_tokens`` (issue 14).

A model's ``anthropic`` setting (the engine kind's by default: ``Launch.messages_api``)
decides how:

- ``native`` (llama.cpp, Ollama, a raw ``cmd``): the request goes to the engine's
  own route as sent and its answer comes back byte for byte, as any ``/v1/*``.
- ``translate`` (vLLM, SGLang, TabbyAPI, a remote OpenAI-compatible server): the
  request becomes a chat completion (``anthropic_chat``) and the answer, whole or
  streamed (``anthropic_stream``), a Messages answer. ``count_tokens`` becomes a
  one-token chat completion whose ``prompt_tokens`` is the count: exact for the
  engine's own chat template and tools, at the cost of reading the prompt once
  (which an engine with a prefix cache keeps for the request that follows).

Each name ``exchange.serve`` tries (a fallback, a virtual id's member, issue 15)
goes the way its own model takes (``Shape``); a name this host does not run (a
peer's model) goes to the peer as sent, and the peer decides.

Errors are Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``
with the HTTP status, for what swapyard refuses (unknown model, bad request,
queue full, an engine that cannot start) and, when translating, for the engine's
own errors; an engine's answer that is not a chat completion is a 502
(``api_error``); a translated stream that breaks ends with an ``error`` event. (An
API key refused by the auth middleware still gets the OpenAI envelope.)
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from swapyard.api.anthropic_chat import Ask, error_doc, to_chat, to_message
from swapyard.api.anthropic_stream import EventStream
from swapyard.api.chat_shapes import engine_message
from swapyard.api.exchange import Call, serve
from swapyard.api.limits import read_body
from swapyard.api.openai import parse_model
from swapyard.api.state import STATE
from swapyard.config import Config
from swapyard.errors import SwapyardError, UpstreamError
from swapyard.proxy import StreamTranslator, Translation

CHAT = "/v1/chat/completions"


def anthropic_error(err: SwapyardError) -> web.Response:
    """``err`` in Anthropic's shape, with its status (and ``Retry-After``)."""
    retry = getattr(err, "retry_after", None)
    headers = None if retry is None else {"Retry-After": str(max(1, round(retry)))}
    return web.json_response(error_doc(err.status, err.message), status=err.status,
                             headers=headers)  # fmt: skip


def engine_error(status: int, body: bytes) -> web.Response:
    """The engine's error answer (whatever its shape) in Anthropic's, same status."""
    return _failed(status, f"the engine answered: {engine_message(status, body)}")


def _failed(status: int, message: str) -> web.Response:
    return web.json_response(error_doc(status, message), status=status)


class MessagesAnswer:
    """The engine's chat completion answer as a Messages answer (a ``Translation``)."""

    content_type = "text/event-stream"

    def __init__(self, ask: Ask) -> None:
        self.ask = ask

    def answer(self, status: int, body: bytes) -> web.Response:
        if status != 200:
            return engine_error(status, body)
        try:
            doc = json.loads(body)
        except ValueError:
            return anthropic_error(UpstreamError(self.ask.model, "the engine's answer is not JSON"))
        try:
            return self.reply(doc)
        except UpstreamError as err:  # JSON, but not a completion (issue 14)
            return anthropic_error(err)

    def reply(self, doc: Any) -> web.Response:
        return web.json_response(to_message(self.ask, doc))

    def stream(self) -> StreamTranslator:
        return EventStream(self.ask)


class TokenCount(MessagesAnswer):
    """A one-token chat completion's ``prompt_tokens`` as ``count_tokens``' answer."""

    def reply(self, doc: Any) -> web.Response:
        usage = doc.get("usage") if isinstance(doc, dict) else None
        count = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(count, int):
            raise UpstreamError(
                self.ask.model, "the engine's answer carries no usage to count tokens from"
            )
        return web.json_response({"input_tokens": count})


async def _handle(request: web.Request, count: bool) -> web.StreamResponse:
    t0 = time.perf_counter()
    state = request.app[STATE]
    try:
        server = state.config.server
        body = await read_body(request, server.max_body_bytes, server.body_timeout)
        name, doc = parse_model("application/json", body)
        assert doc is not None  # a JSON body, not a form
        shape = Shape(state.config, request.path_qs, body, doc, count)
        return await serve(request, Call(name, request.path_qs, body, doc, build=shape.build),
                           t0=t0)  # fmt: skip
    except SwapyardError as err:
        return anthropic_error(err)


class Shape:
    """The call for each name ``exchange.serve`` tries (issue 15): a model of this
    host whose ``anthropic`` is ``native`` gets the request as sent, one that
    translates gets a chat completion; a name this host does not serve (a peer's
    model) is forwarded as sent, and the peer decides. A fallback or a virtual
    id's member may be of another engine kind than the name the client sent."""

    def __init__(
        self, config: Config, path: str, body: bytes, doc: dict[str, Any], count: bool
    ) -> None:
        self.config, self.path, self.body, self.doc, self.count = config, path, body, doc, count
        self._chat: tuple[dict[str, Any], Ask] | None = None

    def build(self, name: str) -> tuple[Call, Translation | None]:
        """The call for ``name``, as if the client had named it (``serve`` puts
        ``name`` in its body's ``model``), and how to translate its answer."""
        sent = self.doc["model"]
        model = self.config.resolve(name)
        if model is None or self.config.models[model].anthropic == "native":
            return Call(sent, self.path, self.body, self.doc), None
        if self._chat is None:  # translated once, whichever candidates need it
            chat, ask = to_chat(self.doc)
            if self.count:  # the prompt read once, one token made: its usage is the count
                chat = {k: chat[k] for k in ("model", "messages", "tools") if k in chat}
                chat["max_tokens"] = 1
            self._chat = chat, ask
        chat, ask = self._chat
        translation = TokenCount(ask) if self.count else MessagesAnswer(ask)
        raw = json.dumps(chat, ensure_ascii=False, separators=(",", ":")).encode()
        return Call(sent, CHAT, raw, chat), translation


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    return await _handle(request, count=False)


async def count_tokens(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``."""
    return await _handle(request, count=True)


def add_routes(app: web.Application) -> None:
    """Before the OpenAI routes: their ``POST /v1/{tail}`` would take these too."""
    app.router.add_post("/v1/messages", messages)
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
