"""Fallbacks (issue 15): a model that cannot serve a request hands it to the next
in its ``fallbacks`` for the reasons in its ``fallback_on``, only before any byte
of the answer went out, and the answer names the model that served it. Fake
engines run as real processes behind a swapyard on a real port."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from helpers import eventually
from swapyard.config import Config, load_config
from swapyard.config.fallbacks import CONDITIONS
from swapyard.errors import ConfigError
from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd, running_server

CHAT = "/v1/chat/completions"


def cfg(models: dict[str, Any], **top: Any) -> Config:
    """A config from dicts; ``top`` are other top-level sections (``virtual``, ``auth``...)."""
    server = {"loading_status": "reasoning", **top.pop("server", {})}
    scheduler = {"learn_memory": False, **top.pop("scheduler", {})}
    doc = {"server": server, "scheduler": scheduler, "models": models, **top}
    return load_config(json.dumps(doc))


def chat(model: str, *, stream: bool = False, max_tokens: int = 4) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens, "stream": stream}  # fmt: skip


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def ask(
    http: aiohttp.ClientSession, url: str, model: str, **kw: Any
) -> tuple[int, Any, dict[str, str]]:
    """Status, parsed body (text for a stream) and headers of one chat request."""
    async with http.post(url + CHAT, json=chat(model, **kw)) as r:
        text = await r.text()
        body = text if kw.get("stream") else json.loads(text)
        return r.status, body, dict(r.headers)


def answer_of(body: dict[str, Any]) -> str:
    return str(body["choices"][0]["message"]["content"])


# -- config ------------------------------------------------------------------------
def test_fallback_on_defaults_to_every_condition_but_wait() -> None:
    """A model with fallbacks and no fallback_on moves on for every condition, and
    waits as long as it would without fallbacks."""
    c = cfg({"a": {"cmd": "x ${PORT}", "fallbacks": ["b"]}, "b": {"cmd": "y ${PORT}"}})
    assert c.models["a"].fallbacks == ("b",)
    assert c.models["a"].fallback_on.conditions == frozenset(CONDITIONS)
    assert c.models["a"].fallback_on.wait is None


def test_fallback_on_takes_conditions_and_a_wait() -> None:
    """`fallback_on: [start_failed, wait: 30s]` (YAML's flow form) is those two."""
    c = load_config(
        "models:\n"
        "  a: {cmd: 'x ${PORT}', fallbacks: [bee], fallback_on: [start_failed, wait: 30s]}\n"
        "  b: {cmd: 'y ${PORT}', aliases: [bee]}\n"
    )
    assert c.models["a"].fallback_on.conditions == {"start_failed"}
    assert c.models["a"].fallback_on.wait == 30.0


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"a": {"cmd": "x ${PORT}", "fallbacks": ["nope"]}}, "'nope' is not a model"),
        ({"a": {"cmd": "x ${PORT}", "aliases": ["ay"], "fallbacks": ["ay"]}}, "own engine"),
        ({"a": {"cmd": "x ${PORT}", "fallback_on": ["start_failed"]}}, "has no `fallbacks`"),
        (
            {"a": {"cmd": "x ${PORT}", "fallbacks": ["b", "b"]}, "b": {"cmd": "y ${PORT}"}},
            "listed twice",
        ),
        (
            {
                "a": {"cmd": "x ${PORT}", "fallbacks": ["b"], "fallback_on": ["on_fire"]},
                "b": {"cmd": "y ${PORT}"},
            },
            "fallback_on",
        ),
    ],
)
def test_bad_fallbacks_are_refused_at_load(models: dict[str, Any], message: str) -> None:
    """A fallback that names nothing, the model itself or a name twice, a
    fallback_on without fallbacks and an unknown condition are config errors."""
    with pytest.raises(ConfigError, match=message):
        cfg(models)


# -- each condition, end to end ---------------------------------------------------
async def test_a_model_that_fails_to_start_is_served_by_its_fallback(
    http: aiohttp.ClientSession,
) -> None:
    """start_failed: the engine exits during its start; the next model answers and
    the headers say which one did, and which failed before it."""
    models = {
        "a": {"cmd": fake_engine_cmd("a", exit_on_start=1), "fallbacks": ["b"]},
        "b": {"cmd": fake_engine_cmd("b")},
    }
    async with running_server(cfg(models)) as srv:
        status, body, headers = await ask(http, srv.url, "a")
        assert status == 200, body
        assert answer_of(body).startswith("b:")
        assert headers["X-Swapyard-Model"] == "b"
        assert headers["X-Swapyard-Fallback-From"] == "a"


async def test_a_plain_answer_names_its_model_and_no_fallback(
    http: aiohttp.ClientSession,
) -> None:
    """Every answer says which model served it; one that did not fall back says
    nothing more (an alias names its model's id)."""
    models = {"a": {"cmd": fake_engine_cmd("a"), "aliases": ["ay"], "fallbacks": ["b"]},
              "b": {"cmd": fake_engine_cmd("b")}}  # fmt: skip
    async with running_server(cfg(models)) as srv:
        status, body, headers = await ask(http, srv.url, "ay")
        assert status == 200 and answer_of(body).startswith("a:")
        assert headers["X-Swapyard-Model"] == "a"
        assert "X-Swapyard-Fallback-From" not in headers


async def test_a_model_that_can_never_fit_is_served_by_its_fallback(
    http: aiohttp.ClientSession,
) -> None:
    """no_memory: a model whose declared need exceeds the device's budget hands
    the request to its fallback."""
    models = {
        "big": {"cmd": fake_engine_cmd("big"), "memory": "2GiB", "fallbacks": ["small"]},
        "small": {"cmd": fake_engine_cmd("small"), "memory": "100MiB"},
    }
    async with running_server(cfg(models, devices={"gpu0": {"memory": "1GiB"}})) as srv:
        status, body, headers = await ask(http, srv.url, "big")
        assert status == 200, body
        assert answer_of(body).startswith("small:")
        assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Fallback-From"]) == (
            "small", "big",
        )  # fmt: skip


async def test_a_model_without_no_memory_in_fallback_on_keeps_its_error(
    http: aiohttp.ClientSession,
) -> None:
    """Only the conditions in fallback_on move a request on: here the client gets
    the model's own insufficient_memory error, and no fallback was tried."""
    models = {
        "big": {"cmd": fake_engine_cmd("big"), "memory": "2GiB", "fallbacks": ["small"],
                "fallback_on": ["start_failed"]},
        "small": {"cmd": fake_engine_cmd("small"), "memory": "100MiB"},
    }  # fmt: skip
    async with running_server(cfg(models, devices={"gpu0": {"memory": "1GiB"}})) as srv:
        status, body, headers = await ask(http, srv.url, "big")
        assert status == 503 and body["error"]["code"] == "insufficient_memory"
        assert "X-Swapyard-Model" not in headers
        assert "X-Swapyard-Fallback-From" not in headers


async def test_a_full_queue_moves_the_request_on_to_the_fallback(
    http: aiohttp.ClientSession,
) -> None:
    """queue_full: the request goes on to the fallback. This swapyard has one
    queue for all its models, so the fallback is refused too and the client gets
    its 429 (a peer's model would have its own queue); the headers show it fell back."""
    models = {
        "a": {"cmd": fake_engine_cmd("a", load_delay=30), "fallbacks": ["b"]},
        "b": {"cmd": fake_engine_cmd("b")},
    }
    async with running_server(cfg(models, scheduler={"max_queue": 1})) as srv:
        waiting = asyncio.ensure_future(ask(http, srv.url, "a"))
        try:
            await eventually(lambda: srv.router.snapshot().queue, what="a request queued")
            status, body, headers = await ask(http, srv.url, "a")
            assert status == 429 and body["error"]["code"] == "queue_full"
            assert headers["X-Swapyard-Fallback-From"] == "a"
            assert "X-Swapyard-Model" not in headers
        finally:
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting


async def test_an_engine_5xx_before_the_answer_is_served_by_the_fallback(
    http: aiohttp.ClientSession,
) -> None:
    """upstream_5xx: an engine answering 500 (plain or streamed) is not passed on
    while a fallback remains; the fallback's answer is."""
    models = {
        "a": {"cmd": fake_engine_cmd("a", error_status=500), "fallbacks": ["b"]},
        "b": {"cmd": fake_engine_cmd("b")},
    }
    async with running_server(cfg(models)) as srv:
        status, body, headers = await ask(http, srv.url, "a")
        assert status == 200 and answer_of(body).startswith("b:")
        status, text, headers = await ask(http, srv.url, "a", stream=True)
        assert status == 200 and '"content":"b:' in text.replace(" ", "")
        assert text.rstrip().endswith("data: [DONE]")
        assert headers["X-Swapyard-Model"] == "b"


async def test_the_last_candidates_5xx_reaches_the_client_as_the_engine_said_it(
    http: aiohttp.ClientSession,
) -> None:
    """The last model of a chain answers as it would without fallbacks: its own
    error status and body, piped through."""
    models = {
        "a": {"cmd": fake_engine_cmd("a", error_status=500), "fallbacks": ["b"]},
        "b": {"cmd": fake_engine_cmd("b", error_status=503)},
    }
    async with running_server(cfg(models)) as srv:
        status, body, headers = await ask(http, srv.url, "a")
        assert status == 503
        assert body["error"]["message"] == "simulated engine error"
        assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Fallback-From"]) == ("b", "a")


async def test_a_request_that_waits_past_the_bound_is_served_by_the_fallback(
    http: aiohttp.ClientSession,
) -> None:
    """wait: a model still loading when the bound passes loses the request to its
    fallback, and the request leaves its queue."""
    models = {
        "slow": {"cmd": fake_engine_cmd("slow", load_delay=60), "fallbacks": ["fast"],
                 "fallback_on": [{"wait": "0.5s"}]},
        "fast": {"cmd": fake_engine_cmd("fast")},
    }  # fmt: skip
    async with running_server(cfg(models)) as srv:
        status, body, headers = await ask(http, srv.url, "slow")
        assert status == 200 and answer_of(body).startswith("fast:")
        assert headers["X-Swapyard-Fallback-From"] == "slow"
        assert srv.router.snapshot().models["slow"].queued == 0


async def test_no_fallback_once_the_answer_has_begun(http: aiohttp.ClientSession) -> None:
    """An engine that dies in the middle of a stream ends that stream with an
    error event: the fallback never answers in the same response."""
    models = {
        "a": {"cmd": fake_engine_cmd("a", crash_after_tokens=2, tokens_per_second=50),
              "fallbacks": ["b"]},
        "b": {"cmd": fake_engine_cmd("b")},
    }  # fmt: skip
    async with running_server(cfg(models)) as srv:
        status, _, _ = await ask(http, srv.url, "b")  # b is there and ready
        assert status == 200
        status, text, headers = await ask(http, srv.url, "a", stream=True, max_tokens=10)
        assert status == 200
        assert headers["X-Swapyard-Model"] == "a"
        assert '"error"' in text
        assert '"b:' not in text.replace(" ", "")


async def test_a_fallback_the_key_may_not_use_is_passed_over(
    http: aiohttp.ClientSession,
) -> None:
    """Fallbacks obey the key's allow-list: a key allowed only `a` gets a's own
    start failure, never b's answer."""
    models = {
        "a": {"cmd": fake_engine_cmd("a", exit_on_start=1), "fallbacks": ["b"]},
        "b": {"cmd": fake_engine_cmd("b")},
    }
    auth = {"keys": [{"name": "only-a", "key": "k-a", "models": ["a"]}]}
    async with running_server(cfg(models, auth=auth)) as srv:
        headers = {"Authorization": "Bearer k-a"}
        async with http.post(srv.url + CHAT, json=chat("a"), headers=headers) as r:
            body = await r.json()
            assert r.status == 503 and body["error"]["code"] == "engine_exited", body
            assert srv.router.model("b").engine.pid is None


async def test_local_to_remote_fallback_reaches_an_openai_server(
    http: aiohttp.ClientSession,
) -> None:
    """A local model that fails to start falls back to a remote OpenAI-compatible
    server (`engine: openai`, a fake engine process on its own port)."""
    port = PortAllocator().allocate()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swapyard.testing.fake_engine", "--port", str(port),
        "--model-id", "hosted", stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        models = {
            "local": {"cmd": fake_engine_cmd("local", exit_on_start=1), "fallbacks": ["remote"]},
            "remote": {"engine": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                       "model": "hosted", "start_timeout": 10},
        }  # fmt: skip
        async with running_server(cfg(models)) as srv:
            status, body, headers = await ask(http, srv.url, "local")
            assert status == 200, body
            assert answer_of(body).startswith("hosted:")
            assert (headers["X-Swapyard-Model"], headers["X-Swapyard-Fallback-From"]) == (
                "remote", "local",
            )  # fmt: skip
            await srv.router.unload("remote")
    finally:
        proc.terminate()
        await proc.wait()
