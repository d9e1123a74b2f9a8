"""Per-request figures, measured on the data path without parsing what is not needed.

A ``Meter`` watches the bytes of one answer go by: the first and last chunk that
carries generated text (``"content"``, ``"text"`` or ``"reasoning_content"`` with
a non-empty value), how many such chunks there were, and the engine's ``usage``
when it sends one. At the end it makes a ``RequestRecord``: tokens from the
engine's usage, else counted (one per text chunk, as engines stream them), time
to first token (from the request's arrival at swapyard, so it includes any wait
for a load), generation tok/s (completion tokens over the time from the first
to the last token) and the total.

The footer (``server.footer``, a model's ``footer``) goes only into answers a person
reads (``footer_wanted``); in a stream ``FooterSlot`` puts it just before the chunk
that carries ``finish_reason``, found by a byte search.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from swapyard import sse
from swapyard.config import Footer
from swapyard.errors import SwapyardError
from swapyard.events import RequestRecord

if TYPE_CHECKING:
    from swapyard.quirks import StreamFix

_TEXT = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"(?!")')
_DATA_USAGE = re.compile(rb"^data: ?(\{.*\"usage\".*\})\s*$", re.MULTILINE)
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')  # a finish_reason that is not null
_TOOL_CALL = re.compile(rb'"tool_calls"\s*:\s*\[\s*\{')  # a non-empty tool_calls list
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n")
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# Request fields that constrain the output to a shape a program parses (OpenAI's
# response_format aside): llama.cpp's json_schema/grammar, vLLM's guided_* and
# structured_outputs. A footer would break what they promise.
_CONSTRAINED = ("json_schema", "grammar", "guided_json", "guided_regex", "guided_choice",
                "guided_grammar", "structured_outputs")  # fmt: skip


def record_headers(r: RequestRecord) -> dict[str, str]:
    """A record's figures as response headers (non-streaming answers)."""
    out = {"X-Swapyard-Total-Ms": f"{r.total_s * 1000:.1f}",
           "X-Swapyard-Wait-Ms": f"{r.wait_s * 1000:.1f}",
           "X-Swapyard-Loaded": "true" if r.loaded else "false"}  # fmt: skip
    if r.prompt_tokens is not None:
        out["X-Swapyard-Prompt-Tokens"] = str(r.prompt_tokens)
    if r.completion_tokens is not None:
        out["X-Swapyard-Completion-Tokens"] = str(r.completion_tokens)
    if r.ttft_s is not None:
        out["X-Swapyard-TTFT-Ms"] = f"{r.ttft_s * 1000:.1f}"
    if r.tok_s is not None:
        out["X-Swapyard-Tokens-Per-Second"] = f"{r.tok_s:.2f}"
    return out


def footer_text(r: RequestRecord) -> str:
    """The line users' routers append to answers: "⚡ 25.6 tok/s (...)"."""
    n = r.completion_tokens or 0
    speed = f"{r.tok_s:.1f} tok/s" if r.tok_s is not None else "— tok/s"
    gen = r.total_s - (r.ttft_s or 0.0)
    ttft = f", first token {r.ttft_s:.2f}s" if r.ttft_s is not None else ""
    load = f", waited {r.wait_s:.1f}s for the model" if r.loaded else ""
    return f"\n\n⚡ {speed} ({n} tokens in {gen:.1f}s{ttft}{load})"


class Meter:
    """Watches one answer's bytes; ``t0`` is when the request reached swapyard."""

    def __init__(self, t0: float | None = None) -> None:
        self.t0 = t0 if t0 is not None else time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.engine_tok_s: float | None = None  # llama.cpp's own "timings", when sent

    def feed(self, chunk: bytes) -> None:
        n = len(_TEXT.findall(chunk))
        if n:
            now = time.perf_counter()
            if self.first is None:
                self.first = now
            self.last = now
            self.chunks += n
        if b'"usage"' in chunk:
            for m in _DATA_USAGE.finditer(chunk):
                self._take_usage(m.group(1))

    def _take_usage(self, raw: bytes) -> None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        # Anthropic streams split it: input tokens in message_start's message,
        # output tokens in message_delta.
        msg = doc.get("message")
        usage = msg.get("usage") if isinstance(msg, dict) else doc.get("usage")
        if isinstance(usage, dict):
            self.usage = {**(self.usage or {}), **usage}

    def body(self, body: bytes) -> None:
        """A whole (non-streaming) JSON answer."""
        self.first = self.last = time.perf_counter()
        try:
            doc = json.loads(body)
        except ValueError:
            return
        if isinstance(doc, dict) and isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
        timings = doc.get("timings") if isinstance(doc, dict) else None
        if isinstance(timings, dict) and isinstance(timings.get("predicted_per_second"), float):
            self.engine_tok_s = timings["predicted_per_second"]

    def figures(self, stream: bool, wait_s: float, usage: dict[str, Any] | None) -> dict[str, Any]:
        """What was seen, as ``RequestRecord`` fields: tokens, TTFT, tok/s, total."""
        now = time.perf_counter()
        usage = usage or self.usage
        out: dict[str, Any] = {"total_s": now - self.t0}
        completion = None
        if usage is not None:  # OpenAI's names, else Anthropic's (/v1/messages)
            out["prompt_tokens"] = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
            completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
            out["completion_tokens"] = completion
        elif stream and self.chunks:
            out["completion_tokens"] = completion = self.chunks
            out["tokens_counted"] = True
        if stream and self.first is not None:
            out["ttft_s"] = self.first - self.t0
            span = (self.last or self.first) - self.first
            if completion and completion > 1 and span > 0:
                out["tok_s"] = (completion - 1) / span  # intervals between tokens
        elif not stream and self.engine_tok_s is not None:
            out["tok_s"] = self.engine_tok_s  # the engine timed its own generation
        elif not stream and completion and self.first is not None:
            # No stream to time: tokens over the time the engine took (prompt included).
            gen = self.first - self.t0 - wait_s
            out["tok_s"] = completion / gen if gen > 0 else None
        return out


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def footer_wanted(setting: Footer, path: str, doc: Mapping[str, Any] | None) -> bool:
    """Whether the footer goes into the answer to this request (issue 11): plain
    chat text only (``/v1/completions`` too when the setting is ``"always"``), never
    an answer a program parses — JSON mode or other constrained output, or a turn
    that offers tools."""
    if not setting or doc is None:
        return False
    if path != CHAT and not (setting == "always" and path == COMPLETIONS):
        return False
    if doc.get("tools") or doc.get("functions"):
        return False
    fmt = doc.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type", "text") != "text":
        return False
    return all(doc.get(k) is None for k in _CONSTRAINED)


def footer_chunk(model: str, text: str, *, chat: bool = True) -> bytes:
    """One extra SSE chunk carrying the footer text (a chat delta, or a
    ``text_completion`` chunk for ``/v1/completions``)."""
    if chat:
        obj, choice = "chat.completion.chunk", {"index": 0, "delta": {"content": text}}
    else:
        obj, choice = "text_completion", {"index": 0, "text": text, "logprobs": None}
    doc = {"id": "swapyard-footer", "object": obj, "created": int(time.time()), "model": model,
           "choices": [{**choice, "finish_reason": None}]}  # fmt: skip
    return sse.frame(doc)


class FooterSlot:
    """Puts the footer into a stream just before the first event whose
    ``finish_reason`` is not null (after it, if that event carries text too), else
    before ``data: [DONE]``: a byte search, no parsing. Events go out whole, so the
    bytes after the last event boundary wait for the next chunk until the footer is
    placed. A tool call seen first means no footer; a stream that ends with neither
    a finish_reason nor ``[DONE]`` did not finish and gets none either."""

    def __init__(self, make: Callable[[], bytes]) -> None:
        self._make = make  # called once, when the slot is found: the figures so far
        self._held = b""
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        if self.done:
            return chunk
        data = self._held + chunk
        end = _last_event_end(data, len(data))
        self._held = data[end:]
        return self._place(data[:end]) if end else b""

    def flush(self) -> bytes:
        """What is still held, at the end of the stream."""
        held, self._held = self._held, b""
        return held

    def _place(self, events: bytes) -> bytes:
        finish = _FINISH.search(events)
        at = finish.start() if finish else events.find(sse.DONE)
        tool = _TOOL_CALL.search(events, 0, at if at >= 0 else len(events))
        if tool is not None:
            self.done = True  # a tool-call turn: no footer
            return events + self.flush()
        if at < 0:
            return events
        start = _last_event_end(events, at)
        if finish is not None:
            end = _EVENT_END.search(events, at)
            stop = end.end() if end else len(events)
            if _TEXT.search(events, start, stop):
                start = stop  # the last text rides with finish_reason: keep it first
        self.done = True
        return events[:start] + self._make() + events[start:] + self.flush()


def _last_event_end(data: bytes, before: int) -> int:
    """Where the last event that ends before ``before`` ends (0: none does)."""
    end = 0
    for m in _EVENT_END.finditer(data, 0, before):
        end = m.end()
    return end


def add_footer(body: bytes, text: str) -> bytes | None:
    """A non-streaming answer with the footer appended to each choice's text; None
    when the body is not a completion."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
        return None
    for c in doc["choices"]:
        if isinstance(c, dict):
            msg = c.get("message")
            if isinstance(msg, dict):
                if isinstance(msg.get("content"), str) and not msg.get("tool_calls"):
                    msg["content"] += text
            elif isinstance(c.get("text"), str):
                c["text"] += text
    return json.dumps(doc, ensure_ascii=False).encode()


@dataclass(slots=True)
class Ticket:
    """What is known of a request before its answer is measured: who asked for
    what, and what happened on the way (filled by ``Metering``'s methods only)."""

    model: str
    engine: str
    path: str
    stream: bool
    key: str | None
    loaded: bool
    request_id: int = 0
    wait_s: float = 0.0
    status: int = 0
    error: str | None = None


class Metering:
    """One request's measuring on the data path: the meter, whether the footer goes
    into the answer, and the one place its ``RequestRecord`` is built (``final``)."""

    def __init__(
        self, ticket: Ticket, t0: float, footer: bool = False, fix: StreamFix | None = None
    ) -> None:
        self.ticket = ticket
        self.meter = Meter(t0)
        self.footer = footer
        self.fix = fix  # may keep the usage chunk back from the client: its figures count
        self._final: RequestRecord | None = None

    def admitted(self, request_id: int, waited: float) -> None:
        self.ticket.request_id, self.ticket.wait_s = request_id, waited

    def answered(self, status: int) -> None:
        """The engine's HTTP status."""
        self.ticket.status = status

    def failed(self, err: SwapyardError) -> None:
        self.ticket.status, self.ticket.error = err.status, err.code

    def client_gone(self) -> None:
        """The client went away (its answer may have begun: keep the engine's status)."""
        self.ticket.status = self.ticket.status or 499
        self.ticket.error = "client_closed"

    def final(self) -> RequestRecord:
        """The record, built on the first call; later calls return the same one."""
        if self._final is None:
            self._final = self.so_far()
        return self._final

    def so_far(self) -> RequestRecord:
        """A record of what was seen until now (the footer's figures mid-stream)."""
        t = self.ticket
        kept = self.fix.usage if self.fix is not None else None
        seen = self.meter.figures(t.stream, t.wait_s, self.meter.usage or kept)
        return RequestRecord(
            request_id=t.request_id, model=t.model, engine=t.engine, path=t.path,
            status=t.status, stream=t.stream, key=t.key, wait_s=t.wait_s,
            loaded=t.loaded, error=t.error, **seen,
        )  # fmt: skip
