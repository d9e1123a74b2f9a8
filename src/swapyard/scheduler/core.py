"""Which request runs, which engine starts, which stops: decisions only, no I/O.

The scheduler is told what happened (a request arrived, finished or went away; an
engine changed state; an idle timer fired) and answers by calling its ``Effects``.
It never awaits, sleeps or touches a process, so its tests are synchronous with a
recording fake (house style 4).

Policy (issue #2): one engine resident at a time, requests served first come,
first served.

- A request for the resident, ready model is dispatched at once, unless an older
  request for another model is waiting: then it queues behind that swap, so a
  stream of requests for the resident model cannot starve the other one.
- Requests for a model that is starting join that one start.
- A swap waits until the resident model has no request in flight; then it is
  stopped and the next model started. A running answer is never cut.
- A start that fails rejects every request queued for that model with the error;
  after a crash while serving, queued requests start it again.
- A ready model with nothing in flight or queued arms its idle timer (``ttl``);
  the timer carries a token, so one armed before later activity is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from swapyard.errors import EngineStartError, SwapyardError
from swapyard.process.state import EngineState

S = EngineState


class Effects(Protocol):
    """What the scheduler asks the world to do. Implementations must not call back
    into the scheduler synchronously; they report outcomes as later events."""

    def start(self, model: str) -> None: ...

    def stop(self, model: str, *, for_model: str | None) -> None: ...

    def dispatch(self, request_id: int, model: str) -> None: ...

    def reject(self, request_id: int, error: SwapyardError) -> None: ...

    def arm_idle_timer(self, model: str, ttl: float, token: int) -> None: ...


@dataclass(slots=True)
class _Queued:
    request_id: int
    model: str


class Scheduler:
    def __init__(self, ttls: Mapping[str, float], effects: Effects) -> None:
        self._fx = effects
        self._ttl = dict(ttls)
        self._state: dict[str, EngineState] = dict.fromkeys(ttls, S.STOPPED)
        self._inflight: dict[str, int] = dict.fromkeys(ttls, 0)
        self._running: dict[int, str] = {}
        self._queue: list[_Queued] = []
        self._token: dict[str, int] = dict.fromkeys(ttls, 0)
        self._armed: dict[str, int] = {}

    # -- read-only views -------------------------------------------------------------
    def state(self, model: str) -> EngineState:
        return self._state[model]

    def inflight(self, model: str) -> int:
        return self._inflight[model]

    def queued(self, model: str | None = None) -> int:
        return sum(1 for q in self._queue if model is None or q.model == model)

    def position(self, request_id: int) -> int | None:
        """1-based place in the queue, or None once dispatched (or unknown)."""
        for i, q in enumerate(self._queue):
            if q.request_id == request_id:
                return i + 1
        return None

    # -- what happened ------------------------------------------------------------------
    def request_arrived(self, request_id: int, model: str) -> None:
        self._queue.append(_Queued(request_id, model))
        self._step()

    def request_done(self, request_id: int) -> None:
        """The request finished, failed, or its client went away (queued or running)."""
        model = self._running.pop(request_id, None)
        if model is not None:
            self._inflight[model] -= 1
            self._token[model] += 1
        else:
            self._queue = [q for q in self._queue if q.request_id != request_id]
        self._step()

    def engine_state(
        self, model: str, state: EngineState, error: SwapyardError | None = None
    ) -> None:
        self._state[model] = state
        if state is S.FAILED and isinstance(error, EngineStartError):
            # A start that failed fails its waiters; a crash while serving does not:
            # the requests queued for it start it again when their turn comes.
            self._reject_queued(model, error)
        self._step()

    def idle_timeout(self, model: str, token: int) -> None:
        if token == self._token[model] and self._state[model] is S.READY and self._idle(model):
            self._stop(model, None)
        self._step()

    def reject_all(self, error: SwapyardError) -> None:
        """Fail every queued request (shutdown)."""
        queue, self._queue = self._queue, []
        for q in queue:
            self._fx.reject(q.request_id, error)

    # -- deciding -------------------------------------------------------------------------
    def _step(self) -> None:
        while self._queue and self._state[self._queue[0].model] is S.READY:
            head = self._queue.pop(0)
            self._dispatch(head)
        if self._queue:
            self._make_room_for(self._queue[0].model)
        self._arm_idle_timers()

    def _make_room_for(self, target: str) -> None:
        if self._state[target] in (S.STARTING, S.STOPPING):
            return
        busy = False
        for other, st in self._state.items():
            if other == target:
                continue
            if st is S.STOPPING:
                busy = True
            elif st is S.STARTING:
                # Its head request left; FIFO would stop it before it serves anyone
                # queued behind ``target``, so the rest of the load is wasted.
                self._stop(other, target)
                busy = True
            elif st is S.READY:
                if self._inflight[other] == 0:
                    self._stop(other, target)
                busy = True
        if not busy:
            self._state[target] = S.STARTING
            self._fx.start(target)

    def _dispatch(self, q: _Queued) -> None:
        self._running[q.request_id] = q.model
        self._inflight[q.model] += 1
        self._token[q.model] += 1
        self._fx.dispatch(q.request_id, q.model)

    def _stop(self, model: str, for_model: str | None) -> None:
        self._state[model] = S.STOPPING
        self._fx.stop(model, for_model=for_model)

    def _idle(self, model: str) -> bool:
        return self._inflight[model] == 0 and self.queued(model) == 0

    def _arm_idle_timers(self) -> None:
        for model, st in self._state.items():
            ttl = self._ttl[model]
            token = self._token[model]
            if ttl > 0 and st is S.READY and self._idle(model) and self._armed.get(model) != token:
                self._armed[model] = token
                self._fx.arm_idle_timer(model, ttl, token)

    def _reject_queued(self, model: str, error: SwapyardError) -> None:
        keep: list[_Queued] = []
        for q in self._queue:
            if q.model == model:
                self._fx.reject(q.request_id, error)
            else:
                keep.append(q)
        self._queue = keep
