"""Per-request figures, measured on the data path without parsing what is not needed.

A ``Meter`` watches the bytes of one answer go by: the first and last chunk that
carries generated text (``"content"``, ``"text"`` or ``"reasoning_content"`` with
a non-empty value), how many such chunks there were, and the engine's ``usage``
when it sends one. At the end it makes a ``RequestRecord``: tokens from the
engine's usage, else counted (one per text chunk, as engines stream them), time
to first token (from the request's arrival at swapyard, so it includes any wait
for a load), generation tok/s (completion tokens over the time from the first
to the last token) and the total.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from swapyard.quirks import StreamFix

_TEXT = re.compile(rb'"(?:content|text|reasoning_content)"\s*:\s*"(?!")')
_DATA_USAGE = re.compile(rb"^data: ?(\{.*\"usage\".*\})\s*$", re.MULTILINE)
DONE = b"data: [DONE]"


@dataclass(slots=True)
class RequestRecord:
    """One proxied request, as the usage store, metrics and headers see it."""

    request_id: int
    model: str
    engine: str
    path: str
    status: int
    stream: bool
    key: str | None = None  # the API key's name, or a fingerprint; never the key
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_counted: bool = False  # True: counted here, the engine sent no usage
    ttft_s: float | None = None
    tok_s: float | None = None
    total_s: float = 0.0
    wait_s: float = 0.0
    loaded: bool = False  # waited for its model to load
    error: str | None = None
    at: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headers(self) -> dict[str, str]:
        """The figures as response headers (non-streaming answers)."""
        out = {"X-Swapyard-Total-Ms": f"{self.total_s * 1000:.1f}",
               "X-Swapyard-Wait-Ms": f"{self.wait_s * 1000:.1f}",
               "X-Swapyard-Loaded": "true" if self.loaded else "false"}  # fmt: skip
        if self.prompt_tokens is not None:
            out["X-Swapyard-Prompt-Tokens"] = str(self.prompt_tokens)
        if self.completion_tokens is not None:
            out["X-Swapyard-Completion-Tokens"] = str(self.completion_tokens)
        if self.ttft_s is not None:
            out["X-Swapyard-TTFT-Ms"] = f"{self.ttft_s * 1000:.1f}"
        if self.tok_s is not None:
            out["X-Swapyard-Tokens-Per-Second"] = f"{self.tok_s:.2f}"
        return out

    def footer(self) -> str:
        """The line users' routers append to answers: "⚡ 25.6 tok/s (...)"."""
        n = self.completion_tokens or 0
        speed = f"{self.tok_s:.1f} tok/s" if self.tok_s is not None else "— tok/s"
        gen = self.total_s - (self.ttft_s or 0.0)
        ttft = f", first token {self.ttft_s:.2f}s" if self.ttft_s is not None else ""
        load = f", waited {self.wait_s:.1f}s for the model" if self.loaded else ""
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
        usage = doc.get("usage") if isinstance(doc, dict) else None
        if isinstance(usage, dict):
            self.usage = usage

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

    def record(self, base: RequestRecord, usage: dict[str, Any] | None = None) -> RequestRecord:
        """Fill ``base`` (ids, status, wait) with what was seen."""
        now = time.perf_counter()
        usage = usage or self.usage
        r = base
        r.total_s = now - self.t0
        if usage is not None:
            r.prompt_tokens = _int(usage.get("prompt_tokens"))
            r.completion_tokens = _int(usage.get("completion_tokens"))
        elif r.stream and self.chunks:
            r.completion_tokens, r.tokens_counted = self.chunks, True
        if r.stream and self.first is not None:
            r.ttft_s = self.first - self.t0
            span = (self.last or self.first) - self.first
            if r.completion_tokens and r.completion_tokens > 1 and span > 0:
                r.tok_s = (r.completion_tokens - 1) / span  # intervals between tokens
        elif not r.stream and self.engine_tok_s is not None:
            r.tok_s = self.engine_tok_s  # the engine timed its own generation
        elif not r.stream and r.completion_tokens and self.first is not None:
            # No stream to time: tokens over the time the engine took (prompt included).
            gen = self.first - self.t0 - r.wait_s
            r.tok_s = r.completion_tokens / gen if gen > 0 else None
        return r


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def footer_chunk(model: str, text: str) -> bytes:
    """One extra final SSE delta carrying the footer text."""
    doc = {"id": "swapyard-footer", "object": "chat.completion.chunk", "created": int(time.time()),
           "model": model, "choices": [{"index": 0, "delta": {"content": text},
                                        "finish_reason": None}]}  # fmt: skip
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode() + b"\n\n"


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
            if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                msg["content"] += text
            elif isinstance(c.get("text"), str):
                c["text"] += text
    return json.dumps(doc, ensure_ascii=False).encode()


class Metering:
    """One request's measuring on the data path: the meter, the record it makes
    (once), and whether the footer goes into the answer."""

    def __init__(
        self, base: RequestRecord, t0: float, footer: bool = False, fix: StreamFix | None = None
    ) -> None:
        self.base = base
        self.meter = Meter(t0)
        self.footer = footer
        self.fix = fix  # may keep the usage chunk back from the client: its figures count
        self._final: RequestRecord | None = None

    def final(self) -> RequestRecord:
        if self._final is None:
            kept = self.fix.usage if self.fix is not None else None
            self._final = self.meter.record(self.base, self.meter.usage or kept)
        return self._final
