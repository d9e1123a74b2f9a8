"""A request for a name that peers serve (issue 15): which host runs it, how it
is sent to a peer, and what the peer's answer means to the fallback loop.

``exchange.serve_name`` hands a name with hosts here. ``serve_routed`` tries the
hosts best first (``peers.choose``), moving on from a peer that could not be
reached, or that died, before any byte of the answer went to the client.
``serve_peer`` sends the call as it is; the peer resolves the name, loads the
model and applies its own parameters and fixes.

Between swapyards, two headers:

- ``X-Swapyard-Via``: the ids of the swapyards a request went through (each
  running swapyard draws one at start). A request that carries this swapyard's
  own id went round a loop and is refused (508); one that carries any id came
  from a peer and is served by this host's engines only, never forwarded on, so
  that mutual peers cannot send a request back and forth.
- ``X-Swapyard-Attempt`` (with ``wait=<seconds>`` when bounded): a fallback
  follows this try at the front. The peer sends no loading status (it would
  begin the answer) and gives up waiting for an engine after ``wait``; its
  error answer (429, 5xx) is then turned back into the error it stands for
  (``PeerRefused``) so that the front's next candidate can serve the request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from swapyard.api.state import BEGUN, KEY_HOST, KEY_NAME, STATE, AppState
from swapyard.errors import (
    LoopDetected,
    NotKnownYet,
    PeerRefused,
    SwapyardError,
    UpstreamDied,
    UpstreamUnavailable,
)
from swapyard.events import EventBus, RequestFinished
from swapyard.peers.choose import Option, Target, plan
from swapyard.peers.registry import Peers
from swapyard.peers.view import PeerView
from swapyard.proxy import Translation, forward
from swapyard.surface import Lease
from swapyard.usage.meter import Metering, Ticket

if TYPE_CHECKING:
    from swapyard.api.exchange import Attempt, Call

MODEL_HEADER = "X-Swapyard-Model"
FROM_HEADER = "X-Swapyard-Fallback-From"
VIA_HEADER = "X-Swapyard-Via"
ATTEMPT_HEADER = "X-Swapyard-Attempt"
# What ``PeerWatch`` says of a peer before its first contact has an outcome.

# A peer's error ``code`` → the fallback conditions it meets (else upstream_5xx).
_CONDITIONS: Mapping[str, frozenset[str]] = {
    **{code: frozenset({"start_failed"}) for code in (
        "engine_start_failed", "engine_exited", "engine_start_timeout", "port_in_use",
        "engine_backoff", "engine_failed",
    )},
    "engine_out_of_memory": frozenset({"start_failed", "no_memory"}),
    "insufficient_memory": frozenset({"no_memory"}),
    "queue_full": frozenset({"queue_full"}),
    "upstream_unavailable": frozenset({"host_down"}),
    "wait_exceeded": frozenset({"wait"}),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class PeerSaid:
    """What a peer's answer said of the model that served it: ``model`` (its
    ``X-Swapyard-Model``) and the names it fell back from."""

    model: str | None
    tried: tuple[str, ...] = ()


PEER_SAID = web.RequestKey("swapyard_peer_said", PeerSaid)


class Recorded:
    """The record of one request to an engine or a peer: a failure or a client
    gone is noted on ``metering``, and the record published once at the end,
    unless ``keep`` was set False (a try the next host takes over)."""

    def __init__(self, bus: EventBus, metering: Metering) -> None:
        self.bus, self.metering = bus, metering
        self.keep = True

    def __enter__(self) -> Recorded:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, SwapyardError):
            self.metering.failed(exc)
        elif isinstance(exc, asyncio.CancelledError):
            self.metering.client_gone()
        if self.keep:
            self.bus.publish(RequestFinished(self.metering.final()))


def forwarded(request: web.Request) -> bool:
    """Whether ``request`` came from a peer (it carries ``X-Swapyard-Via``):
    this host's engines serve it, no peer."""
    return VIA_HEADER in request.headers


def check_hops(request: web.Request, state: AppState) -> None:
    """``LoopDetected`` when ``request`` already went through this swapyard."""
    via = request.headers.get(VIA_HEADER)
    if via is not None and state.instance in (part.strip() for part in via.split(",")):
        raise LoopDetected(
            f"this request already went through this swapyard ({VIA_HEADER}: {via[:200]}): "
            "its peers send it round a loop"
        )


def is_attempt(request: web.Request) -> bool:
    """Whether ``request`` came from a peer as a try its fallback follows."""
    return ATTEMPT_HEADER in request.headers and forwarded(request)


def attempt_wait(request: web.Request) -> float | None:
    """The wait bound (seconds) of such a try: None when it has none."""
    for part in request.headers.get(ATTEMPT_HEADER, "").split(";")[1:]:
        key, _, num = part.strip().partition("=")
        if key.strip() == "wait":
            try:
                wait = float(num)
            except ValueError:
                return None
            return wait if wait > 0 else None
    return None


def hosts_of(peers: Peers, name: str) -> list[tuple[str, str]]:
    """The up peers that run ``name`` themselves (a name a peer lists only for
    its own peers is not sent there: it would not forward it on)."""
    views = peers.views()
    return [(h, m) for h, m in peers.hosts_of(name) if _runs(views[h], name)]


def _runs(view: PeerView, name: str) -> bool:
    for entry in view.listing:
        if entry.get("id") == name:
            hosts = entry.get("hosts")
            return not isinstance(hosts, list) or "local" in hosts
    return True


def raise_if_unserved(peers: Peers, name: str) -> None:
    """For a name no up host serves: a fast error when only down peers served
    it (not "unknown model"), a 503 to retry while a peer has not been contacted
    yet (it may serve it); else nothing (the caller says "unknown")."""
    down = peers.down_hosts_of(name)
    if down:
        why = "; ".join(f"peer {v.name!r}: {v.error}" for v in down)
        raise UpstreamUnavailable(name, f"every host that serves {name!r} is down ({why})")
    waiting = [v.name for v in peers.views().values() if not v.contacted]
    if waiting:
        raise NotKnownYet(name, waiting, max(peers.specs[n].timeout for n in waiting))


async def serve_routed(
    request: web.Request,
    call: Call,
    local: str | None,
    remote: list[tuple[str, str]],
    translation: Translation | None,
    t0: float,
    serve_local: Callable[[str], Awaitable[web.StreamResponse]],
) -> web.StreamResponse:
    """``call`` on the best of the hosts that serve its name (``peers.choose``):
    ``local`` (this host's model, if any, run by ``serve_local``) and ``remote``
    (peer, model) pairs. A peer that cannot be reached, or dies, before any answer
    byte is marked down and the next host is tried; any other failure is the
    answer."""
    state: AppState = request.app[STATE]
    peers = state.peers
    assert peers is not None
    views = peers.views()
    options = [] if local is None else [_local_option(state, peers, local)]
    for host, model in remote:
        pm = views[host].models.get(model)
        load = max(peers.sent(host, model), 0 if pm is None else pm.queued + pm.in_flight)
        options.append(Option(Target(host, model), "unknown" if pm is None else pm.state, load,
                              None if pm is None else pm.fits,
                              None if pm is None else pm.load_s))  # fmt: skip
    targets = plan(options)
    for i, target in enumerate(targets):
        request[KEY_HOST] = target.host or "local"
        request.pop(PEER_SAID, None)
        peers.begin(target.host, target.model)
        more = i + 1 < len(targets)
        try:
            if target.host is None:
                return await serve_local(target.model)
            return await serve_peer(request, call, target, translation, t0, more=more)
        except (UpstreamUnavailable, UpstreamDied) as err:
            # Issue 15: a peer that died (hung, then ended by its watcher) before
            # the answer began is as unreachable as one that refused to connect.
            if target.host is None or not more or request.get(BEGUN):
                raise
            peers.report_down(target.host, err.message)
        finally:
            peers.end(target.host, target.model)
    raise AssertionError("unreachable: a name with hosts has targets")  # pragma: no cover


def _local_option(state: AppState, peers: Peers, model: str) -> Option:
    """This host's ``model`` as a routing option, by the router's snapshot."""
    snap = state.router.snapshot()
    m = snap.models[model]
    need = m.memory.scheduled
    room = max((d.free for d in snap.devices.values()), default=None)
    fits = None if need is None or room is None else need <= room
    load = max(peers.sent(None, model), m.queued + m.in_flight)
    return Option(Target(None, model), str(m.state), load, fits)


async def serve_peer(
    request: web.Request,
    call: Call,
    target: Target,
    translation: Translation | None,
    t0: float,
    *,
    more: bool = False,
) -> web.StreamResponse:
    """``call`` sent as it is to the peer ``target.host``; its answer piped back
    (or translated). One request record here, unless the peer could not be
    reached, or died, before the answer began and ``more`` hosts are left to try.
    A try that a fallback follows (``call.attempt``) raises ``PeerRefused`` for
    the peer's 429 or 5xx answer instead of passing it on."""
    state: AppState = request.app[STATE]
    peers = state.peers
    assert peers is not None and target.host is not None
    view = peers.views()[target.host]
    pm = view.models.get(target.model)
    ready = pm is not None and pm.state == "ready"
    doc = call.doc
    stream = (
        call.stream if call.stream is not None else (doc is not None and doc.get("stream") is True)
    )
    ticket = Ticket(target.model, f"peer:{target.host}", request.path, stream,
                    request.get(KEY_NAME), not ready)  # fmt: skip
    metering = Metering(ticket, t0)
    lease = Lease(state.router.new_request_id(), target.model, view.url, 0.0)
    metering.admitted(lease.request_id, 0.0)
    headers = {**peers.data_headers(target.host), **hop_headers(request, state, call.attempt)}
    with Recorded(state.bus, metering) as record:
        try:
            return await forward(
                state.http, request, lease, call.body, metering,
                timeouts=state.config.server.timeouts, watches=peers.watches(target.host),
                extra_headers=headers, path=call.path, translation=translation,
                head=_PeerHead(request, target.model, call.attempt is not None),
            )  # fmt: skip
        except (UpstreamUnavailable, UpstreamDied):
            record.keep = not more or bool(request.get(BEGUN))
            raise


def hop_headers(request: web.Request, state: AppState, attempt: Attempt | None) -> dict[str, str]:
    """The headers that tell a peer where the request has been, and whether a
    fallback follows it (see the module's docstring)."""
    via = request.headers.get(VIA_HEADER)
    out = {VIA_HEADER: state.instance if via is None else f"{via}, {state.instance}"}
    if attempt is not None:
        out[ATTEMPT_HEADER] = "1" if attempt.wait is None else f"1; wait={attempt.wait:g}"
    return out


class _PeerHead:
    """What ``serve_peer`` makes of a peer's answer head (``proxy.HeadCheck``)."""

    def __init__(self, request: web.Request, model: str, attempt: bool) -> None:
        self._request, self._model, self._attempt = request, model, attempt

    def refuses(self, status: int, headers: Mapping[str, str]) -> bool:
        if self._attempt and (status == 429 or status >= 500):
            return True
        tried = headers.get(FROM_HEADER, "")
        self._request[PEER_SAID] = PeerSaid(
            headers.get(MODEL_HEADER), tuple(n.strip() for n in tried.split(",") if n.strip())
        )
        return False

    def error(self, status: int, body: bytes) -> SwapyardError:
        return peer_refusal(self._model, status, body)


def peer_refusal(model: str, status: int, body: bytes) -> PeerRefused:
    """A peer's error answer as the error a fallback moves on from: the fallback
    conditions its ``code`` stands for (``upstream_5xx`` for any other)."""
    envelope: dict[str, Any] | None = None
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        envelope = doc
    code = None if envelope is None else envelope["error"].get("code")
    if envelope is None:
        text = body.decode("utf-8", "replace")[:500]
        envelope = {"error": {"message": f"the peer answered HTTP {status}: {text}",
                              "type": "engine_error", "param": None, "code": "upstream_error",
                              "source": "engine"}}  # fmt: skip
    other = frozenset({"upstream_5xx"})
    return PeerRefused(
        model, envelope, _CONDITIONS.get(code, other) if isinstance(code, str) else other
    )
