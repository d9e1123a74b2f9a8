"""Engine quirks clients must not see, fixed on the way through.

Requests: the ``model`` field is rewritten to the name the engine knows (Ollama
tags, a remote server's model id), and streaming requests on the OpenAI routes
(``USAGE_ROUTES``) to engines that honour ``stream_options.include_usage`` ask for
usage (so every answer's token counts are known). Other routes (Anthropic's
``/v1/messages``, anything an engine adds) are never changed that way: their
streams have their own shape (issue 11). Nothing is changed when nothing needs to
be: the original bytes go.

Responses (only when a fix is needed; otherwise the byte pipe is untouched): an
engine that streams cumulative text has it turned into deltas, and the one chunk
swapyard's own request for usage added (usage and ``"choices": []``) is kept back
from a client that did not ask (its figures are still read). Every other event —
usage an engine sends on its own, as llama.cpp does on the last ``/v1/completions``
chunk, and unknown fields — goes through byte for byte. The stream is cut at event
boundaries (a blank line), so SSE framing is never broken.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from swapyard import sse
from swapyard.config import ModelSpec

# The OpenAI routes whose streams end with a usage-only chunk when asked for one.
USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n")  # the end of an SSE event


@dataclass(slots=True)
class StreamFix:
    """Per-response state of the SSE fixes."""

    cumulative: bool = False
    drop_usage: bool = False
    usage: dict[str, Any] | None = None
    _buf: bytes = b""
    _seen: dict[tuple[int, str], str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.cumulative or self.drop_usage

    def feed(self, chunk: bytes) -> bytes:
        """Whole events out of the bytes so far; a partial event waits for more."""
        buf = self._buf + chunk
        if b"\r" not in buf:  # the common framing: a split is cheapest
            *events, self._buf = buf.split(b"\n\n")
            return b"".join([self._event(e + b"\n\n") for e in events])
        out = []  # CRLF (sse-starlette): cut at either boundary, keep it as sent
        start = 0
        for m in _BOUNDARY.finditer(buf):
            out.append(self._event(buf[start : m.end()]))
            start = m.end()
        self._buf = buf[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return self._event(rest) if rest.strip() else rest

    def _event(self, raw: bytes) -> bytes:
        """One event with its terminator: as it came, changed, or nothing."""
        if not self.cumulative and b'"usage"' not in raw:
            return raw  # nothing to fix: no need to parse it
        lines = raw.rstrip(b"\r\n").split(b"\n")
        data = [ln[5:].strip() for ln in lines if ln.startswith(b"data:")]
        if len(data) != 1 or data[0] == b"[DONE]":
            return raw
        try:
            doc = json.loads(data[0])
        except ValueError:
            return raw
        if not isinstance(doc, dict):
            return raw
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
            if self.drop_usage and doc.get("choices") == []:
                return b""  # the usage-only chunk swapyard asked for, not the client
        if not (self.cumulative and self._to_delta(doc)):
            return raw
        rest = [ln.rstrip(b"\r") for ln in lines if not ln.startswith(b"data:")]
        body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
        return sse.frame_data(body, rest)

    def _to_delta(self, doc: dict[str, Any]) -> bool:
        changed = False
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            idx = int(choice.get("index", 0))
            holders = [(choice.get("delta"), k) for k in ("content", "reasoning_content")]
            holders.append((choice, "text"))  # /v1/completions
            for holder, key in holders:
                if not isinstance(holder, dict) or not isinstance(holder.get(key), str):
                    continue
                full = holder[key]
                prev = self._seen.get((idx, key), "")
                self._seen[(idx, key)] = full
                if full.startswith(prev):
                    holder[key] = full[len(prev) :]
                    changed = changed or bool(prev)
        return changed


def adapt_request(
    spec: ModelSpec, path: str, doc: dict[str, Any] | None, body: bytes
) -> tuple[bytes, StreamFix]:
    """The body to send to ``spec``'s engine for a request to ``path``, and the
    fixes its stream needs."""
    fix = StreamFix(cumulative=spec.cumulative_stream)
    if doc is None:
        return body, fix
    changed = False
    if spec.upstream_model and doc.get("model") != spec.upstream_model:
        doc = {**doc, "model": spec.upstream_model}
        changed = True
    if spec.stream_usage and doc.get("stream") is True and path in USAGE_ROUTES:
        opts = doc.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage")):
            base = opts if isinstance(opts, dict) else {}
            doc = {**doc, "stream_options": {**base, "include_usage": True}}
            fix.drop_usage = True
            changed = True
    if not changed:
        return body, fix
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(), fix
