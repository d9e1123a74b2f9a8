"""The run loop: requests and engine events in, scheduler decisions out.

One task owns the scheduler, the memory figures and the engine actors. API
handlers call ``acquire``/``release`` and the control commands, which post
messages to the inbox; process actors publish state changes on the bus, which a
listener also posts to the inbox. The loop feeds each message to the scheduler,
whose ``Effects`` (``effects.RouterEffects``) talk to the actors, then publishes what
the scheduler now holds as a frozen view. Readers get ``snapshot()``: that view
plus each actor's own published view (``swapyard.surface``), never the live
objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from swapyard import adopt
from swapyard.config import Config, ModelSpec
from swapyard.effects import RouterEffects
from swapyard.errors import QueueFull, ShuttingDown, SwapyardError
from swapyard.events import ConfigReloaded, EngineReaped, EngineStateChanged, Event, EventBus
from swapyard.inbox import (
    Arrive,
    Idle,
    KeepAlive,
    Leave,
    Load,
    Measured,
    Message,
    Pin,
    Refresh,
    Reload,
    Tick,
    Unload,
)
from swapyard.memory import MemoryBook
from swapyard.ports import PortAllocator
from swapyard.process.actor import EngineProcess
from swapyard.process.group import is_subreaper, kill_orphans, reap_orphans
from swapyard.process.logring import LogRing
from swapyard.process.registry import EngineRegistry
from swapyard.process.state import EngineState
from swapyard.reload import ConfigDiff, diff
from swapyard.resources.devices import RAM_SHARE, gpu_usage, memory_budget, ram_bytes
from swapyard.resources.measure import group_gpu_memory, group_rss
from swapyard.resources.store import MeasuredStore
from swapyard.scheduler.core import Effects, ModelTerms, Scheduler
from swapyard.surface import (
    DeviceSnapshot,
    Lease,
    MemorySnapshot,
    ModelSnapshot,
    Snapshot,
)

log = logging.getLogger("swapyard.router")
S = EngineState


REAP_INTERVAL = 5.0  # seconds between sweeps for re-parented helpers that exited
MEASURE_AFTER_READY = 0.5  # seconds: let the engine settle (warm-up) before measuring
REFRESH_INTERVAL = 5.0  # seconds between readings of the GPUs when nothing else asks


def scheduler_for(
    config: Config,
    effects: Effects,
    needs: Mapping[str, int | None] | None = None,
    budget: Mapping[str, int] | None = None,
    asleep: Mapping[str, int | None] | None = None,
) -> Scheduler:
    needs = needs or {}
    if budget is None:
        budget = memory_budget(config)[0]
    return Scheduler(
        all_terms(config, needs, asleep), effects, budget=budget, config=config.scheduler,
        host=host_budget(config),
    )  # fmt: skip


def all_terms(
    config: Config,
    needs: Mapping[str, int | None],
    asleep: Mapping[str, int | None] | None = None,
) -> dict[str, ModelTerms]:
    """``asleep``: what each model was measured to keep asleep (persisted)."""
    asleep = asleep or {}
    return {
        m.id: model_terms(m, needs.get(m.id, m.memory), asleep.get(m.id))
        for m in config.models.values()
    }


def host_budget(config: Config) -> int:
    """Host RAM sleeping engines may hold (``scheduler.host_memory``, else 90 %)."""
    sc = config.scheduler
    return sc.host_memory if sc.host_memory is not None else int(ram_bytes() * RAM_SHARE)


def model_terms(m: ModelSpec, need: int | None, asleep: int | None = None) -> ModelTerms:
    """What the scheduler knows of one model. A remote engine holds no memory here;
    one with a fast swap keeps part of its need while asleep (the adapter's share,
    unless ``sleep_memory``/``host_memory`` say; never more than its need)."""
    if m.remote:
        need = 0
    sleep_need, host_need = None, 0
    fast = m.adapter.fast(m.fields) if m.fields is not None else None
    if fast is not None:
        base = need or 0
        sleep_need = m.sleep_memory if m.sleep_memory is not None else min(base, fast.gpu_kept)
        if m.sleep_memory is None and asleep is not None:
            sleep_need = asleep  # measured after an earlier sleep
        host_need = m.host_memory if m.host_memory is not None else int(base * fast.host_held)
    return ModelTerms(
        ttl=m.ttl, need=need, count=m.gpus, pinned=m.pin, priority=m.priority,
        max_concurrent=m.max_concurrent, sleep_need=sleep_need, host_need=host_need,
        restart=m.restart,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Held:
    """What the scheduler holds of one model, published after each decision."""

    state: EngineState
    in_flight: int
    queued: int
    devices: tuple[str, ...]
    memory: MemorySnapshot
    pinned: bool
    idle_since: float | None
    ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class _Published:
    models: dict[str, _Held] = field(default_factory=dict)
    devices: dict[str, DeviceSnapshot] = field(default_factory=dict)
    host_used: int = 0
    queue: tuple[int, ...] = ()
    queue_full: QueueFull | None = None


class Router:
    """Owns the engines and the scheduler for one config (``RouterSurface``)."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        http: aiohttp.ClientSession,
        store: MeasuredStore | None = None,
        state_dir: Path | None = None,
    ) -> None:
        """``state_dir`` holds the engines' output files and, when this router is
        the only one using it, the registry of running engines (adopted after a
        restart); without it, neither."""
        self.config = config
        self.bus = bus
        self._http = http
        self._store = store
        self._started_at = time.time()
        self._workdir = state_dir
        self._lock = _lock(state_dir) if state_dir is not None else None
        self._registry = None
        if state_dir is not None and self._lock is not None:
            self._registry = EngineRegistry(state_dir)
        if state_dir is not None and self._registry is None:
            log.warning("another swapyard uses %s: engines will not be adopted after a "
                        "restart of this one", state_dir)  # fmt: skip
        self._ports = PortAllocator()
        self._engines: dict[str, EngineProcess] = {}
        budget, self._cuda = memory_budget(config)
        self._book = MemoryBook(config, store, self._cuda)
        for spec in config.models.values():
            self._add_engine(spec)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._bg: set[asyncio.Task[Any]] = set()
        self._fx = RouterEffects(self._engines, bus, self._inbox.put_nowait, self._spawn,
                                 self._cuda, self._book.share_args)  # fmt: skip
        self._scheduler = scheduler_for(config, self._fx, self._needs(), budget, self._asleep())
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._retiring: set[str] = set()
        self._state_waiters: list[tuple[str, frozenset[EngineState], asyncio.Future[None]]] = []
        self._view = _Published()
        self._publish()
        bus.add_listener(self._on_event)

    def _add_model(self, spec: ModelSpec) -> None:
        self._book.add(spec)
        self._add_engine(spec)

    def _add_engine(self, spec: ModelSpec) -> None:
        self._engines[spec.id] = EngineProcess(
            spec, self.bus, self._ports, self._http, workdir=self._workdir,
            registry=self._registry,
        )  # fmt: skip

    def _needs(self) -> dict[str, int | None]:
        return self._book.needs(self.config.scheduler.learn_memory)

    def _asleep(self) -> dict[str, int | None]:
        learn = self.config.scheduler.learn_memory
        return {mid: f.asleep if learn else None for mid, f in self._book.figures.items()}

    # -- lifecycle ------------------------------------------------------------------
    def run(self) -> None:
        for engine in self._engines.values():
            engine.run()
        self._task = asyncio.create_task(self._run(), name="router")
        if is_subreaper():  # `swapyard serve`, not a process that embeds the router
            self._spawn(self._reap_orphans())
        if self._cuda:
            self._spawn(self._refresh_gpus())

    async def _refresh_gpus(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            self._inbox.put_nowait(Refresh())

    def _engine_pids(self) -> list[int]:
        return [p for e in self._engines.values() if (p := e.pid) is not None]

    async def _reap_orphans(self) -> None:
        """Reap the helpers of engines that were re-parented to us (we are a
        subreaper under ``swapyard serve``) once they exit."""
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            reap_orphans(self._engine_pids())

    async def _take_over(self) -> None:
        """Adopt or reap what a previous swapyard left running (before any start),
        then load what is pinned or preloaded."""
        if self._registry is not None:
            try:
                verdicts = await adopt.survey(
                    self._registry, self.config, self._http, self._scheduler.budget()
                )
            except SwapyardError as err:
                log.warning("cannot read the engine registry: %s", err.message)
                verdicts = []
            for v in verdicts:
                await self._settle(v)
        self._refresh_foreign(time.monotonic())  # adopted engines are ours by now
        for m in self.config.models.values():
            if m.pin or m.id in self.config.preload:
                self._scheduler.load(m.id, time.monotonic())

    async def _settle(self, v: adopt.Verdict) -> None:
        r = v.record
        if v.action == "adopt":
            await self._engines[r.model].adopt(r)
            state = EngineState(r.state) if r.state == "sleeping" else EngineState.READY
            self._scheduler.adopted(r.model, r.devices, state, time.monotonic())
            return
        if v.action == "reap":
            spec = self.config.models.get(r.model)
            await adopt.reap(r, spec.stop_timeout if spec is not None else 10.0)
            self.bus.publish(EngineReaped(r.model, r.pid, v.reason))
        assert self._registry is not None
        with contextlib.suppress(SwapyardError):
            self._registry.remove(r.model)

    def stop_admitting(self) -> None:
        """Refuse new requests and reject the queued ones; running ones go on."""
        self._closing = True
        self._scheduler.reject_all(ShuttingDown("swapyard is shutting down"))
        self._publish()

    async def shutdown(self, deadline: float, keep_engines: bool = False) -> None:
        """Reject queued requests, stop every engine, end the loop; by ``deadline``
        (a ``time.monotonic()`` value) whatever is still alive gets SIGKILL. With
        ``keep_engines`` the engines are left running, recorded for adoption."""
        self.stop_admitting()
        self._fx.cancel_timers()
        if keep_engines:
            for e in self._engines.values():
                e.abandon()
        closes = [asyncio.ensure_future(e.close()) for e in self._engines.values()]
        if closes:
            _, pending = await asyncio.wait(closes, timeout=max(0.1, deadline - time.monotonic()))
            if pending:
                log.warning("engines still stopping at the shutdown deadline; sending SIGKILL")
                for e in self._engines.values():
                    e.kill_now()
                await asyncio.wait(pending, timeout=2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)
        # Whatever escaped an engine untracked and was re-parented to us (issue 10).
        sweep = is_subreaper() and not keep_engines
        killed = kill_orphans(self._engine_pids(), signal.SIGKILL) if sweep else []
        if killed:
            log.warning("killed %d orphaned engine helper(s): %s", len(killed), killed)
        if self._lock is not None:
            self._lock.close()

    # -- reload ---------------------------------------------------------------------
    async def reload(self, config: Config) -> ConfigDiff:
        """Apply a new config (already validated) in the router's task; returns what
        changed. Unchanged engines are not touched (same pid)."""
        fut: asyncio.Future[ConfigDiff] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(Reload(config, fut))
        return await fut

    def _reload(self, new: Config, now: float) -> ConfigDiff:
        d = diff(self.config, new)
        # Removed by an earlier reload and added back before its engine stopped: the
        # same actor goes on, with the new spec from its next start.
        revived = [mid for mid in d.added if mid in self._retiring]
        self._book.reconfigure(new, memory_budget(new)[1])
        for mid in d.added:
            if mid in revived:
                self._retiring.discard(mid)
                self._engines[mid].respec(new.models[mid], restart=True)
                self._book.add(new.models[mid])
                continue
            self._add_model(new.models[mid])
            self._engines[mid].run()
        for mid in (*d.changed, *d.unchanged):
            self._engines[mid].respec(new.models[mid], restart=mid in d.changed)
            if mid in d.changed:  # its figures belong to its old command
                self._book.add(new.models[mid])
        self._retiring.update(d.removed)
        old_preload = set(self.config.preload)
        self.config = new
        budget, self._cuda = memory_budget(new)
        self._fx.cuda = self._cuda
        needs = self._needs()
        self._scheduler.reconfigure(all_terms(new, needs, self._asleep()), new.scheduler,
                                    budget, host_budget(new), now)  # fmt: skip
        for mid in (*d.changed, *revived):
            self._scheduler.forget_learned(mid, now)  # learned from its old command
            self._scheduler.restart(mid, now)
        for mid in new.preload:
            if mid not in old_preload or mid in d.added:
                self._scheduler.load(mid, now)
        for mid in list(self._retiring):
            self._forget_if_gone(mid)
        self.bus.publish(ConfigReloaded(new.source, d.added, d.removed, d.changed, d.unchanged))
        self._publish()  # before the caller switches the API to the new config
        return d

    def _forget_if_gone(self, model: str) -> None:
        """A removed model's actor goes once its engine has stopped."""
        engine = self._engines.get(model)
        if engine is None or engine.view().state not in (
            EngineState.STOPPED, EngineState.BACKOFF, EngineState.FAILED
        ):  # fmt: skip
            return
        self._retiring.discard(model)
        del self._engines[model]
        self._book.drop(model)
        self._spawn(engine.close())

    # -- the API handlers' side ---------------------------------------------------------
    def new_request_id(self) -> int:
        return next(self._ids)

    async def acquire(self, model: str, request_id: int | None = None, client: str = "") -> Lease:
        """Wait until ``model`` is ready and this request may run on it.

        Raises the engine's ``SwapyardError`` if it cannot start. If the caller is
        cancelled (client gone), the request leaves the queue.
        """
        if self._closing:
            raise ShuttingDown("swapyard is shutting down")
        rid = self.new_request_id() if request_id is None else request_id
        fut = self._fx.expect(rid)
        t0 = time.monotonic()
        self._inbox.put_nowait(Arrive(rid, model, client))
        try:
            await fut
        except BaseException:
            self._fx.forget(rid)
            rejected = fut.done() and not fut.cancelled() and fut.exception() is not None
            if not rejected:  # the scheduler still counts it (queued or dispatched)
                self._inbox.put_nowait(Leave(rid))
            raise
        return Lease(rid, model, self._engines[model].upstream, time.monotonic() - t0)

    def release(self, lease: Lease) -> None:
        self._inbox.put_nowait(Leave(lease.request_id))

    def check_admission(self) -> None:
        """Raise now what ``acquire`` would answer at once: ``ShuttingDown``, or
        ``QueueFull`` when the queue is at its bound (before any streaming starts)."""
        if self._closing:
            raise ShuttingDown("swapyard is shutting down")
        if self._view.queue_full is not None:
            raise self._view.queue_full

    def ready_now(self, model: str) -> bool:
        """Whether a request for ``model`` would be dispatched without waiting."""
        view = self._view
        held = view.models.get(model)
        return held is not None and held.state is EngineState.READY and not view.queue

    # -- reads ----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The scheduler's last published figures with each engine's own view."""
        view = self._view
        models = {mid: self._model(mid, view) for mid in self._engines if mid in view.models}
        return Snapshot(models, view.devices, view.host_used, view.queue, self._started_at)

    def model(self, model: str) -> ModelSnapshot:
        return self._model(model, self._view)

    def _model(self, model: str, view: _Published) -> ModelSnapshot:
        h = view.models[model]
        return ModelSnapshot(
            model, self._engines[model].view(), h.in_flight, h.queued, h.devices, h.memory,
            h.pinned, h.idle_since, h.ttl,
        )  # fmt: skip

    def logs(self, model: str) -> LogRing:
        return self._engines[model].logs

    def device_usage(self) -> dict[str, tuple[int, int]]:
        """(used, total) bytes per GPU as NVML reports them; {} without GPUs."""
        return gpu_usage() if self._cuda else {}

    def _publish(self) -> None:
        """Freeze what the scheduler holds now (the router's task only)."""
        sched = self._scheduler
        models = {}
        for mid, fig in self._book.figures.items():
            if not sched.knows(mid):
                continue
            mem = MemorySnapshot(
                fig.declared, fig.estimated, fig.measured, sched.need(mid), fig.asleep,
                sched.sleep_need(mid),
            )  # fmt: skip
            models[mid] = _Held(
                sched.state(mid), sched.inflight(mid), sched.queued(mid), sched.devices(mid),
                mem, sched.pinned(mid), sched.idle_since(mid), sched.ttl(mid),
            )  # fmt: skip
        budget, used = sched.budget(), sched.used()
        foreign, held = sched.foreign(), self._book.devices
        devices = {
            d: DeviceSnapshot(
                d,
                budget[d],
                used[d],
                foreign[d],
                held[d].total if d in held else None,
                tuple(h.as_json() for h in held[d].holders) if d in held else (),
            )
            for d in budget
        }
        self._view = _Published(
            models, devices, sched.host_used(), sched.queue_ids(), sched.queue_full()
        )

    # -- control (admin API, CLI) ----------------------------------------------------
    async def load(self, model: str) -> EngineState:
        """Load ``model`` on purpose (kept until unloaded or evicted); returns once it
        is ready or its start has failed (a failed model is started again)."""
        return await self._command(Load(model), model, done={EngineState.READY})

    async def unload(self, model: str) -> EngineState:
        """Unpin and stop ``model`` once its running requests are done."""
        return await self._command(
            Unload(model), model, done={EngineState.STOPPED, EngineState.FAILED}
        )

    async def pin(self, model: str, pinned: bool) -> EngineState:
        """Pin (never evicted; loaded now) or unpin ``model``."""
        done = {EngineState.READY} if pinned else set(EngineState)
        return await self._command(Pin(model, pinned), model, done)

    def keep_alive(self, model: str, ttl: float) -> None:
        """A client's keep_alive for ``model``: ``0`` stops it once idle (after the
        requests already sent: the message queues behind their release), ``> 0`` is
        its idle TTL and ``< 0`` keeps it, until the next one or a reload. Returns at
        once; the decision is the scheduler's (``Scheduler.keep_alive``)."""
        self._inbox.put_nowait(KeepAlive(model, ttl))

    async def _command(self, msg: Message, model: str, done: set[EngineState]) -> EngineState:
        """Send ``msg``; return at once if ``model`` is already in a ``done`` state,
        else when it next reaches one of them or fails."""
        engine = self._engines[model]
        if engine.view().state in done:
            self._inbox.put_nowait(msg)
            return engine.view().state
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (model, frozenset(done | {EngineState.BACKOFF, EngineState.FAILED}), fut)
        self._state_waiters.append(entry)
        self._inbox.put_nowait(msg)
        try:
            await fut
        finally:
            if entry in self._state_waiters:
                self._state_waiters.remove(entry)
        return engine.view().state

    # -- measuring ------------------------------------------------------------------
    def _used_by(self, pgid: int, others: tuple[int, ...]) -> tuple[int, bool] | None:
        """On GPUs, the most the engine's processes (its group, and ``others`` of its
        tree that left it) hold on any one device (a need is per device), or None
        when NVML attributes them nothing (never their RAM there: it says nothing of
        the GPU); else their resident memory. The flag: a GPU figure."""
        if self._cuda:
            gpu = group_gpu_memory(pgid, others)
            return (max(gpu.values()), True) if gpu else None
        return group_rss(pgid), False

    async def _measure(self, model: str, pgid: int, asleep: bool = False) -> None:
        """What the engine's process group really holds, once it has settled (ready,
        or asleep); the figure goes to the router's task as a message."""
        await asyncio.sleep(MEASURE_AFTER_READY)
        engine = self._engines.get(model)
        want = EngineState.SLEEPING if asleep else EngineState.READY
        if engine is None or engine.view().pid != pgid or engine.view().state is not want:
            return
        found = await asyncio.to_thread(self._used_by, pgid, engine.descendants())
        if found is not None and found[0] > 0:
            self._inbox.put_nowait(Measured(model, found[0], asleep, found[1], pgid))

    def _on_measured(self, msg: Measured, now: float) -> None:
        """A measurement beats an estimate (a RAM one only when larger: resident
        memory leaves out pages not touched yet); declared stays authoritative."""
        model = msg.model
        spec = self.config.models.get(model)
        engine = self._engines.get(model)
        if spec is None or engine is None or not self._scheduler.knows(model):
            return
        if engine.view().pid != msg.pid:  # from an engine a reload replaced since
            return
        self._book.measured(spec, msg.nbytes, msg.asleep, msg.gpu)
        if not self.config.scheduler.learn_memory:
            return
        figures = self._book.figures[model]
        if msg.asleep:
            if spec.sleep_memory is None and msg.gpu:
                self._scheduler.learned_sleep_need(model, msg.nbytes, now)
        elif figures.declared is None and figures.scheduled is not None:
            self._scheduler.learned_need(model, figures.scheduled, now)

    def _refresh_foreign(self, now: float) -> None:
        """Read the GPUs and tell the scheduler what other processes hold (before
        a placement, after a state change, and every few seconds)."""
        if not self._cuda:
            return
        groups = {v.pid: m for m, e in self._engines.items() if (v := e.view()).pid is not None}
        tree = {pid: m for m, e in self._engines.items() for pid in e.descendants()}
        sched = self._scheduler
        foreign = self._book.read(groups, tree, sched.used(), sched.budget())
        self._scheduler.set_foreign(foreign, now)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, EngineStateChanged):
            self._inbox.put_nowait(event)
            if event.new is EngineState.READY and event.pid is not None:
                self._spawn(self._measure(event.model, event.pid))
            if event.new is EngineState.SLEEPING and event.pid is not None and self._cuda:
                self._spawn(self._measure(event.model, event.pid, asleep=True))
            for model, until, fut in self._state_waiters:
                if model == event.model and event.new in until and not fut.done():
                    fut.set_result(None)

    # -- the loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        sched = self._scheduler
        await self._take_over()
        self._publish()
        while True:
            msg = await self._inbox.get()
            now = time.monotonic()
            try:
                match msg:
                    case Arrive(rid, model, client):
                        if self._fx.expects(rid):
                            if sched.knows(model) and sched.state(model) is not S.READY:
                                self._refresh_foreign(now)  # it may be placed now
                            sched.request_arrived(rid, model, now, client)
                    case Leave(rid):
                        sched.request_done(rid, now)
                    case Idle(model, token):
                        sched.idle_timeout(model, token, now)
                    case Tick():
                        self._refresh_foreign(now)
                        sched.tick(now)
                    case Refresh():
                        self._refresh_foreign(now)
                    case Load(model):
                        self._refresh_foreign(now)
                        sched.load(model, now)
                    case Unload(model):
                        sched.unload(model, now)
                    case Pin(model, pinned):
                        sched.set_pinned(model, pinned, now)
                    case KeepAlive(model, ttl):
                        if sched.knows(model):
                            sched.keep_alive(model, ttl, now)
                    case Measured():
                        self._on_measured(msg, now)
                    case Reload(config, reply):
                        try:
                            reply.set_result(self._reload(config, now))
                        except Exception as exc:  # pragma: no cover - a bug, reported
                            reply.set_exception(exc)
                            raise
                    case EngineStateChanged(model=model, new=new, error=error):
                        if sched.knows(model):
                            if new in (S.STOPPED, S.SLEEPING, S.BACKOFF, S.FAILED):
                                self._refresh_foreign(now)
                            if error is not None:  # an out-of-memory start: who holds it
                                error = self._book.explain(
                                    model, error, sched.devices(model), sched.need(model)
                                )
                            sched.engine_state(model, new, error, now)
                        if model in self._retiring:
                            self._forget_if_gone(model)
            except Exception:  # pragma: no cover - a scheduler bug must not kill the loop
                log.exception("scheduler failed on %r", msg)
            if self._inbox.empty():  # once per burst of messages (readers get the last)
                self._publish()

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)


def _lock(state_dir: Path) -> TextIO | None:
    """An exclusive lock on ``state_dir`` (held while the file stays open), or
    None when another swapyard holds it. Creates the directory."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        f = open(state_dir / ".lock", "a")  # noqa: SIM115 - held open on purpose
    except OSError as exc:
        raise SwapyardError(
            f"cannot use {state_dir} for the engines' state: {exc.strerror or exc}"
        ) from exc
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
