"""llama.cpp's own routes, GET routes that name a model, ``/upstream``, and the
fields clients read in ``/v1/models`` and ``/health`` (issue 14).

Fake engines that answer what they got show where each request went and with
what; a real llama-server with the tiny model shows that ``/infill``,
``/tokenize`` and a ``/completion`` stream through swapyard are the engine's own.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from helpers import config
from swapyard.config import load_config
from swapyard.defaults import ensure_default_models
from swapyard.testing import running_server
from swapyard.testing.server import RunningServer, fake_engine_cmd

ADMIN, PLAIN = "admin-secret", "plain-secret"


def echo(model_id: str) -> dict[str, Any]:
    return {"cmd": fake_engine_cmd(model_id, echo_body=True)}


@pytest.fixture
async def two() -> AsyncIterator[RunningServer]:
    async with running_server(config({"a": echo("a"), "b": echo("b")})) as srv:
        yield srv


async def states(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with http.get(url + "/health") as r:
        return {m: s["state"] for m, s in (await r.json())["models"].items()}


async def test_native_post_takes_the_model_from_the_query_and_swaps(
    two: RunningServer, http: aiohttp.ClientSession
) -> None:
    """``POST /infill?model=a`` reaches a's engine without the ``model`` query; asking
    for b next swaps to b."""
    fim = {"input_prefix": "def f(", "input_suffix": ")\n", "n_predict": 4}
    async with http.post(two.url + "/infill?model=a&t=1", json=fim) as r:
        assert r.status == 200
        assert await r.json() == {"engine": "a", "method": "POST", "path": "/infill?t=1",
                                  "json": fim}  # fmt: skip
    async with http.post(two.url + "/tokenize?model=b", json={"content": "hi"}) as r:
        assert (await r.json())["engine"] == "b"
    assert await states(http, two.url) == {"a": "stopped", "b": "ready"}


async def test_native_post_takes_the_model_from_the_body(
    two: RunningServer, http: aiohttp.ClientSession
) -> None:
    """The body's ``model`` names the engine, and wins over a ``?model=``."""
    for path in ("/completion", "/detokenize", "/apply-template", "/embedding", "/rerank"):
        async with http.post(two.url + path + "?model=a", json={"model": "b"}) as r:
            doc = await r.json()
        assert (doc["engine"], doc["path"]) == ("b", path)


async def test_native_post_without_a_model_is_400_naming_both_ways(
    two: RunningServer, http: aiohttp.ClientSession
) -> None:
    """No model in the body or the query: 400 that says how to give one; nothing starts."""
    async with http.post(two.url + "/infill", json={"input_prefix": "x"}) as r:
        assert r.status == 400
        err = (await r.json())["error"]
    assert err["code"] == "missing_model"
    assert "`model` field" in err["message"] and "?model=NAME" in err["message"]
    async with http.post(two.url + "/tokenize?model=a", data=b"[1, 2]") as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    assert await states(http, two.url) == {"a": "stopped", "b": "stopped"}


async def test_a_key_allowed_one_model_names_it(http: aiohttp.ClientSession) -> None:
    """llama.vscode sends ``/infill`` with no model and no way to add one: a key
    whose allow-list holds one model sends it there; a key for all still gets 400."""
    keys = [{"name": "editor", "key": "k-ed", "models": ["b"]}, {"name": "all", "key": "k-all"}]
    models = {"a": echo("a"), "b": echo("b")}
    text = json.dumps(
        {"scheduler": {"learn_memory": False}, "models": models, "auth": {"keys": keys}}
    )
    async with running_server(load_config(text)) as srv:
        for key, want in (("k-ed", 200), ("k-all", 400)):
            headers = {"Authorization": f"Bearer {key}"}
            async with http.post(srv.url + "/infill", json={}, headers=headers) as r:
                assert r.status == want
                if want == 200:
                    assert (await r.json())["engine"] == "b"


async def test_get_routes_go_to_the_named_model_else_the_one_loaded(
    two: RunningServer, http: aiohttp.ClientSession
) -> None:
    """``GET /props`` with nothing loaded is 400; with ``?model=`` it goes there; then
    ``/slots`` with no model goes to the one loaded; ``/v1/audio/voices`` too."""
    async with http.get(two.url + "/props") as r:
        assert r.status == 400
        assert "none is loaded" in (await r.json())["error"]["message"]
    async with http.get(two.url + "/props?model=b") as r:
        assert await r.json() == {"engine": "b", "method": "GET", "path": "/props", "json": None}
    async with http.get(two.url + "/slots") as r:
        assert (await r.json())["engine"] == "b"
    async with http.get(two.url + "/v1/audio/voices?model=a&lang=en") as r:
        doc = await r.json()
    assert (doc["engine"], doc["path"]) == ("a", "/v1/audio/voices?lang=en")
    async with http.get(two.url + "/v1/models") as r:  # still swapyard's own
        assert [m["id"] for m in (await r.json())["data"]] == ["a", "b"]
    async with http.post(two.url + "/v1/anything", json={"model": "b"}) as r:
        assert (await r.json())["path"] == "/v1/anything"


async def test_upstream_reaches_the_engine_raw_with_the_admin_key_only(
    http: aiohttp.ClientSession,
) -> None:
    """``/upstream/a/...`` loads a and passes any method through as sent (the model's
    parameters are not applied); a plain key is refused, no key is 401."""
    a = {**echo("a"), "params": {"override": {"temperature": 0}}}
    keyed = load_config(json.dumps({
        "scheduler": {"learn_memory": False}, "models": {"a": a},
        "auth": {"admin_key": ADMIN, "keys": [{"name": "user", "key": PLAIN}]},
    }))  # fmt: skip
    async with running_server(keyed) as srv:
        url = srv.url + "/upstream/a/props?x=1"
        async with http.get(url, headers={"Authorization": f"Bearer {PLAIN}"}) as r:
            assert r.status == 403
        async with http.get(url) as r:
            assert r.status == 401
        assert await states(http, srv.url) == {"a": "stopped"}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(url, headers=admin) as r:
            assert await r.json() == {"engine": "a", "method": "GET", "path": "/props?x=1",
                                      "json": None}  # fmt: skip
        raw = b'{"model": "whatever",  "temperature": 1}'
        async with http.put(srv.url + "/upstream/a/v1/x", data=raw, headers=admin) as r:
            doc = await r.json()
        assert (doc["method"], doc["json"]) == ("PUT", json.loads(raw))
        async with http.post(srv.url + "/completion?model=a", json={"temperature": 1},
                             headers={"Authorization": f"Bearer {PLAIN}"}) as r:  # fmt: skip
            assert (await r.json())["json"]["temperature"] == 0  # a data route: applied


async def test_model_list_says_status_context_and_owner(http: aiohttp.ClientSession) -> None:
    """``/v1/models`` and ``/v1/models/{id}``: llama.cpp's ``status.value``, the
    context length under the names clients read, ``owned_by`` and ``created``."""
    cfg = config({"a": {**echo("a"), "aliases": ["alpha"]},
                  "b": {"cmd": fake_engine_cmd("b") + " -c 4096"}})  # fmt: skip
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/completion?model=a", json={}) as r:
            assert r.status == 200
        async with http.get(srv.url + "/v1/models") as r:
            data = {m["id"]: m for m in (await r.json())["data"]}
        a, b = data["a"], data["b"]
        assert (a["state"], a["status"]) == ("ready", {"value": "loaded"})
        assert (b["state"], b["status"]) == ("stopped", {"value": "unloaded"})
        assert "context_length" not in a  # a fake engine's context is not known
        assert b["context_length"] == b["max_model_len"] == b["meta"]["n_ctx"] == 4096
        assert a["owned_by"] == "swapyard" and isinstance(a["created"], int)
        async with http.get(srv.url + "/v1/models/alpha") as r:
            assert await r.json() == a


async def test_health_says_the_current_models(
    two: RunningServer, http: aiohttp.ClientSession
) -> None:
    """``/health``: ``current_model`` is None, then the model that is ready."""
    async with http.get(two.url + "/health") as r:
        doc = await r.json()
    assert (doc["current_model"], doc["current_models"]) == (None, [])
    async with http.post(two.url + "/completion", json={"model": "b"}) as r:
        assert r.status == 200
    async with http.get(two.url + "/health") as r:
        doc = await r.json()
    assert (doc["current_model"], doc["current_models"]) == ("b", ["b"])


# -- a real llama-server -------------------------------------------------------------

LLAMA_SERVER = Path.home() / ".cache" / "swapyard" / "llama-server-0.3.36" / "llama-server"
GREEDY = {"temperature": 0, "top_k": 1, "seed": 7, "cache_prompt": False}


@pytest.fixture
async def tiny() -> AsyncIterator[RunningServer]:
    binary = os.environ.get("SWAPYARD_LLAMA_SERVER") or str(LLAMA_SERVER)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"no llama-server at {binary}: run scripts/build-llama-server")
    model = ensure_default_models()["tiny"]
    cmd = [binary, "-m", str(model), "--port", "${PORT}", "-c", "512", "-t", "2", "-np", "1"]
    async with running_server(config({"tiny": {"cmd": cmd, "start_timeout": 60}})) as srv:
        yield srv


def direct(srv: RunningServer) -> str:
    upstream = srv.router.model("tiny").engine.upstream
    assert upstream is not None
    return upstream


@pytest.mark.llamacpp
async def test_infill_and_tokenize_through_swapyard_are_the_engines_own(
    tiny: RunningServer, http: aiohttp.ClientSession
) -> None:
    """A code completion on ``/infill?model=`` and a ``/tokenize`` through swapyard
    answer what the same engine answers asked directly."""
    fim = {"input_prefix": "def add(a, b):\n    return ", "input_suffix": "\n\nprint(add(1, 2))\n",
           "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}],
           "n_predict": 12, **GREEDY}  # fmt: skip
    async with http.post(tiny.url + "/infill?model=tiny", json=fim) as r:
        assert r.status == 200, await r.text()
        ours = await r.json()
    async with http.post(direct(tiny) + "/infill", json=fim) as r:
        theirs = await r.json()
    assert ours["content"] and ours["tokens_predicted"] == 12
    keep = ("content", "tokens_predicted", "tokens_evaluated", "stop_type")
    assert {k: ours[k] for k in keep} == {k: theirs[k] for k in keep}

    text = {"content": "def add(a, b):\n    return a + b", "with_pieces": True}
    async with http.post(tiny.url + "/tokenize", json={**text, "model": "tiny"}) as r:
        ours = await r.json()
    async with http.post(direct(tiny) + "/tokenize", json=text) as r:
        assert ours == await r.json()
    async with http.post(tiny.url + "/detokenize?model=tiny", json={"tokens": [1604]}) as r:
        assert (await r.json())["content"] == "def"


@pytest.mark.llamacpp
async def test_completion_streams_through_swapyard(
    tiny: RunningServer, http: aiohttp.ClientSession
) -> None:
    """``POST /completion`` with ``stream: true`` comes as the engine's SSE events,
    the same tokens as the engine's own stream, the last one with ``stop: true``."""

    async def events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        async with http.post(url, json=body) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            text = (await r.read()).decode()
        return [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: ")]

    body = {"prompt": "Once upon a time", "n_predict": 10, "stream": True, **GREEDY}
    ours = await events(tiny.url + "/completion?model=tiny", body)
    theirs = await events(direct(tiny) + "/completion", body)
    assert len(ours) > 2 and ours[-1]["stop"] is True
    assert "".join(e["content"] for e in ours) == "".join(e["content"] for e in theirs)
    async with http.get(tiny.url + "/props") as r:  # the one loaded model
        assert (await r.json())["default_generation_settings"]["n_ctx"] == 512
    async with http.get(tiny.url + "/v1/models") as r:
        (entry,) = (await r.json())["data"]
    assert entry["status"] == {"value": "loaded"}
    assert entry["context_length"] == 512 and entry["meta"] == {"n_ctx": 512, "n_ctx_train": 2048}


async def test_no_other_get_reaches_an_engine_on_a_data_route(
    two: RunningServer, http: aiohttp.ClientSession
) -> None:
    """Review of issue 14: ``GET /v1/files?model=a`` is not forwarded (a hosted API
    would read the operator's account with the engine's key): 404, nothing starts."""
    for path in ("/v1/files?model=a", "/v1/batches/x?model=a", "/v1/files/f/content?model=a"):
        async with http.get(two.url + path) as r:
            assert r.status in (404, 405), path
    assert await states(http, two.url) == {"a": "stopped", "b": "stopped"}


@pytest.mark.parametrize(
    "path", ["/v1/../secret?model=a", "/v1/%2E%2E/admin/flush", "/v1/./chat/completions"]
)
async def test_dot_segments_are_refused_before_anything_is_forwarded(
    path: str, http: aiohttp.ClientSession
) -> None:
    """Review of issue 14: ``/v1/../x`` matched ``/v1/{tail}`` and the engine got ``/x``
    with its own credentials, on a plain key. Now a 400 and no engine starts."""
    keys = [{"name": "onlya", "key": "k-a", "models": ["a"]}]
    text = json.dumps({"scheduler": {"learn_memory": False}, "auth": {"keys": keys},
                       "models": {"a": echo("a")}})  # fmt: skip
    async with running_server(load_config(text)) as srv:
        url = URL(srv.url + path, encoded=True)
        headers = {"Authorization": "Bearer k-a"}
        for method in ("GET", "POST"):
            async with http.request(method, url, json={"model": "a"}, headers=headers) as r:
                assert r.status == 400, (method, await r.text())
                assert "segments" in (await r.json())["error"]["message"]
        assert srv.router.model("a").state == "stopped"


async def test_get_without_a_model_picks_only_a_model_the_key_may_use(
    http: aiohttp.ClientSession,
) -> None:
    """A key allowed only b, with a loaded: ``GET /props`` does not go to a (nor name
    it), and an unknown model's error lists b alone."""
    keys = [{"name": "onlyb", "key": "k-b", "models": ["b"]}, {"name": "all", "key": "k-all"}]
    text = json.dumps({"scheduler": {"learn_memory": False}, "auth": {"keys": keys},
                       "models": {"a": echo("a"), "b": echo("b"), "c": echo("c")}})  # fmt: skip
    async with running_server(load_config(text)) as srv:
        async with http.get(srv.url + "/props?model=a",
                            headers={"Authorization": "Bearer k-all"}) as r:  # fmt: skip
            assert r.status == 200
        only_b = {"Authorization": "Bearer k-b"}
        async with http.get(srv.url + "/slots", headers=only_b) as r:
            assert (await r.json())["engine"] == "b"  # its key's one model, not the loaded a
        async with http.post(srv.url + "/v1/chat/completions", json={"model": "zz"},
                             headers=only_b) as r:  # fmt: skip
            assert r.status == 404
            message = (await r.json())["error"]["message"]
        assert "b" in message and "'a'" not in message and "'c'" not in message
