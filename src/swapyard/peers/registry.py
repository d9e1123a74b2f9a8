"""``Peers``: this swapyard's peers, as the request path and admin routes see them
(issue 15). Built and stopped by the app's lifespan.

Each peer's view is written by its own watcher task (``peers.watch``); a request
that cannot reach a peer tells its watcher (``report_down``), which marks it
down at once. The registry also counts the requests this swapyard has sent to
each host and model and not seen finish (``begin``/``end``, from the request
path, no ``await`` in between): a host's own figures arrive a moment later, and
replicas are balanced on whichever is higher.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping
from types import MappingProxyType

import aiohttp

from swapyard.config.peers import PeerSpec
from swapyard.errors import UpstreamDied
from swapyard.peers.view import PeerView
from swapyard.peers.watch import PeerWatch
from swapyard.watch import Watch, Watches

Host = str | None  # None: this swapyard


class _PeerWatches(Watches):
    """One peer's requests in progress, also registered with the app's (so that
    shutdown ends them as it ends the others)."""

    def __init__(self, parent: Watches) -> None:
        super().__init__()
        self._parent = parent

    def add(self, watch: Watch) -> None:
        super().add(watch)
        self._parent.add(watch)

    def discard(self, watch: Watch) -> None:
        super().discard(watch)
        self._parent.discard(watch)


class Peers:
    """The ``PeerSource`` of a running swapyard: one watcher per configured peer."""

    def __init__(
        self, specs: Mapping[str, PeerSpec], http: aiohttp.ClientSession, watches: Watches
    ) -> None:
        self.specs = specs
        self._views: dict[str, PeerView] = {}
        self._watches = {name: _PeerWatches(watches) for name in specs}
        self._watchers = {
            name: PeerWatch(spec, http, self._publish, self._hung_for(name))
            for name, spec in specs.items()
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._sent: Counter[tuple[Host, str]] = Counter()

    # -- lifecycle --
    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(w.run()) for w in self._watchers.values()]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- PeerSource --
    def views(self) -> Mapping[str, PeerView]:
        """The latest view of every peer, in config order (a snapshot: it does not
        change under the reader)."""
        return MappingProxyType(dict(self._views))

    def data_headers(self, peer: str) -> Mapping[str, str]:
        return self.specs[peer].data_headers()

    def admin_headers(self, peer: str) -> Mapping[str, str]:
        return self.specs[peer].admin_headers()

    def report_down(self, peer: str, why: str) -> None:
        self._watchers[peer].down(why)

    # -- the request path --
    def watches(self, peer: str) -> Watches:
        """Where a request to ``peer`` registers its ``Watch``: a peer found hung
        ends them all with an error (an error event for a stream)."""
        return self._watches[peer]

    def hosts_of(self, name: str) -> list[tuple[str, str]]:
        """The up peers that serve ``name``, each with the model it stands for there."""
        out = []
        for view in self._views.values():
            model = view.model_of(name) if view.up else None
            if model is not None:
                out.append((view.name, model))
        return out

    def down_hosts_of(self, name: str) -> list[PeerView]:
        """The peers that are down and served ``name`` when last seen up."""
        return [v for v in self._views.values() if not v.up and v.model_of(name) is not None]

    def begin(self, host: Host, model: str) -> None:
        self._sent[host, model] += 1

    def end(self, host: Host, model: str) -> None:
        self._sent[host, model] -= 1
        if self._sent[host, model] <= 0:
            del self._sent[host, model]

    def sent(self, host: Host, model: str) -> int:
        """Requests this swapyard sent ``model`` on ``host`` that have not finished."""
        return self._sent.get((host, model), 0)

    def _publish(self, view: PeerView) -> None:
        self._views[view.name] = view

    def _hung_for(self, peer: str) -> _Hung:
        return _Hung(self._watches[peer], peer)


class _Hung:
    """A peer stopped answering: end the requests still running on it."""

    def __init__(self, watches: Watches, peer: str) -> None:
        self._watches, self._peer = watches, peer

    def __call__(self, why: str) -> None:
        self._watches.stop_all(UpstreamDied(self._peer, f"peer {self._peer!r} is down: {why}"))
