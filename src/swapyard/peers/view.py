"""What this swapyard knows of its peers: frozen snapshots, read by the request
path and the admin routes, written only by each peer's watcher task (issue 15)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class PeerModel:
    """One model as its host last said: ``state`` is the host's engine state
    (``ready``, ``sleeping``, ``stopped``...), ``need`` the bytes it schedules the
    model with, ``fits`` whether it has room for it now without evicting."""

    id: str
    state: str
    in_flight: int = 0
    queued: int = 0
    need: int | None = None
    fits: bool | None = None
    load_s: float | None = None  # its last load on that host, when the host measured one


NOT_CONTACTED = "not contacted yet"  # a view's ``error`` until the host first answered


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer host: ``up`` is False from the first failed contact until its admin
    API answers again; ``since`` (``time.monotonic()``) is when that last changed."""

    name: str
    url: str
    up: bool
    since: float
    models: Mapping[str, PeerModel] = field(default_factory=lambda: MappingProxyType({}))
    error: str | None = None  # why it is down

    @property
    def contacted(self) -> bool:
        """Whether the host has answered since this swapyard started."""
        return self.up or self.error != NOT_CONTACTED

    # What its clients see (its ``/v1/models`` entries, as it sent them), and each
    # listed name (ids, aliases, variants) → the model whose engine serves it.
    listing: tuple[Mapping[str, Any], ...] = ()
    names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def model_of(self, name: str) -> str | None:
        """The model ``name`` stands for on this host (a listed name or a model id)."""
        return self.names.get(name) or (name if name in self.models else None)


class PeerSource(Protocol):
    """What the request path reads and tells of the peers."""

    def views(self) -> Mapping[str, PeerView]:
        """The latest snapshot of every peer, by name."""
        ...

    def data_headers(self, peer: str) -> Mapping[str, str]:
        """Headers a data request to ``peer`` carries (its API key)."""
        ...

    def report_down(self, peer: str, why: str) -> None:
        """A request could not reach ``peer``: mark it down now (its watcher brings
        it back when its admin API answers again)."""
        ...
