"""The request path over peers (issue 15, the review's findings): a fallback
moves past a peer's model that answers an error; a hung peer's request moves to
a replica; the answer names the model a peer served; a key's allow-list over a
virtual id with a peer's member, and no word about a peer a key may not use;
mutual peers never loop; a peer's model asked for before the peer was contacted.
A front on 127.0.0.1 (in this process), peers on 127.0.0.2/.3 (``swapyard serve``
processes), fake engines everywhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from peer_hosts import Host, engine, host
from test_peers_fronts import remote, remote_server

from helpers import eventually
from swapyard.api.app import start_server
from swapyard.api.state import STATE
from swapyard.config import Config, load_config
from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd, running_server

B, C = "127.0.0.2", "127.0.0.3"
HI = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
LIMIT = aiohttp.ClientTimeout(total=60)  # a hang or a loop fails the test, not the suite


def front(peers: dict[str, str], models: dict[str, Any], **top: Any) -> Config:
    doc = {
        "server": {"loading_status": "reasoning", **top.pop("server", {})},
        "scheduler": {"learn_memory": False},
        "models": models,
        "peers": {name: {"url": url, "timeout": 1} for name, url in peers.items()},
        **top,
    }
    return load_config(json.dumps(doc))


def of(*hosts: Host) -> dict[str, str]:
    return {h.name: h.url for h in hosts}


async def peers_up(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url + "/api/models") as r:
        return all(p["up"] and p["models"] for p in (await r.json())["peers"].values())


async def ask(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """Status, body (parsed; the raw text of a stream) and headers of one chat."""
    doc = {"model": model, "messages": HI, "max_tokens": 4, "stream": stream}
    async with http.post(url + CHAT, json=doc, headers=headers) as r:
        text = await r.text()
        return r.status, text if stream else json.loads(text), dict(r.headers)


def said(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


async def test_fallback_moves_past_a_peers_model_that_answers_an_error(tmp_path: Path) -> None:
    """Issue 15 review: local a (cannot start) → peer's pb (cannot start, then one
    answering HTTP 500) → remote r. The peer's error is not the answer: r serves
    it, streamed or not, and a stream carries no loading status from the peer."""
    models = {"a": {"cmd": fake_engine_cmd("a", exit_on_start=1), "fallbacks": ["pb", "r"]}}
    for pb in (engine("pb", exit_on_start=1), engine("pb", error_status=500)):
        async with (
            remote_server("hosted") as url,
            host(tmp_path, "b", B, {"pb": pb}) as b,
            running_server(front(of(b), {**models, "r": remote(url, "hosted")})) as a,
            aiohttp.ClientSession(timeout=LIMIT) as http,
        ):
            await eventually(lambda: peers_up(http, a.url))
            status, body, headers = await ask(http, a.url, "a")
            assert status == 200, body
            assert said(body).startswith("hosted:")
            assert headers["X-Swapyard-Model"] == "r"
            assert headers["X-Swapyard-Fallback-From"] == "a, pb"
            status, text, headers = await ask(http, a.url, "a", stream=True)
            assert status == 200 and headers["X-Swapyard-Model"] == "r"
            assert "reasoning" not in text and '"error"' not in text and "[DONE]" in text
            await a.router.unload("r")


async def test_request_to_a_hung_peer_moves_to_a_replica(tmp_path: Path) -> None:
    """Issue 15 review: c has the model ready, b a stopped replica; c stops
    answering (SIGSTOP) with the request sent to it: once the front finds c
    hung, the request is served by b (nothing went to the client), not a 502."""
    async with (
        host(tmp_path, "b", B, {"beta": engine("beta")}) as b,
        host(tmp_path, "c", C, {"beta": engine("beta")}, preload=["beta"]) as c,
        running_server(front(of(b, c), {})) as a,
        aiohttp.ClientSession(timeout=LIMIT) as http,
    ):
        await eventually(lambda: peers_up(http, a.url))
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            status, body, headers = await ask(http, a.url, "beta")
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        assert status == 200, body
        assert said(body).startswith("beta:") and headers["X-Swapyard-Host"] == "b"


async def test_answer_names_the_model_a_peer_served(tmp_path: Path) -> None:
    """Issue 15 review: a peer's own fallback and a peer's virtual id: the
    answer's X-Swapyard-Model is the model that served it there, and
    X-Swapyard-Fallback-From lists the front's tried names, then the peer's."""
    peer_models = {
        "pm": {**engine("pm", exit_on_start=1), "fallbacks": ["pq"]},
        "pq": engine("pq"),
    }
    models = {"l": {"cmd": fake_engine_cmd("l", exit_on_start=1), "fallbacks": ["pm"]}}
    async with (
        host(tmp_path, "b", B, peer_models, virtual={"anyb": {"models": ["pq"]}}) as b,
        running_server(front(of(b), models)) as a,
        aiohttp.ClientSession(timeout=LIMIT) as http,
    ):
        await eventually(lambda: peers_up(http, a.url))
        for name, tried in (("pm", "pm"), ("l", "l, pm"), ("anyb", None)):
            for stream in (False, True):
                status, body, headers = await ask(http, a.url, name, stream=stream)
                assert status == 200, body
                assert headers["X-Swapyard-Model"] == "pq", (name, stream)
                assert headers.get("X-Swapyard-Fallback-From") == tried, (name, stream)
                assert headers["X-Swapyard-Host"] == "b"


async def test_key_allowed_a_virtual_id_reaches_its_peers_member(tmp_path: Path) -> None:
    """Issue 15 review: a key whose allow-list names a virtual id is served by
    its member on a peer; a key allowed only a local model asking for a peer's
    model gets the same 404 with the peer up and down, naming no peer."""
    auth = {"keys": [{"name": "v", "key": "k-v", "models": ["any"]},
                     {"name": "l", "key": "k-l", "models": ["l"]}]}  # fmt: skip
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha")}) as b,
        running_server(front(of(b), {"l": engine("l")}, auth=auth,
                             virtual={"any": {"models": ["alpha"]}})) as a,
        aiohttp.ClientSession(timeout=LIMIT) as http,
    ):  # fmt: skip
        await eventually(lambda: _up(http, a.url))
        status, body, headers = await ask(http, a.url, "any", headers=bearer("k-v"))
        assert status == 200, body
        assert said(body).startswith("alpha:") and headers["X-Swapyard-Host"] == "b"
        up = await ask(http, a.url, "alpha", headers=bearer("k-l"))
        await b.die()
        await eventually(lambda: _down(http, a.url))
        down = await ask(http, a.url, "alpha", headers=bearer("k-l"))
        assert up[0] == down[0] == 404
        assert up[1] == down[1] and "'b'" not in json.dumps(down[1])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _peers(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/api/models") as r:
        return dict((await r.json())["peers"])


async def _up(http: aiohttp.ClientSession, url: str) -> bool:
    return all(p["up"] for p in (await _peers(http, url)).values())


async def _down(http: aiohttp.ClientSession, url: str) -> bool:
    return not any(p["up"] for p in (await _peers(http, url)).values())


@asynccontextmanager
async def swapyard_at(config: Config, addr: str, port: int) -> AsyncIterator[Any]:
    """A swapyard served in this process on ``addr:port``: its app state."""
    runner = await start_server(config, addr, port)
    try:
        yield runner.app[STATE]
    finally:
        await runner.cleanup()


async def test_mutual_peers_never_send_a_request_round_a_loop(tmp_path: Path) -> None:
    """Issue 15 review: a and b list each other as peers and serve each other's
    models; a request that came from a peer (X-Swapyard-Via) is served by this
    host's engines only (a peer's model: 404, not sent on), and one carrying this
    swapyard's own id is refused with 508 Loop Detected."""
    port = PortAllocator().allocate()
    url = f"http://127.0.0.1:{port}"
    async with (
        host(tmp_path, "b", B, {"y": engine("y")}, peers={"a": {"url": url, "timeout": 1}}) as b,
        swapyard_at(front(of(b), {"x": engine("x")}), "127.0.0.1", port) as a,
        aiohttp.ClientSession(timeout=LIMIT) as http,
    ):
        await eventually(lambda: _up(http, url))
        await eventually(lambda: _up(http, b.url))
        status, body, headers = await ask(http, url, "y")
        assert status == 200 and headers["X-Swapyard-Host"] == "b", body
        status, body, headers = await ask(http, b.url, "x")
        assert status == 200 and headers["X-Swapyard-Host"] == "a", body
        status, body, _ = await ask(http, url, "y", headers={"X-Swapyard-Via": "elsewhere"})
        assert status == 404 and body["error"]["code"] == "model_not_found"
        via = {"X-Swapyard-Via": f"elsewhere, {a.instance}"}
        status, body, _ = await ask(http, url, "x", headers=via)
        assert status == 508 and body["error"]["code"] == "loop_detected"


async def test_peers_model_before_the_peer_was_contacted_is_a_503_to_retry() -> None:
    """Issue 15 review: while a peer's first contact has no outcome yet (it
    accepts the connection and says nothing), a name unknown here gets a 503
    with Retry-After, not "unknown model"."""
    held: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    port = PortAllocator(B).allocate()
    server = await asyncio.start_server(silent, B, port)
    try:
        async with (
            running_server(front({"slow": f"http://{B}:{port}"}, {"l": engine("l")})) as a,
            aiohttp.ClientSession(timeout=LIMIT) as http,
        ):
            status, body, headers = await ask(http, a.url, "pm")
            assert status == 503 and body["error"]["code"] == "model_not_known_yet", body
            assert int(headers["Retry-After"]) >= 1
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
