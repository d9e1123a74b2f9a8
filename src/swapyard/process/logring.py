"""A bounded ring of an engine's output lines, with followers for live tailing."""

from __future__ import annotations

import asyncio
from collections import deque


class LogRing:
    """The last ``maxlen`` lines of a process's stdout+stderr.

    ``tail()`` is a snapshot; ``follow()`` returns a queue that receives every
    line appended afterwards (bounded: a slow follower loses lines, never blocks
    the reader of the child's pipe).
    """

    def __init__(self, maxlen: int = 1000) -> None:
        self._lines: deque[str] = deque(maxlen=maxlen)
        self._followers: set[asyncio.Queue[str]] = set()

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
