"""The run loop: requests and engine events in, scheduler decisions out.

One task owns the scheduler. API handlers call ``acquire``/``release``, which post
messages to the inbox; process actors publish state changes on the bus, which a
listener also posts to the inbox. The loop feeds each message to the scheduler,
whose ``Effects`` are implemented here by talking to the process actors.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from swapyard.config import Config, ModelSpec
from swapyard.errors import ShuttingDown, SwapyardError
from swapyard.events import (
    EngineStateChanged,
    Event,
    EventBus,
    RequestAdmitted,
    RequestFinished,
    SwapStarted,
)
from swapyard.inbox import (
    Arrive,
    Done,
    Idle,
    Learned,
    Load,
    Message,
    Pin,
    Tick,
    Unload,
)
from swapyard.ports import PortAllocator
from swapyard.process.actor import EngineProcess
from swapyard.process.state import EngineState
from swapyard.resources.devices import RAM_SHARE, memory_budget, nvml_usage, ram_bytes
from swapyard.resources.measure import group_gpu_memory, group_rss
from swapyard.resources.needs import MemoryFigures, initial_figures
from swapyard.resources.store import MeasuredStore
from swapyard.scheduler.core import Effects, ModelTerms, Scheduler

log = logging.getLogger("swapyard.router")


@dataclass(frozen=True, slots=True)
class Lease:
    """Permission to send one request to ``model``'s engine at ``upstream``."""

    request_id: int
    model: str
    upstream: str
    waited: float


MEASURE_AFTER_READY = 0.5  # seconds: let the engine settle (warm-up) before measuring


def scheduler_for(
    config: Config,
    effects: Effects,
    needs: Mapping[str, int | None] | None = None,
    budget: Mapping[str, int] | None = None,
) -> Scheduler:
    needs = needs or {}
    terms = {m.id: model_terms(m, needs.get(m.id, m.memory)) for m in config.models.values()}
    sc = config.scheduler
    if budget is None:
        budget = memory_budget(config)[0]
    host = sc.host_memory if sc.host_memory is not None else int(ram_bytes() * RAM_SHARE)
    return Scheduler(terms, effects, budget=budget, config=config.scheduler, host=host)


def model_terms(m: ModelSpec, need: int | None) -> ModelTerms:
    """What the scheduler knows of one model. A remote engine holds no memory here;
    one with a fast swap keeps part of its need while asleep (the adapter's share,
    unless ``sleep_memory``/``host_memory`` say)."""
    if m.remote:
        need = 0
    sleep_need, host_need = None, 0
    fast = m.adapter.fast(m.fields) if m.fields is not None else None
    if fast is not None:
        base = need or 0
        sleep_need = m.sleep_memory if m.sleep_memory is not None else int(base * fast.gpu_left)
        host_need = m.host_memory if m.host_memory is not None else int(base * fast.host_held)
    return ModelTerms(
        ttl=m.ttl, need=need, count=m.gpus, pinned=m.pin, priority=m.priority,
        max_concurrent=m.max_concurrent, sleep_need=sleep_need, host_need=host_need,
    )  # fmt: skip


class Router:
    """Owns the engines and the scheduler for one config."""

    def __init__(
        self,
        config: Config,
        bus: EventBus,
        http: aiohttp.ClientSession,
        store: MeasuredStore | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.started_at = time.time()
        self.memory: dict[str, MemoryFigures] = {
            m.id: initial_figures(m, store) for m in config.models.values()
        }
        self.bus = bus
        ports = PortAllocator()
        self.engines: Mapping[str, EngineProcess] = {
            mid: EngineProcess(spec, bus, ports, http) for mid, spec in config.models.items()
        }
        needs = {mid: f.scheduled for mid, f in self.memory.items()}
        if not config.scheduler.learn_memory:
            needs = {mid: f.declared or f.estimated for mid, f in self.memory.items()}
        budget, self.cuda_devices = memory_budget(config)
        self.scheduler = scheduler_for(config, _RouterEffects(self), needs, budget)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._waiting: dict[int, tuple[asyncio.Future[str], float]] = {}
        self._ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._bg: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._state_waiters: list[tuple[str, frozenset[EngineState], asyncio.Future[None]]] = []
        bus.add_listener(self._on_event)

    # -- lifecycle ------------------------------------------------------------------
    def run(self) -> None:
        for engine in self.engines.values():
            engine.run()
        self._task = asyncio.create_task(self._run(), name="router")
        for m in self.config.models.values():
            if m.pin or m.id in self.config.preload:
                self._inbox.put_nowait(Load(m.id))

    def stop_admitting(self) -> None:
        """Refuse new requests and reject the queued ones; running ones go on."""
        self._closing = True
        self.scheduler.reject_all(ShuttingDown("swapyard is shutting down"))

    async def shutdown(self, deadline: float) -> None:
        """Reject queued requests, stop every engine, end the loop; by ``deadline``
        (a ``time.monotonic()`` value) whatever is still alive gets SIGKILL."""
        self.stop_admitting()
        for h in self._timers:
            h.cancel()
        closes = [asyncio.ensure_future(e.close()) for e in self.engines.values()]
        _, pending = await asyncio.wait(closes, timeout=max(0.1, deadline - time.monotonic()))
        if pending:
            log.warning("engines still stopping at the shutdown deadline; sending SIGKILL")
            for e in self.engines.values():
                e.kill_now()
            await asyncio.wait(pending, timeout=2.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in self._bg:
            t.cancel()
        await asyncio.gather(*self._bg, return_exceptions=True)

    # -- the API handlers' side ---------------------------------------------------------
    def new_request_id(self) -> int:
        return next(self._ids)

    async def acquire(self, model: str, request_id: int | None = None) -> Lease:
        """Wait until ``model`` is ready and this request may run on it.

        Raises the engine's ``SwapyardError`` if it cannot start. If the caller is
        cancelled (client gone), the request leaves the queue.
        """
        if self._closing:
            raise ShuttingDown("swapyard is shutting down")
        rid = self.new_request_id() if request_id is None else request_id
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        self._waiting[rid] = (fut, t0)
        self._inbox.put_nowait(Arrive(rid, model))
        try:
            await fut
        except BaseException:
            self._waiting.pop(rid, None)
            rejected = fut.done() and not fut.cancelled() and fut.exception() is not None
            if not rejected:  # the scheduler still counts it (queued or dispatched)
                self._inbox.put_nowait(Done(rid))
            raise
        return Lease(rid, model, self.engines[model].upstream, time.monotonic() - t0)

    def release(self, lease: Lease) -> None:
        self._inbox.put_nowait(Done(lease.request_id))
        self.bus.publish(RequestFinished(lease.request_id, lease.model))

    def check_admission(self) -> None:
        """Raise now what ``acquire`` would answer at once: ``ShuttingDown``, or
        ``QueueFull`` when the queue is at its bound (before any streaming starts)."""
        if self._closing:
            raise ShuttingDown("swapyard is shutting down")
        err = self.scheduler.queue_full()
        if err is not None:
            raise err

    def ready_now(self, model: str) -> bool:
        """Whether a request for ``model`` would be dispatched without waiting."""
        return self.scheduler.state(model) is EngineState.READY and self.scheduler.queued() == 0

    def position(self, request_id: int) -> int | None:
        return self.scheduler.position(request_id)

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

    def device_usage(self) -> dict[str, tuple[int, int]]:
        """(used, total) bytes per GPU as NVML reports them; {} without GPUs."""
        return nvml_usage() if self.cuda_devices else {}

    def _used_by(self, pgid: int) -> int:
        """On GPUs, the most the group holds on any one device (a need is per
        device); else its resident memory."""
        if self.cuda_devices:
            gpu = group_gpu_memory(pgid)
            if gpu:
                return max(gpu.values())
        return group_rss(pgid)

    async def _measure(self, model: str, pgid: int) -> None:
        """What the engine's process group really holds, once it has settled."""
        await asyncio.sleep(MEASURE_AFTER_READY)
        if self.engines[model].pid != pgid or self.engines[model].state is not EngineState.READY:
            return
        nbytes = await asyncio.to_thread(self._used_by, pgid)
        if nbytes <= 0:
            return
        figures = self.memory[model]
        figures.measured = nbytes
        if self.store is not None:
            self.store.put(self.config.models[model], nbytes)
        if (
            self.config.scheduler.learn_memory
            and figures.declared is None
            and figures.estimated is None
        ):
            self._inbox.put_nowait(Learned(model, nbytes))

    async def _command(self, msg: Message, model: str, done: set[EngineState]) -> EngineState:
        """Send ``msg``; return at once if ``model`` is already in a ``done`` state,
        else when it next reaches one of them or fails."""
        if self.engines[model].state in done:
            self._inbox.put_nowait(msg)
            return self.engines[model].state
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (model, frozenset(done | {EngineState.FAILED}), fut)
        self._state_waiters.append(entry)
        self._inbox.put_nowait(msg)
        try:
            await fut
        finally:
            if entry in self._state_waiters:
                self._state_waiters.remove(entry)
        return self.engines[model].state

    def _on_event(self, event: Event) -> None:
        if isinstance(event, EngineStateChanged):
            self._inbox.put_nowait(event)
            if event.new is EngineState.READY and event.pid is not None:
                self._spawn(self._measure(event.model, event.pid))
            for model, until, fut in self._state_waiters:
                if model == event.model and event.new in until and not fut.done():
                    fut.set_result(None)

    # -- the loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        sched = self.scheduler
        while True:
            msg = await self._inbox.get()
            now = time.monotonic()
            try:
                match msg:
                    case Arrive(rid, model):
                        if rid in self._waiting:
                            sched.request_arrived(rid, model, now)
                    case Done(rid):
                        sched.request_done(rid, now)
                    case Idle(model, token):
                        sched.idle_timeout(model, token, now)
                    case Tick():
                        sched.tick(now)
                    case Load(model):
                        sched.load(model, now)
                    case Unload(model):
                        sched.unload(model, now)
                    case Pin(model, pinned):
                        sched.set_pinned(model, pinned, now)
                    case Learned(model, nbytes):
                        sched.learned_need(model, nbytes, now)
                    case EngineStateChanged(model=model, new=new, error=error):
                        sched.engine_state(model, new, error, now)
            except Exception:  # pragma: no cover - a scheduler bug must not kill the loop
                log.exception("scheduler failed on %r", msg)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)


class _RouterEffects:
    def __init__(self, router: Router) -> None:
        self._r = router

    def start(self, model: str, devices: tuple[str, ...]) -> None:
        env = {}
        if self._r.cuda_devices:
            # Devices are CUDA indexes: the engine sees only the GPUs it was placed on.
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        self._r._spawn(_quiet(self._r.engines[model].start(env)))

    def stop(self, model: str, *, for_model: str | None, sleep: bool = False) -> None:
        if for_model is not None:
            self._r.bus.publish(SwapStarted(new=for_model, old=model))
        self._r._spawn(_quiet(self._r.engines[model].stop(sleep=sleep)))

    def dispatch(self, request_id: int, model: str) -> None:
        entry = self._r._waiting.pop(request_id, None)
        if entry is None or entry[0].done():
            self._r._inbox.put_nowait(Done(request_id))
            return
        fut, t0 = entry
        fut.set_result(model)
        self._r.bus.publish(RequestAdmitted(request_id, model, time.monotonic() - t0))

    def reject(self, request_id: int, error: SwapyardError) -> None:
        entry = self._r._waiting.pop(request_id, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(error)

    def wake_at(self, when: float) -> None:
        self._after(max(0.0, when - time.monotonic()), Tick())

    def _after(self, delay: float, msg: Message) -> None:
        loop = asyncio.get_running_loop()
        timers = self._r._timers

        def fire() -> None:
            timers.discard(handle)
            self._r._inbox.put_nowait(msg)

        handle = loop.call_later(delay, fire)
        timers.add(handle)

    def arm_idle_timer(self, model: str, ttl: float, token: int) -> None:
        self._after(ttl, Idle(model, token))


async def _quiet(coro: Any) -> None:
    # Outcomes reach the scheduler as state events; the direct reply is not needed.
    with contextlib.suppress(SwapyardError):
        await coro
