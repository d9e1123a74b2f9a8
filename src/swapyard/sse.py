"""Server-sent events framing, written once: every SSE event swapyard itself
makes (loading status, footer, error events, live streams, fixed engine chunks)
goes through ``frame``/``frame_data``. Engine bytes that need no fix never come
here: they are piped through as they are."""

from __future__ import annotations

import json
from typing import Any

from swapyard.errors import SwapyardError

HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]"
KEEPALIVE = b": keep-alive\n\n"


def frame_data(data: bytes, other_lines: list[bytes] | None = None) -> bytes:
    """One event whose ``data:`` line is ``data`` (``other_lines``, such as
    ``event: ...``, go before it)."""
    line = b"data: " + data
    if other_lines:
        return b"\n".join([*other_lines, line]) + b"\n\n"
    return line + b"\n\n"


def frame(doc: Any, *, compact: bool = False) -> bytes:
    """One event carrying ``doc`` as JSON."""
    seps = (",", ":") if compact else None
    return frame_data(json.dumps(doc, ensure_ascii=False, separators=seps).encode())


def error_event(err: SwapyardError) -> bytes:
    """An event carrying an OpenAI error envelope."""
    return frame(err.to_openai())


class Splitter:
    """Whole events out of an SSE byte stream cut anywhere (LF or CRLF framing), for
    a front that rewrites a stream event by event (``proxy.StreamTranslator``)."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events these bytes complete, without their blank line; the rest waits."""
        buf = (self._buf + chunk).replace(b"\r\n", b"\n")
        *events, self._buf = buf.split(b"\n\n")
        return events

    def rest(self) -> bytes:
        """What is left at the end of the stream (b"" when only blank)."""
        rest, self._buf = self._buf, b""
        return rest if rest.strip() else b""
