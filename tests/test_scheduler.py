"""The FIFO single-resident scheduler, driven synchronously with a recording fake:
no event loop, no processes, no sleeps (house style 4)."""

from __future__ import annotations

import pytest

from swapyard.config import SchedulerSpec
from swapyard.errors import EngineExitedEarly, EngineStartTimeout, ShuttingDown
from swapyard.process.state import EngineState
from swapyard.scheduler.core import Scheduler
from swapyard.testing import RecordingEffects

S = EngineState


@pytest.fixture
def fx() -> RecordingEffects:
    return RecordingEffects()


def make(fx: RecordingEffects, **ttls: float) -> Scheduler:
    """The FIFO baseline with unknown memory needs: one model at a time (issue #2)."""
    return Scheduler(ttls or {"a": 0.0, "b": 0.0}, fx, config=SchedulerSpec(policy="fifo"))


def ready(s: Scheduler, model: str) -> None:
    s.engine_state(model, S.STARTING)
    s.engine_state(model, S.READY)


def token(call: tuple[object, ...]) -> int:
    """The token of an ``arm`` (idle timer) call."""
    tok = call[3]
    assert call[0] == "arm" and isinstance(tok, int), call
    return tok


def test_first_request_starts_its_model(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a")
    assert fx.take() == [("start", "a")]
    assert s.position(1) == 1
    assert s.state("a") is S.STARTING and s.state("b") is S.STOPPED
    ready(s, "a")
    assert fx.take() == [("dispatch", 1, "a")]
    assert s.inflight("a") == 1 and s.position(1) is None


def test_requests_for_a_starting_model_join_the_one_start(fx: RecordingEffects) -> None:
    s = make(fx)
    for rid in (1, 2, 3):
        s.request_arrived(rid, "a")
    assert fx.take() == [("start", "a")]
    ready(s, "a")
    assert fx.take() == [("dispatch", 1, "a"), ("dispatch", 2, "a"), ("dispatch", 3, "a")]


def test_request_for_ready_model_is_dispatched_at_once(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a")
    ready(s, "a")
    fx.take()
    s.request_arrived(2, "a")
    assert fx.take() == [("dispatch", 2, "a")]


def test_swap_waits_for_in_flight_requests_to_finish(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a")
    ready(s, "a")
    fx.take()
    s.request_arrived(2, "b")
    assert fx.take() == []  # a is busy with request 1: nothing is stopped
    s.request_done(1)
    assert fx.take() == [("stop", "a", "b")]
    s.engine_state("a", S.STOPPED)
    assert fx.take() == [("start", "b")]
    ready(s, "b")
    assert fx.take() == [("dispatch", 2, "b")]


def test_requests_behind_a_pending_swap_wait_their_turn(fx: RecordingEffects) -> None:
    """FIFO: once a request for b waits, later requests for a queue behind it."""
    s = make(fx)
    s.request_arrived(1, "a")
    ready(s, "a")
    s.request_arrived(2, "b")
    s.request_arrived(3, "a")
    fx.take()
    assert s.position(3) == 2
    s.request_done(1)
    s.engine_state("a", S.STOPPED)
    ready(s, "b")
    s.request_done(2)
    assert fx.take() == [
        ("stop", "a", "b"), ("start", "b"), ("dispatch", 2, "b"), ("stop", "b", "a"),
    ]  # fmt: skip


def test_failed_start_rejects_every_request_waiting_for_it(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a")
    s.request_arrived(2, "a")
    s.request_arrived(3, "b")
    fx.take()
    s.engine_state("a", S.STARTING)
    s.engine_state("a", S.FAILED, EngineExitedEarly("a", "boom"))
    assert fx.take() == [
        ("reject", 1, "EngineExitedEarly"), ("reject", 2, "EngineExitedEarly"), ("start", "b"),
    ]  # fmt: skip


def test_cancelled_queued_request_leaves_the_queue(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a")
    s.request_arrived(2, "a")
    fx.take()
    s.request_done(1)
    assert s.queued("a") == 1 and s.position(2) == 1
    ready(s, "a")
    assert fx.take() == [("dispatch", 2, "a")]


def test_start_nobody_waits_for_is_abandoned(fx: RecordingEffects) -> None:
    """Issue #3: when every request waiting for a load has gone, the load is stopped."""
    s = make(fx)
    s.request_arrived(1, "a")
    s.engine_state("a", S.STARTING)
    s.request_done(1)  # its only client went away
    assert fx.take() == [("start", "a"), ("stop", "a", None)]
    s.request_arrived(2, "b")
    assert fx.take() == []  # a's memory is not free until it has stopped
    s.engine_state("a", S.STOPPED)
    assert fx.take() == [("start", "b")]


def test_start_abandoned_by_its_head_request_is_stopped_despite_later_waiters(
    fx: RecordingEffects,
) -> None:
    """FIFO: the later request for a waits behind b, so a's load would be wasted."""
    s = make(fx)
    s.request_arrived(1, "a")
    s.request_arrived(2, "b")
    s.request_arrived(3, "a")
    s.engine_state("a", S.STARTING)
    s.request_done(1)
    assert fx.take() == [("start", "a"), ("stop", "a", "b")]
    s.engine_state("a", S.STOPPED)
    ready(s, "b")
    assert fx.take() == [("start", "b"), ("dispatch", 2, "b")]


def test_stopping_engine_blocks_the_next_start_until_stopped(fx: RecordingEffects) -> None:
    s = make(fx, a=5.0, b=0.0)
    s.request_arrived(1, "a")
    ready(s, "a")
    s.request_done(1)
    s.idle_timeout("a", token(fx.take()[-1]))
    assert fx.take() == [("stop", "a", None)]
    s.request_arrived(2, "b")
    assert fx.take() == []
    s.engine_state("a", S.STOPPED)
    assert fx.take() == [("start", "b")]


def test_request_for_a_stopping_model_waits_then_restarts_it(fx: RecordingEffects) -> None:
    s = make(fx, a=5.0, b=0.0)
    s.request_arrived(1, "a")
    ready(s, "a")
    s.request_done(1)
    s.idle_timeout("a", token(fx.take()[-1]))
    fx.take()
    s.request_arrived(2, "a")
    assert fx.take() == []
    s.engine_state("a", S.STOPPED)
    assert fx.take() == [("start", "a")]


def test_idle_model_arms_ttl_and_is_stopped_when_it_fires(fx: RecordingEffects) -> None:
    s = make(fx, a=30.0)
    s.request_arrived(1, "a")
    ready(s, "a")
    s.request_done(1)
    calls = fx.take()
    assert calls[-1][:3] == ("arm", "a", 30.0)
    s.idle_timeout("a", token(calls[-1]))
    assert fx.take() == [("stop", "a", None)]


def test_stale_idle_timer_is_ignored_after_new_activity(fx: RecordingEffects) -> None:
    s = make(fx, a=30.0)
    s.request_arrived(1, "a")
    ready(s, "a")
    s.request_done(1)
    old_token = token(fx.take()[-1])
    s.request_arrived(2, "a")
    fx.take()
    s.idle_timeout("a", old_token)
    assert fx.take() == []
    s.request_done(2)
    new = fx.take()
    assert new[-1][0] == "arm" and new[-1][3] != old_token


def test_idle_timer_is_not_armed_without_ttl_or_while_busy(fx: RecordingEffects) -> None:
    s = make(fx, a=0.0)
    s.request_arrived(1, "a")
    ready(s, "a")
    s.request_done(1)
    assert [c for c in fx.take() if c[0] == "arm"] == []
    s2 = make(fx, a=10.0)
    s2.request_arrived(1, "a")
    ready(s2, "a")
    assert [c for c in fx.take() if c[0] == "arm"] == []  # request 1 is in flight


def test_idle_timeout_for_a_busy_model_does_nothing(fx: RecordingEffects) -> None:
    s = make(fx, a=10.0)
    s.request_arrived(1, "a")
    ready(s, "a")
    fx.take()
    s.idle_timeout("a", 2)
    assert fx.take() == []


def test_reject_all_empties_the_queue(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a")
    s.request_arrived(2, "b")
    fx.take()
    s.reject_all(ShuttingDown("bye"))
    assert fx.take() == [("reject", 1, "ShuttingDown"), ("reject", 2, "ShuttingDown")]
    assert s.queued() == 0


def test_start_timeout_rejects_waiters_even_after_stopping(fx: RecordingEffects) -> None:
    """A timed-out start is killed first (starting → stopping → failed); its waiters
    are rejected then, and the model is not started again in a loop."""
    s = make(fx)
    s.request_arrived(1, "a")
    s.engine_state("a", S.STARTING)
    s.engine_state("a", S.STOPPING)
    s.engine_state("a", S.FAILED, EngineStartTimeout("a", "health never passed"))
    assert fx.take() == [("start", "a"), ("reject", 1, "EngineStartTimeout")]
