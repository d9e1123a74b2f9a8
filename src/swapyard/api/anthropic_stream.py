"""An engine's chat completion stream, rewritten as Anthropic's Messages events
(issue 14), in Anthropic's order::

    message_start, ping
    content_block_start, content_block_delta…, content_block_stop   (per block)
    message_delta (stop_reason, usage), message_stop

A block is opened when the kind of what the engine streams changes: reasoning
(``thinking_delta``, only when the client enabled thinking), text
(``text_delta``), each tool call (``input_json_delta`` with the argument
fragments as the engine sends them). ``message_delta`` waits for the end of the
engine's stream: the usage chunk comes after the one with ``finish_reason``. A
stream that breaks, or an error the engine sends as an event, ends with an
``error`` event (Anthropic's shape), and nothing after it.
"""

from __future__ import annotations

import json
from typing import Any

from swapyard import sse
from swapyard.api.anthropic_chat import Ask, error_doc, new_id, obj, stop_reason, usage_of
from swapyard.api.chat_shapes import stream_error, stream_event
from swapyard.errors import SwapyardError


def event(kind: str, doc: dict[str, Any]) -> bytes:
    """One Anthropic event: its ``event:`` line and its JSON ``data:`` line."""
    data = json.dumps({"type": kind, **doc}, ensure_ascii=False, separators=(",", ":"))
    return sse.frame_data(data.encode(), [b"event: " + kind.encode()])


def error_event(status: int, message: str) -> bytes:
    return event("error", {"error": error_doc(status, message)["error"]})


class EventStream:
    """One streamed answer (a ``StreamTranslator``): engine SSE bytes in, Anthropic
    events out. Bytes may end mid-event; a partial event waits for the rest."""

    def __init__(self, ask: Ask) -> None:
        self.ask = ask
        self._events = sse.Splitter()
        self._started = False
        self._over = False  # an error event went out: nothing more
        self._index = -1  # of the last block opened
        self._open: tuple[str, int] | None = None  # ("text" | "thinking" | "tool", call)
        self._finish: Any = None
        self._matched: Any = None  # the stop string the engine names (vLLM)
        self._called = False
        self._tool_id: Any = None  # of the tool call whose block is open
        self._usage: Any = None
        self._pieces = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._over:
            return b""
        return b"".join(self._event(raw) for raw in self._events.feed(chunk))

    def end(self) -> bytes:
        """The engine's stream ended well: close the last block, then the message."""
        if self._over:
            return b""
        rest = self._events.rest()
        out = [self._event(rest)] if rest else []
        if self._over:
            return b"".join(out)
        out.append(self._start())
        if self._index < 0:  # a message has at least one block, as a whole answer does
            out.append(self._switch(("text", 0), {"type": "text", "text": ""}))
        out.append(self._close())
        reason, sequence = stop_reason(self.ask, self._finish, self._matched, self._called)
        usage = usage_of(self._usage, self._pieces)
        out.append(event("message_delta", {
            "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage,
        }))  # fmt: skip
        out.append(event("message_stop", {}))
        self._over = True
        return b"".join(out)

    def error(self, err: SwapyardError) -> bytes:
        """The stream broke: Anthropic's error event is its last."""
        if self._over:
            return b""
        self._over = True
        return error_event(err.status, err.message)

    # -- one engine event ------------------------------------------------------------
    def _event(self, raw: bytes) -> bytes:
        doc = stream_event(raw)
        if doc is None:
            return b""
        if (message := stream_error(doc)) is not None:  # an engine's error event (vLLM)
            self._over = True
            return error_event(502, f"the engine failed mid-answer: {message}")
        out = [self._start()]
        if isinstance(doc.get("usage"), dict):
            self._usage = doc["usage"]
        elif self._usage is None and isinstance(timings := doc.get("timings"), dict):
            # llama-server not asked for usage (a raw cmd) still times its answer.
            self._usage = {"prompt_tokens": timings.get("prompt_n"),
                           "completion_tokens": timings.get("predicted_n")}  # fmt: skip
        choices = doc.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if isinstance(choice, dict):
            delta = choice.get("delta")
            if isinstance(delta, dict):
                out.append(self._delta(delta))
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
                self._matched = choice.get("stop_reason")
        return b"".join(out)

    def _delta(self, delta: dict[str, Any]) -> bytes:
        out = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if self.ask.thinking and isinstance(reasoning, str) and reasoning:
            block: dict[str, Any] = {"type": "thinking", "thinking": "", "signature": ""}
            out.append(self._switch(("thinking", 0), block))
            out.append(self._piece({"type": "thinking_delta", "thinking": reasoning}))
        text = delta.get("content")
        if isinstance(text, str) and text:
            out.append(self._switch(("text", 0), {"type": "text", "text": ""}))
            out.append(self._piece({"type": "text_delta", "text": text}))
        for call in delta.get("tool_calls") or ():
            if not isinstance(call, dict):
                continue
            self._called = True
            fn = obj(call.get("function"))
            idx, call_id = call.get("index", 0), call.get("id")
            if self._open != ("tool", idx) or (call_id and call_id != self._tool_id):
                self._tool_id = call_id or new_id("toolu")
                block = {"type": "tool_use", "id": self._tool_id,
                         "name": str(fn.get("name", "")), "input": {}}  # fmt: skip
                out.append(self._switch(("tool", idx), block, force=True))
            args = fn.get("arguments")
            if isinstance(args, str) and args:
                out.append(self._piece({"type": "input_json_delta", "partial_json": args}))
        return b"".join(out)

    # -- Anthropic's framing ---------------------------------------------------------
    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        usage = {"input_tokens": 0, "output_tokens": 0}  # known at the end: message_delta
        message: dict[str, Any] = {"id": new_id("msg"), "type": "message", "role": "assistant",
                   "model": self.ask.model, "content": [], "stop_reason": None,
                   "stop_sequence": None, "usage": usage}  # fmt: skip
        return event("message_start", {"message": message}) + event("ping", {})

    def _switch(self, key: tuple[str, int], block: dict[str, Any], force: bool = False) -> bytes:
        """Open ``block`` unless the one open is already of its kind."""
        if self._open == key and not force:
            return b""
        out = self._close()
        self._index += 1
        self._open = key
        return out + event("content_block_start", {"index": self._index, "content_block": block})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return event("content_block_stop", {"index": self._index})

    def _piece(self, delta: dict[str, Any]) -> bytes:
        self._pieces += 1
        return event("content_block_delta", {"index": self._index, "delta": delta})
