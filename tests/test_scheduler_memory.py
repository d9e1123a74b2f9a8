"""Memory as it really is, in the scheduler, synchronously (issue 12): memory held
by other processes, needs and sleep residuals learned from measurements, the need
a start is placed with, and the one retry of a start that ran out of memory."""

from __future__ import annotations

from swapyard.config import SchedulerSpec
from swapyard.errors import EngineBackoff, EngineExitedEarly, EngineOutOfMemory, InsufficientMemory
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler
from swapyard.testing import RecordingEffects

S = EngineState
G = 2**30


def sched(fx: RecordingEffects, terms: dict[str, ModelTerms], budget: int = 10 * G) -> Scheduler:
    return Scheduler(terms, fx, budget={"0": budget}, config=SchedulerSpec(min_residency=0.0))


def up(s: Scheduler, model: str, now: float) -> None:
    s.engine_state(model, S.STARTING, now=now)
    s.engine_state(model, S.READY, now=now)


def acts(fx: RecordingEffects) -> list[tuple[object, ...]]:
    return [c for c in fx.take() if c[0] in ("start", "stop", "sleep", "dispatch", "reject")]


def oom(model: str) -> EngineBackoff:
    cause = EngineOutOfMemory(model, "exited: CUDA out of memory")
    return EngineBackoff(model, cause, 1.0)


def test_memory_other_processes_hold_is_not_room() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=4 * G), "b": ModelTerms(need=4 * G)})
    s.set_foreign({"0": 5 * G}, now=0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    # 4 + 4 fit in 10 GiB, but not with 5 GiB held by someone else: a is evicted.
    assert acts(fx) == [("start", "a"), ("dispatch", 1, "a"), ("stop", "a", "b")]
    assert s.foreign() == {"0": 5 * G}


def test_a_model_that_fits_but_for_foreign_memory_is_told_so() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=8 * G)})
    s.set_foreign({"0": 6 * G}, now=0)
    s.request_arrived(1, "a", now=0)
    assert acts(fx) == [("reject", 1, "InsufficientMemory")]
    err = fx.errors[1]
    assert isinstance(err, InsufficientMemory)
    assert "does not fit in memory now" in err.message
    assert "processes swapyard did not start hold 0: 6.0 GiB" in err.message
    s.set_foreign({"0": 0}, now=1)  # the other process went away
    s.request_arrived(2, "a", now=2)
    assert acts(fx) == [("start", "a")]


def test_foreign_memory_going_away_lets_a_waiting_start_go() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=4 * G), "b": ModelTerms(need=4 * G)})
    s.request_arrived(1, "a", now=0)
    s.engine_state("a", S.STARTING, now=0)  # busy loading: not evictable
    s.set_foreign({"0": 3 * G}, now=0)
    s.request_arrived(2, "b", now=1)
    assert acts(fx) == [("start", "a")]  # 4 + 3 + 4 > 10: b waits
    s.set_foreign({"0": G}, now=2)
    assert acts(fx) == [("start", "b")]


def test_start_is_told_the_need_it_was_placed_with_and_a_measurement_replaces_it() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=2 * G), "b": ModelTerms(need=2 * G)})
    s.request_arrived(1, "a", now=0)
    assert fx.needs == {"a": 2 * G}
    up(s, "a", 1)
    s.learned_need("a", 9 * G, now=2)  # it took far more than estimated (vLLM's 0.9)
    s.request_done(1, now=3)
    s.request_arrived(2, "b", now=4)
    assert acts(fx) == [("start", "a"), ("dispatch", 1, "a"), ("stop", "a", "b")]


def test_what_a_sleeping_engine_really_keeps_replaces_the_default() -> None:
    fx = RecordingEffects()
    terms = {m: ModelTerms(need=6 * G, sleep_need=2 * G, host_need=G) for m in "abc"}
    s = sched(fx, terms, budget=19 * G // 2)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    assert acts(fx)[-1] == ("sleep", "a", "b")  # a (6) + b (6) > 9.5
    s.engine_state("a", S.STOPPING, now=3)
    s.engine_state("a", S.SLEEPING, now=4)
    assert s.used() == {"0": 8 * G}  # b starting + a's default residual
    s.learned_sleep_need("a", G // 2, now=5)
    assert s.sleep_need("a") == G // 2
    assert s.used()["0"] == 6 * G + G // 2  # b starting + a's real residual
    up(s, "b", 6)
    fx.take()
    s.request_done(2, now=7)
    s.request_arrived(3, "c", now=8)
    # b asleep keeps 2 GiB (not measured yet), a 0.5: 6 + 2 + 0.5 fit in 9.5, nothing
    # stops (with a's default 2 GiB, 6 + 2 + 2 would not: a would be stopped for good).
    assert [c for c in acts(fx) if c[0] != "dispatch"] == [("sleep", "b", "c")]


def test_out_of_memory_start_is_retried_once_after_stopping_idle_models() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=2 * G), "b": ModelTerms(need=2 * G)})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    assert acts(fx)[-1] == ("start", "b")  # 2 + 2 fit, by the figures
    s.engine_state("b", S.STARTING, now=3)
    s.engine_state("b", S.BACKOFF, oom("b"), now=4)  # but the GPU said otherwise
    assert acts(fx) == [("stop", "a", "b")]  # no rejection: the request waits
    s.request_arrived(3, "b", now=4.5)  # a new request during the retry queues too
    assert acts(fx) == []
    s.engine_state("b", S.STOPPED, now=5)  # its backoff is over
    assert acts(fx) == []  # a is still stopping
    s.engine_state("a", S.STOPPED, now=6)
    assert acts(fx) == [("start", "b")]
    up(s, "b", 7)
    assert acts(fx) == [("dispatch", 2, "b"), ("dispatch", 3, "b")]


def test_a_second_out_of_memory_start_fails_its_requests() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=2 * G), "b": ModelTerms(need=2 * G)})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    s.engine_state("b", S.STARTING, now=3)
    s.engine_state("b", S.BACKOFF, oom("b"), now=4)
    s.engine_state("b", S.STOPPED, now=5)
    s.engine_state("a", S.STOPPED, now=6)
    s.engine_state("b", S.STARTING, now=6)
    fx.take()
    s.engine_state("b", S.BACKOFF, oom("b"), now=7)
    assert acts(fx) == [("reject", 2, "EngineOutOfMemory")]


def test_no_retry_without_idle_models_or_for_other_failures() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=2 * G), "b": ModelTerms(need=2 * G)})
    s.request_arrived(1, "a", now=0)
    s.engine_state("a", S.STARTING, now=0)
    s.engine_state("a", S.BACKOFF, oom("a"), now=1)  # nothing else holds memory
    assert acts(fx) == [("start", "a"), ("reject", 1, "EngineOutOfMemory")]
    s.engine_state("a", S.STOPPED, now=2)
    s.request_arrived(2, "a", now=3)
    up(s, "a", 4)
    s.request_done(2, now=5)
    s.request_arrived(3, "b", now=6)
    s.engine_state("b", S.STARTING, now=6)
    crash = EngineBackoff("b", EngineExitedEarly("b", "exited with code 1"), 1.0)
    fx.take()
    s.engine_state("b", S.BACKOFF, crash, now=7)  # not memory: no eviction, no retry
    assert acts(fx) == [("reject", 3, "EngineExitedEarly")]


def test_a_retry_whose_client_left_never_blocks_the_model_later() -> None:
    """The victim of a retry came back for its own requests; a later request for
    the model that ran out of memory is placed as usual (it evicts the victim)."""
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=6 * G), "b": ModelTerms(need=2 * G)})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    s.request_done(1, now=2)
    s.request_arrived(2, "b", now=3)
    s.engine_state("b", S.STARTING, now=3)
    s.engine_state("b", S.BACKOFF, oom("b"), now=4)
    s.request_done(2, now=4.5)  # b's client gave up
    s.engine_state("a", S.STOPPED, now=5)
    s.engine_state("b", S.STOPPED, now=5)
    s.request_arrived(3, "a", now=6)
    up(s, "a", 7)
    s.request_done(3, now=8)
    fx.take()
    s.request_arrived(4, "b", now=9)
    assert acts(fx) == [("start", "b")]  # 6 + 2 fit in 10 by the figures: no wait


def test_a_preloaded_victim_does_not_keep_the_retry_waiting() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": ModelTerms(need=4 * G), "b": ModelTerms(need=4 * G)})
    s.load("a", now=0)
    up(s, "a", 1)
    s.request_arrived(1, "b", now=2)
    s.engine_state("b", S.STARTING, now=2)
    s.engine_state("b", S.BACKOFF, oom("b"), now=3)
    assert acts(fx)[-1] == ("stop", "a", "b")
    s.engine_state("b", S.STOPPED, now=4)
    s.engine_state("a", S.STOPPED, now=5)
    assert ("start", "b") in acts(fx)  # the room freed is b's, before a's keep
    up(s, "b", 6)
    assert ("dispatch", 1, "b") in acts(fx)
