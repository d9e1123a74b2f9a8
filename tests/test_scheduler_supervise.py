"""Supervision in the pure scheduler (issue 10): backoff and failed engines, the
restart policy of kept models, explicit loads that cannot be held together,
adopted engines and config reloads. Synchronous, with a recording fake."""

from __future__ import annotations

import pytest

from swapyard.config import SchedulerSpec
from swapyard.errors import (
    EngineBackoff,
    EngineCrashed,
    EngineExitedEarly,
    EngineFailed,
    EngineStopped,
)
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler
from swapyard.testing import RecordingEffects

S = EngineState
GIB = 2**30


@pytest.fixture
def fx() -> RecordingEffects:
    return RecordingEffects()


def make(fx: RecordingEffects, **terms: ModelTerms) -> Scheduler:
    """Two models of 6 GiB on one 8 GiB device (one at a time) unless said."""
    models = terms or {"a": ModelTerms(need=6 * GIB), "b": ModelTerms(need=6 * GIB)}
    return Scheduler(models, fx, budget={"gpu0": 8 * GIB}, config=SchedulerSpec())


def ready(s: Scheduler, model: str, now: float = 0.0) -> None:
    s.engine_state(model, S.STARTING, now=now)
    s.engine_state(model, S.READY, now=now)


def backoff(model: str, retry: float = 2.0) -> EngineBackoff:
    return EngineBackoff(model, EngineExitedEarly(model, "exited with code 3"), retry)


def rejected(calls: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return [c for c in calls if c[0] == "reject"]


def test_backoff_rejects_the_queue_and_new_requests_with_the_time_left(
    fx: RecordingEffects,
) -> None:
    """A model in backoff answers at once (engine_backoff, Retry-After = time left)
    instead of spawning again; the requests that waited for the failed start get
    its error."""
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    s.engine_state("a", S.STARTING, now=0.0)
    s.request_arrived(2, "a", now=0.1)
    fx.take()
    s.engine_state("a", S.BACKOFF, backoff("a", 2.0), now=0.5)
    assert rejected(fx.take()) == [
        ("reject", 1, "EngineExitedEarly"), ("reject", 2, "EngineExitedEarly"),
    ]  # fmt: skip
    s.request_arrived(3, "a", now=1.5)
    err = fx.errors[3]
    assert isinstance(err, EngineBackoff) and err.retry_after == pytest.approx(1.0)
    assert fx.take() == [("reject", 3, "EngineBackoff")]  # and no start while it backs off


def test_backoff_over_a_request_starts_it_again(fx: RecordingEffects) -> None:
    """Once its backoff is over the engine reports stopped; the next request starts it."""
    s = make(fx)
    s.engine_state("a", S.BACKOFF, backoff("a"), now=0.0)
    s.engine_state("a", S.STOPPED, now=2.0)
    fx.take()
    s.request_arrived(1, "a", now=2.1)
    assert fx.take() == [("start", "a")]


def test_failed_model_refuses_requests_until_it_is_loaded_on_purpose(
    fx: RecordingEffects,
) -> None:
    """After its start limit a model is refused (engine_failed) until an explicit
    load, which clears its failures (reset) and then starts it."""
    s = make(fx)
    cause = EngineExitedEarly("a", "exited with code 3")
    s.engine_state("a", S.FAILED, EngineFailed("a", 5, 300.0, cause), now=0.0)
    fx.take()
    s.request_arrived(1, "a", now=1.0)
    assert fx.take() == [("reject", 1, "EngineFailed")]
    s.load("a", now=2.0)
    assert fx.take() == [("reset", "a")]
    s.engine_state("a", S.STOPPED, now=2.1)
    assert fx.take() == [("start", "a")]


def test_crash_of_a_kept_model_restarts_it_after_backoff(fx: RecordingEffects) -> None:
    """restart: on-failure (the default): a pinned model that crashed comes back
    once its backoff is over, without any request."""
    s = make(fx, a=ModelTerms(need=GIB, pinned=True))
    s.set_pinned("a", True, now=0.0)
    ready(s, "a")
    fx.take()
    s.engine_state("a", S.BACKOFF, EngineBackoff("a", EngineCrashed("a", "x"), 1.0), now=5.0)
    assert fx.take() == []
    s.engine_state("a", S.STOPPED, now=6.0)
    assert fx.take() == [("start", "a")]


def test_restart_never_leaves_a_crashed_kept_model_stopped(fx: RecordingEffects) -> None:
    s = make(fx, a=ModelTerms(need=GIB, restart="never"))
    s.load("a", now=0.0)
    ready(s, "a")
    fx.take()
    s.engine_state("a", S.BACKOFF, EngineBackoff("a", EngineCrashed("a", "x"), 1.0), now=5.0)
    s.engine_state("a", S.STOPPED, now=6.0)
    assert fx.take() == []


@pytest.mark.parametrize(("policy", "restarts"), [("on-failure", False), ("always", True)])
def test_kept_model_that_exits_cleanly_restarts_only_with_restart_always(
    fx: RecordingEffects, policy: str, restarts: bool
) -> None:
    """An engine that exits with 0 while serving is not a failure: no backoff; it
    is started again by itself only with restart: always."""
    s = make(fx, a=ModelTerms(need=GIB, restart=policy))
    s.load("a", now=0.0)
    ready(s, "a")
    fx.take()
    s.engine_state("a", S.STOPPED, now=5.0)  # not asked: it exited on its own
    assert fx.take() == ([("start", "a")] if restarts else [])


def test_second_explicit_load_evicts_the_first_which_stops_being_kept(
    fx: RecordingEffects,
) -> None:
    """`swapyard load a; swapyard load b` when they do not fit together: b evicts a
    once, and a is not brought back — never a swap loop (issue 10)."""
    s = make(fx)
    s.load("a", now=0.0)
    ready(s, "a")
    s.load("b", now=1.0)
    assert fx.take() == [("start", "a"), ("stop", "a", "b")]
    s.engine_state("a", S.STOPPED, now=1.5)
    assert fx.take() == [("start", "b")]
    ready(s, "b", now=2.0)
    for t in range(3, 30):
        s.tick(float(t))
    assert fx.take() == []  # a stays stopped; b stays loaded


def test_warming_and_waking_count_as_starting(fx: RecordingEffects) -> None:
    """The scheduler sees an engine's warm-up and wake as part of its start."""
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    s.engine_state("a", S.STARTING, now=0.0)
    s.engine_state("a", S.WARMING, now=0.5)
    assert s.state("a") is S.STARTING
    s.engine_state("a", S.READY, now=1.0)
    assert ("dispatch", 1, "a") in fx.take()


def test_adopted_model_is_ready_on_its_devices_and_serves_at_once(fx: RecordingEffects) -> None:
    """Its ready event (from the actor) comes after: no load time is made up for it."""
    s = make(fx)
    s.adopted("a", ("gpu0",), S.READY, now=100.0)
    s.engine_state("a", S.READY, now=100.0)
    assert s.load_time("a") is None
    assert s.used() == {"gpu0": 6 * GIB}
    s.request_arrived(1, "a", now=100.1)
    assert fx.take() == [("dispatch", 1, "a")]


def test_reconfigure_adds_models_and_changes_terms_at_once(fx: RecordingEffects) -> None:
    s = make(fx)
    terms = {"a": ModelTerms(need=2 * GIB), "b": ModelTerms(need=6 * GIB), "c": ModelTerms()}
    s.reconfigure(terms, SchedulerSpec(policy="fifo"), {"gpu0": 8 * GIB}, None, now=0.0)
    assert s.knows("c") and s.need("a") == 2 * GIB


def test_reconfigure_drains_a_removed_model_then_forgets_it(fx: RecordingEffects) -> None:
    """A removed model finishes its running request, is stopped, then forgotten;
    its queued requests are refused at once."""
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    ready(s, "a")
    s.request_arrived(2, "a", now=0.1)  # dispatched too (no max_concurrent)
    s.request_arrived(3, "b", now=0.2)
    fx.take()
    s.reconfigure({"b": ModelTerms(need=6 * GIB)}, SchedulerSpec(), {"gpu0": 8 * GIB}, None, 1.0)
    assert fx.take() == []  # two answers still running on a: nothing is cut
    s.request_done(1, now=2.0)
    s.request_done(2, now=2.1)
    assert [c for c in fx.take() if c[0] != "wake"] == [("stop", "a", None)]
    s.engine_state("a", S.STOPPED, now=2.5)
    assert not s.knows("a")
    assert fx.take() == [("start", "b")]


def test_reconfigure_refuses_requests_queued_for_a_removed_model(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "b", now=0.0)
    s.engine_state("b", S.STARTING, now=0.0)
    s.request_arrived(2, "a", now=0.1)
    fx.take()
    s.reconfigure({"b": ModelTerms(need=6 * GIB)}, SchedulerSpec(), {"gpu0": 8 * GIB}, None, 1.0)
    assert fx.take() == [("reject", 2, "EngineStopped")]
    assert isinstance(fx.errors[2], EngineStopped)
    assert not s.knows("a")  # it was stopped: forgotten at once


def test_restart_drains_then_starts_again_for_the_waiting_requests(fx: RecordingEffects) -> None:
    """A changed model: no new dispatch, its running answer finishes, it is stopped,
    and the requests that waited start it again (with the new spec)."""
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    ready(s, "a")
    fx.take()
    s.restart("a", now=1.0)
    s.request_arrived(2, "a", now=1.1)
    assert fx.take() == []  # held: a is draining
    s.request_done(1, now=2.0)
    assert fx.take() == [("stop", "a", None)]
    s.engine_state("a", S.STOPPED, now=2.5)
    assert fx.take() == [("start", "a")]


def test_request_for_a_model_removed_by_a_reload_is_refused_not_queued(
    fx: RecordingEffects,
) -> None:
    """While a removed model drains, and after it is forgotten, a request that still
    names it (checked against the old config) is refused at once."""
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    ready(s, "a")
    fx.take()
    s.reconfigure({"b": ModelTerms(need=6 * GIB)}, SchedulerSpec(), {"gpu0": 8 * GIB}, None, 1.0)
    s.request_arrived(2, "a", now=1.1)
    assert fx.take() == [("reject", 2, "EngineStopped")]
    s.request_done(1, now=2.0)
    s.engine_state("a", S.STOPPED, now=2.5)
    s.request_arrived(3, "a", now=3.0)  # forgotten: no KeyError, a refusal
    assert ("reject", 3, "EngineStopped") in fx.take()


def test_removed_model_that_crashes_while_draining_is_forgotten(fx: RecordingEffects) -> None:
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    ready(s, "a")
    s.reconfigure({"b": ModelTerms(need=6 * GIB)}, SchedulerSpec(), {"gpu0": 8 * GIB}, None, 1.0)
    s.engine_state("a", S.BACKOFF, EngineBackoff("a", EngineCrashed("a", "x"), 1.0), now=2.0)
    assert not s.knows("a")


def test_model_added_back_before_it_stopped_is_no_longer_retiring(fx: RecordingEffects) -> None:
    """Removed by one reload, added back by the next while it still drains: it goes
    on as a model of the config (restarted once drained), not forgotten."""
    s = make(fx)
    s.request_arrived(1, "a", now=0.0)
    ready(s, "a")
    both = {"a": ModelTerms(need=6 * GIB), "b": ModelTerms(need=6 * GIB)}
    s.reconfigure({"b": both["b"]}, SchedulerSpec(), {"gpu0": 8 * GIB}, None, 1.0)
    s.reconfigure(both, SchedulerSpec(), {"gpu0": 8 * GIB}, None, 2.0)
    s.restart("a", now=2.0)
    s.request_done(1, now=3.0)
    s.engine_state("a", S.STOPPED, now=3.5)
    assert s.knows("a")
    fx.take()
    s.request_arrived(2, "a", now=4.0)
    assert fx.take() == [("start", "a")]


def test_model_changed_during_its_sleep_call_is_stopped_once_asleep(fx: RecordingEffects) -> None:
    """A reload changes a model while its fast swap out runs: once asleep it is
    stopped for good, so its next start uses the new spec (not a wake of the old)."""
    terms = {"a": ModelTerms(need=6 * GIB, sleep_need=GIB), "b": ModelTerms(need=6 * GIB)}
    s = make(fx, **terms)
    s.request_arrived(1, "a", now=0.0)
    ready(s, "a")
    s.request_done(1, now=0.5)
    s.request_arrived(2, "b", now=1.0)
    assert ("sleep", "a", "b") in fx.take()
    s.restart("a", now=1.1)
    s.engine_state("a", S.SLEEPING, now=1.5)
    assert ("stop", "a", None) in fx.take()
