"""Which request runs, which engine starts, which stops: decisions only, no I/O.

The scheduler is told what happened (a request arrived, finished or went away; an
engine changed state; a timer fired; time passed) and answers by calling its
``Effects``. It never awaits, sleeps, reads a clock or touches a process: the
caller passes ``now``. Its tests are synchronous with a recording fake (house
style 4).

Memory: each model needs ``need`` bytes on ``count`` devices (``None``: a whole
device, so an unknown model runs alone). ``placement.plan`` says where it fits or
which idle models to evict (LRU, ``priority`` breaking ties, never a busy or
pinned one, the smallest set).

The policy (``SchedulerSpec.policy``: ``fifo`` or ``batch``, see ``policy.py``)
answers the questions where they differ: which queued request may go ahead, which
one is overdue, which models are wanted and in what order, which starts are
unwanted, which idle model is held back from eviction, when to wake up.

Under both, a start that fails rejects the requests waiting for it; a start nobody
waits for any more is abandoned (unless the model is pinned or was loaded on
purpose); a ready model idle for its ``ttl`` is stopped. A client's ``keep_alive``
(``keep_alive()``) replaces that TTL until the next one or a reload, or asks for
a one-off stop once the model is idle.

Fast swaps: a model whose engine can sleep (``ModelTerms.sleep_need`` set) is put
to sleep rather than stopped when it is evicted for another model and its
``host_need`` fits in the host budget; asleep, it keeps ``sleep_need`` on its
devices and is itself evictable (then stopped for good). A request for a
sleeping model wakes it on the same devices once its full need fits there
(evicting as usual); if it can never fit there, it is stopped and started cold
wherever it fits. Idle timeouts and unloads stop for good.

Memory as it really is (issue 12): what other processes hold on each device
(``set_foreign``) is subtracted from its budget before each placement; a model's
need learned from a measurement (``learned_need``) and what it keeps asleep
(``learned_sleep_need``) replace the estimates. A start that ran out of memory
(``EngineOutOfMemory``) is retried once after stopping the idle models on its
devices; its queue waits meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from swapyard.config import SchedulerSpec
from swapyard.errors import (
    EngineBackoff,
    EngineOutOfMemory,
    EngineStopped,
    InsufficientMemory,
    QueueFull,
    SwapyardError,
)
from swapyard.process.state import EngineState
from swapyard.scheduler.placement import Evict, Fit, Never, Resident, Wait, fmt_bytes, plan
from swapyard.scheduler.policy import Policy, policy_for
from swapyard.scheduler.terms import (
    BROKEN,
    LOADING,
    TO_LOAD,
    Effects,
    ModelTerms,
    ModelView,
    Queued,
)

__all__ = ["Effects", "ModelTerms", "Policy", "Scheduler"]

S = EngineState
DEFAULT_DEVICE = "default"
FOREIGN = "foreign: "  # marks a Never that other processes' memory caused


class Scheduler:
    def __init__(
        self,
        models: Mapping[str, ModelTerms] | Mapping[str, float],
        effects: Effects,
        *,
        budget: Mapping[str, int] | None = None,
        config: SchedulerSpec | None = None,
        host: int | None = None,
    ) -> None:
        self._fx = effects
        self._cfg = config if config is not None else SchedulerSpec()
        self._policy: Policy = policy_for(self._cfg)
        self._budget = dict(budget or {DEFAULT_DEVICE: 1})
        self._host = host  # host RAM for sleeping engines; None: no bound
        self._foreign: dict[str, int] = {}  # held by processes swapyard did not start
        self._m: dict[str, ModelView] = {}
        for mid, t in models.items():
            terms = t if isinstance(t, ModelTerms) else ModelTerms(ttl=float(t))
            self._m[mid] = ModelView(terms, need=terms.need, pinned=terms.pinned)
        self._queue: list[Queued] = []
        self._running: dict[int, str] = {}
        self._armed_idle: dict[str, int] = {}
        self._armed_wake: float | None = None
        self._claims: dict[str, str] = {}  # stopping model -> the model it makes room for
        # Room a finished stop freed, kept for its claimant until that one starts.
        self._reserved: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        self._now = 0.0

    # -- read-only views -----------------------------------------------------------
    def knows(self, model: str) -> bool:
        """Whether ``model`` is scheduled (a removed one is forgotten once stopped)."""
        return model in self._m

    def state(self, model: str) -> EngineState:
        return self._m[model].state

    def inflight(self, model: str) -> int:
        return self._m[model].inflight

    def devices(self, model: str) -> tuple[str, ...]:
        return self._m[model].devices

    def load_time(self, model: str) -> float | None:
        """Seconds its last start (or wake) took here; None if never seen."""
        return self._m[model].load_time

    def need(self, model: str) -> int | None:
        return self._m[model].need

    def pinned(self, model: str) -> bool:
        return self._m[model].pinned

    def idle_since(self, model: str) -> float | None:
        """When a ready model last finished a request (None: busy, or not ready)."""
        m = self._m[model]
        if m.state is not S.READY or m.inflight:
            return None
        return m.last_used

    def ttl(self, model: str) -> float:
        """The idle TTL in effect (a ``keep_alive``, else the config's); 0: none, and
        0 too for a model to be stopped as soon as it is idle."""
        m = self._m[model]
        return 0.0 if m.unload_idle else max(0.0, m.idle_ttl)

    def budget(self) -> dict[str, int]:
        return dict(self._budget)

    def foreign(self) -> dict[str, int]:
        """Memory held per device by processes swapyard did not start."""
        return {d: self._foreign.get(d, 0) for d in self._budget}

    def sleep_need(self, model: str) -> int | None:
        """What ``model`` keeps on its devices asleep (measured, else its terms)."""
        return self._sleep_need(self._m[model])

    def host_used(self) -> int:
        """Host RAM held by sleeping engines (and those going to sleep)."""
        return sum(
            m.terms.host_need
            for m in self._m.values()
            if m.state is S.SLEEPING or (m.state is S.STOPPING and m.to_sleep)
        )

    def used(self) -> dict[str, int]:
        """Memory held per device by starting, ready and stopping models."""
        used = dict.fromkeys(self._budget, 0)
        for m in self._m.values():
            for d in m.devices:
                used[d] += self._need(m)
        return used

    def queued(self, model: str | None = None) -> int:
        return sum(1 for q in self._queue if model is None or q.model == model)

    def queue_ids(self) -> tuple[int, ...]:
        """The waiting requests' ids, in queue order."""
        return tuple(q.request_id for q in self._queue)

    def position(self, request_id: int) -> int | None:
        """1-based place in the queue, or None once dispatched (or unknown)."""
        for i, q in enumerate(self._queue):
            if q.request_id == request_id:
                return i + 1
        return None

    def queue_full(self) -> QueueFull | None:
        """The error for one more request if the queue is at ``max_queue``, else None."""
        if not self._cfg.max_queue or len(self._queue) < self._cfg.max_queue:
            return None
        return QueueFull(
            f"{len(self._queue)} requests are waiting, the limit is {self._cfg.max_queue}",
            retry_after=self._cfg.retry_after,
        )

    # -- what happened ------------------------------------------------------------------
    def request_arrived(
        self, request_id: int, model: str, now: float | None = None, client: str = ""
    ) -> None:
        """A request for ``model`` from ``client`` (API key, session or address; ""
        unknown): one client's own requests never count as others' demand."""
        self._tick(now)
        if (err := self.queue_full() or self._refused(model)) is not None:
            self._fx.reject(request_id, err)
            return
        self._queue.append(Queued(request_id, model, self._now, client))
        self._step()

    def request_done(self, request_id: int, now: float | None = None) -> None:
        """The request finished, failed, or its client went away (queued or running)."""
        self._tick(now)
        model = self._running.pop(request_id, None)
        if model is not None:
            m = self._m[model]
            m.inflight -= 1
            m.token += 1
            m.last_used = self._now
        else:
            self._queue = [q for q in self._queue if q.request_id != request_id]
        self._step()

    def engine_state(
        self,
        model: str,
        state: EngineState,
        error: SwapyardError | None = None,
        now: float | None = None,
    ) -> None:
        """The engine reports ``state`` (``warming`` and ``waking`` count as
        ``starting``). In ``backoff`` or ``failed`` (``error`` says why) its queue
        is rejected and so is every new request until it is ``stopped`` again; a
        kept model is started again then unless its ``restart`` is ``never``."""
        self._tick(now)
        m = self._m[model]
        state = S.STARTING if state in LOADING else state
        if state is S.BACKOFF and self._retry_out_of_memory(model, error):
            self._step()
            return
        if state is S.SLEEPING:
            self._hand_over(model, self._need(m) - (self._sleep_need(m) or 0))
        was = m.state
        if state is S.STOPPED and was in BROKEN:
            if m.oom_retrying:  # its backoff is over: now the retry
                m.oom_retrying = False
            else:  # a later start gets its own retry
                m.oom_retried = False
        exited = state is S.STOPPED and was in (S.READY, S.SLEEPING)  # on its own
        m.state = state
        m.to_sleep = m.to_sleep and state is S.STOPPING
        stop_asleep = state is S.SLEEPING and m.draining  # unloaded or changed meanwhile
        if state is S.SLEEPING:
            m.draining = False
        if state not in (S.STARTING, S.READY):
            m.unload_idle = False  # a keep_alive 0 is for the engine it was asked of
        if state in (S.STOPPED, *BROKEN):
            self._hand_over(model, self._need(m))
            m.devices = ()
            m.draining = False
            m.failure = error if state in BROKEN else None
            m.failure_at = self._now
        if state is S.STARTING:
            m.starting_at = self._now
        if state is S.READY:
            m.oom_retried = False
            m.loaded_at = self._now
            m.last_used = self._now
            if was is S.STARTING:  # not an adopted engine: it was never started here
                m.load_time = self._now - m.starting_at
        if state in BROKEN:
            # Those who waited for this start get what went wrong; later ones get
            # the backoff (or failed) error with the time left.
            cause = getattr(error, "cause", error)
            self._reject_queued(model, cause or EngineStopped(model, f"{model!r} is {state}"))
            m.keep = m.keep and state is S.BACKOFF and m.terms.restart != "never"
        elif exited:
            m.keep = m.keep and m.terms.restart == "always"
        if stop_asleep:
            self._stop(model, None)
        if m.retiring and state in (S.STOPPED, *BROKEN):
            self._reject_queued(model, EngineStopped(model, f"model {model!r} was removed"))
            del self._m[model]
            self._armed_idle.pop(model, None)
        self._step()

    def idle_timeout(self, model: str, token: int, now: float | None = None) -> None:
        self._tick(now)
        m = self._m[model]
        if token == m.token and m.state is S.READY and self._idle(model) and not m.pinned:
            self._stop(model, None)
        self._step()

    def tick(self, now: float) -> None:
        """Time passed (a ``wake_at`` came due)."""
        self._tick(now)
        self._armed_wake = None
        self._step()

    def learned_need(self, model: str, need: int, now: float | None = None) -> None:
        """The model's memory, measured after it became ready."""
        self._tick(now)
        self._m[model].need = need
        self._step()

    def learned_sleep_need(self, model: str, need: int, now: float | None = None) -> None:
        """What the model really keeps on its devices asleep, measured after a sleep."""
        self._tick(now)
        m = self._m[model]
        if m.terms.sleep_need is not None:
            m.sleep_need = need
        self._step()

    def forget_learned(self, model: str, now: float | None = None) -> None:
        """Its command changed: what was learned from the old one no longer holds."""
        self._tick(now)
        m = self._m[model]
        m.need, m.sleep_need = m.terms.need, None
        self._step()

    def set_foreign(self, foreign: Mapping[str, int], now: float | None = None) -> None:
        """What processes swapyard did not start hold per device, read just now."""
        self._tick(now)
        changed = {d: n for d, n in foreign.items() if d in self._budget} != self._foreign
        self._foreign = {d: max(0, n) for d, n in foreign.items() if d in self._budget}
        if changed:
            self._step()

    def load(self, model: str, now: float | None = None) -> None:
        """Load on purpose (preload, admin): kept until unloaded or evicted. A model
        in ``backoff`` or ``failed`` has its failures cleared first."""
        self._tick(now)
        m = self._m[model]
        m.keep = True
        if m.state in BROKEN:
            self._fx.reset(model)
        self._step()

    def adopted(
        self, model: str, devices: tuple[str, ...], state: EngineState, now: float | None = None
    ) -> None:
        """A previous swapyard's engine was taken over, ``ready`` or ``sleeping``,
        on ``devices``."""
        self._tick(now)
        m = self._m[model]
        m.state, m.devices = state, devices
        m.loaded_at = m.last_used = self._now
        self._step()

    def restart(self, model: str, now: float | None = None) -> None:
        """Its config changed: take no new requests for it, stop it once its running
        requests are done, then start it again as usual (queued requests wait)."""
        self._tick(now)
        m = self._m[model]
        if m.state in (S.STARTING, S.READY) or (m.state is S.STOPPING and m.to_sleep):
            m.draining = True  # stopped once idle, or as soon as it is asleep
        elif m.state is S.SLEEPING:
            self._stop(model, None)
        self._step()

    def reconfigure(
        self,
        models: Mapping[str, ModelTerms],
        config: SchedulerSpec,
        budget: Mapping[str, int],
        host: int | None,
        now: float | None = None,
    ) -> None:
        """A reloaded config: new models are added, the terms and settings of the
        others change at once, and removed models are drained, stopped and then
        forgotten (requests queued for them are refused)."""
        self._tick(now)
        self._cfg, self._policy = config, policy_for(config)
        self._budget, self._host = dict(budget), host
        for mid, terms in models.items():
            if mid in self._m:
                m = self._m[mid]
                m.retiring = False  # removed, then added back before it stopped
                if terms.pinned != m.terms.pinned:  # else a pin set at run time stays
                    m.pinned = terms.pinned
                    m.keep = m.keep or terms.pinned
                if terms.need != m.terms.need:  # else a learned need stays
                    m.need = terms.need
                if m.ttl is not None:  # a client's keep_alive lasts until a reload
                    m.ttl = None
                    self._rearm(mid)
                m.terms = terms
            else:
                self._m[mid] = ModelView(terms, need=terms.need, pinned=terms.pinned)
        for mid in [mid for mid in self._m if mid not in models]:
            m = self._m[mid]
            m.retiring, m.keep, m.pinned = True, False, False
            self._reject_queued(mid, EngineStopped(mid, f"model {mid!r} was removed"))
            if m.state in (S.STOPPED, *BROKEN):
                del self._m[mid]
            elif m.state in (S.STARTING, S.READY) or (m.state is S.STOPPING and m.to_sleep):
                m.draining = True
            elif m.state is S.SLEEPING:
                self._stop(mid, None)
        self._step()

    def unload(self, model: str, now: float | None = None) -> None:
        """Unload on purpose: unpin, take no new requests for it, stop it once its
        running requests are done (a running answer is never cut)."""
        self._tick(now)
        m = self._m[model]
        m.keep = False
        m.pinned = False
        if m.state in (S.STARTING, S.READY) or (m.state is S.STOPPING and m.to_sleep):
            m.draining = True
        elif m.state is S.SLEEPING:
            self._stop(model, None)
        self._step()

    def keep_alive(self, model: str, ttl: float, now: float | None = None) -> None:
        """A client's keep_alive (the Ollama API, issue 14). ``0``: stop the model
        once it is idle (now if it is; asleep, at once), a one-off that leaves its
        TTL as it was; ``> 0``: its idle TTL from now on; ``< 0``: never stopped for
        idleness. Both last until the next keep_alive or a config reload. A pinned
        model stays: a pin is the operator's word."""
        self._tick(now)
        m = self._m[model]
        if ttl == 0:
            if m.state is S.SLEEPING and not m.pinned:
                self._stop(model, None)
            m.unload_idle = m.state in (S.STARTING, S.READY) and not m.pinned
        else:
            m.ttl, m.unload_idle = ttl, False
            self._rearm(model)
        self._step()

    def set_pinned(self, model: str, pinned: bool, now: float | None = None) -> None:
        """Pin (never evicted, never idle-stopped, loaded now) or unpin."""
        self._tick(now)
        m = self._m[model]
        m.pinned = pinned
        m.keep = m.keep or pinned
        self._step()

    def reject_all(self, error: SwapyardError) -> None:
        """Fail every queued request (shutdown)."""
        queue, self._queue = self._queue, []
        for q in queue:
            self._fx.reject(q.request_id, error)

    # -- deciding -------------------------------------------------------------------------
    def _tick(self, now: float | None) -> None:
        if now is not None and now > self._now:
            self._now = now

    def _step(self) -> None:
        for claimant in [c for c in self._reserved if not self._wants(c)]:
            del self._reserved[claimant]
        overdue = self._overdue()
        self._dispatch_ready(overdue)
        self._stop_drained()
        self._abandon_unwanted_starts()
        self._start_loads(overdue)
        self._arm_idle_timers()
        self._arm_wake()

    def _dispatch_ready(self, overdue: Queued | None) -> None:
        keep: list[Queued] = []
        for q in self._queue:
            m = self._m[q.model]
            can = (
                m.state is S.READY
                and not m.draining
                and (not m.terms.max_concurrent or m.inflight < m.terms.max_concurrent)
            )
            if can and self._policy.may_dispatch(q, m, overdue, bool(keep), self._now):
                self._dispatch(q)
            else:
                keep.append(q)
        self._queue = keep

    def _overdue(self) -> Queued | None:
        return self._policy.overdue(self._queue, self._m, self._now)

    def _wanted(self, overdue: Queued | None) -> list[str]:
        """Models to load, most urgent first: the queue's, then those loaded on purpose."""
        order = self._policy.wanted(self._queue, overdue)
        order += [mid for mid, m in self._m.items() if m.keep and mid not in order]
        return [mid for mid in order if self._m[mid].state in TO_LOAD]

    def _start_loads(self, overdue: Queued | None) -> None:
        room = self._room()
        for model in self._wanted(overdue):
            m = self._m[model]
            if any(self._m[v].state is S.STOPPING for v in m.oom_wait if v in self._m):
                continue  # retrying an out-of-memory start: once they are gone
            m.oom_wait = ()
            residents = self._residents(overdue, model)
            if m.state is S.SLEEPING:  # wakes where it sleeps, or starts cold elsewhere
                here = {d: room[d] for d in m.devices}
                p = plan(self._full_need(m), len(m.devices), here, residents)
                if isinstance(p, Never):
                    self._stop(model, None)
                    continue
            else:
                p = plan(self._need(m), m.terms.count, room, residents)
                if isinstance(p, Never) and room != self._budget:
                    p = self._never_for_foreign(p, m, residents)
            sleep_ok = True
            if isinstance(p, Wait) and any(r.residual and r.evictable for r in residents):
                # What sleepers would keep is in the way: stop them for good instead.
                full = [replace(r, residual=0) for r in residents]
                if isinstance(alt := plan(self._full_need(m), m.terms.count, room, full),
                              Evict):  # fmt: skip
                    p, sleep_ok = alt, False
            match p:
                case Fit(devices):
                    m.state = S.STARTING
                    m.devices = devices
                    self._reserved.pop(model, None)
                    self._fx.start(model, devices, self._full_need(m))
                case Evict(_, victims):
                    for v in victims:
                        # One explicit load evicting another ends the other's keep:
                        # two that cannot be held together must not swap forever.
                        self._m[v].keep = self._m[v].keep and not m.keep
                        self._stop(v, model, sleep_ok)
                case Never(reason):
                    foreign = reason.startswith(FOREIGN)
                    err = InsufficientMemory(model, reason.removeprefix(FOREIGN), now=foreign)
                    self._reject_queued(model, err)
                    m.keep = m.keep and foreign  # a pin or preload waits for the room
                case _:  # Wait: decide again on the next event or wake-up
                    pass
            if self._policy.stops_loads(p):
                break

    def _stop_drained(self) -> None:
        for model, m in self._m.items():
            if m.draining and m.inflight == 0 and m.state in (S.STARTING, S.READY):
                self._stop(model, None)

    def _abandon_unwanted_starts(self) -> None:
        """Stop a load the policy calls unwanted (nobody waits for it any more, say),
        unless it was asked for on purpose (load, pin)."""
        head = self._queue[0].model if self._queue else None
        for model, m in self._m.items():
            if m.state is not S.STARTING or m.keep or m.pinned:
                continue
            if self._policy.abandons(model, self.queued(model), head):
                self._stop(model, head if head != model else None)

    def _wants(self, model: str) -> bool:
        m = self._m[model]
        return m.state in TO_LOAD and (m.keep or self.queued(model) > 0)

    def _residents(self, overdue: Queued | None, target: str) -> list[Resident]:
        """The resident set as ``target``'s placement sees it: an idle model the
        policy holds for now is not evictable."""
        out = []
        tm, waiting = self._m[target], [q for q in self._queue if q.model == target]
        for model, m in self._m.items():
            if not m.devices or model == target:
                continue
            if m.state is S.SLEEPING:  # idle by definition: evicting it stops it for good
                evictable, residual = not m.pinned, 0
            else:
                evictable = m.state is S.READY and m.inflight == 0 and not m.pinned
                held = self._policy.holds(m, tm, waiting, overdue, self._now)
                held = held or self._policy.keeps_dear(
                    m, tm, waiting, self._cheaper_busy(model, m), overdue, self._now
                )
                evictable = evictable and not held
                sleeps = m.to_sleep if m.state is S.STOPPING else self._will_sleep(m)
                residual = (self._sleep_need(m) or 0) if sleeps else 0
            # Room being freed for another model is that model's: plan around it,
            # so swaps whose evictions do not overlap run in parallel.
            stopping = m.state is S.STOPPING and self._claims.get(model, target) == target
            r = Resident(
                model, self._need(m), m.devices, evictable, pinned=m.pinned,
                stopping=stopping, last_used=m.last_used, priority=m.terms.priority,
                residual=residual,
                load_cost=m.load_time if m.load_time is not None else self._cfg.assumed_load,
            )  # fmt: skip
            out.append(r)
        for claimant, rooms in self._reserved.items():
            if claimant != target:
                for devices, need in rooms:
                    out.append(Resident(f"(room for {claimant})", need, devices, False))
        return out

    def _room(self) -> dict[str, int]:
        """Each device's budget less what other processes hold on it now."""
        return {d: max(0, b - self._foreign.get(d, 0)) for d, b in self._budget.items()}

    def _never_for_foreign(self, p: Never, m: ModelView, residents: list[Resident]) -> Never:
        """A model that would fit but for other processes' memory is told so."""
        if isinstance(plan(self._need(m), m.terms.count, self._budget, residents), Never):
            return p
        held = ", ".join(f"{d}: {fmt_bytes(n)}" for d, n in sorted(self._foreign.items()) if n > 0)
        return Never(f"{FOREIGN}{p.reason}; processes swapyard did not start hold {held}")

    def _retry_out_of_memory(self, model: str, error: SwapyardError | None) -> bool:
        """A start that ran out of memory (its engine backs off): stop the idle
        models on its devices, and start it again once they are gone and its
        backoff is over (its failures still count toward its start limit), once.
        False: no retry (already used, or nothing idle to stop), the failure goes
        on as usual. Its queue waits meanwhile."""
        m = self._m[model]
        cause = getattr(error, "cause", error)
        if m.oom_retried or m.state is not S.STARTING or not isinstance(cause, EngineOutOfMemory):
            return False
        victims = [
            mid for mid, o in self._m.items()
            if mid != model and set(o.devices) & set(m.devices) and not o.pinned
            and (o.state is S.SLEEPING or (o.state is S.READY and o.inflight == 0))
        ]  # fmt: skip
        if not victims:
            return False
        m.oom_retried = m.oom_retrying = True
        m.oom_wait = tuple(victims)
        m.state, m.devices = S.BACKOFF, ()
        for v in victims:
            # For good (what it would keep asleep is what was missing), the room
            # kept for this model; one explicit load does not bring the other back.
            self._m[v].keep = self._m[v].keep and not m.keep
            self._stop(v, model, sleep_ok=False)
        return True

    def _cheaper_busy(self, model: str, m: ModelView) -> bool:
        """Whether another model on ``m``'s devices (loading, answering or held)
        reloads faster than ``m``: once it is free, evicting it costs less."""
        own = self._load(m)
        return any(
            o.state in (S.STARTING, S.READY)
            and not o.pinned and set(o.devices) & set(m.devices) and self._load(o) < own
            for mid, o in self._m.items() if mid != model
        )  # fmt: skip

    def _load(self, m: ModelView) -> float:
        return m.load_time if m.load_time is not None else self._cfg.assumed_load

    def _sleep_need(self, m: ModelView) -> int | None:
        return m.sleep_need if m.sleep_need is not None else m.terms.sleep_need

    def _need(self, m: ModelView) -> int:
        if m.state is S.SLEEPING:
            return self._sleep_need(m) or 0
        return m.need if m.need is not None else max(self._budget.values())

    def _full_need(self, m: ModelView) -> int:
        return m.need if m.need is not None else max(self._budget.values())

    def _will_sleep(self, m: ModelView) -> bool:
        """Whether evicting ``m`` now would put it to sleep rather than stop it."""
        return (
            m.terms.sleep_need is not None
            and m.state is S.READY
            and (self._host is None or self.host_used() + m.terms.host_need <= self._host)
        )

    def _dispatch(self, q: Queued) -> None:
        m = self._m[q.model]
        self._running[q.request_id] = q.model
        m.inflight += 1
        m.token += 1
        m.last_used = self._now
        # Only those within min_residency are ever read (what makes a model hot).
        m.note_start(self._now, self._cfg.min_residency, q.client, q.arrived)
        self._fx.dispatch(q.request_id, q.model)

    def _rearm(self, model: str) -> None:
        """Its TTL changed: a timer armed with the old one is stale (its token is)."""
        self._m[model].token += 1
        self._armed_idle.pop(model, None)

    def _stop(self, model: str, for_model: str | None, sleep_ok: bool = True) -> None:
        """Stop ``model``; when it makes room for another, put it to sleep if it can."""
        m = self._m[model]
        m.unload_idle = False
        sleep = sleep_ok and for_model is not None and self._will_sleep(m)
        m.state = S.STOPPING
        m.to_sleep = sleep
        if for_model is not None:
            self._claims[model] = for_model
        self._fx.stop(model, for_model=for_model, sleep=sleep)

    def _hand_over(self, model: str, freed: int) -> None:
        """Keep the room a finished stop or sleep freed for the model it was made
        for, until that one starts."""
        claimant = self._claims.pop(model, None)
        devices = self._m[model].devices
        if claimant is not None and devices and freed > 0:
            self._reserved.setdefault(claimant, []).append((devices, freed))

    def _idle(self, model: str) -> bool:
        return self._m[model].inflight == 0 and self.queued(model) == 0

    def _arm_idle_timers(self) -> None:
        for model, m in self._m.items():
            if m.unload_idle and m.state is S.READY and self._idle(model) and not m.pinned:
                self._stop(model, None)  # keep_alive 0: its requests are done
                continue
            ttl = m.idle_ttl
            if (
                ttl > 0
                and m.state is S.READY
                and self._idle(model)
                and self._armed_idle.get(model) != m.token
            ):
                self._armed_idle[model] = m.token
                self._fx.arm_idle_timer(model, ttl, m.token)

    def _arm_wake(self) -> None:
        """Ask to be woken at the policy's next deadline (one wake-up armed at a time)."""
        times = self._policy.deadlines(self._queue, self._m, self._overdue(), self._now)
        future = [t for t in times if t > self._now]
        if not future:
            return
        when = min(future)
        if self._armed_wake is None or when < self._armed_wake or self._armed_wake <= self._now:
            self._armed_wake = when
            self._fx.wake_at(when)

    def _refused(self, model: str) -> SwapyardError | None:
        """What a request is told at once: its model was removed by a reload, or is
        in ``backoff`` or ``failed``; None when it may queue."""
        m = self._m.get(model)
        if m is None or m.retiring:
            return EngineStopped(model, f"model {model!r} was removed")
        if m.state not in BROKEN or m.oom_retrying:
            return None
        if isinstance(m.failure, EngineBackoff):
            left = max(0.0, m.failure.retry_after - (self._now - m.failure_at))
            return EngineBackoff(model, m.failure.cause, left)
        return m.failure or EngineStopped(model, f"model {model!r} is {m.state}")

    def _reject_queued(self, model: str, error: SwapyardError) -> None:
        keep: list[Queued] = []
        for q in self._queue:
            if q.model == model:
                self._fx.reject(q.request_id, error)
            else:
                keep.append(q)
        self._queue = keep
