"""What the Ollama front shows and asks of names this host does not run itself
(issue 15): its virtual ids and its peers' models.

- ``/api/tags`` lists the virtual ids (after the models, as ``/v1/models`` does)
  and, for a key without an allow-list, each name an up peer lists and this host
  does not (``peers.listing.peer_entries``): Ollama clients choose from this list.
- ``/api/ps`` lists a peer's model that its host last said was ready or asleep;
  a virtual id has no engine of its own (its loaded members are listed by name).
- ``/api/show`` (and the load idiom, a request with nothing to answer) of a
  virtual id stands for its first member by its pick rule (``first_name``);
  ``/api/show`` of a peer's model is that peer's answer (asked with its data key).

What a peer said is the front's cache of its admin snapshot: sizes are the
memory the host schedules the model with (0 when it did not say), and its idle
timer is not known here (``expires_at`` is Ollama's "never").
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import aiohttp
from aiohttp import web

from swapyard.api.fallbacks import plan
from swapyard.api.ollama_convert import KEPT_FOR
from swapyard.api.ollama_info import Facts, iso
from swapyard.api.state import KEY_MODELS, KEY_NAME, STATE, AppState
from swapyard.config import Listed
from swapyard.errors import Forbidden, UpstreamError, UpstreamUnavailable
from swapyard.peers.listing import peer_entries

LOADED = ("ready", "sleeping")


def _digest(where: str, name: str) -> str:
    """A stable digest for a name with no file here (Ollama clients key on it)."""
    return hashlib.sha256(f"{where}/{name}".encode()).hexdigest()


def virtual_tags(items: list[Listed], started: datetime) -> list[dict[str, Any]]:
    """``/api/tags`` entries of the virtual ids among ``items``."""
    return [
        {"name": i.id, "model": i.id, "modified_at": iso(started), "size": 0,
         "digest": _digest("virtual", i.id), "details": Facts().details()}
        for i in items if i.virtual
    ]  # fmt: skip


def peer_tags(state: AppState, mine: set[str], started: datetime) -> list[dict[str, Any]]:
    """``/api/tags`` entries of what the up peers list and this host does not."""
    if state.peers is None:
        return []
    return [
        {"name": e["id"], "model": e["id"], "modified_at": iso(started), "size": 0,
         "digest": _digest(peer, e["id"]), "details": Facts().details()}
        for peer, e, _ in peer_entries(state.peers.views(), mine)
    ]  # fmt: skip


def peer_ps(state: AppState, mine: set[str], wall: datetime) -> list[dict[str, Any]]:
    """``/api/ps`` entries of the peers' models their hosts said were loaded."""
    if state.peers is None:
        return []
    out = []
    for peer, e, pm in peer_entries(state.peers.views(), mine):
        if pm is None or pm.state not in LOADED or e.get("alias_of") or e.get("virtual"):
            continue
        size = pm.need or 0
        out.append({
            "name": e["id"], "model": e["id"], "size": size, "digest": _digest(peer, e["id"]),
            "details": Facts().details(), "expires_at": iso(wall + KEPT_FOR),
            "size_vram": size, "context_length": e.get("context_length") or 0,
        })  # fmt: skip
    return out


async def peer_show(state: AppState, peer: str, name: str, shown: str) -> web.Response:
    """``/api/show`` of ``name`` as ``peer`` answers it (``shown``: the name the
    client asked about)."""
    assert state.peers is not None
    url = state.peers.specs[peer].url + "/api/show"
    headers = {**state.peers.data_headers(peer), "Content-Type": "application/json"}
    try:
        async with state.http.post(url, data=json.dumps({"model": name}), headers=headers,
                                   timeout=aiohttp.ClientTimeout(total=30)) as r:  # fmt: skip
            body = await r.read()
            status = r.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamUnavailable(shown, f"cannot reach peer {peer!r}: {exc}") from exc
    try:
        doc = json.loads(body)
    except ValueError:
        raise UpstreamError(shown, f"peer {peer!r} answered /api/show with no JSON") from None
    out = web.json_response(doc, status=status)
    out.headers["X-Swapyard-Host"] = peer
    return out


def first_name(request: web.Request, name: str) -> str:
    """The name a request for ``name`` tries first: a virtual id's first member by
    its pick rule (once the key may use the virtual id), else ``name``."""
    state: AppState = request.app[STATE]
    if name not in state.config.virtual:
        return name
    allowed = request.get(KEY_MODELS)
    if allowed is not None and name not in allowed:
        raise Forbidden(f"the API key {request.get(KEY_NAME)!r} may not use model {name!r}")
    views = None if state.peers is None else state.peers.views()
    return plan(state.config, name, state.router.snapshot, views).names[0]
