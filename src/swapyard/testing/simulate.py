"""Traffic through the real scheduler in virtual time: no processes, no sleeps.

A ``Sim`` owns a ``Scheduler`` and plays the world around it: engines that take
``load`` seconds to start and ``stop`` seconds to stop, requests that run for
their ``service`` seconds once dispatched, and clients that send them — closed
loop (the next request after the answer and a think time) or open loop (at fixed
times). Every effect the scheduler asks for becomes an event at the same virtual
time or later, never a synchronous call back (the ``Effects`` contract). The
result gives each request's latency (arrival to answer), the engine starts and
the wall time, so a policy's behaviour on a traffic shape is a deterministic
function of the trace (``tests/test_scheduler_shapes.py``).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from swapyard.config import SchedulerSpec
from swapyard.errors import SwapyardError
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler

S = EngineState


@dataclass(frozen=True, slots=True)
class Ask:
    """One request: ``model`` for ``service`` seconds once running; ``think`` is
    the client's pause before it (closed loop) or its arrival time (open loop)."""

    model: str
    service: float
    think: float = 0.0
    who: str = ""  # sent as this client (a sub-agent a client fans out to), else the client


@dataclass(slots=True)
class Client:
    name: str
    asks: Sequence[Ask]
    open_loop: bool = False  # asks' ``think`` are absolute arrival times
    parallel: int = 1  # closed loop: consecutive asks sent together (a fan-out)


@dataclass(slots=True)
class Done:
    client: str
    model: str
    arrived: float
    finished: float
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.finished - self.arrived


@dataclass(slots=True)
class Result:
    done: list[Done] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    cut: int = 0  # running requests whose engine was stopped under them (never, we hope)

    @property
    def wall(self) -> float:
        return max((d.finished for d in self.done), default=0.0)

    @property
    def total_starts(self) -> int:
        return sum(self.starts.values())

    def pct(self, p: float, model: str | None = None) -> float:
        xs = sorted(d.latency for d in self.done if model is None or d.model == model)
        if not xs:
            return 0.0
        return xs[min(len(xs) - 1, max(0, round(p / 100 * len(xs) + 0.5) - 1))]

    @property
    def errors(self) -> int:
        return sum(1 for d in self.done if d.error)


class Sim:
    def __init__(
        self,
        models: Mapping[str, ModelTerms],
        budget: Mapping[str, int],
        spec: SchedulerSpec,
        load: Mapping[str, float],
        stop: float = 0.2,
    ) -> None:
        self.load, self.stop_s = load, stop
        self._q: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.now = 0.0
        self.result = Result()
        self._ids = itertools.count(1)
        self._asks: dict[int, tuple[Client, Ask, float]] = {}
        self._running: dict[int, str] = {}
        self._gen: dict[str, int] = {}  # bumps when an engine is stopped (cancels its events)
        self._after: dict[int, Callable[[], None] | None] = {}
        self.sched = Scheduler(models, self, budget=budget, config=spec)

    # -- the event queue --
    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._q, (max(t, self.now), next(self._seq), fn))

    def chain(self, steps: Sequence[Sequence[Ask]], name: str = "orchestrator") -> None:
        """One closed-loop client whose every step sends its asks at once (a
        fan-out) and waits for all of them before the next."""
        it, me = iter(steps), Client(name, [])

        def go() -> None:
            step = next(it, None)
            if step is None:
                return
            left = [len(step)]

            def after() -> None:
                left[0] -= 1
                if left[0] == 0:
                    go()

            for ask in step:
                self.at(self.now + ask.think, self.sender(me, ask, after))

        self.at(self.now, go)

    def run(self, clients: Sequence[Client], until: float = 1e6) -> Result:
        for c in clients:
            self._next(c, iter(c.asks))
        while self._q:
            t, _, fn = heapq.heappop(self._q)
            if t > until:
                break
            self.now = t
            fn()
        return self.result

    # -- clients --
    def _next(self, c: Client, asks: Iterator[Ask]) -> None:
        """Send the client's next ask (closed loop: its next ``parallel`` asks, the
        one after them once all are answered); open loop: all at their times."""
        if c.open_loop:
            for ask in asks:
                self.at(ask.think, self.sender(c, ask, None))
            return
        batch = list(itertools.islice(asks, c.parallel))
        if not batch:
            return
        left = [len(batch)]

        def after() -> None:
            left[0] -= 1
            if left[0] == 0:
                self._next(c, asks)

        for ask in batch:
            self.at(self.now + ask.think, self.sender(c, ask, after))

    def sender(self, c: Client, ask: Ask, after: Callable[[], None] | None) -> Callable[[], None]:
        return lambda: self._send(c, ask, after)

    def _send(self, c: Client, ask: Ask, after: Callable[[], None] | None) -> None:
        rid = next(self._ids)
        self._asks[rid] = (c, ask, self.now)
        self._after[rid] = after
        self.sched.request_arrived(rid, ask.model, self.now, ask.who or c.name)

    def _finish(self, rid: int, error: str | None = None) -> None:
        c, ask, arrived = self._asks.pop(rid)
        self.result.done.append(Done(ask.who or c.name, ask.model, arrived, self.now, error))
        after = self._after.pop(rid, None)
        if after is not None:
            after()

    # -- Effects --
    def start(self, model: str, devices: tuple[str, ...], need: int | None = None) -> None:
        self.result.starts[model] = self.result.starts.get(model, 0) + 1
        gen = self._gen.get(model, 0)

        def ready() -> None:
            if self._gen.get(model, 0) == gen:
                self.sched.engine_state(model, S.READY, now=self.now)

        self.at(self.now, lambda: self.sched.engine_state(model, S.STARTING, now=self.now))
        self.at(self.now + self.load[model], ready)

    def stop(self, model: str, *, for_model: str | None, sleep: bool = False) -> None:
        self._gen[model] = self._gen.get(model, 0) + 1
        if model in self._running.values():
            self.result.cut += 1
        end = S.SLEEPING if sleep else S.STOPPED
        self.at(self.now, lambda: self.sched.engine_state(model, S.STOPPING, now=self.now))
        self.at(self.now + self.stop_s, lambda: self.sched.engine_state(model, end, now=self.now))

    def dispatch(self, request_id: int, model: str) -> None:
        _, ask, _ = self._asks[request_id]
        self._running[request_id] = model

        def done() -> None:
            self._running.pop(request_id, None)
            self._finish(request_id)
            self.sched.request_done(request_id, self.now)

        self.at(self.now + ask.service, done)

    def reject(self, request_id: int, error: SwapyardError) -> None:
        self.at(self.now, lambda: self._finish(request_id, error.code))

    def arm_idle_timer(self, model: str, ttl: float, token: int) -> None:
        self.at(self.now + ttl, lambda: self.sched.idle_timeout(model, token, self.now))

    def wake_at(self, when: float) -> None:
        self.at(when, lambda: self.sched.tick(self.now))

    def reset(self, model: str) -> None:
        self.at(self.now, lambda: self.sched.engine_state(model, S.STOPPED, now=self.now))
