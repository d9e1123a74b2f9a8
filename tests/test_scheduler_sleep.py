"""Fast swaps in the scheduler, synchronously: who sleeps instead of stopping, what
a sleeping model holds, waking in place, and the fall-backs to stop/start."""

from __future__ import annotations

from swapyard.config import SchedulerSpec
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler
from swapyard.testing import RecordingEffects

S = EngineState
G = 2**30


def sched(
    fx: RecordingEffects,
    terms: dict[str, ModelTerms],
    budget: dict[str, int] | None = None,
    host: int | None = None,
) -> Scheduler:
    cfg = SchedulerSpec(min_residency=0.0)
    return Scheduler(terms, fx, budget=budget or {"g0": 10 * G}, config=cfg, host=host)


def sleeper(need: int = 6 * G, asleep: int = G, host: int = 6 * G) -> ModelTerms:
    return ModelTerms(need=need, sleep_need=asleep, host_need=host)


def up(s: Scheduler, model: str, now: float) -> None:
    s.engine_state(model, S.STARTING, now=now)
    s.engine_state(model, S.READY, now=now)


def acts(fx: RecordingEffects) -> list[tuple[object, ...]]:
    return [c for c in fx.take() if c[0] in ("start", "stop", "sleep", "dispatch", "reject")]


def test_evicted_model_with_a_fast_swap_sleeps_and_keeps_its_residual() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": sleeper(), "b": sleeper()})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    assert acts(fx) == [("start", "a"), ("dispatch", 1, "a"), ("sleep", "a", "b")]
    s.engine_state("a", S.STOPPING, now=3)
    assert s.host_used() == 6 * G  # going to sleep: its host RAM is counted already
    s.engine_state("a", S.SLEEPING, now=4)
    assert acts(fx) == [("start", "b")]  # 6 GiB + a's 1 GiB residual fit in 10 GiB
    assert s.used() == {"g0": 7 * G}
    assert s.devices("a") == ("g0",)


def test_request_for_a_sleeping_model_wakes_it_in_place() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": sleeper(), "b": sleeper()})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    s.engine_state("a", S.SLEEPING, now=4)
    up(s, "b", 5)
    s.request_done(2, now=6)
    fx.take()
    s.request_arrived(3, "a", now=7)
    assert acts(fx) == [("sleep", "b", "a")]  # a's full need does not fit beside b
    s.engine_state("b", S.SLEEPING, now=8)
    assert acts(fx) == [("start", "a")]  # the wake: same devices
    assert fx.placements["a"] == ("g0",)
    up(s, "a", 8.5)
    assert acts(fx) == [("dispatch", 3, "a")]
    assert s.used() == {"g0": 7 * G}


def test_no_host_room_means_a_real_stop() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": sleeper(host=6 * G), "b": sleeper()}, host=4 * G)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    assert ("stop", "a", "b") in acts(fx)


def test_sleeping_model_is_stopped_when_its_residual_is_in_the_way() -> None:
    fx = RecordingEffects()
    terms = {"a": sleeper(asleep=2 * G), "b": sleeper(), "c": ModelTerms(need=9 * G)}
    s = sched(fx, terms)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    s.engine_state("a", S.SLEEPING, now=4)
    up(s, "b", 5)
    s.request_done(2, now=6)
    fx.take()
    s.request_arrived(3, "c", now=7)  # 9 GiB: b must go and a's 2 GiB too
    assert sorted(c for c in acts(fx)) == [("sleep", "b", "c"), ("stop", "a", "c")]


def test_sleeping_model_that_cannot_wake_in_place_restarts_cold_elsewhere() -> None:
    """a sleeps on g0; a pinned model now fills g0, so a wakes nowhere there: it is
    stopped and started cold on g1."""
    fx = RecordingEffects()
    terms = {"a": sleeper(), "b": sleeper(), "p": ModelTerms(need=8 * G)}
    s = sched(fx, terms, budget={"g0": 10 * G, "g1": 6 * G})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    assert fx.placements["a"] == ("g1",)  # best fit
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)  # b fits on g0 beside a
    s.set_pinned("p", True, now=3.5)
    fx.take()
    up(s, "b", 4)
    s.request_done(2, now=4.5)
    # p needs 8 GiB: only g0 can hold it; b sleeps there.
    s.engine_state("b", S.SLEEPING, now=5)
    up(s, "p", 6)
    fx.take()
    s.request_arrived(3, "b", now=7)  # b sleeps on g0 beside pinned p: 6 GiB never fit
    assert acts(fx) == [("stop", "b", None)]
    s.engine_state("b", S.STOPPED, now=8)
    # On g1, a asleep would keep 1 GiB and leave 5: it is stopped for good instead.
    assert acts(fx) == [("stop", "a", "b")]


def test_unload_and_idle_timeout_stop_for_good() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=6 * G, sleep_need=G, host_need=G, ttl=5)})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    fx.take()
    s.idle_timeout("a", s._m["a"].token, now=8)
    assert acts(fx) == [("stop", "a", None)]


def test_unloading_a_sleeping_model_stops_it_for_good() -> None:
    """An unload of a model asleep stops it at once and gives back its host RAM."""
    fx = RecordingEffects()
    s = sched(fx, {"a": sleeper(), "b": sleeper()})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    s.engine_state("a", S.SLEEPING, now=4)
    fx.take()
    s.unload("a", now=5)
    assert acts(fx) == [("stop", "a", None)]
    s.engine_state("a", S.STOPPED, now=6)
    assert s.host_used() == 0 and s.devices("a") == ()
