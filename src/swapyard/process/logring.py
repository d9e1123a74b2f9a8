"""A bounded ring of an engine's output lines, with followers for live tailing."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from collections.abc import Callable
from pathlib import Path


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


class LogFile:
    """An engine's output file, read into a ``LogRing``.

    Engines write their stdout and stderr to a file (opened for appending), not a
    pipe: a pipe dies with swapyard, and an engine that writes to it then gets
    SIGPIPE — a file lets a restarted swapyard adopt the engine and keep reading.
    ``drain()`` reads whatever is new (the actor calls it when the process exits,
    so an error carries the very last lines); ``follow()`` drains every ``every``
    seconds. A file past ``cap`` bytes is truncated (the writer appends, so it
    goes on at the new end); the ring keeps the last lines either way.
    """

    def __init__(self, path: Path, ring: LogRing, cap: int = 16 * 2**20) -> None:
        self.path = path
        self._ring = ring
        self._cap = cap
        self._pos = 0
        self._buf = b""

    def open_for_engine(self) -> int:
        """A fresh, empty file for a new process; the caller passes (then closes)
        the returned descriptor as the child's stdout and stderr."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        self._pos, self._buf = 0, b""
        return fd

    def attach(self, last: int = 200) -> None:
        """Follow an existing file (an adopted engine's): its last ``last`` lines go
        into the ring, then everything written from now on."""
        try:
            data = self.path.read_bytes()
        except OSError:
            data = b""
        for raw in data.splitlines()[-last:]:
            self._emit(raw)
        self._pos, self._buf = len(data), b""

    def drain(self, max_line: int = 65536) -> None:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self._pos:  # truncated under us: start over
                    self._pos = 0
                f.seek(self._pos)
                data = f.read()
        except OSError:
            return
        self._pos += len(data)
        if not data:
            return
        buf = self._buf + data
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            self._emit(raw)
        if len(buf) > max_line:
            self._emit(buf)
            buf = b""
        self._buf = buf
        if self._pos > self._cap:
            with contextlib.suppress(OSError):
                os.truncate(self.path, 0)
            self._pos = 0

    def flush(self) -> None:
        """The process is gone: whatever partial line is left goes in too."""
        self.drain()
        if self._buf:
            self._emit(self._buf)
            self._buf = b""

    async def follow(self, every: float = 0.1) -> None:
        while True:
            self.drain()
            await asyncio.sleep(every)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r")
        self._ring.append(line)
        if self._ring.on_line is not None:
            self._ring.on_line(line)
