"""The actor that owns one engine's child process.

Only ``_run`` touches the child, the state and the waiters (house style 3). Callers
send commands through the inbox and await a future; helper tasks (pipe reader,
exit watcher, health poller, kill timer) only post messages back. Every message
about a child carries the spawn generation, so news about an old child never
moves the state of a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import aiohttp
from yarl import URL

from swapyard.config import ModelSpec, render
from swapyard.engines.base import Control, FastSwap, FastSwapFailed, ProgressFn
from swapyard.errors import (
    EngineCrashed,
    EngineExitedEarly,
    EngineStartError,
    EngineStartTimeout,
    EngineStopped,
    PortInUse,
    SwapyardError,
)
from swapyard.events import EngineStateChanged, EventBus
from swapyard.ports import PortAllocator, port_is_free
from swapyard.process.group import killpg, wait_for_exit
from swapyard.process.logring import LogRing
from swapyard.process.messages import (
    Exited,
    Healthy,
    KillNow,
    Message,
    Progress,
    Slept,
    Start,
    StartTimedOut,
    Stop,
    Woke,
)
from swapyard.process.state import EngineState, check_transition
from swapyard.surface import EngineView

S = EngineState
LOG_TAIL_IN_ERRORS = 20
_PIPE_DRAIN_BOUND = 2.0


def health_poll_interval(elapsed: float) -> float:
    """Fast polls while a quick engine is likely to come up, slower later (≤ 100 ms).

    Half the interval is added to every cold start on average; a poll that finds no
    listener costs ~50 µs, so the first seconds poll every 5 ms."""
    if elapsed < 2.0:
        return 0.005
    if elapsed < 10.0:
        return 0.025
    return 0.1


class EngineProcess:
    """One model's engine: start it, know when it is ready, stop it, and say so.

    ``start()`` returns once the engine is ready, or raises ``EngineStartError``
    (with the last log lines) or ``EngineStopped``. ``stop()`` returns once the
    whole process group is gone. Both are safe to call in any state and from many
    tasks at once; they are answered in the order they arrive.
    """

    def __init__(
        self,
        spec: ModelSpec,
        bus: EventBus,
        ports: PortAllocator,
        http: aiohttp.ClientSession,
    ) -> None:
        self.spec = spec
        self.logs = LogRing()
        self._bus = bus
        self._ports = ports
        self._http = http
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._state = S.STOPPED
        self._gen = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: str = ""
        self._start_waiters: list[asyncio.Future[None]] = []
        self._stop_waiters: list[asyncio.Future[None]] = []
        self._restart_after_stop: list[tuple[asyncio.Future[None], dict[str, str]]] = []
        self._failure: SwapyardError | None = None
        self._pending_failure: SwapyardError | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._actor: asyncio.Task[None] | None = None
        self.state_since = time.monotonic()
        self.started_at: float | None = None
        # Load progress the engine reported (fraction or None, what it is doing).
        self.progress: tuple[float | None, str] | None = None
        self._fast: FastSwap | None = (
            spec.adapter.fast(spec.fields) if spec.fields is not None else None
        )
        self._then_stop = False  # a full stop was asked while a sleep was under way
        self._warm = spec.fields is not None and spec.adapter.needs_warm(spec.fields)
        self._pending_warm = False  # the next health 200 starts the warm-up
        self._warming = False
        self._waking = False
        if spec.fields is not None and spec.engine == "llamacpp":
            self.logs.on_line = self._log_line

    # -- the public, read-only view ------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def upstream(self) -> str:
        """Base URL of the engine (valid while starting or ready)."""
        return render(self.spec.proxy, {"PORT": self._port})

    @property
    def last_error(self) -> SwapyardError | None:
        return self._failure

    @property
    def waking(self) -> bool:
        """Starting by a fast swap in (not a cold start)."""
        return self._state is S.STARTING and self._waking

    @property
    def fast_mode(self) -> str | None:
        """The fast swap this engine offers ("sleep", "unload", ...), if any."""
        return self._fast.mode if self._fast is not None else None

    def view(self) -> EngineView:
        """A frozen view of this engine now (what the router's snapshots carry)."""
        live = self._state in (S.STARTING, S.READY)
        return EngineView(
            state=self._state,
            state_since=self.state_since,
            pid=self.pid,
            upstream=self.upstream if live else None,
            last_error=self._failure.message if self._failure else None,
            fast_swap=self.fast_mode,
            loading_since=self.started_at,
            waking=self.waking,
            progress=self.progress,
        )

    # -- commands ------------------------------------------------------------------
    def run(self) -> None:
        """Start the actor task (once)."""
        if self._actor is None:
            self._actor = asyncio.create_task(self._run(), name=f"engine:{self.spec.id}")

    async def start(self, env: Mapping[str, str] | None = None) -> None:
        """Start (or join the start of) the engine; ``env`` adds variables for this
        start (e.g. ``CUDA_VISIBLE_DEVICES`` for its placement)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Start(fut, dict(env or {})))
        await fut

    async def stop(self, sleep: bool = False) -> None:
        """Stop the engine; with ``sleep``, put it to sleep instead if it has a fast
        swap (falling back to a stop if that fails). Returns once it is stopped or
        asleep."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Stop(fut, sleep and self._fast is not None))
        await fut

    async def close(self) -> None:
        """Stop the engine, then end the actor and its helper tasks."""
        if self._actor is None:
            return
        with contextlib.suppress(SwapyardError):
            await self.stop()
        self._actor.cancel()
        for t in (self._actor, *self._tasks):
            t.cancel()
        await asyncio.gather(self._actor, *self._tasks, return_exceptions=True)
        self._actor = None

    def kill_now(self) -> None:
        """Shutdown backstop: SIGKILL the group without waiting for the actor."""
        if self._proc is not None and self._state in (
            S.STARTING, S.READY, S.STOPPING, S.SLEEPING
        ):  # fmt: skip
            killpg(self._proc.pid, signal.SIGKILL)

    # -- the actor -----------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            msg = await self._inbox.get()
            match msg:
                case Start(reply, env):
                    await self._on_start(reply, env)
                case Stop(reply, sleep):
                    self._on_stop(reply, sleep)
                case Healthy(gen) if gen == self._gen and self._state is S.STARTING:
                    if self._pending_warm:
                        self._pending_warm = False
                        self._warming = True
                        self._spawn_task(self._run_warm(gen))
                    else:
                        self._became_ready()
                case Woke(gen, error) if gen == self._gen and self._state is S.STARTING:
                    self._on_woke(gen, error)
                case Slept(gen, error) if gen == self._gen and self._state is S.STOPPING:
                    self._on_slept(error)
                case Progress(gen, fraction, text) if (
                    gen == self._gen and self._state is S.STARTING
                ):
                    self.progress = (fraction, text)
                case StartTimedOut(gen) if gen == self._gen and self._state is S.STARTING:
                    err = EngineStartTimeout(
                        self.spec.id,
                        f"health check {self.spec.check_endpoint} did not answer 200 within "
                        f"{self.spec.start_timeout:g} s",
                        self.logs.tail(LOG_TAIL_IN_ERRORS),
                    )
                    self._pending_failure = err
                    _fail_all(self._start_waiters, err)
                    self._begin_stop()
                case Exited(gen, rc) if gen == self._gen:
                    self._on_exited(rc)
                case KillNow(gen) if gen == self._gen and self._state is S.STOPPING:
                    self.logs.append(
                        f"[swapyard] still running {self.spec.stop_timeout:g} s after stop; "
                        "sending SIGKILL to the process group"
                    )
                    if self._proc is not None:
                        killpg(self._proc.pid, signal.SIGKILL)
                case _:
                    pass  # stale news about an earlier child

    async def _on_start(self, reply: asyncio.Future[None], env: dict[str, str]) -> None:
        if self._state is S.READY:
            _resolve(reply)
        elif self._state is S.STARTING:
            self._start_waiters.append(reply)
        elif self._state is S.STOPPING:
            self._restart_after_stop.append((reply, env))
        elif self._state is S.SLEEPING:
            self._start_waiters.append(reply)
            self._begin_wake()
        else:
            self._start_waiters.append(reply)
            await self._spawn(env)

    def _on_stop(self, reply: asyncio.Future[None], sleep: bool = False) -> None:
        if self._state is S.FAILED:  # an explicit stop clears the failure
            self._failure = None
            self._set_state(S.STOPPED)
        if self._state is S.STOPPED or (sleep and self._state is S.SLEEPING):
            _resolve(reply)
            return
        self._stop_waiters.append(reply)
        restarts, self._restart_after_stop = self._restart_after_stop, []
        _fail_all([f for f, _ in restarts], EngineStopped(self.spec.id, "engine was stopped"))
        if self._state is S.STOPPING:
            self._then_stop = self._then_stop or not sleep
            return
        _fail_all(
            self._start_waiters,
            EngineStopped(self.spec.id, f"model {self.spec.id!r} was stopped while starting"),
        )
        if sleep and self._state is S.READY:
            self._begin_sleep()
        else:
            self._begin_stop()

    # -- fast swaps: the adapter's HTTP calls run in helper tasks -----------------------
    def _control(self) -> Control:
        assert self.spec.fields is not None
        return Control(self._http, self.upstream, self.spec.fields, self.spec.check_headers)

    def _report(self, gen: int) -> ProgressFn:
        def progress(fraction: float | None, text: str) -> None:
            self._inbox.put_nowait(Progress(gen, fraction, text))

        return progress

    def _begin_sleep(self) -> None:
        assert self._fast is not None
        self._set_state(S.STOPPING)
        self._then_stop = False
        self.logs.append(f"[swapyard] fast swap out ({self._fast.mode})")
        self._spawn_task(self._run_sleep(self._gen, self._fast))

    async def _run_sleep(self, gen: int, fast: FastSwap) -> None:
        try:
            await fast.sleep(self._control())
        except FastSwapFailed as exc:
            self._inbox.put_nowait(Slept(gen, str(exc)))
        else:
            self._inbox.put_nowait(Slept(gen, None))

    def _on_slept(self, error: str | None) -> None:
        if error is not None:
            self.logs.append(f"[swapyard] fast swap out failed: {error}; stopping instead")
            self._begin_stop()
            return
        self._set_state(S.SLEEPING)
        if self._then_stop:
            self._then_stop = False
            self._begin_stop()
            return
        _resolve_all(self._stop_waiters)

    def _begin_wake(self) -> None:
        assert self._fast is not None
        self._waking = True
        self._set_state(S.STARTING)
        self.started_at = time.monotonic()
        self.progress = None
        self.logs.append(f"[swapyard] fast swap in ({self._fast.mode})")
        self._spawn_task(self._run_wake(self._gen, self._fast))

    async def _run_wake(self, gen: int, fast: FastSwap) -> None:
        try:
            await fast.wake(self._control(), self._report(gen))
        except FastSwapFailed as exc:
            self._inbox.put_nowait(Woke(gen, str(exc)))
        else:
            self._inbox.put_nowait(Woke(gen, None))

    async def _run_warm(self, gen: int) -> None:
        assert self.spec.fields is not None
        try:
            await self.spec.adapter.warm(self._control(), self._report(gen))
        except FastSwapFailed as exc:
            self._inbox.put_nowait(Woke(gen, str(exc)))
        else:
            self._inbox.put_nowait(Woke(gen, None))

    def _on_woke(self, gen: int, error: str | None) -> None:
        warming, self._warming = self._warming, False
        if error is None:
            if warming:
                self._became_ready()
            else:
                self._spawn_task(self._poll_health(gen))  # ready when it answers again
            return
        if warming:  # the warm-up of a cold start failed: the start failed
            err = EngineExitedEarly(self.spec.id, f"loading the model failed: {error}",
                                    self.logs.tail(LOG_TAIL_IN_ERRORS))  # fmt: skip
            self._pending_failure = err
            _fail_all(self._start_waiters, err)
            self._begin_stop()
            return
        self.logs.append(f"[swapyard] fast swap in failed: {error}; restarting cold")
        waiters, self._start_waiters = self._start_waiters, []
        self._restart_after_stop += [(w, {}) for w in waiters]
        self._begin_stop()

    def _became_ready(self) -> None:
        self._set_state(S.READY)
        _resolve_all(self._start_waiters)

    def _log_line(self, line: str) -> None:
        # Called by the pipe reader (a helper task): it only posts a message.
        found = self.spec.adapter.log_progress(line)
        if found is not None:
            self._inbox.put_nowait(Progress(self._gen, *found))

    async def _spawn(self, extra_env: dict[str, str]) -> None:
        self._gen += 1
        gen = self._gen
        self._failure = None
        self._pending_failure = None
        self._waking = False
        self._set_state(S.STARTING)
        self.started_at = time.monotonic()
        self.progress = None
        self._pending_warm = self._warm
        self._warming = False
        spec = self.spec
        if spec.remote:  # no process: ready when the other server answers
            self._port = ""
            self.logs.append(f"[swapyard] remote engine at {self.upstream}: checking it")
            self._spawn_task(self._poll_health(gen))
            return
        taken = self._claim_port()
        if taken is not None:
            self._fail_start(taken)
            return
        argv = [render(a, {"PORT": self._port}) for a in spec.cmd]
        self.logs.append(f"[swapyard] starting: {' '.join(argv)}")
        env = {k: render(v, {"PORT": self._port}) for k, v in spec.env.items()}
        try:
            proc = _popen(argv, {**env, **extra_env})
        except OSError as exc:
            self._fail_start(
                EngineExitedEarly(
                    spec.id, f"cannot execute {argv[0]!r}: {exc.strerror or exc}", self.logs.tail()
                )
            )
            return
        self._proc = proc
        assert proc.stdout is not None
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        pipe, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), proc.stdout
        )
        self._spawn_task(self._read_output(reader, pipe))
        self._spawn_task(self._watch_exit(proc, gen))
        self._spawn_task(self._poll_health(gen))

    def _claim_port(self) -> PortInUse | None:
        """A fresh port when the command takes ``${PORT}``; else check that the
        fixed local port is free (an error if another process holds it)."""
        if self.spec.needs_port:
            self._port = str(self._ports.allocate())
            return None
        self._port = ""
        host, port = _host_port(self.upstream)
        if host in ("127.0.0.1", "localhost", "::1") and not port_is_free(host, port):
            return PortInUse(
                self.spec.id, f"port {port} of {self.upstream} is already in use by another process"
            )
        return None

    def _fail_start(self, err: EngineStartError) -> None:
        self._failure = err
        self._set_state(S.FAILED, err)
        _fail_all(self._start_waiters, err)

    def _begin_stop(self) -> None:
        proc = self._proc
        if self._state is not S.STOPPING:
            self._set_state(S.STOPPING)
        if self.spec.remote:
            self._on_exited(0)
            return
        if proc is None:  # pragma: no cover - STARTING/READY always has a child
            return
        gen = self._gen
        if self.spec.cmd_stop:
            argv = [
                render(a, {"PORT": self._port, "PID": str(proc.pid)}) for a in self.spec.cmd_stop
            ]
            self._spawn_task(self._run_stop_command(argv))
        else:
            killpg(proc.pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        loop.call_later(self.spec.stop_timeout, self._inbox.put_nowait, KillNow(gen))

    def _on_exited(self, rc: int) -> None:
        proc = self._proc
        if proc is not None and not self.spec.remote:
            # The leader is gone; anything left in its group is an orphan (house style 5).
            killpg(proc.pid, signal.SIGKILL)
        if self._state is S.STARTING:
            self._fail_start(
                EngineExitedEarly(
                    self.spec.id,
                    f"the process exited with code {rc} before it became ready",
                    self.logs.tail(LOG_TAIL_IN_ERRORS),
                )
            )
        elif self._state in (S.READY, S.SLEEPING):
            doing = "serving" if self._state is S.READY else "asleep"
            err = EngineCrashed(
                self.spec.id,
                f"the process exited with code {rc} while {doing}",
                self.logs.tail(LOG_TAIL_IN_ERRORS),
            )
            self._failure = err
            self._set_state(S.FAILED, err)
        elif self._state is S.STOPPING:
            if self._pending_failure is not None:
                self._failure = self._pending_failure
                self._set_state(S.FAILED, self._pending_failure)
            else:
                self._set_state(S.STOPPED)
            self._then_stop = False
            _resolve_all(self._stop_waiters)
            if self._restart_after_stop:
                waiters, self._restart_after_stop = self._restart_after_stop, []
                for w, env in waiters:
                    self._inbox.put_nowait(Start(w, env))

    def _set_state(self, new: EngineState, error: SwapyardError | None = None) -> None:
        old = self._state
        check_transition(old, new)
        self._state = new
        self.state_since = time.monotonic()
        self.logs.append(f"[swapyard] {old} -> {new}")
        load_s = None
        if new is S.READY and self.started_at is not None:
            load_s = self.state_since - self.started_at
        self._bus.publish(
            EngineStateChanged(
                self.spec.id, old, new, error, self.pid, load_s=load_s, woke=self._waking
            )
        )

    # -- helper tasks: they only post messages ----------------------------------------
    def _spawn_task(self, coro: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch_exit(self, proc: subprocess.Popen[bytes], gen: int) -> None:
        rc = await wait_for_exit(proc)
        self._inbox.put_nowait(Exited(gen, rc))

    async def _read_output(self, reader: asyncio.StreamReader, pipe: asyncio.BaseTransport) -> None:
        try:
            await self.logs.pump(reader)
        finally:
            pipe.close()

    async def _poll_health(self, gen: int) -> None:
        url = self.upstream + self.spec.check_endpoint
        t0 = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=2.0)
        while self._gen == gen and self._state is S.STARTING:
            elapsed = time.monotonic() - t0
            if elapsed > self.spec.start_timeout:
                self._inbox.put_nowait(StartTimedOut(gen))
                return
            try:
                async with self._http.get(
                    url, timeout=timeout, headers=self.spec.check_headers
                ) as resp:
                    await resp.read()
                    if resp.status == 200:
                        self._inbox.put_nowait(Healthy(gen))
                        return
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(health_poll_interval(elapsed))

    async def _run_stop_command(self, argv: list[str]) -> None:
        self.logs.append(f"[swapyard] stopping with: {' '.join(argv)}")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.spec.env},
            )
            out, _ = await asyncio.wait_for(proc.communicate(), self.spec.stop_timeout)
        except (OSError, TimeoutError) as exc:
            self.logs.append(f"[swapyard] cmd_stop failed: {exc}; the kill timer still applies")
            return
        for line in out.decode("utf-8", "replace").splitlines():
            self.logs.append(f"[cmd_stop] {line}")


def _popen(argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """The engine's child in a session (and process group) of its own, output to one
    pipe. Popen, not asyncio's subprocess: its wait() only returns once every pipe
    is closed, so an orphan holding stdout would hide an exit. (The fork/exec is
    synchronous either way: asyncio calls Popen too.)"""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **env},
    )


def _host_port(url: str) -> tuple[str, int]:
    u = URL(url)
    return (u.host or "127.0.0.1", u.port or 80)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _resolve_all(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        _resolve(f)
    futs.clear()


def _fail_all(futs: list[asyncio.Future[None]], err: BaseException) -> None:
    for f in futs:
        if not f.done():
            f.set_exception(err)
    futs.clear()
