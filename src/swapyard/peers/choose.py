"""Where a request goes: a pure decision over what each host last said (issue 15).

``plan`` orders the hosts that serve a model, best first; the request path tries
them in that order, moving on only when a host cannot be reached before any
answer byte went to the client:

1. ready — fewest requests queued and running first (replicas balanced by queue);
2. sleeping — it wakes faster than anything loads;
3. loading already (starting, waking, warming) — fewest waiting first;
4. can be loaded — room for it now first, then the shortest queue, then the
   shorter last load (unknown last);
5. the rest (failed, backing off, stopping, no room) — its host answers why.

Down hosts are not options at all. Ties keep the order given (this host first,
then the peers in config order).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

_LOADING = frozenset({"starting", "waking", "warming"})
_STARTABLE = frozenset({"stopped"})


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: ``host`` None is this swapyard, else a peer's
    name; ``model`` the model id on that host."""

    host: str | None
    model: str


@dataclass(frozen=True, slots=True)
class Option:
    """A host that serves the model, as it last said: its engine ``state``, the
    requests queued and running there (``load``), whether it has room for the model
    now (``fits``: None unknown) and how long its last load took (``load_s``)."""

    target: Target
    state: str
    load: int = 0
    fits: bool | None = None
    load_s: float | None = None


def rank(option: Option) -> tuple[float, ...]:
    """The sort key of ``option``: smaller is better."""
    state, load = option.state, option.load
    if state == "ready":
        return (0, load)
    if state == "sleeping":
        return (1, load)
    if state in _LOADING:
        return (2, load)
    if state in _STARTABLE and option.fits is not False:
        fits_now = 0 if option.fits else 1
        return (3, fits_now, load, option.load_s if option.load_s is not None else math.inf)
    return (4, load)


def plan(options: Iterable[Option]) -> list[Target]:
    """Every option's target, best first (``rank``; stable on ties)."""
    return [o.target for o in sorted(options, key=rank)]
