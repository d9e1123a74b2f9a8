"""Bad input gets a clear OpenAI-shaped error and changes nothing (no engine started).

The HTTP layer's checks need no engine process: they run against a ``FakeRouter``,
which also shows that a bad request never asked the router for a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from helpers import config
from swapyard.testing import FakeRouter, fake_engine_cmd, running_server

MODELS = {
    "alpha": {"cmd": fake_engine_cmd("alpha")},
    "beta": {"cmd": fake_engine_cmd("beta")},
    "secret": {"cmd": fake_engine_cmd("secret"), "unlisted": True},
}


@pytest.fixture
async def srv_http() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    cfg = config(MODELS, max_body_bytes=4096)
    router = FakeRouter(cfg)
    async with running_server(cfg, router) as srv:
        async with aiohttp.ClientSession() as http:
            yield srv.url, http
            async with http.get(srv.url + "/health") as r:
                states = {m: s["state"] for m, s in (await r.json())["models"].items()}
            assert states == dict.fromkeys(MODELS, "stopped"), "a bad request started an engine"
            assert router.acquired == [], "a bad request reached the router"


async def post(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(url + "/v1/chat/completions", **kw) as r:
        return r.status, (await r.json())["error"]


async def test_unknown_model_is_404_naming_the_models_that_exist(
    srv_http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, http = srv_http
    status, err = await post(http, url, json={"model": "gamma", "messages": []})
    assert status == 404
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"
    assert err["source"] == "swapyard"
    assert "'gamma'" in err["message"] and "alpha, beta" in err["message"]
    assert "secret" not in err["message"]


async def test_malformed_json_is_400(srv_http: tuple[str, aiohttp.ClientSession]) -> None:
    url, http = srv_http
    status, err = await post(
        http, url, data=b'{"model": "alpha",', headers={"Content-Type": "application/json"}
    )
    assert (status, err["code"], err["type"]) == (400, "invalid_json", "invalid_request_error")


async def test_json_that_is_not_an_object_is_400(
    srv_http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, http = srv_http
    status, err = await post(http, url, json=["alpha"])
    assert (status, err["code"]) == (400, "invalid_json")


async def test_missing_model_is_400(srv_http: tuple[str, aiohttp.ClientSession]) -> None:
    url, http = srv_http
    body: dict[str, Any]
    for body in ({"messages": []}, {"model": "", "messages": []}, {"model": 3}):
        status, err = await post(http, url, json=body)
        assert (status, err["code"], err["param"]) == (400, "missing_model", "model")


async def test_body_over_the_limit_is_413(srv_http: tuple[str, aiohttp.ClientSession]) -> None:
    url, http = srv_http
    big = {"model": "alpha", "messages": [{"role": "user", "content": "x" * 5000}]}
    status, err = await post(http, url, json=big)
    assert status == 413
    assert err["code"] == "request_too_large"
    assert "4096 bytes" in err["message"]


async def test_unknown_route_is_an_openai_shaped_404(
    srv_http: tuple[str, aiohttp.ClientSession],
) -> None:
    url, http = srv_http
    async with http.get(url + "/v2/nothing") as r:
        assert r.status == 404
        assert (await r.json())["error"]["code"] == "not_found"
    async with http.delete(url + "/v1/chat/completions") as r:
        assert r.status == 405
        assert (await r.json())["error"]["type"] == "invalid_request_error"


async def test_engine_that_fails_to_start_is_503_naming_the_model_and_cause() -> None:
    """The client is told which model failed and why; its log lines stay with the
    admin routes (issue 11: they hold the command line)."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", exit_on_start=3)}})
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        status, err = await post(http, srv.url, json={"model": "m", "messages": []})
        async with http.get(srv.url + "/api/models") as r:
            last = (await r.json())["models"]["m"]["last_error"]
    assert status == 503
    assert err["code"] == "engine_exited"
    assert err["source"] == "swapyard"
    assert err["message"] == (
        "model 'm' failed to start: the process exited with code 3 before it became ready"
    )
    assert "detail" not in err
    assert last["code"] == "engine_exited"
    assert "file is corrupt (simulated)" in last["detail"]


async def test_engine_that_never_gets_ready_is_503_after_start_timeout() -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", never_healthy=True), "start_timeout": 3}})
    async with running_server(cfg) as srv, aiohttp.ClientSession() as http:
        status, err = await post(http, srv.url, json={"model": "m", "messages": []})
    assert status == 503
    assert err["code"] == "engine_start_timeout"
    assert "did not answer 200 within 3 s" in err["message"]
    assert "[fake-engine] listening" not in err["message"]
