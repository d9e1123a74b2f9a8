"""Scheduling policies: the answers that differ between the FIFO baseline and ours,
the batch policy (``SchedulerSpec.policy``).

- ``fifo`` — the baseline: requests are served in arrival order; the oldest
  waiting request blocks everything behind it until its model is ready, and a
  load for anyone else is abandoned.
- ``batch`` — ours, to cut swaps: a request for a ready model is dispatched at
  once, ahead of older requests for models that must be loaded; loads go in the
  order of their oldest request. No request waits more than ``max_wait`` behind
  others: once one is overdue, newer requests for other models are held back so
  the busy models drain and can be evicted — except for a model loaded less than
  ``min_residency`` seconds ago, which keeps serving its queue (a load is not
  wasted on a single request). A *hot* model — two or more requests started in
  the last ``min_residency`` seconds — is not evicted while idle for a moment
  between them as long as its recent demand exceeds the queue of the model that
  wants its room (and nobody is overdue), and only until the requests held back
  have waited, in all, what the swap costs — ``swap_factor`` times the load
  times of both models (measured at their last load; ``assumed_load`` if never
  seen). That is rent-or-buy: waiting is paid for until it matches the price of
  swapping, so a model that loads in seconds is held for seconds and one that
  loads in a minute for minutes (``max_wait`` bounds both). Requests for the
  other model gather meanwhile and one swap serves them all. A model asked for
  once per turn (one person alternating models) is never hot: those swaps stay
  immediate.

A policy is a stateless reader: it is handed the queue (oldest first), the
models' bookkeeping and ``now``, and changes none of them; the core picks one
from the config once (``policy_for``) and acts on its answers.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from swapyard.config import SchedulerSpec
from swapyard.process.state import EngineState
from swapyard.scheduler.placement import Fit, Plan
from swapyard.scheduler.terms import TO_LOAD, ModelView, Queued

S = EngineState
Models = Mapping[str, ModelView]
DEAR = 2.0  # a model this many times slower to load than the target is worth a wait
HOT = 2  # requests of unknown clients within min_residency that make a model hot


class Policy(Protocol):
    """The questions the scheduler's core asks of its policy."""

    def overdue(self, queue: Sequence[Queued], models: Models, now: float) -> Queued | None:
        """The request whose wait overrides the usual order now (None: none)."""
        ...

    def may_dispatch(
        self, q: Queued, m: ModelView, overdue: Queued | None, behind: bool, now: float
    ) -> bool:
        """Whether ``q``, whose model ``m`` could take it now, goes ahead
        (``behind``: an older request stays queued)."""
        ...

    def wanted(self, queue: Sequence[Queued], overdue: Queued | None) -> list[str]:
        """The models the queue asks for, most urgent first, loaded or not."""
        ...

    def stops_loads(self, p: Plan) -> bool:
        """Whether a wanted model planned ``p`` holds back the loads after it."""
        ...

    def abandons(self, model: str, waiting: int, head: str | None) -> bool:
        """Whether a start of ``model`` is unwanted (``waiting``: requests queued
        for it; ``head``: the oldest request's model). Loads on purpose are kept
        whatever this says."""
        ...

    def holds(
        self,
        m: ModelView,
        target: ModelView,
        waiting: Sequence[Queued],
        overdue: Queued | None,
        now: float,
    ) -> bool:
        """Whether idle ``m`` is kept from eviction for ``target``, for which
        ``waiting`` are queued."""
        ...

    def keeps_dear(
        self,
        m: ModelView,
        target: ModelView,
        waiting: Sequence[Queued],
        cheaper_busy: bool,
        overdue: Queued | None,
        now: float,
    ) -> bool:
        """Whether idle ``m`` is kept because it is dear to load again and a busy
        model that reloads faster will make room once its answers are done."""
        ...

    def deadlines(
        self, queue: Sequence[Queued], models: Models, overdue: Queued | None, now: float
    ) -> list[float]:
        """Times at which an answer above may change, past ones included."""
        ...


def policy_for(spec: SchedulerSpec) -> Policy:
    """The strategy that ``spec.policy`` names."""
    return Fifo() if spec.policy == "fifo" else Batch(spec)


@dataclass(frozen=True, slots=True)
class Fifo:
    """Arrival order, one request at the head; time changes none of its answers."""

    def overdue(self, queue: Sequence[Queued], models: Models, now: float) -> Queued | None:
        return None

    def may_dispatch(
        self, q: Queued, m: ModelView, overdue: Queued | None, behind: bool, now: float
    ) -> bool:
        return not behind

    def wanted(self, queue: Sequence[Queued], overdue: Queued | None) -> list[str]:
        return [queue[0].model] if queue else []

    def stops_loads(self, p: Plan) -> bool:
        return not isinstance(p, Fit)

    def abandons(self, model: str, waiting: int, head: str | None) -> bool:
        # A load not for the head would be stopped again before it served anyone
        # queued behind the head.
        return waiting == 0 or (head is not None and head != model)

    def holds(
        self,
        m: ModelView,
        target: ModelView,
        waiting: Sequence[Queued],
        overdue: Queued | None,
        now: float,
    ) -> bool:
        return False

    def keeps_dear(
        self,
        m: ModelView,
        target: ModelView,
        waiting: Sequence[Queued],
        cheaper_busy: bool,
        overdue: Queued | None,
        now: float,
    ) -> bool:
        return False

    def deadlines(
        self, queue: Sequence[Queued], models: Models, overdue: Queued | None, now: float
    ) -> list[float]:
        return []


@dataclass(frozen=True, slots=True)
class Batch:
    """Ready models first, loads by their oldest request, bounded by ``max_wait``;
    hot models held while the wait costs less than the swap."""

    spec: SchedulerSpec

    def overdue(self, queue: Sequence[Queued], models: Models, now: float) -> Queued | None:
        """The oldest request that waited ``max_wait`` for a model that is not ready."""
        for q in queue:
            if models[q.model].state is not S.READY and now - q.arrived >= self.spec.max_wait:
                return q
            if now - q.arrived < self.spec.max_wait:
                return None
        return None

    def may_dispatch(
        self, q: Queued, m: ModelView, overdue: Queued | None, behind: bool, now: float
    ) -> bool:
        # Once one is overdue, newer requests for others wait, so busy models drain;
        # a model within its minimum residency keeps serving its queue.
        return not (
            overdue is not None
            and q.arrived > overdue.arrived
            and q.model != overdue.model
            and now - m.loaded_at >= self.spec.min_residency
        )

    def wanted(self, queue: Sequence[Queued], overdue: Queued | None) -> list[str]:
        order = [overdue.model] if overdue is not None else []
        return list(dict.fromkeys(order + [q.model for q in queue]))

    def stops_loads(self, p: Plan) -> bool:
        return False

    def abandons(self, model: str, waiting: int, head: str | None) -> bool:
        return waiting == 0

    def holds(
        self,
        m: ModelView,
        target: ModelView,
        waiting: Sequence[Queued],
        overdue: Queued | None,
        now: float,
    ) -> bool:
        """Demand decides, not arrival order: a hot model outweighing the queue that
        wants its room stays until that queue's wait pays for the swap. Only other
        people's demand counts: the requests of the clients now waiting for the
        target are theirs, and one who moved on to another model (a chat's title
        and tags requests, then a switch) holds nothing back. An explicit load
        (nobody waiting: preload, admin, pin) is the operator's call."""
        if overdue is not None or not waiting or m.state is not S.READY:
            return False
        asking = frozenset(q.client for q in waiting if q.client)
        demand = self.demand(m, now, asking)
        return (
            len(waiting) <= demand
            and self.hot(m, now, asking)
            and self.still_asked(m, waiting[0].arrived, asking, now)
            and sum(now - q.arrived for q in waiting) < self.cost(m, target)  # the debt
        )

    def keeps_dear(
        self,
        m: ModelView,
        target: ModelView,
        waiting: Sequence[Queued],
        cheaper_busy: bool,
        overdue: Queued | None,
        now: float,
    ) -> bool:
        """Rent or buy between two victims: evicting a model that takes ``DEAR``
        times longer to load than the target (an orchestrator beside sub-agents)
        is put off while a busy model that reloads faster will free its room once
        its answers are done, until the requests waiting have paid for a reload
        of the dear one."""
        if overdue is not None or not waiting or not cheaper_busy:
            return False
        own = m.load_time if m.load_time is not None else self.spec.assumed_load
        theirs = target.load_time if target.load_time is not None else self.spec.assumed_load
        return own >= DEAR * theirs and sum(now - q.arrived for q in waiting) < own

    def still_asked(self, m: ModelView, since: float, asking: frozenset[str], now: float) -> bool:
        """Whether others go on asking for ``m`` while the target waits: one of their
        requests on it arrived after ``since`` (the oldest waiting request came), or
        ``hold_probe`` has not passed since then, or since it went idle, to see
        whether one will. A burst
        that is over (sub-agents that will not ask again before the model the
        target is for answers) holds nothing back for long."""
        if now - max(since, m.last_used) < self.spec.hold_probe:
            return True  # not idle long enough yet to tell
        return any(
            t > since and (not c or c not in asking)
            for t, c in zip(m.asked_at, m.started_by, strict=True)
        )

    def deadlines(
        self, queue: Sequence[Queued], models: Models, overdue: Queued | None, now: float
    ) -> list[float]:
        """A request waiting for a load becoming overdue; once one is overdue, a
        young model losing its minimum-residency exemption; a request held back
        behind a hot model paying for the swap; a hot model cooling down (it may
        become a victim)."""
        times = [q.arrived + self.spec.max_wait for q in queue if models[q.model].state in TO_LOAD]
        if overdue is not None:
            times += [
                m.loaded_at + self.spec.min_residency for m in models.values() if m.state is S.READY
            ]
        hot = [m for m in models.values() if self.hot(m, now)]
        for target in dict.fromkeys(q.model for q in queue) if hot else ():
            if models[target].state in TO_LOAD:
                arrived = [q.arrived for q in queue if q.model == target]
                for m in hot:
                    times.append((self.cost(m, models[target]) + sum(arrived)) / len(arrived))
        times += [m.started[-1] + self.spec.min_residency for m in hot]  # hot until it cools
        if hot:  # a hold's probe ends: does anyone still ask for the hot model?
            times += [q.arrived + self.spec.hold_probe for q in queue]
            times += [m.last_used + self.spec.hold_probe for m in hot]
        return times

    def recent(self, m: ModelView, now: float) -> list[float]:
        """When ``m`` started the requests of the last ``min_residency`` seconds."""
        return m.recent(now, self.spec.min_residency)

    def demand(self, m: ModelView, now: float, besides: frozenset[str] = frozenset()) -> int:
        return m.demand(now, self.spec.min_residency, besides)

    def hot(self, m: ModelView, now: float, besides: frozenset[str] = frozenset()) -> bool:
        """Ready, and asked for within ``min_residency`` by a known client other than
        ``besides``, or twice by anyone (who is unknown may be one person alone)."""
        if m.state is not S.READY:
            return False
        cut = bisect_right(m.started, now - self.spec.min_residency)
        others = [c for c in m.started_by[cut:] if not c or c not in besides]
        return any(others) or len(others) >= HOT

    def cost(self, m: ModelView, target: ModelView) -> float:
        """What evicting ``m`` for ``target`` costs: loading ``target`` now and
        ``m`` again for its demand (a load never seen counts ``assumed_load``)."""
        t = target.load_time
        own = m.load_time if m.load_time is not None else self.spec.assumed_load
        return self.spec.swap_factor * ((t if t is not None else self.spec.assumed_load) + own)
