"""The batch policy's issue-13 rules, synchronously: whose demand counts, how
long a hold lasts without new requests, and which idle model makes room."""

from __future__ import annotations

from swapyard.config import SchedulerSpec
from swapyard.process.state import EngineState
from swapyard.scheduler.core import ModelTerms, Scheduler
from swapyard.testing import RecordingEffects

S = EngineState
G = 2**30


def sched(fx: RecordingEffects, models: str = "ab", fit: int = 1, **cfg: float) -> Scheduler:
    terms = {m: ModelTerms(need=G) for m in models}
    return Scheduler(terms, fx, budget={"0": fit * G}, config=SchedulerSpec(**cfg))  # type: ignore[arg-type]


def acts(fx: RecordingEffects) -> list[tuple[object, ...]]:
    return [c for c in fx.take() if c[0] in ("start", "stop", "dispatch")]


def serve_a(s: Scheduler, client: str, n: int = 3) -> None:
    for rid in range(1, n + 1):
        s.request_arrived(rid, "a", now=rid * 0.1, client=client)
    s.engine_state("a", S.STARTING, now=0.5)
    s.engine_state("a", S.READY, now=1.0)
    for rid in range(1, n + 1):
        s.request_done(rid, now=2.0)


def test_a_clients_own_requests_do_not_hold_the_model_it_left() -> None:
    fx = RecordingEffects()
    s = sched(fx)
    serve_a(s, "alice")  # a chat, its title, its tags
    fx.take()
    s.request_arrived(10, "b", now=2.1, client="alice")
    assert acts(fx) == [("stop", "a", "b")]  # at once: nobody else asked for a


def test_another_clients_demand_holds_for_the_probe_then_lets_go() -> None:
    fx = RecordingEffects()
    s = sched(fx, hold_probe=1.0)
    serve_a(s, "alice")
    fx.take()
    s.request_arrived(10, "b", now=2.1, client="bob")
    assert acts(fx) == []  # alice may ask again: wait and see, 1 s
    s.tick(3.05)
    assert acts(fx) == []
    s.tick(3.15)  # a second since b came and a went idle, and alice asked nothing more
    assert acts(fx) == [("stop", "a", "b")]


def test_others_who_go_on_asking_keep_the_hold_until_the_wait_pays() -> None:
    fx = RecordingEffects()
    # The cost: 2 x (b's assumed 2 s + a's measured 0.5 s of loading) = 5 s of waiting.
    s = sched(fx, hold_probe=1.0, swap_factor=2.0, assumed_load=2.0)
    serve_a(s, "alice")
    fx.take()
    s.request_arrived(10, "b", now=2.1, client="bob")
    for rid, t in ((11, 2.8), (12, 3.6), (13, 4.4), (14, 5.2)):  # alice, every 0.8 s
        s.request_arrived(rid, "a", now=t, client="alice")
        s.request_done(rid, now=t + 0.3)
    assert ("stop", "a", "b") not in acts(fx)  # bob has waited 3.4 s of the 5
    s.tick(7.2)
    assert ("stop", "a", "b") in acts(fx)


def test_a_model_slow_to_load_is_kept_while_a_fast_one_can_make_room() -> None:
    """o took 20 s to load, s1 4 s: s2 waits for s1's answer rather than evict o."""
    fx = RecordingEffects()
    s = Scheduler({m: ModelTerms(need=G) for m in ("o", "s1", "s2")}, fx, budget={"0": 2 * G},
                  config=SchedulerSpec(hold_probe=1.0))  # fmt: skip
    s.request_arrived(1, "o", now=0, client="orch")
    s.engine_state("o", S.STARTING, now=0)
    s.engine_state("o", S.READY, now=20)
    s.request_done(1, now=23)
    s.request_arrived(2, "s1", now=23, client="sub-1")
    s.engine_state("s1", S.STARTING, now=23)
    s.engine_state("s1", S.READY, now=27)
    fx.take()
    s.request_arrived(3, "s2", now=27.1, client="sub-2")
    assert acts(fx) == []  # s1 is answering: s2 waits for it, o stays
    s.request_done(2, now=29)
    s.tick(30.1)  # s1 idle for the probe, nobody asked it again
    assert acts(fx) == [("stop", "s1", "s2")]
