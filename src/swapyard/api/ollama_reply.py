"""OpenAI answers as Ollama's (issue 14): the ``Translation``s ``exchange.serve``
runs the engine's answer through for ``/api/chat``, ``/api/generate`` and the
embedding routes.

A stream of chat-completion chunks (SSE) becomes NDJSON, one line per piece of
text or thinking as it comes; tool calls, which OpenAI streams in fragments, go
out whole (arguments as objects) once the engine has finished them; the last line
has ``done: true`` and the figures: token counts from the usage chunk swapyard
asks engines for, durations from llama.cpp's ``timings`` when it sends them, else
from swapyard's own clock. A stream that breaks ends with ``{"error": ...}``;
an engine's error answer becomes ``{"error": ...}`` with its status, and an answer
that is not a completion (or holds no embeddings) a 502 ``{"error": ...}``; what
the fronts read of the engine's answer is ``chat_shapes``'.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

from swapyard import sse
from swapyard.api.chat_shapes import (
    NOT_A_COMPLETION,
    dicts,
    engine_message,
    first_choice,
    obj,
    stream_error,
    stream_event,
    tool_arguments,
)
from swapyard.errors import SwapyardError, UpstreamError

NDJSON = "application/x-ndjson"
# How generate was sent: completion is /v1/completions; infill is llama.cpp's
# /infill, whose answer is llama.cpp's own ({"content", "stop", "stop_type"}).
Mode = Literal["chat", "generate", "completion", "infill"]
DONE_REASONS = {"tool_calls": "stop", "function_call": "stop", "content_filter": "stop"}


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def line(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error(err: SwapyardError) -> web.Response:
    """``err`` as Ollama's ``{"error": "message"}``, with its status."""
    return web.json_response({"error": err.message}, status=err.status)


def engine_error(status: int, body: bytes) -> web.Response:
    """The engine's error answer as Ollama's, its message bare (as Ollama's own
    runner errors reach its clients), with the engine's status."""
    return web.json_response({"error": engine_message(status, body)}, status=status)


def ollama_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in calls:
        fn = obj(c.get("function"))
        name = fn.get("name")
        args = tool_arguments(fn.get("arguments"))
        call: dict[str, Any] = {"function": {"name": name if isinstance(name, str) else "",
                                             "arguments": args}}  # fmt: skip
        if c.get("id"):
            call["id"] = c["id"]
        out.append(call)
    return out


@dataclass(slots=True)
class Clock:
    """swapyard's own timings of one request (``time.monotonic()``): ``loaded``
    says how long it waited for its engine to load (0 if it was loaded)."""

    t0: float
    loaded: Callable[[], float] = lambda: 0.0
    first: float | None = None  # the first generated piece
    last: float | None = None

    def tick(self) -> None:
        self.last = time.monotonic()
        if self.first is None:
            self.first = self.last


def _ns(seconds: float) -> int:
    return max(1, int(seconds * 1e9))


def _number(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def figures(clock: Clock, usage: Any, timings: Any, pieces: int) -> dict[str, int]:
    """Ollama's closing figures: counts from ``usage`` (else llama.cpp's ``timings``,
    else the pieces streamed), durations in ns from ``timings`` (else the clock).
    Either may be anything an engine sent: what is not a number is not read."""
    end = time.monotonic()
    total = end - clock.t0
    load = min(total, max(0.0, clock.loaded()))
    usage, timings = obj(usage), obj(timings)
    prompt_n = usage.get("prompt_tokens", timings.get("prompt_n"))
    eval_n = usage.get("completion_tokens", timings.get("predicted_n"))
    if (predicted_ms := _number(timings.get("predicted_ms"))) is not None:
        eval_s = predicted_ms / 1e3
        prompt_s = (_number(timings.get("prompt_ms")) or 0.0) / 1e3
    elif clock.first is not None and clock.last is not None:
        eval_s = clock.last - clock.first
        prompt_s = clock.first - clock.t0 - load
    else:
        eval_s, prompt_s = total - load, 0.0
    return {
        "total_duration": _ns(total),
        "load_duration": _ns(load) if load > 0 else 0,
        "prompt_eval_count": int(prompt_n) if isinstance(prompt_n, int) else 0,
        "prompt_eval_duration": _ns(max(0.0, prompt_s)),
        "eval_count": int(eval_n) if isinstance(eval_n, int) else pieces,
        "eval_duration": _ns(max(0.0, eval_s)),
    }


@dataclass(slots=True)
class Reply:
    """The ``Translation`` of ``/api/chat`` and ``/api/generate``. ``think``:
    False drops the engine's reasoning (the client asked for none)."""

    name: str
    mode: Mode
    streamed: bool
    clock: Clock
    think: bool | None = None
    content_type: str = NDJSON

    def head(self) -> dict[str, Any]:
        return {"model": self.name, "created_at": now_iso()}

    def piece(self, text: str = "", thinking: str = "",
              calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:  # fmt: skip
        if self.mode == "chat":
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                msg["thinking"] = thinking
            if calls:
                msg["tool_calls"] = ollama_calls(calls)
            return {**self.head(), "message": msg}
        out = {**self.head(), "response": text}
        if thinking:
            out["thinking"] = thinking
        return out

    def answer(self, status: int, body: bytes) -> web.Response:
        """The engine's whole answer as Ollama's; one that is not a completion
        (not JSON, no choice, ``{"choices": [1]}``) is a 502 (issue 14)."""
        if status != 200:
            return engine_error(status, body)
        try:
            doc = json.loads(body)
            choice = (
                first_choice(doc, self.name)
                if self.mode != "infill"
                else _infill_choice(doc, self.name)
            )
        except ValueError:
            return error(UpstreamError(self.name, NOT_A_COMPLETION))
        except UpstreamError as err:
            return error(err)
        msg = obj(choice.get("message"))
        text = msg.get("content") if self.mode == "chat" else choice.get("text", msg.get("content"))
        thinking = msg.get("reasoning_content") or msg.get("reasoning")
        if self.think is False or not isinstance(thinking, str):
            thinking = ""
        out = self.piece(text if isinstance(text, str) else "", thinking,
                         dicts(msg.get("tool_calls")) or None)  # fmt: skip
        out["done"] = True
        out["done_reason"] = _done_reason(choice.get("finish_reason"))
        out.update(figures(self.clock, doc.get("usage"), doc.get("timings"), 0))
        if self.streamed:  # the client reads lines: one line, the last
            return web.Response(body=line(out), content_type=NDJSON)
        return web.json_response(out)

    def stream(self) -> Stream:
        return Stream(self)


def _infill_choice(doc: Any, model: str) -> dict[str, Any]:
    """A llama.cpp ``/infill`` answer (or stream event) as a completion choice;
    ``UpstreamError`` when it is not one."""
    if not isinstance(doc, dict) or not isinstance(doc.get("content"), str):
        raise UpstreamError(model, NOT_A_COMPLETION)
    finish = None
    if doc.get("stop"):
        finish = "length" if doc.get("stop_type") == "limit" else "stop"
    return {"text": doc["content"], "finish_reason": finish}


def _done_reason(reason: Any) -> str:
    return DONE_REASONS.get(reason, reason) if isinstance(reason, str) else "stop"


@dataclass(slots=True)
class Stream:
    """One streamed answer: SSE in, NDJSON out (``StreamTranslator``)."""

    reply: Reply
    events: sse.Splitter = field(default_factory=sse.Splitter)
    finish: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    pieces: int = 0
    failed: bool = False

    def feed(self, chunk: bytes) -> bytes:
        if self.failed:
            return b""
        return b"".join(self._event(e) for e in self.events.feed(chunk))

    def end(self) -> bytes:
        rest = self.events.rest()
        out = self._event(rest) if rest and not self.failed else b""
        if self.failed:
            return out
        if self.calls:
            calls = [self.calls[i] for i in sorted(self.calls)]
            out += line({**self.reply.piece(calls=calls), "done": False})
        last = {**self.reply.piece(), "done": True, "done_reason": _done_reason(self.finish)}
        last.update(figures(self.reply.clock, self.usage, self.timings, self.pieces))
        return out + line(last)

    def error(self, err: SwapyardError) -> bytes:
        if self.failed:
            return b""
        self.failed = True
        return line({"error": err.message})

    def _event(self, raw: bytes) -> bytes:
        doc = stream_event(raw)
        if doc is None:
            return b""
        if (message := stream_error(doc)) is not None:  # the engine's own error event
            self.failed = True
            return line({"error": message})
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
        if isinstance(doc.get("timings"), dict):
            self.timings = doc["timings"]
        if self.reply.mode == "infill" and isinstance(doc.get("content"), str):
            return self._choice(_infill_choice(doc, self.reply.name))
        out = b""
        for choice in dicts(doc.get("choices")):
            if choice.get("index", 0) == 0:
                out += self._choice(choice)
        return out

    def _choice(self, choice: dict[str, Any]) -> bytes:
        if isinstance(choice.get("finish_reason"), str):
            self.finish = choice["finish_reason"]
        delta = obj(choice.get("delta"))
        text = delta.get("content") if "delta" in choice else choice.get("text")
        text = text if isinstance(text, str) else ""
        thinking = delta.get("reasoning_content") or delta.get("reasoning")
        if self.reply.think is False or not isinstance(thinking, str):
            thinking = ""
        for frag in dicts(delta.get("tool_calls")):
            self._call(frag)
        if not text and not thinking:
            return b""
        self.pieces += 1
        self.reply.clock.tick()
        return line({**self.reply.piece(text, thinking), "done": False})

    def _call(self, frag: dict[str, Any]) -> None:
        """Gather a tool call's fragments (its arguments come in pieces)."""
        self.reply.clock.tick()
        blank: dict[str, Any] = {"id": "", "function": {"name": "", "arguments": ""}}
        index = frag.get("index")
        call = self.calls.setdefault(index if isinstance(index, int) else len(self.calls), blank)
        fn = obj(frag.get("function"))
        call["id"] = call["id"] or frag.get("id") or ""
        name = fn.get("name")
        call["function"]["name"] += name if isinstance(name, str) else ""
        args = fn.get("arguments")
        if isinstance(args, dict):
            call["function"]["arguments"] = args
        elif isinstance(args, str):
            call["function"]["arguments"] += args


@dataclass(slots=True)
class Embed:
    """The ``Translation`` of ``/api/embed`` (``legacy``: ``/api/embeddings``, one
    vector under ``embedding``). ``/api/embed`` answers unit vectors, as Ollama's."""

    name: str
    clock: Clock
    legacy: bool = False
    content_type: str = "application/json"

    def answer(self, status: int, body: bytes) -> web.Response:
        if status != 200:
            return engine_error(status, body)
        try:
            doc = json.loads(body)
            rows = sorted(doc["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(x) for x in d["embedding"]] for d in rows]
        except (ValueError, KeyError, TypeError, AttributeError):  # not rows of numbers
            return error(UpstreamError(self.name, "the engine's answer held no embeddings"))
        if self.legacy:
            return web.json_response({"embedding": vectors[0] if vectors else []})
        f = figures(self.clock, doc.get("usage"), None, 0)
        return web.json_response({
            "model": self.name, "embeddings": [unit(v) for v in vectors],
            "total_duration": f["total_duration"], "load_duration": f["load_duration"],
            "prompt_eval_count": f["prompt_eval_count"],
        })  # fmt: skip

    def stream(self) -> Stream:  # embeddings never stream; a stream would be a bug upstream
        return Stream(Reply(self.name, "generate", True, self.clock))


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm > 0 else v
