"""Virtual models (issue 15): an id over several models, each request served by
the best available one by its pick rule; listed with its members; usable by a
key whose allow-list names it. Fake engines run as real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from test_fallbacks import CHAT, answer_of, ask, cfg, chat

from swapyard.api.fallbacks import order, plan
from swapyard.config import Listed
from swapyard.errors import ConfigError
from swapyard.process.state import EngineState
from swapyard.surface import EngineView, ModelSnapshot, Snapshot
from swapyard.testing import fake_engine_cmd, running_server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def two(**b: Any) -> dict[str, Any]:
    return {"a": {"cmd": fake_engine_cmd("a")}, "b": {"cmd": fake_engine_cmd("b", **b)}}


# -- config ------------------------------------------------------------------------
def test_a_virtual_id_is_listed_last_with_its_members() -> None:
    """Config.listing(virtual=True) ends with the virtual ids; the plain listing
    (Ollama's, every engine-backed list) has none."""
    c = cfg(two(), virtual={"any": {"models": ["a", "b"], "name": "Any model"}})
    assert c.listing(virtual=True)[-1] == Listed("any", "any", "Any model", members=("a", "b"))
    assert [i.id for i in c.listing()] == ["a", "b"]
    assert c.virtual["any"].pick == "loaded-first"


@pytest.mark.parametrize(
    ("virtual", "message"),
    [
        ({"a": {"models": ["b"]}}, "already a model's name"),
        ({"bee": {"models": ["a"]}}, "already a model's name"),
        ({"v": {"models": ["a", "nope"]}}, "'nope' is not a model"),
        ({"v": {"models": ["a", "a"]}}, "listed twice"),
        ({"v": {"models": ["a"]}, "w": {"models": ["v"]}}, "no nesting"),
        ({"v": {"models": []}}, "virtual.v.models"),
        ({"v": {"models": ["a"], "pick": "cheapest"}}, "virtual.v.pick"),
    ],
)
def test_bad_virtual_ids_are_refused_at_load(virtual: dict[str, Any], message: str) -> None:
    """A virtual id that clashes with a model's name, members that name nothing, a
    member twice, a virtual member, no members and an unknown pick rule are errors."""
    models = {"a": {"cmd": "x ${PORT}"}, "b": {"cmd": "y ${PORT}", "aliases": ["bee"]}}
    with pytest.raises(ConfigError, match=message):
        cfg(models, virtual=virtual)


# -- pick rules ----------------------------------------------------------------------
async def test_loaded_first_picks_the_member_already_loaded(http: aiohttp.ClientSession) -> None:
    """loaded-first: with b loaded, a request for the virtual id goes to b, not
    to a, which is listed first but would have to load."""
    async with running_server(cfg(two(), virtual={"any": {"models": ["a", "b"]}})) as srv:
        assert (await ask(http, srv.url, "b"))[0] == 200
        status, body, headers = await ask(http, srv.url, "any")
        assert status == 200 and answer_of(body).startswith("b:")
        assert headers["X-Swapyard-Model"] == "b"
        assert srv.router.model("a").state is EngineState.STOPPED


async def test_in_order_picks_the_first_member_even_when_another_is_loaded(
    http: aiohttp.ClientSession,
) -> None:
    """in-order: the first member serves, whatever is loaded."""
    virtual = {"first": {"models": ["a", "b"], "pick": "in-order"}}
    async with running_server(cfg(two(), virtual=virtual)) as srv:
        assert (await ask(http, srv.url, "b"))[0] == 200
        status, body, headers = await ask(http, srv.url, "first")
        assert status == 200 and answer_of(body).startswith("a:")
        assert headers["X-Swapyard-Model"] == "a"


async def test_fits_first_picks_the_member_that_fits_without_evicting(
    http: aiohttp.ClientSession,
) -> None:
    """fits-first: with `held` taking 2 of 3 GiB, the 2 GiB member would need it
    stopped and the 1 GiB one fits now: the 1 GiB one serves, `held` stays."""
    models = {
        m: {"cmd": fake_engine_cmd(m), "memory": mem}
        for m, mem in (("held", "2GiB"), ("roomy", "2GiB"), ("small", "1GiB"))
    }
    virtual = {"fit": {"models": ["roomy", "small"], "pick": "fits-first"}}
    config = cfg(models, virtual=virtual, devices={"gpu0": {"memory": "3GiB"}})
    async with running_server(config) as srv:
        assert (await ask(http, srv.url, "held"))[0] == 200
        status, body, headers = await ask(http, srv.url, "fit")
        assert status == 200 and answer_of(body).startswith("small:")
        assert headers["X-Swapyard-Model"] == "small"
        assert srv.router.model("held").state is EngineState.READY


async def test_a_virtual_id_moves_on_when_its_pick_cannot_serve(
    http: aiohttp.ClientSession,
) -> None:
    """A member that fails to start hands the request to the next one."""
    models = {"a": {"cmd": fake_engine_cmd("a", exit_on_start=1)}, "b": two()["b"]}
    virtual = {"v": {"models": ["a", "b"], "pick": "in-order"}}
    async with running_server(cfg(models, virtual=virtual)) as srv:
        status, body, headers = await ask(http, srv.url, "v")
        assert status == 200 and answer_of(body).startswith("b:")
        assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Fallback-From"]) == ("b", "a")


# -- the model list and keys ----------------------------------------------------------
async def test_models_list_shows_a_virtual_id_with_its_members(
    http: aiohttp.ClientSession,
) -> None:
    """/v1/models has the virtual id with `virtual: true` and its members; its
    state is that of the member it would pick now; /v1/models/{id} shows it too."""
    async with running_server(cfg(two(), virtual={"any": {"models": ["a", "b"]}})) as srv:
        assert (await ask(http, srv.url, "b"))[0] == 200
        async with http.get(srv.url + "/v1/models") as r:
            data = {e["id"]: e for e in (await r.json())["data"]}
        entry = data["any"]
        assert (entry["virtual"], entry["members"], entry["state"]) == (True, ["a", "b"], "ready")
        assert entry["status"] == {"value": "loaded"}
        async with http.get(srv.url + "/v1/models/any") as r:
            assert r.status == 200 and (await r.json())["members"] == ["a", "b"]


async def test_a_key_allowed_a_virtual_id_uses_its_members_only_through_it(
    http: aiohttp.ClientSession,
) -> None:
    """A key whose allow-list names the virtual id is served through it, sees only
    it listed, and may not name its members directly; another key may not use it."""
    auth = {"keys": [{"name": "v", "key": "k-v", "models": ["any"]},
                     {"name": "a", "key": "k-a", "models": ["a"]}]}  # fmt: skip
    config = cfg(two(), virtual={"any": {"models": ["a", "b"]}}, auth=auth)
    async with running_server(config) as srv:
        kv, ka = {"Authorization": "Bearer k-v"}, {"Authorization": "Bearer k-a"}
        async with http.post(srv.url + CHAT, json=chat("any"), headers=kv) as r:
            assert r.status == 200 and r.headers["X-Swapyard-Model"] == "a"
        async with http.post(srv.url + CHAT, json=chat("b"), headers=kv) as r:
            assert r.status == 403
        async with http.get(srv.url + "/v1/models", headers=kv) as r:
            assert [e["id"] for e in (await r.json())["data"]] == ["any"]
        async with http.post(srv.url + CHAT, json=chat("any"), headers=ka) as r:
            assert r.status == 403
        async with http.get(srv.url + "/v1/models/any", headers=ka) as r:
            assert r.status == 403


# -- the order, from one snapshot (pure) ------------------------------------------
def _snap(states: dict[str, EngineState]) -> Snapshot:
    return Snapshot({m: ModelSnapshot(m, EngineView(state=s)) for m, s in states.items()}, {})


def test_loaded_first_orders_ready_asleep_loading_stopped_then_failed() -> None:
    """loaded-first ranks by engine state; listed order among equals."""
    names = ["f", "s1", "l", "z", "r", "s2"]
    c = cfg({n: {"cmd": "x ${PORT}"} for n in names})
    S = EngineState
    snap = _snap({"f": S.BACKOFF, "s1": S.STOPPED, "l": S.STARTING, "z": S.SLEEPING,
                  "r": S.READY, "s2": S.STOPPED})  # fmt: skip
    assert order(names, "loaded-first", c, lambda: snap) == ("r", "z", "l", "s1", "s2", "f")
    assert order(names, "in-order", c, lambda: snap) == tuple(names)


def test_a_fallback_naming_a_virtual_id_stands_for_its_members_each_once() -> None:
    """A model's fallbacks expand a virtual id into its members by its pick rule;
    a name reached twice (the model itself, an alias) is tried once."""
    models = {"a": {"cmd": "x ${PORT}", "aliases": ["ay"], "fallbacks": ["any"]},
              "b": {"cmd": "y ${PORT}"}, "c": {"cmd": "z ${PORT}"}}  # fmt: skip
    c = cfg(models, virtual={"any": {"models": ["ay", "c", "b"]}})
    snap = _snap({"a": EngineState.STOPPED, "b": EngineState.READY, "c": EngineState.STOPPED})
    assert plan(c, "a", lambda: snap).names == ("a", "b", "c")
