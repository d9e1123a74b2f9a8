"""Routing decisions and what is read of a peer (issue 15): pure, no loop, no process."""

from __future__ import annotations

from types import MappingProxyType

from swapyard.peers.choose import Option, Target, plan
from swapyard.peers.listing import merged_listing
from swapyard.peers.view import PeerView
from swapyard.peers.watch import models_of, names_of

HERE, B, C = Target(None, "m"), Target("b", "m"), Target("c", "m")


def test_ready_host_comes_before_sleeping_and_stopped() -> None:
    """Ready first, then sleeping, then one already loading, then one to load."""
    got = plan([
        Option(HERE, "stopped", fits=True), Option(B, "sleeping"),
        Option(C, "ready", load=7), Option(Target("d", "m"), "starting"),
    ])  # fmt: skip
    assert got == [C, B, Target("d", "m"), HERE]


def test_replicas_ready_on_two_hosts_are_balanced_by_queue() -> None:
    """Of two ready hosts, the one with fewer requests queued and running goes first."""
    assert plan([Option(B, "ready", load=3), Option(C, "ready", load=1)]) == [C, B]


def test_equal_hosts_keep_their_order() -> None:
    """Ties keep the order given: this host first, then the peers in config order."""
    assert plan([Option(HERE, "ready"), Option(B, "ready")]) == [HERE, B]


def test_to_load_room_now_then_queue_then_shorter_load() -> None:
    """Among stopped hosts: room now first, then the shorter queue, then the shorter load."""
    d, e = Target("d", "m"), Target("e", "m")
    got = plan([
        Option(HERE, "stopped", fits=None), Option(B, "stopped", fits=True, load=2),
        Option(C, "stopped", fits=True, load=1, load_s=9.0),
        Option(d, "stopped", fits=True, load=1, load_s=2.0), Option(e, "failed"),
    ])  # fmt: skip
    assert got == [d, C, B, HERE, e]


def test_host_without_room_or_failed_comes_last() -> None:
    """A stopped model that does not fit, or a failed one, is tried only after the rest."""
    got = plan([Option(B, "stopped", fits=False), Option(C, "backoff"), Option(HERE, "stopped")])
    assert got == [HERE, B, C]


def test_snapshot_reads_state_queue_and_room() -> None:
    """A host's /api/models: each model's state, queue and whether it fits the freest device."""
    doc = {
        "devices": {"gpu0": {"free": 100}, "gpu1": {"free": 300}},
        "models": {
            "a": {"state": "ready", "in_flight": 2, "queued": 1, "memory": {"scheduled": 50}},
            "b": {"state": "stopped", "in_flight": 0, "queued": 0, "memory": {"scheduled": 400}},
            "c": {"state": "stopped", "memory": {"scheduled": None}},
        },
    }
    got = models_of(doc)
    assert (got["a"].state, got["a"].in_flight, got["a"].queued) == ("ready", 2, 1)
    assert (got["a"].fits, got["b"].fits, got["c"].fits) == (True, False, None)


def test_listing_maps_aliases_and_variants_to_their_model() -> None:
    """A host's /v1/models names: a variant → its model, an alias of a variant → that model."""
    doc = {"data": [
        {"id": "m"}, {"id": "m-fast", "variant_of": "m"},
        {"id": "quick", "alias_of": "m-fast", "variant_of": "m"}, {"id": "mm", "alias_of": "m"},
    ]}  # fmt: skip
    _, names = names_of(doc)
    assert names == {"m": "m", "m-fast": "m", "quick": "m", "mm": "m"}


def _view(name: str, ids: list[str], up: bool = True) -> PeerView:
    listing = tuple({"id": i, "object": "model"} for i in ids)
    return PeerView(name, f"http://{name}", up, 0.0, listing=listing)


def test_merged_listing_shows_each_name_once_with_its_hosts() -> None:
    """Every up host's names once, with the hosts that serve each; a down host's are left out."""
    views = MappingProxyType({
        "b": _view("b", ["x", "y"]), "c": _view("c", ["y", "z"]), "d": _view("d", ["w"], up=False),
    })  # fmt: skip
    got = merged_listing([{"id": "x", "object": "model"}], views)
    assert [(e["id"], e["hosts"]) for e in got] == [
        ("x", ["local", "b"]), ("y", ["b", "c"]), ("z", ["c"])
    ]  # fmt: skip
