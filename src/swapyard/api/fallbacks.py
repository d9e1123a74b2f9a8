"""Which names may serve a request, in which order, and when to move on (issue 15).

Pure functions of the config and one router snapshot: ``exchange.serve`` asks
``plan`` for the candidates and tries them in order, moving on only when an
attempt fails for a reason in the plan's ``FallbackOn`` (``conditions``) before
any byte of the answer went to the client.

- A model's name: itself, then its ``fallbacks`` (a virtual id among them stands
  for its models, ordered by its own pick rule); its ``fallback_on``.
- A virtual id: its models by its ``pick`` rule; its ``fallback_on``.
- ``loaded-first``: ready engines first, then asleep, then loading, then stopped,
  then those that failed moments ago; listed order among equals.
- ``fits-first``: ready first, then those that fit the devices' free memory now
  without stopping anything, then those whose need is not known yet, then the
  rest; listed order among equals.
- ``in-order``: as listed.

A name a peer serves ranks by what its up peers last said (``PeerView``), the
best host's rank when this swapyard serves it too; a name no host is known to
serve ranks as "not known yet".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from swapyard.config import Config
from swapyard.config.fallbacks import Condition, FallbackOn, Pick
from swapyard.errors import (
    EngineBackoff,
    EngineFailed,
    EngineOutOfMemory,
    EngineStartError,
    InsufficientMemory,
    PeerRefused,
    QueueFull,
    SwapyardError,
    UpstreamDied,
    UpstreamError,
    UpstreamUnavailable,
    WaitExceeded,
)
from swapyard.peers.view import PeerModel, PeerView
from swapyard.process.state import EngineState
from swapyard.surface import ModelSnapshot, Snapshot

_LOADING = (EngineState.STARTING, EngineState.WAKING, EngineState.WARMING)
_BROKEN = (EngineState.BACKOFF, EngineState.FAILED)


@dataclass(frozen=True, slots=True)
class Plan:
    """The names to try, in order, and when to move on from one to the next;
    ``virtual``: the virtual id the client named, if it did."""

    names: tuple[str, ...]
    on: FallbackOn = field(default_factory=FallbackOn)
    virtual: str | None = None


def plan(
    config: Config,
    name: str,
    snapshot: Callable[[], Snapshot],
    peers: Mapping[str, PeerView] | None = None,
) -> Plan:
    """The candidates for a request naming ``name`` (see the module's docstring);
    ``snapshot`` is called only when a pick rule needs it (a plain request pays
    nothing for it); ``peers``: what the peers last said, if any."""
    v = config.virtual.get(name)
    if v is not None:
        return Plan(order(v.models, v.pick, config, snapshot, peers), v.fallback_on, v.id)
    model = config.resolve(name)
    if model is None:  # unknown here: ``serve_name`` says so (or a peer serves it)
        return Plan((name,))
    spec = config.models[model]
    names = [name]
    for f in spec.fallbacks:
        fv = config.virtual.get(f)
        names.extend(order(fv.models, fv.pick, config, snapshot, peers) if fv else (f,))
    seen: set[str] = set()
    unique = []
    for n in names:  # a name twice (by way of a virtual id) is tried once
        if (key := canonical(config, n)) not in seen:
            seen.add(key)
            unique.append(n)
    return Plan(tuple(unique), spec.fallback_on)


def canonical(config: Config, name: str) -> str:
    """The id that ``name`` stands for: its variant's, else its model's (itself
    when this swapyard does not know it)."""
    variant = config.variant(name)
    if variant is not None:
        return variant.id
    return config.resolve(name) or name


def order(
    names: Sequence[str],
    pick: Pick,
    config: Config,
    snapshot: Callable[[], Snapshot],
    peers: Mapping[str, PeerView] | None = None,
) -> tuple[str, ...]:
    """``names`` in the order ``pick`` tries them, as things stand in ``snapshot()``
    and ``peers``."""
    if pick == "in-order":
        return tuple(names)
    snap = snapshot()
    rank = _loaded_rank if pick == "loaded-first" else _fits_rank
    on_peers = _peer_rank_loaded if pick == "loaded-first" else _peer_rank_fits
    ranks = {}
    for n in names:
        held = [pm for v in (peers or {}).values() if v.up
                and (pm := v.models.get(v.model_of(n) or "")) is not None]  # fmt: skip
        mine = [rank(config, snap, n)] if config.resolve(n) is not None or not held else []
        ranks[n] = min(mine + [on_peers(pm) for pm in held])
    return tuple(sorted(names, key=lambda n: ranks[n]))  # sorted is stable


def _peer_state(pm: PeerModel) -> EngineState | None:
    try:
        return EngineState(pm.state)
    except ValueError:
        return None


def _peer_rank_loaded(pm: PeerModel) -> int:
    """A peer's model ranked as ``_loaded_rank`` ranks a local one."""
    state = _peer_state(pm)
    if state is EngineState.READY:
        return 0
    if state is EngineState.SLEEPING:
        return 1
    if state in _LOADING:
        return 2
    return 4 if state in _BROKEN else 3


def _peer_rank_fits(pm: PeerModel) -> int:
    """A peer's model ranked as ``_fits_rank`` ranks a local one (its host's ``fits``)."""
    state = _peer_state(pm)
    if state is EngineState.READY:
        return 0
    if state in _BROKEN:
        return 4
    return 2 if pm.fits is None else 1 if pm.fits else 3


def _model(config: Config, snap: Snapshot, name: str) -> ModelSnapshot | None:
    model = config.resolve(name)
    return None if model is None else snap.models.get(model)


def _loaded_rank(config: Config, snap: Snapshot, name: str) -> int:
    m = _model(config, snap, name)
    if m is None:
        return 3
    if m.state is EngineState.READY:
        return 0
    if m.state is EngineState.SLEEPING:
        return 1
    if m.state in _LOADING:
        return 2
    return 4 if m.state in _BROKEN else 3


def _fits_rank(config: Config, snap: Snapshot, name: str) -> int:
    m = _model(config, snap, name)
    if m is None:
        return 2
    if m.state is EngineState.READY:
        return 0
    if m.state in _BROKEN:
        return 4
    need = m.memory.scheduled
    if need is None or not snap.devices:
        return 2
    gpus = config.models[m.id].gpus
    room = sum(1 for d in snap.devices.values() if d.free >= need)
    return 1 if room >= gpus else 3


def conditions_of(err: SwapyardError) -> frozenset[Condition | str]:
    """Which fallback conditions ``err`` (raised before the answer began) meets."""
    found: set[Condition | str] = set()
    if isinstance(err, EngineStartError | EngineBackoff | EngineFailed):
        found.add("start_failed")
    if isinstance(err, InsufficientMemory | EngineOutOfMemory):
        found.add("no_memory")
    if isinstance(err, QueueFull):
        found.add("queue_full")
    # Issue 15: ``serve`` asks only before the answer began, so an upstream that
    # died (a peer hung, then ended by its watcher) sent nothing: as if down.
    if isinstance(err, UpstreamUnavailable | UpstreamDied):
        found.add("host_down")
    if isinstance(err, UpstreamError):
        found.add("upstream_5xx")
    if isinstance(err, WaitExceeded):
        found.add("wait")
    if isinstance(err, PeerRefused):  # a peer's answer: the conditions its code stands for
        found |= err.conditions
    return frozenset(found)


def moves_on(err: SwapyardError, on: FallbackOn) -> bool:
    """Whether ``err`` sends the request on to the next candidate under ``on``."""
    met = conditions_of(err)
    return bool(met & on.conditions) or ("wait" in met and on.wait is not None)
