"""Every front over peers, virtual ids and fallbacks (issue 15): the Ollama and
Anthropic routes serve a name only a peer serves, a virtual id whose members
span this host and a peer, and a fallback of another engine kind; the issue's
fallback chain local → peer → remote. A front on 127.0.0.1 (in this process),
peers on 127.0.0.2 (``swapyard serve`` processes), fake engines everywhere."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from peer_hosts import Host, engine, host

from helpers import eventually
from swapyard.config import Config, load_config
from swapyard.ports import PortAllocator
from swapyard.process.state import EngineState
from swapyard.testing import fake_engine_cmd, running_server

B = "127.0.0.2"
HI = [{"role": "user", "content": "hi"}]


def front(peers: list[Host], models: dict[str, Any], **top: Any) -> Config:
    doc = {
        "scheduler": {"learn_memory": False},
        "models": models,
        "peers": {h.name: {"url": h.url, "timeout": 1} for h in peers},
        **top,
    }
    return load_config(json.dumps(doc))


async def peers_up(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url + "/api/models") as r:
        return all(p["up"] and p["models"] for p in (await r.json())["peers"].values())


async def post(
    http: aiohttp.ClientSession, url: str, doc: dict[str, Any]
) -> tuple[int, Any, dict[str, str]]:
    """Status, JSON body and headers of one POST."""
    async with http.post(url, json=doc) as r:
        return r.status, json.loads(await r.read()), dict(r.headers)


@asynccontextmanager
async def remote_server(model: str) -> AsyncIterator[str]:
    """A fake engine process on its own port, as a hosted OpenAI-compatible
    service: its ``/v1`` base URL."""
    port = PortAllocator().allocate()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swapyard.testing.fake_engine", "--port", str(port),
        "--model-id", model, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        await proc.wait()


def remote(base_url: str, model: str) -> dict[str, Any]:
    return {"engine": "openai", "base_url": base_url, "model": model, "start_timeout": 10}


async def test_ollama_and_anthropic_fronts_serve_a_peers_model_and_a_virtual_id(
    tmp_path: Path,
) -> None:
    """A name only a peer serves and a virtual id over a local and a peer's model
    work on Ollama's /api/chat and /api/generate and Anthropic's /v1/messages
    (forwarded as sent: the peer's engine got /v1/messages); loaded-first picks
    the peer's ready member over the local stopped one."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha")}, preload=["alpha"]) as b,
        running_server(front([b], {"gamma": engine("gamma")},
                             virtual={"any": {"models": ["gamma", "alpha"]}})) as a,
        aiohttp.ClientSession() as http,
    ):  # fmt: skip
        await eventually(lambda: peers_up(http, a.url))
        for name in ("alpha", "any", "alpha:latest"):
            status, body, headers = await post(
                http, a.url + "/api/chat", {"model": name, "messages": HI, "stream": False}
            )
            assert status == 200, body
            assert body["model"] == name and body["message"]["content"].startswith("alpha:")
            assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Host"]) == ("alpha", "b")
        status, body, headers = await post(http, a.url + "/api/generate", {
            "model": "any", "prompt": "def f(", "suffix": "\n", "stream": False,
            "options": {"top_k": 5, "mirostat": 1},
        })  # fmt: skip
        assert status == 200 and body["response"], body
        assert headers["X-Swapyard-Host"] == "b"
        for name in ("alpha", "any"):
            status, body, headers = await post(
                http, a.url + "/v1/messages", {"model": name, "max_tokens": 8, "messages": HI}
            )
            assert status == 200, body
            assert (body["engine"], body["path"]) == ("alpha", "/v1/messages")
            assert headers["X-Swapyard-Host"] == "b"
        assert a.router.model("gamma").state is EngineState.STOPPED


async def test_model_lists_show_peers_models_and_virtual_ids(tmp_path: Path) -> None:
    """/api/tags lists this host's models, its virtual ids and a peer's models;
    /api/ps the peer's loaded one; /api/show and GET /v1/models/{id} answer for a
    peer's model (the peer's own answer, with its host) and a virtual id."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha"), "idle": engine("idle")},
             preload=["alpha"]) as b,
        running_server(front([b], {"gamma": engine("gamma")},
                             virtual={"any": {"models": ["gamma", "alpha"]}})) as a,
        aiohttp.ClientSession() as http,
    ):  # fmt: skip
        await eventually(lambda: peers_up(http, a.url))
        async with http.get(a.url + "/api/tags") as r:
            tags = [m["name"] for m in (await r.json())["models"]]
        assert tags == ["gamma", "any", "alpha", "idle"]
        async with http.get(a.url + "/api/ps") as r:
            assert [m["name"] for m in (await r.json())["models"]] == ["alpha"]
        status, body, headers = await post(http, a.url + "/api/show", {"model": "alpha"})
        assert status == 200 and "alpha" in body["modelfile"] and headers["X-Swapyard-Host"] == "b"
        status, body, _ = await post(http, a.url + "/api/show", {"model": "any"})
        assert status == 200 and "alpha" in body["modelfile"]  # the pick: b's ready alpha
        async with http.get(a.url + "/v1/models/alpha") as r:
            entry = await r.json()
            assert (entry["id"], entry["hosts"], entry["state"]) == ("alpha", ["b"], "ready")
        async with http.get(a.url + "/v1/models/any") as r:
            entry = await r.json()
            assert entry["virtual"] is True and entry["state"] == "ready"  # alpha, on b
        async with http.get(a.url + "/v1/models/gamma") as r:
            assert (await r.json())["hosts"] == ["local"]
        async with http.get(a.url + "/v1/models/nowhere") as r:
            assert r.status == 404


async def test_a_fallback_of_another_engine_kind_gets_the_body_its_engine_takes() -> None:
    """A llama.cpp-like model (Anthropic native) that cannot start falls back to a
    remote OpenAI-style server, which gets a translated chat completion (Anthropic)
    and the standard completion body (Ollama's fill-in-the-middle), not the
    first model's own routes."""
    async with remote_server("hosted") as url:
        models = {
            "local": {"cmd": fake_engine_cmd("local", exit_on_start=1), "fallbacks": ["far"]},
            "far": remote(url, "hosted"),
        }
        async with (
            running_server(load_config(json.dumps({"models": models}))) as a,
            aiohttp.ClientSession() as http,
        ):
            status, body, headers = await post(
                http, a.url + "/v1/messages", {"model": "local", "max_tokens": 8, "messages": HI}
            )
            assert status == 200, body
            assert body["type"] == "message" and body["content"][0]["text"].startswith("hosted:")
            assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Fallback-From"]) == (
                "far", "local",
            )  # fmt: skip
            status, body, headers = await post(http, a.url + "/api/generate", {
                "model": "local", "prompt": "def f(", "suffix": "\n", "stream": False,
            })  # fmt: skip
            assert status == 200 and body["response"].startswith("hosted:"), body
            assert headers["X-Swapyard-Model"] == "far"
            await a.router.unload("far")


async def test_fallback_chain_goes_local_then_peer_then_remote(tmp_path: Path) -> None:
    """The issue's chain: a local model whose engine fails to start is served by
    a peer's model; with that peer gone, by a remote OpenAI-style server; each
    answer names the model and host that served it."""
    models = {
        "local": {"cmd": fake_engine_cmd("local", exit_on_start=1),
                  "fallbacks": ["peer-model", "remote-model"]},
    }  # fmt: skip
    chat = {"model": "local", "messages": HI, "max_tokens": 4}
    async with (
        remote_server("hosted") as url,
        host(tmp_path, "b", B, {"peer-model": engine("peer-model")}) as b,
        running_server(front([b], {**models, "remote-model": remote(url, "hosted")})) as a,
        aiohttp.ClientSession() as http,
    ):
        await eventually(lambda: peers_up(http, a.url))
        status, body, headers = await post(http, a.url + "/v1/chat/completions", chat)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"].startswith("peer-model:")
        assert headers["X-Swapyard-Model"] == "peer-model"
        assert headers["X-Swapyard-Host"] == "b"
        assert headers["X-Swapyard-Fallback-From"] == "local"
        await b.die()
        status, body, headers = await post(http, a.url + "/v1/chat/completions", chat)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"].startswith("hosted:")
        assert headers["X-Swapyard-Model"] == "remote-model"
        assert headers["X-Swapyard-Host"] == "local"
        assert headers["X-Swapyard-Fallback-From"] == "local, peer-model"
        await a.router.unload("remote-model")


async def test_virtual_id_over_local_and_peer_picks_the_peers_ready_member(
    tmp_path: Path,
) -> None:
    """loaded-first over a local model and a peer's: the peer's member, ready
    there, serves the request (the local one, listed first, stays stopped)."""
    async with (
        host(tmp_path, "b", B, {"alpha": engine("alpha")}, preload=["alpha"]) as b,
        running_server(front([b], {"gamma": engine("gamma")},
                             virtual={"any": {"models": ["gamma", "alpha"]}})) as a,
        aiohttp.ClientSession() as http,
    ):  # fmt: skip
        await eventually(lambda: peers_up(http, a.url))
        chat = {"model": "any", "messages": HI, "max_tokens": 4}
        status, body, headers = await post(http, a.url + "/v1/chat/completions", chat)
        assert status == 200, body
        assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Host"]) == ("alpha", "b")
        assert a.router.model("gamma").state is EngineState.STOPPED
