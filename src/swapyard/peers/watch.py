"""One task per peer: what that host says it runs, kept fresh by its own event
stream (issue 15). The task is the only writer of its peer's ``PeerView``.

    connect ─▶ GET /api/events (SSE, admin key) ─┬─ any event ─▶ re-read the snapshot
               GET /api/models + GET /v1/models   │               (coalesced, ≤ 1 per 50 ms)
               ─▶ up                               └─ GET /health every ``timeout`` s
    any failure ─▶ down at once ─▶ wait (0.25 s, doubling, at most 5 s) ─▶ connect

Detection is bounded: a host that dies closes its connections, and its event
stream ends at once; a host that hangs (its sockets open, nothing answering)
misses a ``/health`` probe (or a snapshot read times out first), found within
about ``2 × timeout`` (``PeerSpec``, default 2 s, so 4 s), and then the requests
on it that show no sign of life are ended (``on_hung``: ``registry._Hung``),
never left to hang. The event stream's own read timeout (the host's keep-alive
comment comes every 15 s) is a second bound. A session that ends by a timeout,
whichever read it was, counts as hung; one that ends by a refused or reset
connection does not (the requests on it see their own connection end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any

import aiohttp

from swapyard.config.peers import PeerSpec
from swapyard.peers.listing import LOCAL
from swapyard.peers.view import NOT_CONTACTED, PeerModel, PeerView

log = logging.getLogger("swapyard.peers")

KEEPALIVE = 15.0  # a host's /api/events sends at least a comment this often (api.live)
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0
REFRESH_GAP = 0.05  # at most one snapshot read per this many seconds, however busy


class PeerLost(Exception):
    """The host stopped answering as it should; the message says how."""


class PeerHung(PeerLost):
    """The host missed its ``/health`` probe."""


def models_of(doc: Mapping[str, Any]) -> dict[str, PeerModel]:
    """A host's ``GET /api/models`` answer as ``PeerModel``s: ``fits`` says whether
    one of its devices has room for the model's scheduled need now (None when it
    declares no device or the need is unknown)."""
    free = [d.get("free") for d in (doc.get("devices") or {}).values()]
    room = max((f for f in free if isinstance(f, int)), default=None)
    out = {}
    for mid, m in (doc.get("models") or {}).items():
        need = (m.get("memory") or {}).get("scheduled")
        need = need if isinstance(need, int) else None
        fits = None if need is None or room is None else need <= room
        out[mid] = PeerModel(
            id=mid,
            state=str(m.get("state", "unknown")),
            in_flight=int(m.get("in_flight") or 0),
            queued=int(m.get("queued") or 0),
            need=need,
            fits=fits,
        )
    return out


def names_of(doc: Mapping[str, Any]) -> tuple[tuple[Mapping[str, Any], ...], dict[str, str]]:
    """A host's ``GET /v1/models`` answer: the entries of what it serves itself,
    and each listed name → the model whose engine serves it (a variant's model, an
    alias's target).

    Only its own: an entry whose ``hosts`` (the host's own peers, when it has
    some) does not name ``local`` is served only by its peers. Routing on those
    would send a request back and forth between two hosts that are each other's
    peers, each listing what it learned from the other, once the host that
    served the name is gone."""
    entries = tuple(
        e for e in doc.get("data") or ()
        if isinstance(e, dict) and "id" in e and _own(e.get("hosts"))
    )  # fmt: skip
    names: dict[str, str] = {}
    for e in entries:
        names[e["id"]] = e.get("variant_of") or e.get("alias_of") or e["id"]
    for e in entries:  # an alias of a variant: the variant's model
        names[e["id"]] = names.get(names[e["id"]], names[e["id"]])
    return entries, names


def _own(hosts: object) -> bool:
    """Whether a ``/v1/models`` entry's ``hosts`` says its host serves it itself
    (no ``hosts``: a host without peers, or a key with an allow-list)."""
    return hosts is None or (isinstance(hosts, list) and LOCAL in hosts)


class PeerWatch:
    """The owner task of one peer's view; ``publish`` receives every new one."""

    def __init__(
        self,
        spec: PeerSpec,
        http: aiohttp.ClientSession,
        publish: Callable[[PeerView], None],
        on_hung: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self._http = http
        self._publish = publish
        self._on_hung = on_hung
        self._dirty = asyncio.Event()
        self._session: asyncio.Task[None] | None = None
        self._lost: str | None = None
        self._reached = False  # this session got the host's snapshot
        self.view = PeerView(spec.name, spec.url, up=False, since=time.monotonic(),
                             error=NOT_CONTACTED)  # fmt: skip
        publish(self.view)

    async def run(self) -> None:
        """Follow the host until cancelled."""
        backoff = BACKOFF_FIRST
        while True:
            self._lost, self._reached = None, False
            self._session = asyncio.ensure_future(self._follow())
            try:
                await asyncio.wait({self._session})
            finally:
                self._session.cancel()
            why = self._lost
            hung = False
            if why is None:
                exc = self._session.exception() if not self._session.cancelled() else None
                why = _describe(exc)
                hung = isinstance(exc, PeerHung | TimeoutError)  # whichever read noticed it
            # Down first: no new request may go to the host once its running ones end
            # (a client that retries at once would otherwise be sent back to it).
            self.down(why)
            if hung:
                self._on_hung(why)
            backoff = BACKOFF_FIRST if self._reached else min(backoff * 2, BACKOFF_MAX)
            await asyncio.sleep(backoff)

    def down(self, why: str) -> None:
        """Mark the host down now (a request could not reach it, or the stream
        broke); the running session is ended and ``run`` connects again."""
        if self._lost is None:
            self._lost = why
        if self._session is not None and not self._session.done():
            self._session.cancel()
        if self.view.up:
            log.warning("peer %s is down: %s", self.spec.name, why)
            self._set(PeerView(self.spec.name, self.spec.url, up=False, since=time.monotonic(),
                               models=self.view.models, error=why, listing=self.view.listing,
                               names=self.view.names))  # fmt: skip
        elif self.view.error != why:
            self._set(_with_error(self.view, why))

    def _set(self, view: PeerView) -> None:
        self.view = view
        self._publish(view)

    async def _follow(self) -> None:
        t = self.spec.timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=KEEPALIVE + t)
        url = self.spec.url + "/api/events"
        async with self._http.get(url, headers=self.spec.admin_headers(), timeout=timeout) as r:
            if r.status != 200:
                raise PeerLost(f"GET /api/events answered HTTP {r.status}")
            await self._refresh()  # after subscribing: no change falls in between
            await _first_failure(self._events(r), self._refresher(), self._probe())

    async def _events(self, resp: aiohttp.ClientResponse) -> None:
        async for line in resp.content:
            if line.startswith(b"data:"):
                self._dirty.set()
        raise PeerLost("its event stream ended")

    async def _refresher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._refresh()
            await asyncio.sleep(REFRESH_GAP)

    async def _probe(self) -> None:
        t = self.spec.timeout
        while True:
            await asyncio.sleep(t)
            try:
                await self._get("/health", self.spec.admin_headers())
            except (aiohttp.ClientError, OSError, TimeoutError, PeerLost) as exc:
                why = f"no answer to GET /health within {t:g} s ({_describe(exc)})"
                raise PeerHung(why) from exc

    async def _refresh(self) -> None:
        snap, listing = await asyncio.gather(
            self._get("/api/models", self.spec.admin_headers()),
            self._get("/v1/models", self.spec.data_headers()),
        )
        entries, names = names_of(listing)
        self._reached = True
        was = self.view
        self._set(PeerView(
            self.spec.name, self.spec.url, up=True, since=was.since if was.up else time.monotonic(),
            models=MappingProxyType(models_of(snap)), listing=entries,
            names=MappingProxyType(names),
        ))  # fmt: skip
        if not was.up:
            log.info("peer %s is up: %d models", self.spec.name, len(names))

    async def _get(self, path: str, headers: Mapping[str, str]) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self.spec.timeout)
        async with self._http.get(self.spec.url + path, headers=headers, timeout=timeout) as r:
            if r.status != 200:
                raise PeerLost(f"GET {path} answered HTTP {r.status}")
            body = await r.read()
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise PeerLost(f"GET {path} answered something that is not JSON") from exc
        if not isinstance(doc, dict):
            raise PeerLost(f"GET {path} answered something that is not a JSON object")
        return doc


async def _first_failure(*jobs: Awaitable[None]) -> None:
    """Run ``jobs`` together until one ends; cancel the others; raise what it raised."""
    tasks = [asyncio.ensure_future(j) for j in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


def _with_error(view: PeerView, why: str) -> PeerView:
    return PeerView(view.name, view.url, view.up, view.since, view.models, why, view.listing,
                    view.names)  # fmt: skip


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "its connection ended"
    if isinstance(exc, PeerLost):
        return str(exc)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
