"""Placement and eviction as pure functions of (need, budget, resident set)."""

from __future__ import annotations

from dataclasses import replace

from swapyard.scheduler.placement import Evict, Fit, Never, Resident, Wait, fmt_bytes, plan

G = 2**30


def idle(model: str, need: int, *devices: str, used: float = 0.0, prio: int = 0) -> Resident:
    return Resident(model, need, devices or ("g0",), True, last_used=used, priority=prio)


def busy(model: str, need: int, *devices: str) -> Resident:
    return Resident(model, need, devices or ("g0",), False)


def test_fits_beside_residents_without_evicting() -> None:
    assert plan(8 * G, 1, {"g0": 24 * G}, [idle("a", 10 * G)]) == Fit(("g0",))


def test_best_fit_device_keeps_the_bigger_hole() -> None:
    budget = {"g0": 24 * G, "g1": 24 * G}
    assert plan(4 * G, 1, budget, [busy("a", 16 * G, "g1")]) == Fit(("g1",))


def test_evicts_least_recently_used_first() -> None:
    res = [idle("old", 10 * G, used=1), idle("new", 10 * G, used=5)]
    assert plan(10 * G, 1, {"g0": 24 * G}, res) == Evict(("g0",), ("old",))


def test_priority_breaks_ties_in_recency() -> None:
    res = [idle("keep", 10 * G, used=3, prio=5), idle("drop", 10 * G, used=3, prio=1)]
    assert plan(10 * G, 1, {"g0": 24 * G}, res) == Evict(("g0",), ("drop",))


def test_never_evicts_a_busy_or_pinned_model() -> None:
    res = [busy("b", 12 * G), Resident("p", 10 * G, ("g0",), False, pinned=True)]
    p = plan(10 * G, 1, {"g0": 24 * G}, res)
    assert isinstance(p, Wait)


def test_smallest_victim_set_beats_lru_order() -> None:
    """One big idle model frees enough alone; two older small ones would be needed."""
    res = [idle("s1", 4 * G, used=1), idle("s2", 4 * G, used=2), idle("big", 12 * G, used=3)]
    assert plan(12 * G, 1, {"g0": 24 * G}, res) == Evict(("g0",), ("big",))


def test_older_model_that_frees_too_little_is_spared() -> None:
    """LRU alone would evict a then b; b alone is enough, so a stays."""
    res = [idle("a", 2 * G, used=1), idle("b", 10 * G, used=2)]
    p = plan(12 * G, 1, {"g0": 20 * G}, res)
    assert p == Evict(("g0",), ("b",))


def test_waits_for_a_stop_under_way_instead_of_evicting_more() -> None:
    res = [Resident("going", 12 * G, ("g0",), False, stopping=True), idle("a", 8 * G)]
    assert isinstance(plan(12 * G, 1, {"g0": 24 * G}, res), Wait)


def test_multi_device_model_gets_a_set_with_room_on_each() -> None:
    budget = {"g0": 24 * G, "g1": 24 * G, "g2": 24 * G}
    res = [busy("a", 20 * G, "g1")]
    assert plan(16 * G, 2, budget, res) == Fit(("g0", "g2"))


def test_multi_device_eviction_frees_every_device_of_the_set() -> None:
    budget = {"g0": 24 * G, "g1": 24 * G}
    res = [idle("tp", 20 * G, "g0", "g1", used=1), idle("x", 4 * G, "g0", used=2)]
    assert plan(16 * G, 2, budget, res) == Evict(("g0", "g1"), ("tp",))


def test_impossible_fit_says_how_much_is_needed_and_exists() -> None:
    p = plan(30 * G, 1, {"g0": 24 * G}, [])
    assert isinstance(p, Never)
    assert "needs 30.0 GiB" in p.reason and "24.0 GiB" in p.reason
    assert isinstance(plan(1 * G, 3, {"g0": 24 * G}, []), Never)


def test_pinned_models_count_against_what_can_ever_be_free() -> None:
    res = [Resident("p", 20 * G, ("g0",), False, pinned=True)]
    p = plan(8 * G, 1, {"g0": 24 * G}, res)
    assert isinstance(p, Never) and "pinned" in p.reason


def test_fmt_bytes() -> None:
    assert [fmt_bytes(n) for n in (512, 2048, 3 * 2**20, 5 * G)] == [
        "512 B", "2.0 KiB", "3.0 MiB", "5.0 GiB",
    ]  # fmt: skip


def test_eviction_picks_the_device_whose_victim_was_used_longest_ago() -> None:
    budget = {"g0": 24 * G, "g1": 24 * G}
    res = [idle("a", 20 * G, "g0", used=1), idle("b", 20 * G, "g1", used=5)]
    assert plan(16 * G, 1, budget, res) == Evict(("g0",), ("a",))
    res = [idle("a", 20 * G, "g0", used=9), idle("b", 20 * G, "g1", used=5)]
    assert plan(16 * G, 1, budget, res) == Evict(("g1",), ("b",))


def test_a_model_slow_to_load_again_counts_as_used_more_recently() -> None:
    """Issue 13: evicting a model that takes 20 s to load again costs more than one
    that takes 1 s, though it was used a little earlier."""
    slow = Resident("slow", 10, ("0",), True, last_used=10.0, load_cost=20.0)
    fast = Resident("fast", 10, ("0",), True, last_used=15.0, load_cost=1.0)
    assert plan(10, 1, {"0": 20}, [slow, fast]) == Evict(("0",), ("fast",))
    assert plan(10, 1, {"0": 20}, [replace(slow, load_cost=0.0), fast]) == Evict(("0",), ("slow",))
