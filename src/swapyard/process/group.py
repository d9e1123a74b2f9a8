"""Process-group operations for engine children (house style 5: supervise the tree)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess


async def wait_for_exit(proc: subprocess.Popen[bytes]) -> int:
    """The exit status, as soon as the process exits (it is reaped here).

    A pidfd becomes readable on exit, whatever still holds the process's pipes;
    where pidfds are missing (Linux < 5.3), a thread blocks in waitpid instead.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # pragma: no cover - old kernels only
        return await asyncio.to_thread(proc.wait)
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


def killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
