"""Where a model fits, and what to evict when it does not: pure functions of the
memory budget and the resident set (no I/O, no clock of their own).

A model needs ``need`` bytes on each of ``count`` devices (tensor parallelism uses
several). A device's budget is its memory less its reserve. Every resident model
(starting, ready or stopping) holds its need on the devices it was placed on.

``plan`` answers one of:

- ``Fit``: room now on these devices; start it.
- ``Evict``: room once these idle models are stopped (the smallest set; least
  recently used first, lower ``priority`` first among equals).
- ``Wait``: room will come (a stop is under way, or busy, pinned-for-now or
  just-loaded models will become evictable); decide again later.
- ``Never``: not even an empty machine (less pinned models) has room.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

MAX_EXACT_SEARCH = 14  # evictable candidates; beyond this, LRU greedy


@dataclass(frozen=True, slots=True)
class Resident:
    """A model that holds memory now."""

    model: str
    need: int
    devices: tuple[str, ...]
    evictable: bool  # idle, not pinned, past its minimum residency
    pinned: bool = False
    stopping: bool = False
    last_used: float = 0.0
    priority: int = 0
    residual: int = 0  # still held once evicted or stopped (an engine put to sleep)
    load_cost: float = 0.0  # seconds to load it again: counts as that much more recent use


@dataclass(frozen=True, slots=True)
class Fit:
    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Evict:
    devices: tuple[str, ...]
    victims: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class Never:
    reason: str


Plan = Fit | Evict | Wait | Never


def free_memory(
    budget: Mapping[str, int], residents: Iterable[Resident], after_stops: bool = False
) -> dict[str, int]:
    """Budget left on each device after what the residents hold (``after_stops``:
    once the stops under way are done, when stopping models hold their residual)."""
    free = dict(budget)
    for r in residents:
        held = r.residual if after_stops and r.stopping else r.need
        for d in r.devices:
            if d in free:
                free[d] -= held
    return free


def plan(need: int, count: int, budget: Mapping[str, int], residents: Sequence[Resident]) -> Plan:
    """Decide where a model needing ``need`` bytes on ``count`` devices goes."""
    if count > len(budget):
        return Never(f"needs {count} devices, the machine has {len(budget)}")
    free = free_memory(budget, residents)
    sets = [tuple(sorted(c)) for c in itertools.combinations(sorted(budget), count)]
    # 1. room now: the device set with the least left over (best fit keeps big holes).
    fitting = [s for s in sets if all(free[d] >= need for d in s)]
    if fitting:
        return Fit(min(fitting, key=lambda s: (sum(free[d] for d in s), s)))
    pinned = free_memory(budget, [r for r in residents if r.pinned])
    if not any(all(pinned[d] >= need for d in s) for s in sets):
        best = max(min(pinned[d] for d in s) for s in sets)
        return Never(
            f"needs {fmt_bytes(need)} on {count} device{'s' if count > 1 else ''}; at most "
            f"{fmt_bytes(best)} can ever be free there (budget {_budget_text(budget)}"
            + (", pinned models hold the rest)" if any(r.pinned for r in residents) else ")")
        )
    # 2. room once a stop under way finishes: wait for it rather than evict more.
    stopping = [r for r in residents if r.stopping]
    after_stops = free_memory(budget, residents, after_stops=True)
    if stopping and any(all(after_stops[d] >= need for d in s) for s in sets):
        return Wait("waiting for " + ", ".join(r.model for r in stopping) + " to stop")
    # 3. the smallest set of evictable models that makes room on some device set.
    best_plan: Evict | None = None
    best_key: tuple[int, float] | None = None
    for s in sets:
        victims = _victims_for(need, s, after_stops, residents)
        if victims is None:
            continue
        key = (len(victims), max((r.last_used + r.load_cost for r in victims), default=0.0))
        if best_key is None or key < best_key:
            best_key = key
            best_plan = Evict(s, tuple(r.model for r in victims))
    if best_plan is not None:
        return best_plan
    return Wait("waiting for busy models to become idle")


def _victims_for(
    need: int, devices: tuple[str, ...], free: Mapping[str, int], residents: Sequence[Resident]
) -> list[Resident] | None:
    """The smallest set of evictable residents that frees ``need`` on every device
    of ``devices``; among sets of that size, the least recently used, a model's
    load time counting as that much more recent use (one that takes a minute to
    load again is worth more than one that takes a second), then lowest priority.
    None if even all of them are not enough."""
    order = sorted(
        (r for r in residents if r.evictable and not r.stopping and set(r.devices) & set(devices)),
        key=lambda r: (r.last_used + r.load_cost, r.priority, r.model),
    )

    def enough(victims: Sequence[Resident]) -> bool:
        return all(
            free[d] + sum(v.need - v.residual for v in victims if d in v.devices) >= need
            for d in devices
        )

    if not enough(order):
        return None
    if len(order) > MAX_EXACT_SEARCH:  # pragma: no cover - greedy on very large sets
        chosen: list[Resident] = []
        for r in order:
            if enough(chosen):
                break
            chosen.append(r)
        return chosen
    for k in range(len(order) + 1):
        sets = [c for c in itertools.combinations(order, k) if enough(c)]
        if sets:
            best = min(
                sets,
                key=lambda c: (max((r.last_used + r.load_cost for r in c), default=0.0),
                               sum(r.priority for r in c), [r.model for r in c]),
            )  # fmt: skip
            return list(best)
    return None  # pragma: no cover - enough(order) guarantees a set above


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _budget_text(budget: Mapping[str, int]) -> str:
    return ", ".join(f"{d}: {fmt_bytes(b)}" for d, b in sorted(budget.items()))
