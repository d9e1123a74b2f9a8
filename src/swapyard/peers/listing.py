"""What the front's lists show of its peers (issue 15): one model list over every
host, and each peer's state for the admin routes and ``swapyard ps``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from swapyard.peers.view import PeerView

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
