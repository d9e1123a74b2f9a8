"""Fallbacks and virtual models (issue 15), as frozen values, and their load-time checks.

A model's ``fallbacks`` are the names tried, in order, when it cannot serve a
request for one of the reasons in its ``fallback_on``; a *virtual* id names
several models and serves each request with the best of them by its ``pick``
rule. Names are local ids, aliases or variants (a peer's model once peers are
configured: only checked when a request comes). The request path
(``swapyard.api.fallbacks``) turns both into an ordered list of candidates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, get_args

from swapyard.errors import ConfigError

if TYPE_CHECKING:  # the schema imports these values: no cycle at run time
    from swapyard.config.schema import FallbackOnIn, ModelIn, VirtualIn
    from swapyard.config.values import ModelSpec

# Why a request moves on to the next candidate; none applies once any byte of
# the answer has gone to the client. ``wait`` (a bound in seconds) is the sixth.
Condition = Literal["start_failed", "no_memory", "queue_full", "host_down", "upstream_5xx"]
CONDITIONS: tuple[Condition, ...] = get_args(Condition)
Pick = Literal["loaded-first", "fits-first", "in-order"]
_ID = re.compile(r"^[^\s/][^\s]*$")


@dataclass(frozen=True, slots=True)
class FallbackOn:
    """When to try the next candidate: on any of ``conditions``, and (``wait``, in
    seconds) when a candidate's engine is not free to take the request that long.
    The default: every condition, no wait bound (a request waits as it would
    without fallbacks, up to ``scheduler.max_wait``)."""

    conditions: frozenset[Condition] = frozenset(CONDITIONS)
    wait: float | None = None


@dataclass(frozen=True, slots=True)
class VirtualSpec:
    """An id clients send that stands for several models: each request goes to
    the first of ``models`` by ``pick`` that can serve it (``fallback_on`` says
    when to move on to the next)."""

    id: str
    models: tuple[str, ...]
    pick: Pick = "loaded-first"
    name: str | None = None
    fallback_on: FallbackOn = field(default_factory=FallbackOn)


def fallback_on(items: Sequence[Condition | FallbackOnIn] | None) -> FallbackOn:
    """The value of a ``fallback_on:`` list (None: the default)."""
    if items is None:
        return FallbackOn()
    conditions = frozenset(i for i in items if isinstance(i, str))
    waits = [i.wait for i in items if not isinstance(i, str)]
    return FallbackOn(conditions, min(waits) if waits else None)


def local_names(models: Mapping[str, ModelSpec]) -> dict[str, str]:
    """Every name a client may send for a local model → the model id it runs on."""
    names = {mid: mid for mid in models}
    for m in models.values():
        names.update((a, m.id) for a in m.aliases)
        for v in m.variants.values():
            names.update((n, m.id) for n in (v.id, *v.aliases))
    return names


def with_fallbacks(
    source: str, parsed: Mapping[str, ModelIn], models: Mapping[str, ModelSpec]
) -> dict[str, ModelSpec]:
    """Each model with its ``fallbacks`` and ``fallback_on`` (the latter alone is
    refused: it would change nothing)."""
    out = {}
    for mid, spec in models.items():
        m = parsed[mid]
        if m.fallback_on is not None and not m.fallbacks:
            raise ConfigError(f"{source}: models.{mid}.fallback_on: the model has no `fallbacks`")
        out[mid] = replace(
            spec, fallbacks=tuple(m.fallbacks), fallback_on=fallback_on(m.fallback_on)
        )
    return out


def build_virtual(
    source: str,
    virtual: Mapping[str, VirtualIn],
    models: Mapping[str, ModelSpec],
    open_names: bool,
) -> Mapping[str, VirtualSpec]:
    """The ``virtual:`` section. An id must not be a name a model already has;
    members are local names (any name with ``open_names``: peers may serve it),
    not virtual ids, none twice."""
    names = local_names(models)
    out: dict[str, VirtualSpec] = {}
    for vid, v in virtual.items():
        where = f"{source}: virtual.{vid}"
        if not _ID.match(vid):
            raise ConfigError(f"{where}: a virtual id cannot contain spaces or start with '/'")
        if vid in names:
            raise ConfigError(f"{where}: {vid!r} is already a model's name (id, alias or variant)")
        seen: set[str] = set()
        for i, name in enumerate(v.models):
            if name in virtual:
                raise ConfigError(f"{where}.models[{i}]: {name!r} is a virtual id (no nesting)")
            if name not in names and not open_names:
                raise ConfigError(f"{where}.models[{i}]: {name!r} is not a model, alias or variant")
            if name in seen:
                raise ConfigError(f"{where}.models[{i}]: {name!r} is listed twice")
            seen.add(name)
        out[vid] = VirtualSpec(vid, tuple(v.models), v.pick, v.name, fallback_on(v.fallback_on))
    return MappingProxyType(out)


def check_fallbacks(
    source: str,
    models: Mapping[str, ModelSpec],
    virtual: Mapping[str, VirtualSpec],
    open_names: bool,
) -> None:
    """Each model's ``fallbacks``: local names or virtual ids (any name with
    ``open_names``), never the model itself, none twice."""
    names = local_names(models)
    for m in models.values():
        where = f"{source}: models.{m.id}.fallbacks"
        for i, name in enumerate(m.fallbacks):
            if names.get(name) == m.id:
                raise ConfigError(f"{where}[{i}]: {name!r} is this model's own engine")
            if name not in names and name not in virtual and not open_names:
                raise ConfigError(
                    f"{where}[{i}]: {name!r} is not a model, alias, variant or virtual id"
                )
            if name in m.fallbacks[:i]:
                raise ConfigError(f"{where}[{i}]: {name!r} is listed twice")
