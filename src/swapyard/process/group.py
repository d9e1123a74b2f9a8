"""Process-group operations for engine children (house style 5: supervise the tree)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time


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


async def wait_for_pid_exit(pid: int, poll: float = 0.5) -> None:
    """Return once ``pid`` — not necessarily our child (an adopted engine) — has
    exited. A pidfd says so at once; without one, ``/proc`` is polled."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # pragma: no cover - old kernels only
        await asyncio.to_thread(_wait_gone, pid, poll)
        return
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


def _wait_gone(pid: int, poll: float) -> None:  # pragma: no cover - old kernels only
    while not _gone(pid):
        time.sleep(poll)


def _gone(pid: int) -> bool:  # pragma: no cover - old kernels only
    """No such process, or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
