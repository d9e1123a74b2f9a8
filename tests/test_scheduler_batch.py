"""The memory-aware scheduler and the batch (anti-thrash) policy, driven synchronously
with a recording fake and an explicit clock: no loop, no processes, no sleeps."""

from __future__ import annotations

from swapyard.config import SchedulerSpec
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler
from swapyard.testing import RecordingEffects

S = EngineState
G = 2**30


def sched(
    fx: RecordingEffects,
    needs: dict[str, int | None],
    budget: dict[str, int] | None = None,
    **cfg: object,
) -> Scheduler:
    terms = {m: ModelTerms(need=n) for m, n in needs.items()}
    return Scheduler(
        terms,
        fx,
        budget=budget or {"g0": 24 * G},
        config=SchedulerSpec(**cfg),  # type: ignore[arg-type]
    )


def up(s: Scheduler, model: str, now: float = 0.0) -> None:
    """Starting since the last event, ready at ``now``."""
    s.engine_state(model, S.STARTING)
    s.engine_state(model, S.READY, now=now)


def acts(calls: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """The decisions, without the timer requests."""
    return [c for c in calls if c[0] != "wake"]


def starts(calls: list[tuple[object, ...]]) -> list[object]:
    return [c[1] for c in calls if c[0] == "start"]


def test_models_that_fit_together_start_without_evicting() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 10 * G, "b": 10 * G})
    s.request_arrived(1, "a", now=0)
    s.request_arrived(2, "b", now=0)
    assert fx.take() == [("start", "a"), ("start", "b")]


def test_third_model_evicts_the_least_recently_used_idle_one() -> None:
    """Three models where two fit."""
    fx = RecordingEffects()
    s = sched(fx, {"a": 10 * G, "b": 10 * G, "c": 10 * G})
    s.request_arrived(1, "a", now=0)
    s.request_arrived(2, "b", now=0)
    up(s, "a", 1)
    up(s, "b", 1)
    s.request_done(1, now=2)
    s.request_done(2, now=3)
    fx.take()
    s.request_arrived(3, "c", now=4)
    assert acts(fx.take()) == [("stop", "a", "c")]
    s.engine_state("a", S.STOPPED, now=5)
    assert fx.take() == [("start", "c")]


def test_busy_model_is_never_a_victim() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 10 * G, "b": 10 * G, "c": 10 * G})
    for rid, m in ((1, "a"), (2, "b")):
        s.request_arrived(rid, m, now=0)
        up(s, m, 1)
    fx.take()
    s.request_arrived(3, "c", now=2)
    assert acts(fx.take()) == []  # both busy: c waits
    s.request_done(2, now=3)
    assert fx.take() == [("stop", "b", "c")]


def test_pinned_model_is_never_evicted_nor_idle_stopped() -> None:
    fx = RecordingEffects()
    terms = {"p": ModelTerms(need=10 * G, pinned=True, ttl=5), "a": ModelTerms(need=14 * G),
             "b": ModelTerms(need=14 * G)}  # fmt: skip
    s = Scheduler(terms, fx, budget={"g0": 24 * G})
    s.load("p", now=0)
    up(s, "p", 0)
    s.request_arrived(1, "a", now=1)
    up(s, "a", 1)
    s.request_done(1, now=2)
    fx.take()
    s.request_arrived(2, "b", now=3)
    assert acts(fx.take()) == [("stop", "a", "b")]
    s.idle_timeout("p", 0, now=100)
    assert ("stop", "p", None) not in fx.take()


def test_alternating_requests_are_batched_by_model() -> None:
    """A B A C A with room for one model becomes A A A B C: two swaps, not four.
    a is hot (several requests just now), so b waits for it to cool down."""
    fx = RecordingEffects()
    s = sched(fx, {m: 20 * G for m in "abc"}, min_residency=5.0)
    s.request_arrived(0, "a", now=0)
    up(s, "a", 0)  # a serves request 0 while the rest arrive
    for rid, m in enumerate("babca", start=1):
        s.request_arrived(rid, m, now=0.1 * rid)
    assert [c[1] for c in fx.take() if c[0] == "dispatch"] == [0, 2, 5]  # all of a's now
    for rid in (0, 2, 5):
        s.request_done(rid, now=1)
    assert acts(fx.take()) == []  # a is idle but hot: nothing is evicted yet
    s.tick(5.3)  # a's second-to-last request started at 0.2 + 5 s: it has cooled down
    assert acts(fx.take()) == [("stop", "a", "b")]
    s.engine_state("a", S.STOPPED, now=5.4)
    up(s, "b", 6)
    s.request_done(1, now=6.5)
    s.request_done(3, now=6.5)
    s.tick(11.1)
    s.engine_state("b", S.STOPPED, now=11.2)
    up(s, "c", 12)
    calls = fx.take()
    assert [c for c in calls if c[0] in ("start", "stop")] == [
        ("start", "b"), ("stop", "b", "c"), ("start", "c"),
    ]  # fmt: skip
    assert [c[1] for c in calls if c[0] == "dispatch"] == [1, 3, 4]


def test_one_person_alternating_models_swaps_at_once() -> None:
    """One request at a time never makes a model hot: A, B, A swaps immediately."""
    fx = RecordingEffects()
    s = sched(fx, {m: 20 * G for m in "ab"}, min_residency=5.0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_done(1, now=1)
    fx.take()
    s.request_arrived(2, "b", now=2)
    assert acts(fx.take()) == [("stop", "a", "b")]


def test_hot_model_is_evicted_for_an_overdue_request() -> None:
    fx = RecordingEffects()
    s = sched(fx, {m: 20 * G for m in "ab"}, min_residency=60.0, max_wait=10.0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_arrived(2, "a", now=0.5)
    s.request_done(1, now=1)
    s.request_done(2, now=1)
    fx.take()
    s.request_arrived(3, "b", now=2)
    assert acts(fx.take()) == []
    s.tick(12.0)  # b has waited 10 s: a's heat no longer protects it
    assert acts(fx.take()) == [("stop", "a", "b")]


def test_fifo_baseline_swaps_on_every_change_of_model() -> None:
    fx = RecordingEffects()
    s = sched(fx, {m: 20 * G for m in "ab"}, policy="fifo")
    s.request_arrived(0, "a", now=0)
    up(s, "a", 0)
    for rid, m in enumerate("bab", start=1):
        s.request_arrived(rid, m, now=0.1 * rid)
    assert [c[1] for c in fx.take() if c[0] == "dispatch"] == [0]
    s.request_done(0, now=1)
    assert fx.take() == [("stop", "a", "b")]  # request 2 (a) waits behind 1 (b)


def test_max_wait_bounds_how_long_a_request_waits_behind_a_busy_model() -> None:
    """A steady stream for a would starve b; after max_wait, new a requests are held
    so a drains and b is loaded."""
    fx = RecordingEffects()
    s = sched(fx, {"a": 20 * G, "b": 20 * G}, max_wait=10.0, min_residency=1.0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_arrived(2, "b", now=1)
    rid = 3
    for t in range(2, 10):  # a keeps getting requests, each overlapping the last
        s.request_arrived(rid, "a", now=t)
        s.request_done(rid - 1 if rid > 3 else 1, now=t + 0.5)
        rid += 1
    assert not any(c == ("stop", "a", "b") for c in fx.take())
    s.request_arrived(rid, "a", now=11.5)  # b is now overdue: this one is held
    assert ("dispatch", rid, "a") not in fx.take()
    s.request_done(rid - 1, now=12)  # the last running a request ends
    assert fx.take()[0] == ("stop", "a", "b")
    s.engine_state("a", S.STOPPED, now=12.5)
    up(s, "b", 13)
    assert ("dispatch", 2, "b") in fx.take()


def test_young_model_keeps_serving_its_queue_despite_an_overdue_request() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 20 * G, "b": 20 * G}, max_wait=5.0, min_residency=30.0)
    s.request_arrived(1, "b", now=0)
    s.request_arrived(2, "a", now=0)  # both wait; b loads first (older)
    up(s, "b", 1)
    s.request_done(1, now=2)
    s.engine_state("b", S.STOPPED, now=2)
    up(s, "a", 3)
    fx.take()
    s.request_arrived(3, "b", now=4)
    s.request_arrived(4, "a", now=10)  # b (3) is overdue, but a was loaded 7 s ago
    assert ("dispatch", 4, "a") in fx.take()


def test_wake_is_armed_for_the_next_max_wait_deadline() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 20 * G, "b": 20 * G}, max_wait=10.0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    fx.take()
    s.request_arrived(2, "b", now=3)
    assert ("wake", 13.0) in fx.take()
    s.tick(13.0)  # overdue now: a is busy, so still nothing to evict
    assert [c for c in fx.take() if c[0] in ("stop", "start")] == []


def test_queue_bound_rejects_with_queue_full() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 20 * G}, max_queue=2)
    for rid in (1, 2, 3):
        s.request_arrived(rid, "a", now=0)
    assert ("reject", 3, "QueueFull") in fx.take()
    assert s.queued() == 2
    err = s.queue_full()
    assert err is not None and err.status == 429 and "limit is 2" in err.message


def test_model_that_can_never_fit_fails_at_once() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"huge": 40 * G})
    s.request_arrived(1, "huge", now=0)
    assert fx.take() == [("reject", 1, "InsufficientMemory")]


def test_per_model_concurrency_limit_queues_the_rest() -> None:
    fx = RecordingEffects()
    s = Scheduler({"a": ModelTerms(need=G, max_concurrent=2)}, fx, budget={"g0": 24 * G})
    for rid in (1, 2, 3):
        s.request_arrived(rid, "a", now=0)
    up(s, "a", 1)
    assert [c[1] for c in fx.take() if c[0] == "dispatch"] == [1, 2]
    s.request_done(1, now=2)
    assert ("dispatch", 3, "a") in fx.take()


def test_multi_device_model_is_placed_on_devices_with_room() -> None:
    fx = RecordingEffects()
    budget = {"0": 24 * G, "1": 24 * G, "2": 24 * G}
    terms = {"small": ModelTerms(need=20 * G), "tp": ModelTerms(need=16 * G, count=2)}
    s = Scheduler(terms, fx, budget=budget)
    s.request_arrived(1, "small", now=0)
    s.request_arrived(2, "tp", now=0)
    assert starts(fx.take()) == ["small", "tp"]
    assert fx.placements["small"] == ("0",) and fx.placements["tp"] == ("1", "2")
    assert s.devices("tp") == ("1", "2") and s.need("tp") == 16 * G and not s.pinned("tp")


def test_unknown_memory_need_runs_alone_until_learned() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": None, "b": 4 * G})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_arrived(2, "b", now=1)
    assert starts(fx.take()) == ["a"]  # b waits: a may use the whole device
    s.learned_need("a", 6 * G, now=2)
    assert starts(fx.take()) == ["b"]


def test_preloaded_model_is_not_abandoned_without_requests() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 4 * G})
    s.load("a", now=0)
    assert fx.take() == [("start", "a")]
    s.engine_state("a", S.STARTING, now=0)
    assert fx.take() == []


def test_unload_drains_running_requests_then_stops() -> None:
    """A running answer is never cut: new requests wait, the model stops when idle,
    and a request that waited loads it again."""
    fx = RecordingEffects()
    s = sched(fx, {"a": 4 * G})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    fx.take()
    s.unload("a", now=1)
    s.request_arrived(2, "a", now=1)
    assert acts(fx.take()) == []  # 1 still runs; 2 is held
    s.request_done(1, now=2)
    assert acts(fx.take()) == [("stop", "a", None)]
    s.engine_state("a", S.STOPPED, now=3)
    assert acts(fx.take()) == [("start", "a")]


def test_pin_loads_now_and_unpin_makes_it_evictable_again() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"p": 20 * G, "x": 20 * G})
    s.set_pinned("p", True, now=0)
    assert fx.take() == [("start", "p")]
    up(s, "p", 0)
    s.request_arrived(1, "x", now=1)
    assert fx.take() == [("reject", 1, "InsufficientMemory")]  # p never leaves
    s.set_pinned("p", False, now=2)
    s.request_arrived(2, "x", now=2)
    assert acts(fx.take()) == [("stop", "p", "x")]
    assert s.used() == {"g0": 20 * G} and s.budget() == {"g0": 24 * G}


def test_hot_model_gives_way_when_the_waiting_queue_outgrows_its_demand() -> None:
    fx = RecordingEffects()
    # The hold's probe (issue 13) is its own test: here others are taken to go on asking.
    s = sched(fx, {m: 20 * G for m in "ab"}, min_residency=60.0, max_wait=100.0, hold_probe=60.0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_arrived(2, "a", now=0.5)
    s.request_done(1, now=1)
    s.request_done(2, now=1)  # a: 2 recent requests
    fx.take()
    s.request_arrived(3, "b", now=2)
    assert acts(fx.take()) == []  # 1 waiting for b, a's demand is 2
    s.request_arrived(4, "b", now=3)
    assert acts(fx.take()) == []  # 2 waiting, a's demand is 2: a tie holds (issue 13)
    s.request_arrived(5, "b", now=3.5)
    assert acts(fx.take()) == [("stop", "a", "b")]  # 3 waiting: a no longer outweighs b


def test_unload_of_a_stopped_model_changes_nothing() -> None:
    fx = RecordingEffects()
    s = sched(fx, {"a": 4 * G})
    s.unload("a", now=0)
    assert fx.take() == [] and s.state("a") is S.STOPPED


def test_swaps_whose_evictions_do_not_overlap_run_in_parallel() -> None:
    fx = RecordingEffects()
    budget = {"0": 24 * G, "1": 24 * G}
    s = Scheduler({m: ModelTerms(need=20 * G) for m in "abcd"}, fx, budget=budget)
    for rid, m in ((1, "a"), (2, "b")):
        s.request_arrived(rid, m, now=0)
        up(s, m, 0)
        s.request_done(rid, now=1)
    fx.take()
    s.request_arrived(3, "c", now=2)
    s.request_arrived(4, "d", now=2)
    assert sorted(c for c in acts(fx.take()) if c[0] == "stop") == [
        ("stop", "a", "c"), ("stop", "b", "d"),
    ]  # fmt: skip
    s.engine_state("b", S.STOPPED, now=3)  # d's room is free first: d does not wait for c
    assert fx.take()[0] == ("start", "d")


def test_room_freed_for_a_request_that_left_goes_to_the_next_one() -> None:
    fx = RecordingEffects()
    s = Scheduler({m: ModelTerms(need=20 * G) for m in "acd"}, fx, budget={"0": 24 * G})
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_done(1, now=1)
    s.request_arrived(2, "c", now=2)
    assert ("stop", "a", "c") in fx.take()
    s.request_done(2, now=2.5)  # c's client goes away
    s.engine_state("a", S.STOPPED, now=3)
    s.request_arrived(3, "d", now=4)
    assert ("start", "d") in fx.take()


def test_hot_model_that_reloads_in_a_blink_is_held_only_until_the_wait_pays() -> None:
    """Rent or buy: a hot model is kept only until the requests held back for the
    other one have waited as long as the swap costs (``swap_factor`` x both loads);
    two waiting requests pay it twice as fast as one."""
    for waiting, due in ((1, 3.8), (2, 2.9)):
        fx = RecordingEffects()
        s = sched(
            fx, {m: 20 * G for m in "ab"}, min_residency=60.0, assumed_load=0.3, swap_factor=3.0,
            hold_probe=60.0,  # the debt alone decides here (the probe has its own test)
        )  # fmt: skip
        s.request_arrived(1, "a", now=0)
        s.engine_state("a", S.STARTING, now=0)
        s.engine_state("a", S.READY, now=0.3)  # measured: 0.3 s; b's is assumed 0.3 s
        for rid in (10, 11):  # a is hot: three requests in a row
            s.request_arrived(rid, "a", now=0.5)
        for rid in (1, 10, 11):
            s.request_done(rid, now=1)
        fx.take()
        for rid in range(3, 3 + waiting):
            s.request_arrived(rid, "b", now=2)  # a is hot: b waits for now
        calls = fx.take()
        assert acts(calls) == []
        assert ("wake", due) in calls  # 3 x (0.3 + 0.3) s of waiting, from t=2
        s.tick(due - 0.01)
        assert acts(fx.take()) == []
        s.tick(due)
        assert acts(fx.take()) == [("stop", "a", "b")]


def test_model_whose_burst_aged_out_asks_for_no_wake_up() -> None:
    """Hot is read from the clock, not remembered: once a model's recent requests
    are older than ``min_residency``, no wake-up is armed on its account."""
    fx = RecordingEffects()
    s = sched(fx, {m: 20 * G for m in "ab"}, min_residency=5.0, max_wait=1.0)
    s.request_arrived(1, "a", now=0)
    up(s, "a", 0)
    s.request_arrived(2, "a", now=0.5)
    s.request_done(2, now=1)  # a: hot (two requests), still busy with 1
    s.request_arrived(3, "b", now=2)
    s.tick(3)  # b is overdue; a is hot until 5
    fx.take()
    s.tick(5)  # a cooled down: nothing left to wait for
    assert fx.take() == []
    s.request_done(1, now=6)
    assert acts(fx.take()) == [("stop", "a", "b")]


def test_idle_since_is_when_a_ready_model_last_finished_a_request() -> None:
    """Only a ready model with nothing running is idle, since its last answer."""
    fx = RecordingEffects()
    s = sched(fx, {"a": 20 * G})
    assert s.idle_since("a") is None  # stopped
    s.request_arrived(1, "a", now=0)
    up(s, "a", 1)
    assert s.idle_since("a") is None  # busy
    s.request_done(1, now=4)
    assert s.idle_since("a") == 4
