"""A client's keep_alive (the Ollama API, issue 14) as the scheduler decides it:
synchronous, with a recording fake (house style 4)."""

from __future__ import annotations

import pytest

from swapyard.config import SchedulerSpec
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler
from swapyard.testing import RecordingEffects

S = EngineState


@pytest.fixture
def fx() -> RecordingEffects:
    return RecordingEffects()


def make(fx: RecordingEffects, **ttls: float) -> Scheduler:
    return Scheduler(ttls or {"a": 0.0, "b": 0.0}, fx, config=SchedulerSpec(policy="fifo"))


def served(s: Scheduler, fx: RecordingEffects, rid: int = 1, model: str = "a") -> None:
    """``model`` started for request ``rid``, which is still running."""
    s.request_arrived(rid, model)
    s.engine_state(model, S.STARTING)
    s.engine_state(model, S.READY)
    fx.take()


def arms(calls: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [c for c in calls if c[0] == "arm"]


def test_keep_alive_zero_stops_the_model_once_its_request_is_done(fx: RecordingEffects) -> None:
    """keep_alive 0 during a request: nothing is cut; the model stops as it goes idle."""
    s = make(fx)
    served(s, fx)
    s.keep_alive("a", 0)
    assert fx.take() == []
    assert s.ttl("a") == 0.0
    s.request_done(1)
    assert fx.take() == [("stop", "a", None)]


def test_keep_alive_zero_stops_an_idle_model_at_once(fx: RecordingEffects) -> None:
    s = make(fx, a=300.0)
    served(s, fx)
    s.request_done(1)
    fx.take()
    s.keep_alive("a", 0)
    assert fx.take() == [("stop", "a", None)]


def test_keep_alive_zero_waits_for_requests_queued_behind(fx: RecordingEffects) -> None:
    s = make(fx)
    served(s, fx)
    s.keep_alive("a", 0)
    s.request_arrived(2, "a")
    s.request_done(1)
    assert fx.take() == [("dispatch", 2, "a")]
    s.request_done(2)
    assert fx.take() == [("stop", "a", None)]


def test_keep_alive_zero_is_a_one_off_that_leaves_the_ttl(fx: RecordingEffects) -> None:
    """After the stop, the next load keeps the config's TTL (the 0 was for that engine)."""
    s = make(fx, a=30.0)
    served(s, fx)
    s.keep_alive("a", 0)
    s.request_done(1)
    assert fx.take() == [("stop", "a", None)]
    s.engine_state("a", S.STOPPED)
    served(s, fx, rid=2)
    s.request_done(2)
    assert [c[:3] for c in arms(fx.take())] == [("arm", "a", 30.0)]
    assert s.ttl("a") == 30.0


def test_keep_alive_zero_on_a_stopped_model_does_nothing(fx: RecordingEffects) -> None:
    s = make(fx)
    s.keep_alive("a", 0)
    assert fx.take() == []
    served(s, fx)
    s.request_done(1)
    assert fx.take() == []  # loaded later: not stopped by the old keep_alive


def test_keep_alive_zero_stops_a_sleeping_model_for_good(fx: RecordingEffects) -> None:
    terms = ModelTerms(need=10, sleep_need=2, host_need=1)
    s = Scheduler({"a": terms}, fx, budget={"0": 100}, config=SchedulerSpec(policy="fifo"))
    s.adopted("a", ("0",), S.SLEEPING)
    fx.take()
    s.keep_alive("a", 0)
    assert fx.take() == [("stop", "a", None)]


def test_keep_alive_zero_leaves_a_pinned_model(fx: RecordingEffects) -> None:
    s = make(fx)
    served(s, fx)
    s.set_pinned("a", True)
    s.keep_alive("a", 0)
    s.request_done(1)
    assert [c for c in fx.take() if c[0] == "stop"] == []


def test_keep_alive_duration_is_the_idle_ttl_from_now_on(fx: RecordingEffects) -> None:
    """A duration replaces the config's TTL (none here): armed now, and after later requests."""
    s = make(fx)
    served(s, fx)
    s.request_done(1)
    assert arms(fx.take()) == []
    s.keep_alive("a", 120.0)
    calls = arms(fx.take())
    assert [c[:3] for c in calls] == [("arm", "a", 120.0)]
    s.idle_timeout("a", int(str(calls[0][3])))
    assert fx.take() == [("stop", "a", None)]
    s.engine_state("a", S.STOPPED)
    served(s, fx, rid=2)
    s.request_done(2)
    assert [c[:3] for c in arms(fx.take())] == [("arm", "a", 120.0)]


def test_keep_alive_duration_makes_a_timer_armed_with_the_old_ttl_stale(
    fx: RecordingEffects,
) -> None:
    s = make(fx, a=5.0)
    served(s, fx)
    s.request_done(1)
    old = arms(fx.take())[0]
    s.keep_alive("a", 600.0)
    new = arms(fx.take())[0]
    assert new[:3] == ("arm", "a", 600.0)
    s.idle_timeout("a", int(str(old[3])))
    assert fx.take() == []


def test_negative_keep_alive_keeps_the_model_loaded(fx: RecordingEffects) -> None:
    """Negative: no idle stop at all, even with a config TTL, and its old timer is stale."""
    s = make(fx, a=5.0)
    served(s, fx)
    s.request_done(1)
    old = arms(fx.take())[0]
    s.keep_alive("a", -1)
    assert arms(fx.take()) == []
    assert s.ttl("a") == 0.0
    s.idle_timeout("a", int(str(old[3])))
    s.request_arrived(2, "a")
    s.request_done(2)
    assert [c for c in fx.take() if c[0] in ("arm", "stop")] == []


def test_a_reload_ends_a_keep_alive(fx: RecordingEffects) -> None:
    s = make(fx, a=5.0)
    served(s, fx)
    s.keep_alive("a", -1)
    s.request_done(1)
    assert arms(fx.take()) == []
    s.reconfigure({"a": ModelTerms(ttl=5.0)}, SchedulerSpec(policy="fifo"), {"default": 1}, None)
    assert [c[:3] for c in arms(fx.take())] == [("arm", "a", 5.0)]
