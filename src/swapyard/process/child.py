"""What the engine actor does with a child process that needs none of its state:
spawning it, polling its health, running its stop command, the crash policy's
arithmetic, and the waiters' futures (the actor stays the only caller)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet

import aiohttp
from yarl import URL

from swapyard.config import ModelSpec, render


def health_poll_interval(elapsed: float) -> float:
    """Fast polls while a quick engine is likely to come up, slower later (≤ 100 ms).

    Half the interval is added to every cold start on average; a poll that finds no
    listener costs ~50 µs, so the first seconds poll every 5 ms."""
    if elapsed < 2.0:
        return 0.005
    if elapsed < 10.0:
        return 0.025
    return 0.1


# The CLI's own key variables (cli/client.py): a `serve` started from the shell
# that uses the CLI has them, and no engine needs them.
CLIENT_KEY_VARS = frozenset({"SWAPYARD_ADMIN_KEY", "SWAPYARD_API_KEY"})


def child_env(env: Mapping[str, str], drop: AbstractSet[str]) -> dict[str, str]:
    """An engine's (or its stop command's) environment: swapyard's own without
    ``drop`` and the CLI's key variables (issue 11: keys never reach an engine),
    then ``env``, which the config gives on purpose."""
    inherited = {k: v for k, v in os.environ.items() if k not in drop and k not in CLIENT_KEY_VARS}
    return {**inherited, **env}


def popen(
    argv: list[str], env: Mapping[str, str], out: int, drop: AbstractSet[str] = frozenset()
) -> subprocess.Popen[bytes]:
    """The engine's child in a session (and process group) of its own, its output
    to the file ``out``, its environment ``child_env(env, drop)``. Popen, not
    asyncio's subprocess: its wait() only returns once every pipe is closed, so an
    orphan holding one would hide an exit. (The fork/exec is synchronous either
    way: asyncio calls Popen too.)"""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
        env=child_env(env, drop),
    )


def host_port(url: str) -> tuple[str, int]:
    u = URL(url)
    return (u.host or "127.0.0.1", u.port or 80)


def resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def fail(fut: asyncio.Future[None], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def resolve_all(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        resolve(f)
    futs.clear()


def fail_all(futs: list[asyncio.Future[None]], err: BaseException) -> None:
    for f in futs:
        fail(f, err)
    futs.clear()


async def poll_health(
    http: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    give_up_after: float,
    wanted: Callable[[], bool],
) -> bool | None:
    """Poll ``url`` until it answers 200 (True), ``give_up_after`` seconds pass
    (False), or ``wanted()`` turns false (None: nobody waits for the answer any more)."""
    t0 = time.monotonic()
    each = aiohttp.ClientTimeout(total=2.0)
    while wanted():
        elapsed = time.monotonic() - t0
        if elapsed > give_up_after:
            return False
        try:
            async with http.get(url, timeout=each, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        await asyncio.sleep(health_poll_interval(elapsed))
    return None


async def run_stop_command(
    spec: ModelSpec, at: Mapping[str, str], log: Callable[[str], None]
) -> None:
    """Run ``spec.cmd_stop`` with the runtime macros ``at`` (``${PORT}``, ``${PID}``)
    filled in; the log shows it without ``${env.*}`` values, then its output. A
    failure is logged: the kill timer still applies."""
    assert spec.cmd_stop is not None
    argv = [render(a, at) for a in spec.cmd_stop]
    log(f"[swapyard] stopping with: {render(spec.cmd_stop_display, at)}")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=child_env(spec.env, spec.env_drop),
        )
        out, _ = await asyncio.wait_for(proc.communicate(), spec.stop_timeout)
    except (OSError, TimeoutError) as exc:
        log(f"[swapyard] cmd_stop failed: {exc}; the kill timer still applies")
        return
    for line in out.decode("utf-8", "replace").splitlines():
        log(f"[cmd_stop] {line}")


class Failures:
    """The crash policy's arithmetic (issue 10): when the recent failures were, the
    backoff after the next one, and whether it hits the start limit."""

    def __init__(self) -> None:
        self._at: deque[float] = deque()

    def add(self, now: float, spec: ModelSpec) -> tuple[int, float | None]:
        """Record a failure at ``now``: (failures within ``start_limit_interval``,
        the backoff in seconds, or None when that many is the start limit)."""
        self._at.append(now)
        while self._at and self._at[0] < now - spec.start_limit_interval:
            self._at.popleft()
        n = len(self._at)
        if n >= spec.start_limit:
            return n, None
        return n, min(spec.backoff_max, spec.backoff * 2 ** (n - 1))

    def clear(self) -> None:
        self._at.clear()
