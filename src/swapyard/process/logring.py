"""A bounded ring of an engine's output lines, with followers for live tailing."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable


class LogRing:
    """The last ``maxlen`` lines of a process's stdout+stderr.

    ``tail()`` is a snapshot; ``follow()`` returns a queue that receives every
    line appended afterwards (bounded: a slow follower loses lines, never blocks
    the reader of the child's pipe).
    """

    def __init__(self, maxlen: int = 1000) -> None:
        self._lines: deque[str] = deque(maxlen=maxlen)
        self._followers: set[asyncio.Queue[str]] = set()
        self.on_line: Callable[[str], None] | None = None  # sees each line from the child

    def append(self, line: str) -> None:
        self._lines.append(line)
        for q in tuple(self._followers):
            if q.full():
                continue
            q.put_nowait(line)

    def tail(self, n: int | None = None) -> list[str]:
        lines = list(self._lines)
        return lines if n is None else lines[-n:]

    def follow(self, maxsize: int = 1000) -> asyncio.Queue[str]:
        q: asyncio.Queue[str] = asyncio.Queue(maxsize)
        self._followers.add(q)
        return q

    def unfollow(self, q: asyncio.Queue[str]) -> None:
        self._followers.discard(q)

    async def pump(self, reader: asyncio.StreamReader, max_line: int = 65536) -> None:
        """Append every line from ``reader`` until EOF; a line longer than
        ``max_line`` bytes is cut into pieces rather than held in memory."""
        buf = b""
        while True:
            try:
                chunk = await reader.read(65536)
            except (OSError, ValueError):  # pragma: no cover - pipe torn down
                break
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                self.append(line)
                if self.on_line is not None:
                    self.on_line(line)
            if len(buf) > max_line:
                self.append(buf.decode("utf-8", "replace"))
                buf = b""
        if buf:
            self.append(buf.decode("utf-8", "replace"))
