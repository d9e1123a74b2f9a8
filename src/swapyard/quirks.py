"""Engine quirks clients must not see, fixed on the way through.

Requests: the ``model`` field is rewritten to the name the engine knows (Ollama
tags, a remote server's model id), and streaming requests to engines that honour
``stream_options.include_usage`` ask for usage (so every answer's token counts
are known). Nothing is changed when nothing needs to be: the original bytes go.

Responses (only when a fix is needed; otherwise the byte pipe is untouched): an
engine that streams cumulative text has it turned into deltas, and the usage
chunk the client did not ask for is kept back from it (its figures are still
read). The stream is cut at event boundaries (a blank line), so SSE framing is
never broken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from swapyard import sse
from swapyard.config import ModelSpec


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
        self._buf += chunk
        if b"\n\n" not in self._buf and b"\r\n\r\n" not in self._buf:
            return b""
        self._buf = self._buf.replace(b"\r\n", b"\n")
        *events, self._buf = self._buf.split(b"\n\n")
        return b"".join(self._event(e) for e in events)

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return self._event(rest) if rest.strip() else b""

    def _event(self, event: bytes) -> bytes:
        lines = event.split(b"\n")
        data = [ln[5:].lstrip() for ln in lines if ln.startswith(b"data:")]
        if len(data) != 1 or data[0] == b"[DONE]":
            return event + b"\n\n"
        if not self.cumulative and b'"usage"' not in data[0]:
            return event + b"\n\n"  # nothing to fix: no need to parse it
        try:
            doc = json.loads(data[0])
        except ValueError:
            return event + b"\n\n"
        if not isinstance(doc, dict):
            return event + b"\n\n"
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
            if self.drop_usage and not doc.get("choices"):
                return b""  # the usage-only chunk the client did not ask for
        changed = False
        if self.cumulative:
            changed = self._to_delta(doc)
        if self.drop_usage and doc.get("usage") is not None:
            doc.pop("usage")
            changed = True
        if not changed:
            return event + b"\n\n"
        rest = [ln for ln in lines if not ln.startswith(b"data:")]
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
    spec: ModelSpec, doc: dict[str, Any] | None, body: bytes
) -> tuple[bytes, StreamFix]:
    """The body to send to ``spec``'s engine, and the fixes its stream needs."""
    fix = StreamFix(cumulative=spec.cumulative_stream)
    if doc is None:
        return body, fix
    changed = False
    if spec.upstream_model and doc.get("model") != spec.upstream_model:
        doc = {**doc, "model": spec.upstream_model}
        changed = True
    if spec.stream_usage and doc.get("stream") is True:
        opts = doc.get("stream_options")
        if not (isinstance(opts, dict) and opts.get("include_usage")):
            base = opts if isinstance(opts, dict) else {}
            doc = {**doc, "stream_options": {**base, "include_usage": True}}
            fix.drop_usage = True
            changed = True
    if not changed:
        return body, fix
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(), fix
