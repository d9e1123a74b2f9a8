"""Several hosts behind one endpoint (issue 15), with real processes: a front on
127.0.0.1 (in this process) and peers on 127.0.0.2 and 127.0.0.3 (``swapyard
serve`` processes), each with fake engines."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from peer_hosts import Host, engine, host

from helpers import eventually
from swapyard.config import Config, load_config
from swapyard.ports import PortAllocator
from swapyard.testing import running_server

B, C = "127.0.0.2", "127.0.0.3"
SLOW = {"tokens_per_second": 40}  # a 16-token answer takes 0.4 s: requests overlap


def front(peers: list[Host], models: dict[str, Any] | None = None, **server: Any) -> Config:
    doc = {
        "server": server,
        "scheduler": {"learn_memory": False},
        "models": models or {},
        "peers": {h.name: {"url": h.url, "timeout": 1} for h in peers},
    }
    return load_config(json.dumps(doc))


def chat(model: str, stream: bool = False) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


async def peers_up(http: aiohttp.ClientSession, url: str, *names: str) -> bool:
    async with http.get(url + "/api/models") as r:
        doc = await r.json()
    return all(doc["peers"][n]["up"] for n in names)


async def ask(
    http: aiohttp.ClientSession, url: str, model: str, tokens: int = 16
) -> tuple[int, str, bytes]:
    """A streamed chat completion: its status, the host that served it, its body."""
    doc = {**chat(model, stream=True), "max_tokens": tokens}
    async with http.post(url + "/v1/chat/completions", json=doc) as r:
        return r.status, r.headers.get("X-Swapyard-Host", ""), await r.read()


def whole(body: bytes) -> bool:
    return b"[DONE]" in body and b'"error"' not in body


def ended_with_error(body: bytes) -> bool:
    return b"[DONE]" not in body and b'"error"' in body.rsplit(b"data:", 1)[-1]


async def in_flight(http: aiohttp.ClientSession, url: str, model: str) -> bool:
    async with http.get(url + "/api/models") as r:
        return bool((await r.json())["models"][model]["in_flight"])


async def test_model_list_shows_every_hosts_models_once(tmp_path: Path) -> None:
    """/v1/models at the front lists its own models and each peer's, a model on
    two hosts once with both hosts."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha"), "shared": engine("shared")}) as b,
        host(tmp_path, "c", C, {"beta": engine("beta"), "shared": engine("shared")}) as c,
        running_server(front([b, c], {"gamma": engine("gamma")})) as a,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "b", "c"))
        async with http.get(a.url + "/v1/models") as r:
            data = (await r.json())["data"]
        hosts = {e["id"]: e["hosts"] for e in data}
        assert hosts == {
            "gamma": ["local"], "alpha": ["b"], "beta": ["c"], "shared": ["b", "c"]
        }  # fmt: skip


async def test_request_goes_to_the_host_where_its_model_is_ready(tmp_path: Path) -> None:
    """A model stopped on one host and ready on another is served by the second,
    and the answer names it (X-Swapyard-Host); a peer-only model goes to its host."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha"), "shared": engine("shared")}) as b,
        host(tmp_path, "c", C, {"shared": engine("shared")}, preload=["shared"]) as c,
        running_server(front([b, c])) as a,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "b", "c"))
        async with http.post(a.url + "/v1/chat/completions", json=chat("shared")) as r:
            assert r.status == 200 and r.headers["X-Swapyard-Host"] == "c"
            assert (await r.json())["choices"][0]["message"]["content"]
        async with http.post(a.url + "/v1/chat/completions", json=chat("alpha")) as r:
            assert r.status == 200 and r.headers["X-Swapyard-Host"] == "b"
        async with http.get(b.url + "/api/models") as r:  # b never loaded its replica
            assert (await r.json())["models"]["shared"]["state"] == "stopped"


async def test_replica_is_balanced_under_concurrent_load(tmp_path: Path) -> None:
    """Twenty concurrent requests for a model ready on two hosts are split across both."""
    models = {"shared": engine("shared", **SLOW)}
    async with (
        host(tmp_path, "b", B, models, preload=["shared"]) as b,
        host(tmp_path, "c", C, models, preload=["shared"]) as c,
        running_server(front([b, c])) as a,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "b", "c"))
        got = await asyncio.gather(*(ask(http, a.url, "shared") for _ in range(20)))
        assert all(status == 200 and b"[DONE]" in body for status, _, body in got)
        served = Counter(h for _, h, _ in got)
        assert served["b"] >= 5 and served["c"] >= 5, served


async def test_unknown_name_names_every_hosts_models(tmp_path: Path) -> None:
    """A name no host serves is a 404 in the OpenAI envelope."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha")}) as b,
        running_server(front([b])) as a,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "b"))
        async with http.post(a.url + "/v1/chat/completions", json=chat("nope")) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "model_not_found"


async def test_host_killed_mid_trace_fails_over_and_comes_back(tmp_path: Path) -> None:
    """Killing a host mid-trace: its streams end with an error event; no request
    for a model with a live replica fails; a model only it served fails fast with
    a clear error; once it is back it is used again."""
    shared = {"shared": engine("shared", **SLOW)}
    c_models = {**shared, "beta": engine("beta", **SLOW)}
    c_port = PortAllocator(C).allocate()
    timeout = aiohttp.ClientTimeout(total=60)  # a hang fails the test, not the suite
    async with (
        host(tmp_path, "b", B, shared, preload=["shared"]) as b,
        host(tmp_path, "c", C, c_models, port=c_port, preload=["shared", "beta"]) as c,
        running_server(front([b, c])) as a,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "b", "c"))
        stop = asyncio.Event()
        trace: list[tuple[int, str, bytes]] = []

        async def worker() -> None:
            while not stop.is_set():
                trace.append(await ask(http, a.url, "shared"))

        long_ones = [asyncio.ensure_future(ask(http, a.url, m, tokens=400))
                     for m in ("beta", "shared", "shared")]  # fmt: skip
        workers = [asyncio.ensure_future(worker()) for _ in range(3)]
        await eventually(lambda: in_flight(http, c.url, "beta"))
        await c.die()
        after = [await ask(http, a.url, "shared") for _ in range(5)]
        stop.set()
        await asyncio.gather(*workers)
        cut = await asyncio.gather(*long_ones)

        assert ended_with_error(cut[0][2]) and cut[0][1] == "c"
        for status, served_by, body in [*cut[1:], *trace]:
            assert status == 200
            assert whole(body) or (served_by == "c" and ended_with_error(body)), body[-300:]
        assert all(s == 200 and h == "b" and whole(body) for s, h, body in after)
        async with http.post(a.url + "/v1/chat/completions", json=chat("beta")) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_unavailable"

        async with host(tmp_path, "c", C, c_models, port=c_port, preload=["beta"]):

            async def beta_from_c() -> bool:
                status, served_by, body = await ask(http, a.url, "beta")
                return status == 200 and served_by == "c" and whole(body)

            await eventually(beta_from_c, what="beta served by c again")


async def test_hung_host_streams_end_with_an_error_event(tmp_path: Path) -> None:
    """A host that stops answering (SIGSTOP: its sockets open, nothing moving) is
    marked down by the /health probe, and the stream the front was relaying from
    it ends with an error event naming the peer rather than hanging."""
    models = {"beta": engine("beta", **SLOW)}
    timeout = aiohttp.ClientTimeout(total=60)  # the front's own idle timeout is 300 s
    async with (
        host(tmp_path, "c", C, models, preload=["beta"]) as c,
        running_server(front([c])) as a,
        aiohttp.ClientSession(timeout=timeout) as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "c"))
        long_one = asyncio.ensure_future(ask(http, a.url, "beta", tokens=2000))
        await eventually(lambda: in_flight(http, c.url, "beta"))
        os.kill(c.proc.pid, signal.SIGSTOP)
        try:
            status, served_by, body = await long_one
        finally:
            os.kill(c.proc.pid, signal.SIGCONT)
        assert status == 200 and served_by == "c"
        assert ended_with_error(body) and b"peer 'c' is down" in body
        await eventually(lambda: peers_up(http, a.url, "c"), what="c up again after SIGCONT")


async def test_admin_calls_for_a_peers_model_go_to_its_host(tmp_path: Path) -> None:
    """Load, pin, unload and logs of a model only a peer serves are done on that
    peer; `swapyard ps` at the front shows the peer's models."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha")}) as b,
        running_server(front([b], {"gamma": engine("gamma")})) as a,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: peers_up(http, a.url, "b"))
        async with http.post(a.url + "/api/models/alpha/load") as r:
            assert r.status == 200 and r.headers["X-Swapyard-Host"] == "b"
            assert (await r.json()) == {"model": "alpha", "state": "ready"}
        async with http.post(a.url + "/api/models/alpha/pin") as r:
            assert (await r.json())["pinned"] is True
        async with http.get(b.url + "/api/models") as r:
            m = (await r.json())["models"]["alpha"]
            assert m["state"] == "ready" and m["pinned"] is True
        async with http.get(a.url + "/api/models/alpha/logs?lines=5") as r:
            assert r.status == 200 and r.headers["X-Swapyard-Host"] == "b"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swapyard", "ps", "--url", a.url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        assert any(
            line.split()[:3] == ["b", "alpha", "ready"] for line in out.decode().splitlines()
        )
        async with http.post(a.url + "/api/models/alpha/unload") as r:
            assert (await r.json())["state"] == "stopped"
