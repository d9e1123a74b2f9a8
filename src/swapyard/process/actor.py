"""The actor that owns one engine's child process.

Only ``_run`` touches the child, the state and the waiters (house style 3). Callers
send commands through the inbox and await a future; helper tasks (output reader,
exit watcher, health poller, kill and backoff timers) only post messages back.
Every message about a child carries the spawn generation, so news about an old
child never moves the state of a new one. Every phase is a state of the table in
``state.py`` (``docs/states.md``); the only pending intents kept beside it are the
waiters and ``_then_stop`` (a full stop asked while a sleep call is under way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from swapyard.config import ModelSpec, render
from swapyard.engines.base import (
    Control,
    FastSwap,
    FastSwapFailed,
    ProgressFn,
    out_of_memory_line,
)
from swapyard.errors import (
    EngineBackoff,
    EngineCrashed,
    EngineExitedEarly,
    EngineFailed,
    EngineOutOfMemory,
    EngineStartError,
    EngineStartTimeout,
    EngineStopped,
    PortInUse,
    SwapyardError,
)
from swapyard.events import EngineStateChanged, EventBus
from swapyard.ports import PortAllocator, port_is_free
from swapyard.process.child import (
    Failures,
    fail,
    fail_all,
    host_port,
    poll_health,
    popen,
    resolve,
    resolve_all,
    run_stop_command,
)
from swapyard.process.group import Tree, wait_for_exit, wait_for_pid_exit
from swapyard.process.logring import LogFile, LogRing
from swapyard.process.messages import (
    Adopt,
    BackoffOver,
    Exited,
    Healthy,
    KillNow,
    Message,
    Progress,
    Reset,
    Respec,
    Slept,
    Start,
    StartTimedOut,
    Stop,
    TrackTree,
    Woke,
)
from swapyard.process.registry import (
    EngineRecord,
    EngineRegistry,
    proc_start_time,
    spec_hash,
)
from swapyard.process.state import EngineState, check_transition
from swapyard.surface import EngineView, ErrorView

log = logging.getLogger("swapyard.process")
S = EngineState
LOG_TAIL_IN_ERRORS = 20
LOADING = (S.STARTING, S.WARMING, S.WAKING)  # on the way to ready
GONE = (S.STOPPED, S.BACKOFF, S.FAILED)  # no process
STARTING_LINE = "[swapyard] starting:"  # the log's first line of each start
TREE_TRACK_INTERVAL = 1.0  # s between looks for descendants that left the group


class EngineProcess:
    """One model's engine: start it, know when it is ready, stop it, and say so.

    ``start()`` returns once the engine is ready, or raises ``EngineStartError``
    (with the last log lines), ``EngineStopped``, or — while it backs off after a
    failure or after its start limit — ``EngineBackoff``/``EngineFailed``.
    ``stop()`` returns once the whole process group is gone. Both are safe to call
    in any state and from many tasks at once; they are answered in order.

    ``registry`` (optional) gets a record of each running child, so that a
    restarted swapyard can adopt it; the child's output goes to a file in
    ``workdir`` for the same reason (a pipe would die with swapyard).
    """

    def __init__(
        self,
        spec: ModelSpec,
        bus: EventBus,
        ports: PortAllocator,
        http: aiohttp.ClientSession,
        *,
        workdir: Path | None = None,
        registry: EngineRegistry | None = None,
    ) -> None:
        self.spec = spec
        self.logs = LogRing()
        self._bus = bus
        self._ports = ports
        self._http = http
        self._registry = registry
        if workdir is None:
            from swapyard.models.fetch import data_dir

            workdir = data_dir() / "engines"
        self._output = LogFile(workdir / f"{quote(spec.id, safe='')}.log", self.logs)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._state = S.STOPPED
        self._gen = 0
        self._proc: subprocess.Popen[bytes] | None = None  # our child (None if adopted)
        self._pid: int | None = None  # the group leader, ours or adopted
        self._tree: Tree | None = None  # its descendants, wherever their group
        self._port: str = ""
        self._devices: tuple[str, ...] = ()
        self._env: dict[str, str] = {}  # the last start's extra variables (its placement)
        self._args: tuple[str, ...] = ()  # the last start's extra arguments (its share)
        self._start_waiters: list[asyncio.Future[None]] = []
        self._stop_waiters: list[asyncio.Future[None]] = []
        self._restart_after_stop: list[tuple[asyncio.Future[None], Start]] = []
        self._failure: SwapyardError | None = None  # what a request is told now
        self._pending_failure: SwapyardError | None = None  # reported once the child is gone
        self._failures = Failures()  # recent failed starts and crashes
        self._retry_at: float | None = None
        self._then_stop = False  # a full stop was asked while a sleep was under way
        self._next_spec: ModelSpec | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._actor: asyncio.Task[None] | None = None
        self.state_since = time.monotonic()
        self.started_at: float | None = None
        # Load progress the engine reported (fraction or None, what it is doing).
        self.progress: tuple[float | None, str] | None = None
        self._apply_spec(spec)

    def _apply_spec(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._fast: FastSwap | None = (
            spec.adapter.fast(spec.fields) if spec.fields is not None else None
        )
        self._warm = spec.fields is not None and spec.adapter.needs_warm(spec.fields)
        self.logs.on_line = self._log_line if spec.engine == "llamacpp" else None

    # -- the public, read-only view ------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def pid(self) -> int | None:
        return self._pid

    def descendants(self) -> tuple[int, ...]:
        """The descendants of its child seen while it ran (those that left its
        process group too): what the GPU lists under them is this engine's."""
        return tuple(self._tree.seen) if self._tree is not None else ()

    @property
    def upstream(self) -> str:
        """Base URL of the engine (valid while starting or ready)."""
        return render(self.spec.proxy, {"PORT": self._port})

    @property
    def last_error(self) -> SwapyardError | None:
        return self._failure

    @property
    def fast_mode(self) -> str | None:
        """The fast swap this engine offers ("sleep", "unload", ...), if any."""
        return self._fast.mode if self._fast is not None else None

    def view(self) -> EngineView:
        """A frozen view of this engine now (what the router's snapshots carry)."""
        live = self._state in (*LOADING, S.READY)
        return EngineView(
            state=self._state,
            state_since=self.state_since,
            pid=self._pid,
            upstream=self.upstream if live else None,
            last_error=ErrorView.of(self._failure),
            fast_swap=self.fast_mode,
            loading_since=self.started_at,
            waking=self._state is S.WAKING,
            progress=self.progress,
            engine_args=self._args,
        )

    # -- commands ------------------------------------------------------------------
    def run(self) -> None:
        """Start the actor task (once)."""
        if self._actor is None:
            self._actor = asyncio.create_task(self._run(), name=f"engine:{self.spec.id}")

    async def start(
        self,
        env: Mapping[str, str] | None = None,
        devices: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
    ) -> None:
        """Start (or join the start of, or wake) the engine; ``env`` adds variables
        for this start (e.g. ``CUDA_VISIBLE_DEVICES`` for its ``devices``)."""
        await self._ask(lambda f: Start(f, dict(env or {}), devices, args))

    async def stop(self, sleep: bool = False) -> None:
        """Stop the engine; with ``sleep``, put it to sleep instead if it has a fast
        swap (falling back to a stop if that fails). Returns once it is stopped or
        asleep."""
        await self._ask(lambda f: Stop(f, sleep and self._fast is not None))

    async def reset(self) -> None:
        """Forget past failures: out of ``backoff``/``failed``, into ``stopped``."""
        await self._ask(Reset)

    async def adopt(self, record: EngineRecord) -> None:
        """Take over a healthy engine a previous swapyard started (from ``stopped``)."""
        await self._ask(lambda f: Adopt(f, record))

    def respec(self, spec: ModelSpec, restart: bool) -> None:
        """A reloaded config: use ``spec`` now, or from the next start on when what
        the process runs changed (``restart``; the caller drains and stops it)."""
        self._inbox.put_nowait(Respec(spec, restart))

    async def _ask(self, make: Any) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(make(fut))
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

    def abandon(self) -> None:
        """Let the child run on without us (swapyard exits, the next one adopts it):
        end the actor and its helper tasks; the child and its record stay."""
        if self._actor is not None:
            self._actor.cancel()
            for t in self._tasks:
                t.cancel()
        self._state = S.STOPPED  # as far as this process is concerned: close() is a no-op
        self._actor = None

    def kill_now(self) -> None:
        """Shutdown backstop: SIGKILL the group without waiting for the actor."""
        if self._state not in GONE:
            self._kill_tree(signal.SIGKILL)

    # -- the actor -----------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            msg = await self._inbox.get()
            try:
                await self._handle(msg)
            except Exception as exc:  # a bug: log it, answer the waiters, keep going
                log.exception("engine actor of %s failed on %r", self.spec.id, msg)
                err = EngineStopped(self.spec.id, f"internal error in the engine's actor: {exc}")
                fail_all(self._start_waiters, err)
                fail_all(self._stop_waiters, err)
                reply = getattr(msg, "reply", None)
                if isinstance(reply, asyncio.Future):
                    fail(reply, err)

    async def _handle(self, msg: Message) -> None:
        cur = self._gen
        match msg:
            case Start():
                await self._on_start(msg)
            case Stop(reply, sleep):
                self._on_stop(reply, sleep)
            case Reset(reply):
                self._on_reset()
                resolve(reply)
            case Adopt(reply, record):
                self._on_adopt(reply, record)
            case Respec(spec, restart):
                self._next_spec = spec
                if self._state in GONE or not restart:
                    self._take_next_spec()
            case Healthy(gen) if gen == cur and self._state in (S.STARTING, S.WAKING):
                if self._state is S.STARTING and self._warm:
                    self._set_state(S.WARMING)
                    self._spawn_task(self._run_warm(gen))
                else:
                    self._became_ready()
            case Woke(gen, error) if gen == cur and self._state in (S.WARMING, S.WAKING):
                self._on_woke(gen, error)
            case Slept(gen, error) if gen == cur and self._state is S.STOPPING:
                self._on_slept(error)
            case Progress(gen, fraction, text) if gen == cur and self._state in LOADING:
                self.progress = (fraction, text)
            case StartTimedOut(gen) if gen == cur and self._state in (S.STARTING, S.WAKING):
                self._on_start_timeout()
            case Exited(gen, rc) if gen == cur and self._state not in GONE:
                self._on_exited(rc)
            case KillNow(gen) if gen == cur and self._state is S.STOPPING:
                self.logs.append(
                    f"[swapyard] still running {self.spec.stop_timeout:g} s after stop; "
                    "sending SIGKILL to the process group"
                )
                self._kill_tree(signal.SIGKILL)
            case TrackTree(gen) if gen == cur and self._tree is not None:
                self._tree.track()
                loop = asyncio.get_running_loop()
                loop.call_later(TREE_TRACK_INTERVAL, self._inbox.put_nowait, TrackTree(gen))
            case BackoffOver(gen) if gen == cur and self._state is S.BACKOFF:
                self._set_state(S.STOPPED, reason="backoff over")
            case _:
                pass  # stale news about an earlier child

    async def _on_start(self, msg: Start) -> None:
        reply = msg.reply
        if self._state is S.READY:
            resolve(reply)
        elif self._state in LOADING:
            self._start_waiters.append(reply)
        elif self._state is S.STOPPING:
            self._restart_after_stop.append((reply, msg))
        elif self._state is S.SLEEPING:
            self._start_waiters.append(reply)
            self._begin_wake()
        elif self._state is S.BACKOFF:
            assert self._failure is not None and self._retry_at is not None
            left = max(0.0, self._retry_at - time.monotonic())
            fail(reply, EngineBackoff(self.spec.id, self._failure, left))
        elif self._state is S.FAILED:
            assert self._failure is not None
            fail(reply, self._failure)
        else:
            self._start_waiters.append(reply)
            await self._spawn(msg.env, msg.devices, msg.args)

    def _on_stop(self, reply: asyncio.Future[None], sleep: bool = False) -> None:
        if self._state in GONE or (sleep and self._state is S.SLEEPING):
            resolve(reply)
            return
        self._stop_waiters.append(reply)
        restarts, self._restart_after_stop = self._restart_after_stop, []
        fail_all([f for f, _ in restarts], EngineStopped(self.spec.id, "engine was stopped"))
        if self._state is S.STOPPING:
            self._then_stop = self._then_stop or not sleep
            return
        fail_all(
            self._start_waiters,
            EngineStopped(self.spec.id, f"model {self.spec.id!r} was stopped while starting"),
        )
        if sleep and self._state is S.READY:
            self._begin_sleep()
        else:
            self._begin_stop()

    def _on_reset(self) -> None:
        self._failures.clear()
        if self._state in (S.BACKOFF, S.FAILED):
            self._failure = None
            self._set_state(S.STOPPED, reason="reset")

    def _on_adopt(self, reply: asyncio.Future[None], record: EngineRecord) -> None:
        if self._state is not S.STOPPED:
            fail(reply, EngineStopped(self.spec.id, f"cannot adopt while {self._state}"))
            return
        self._gen += 1
        gen = self._gen
        self._pid, self._proc, self._port = record.pid, None, record.port
        self._devices = record.devices
        self._tree = Tree.of(record.pid)
        self._inbox.put_nowait(TrackTree(gen))
        self.started_at = None
        self._output.attach()
        self._spawn_task(self._output.follow())
        self._spawn_task(self._watch_pid(record.pid, gen))
        self.logs.append(f"[swapyard] adopted pid {record.pid} (port {record.port or '-'})")
        asleep = record.state == str(S.SLEEPING)
        self._set_state(S.SLEEPING if asleep else S.READY, reason="adopted")
        resolve(reply)

    def _on_start_timeout(self) -> None:
        err = EngineStartTimeout(
            self.spec.id,
            f"health check {self.spec.check_endpoint} did not answer 200 within "
            f"{self.spec.start_timeout:g} s",
            self.logs.tail(LOG_TAIL_IN_ERRORS),
        )
        self._pending_failure = err
        fail_all(self._start_waiters, err)
        self._begin_stop()

    # -- fast swaps and warm-up: the adapter's HTTP calls run in helper tasks -----------
    def _control(self) -> Control:
        assert self.spec.fields is not None
        return Control(self._http, self.upstream, self.spec.fields, self.spec.check_headers)

    def _report(self, gen: int) -> ProgressFn:
        def progress(fraction: float | None, text: str) -> None:
            self._inbox.put_nowait(Progress(gen, fraction, text))

        return progress

    def _begin_sleep(self) -> None:
        assert self._fast is not None
        self._set_state(S.STOPPING, reason="sleep")
        self._then_stop = False
        self.logs.append(f"[swapyard] fast swap out ({self._fast.mode})")
        self._spawn_task(self._outcome(Slept, self._gen, self._fast.sleep(self._control())))

    def _on_slept(self, error: str | None) -> None:
        if error is not None:
            self.logs.append(f"[swapyard] fast swap out failed: {error}; stopping instead")
            self._begin_stop()
            return
        self._set_state(S.SLEEPING, reason=self.fast_mode)
        self._record()
        if self._then_stop:
            self._then_stop = False
            self._begin_stop()
            return
        resolve_all(self._stop_waiters)
        restarts, self._restart_after_stop = self._restart_after_stop, []
        for _, start in restarts:  # a start asked during the sleep call: wake it now
            self._inbox.put_nowait(start)

    def _begin_wake(self) -> None:
        assert self._fast is not None
        self._set_state(S.WAKING, reason=self._fast.mode)
        self.started_at = time.monotonic()
        self.progress = None
        self.logs.append(f"[swapyard] fast swap in ({self._fast.mode})")
        gen = self._gen
        self._spawn_task(
            self._outcome(Woke, gen, self._fast.wake(self._control(), self._report(gen)))
        )

    async def _run_warm(self, gen: int) -> None:
        assert self.spec.fields is not None
        await self._outcome(Woke, gen, self.spec.adapter.warm(self._control(), self._report(gen)))

    async def _outcome(
        self, kind: type[Slept] | type[Woke], gen: int, call: Awaitable[Any]
    ) -> None:
        try:
            await call
        except FastSwapFailed as exc:
            self._inbox.put_nowait(kind(gen, str(exc)))
        else:
            self._inbox.put_nowait(kind(gen, None))

    def _on_woke(self, gen: int, error: str | None) -> None:
        if self._state is S.WARMING:
            if error is None:
                self._became_ready()
                return
            # The warm-up of a cold start failed: the start failed.
            err = EngineExitedEarly(self.spec.id, f"loading the model failed: {error}",
                                    self.logs.tail(LOG_TAIL_IN_ERRORS))  # fmt: skip
            self._pending_failure = err
            fail_all(self._start_waiters, err)
            self._begin_stop()
            return
        if error is None:  # waking: ready when its health check answers again
            self._spawn_task(self._poll_health(gen))
            return
        self.logs.append(f"[swapyard] fast swap in failed: {error}; restarting cold")
        waiters, self._start_waiters = self._start_waiters, []
        again = [(w, Start(w, self._env, self._devices, self._args)) for w in waiters]
        self._restart_after_stop += again
        self._begin_stop()

    def _became_ready(self) -> None:
        self._output.drain()  # what it printed while loading is in the ring by now
        if self._tree is not None:
            self._tree.track()
        self._set_state(S.READY)
        self._record()
        resolve_all(self._start_waiters)

    def _log_line(self, line: str) -> None:
        # Called by the output reader (a helper task): it only posts a message.
        found = self.spec.adapter.log_progress(line)
        if found is not None:
            self._inbox.put_nowait(Progress(self._gen, *found))

    # -- the child process ------------------------------------------------------------
    async def _spawn(
        self, extra_env: dict[str, str], devices: tuple[str, ...], args: tuple[str, ...] = ()
    ) -> None:
        """Spawn the child, then enter ``starting`` (with its pid). A start that
        cannot even spawn (port taken, command missing) fails from ``stopped``."""
        self._gen += 1
        gen = self._gen
        self._failure = None
        self._pending_failure = None
        self._devices, self._env, self._args = devices, extra_env, args
        self.started_at = time.monotonic()
        self.progress = None
        spec = self.spec
        if spec.remote:  # no process: ready when the other server answers
            self._port = ""
            self._set_state(S.STARTING)
            self.logs.append(f"[swapyard] remote engine at {self.upstream}: checking it")
            self._spawn_task(self._poll_health(gen))
            return
        taken: EngineStartError | None
        try:
            taken = self._claim_port()
        except (OSError, ValueError) as exc:  # no free port, or a proxy URL without one
            taken = EngineExitedEarly(spec.id, f"cannot get a port for it: {exc}")
        if taken is not None:
            self._fail_start(taken)
            return
        argv = [render(a, {"PORT": self._port}) for a in spec.cmd] + list(args)
        shown = render(spec.cmd_display, {"PORT": self._port})
        self.logs.append(f"{STARTING_LINE} {' '.join([shown, *args])}")
        env = {k: render(v, {"PORT": self._port}) for k, v in spec.env.items()}
        try:
            out = self._output.open_for_engine()
            try:
                proc = popen(argv, {**env, **extra_env}, out, spec.env_drop)
            finally:
                os.close(out)
        except OSError as exc:
            self._fail_start(
                EngineExitedEarly(
                    spec.id, f"cannot execute {argv[0]!r}: {exc.strerror or exc}", self.logs.tail()
                )
            )
            return
        self._proc, self._pid = proc, proc.pid
        self._tree = Tree.of(proc.pid)
        self._inbox.put_nowait(TrackTree(gen))
        self._set_state(S.STARTING)
        self._record()
        self._spawn_task(self._output.follow())
        self._spawn_task(self._watch_exit(proc, gen))
        self._spawn_task(self._poll_health(gen))

    def _claim_port(self) -> PortInUse | None:
        """A fresh port when the command takes ``${PORT}``; else check that the
        fixed local port is free (an error if another process holds it)."""
        if self.spec.needs_port:
            self._port = str(self._ports.allocate())
            return None
        self._port = ""
        host, port = host_port(self.upstream)
        if host in ("127.0.0.1", "localhost", "::1") and not port_is_free(host, port):
            return PortInUse(
                self.spec.id, f"port {port} of {self.upstream} is already in use by another process"
            )
        return None

    def _fail_start(self, err: EngineStartError) -> None:
        fail_all(self._start_waiters, err)
        self._failed(err)

    def _begin_stop(self) -> None:
        pid = self._pid
        if self._state is not S.STOPPING:
            self._set_state(S.STOPPING)
        if self.spec.remote:
            self._on_exited(0)
            return
        if pid is None:  # pragma: no cover - a loading or ready engine always has one
            return
        gen = self._gen
        if self.spec.cmd_stop:
            at = {"PORT": self._port, "PID": str(pid)}
            self._spawn_task(run_stop_command(self.spec, at, self.logs.append))
        else:
            self._kill_tree(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        loop.call_later(self.spec.stop_timeout, self._inbox.put_nowait, KillNow(gen))

    def _on_exited(self, rc: int | None) -> None:
        if not self.spec.remote:
            # The leader is gone; anything left in its group, or seen among its
            # descendants, is an orphan (house style 5, issue 10).
            self._kill_tree(signal.SIGKILL)
            self._tree = None
        self._output.flush()
        state = self._state
        code = "unknown" if rc is None else str(rc)
        if state in LOADING:
            tail = self.logs.tail(LOG_TAIL_IN_ERRORS)
            reason = f"the process exited with code {code} before it became ready"
            this_run = tail[max((i for i, t in enumerate(tail) if STARTING_LINE in t), default=0) :]
            if (line := out_of_memory_line(this_run)) is not None:
                self._fail_start(EngineOutOfMemory(self.spec.id, f"{reason}: {line}", tail))
            else:
                self._fail_start(EngineExitedEarly(self.spec.id, reason, tail))
        elif state in (S.READY, S.SLEEPING) and rc == 0:
            self._gone(S.STOPPED, reason="exited", exit_code=0)  # not a failure
        elif state in (S.READY, S.SLEEPING):
            doing = "serving" if state is S.READY else "asleep"
            err = EngineCrashed(
                self.spec.id,
                f"the process exited with code {code} while {doing}",
                self.logs.tail(LOG_TAIL_IN_ERRORS),
            )
            self._failed(err, exit_code=rc)
        elif state is S.STOPPING:
            if self._pending_failure is not None:
                self._failed(self._pending_failure, exit_code=rc)
            else:
                self._gone(S.STOPPED, exit_code=rc)
            self._then_stop = False
            resolve_all(self._stop_waiters)
            restarts, self._restart_after_stop = self._restart_after_stop, []
            for _, start in restarts:
                self._inbox.put_nowait(start)

    def _failed(self, err: SwapyardError, exit_code: int | None = None) -> None:
        """A start failed or the engine crashed: back off, or after ``start_limit``
        failures within ``start_limit_interval``, fail for good (supervisor's
        BACKOFF → FATAL; systemd's start limit)."""
        now = time.monotonic()
        spec = self.spec
        n, delay = self._failures.add(now, spec)
        if delay is None:
            self._failure = EngineFailed(spec.id, n, spec.start_limit_interval, err)
            self._gone(S.FAILED, error=self._failure, exit_code=exit_code, reason="start limit")
            return
        self._failure = err
        self._retry_at = now + delay
        backoff = EngineBackoff(spec.id, err, delay)
        self._gone(S.BACKOFF, error=backoff, exit_code=exit_code, retry_in=delay)
        loop = asyncio.get_running_loop()
        loop.call_later(delay, self._inbox.put_nowait, BackoffOver(self._gen))

    def _kill_tree(self, sig: signal.Signals) -> None:
        """``sig`` to the child's group and to its descendants that left it."""
        if self._tree is None:
            return
        outside = self._tree.kill_all(sig)
        if outside:
            self.logs.append(
                f"[swapyard] {sig.name} to {len(outside)} process(es) that left the "
                f"process group: {' '.join(map(str, outside))}"
            )

    def _gone(self, new: EngineState, **event: Any) -> None:
        """The process is gone (or never ran): into ``new``, forget the child."""
        self._set_state(new, **event)
        self._proc = None
        self._pid = None
        if self._registry is not None:
            with contextlib.suppress(SwapyardError):
                self._registry.remove(self.spec.id)
        if self._next_spec is not None:
            self._take_next_spec()

    def _take_next_spec(self) -> None:
        assert self._next_spec is not None
        self._apply_spec(self._next_spec)
        self._next_spec = None
        self._failures.clear()
        if self._state in (S.BACKOFF, S.FAILED):
            self._failure = None
            self._set_state(S.STOPPED, reason="config reloaded")

    def _record(self) -> None:
        """Write (or refresh) this child's registry record, so that a restarted
        swapyard can adopt it."""
        if self._registry is None or self._pid is None or self.spec.remote:
            return
        start_time = proc_start_time(self._pid)
        if start_time is None:
            return
        record = EngineRecord(
            model=self.spec.id, spec_hash=spec_hash(self.spec), pid=self._pid, pgid=self._pid,
            start_time=start_time, port=self._port, upstream=self.upstream,
            devices=self._devices, started_at=time.time(), owner_pid=os.getpid(),
            state=str(self._state),
        )  # fmt: skip
        try:
            self._registry.put(record)
        except SwapyardError as err:
            self.logs.append(f"[swapyard] cannot record the engine for adoption: {err.message}")

    def _set_state(self, new: EngineState, **event: Any) -> None:
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
                self.spec.id,
                old,
                new,
                pid=self._pid,
                load_s=load_s,
                woke=old is S.WAKING,
                port=self._port or None,
                **event,
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

    async def _watch_pid(self, pid: int, gen: int) -> None:
        await wait_for_pid_exit(pid)
        self._inbox.put_nowait(Exited(gen, None))

    async def _poll_health(self, gen: int) -> None:
        healthy = await poll_health(
            self._http, self.upstream + self.spec.check_endpoint, self.spec.check_headers,
            self.spec.start_timeout,
            lambda: self._gen == gen and self._state in (S.STARTING, S.WAKING),
        )  # fmt: skip
        if healthy is not None:
            self._inbox.put_nowait(Healthy(gen) if healthy else StartTimedOut(gen))
