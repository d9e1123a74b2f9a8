"""Several hosts behind one endpoint (issue 15), with real processes: a front on
127.0.0.1 (in this process) and peers on 127.0.0.2 and 127.0.0.3 (``swapyard
serve`` processes), each with fake engines."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from peer_hosts import Host, engine, host

from helpers import eventually
from swapyard.config import Config, load_config
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


async def ask(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, str, bytes]:
    """A streamed chat completion: its status, the host that served it, its body."""
    async with http.post(url + "/v1/chat/completions", json=chat(model, stream=True)) as r:
        return r.status, r.headers.get("X-Swapyard-Host", ""), await r.read()


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
