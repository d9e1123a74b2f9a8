"""What the front's lists show of its peers (issue 15): one model list over every
host, and each peer's state for the admin routes and ``swapyard ps``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from swapyard.peers.view import PeerModel, PeerView

LOCAL = "local"  # this host, in ``hosts`` and the X-Swapyard-Host header


def merged_listing(
    local: Iterable[dict[str, Any]], views: Mapping[str, PeerView]
) -> list[dict[str, Any]]:
    """This host's entries, then each up peer's (in config order), every name once:
    ``hosts`` says which hosts serve it; the first host's entry gives the other
    fields. A host that is down is left out: it cannot serve anything now."""
    out: dict[str, dict[str, Any]] = {}
    for entry in local:
        out[entry["id"]] = {**entry, "hosts": [LOCAL]}
    for view in views.values():
        if not view.up:
            continue
        for theirs in view.listing:
            have = out.get(theirs["id"])
            if have is None:
                out[theirs["id"]] = {**theirs, "hosts": [view.name]}
            elif view.name not in have["hosts"]:
                have["hosts"].append(view.name)
    return list(out.values())


def peer_entries(
    views: Mapping[str, PeerView], mine: AbstractSet[str]
) -> list[tuple[str, Mapping[str, Any], PeerModel | None]]:
    """What the up peers list that this host does not (``mine``: the names it
    lists), every name once, the first peer's (config order): (peer, its entry,
    what it said of the model that serves the name, if it did). For the lists
    that have no ``hosts`` field (Ollama's ``/api/tags`` and ``/api/ps``)."""
    out: dict[str, tuple[str, Mapping[str, Any], PeerModel | None]] = {}
    for view in views.values():
        if not view.up:
            continue
        for entry in view.listing:
            name = entry["id"]
            if name in mine or name in out:
                continue
            model = view.model_of(name)
            out[name] = (view.name, entry, None if model is None else view.models.get(model))
    return list(out.values())


def peer_entry(views: Mapping[str, PeerView], name: str) -> dict[str, Any] | None:
    """The entry ``/v1/models`` shows for ``name`` (a listed id, or an alias or a
    model id a peer knows) when only peers serve it; None when no up peer does."""
    model = next((m for v in views.values() if v.up and (m := v.model_of(name))), None)
    if model is None:
        return None
    merged = merged_listing((), views)
    return next((e for e in merged if e["id"] == name), None) or next(
        (e for e in merged if e["id"] == model), None
    )


def peer_json(view: PeerView, now: float) -> dict[str, Any]:
    """One peer as ``GET /api/models`` shows it (never its keys)."""
    return {
        "url": view.url,
        "up": view.up,
        "for_s": round(now - view.since, 3),
        "error": view.error,
        "models": {
            m.id: {
                "state": m.state,
                "in_flight": m.in_flight,
                "queued": m.queued,
                "memory": m.need,
                "fits": m.fits,
            }
            for m in view.models.values()
        },
    }
