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
import math
from collections import Counter
from collections.abc import Callable, Mapping
from types import MappingProxyType

import aiohttp

from swapyard.config.peers import PeerSpec
from swapyard.errors import UpstreamDied, UpstreamUnavailable
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
        self._mine: set[Watch] = set()

    def add(self, watch: Watch) -> None:
        super().add(watch)
        self._mine.add(watch)
        self._parent.add(watch)

    def discard(self, watch: Watch) -> None:
        super().discard(watch)
        self._mine.discard(watch)
        self._parent.discard(watch)

    def live(self) -> list[Watch]:
        """The requests in progress on this peer now."""
        return list(self._mine)


class Peers:
    """The ``PeerSource`` of a running swapyard: one watcher per configured peer."""

    def __init__(
        self, specs: Mapping[str, PeerSpec], http: aiohttp.ClientSession, watches: Watches
    ) -> None:
        self.specs = specs
        self._views: dict[str, PeerView] = {}
        self._watches = {name: _PeerWatches(watches) for name in specs}
        self._hung = {
            name: _Hung(self._watches[name], name, spec.timeout, self._down_now(name))
            for name, spec in specs.items()
        }
        self._watchers = {
            name: PeerWatch(spec, http, self._publish, self._hung[name])
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
        for hung in self._hung.values():
            hung.cancel()

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
        ends those that show no sign of life (``_Hung``): one still waiting for
        its response head with ``UpstreamUnavailable``, one silent mid-answer with
        ``UpstreamDied`` (an error event for a stream)."""
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

    def _down_now(self, peer: str) -> Callable[[], bool]:
        return lambda: not self._views[peer].up


class _Hung:
    """A peer missed its ``/health`` probe: end its requests that show no sign of
    life, so that none hangs on a hung host.

    - one still waiting for its response head: ``UpstreamUnavailable`` (nothing
      went to the client; the request path may try another host);
    - one whose answer has sent nothing for the peer's ``timeout`` (``silence``):
      ``UpstreamDied`` (a stream ends with an error event);
    - one still moving is left to run: a probe may be slow on a busy host that
      is alive. It is looked at again once it has been silent for ``silence``,
      for as long as the peer stays down (a hung host's streams all go silent).
    """

    def __init__(
        self, watches: _PeerWatches, peer: str, silence: float, is_down: Callable[[], bool]
    ) -> None:
        self._watches, self._peer, self._silence, self._is_down = watches, peer, silence, is_down
        self._why = ""
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, why: str) -> None:
        self._why = why
        self.cancel()
        self._sweep()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _recheck(self) -> None:
        self._timer = None
        if self._is_down():
            self._sweep()

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now, due = loop.time(), math.inf
        said = f"peer {self._peer!r} is down: {self._why}"
        for watch in self._watches.live():
            if watch.head_at is None:
                watch.stop(UpstreamUnavailable(watch.model, said))
                continue
            heard = max(watch.head_at, watch.last or watch.head_at)
            if now - heard >= self._silence:
                watch.stop(UpstreamDied(watch.model, said))
            else:
                due = min(due, heard + self._silence)
        if due != math.inf:
            self._timer = loop.call_at(due, self._recheck)
