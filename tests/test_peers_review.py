"""The peers code after its review (issue 15), with real processes: a front on
127.0.0.1 (in this process), peers on 127.0.0.2 and 127.0.0.3 (``swapyard
serve`` processes) with fake engines. Routing only on what a peer serves itself
(two hosts that are each other's peers), admin calls to a hung peer, whose
admin rights a front lends, a reload that changes ``peers:``, and a peer whose
``/health`` is slow while its streams still move."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from peer_hosts import engine, host

from helpers import eventually
from swapyard.config import Config, load_config, load_config_file
from swapyard.ports import PortAllocator
from swapyard.testing import running_server

B, C = "127.0.0.2", "127.0.0.3"
SLOW = {"tokens_per_second": 40}
HANG_GUARD = aiohttp.ClientTimeout(total=40)  # a hang fails the test, not the suite


def front(peers: dict[str, str], models: dict[str, Any] | None = None, **top: Any) -> Config:
    doc = {
        "scheduler": {"learn_memory": False},
        "models": models or {},
        "peers": {name: {"url": url, "timeout": 1} for name, url in peers.items()},
        **top,
    }
    return load_config(json.dumps(doc))


def chat(model: str, **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **more}


async def peer(http: aiohttp.ClientSession, url: str, name: str) -> dict[str, Any]:
    """What the swapyard at ``url`` says of its peer ``name`` (GET /api/models)."""
    async with http.get(url + "/api/models") as r:
        return dict((await r.json())["peers"][name])


async def listed(http: aiohttp.ClientSession, url: str) -> dict[str, list[str]]:
    """The ids /v1/models lists at ``url``, each with its ``hosts``."""
    async with http.get(url + "/v1/models") as r:
        return {e["id"]: e.get("hosts", []) for e in (await r.json())["data"]}


async def state_on(http: aiohttp.ClientSession, url: str, model: str) -> str:
    async with http.get(url + "/health") as r:
        return str((await r.json())["models"][model]["state"])


async def test_two_hosts_that_are_each_others_peers_do_not_route_a_name_in_a_loop(
    tmp_path: Path,
) -> None:
    """A has peers B and C, B has peer A, only C serves x: B does not take x from
    A's list (it is not A's own), and once C is killed A lists no x and a request
    for x fails at once with 502 (C, which served it, is down) instead of going
    A → B → A forever."""
    b_port = PortAllocator(B).allocate()
    async with (
        host(tmp_path, "c", C, {"x": engine("x")}) as c,
        running_server(front({"b": f"http://{B}:{b_port}", "c": c.url})) as a,
        aiohttp.ClientSession(timeout=HANG_GUARD) as http,
    ):

        async def a_lists_x_from_c() -> bool:
            return (await listed(http, a.url)).get("x") == ["c"]

        await eventually(a_lists_x_from_c)
        b_peers = {"a": {"url": a.url, "timeout": 1}}
        async with host(tmp_path, "b", B, {"own": engine("own")}, port=b_port, peers=b_peers):
            b_url = f"http://{B}:{b_port}"

            async def b_sees_a() -> bool:
                return bool((await peer(http, b_url, "a"))["up"])

            await eventually(b_sees_a)
            # An event on B: A reads B's lists again, after B read A's (with x).
            async with http.post(b_url + "/api/models/own/load") as r:
                assert r.status == 200

            async def a_sees_own_ready() -> bool:
                b = await peer(http, a.url, "b")
                return b["up"] and b["models"].get("own", {}).get("state") == "ready"

            await eventually(a_sees_own_ready)
            assert "x" not in await listed(http, b_url)
            assert (await listed(http, a.url))["x"] == ["c"]

            await c.die()

            async def c_down() -> bool:
                return not (await peer(http, a.url, "c"))["up"]

            await eventually(c_down)
            assert "x" not in await listed(http, a.url)
            async with http.post(a.url + "/v1/chat/completions", json=chat("x")) as r:
                assert r.status == 502
                err = (await r.json())["error"]
                assert err["code"] == "upstream_unavailable" and "'c'" in err["message"]
            async with http.post(b_url + "/v1/chat/completions", json=chat("x")) as r:
                assert r.status == 404


async def test_admin_call_to_a_hung_peer_ends_with_a_clear_error(tmp_path: Path) -> None:
    """A load forwarded to a peer that then hangs (SIGSTOP while the model loads)
    is answered 502 upstream_unavailable naming the peer once the peer is found
    hung, instead of waiting on it without end."""
    models = {"alpha": engine("alpha", load_delay=25)}
    async with (
        host(tmp_path, "c", C, models) as c,
        running_server(front({"c": c.url})) as a,
        aiohttp.ClientSession(timeout=HANG_GUARD) as http,
    ):

        async def c_up() -> bool:
            return bool((await peer(http, a.url, "c"))["up"])

        await eventually(c_up)
        load = asyncio.ensure_future(http.post(a.url + "/api/models/alpha/load"))
        await eventually(lambda: _starting(http, c.url, "alpha"))
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            async with await load as r:
                status, doc = r.status, await r.json()
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        assert status == 502, doc
        assert doc["error"]["code"] == "upstream_unavailable"
        assert "peer 'c' is down" in doc["error"]["message"]


async def _starting(http: aiohttp.ClientSession, url: str, model: str) -> bool:
    return await state_on(http, url, model) == "starting"


async def test_request_waiting_on_a_hung_peer_ends_as_unavailable(tmp_path: Path) -> None:
    """A chat request whose model is still loading on a peer that then hangs ends
    with 502 upstream_unavailable (nothing was sent: another host could serve
    it), not upstream_died."""
    models = {"beta": engine("beta", load_delay=25)}
    async with (
        host(tmp_path, "c", C, models) as c,
        running_server(front({"c": c.url})) as a,
        aiohttp.ClientSession(timeout=HANG_GUARD) as http,
    ):

        async def c_up() -> bool:
            return bool((await peer(http, a.url, "c"))["up"])

        await eventually(c_up)
        ask = asyncio.ensure_future(http.post(a.url + "/v1/chat/completions", json=chat("beta")))
        await eventually(lambda: _starting(http, c.url, "beta"))
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            async with await ask as r:
                status, doc = r.status, await r.json()
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        assert status == 502, doc
        assert doc["error"]["code"] == "upstream_unavailable"
        assert "peer 'c' is down" in doc["error"]["message"]


PEER_ADMIN = "sk-peer-admin-5b2c7d9e1f"
FRONT_ADMIN = "sk-front-admin-0a8e4c6b3d"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_peer_admin_rights_are_lent_only_to_the_fronts_admin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A front holding a peer's admin key forwards load to it only for a caller
    with the front's own admin key: a front without one refuses (403, saying to
    set one) and the peer's model stays stopped; a front with one refuses a
    caller without it or with the peer's key, and forwards for its own."""
    monkeypatch.setenv("PEER_B_ADMIN", PEER_ADMIN)
    monkeypatch.setenv("FRONT_ADMIN", FRONT_ADMIN)
    auth = {"admin_key": PEER_ADMIN}
    async with host(tmp_path, "b", B, {"beta": engine("beta")}, auth=auth) as b:
        peers = {"b": {"url": b.url, "admin_key_env": "PEER_B_ADMIN", "timeout": 1}}
        open_doc = {"scheduler": {"learn_memory": False}, "models": {}, "peers": peers}
        keyed_doc = {**open_doc, "auth": {"admin_key_env": "FRONT_ADMIN"}}
        async with (
            running_server(load_config(json.dumps(open_doc))) as a,
            running_server(load_config(json.dumps(keyed_doc))) as k,
            aiohttp.ClientSession(timeout=HANG_GUARD) as http,
        ):

            async def b_up(url: str, headers: dict[str, str]) -> bool:
                async with http.get(url + "/api/models", headers=headers) as r:
                    return bool((await r.json())["peers"]["b"]["up"])

            await eventually(lambda: b_up(a.url, {}))
            await eventually(lambda: b_up(k.url, bearer(FRONT_ADMIN)))

            async with http.post(a.url + "/api/models/beta/load") as r:
                assert r.status == 403
                err = (await r.json())["error"]
                assert "peer 'b'" in err["message"] and "auth.admin_key_env" in err["message"]
            async with http.post(k.url + "/api/models/beta/load") as r:
                assert r.status == 401
            async with http.post(k.url + "/api/models/beta/load", headers=bearer(PEER_ADMIN)) as r:
                assert r.status == 403
            async with http.get(b.url + "/health") as r:
                assert (await r.json())["models"]["beta"]["state"] == "stopped"

            async with http.post(k.url + "/api/models/beta/load", headers=bearer(FRONT_ADMIN)) as r:
                assert r.status == 200 and r.headers["X-Swapyard-Host"] == "b"
                assert (await r.json()) == {"model": "beta", "state": "ready"}


async def test_reload_that_changes_peers_says_it_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload whose file changes ``peers:`` is applied for everything else and
    says, in its answer and its log, that the peers change waits for a restart; a
    reload that leaves them alone says nothing of it."""
    caplog.set_level(logging.WARNING, logger="swapyard.reload")
    path = tmp_path / "front.yaml"

    def write(peers: dict[str, Any], models: dict[str, Any]) -> None:
        doc = {"scheduler": {"learn_memory": False}, "models": models, "peers": peers}
        path.write_text(json.dumps(doc))

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "swapyard.reload"]

    write({"b": {"url": f"http://{B}:9"}}, {})
    async with (
        running_server(load_config_file(path)) as a,
        aiohttp.ClientSession(timeout=HANG_GUARD) as http,
    ):
        write({"b": {"url": f"http://{B}:9"}}, {"gamma": engine("gamma")})
        async with http.post(a.url + "/api/config/reload") as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["added"] == ["gamma"] and "restart_needed" not in doc
        assert not said()

        write({"b": {"url": f"http://{B}:9"}, "c": {"url": f"http://{C}:9"}}, {})
        async with http.post(a.url + "/api/config/reload") as r:
            assert r.status == 200
            doc = await r.json()
        assert doc["removed"] == ["gamma"] and doc["restart_needed"] == ["peers"]
        assert any("peers changed" in line and "next restart" in line for line in said())


@asynccontextmanager
async def relay(target: str, slow_health: asyncio.Event) -> AsyncIterator[str]:
    """A plain HTTP relay on 127.0.0.1 in front of ``target`` (a network path to a
    peer), passing every answer through as it comes, except that ``GET /health``
    takes 3 s while ``slow_health`` is set: a busy host that is still alive."""
    client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/health" and slow_health.is_set():
            await asyncio.sleep(3)
        keep = ("Authorization", "Content-Type", "Accept")
        headers = {k: v for k, v in request.headers.items() if k in keep}
        async with client.request(
            request.method, target + request.path_qs, headers=headers, data=await request.read()
        ) as r:
            out = web.StreamResponse(status=r.status)
            for key in ("Content-Type", "X-Swapyard-Host"):
                if key in r.headers:
                    out.headers[key] = r.headers[key]
            await out.prepare(request)
            async for chunk in r.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = PortAllocator().allocate()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        await client.close()


async def test_slow_health_probe_does_not_cut_a_stream_that_is_moving(tmp_path: Path) -> None:
    """A peer whose /health answers slower than its ``timeout`` is marked down,
    but the stream the front is relaying from it, still moving, runs to its end."""
    slow_health = asyncio.Event()
    async with (
        host(tmp_path, "c", C, {"beta": engine("beta", **SLOW)}, preload=["beta"]) as c,
        relay(c.url, slow_health) as via,
        running_server(front({"c": via})) as a,
        aiohttp.ClientSession(timeout=HANG_GUARD) as http,
    ):

        async def c_up() -> bool:
            return bool((await peer(http, a.url, "c"))["up"])

        await eventually(c_up)

        async def ask() -> tuple[int, bytes]:
            doc = chat("beta", stream=True, max_tokens=240)  # 6 s at 40 tokens/s
            async with http.post(a.url + "/v1/chat/completions", json=doc) as r:
                return r.status, await r.read()

        stream = asyncio.ensure_future(ask())

        async def in_flight() -> bool:
            async with http.get(c.url + "/api/models") as r:
                return bool((await r.json())["models"]["beta"]["in_flight"])

        await eventually(in_flight)
        slow_health.set()

        async def c_down() -> bool:
            return not (await peer(http, a.url, "c"))["up"]

        await eventually(c_down, what="the slow probe marks c down")
        slow_health.clear()
        status, body = await stream
        assert status == 200
        assert b"[DONE]" in body and b'"error"' not in body, body[-300:]
