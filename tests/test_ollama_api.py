"""The Ollama API front (issue 14), driven by the real ``ollama`` Python client (and
raw HTTP where the client hides the wire) against a running swapyard: over the
fake engine and the vLLM fake, over a scripted engine for tools and thinking, and
over real llama.cpp models (marked ``llamacpp``)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import ollama
import pytest

from helpers import config, eventually, llama_server
from swapyard.api.ollama_convert import chat_body, generate_body, keep_alive_seconds, sampling
from swapyard.config import Config, load_config, load_config_file
from swapyard.errors import RequestError
from swapyard.process.state import EngineState
from swapyard.testing import FakeRouter, running_server
from swapyard.testing.server import RunningServer, fake_engine_cmd

T = TypeVar("T")
FAKES = [sys.executable, "-m", "swapyard.testing.engine_fakes"]
SCRIPTED = Path(__file__).with_name("ollama_engine.py")
PARROT = Path(__file__).with_name("parrot_engine.py")
KEY = "sk-ollama-test"


@pytest.fixture
def connect() -> Iterator[Callable[..., ollama.Client]]:
    """Makes ``ollama`` clients, closed after the test."""
    made: list[ollama.Client] = []

    def make(url: str, **kwargs: Any) -> ollama.Client:
        made.append(ollama.Client(host=url, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A call of the synchronous ``ollama`` client, off the loop swapyard runs on."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def drain(stream: Any) -> list[Any]:
    """The parts of a streamed ``ollama`` answer."""
    return await asyncio.to_thread(list, stream)


def fakes(**extra: Any) -> dict[str, Any]:
    return {
        "fake": {"cmd": fake_engine_cmd("fake"), "memory": "1MiB", **extra},
        "vllm": {"engine": "vllm", "model": "/models/v", "launcher": [*FAKES, "vllm"],
                 "fast_swap": False, "memory": "1MiB"},
    }  # fmt: skip


@asynccontextmanager
async def serving(models: dict[str, Any], **server: Any) -> AsyncIterator[RunningServer]:
    async with running_server(config(models, loading_status="off", **server)) as srv:
        yield srv


def state(srv: RunningServer, model: str) -> EngineState:
    return srv.router.model(model).state


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_ollama_client_lists_chats_generates_and_embeds_over_a_fake_engine(
    connect: Callable[..., ollama.Client],
) -> None:
    """list, ps, show, chat (streamed and not), generate and embed through the
    ``ollama`` client, on an engine that speaks only OpenAI's API."""
    async with serving(fakes()) as srv:
        client = connect(srv.url)
        listed = await off_loop(client.list)
        assert [m.model for m in listed.models] == ["fake", "vllm"]
        assert (await off_loop(client.ps)).models == []

        opts = {"num_predict": 4, "temperature": 0}
        msgs = [{"role": "user", "content": "hi"}]
        r = await off_loop(client.chat, model="fake", messages=msgs, options=opts)
        assert r.message.role == "assistant" and r.message.content == "fake: The quick brown"
        assert r.done and r.done_reason == "length"
        assert (r.eval_count, r.prompt_eval_count) == (4, 5)
        assert r.total_duration and r.eval_duration and r.load_duration is not None

        parts = await drain(client.chat(model="fake:latest", messages=msgs, options=opts,
                                        stream=True))  # fmt: skip
        assert "".join(p.message.content for p in parts) == "fake: The quick brown"
        assert [p.done for p in parts] == [False] * 4 + [True]
        assert parts[-1].eval_count == 4 and parts[-1].model == "fake:latest"

        g = await off_loop(client.generate, model="fake", prompt="hi", system="terse",
                           options=opts, stream=False)  # fmt: skip
        assert g.response == "fake: The quick brown" and g.done
        pieces = await drain(client.generate(model="vllm", prompt="hi", options=opts, stream=True))
        assert "".join(p.response for p in pieces) == "vllm: The quick brown"

        e = await off_loop(client.embed, model="fake", input=["a", "bbb"])
        assert len(e.embeddings) == 2
        assert all(math.isclose(math.hypot(*v), 1.0) for v in e.embeddings)  # unit vectors
        legacy = await off_loop(client.embeddings, model="fake", prompt="abcd")
        assert list(legacy.embedding) == [4.0, 0.5, -0.5]  # as the engine made it

        shown = await off_loop(client.show, "fake")
        assert shown.capabilities == ["completion"] and shown.modelinfo == {}
        running = await off_loop(client.ps)
        assert sorted(str(m.model) for m in running.models) == ["fake", "vllm"]
        fake = next(m for m in running.models if m.model == "fake")
        assert fake.expires_at is not None and fake.expires_at.year > 2200  # no ttl: kept
        assert fake.size_vram == 0  # the RAM device, not a GPU


async def test_an_engine_without_embeddings_answers_an_ollama_error(
    connect: Callable[..., ollama.Client],
) -> None:
    """The vLLM fake has no /v1/embeddings: its 404 reaches the client as Ollama's error."""
    async with serving(fakes()) as srv:
        client = connect(srv.url)
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.embed, model="vllm", input="x")
        assert err.value.status_code == 404 and isinstance(err.value.error, str)


async def test_a_stream_that_breaks_ends_with_an_error_line(http: aiohttp.ClientSession) -> None:
    """The engine dies mid-answer: the NDJSON stream's last line is ``{"error": ...}``."""
    async with serving({"fake": {"cmd": fake_engine_cmd("fake", crash_after_tokens=3)}}) as srv:
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(srv.url + "/api/chat", json=body) as r:
            assert r.status == 200 and r.content_type == "application/x-ndjson"
            lines = [json.loads(ln) for ln in (await r.text()).splitlines()]
        assert [ln["done"] for ln in lines[:-1]] == [False] * len(lines[:-1])
        assert set(lines[-1]) == {"error"} and "engine" in lines[-1]["error"]


async def test_an_engine_error_keeps_its_status_in_ollama_shape(
    connect: Callable[..., ollama.Client],
) -> None:
    async with serving({"fake": {"cmd": fake_engine_cmd("fake", error_status=500)}}) as srv:
        client = connect(srv.url)
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.chat, model="fake", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 500 and err.value.error == "simulated engine error"


async def test_an_engine_answer_that_is_no_completion_is_a_502_never_a_500(
    http: aiohttp.ClientSession,
) -> None:
    """Issue 14: whatever an engine answers with HTTP 200, the client gets Ollama's
    answer or a 502 ``{"error": ...}``; fields of the wrong type are not read."""
    async with serving({"p": {"cmd": f"{sys.executable} {PARROT} --port ${{PORT}}"}}) as srv:

        async def ask(path: str, said: Any) -> tuple[int, Any]:
            text = said if isinstance(said, str) else json.dumps(said)
            body: dict[str, Any] = {"model": "p", "stream": False}
            if path == "/api/chat":
                body["messages"] = [{"role": "user", "content": text}]
            else:
                body["input" if path == "/api/embed" else "prompt"] = text
            async with http.post(srv.url + path, json=body) as r:
                return r.status, await r.json()

        for path in ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings"):
            for said in ({"choices": [1]}, {"usage": 5}, {"data": [1]}, [1], "not JSON"):
                status, doc = await ask(path, said)
                assert status == 502 and set(doc) == {"error"}, (path, said, doc)
                assert isinstance(doc["error"], str)
        odd = {"choices": [{"message": {"content": "hi", "tool_calls": [1, {"function": 2}],
                                        "reasoning_content": 3}, "finish_reason": 4}],
               "usage": 5, "timings": {"predicted_ms": "6", "prompt_n": 7}}  # fmt: skip
        status, doc = await ask("/api/chat", odd)
        assert status == 200 and doc["message"]["content"] == "hi", doc
        assert doc["message"]["tool_calls"] == [{"function": {"name": "", "arguments": {}}}]
        assert (doc["done_reason"], doc["prompt_eval_count"], doc["eval_count"]) == ("stop", 7, 0)
        odd["choices"] = 8
        assert (await ask("/api/generate", odd))[0] == 502
        status, doc = await ask("/api/embed", {"data": [{"embedding": [3, 4]}], "usage": 5})
        assert status == 200 and doc["embeddings"] == [[0.6, 0.8]], doc
        assert doc["prompt_eval_count"] == 0


async def test_errors_are_ollama_shaped(
    http: aiohttp.ClientSession, connect: Callable[..., ollama.Client]
) -> None:
    """Unknown model, bad JSON, a bad keep_alive, a wrong method and pull each get
    ``{"error": "..."}`` with a 4xx/501 status; nothing is loaded."""
    async with serving(fakes()) as srv:
        client = connect(srv.url)
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.chat, model="nope", messages=[{"role": "user", "content": "x"}])
        assert err.value.status_code == 404 and "does not exist" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.show, "nope:latest")
        assert err.value.status_code == 404
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.pull, "llama3")
        assert err.value.status_code == 501 and "config" in err.value.error

        async def answer(method: str, path: str, data: bytes) -> tuple[int, Any]:
            async with http.request(method, srv.url + path, data=data) as r:
                return r.status, await r.json()

        assert (await answer("POST", "/api/chat", b"{not json"))[0] == 400
        bad_keep = json.dumps({"model": "fake", "prompt": "x", "keep_alive": "soon"}).encode()
        for method, path, data, status in [
            ("POST", "/api/chat", b"{not json", 400),
            ("POST", "/api/generate", bad_keep, 400),
            ("GET", "/api/chat", b"", 405),
            ("DELETE", "/api/delete", b'{"model": "fake"}', 501),
        ]:
            got, doc = await answer(method, path, data)
            assert got == status and isinstance(doc["error"], str), (path, doc)
        assert state(srv, "fake") is EngineState.STOPPED


async def test_a_keys_allow_list_holds_on_the_ollama_routes(
    http: aiohttp.ClientSession, connect: Callable[..., ollama.Client]
) -> None:
    """A key limited to one model sees only it (tags, ps) and is refused the other;
    no key at all is a 401, in Ollama's shape."""
    auth = {"keys": [{"name": "one", "key": KEY, "models": ["fake"]}]}
    async with running_server(keyed(auth)) as srv:
        client = connect(srv.url, headers={"Authorization": f"Bearer {KEY}"})
        assert [m.model for m in (await off_loop(client.list)).models] == ["fake"]
        msgs = [{"role": "user", "content": "x"}]
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.chat, model="vllm", messages=msgs)
        assert err.value.status_code == 403 and "may not use" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.show, "vllm")
        assert err.value.status_code == 403
        with pytest.raises(ollama.ResponseError) as err:  # keep_alive 0 may not unload it
            await off_loop(client.generate, model="vllm", keep_alive=0)
        assert err.value.status_code == 403
        await off_loop(client.chat, model="fake", messages=msgs, options={"num_predict": 2})
        await srv.router.load("vllm")
        assert [m.model for m in (await off_loop(client.ps)).models] == ["fake"]
        assert state(srv, "vllm") is EngineState.READY
        async with http.get(srv.url + "/api/tags") as r:
            assert r.status == 401 and isinstance((await r.json())["error"], str)


def keyed(auth: dict[str, Any], models: dict[str, Any] | None = None) -> Config:
    doc = {"server": {"loading_status": "off"}, "models": models or fakes(), "auth": auth,
           "scheduler": {"learn_memory": False}}  # fmt: skip
    return load_config(json.dumps(doc))


async def test_a_key_allowed_only_a_variant_uses_it_on_the_ollama_routes(
    http: aiohttp.ClientSession, connect: Callable[..., ollama.Client]
) -> None:
    """Issue 14: chat, show and embed for the variant the key names (and its
    ``:latest``); its base model is refused, and an unknown name lists only the
    variant."""
    variant = {"variants": {"cold": {"params": {"override": {"temperature": 0}}}}}
    auth = {"keys": [{"name": "v", "key": KEY, "models": ["cold"]}]}
    async with running_server(keyed(auth, fakes(**variant))) as srv:
        client = connect(srv.url, headers={"Authorization": f"Bearer {KEY}"})
        msgs = [{"role": "user", "content": "x"}]
        r = await off_loop(client.chat, model="cold", messages=msgs, options={"num_predict": 2})
        assert r.message.content == "fake: The"
        assert (await off_loop(client.show, "cold:latest")).capabilities == ["completion"]
        assert len((await off_loop(client.embed, model="cold", input="ab")).embeddings) == 1
        for call in (
            lambda: client.chat(model="fake", messages=msgs),
            lambda: client.show("fake"),
            lambda: client.embed(model="fake", input="ab"),
        ):
            with pytest.raises(ollama.ResponseError) as err:
                await off_loop(call)
            assert err.value.status_code == 403 and "may not use model 'fake'" in err.value.error
        with pytest.raises(ollama.ResponseError) as err:
            await off_loop(client.chat, model="nope", messages=msgs)
        assert err.value.status_code == 404
        assert err.value.error.endswith("available models: cold"), err.value.error
        assert [m.model for m in (await off_loop(client.list)).models] == ["cold"]


async def test_refused_routes_do_not_tell_a_plain_key_the_config_path(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Issue 14: /api/pull and the other refused routes answer any plain key; their
    message says how models are added, not where the config file lives."""
    source = tmp_path / "private-dir" / "swapyard.yaml"
    source.parent.mkdir()
    source.write_text(
        json.dumps({"models": fakes(), "auth": {"keys": [{"name": "p", "key": KEY}]}})
    )
    async with running_server(load_config_file(source)) as srv:
        for path in ("/api/pull", "/api/delete", "/api/create"):
            headers = {"Authorization": f"Bearer {KEY}"}
            async with http.post(srv.url + path, json={"model": "x"}, headers=headers) as r:
                said = (await r.json())["error"]
            assert r.status == 501 and "swapyard config reload" in said
            assert "private-dir" not in said, said


async def test_keep_alive_zero_unloads_the_model_after_the_request(
    connect: Callable[..., ollama.Client],
) -> None:
    async with serving(fakes()) as srv:
        client = connect(srv.url)
        msgs = [{"role": "user", "content": "x"}]
        r = await off_loop(client.chat, model="fake", messages=msgs, keep_alive=0,
                           options={"num_predict": 2})  # fmt: skip
        assert r.message.content  # answered in full first
        await eventually(lambda: state(srv, "fake") is EngineState.STOPPED, what="fake stopped")
        assert (await off_loop(client.ps)).models == []


async def test_keep_alive_duration_is_the_models_idle_ttl(
    connect: Callable[..., ollama.Client],
) -> None:
    """A duration becomes the TTL ps shows; a short one really stops the idle model."""
    async with serving(fakes()) as srv:
        client = connect(srv.url)
        msgs = [{"role": "user", "content": "x"}]
        await off_loop(client.chat, model="fake", messages=msgs, keep_alive="10m",
                       options={"num_predict": 2})  # fmt: skip
        await eventually(lambda: srv.router.model("fake").ttl == 600.0, what="ttl 600")
        (m,) = (await off_loop(client.ps)).models
        assert m.expires_at is not None
        assert m.expires_at < datetime.now(UTC) + timedelta(minutes=11)
        await off_loop(client.generate, model="fake", prompt="x", keep_alive="1s",
                       options={"num_predict": 2})  # fmt: skip
        await eventually(lambda: state(srv, "fake") is EngineState.STOPPED, what="idle stop")


async def test_negative_keep_alive_keeps_the_model_loaded(
    connect: Callable[..., ollama.Client],
) -> None:
    """With a config ttl, a negative keep_alive takes it away: ps says kept for good."""
    async with serving(fakes(ttl=30)) as srv:
        client = connect(srv.url)
        await off_loop(client.generate, model="fake", prompt="x", options={"num_predict": 2})
        assert srv.router.model("fake").ttl == 30.0
        await off_loop(client.generate, model="fake", prompt="x", keep_alive=-1,
                       options={"num_predict": 2})  # fmt: skip
        await eventually(lambda: srv.router.model("fake").ttl == 0.0, what="no ttl")
        (m,) = (await off_loop(client.ps)).models
        assert m.expires_at is not None and m.expires_at.year > 2200
        assert state(srv, "fake") is EngineState.READY


async def test_keep_alive_that_is_no_number_is_refused_and_ps_keeps_answering(
    http: aiohttp.ClientSession,
) -> None:
    """Issue 14: ``"inf"``, ``NaN`` and JSON's ``1e400`` are a 400 in Ollama's shape that
    changes nothing; ``"1e12"`` and a config ttl past any date keep the model, and
    ``/api/ps`` answers (its expiry overflowed: a 500 for every client)."""
    async with serving(fakes(ttl=1e12)) as srv:
        chat = ('{"model": "fake", "stream": false, "options": {"num_predict": 1}, '
                '"messages": [{"role": "user", "content": "x"}], "keep_alive": %s}')  # fmt: skip
        for keep in ('"inf"', "NaN", "1e400", '"-Infinity"', "1" + "0" * 400):
            async with http.post(srv.url + "/api/chat", data=chat % keep) as r:
                assert r.status == 400, keep
                assert "keep_alive" in (await r.json())["error"]
        assert state(srv, "fake") is EngineState.STOPPED  # refused before loading

        async def expiry() -> datetime:
            async with http.get(srv.url + "/api/ps") as r:
                assert r.status == 200, await r.text()
                (m,) = (await r.json())["models"]
                return when(m["expires_at"])

        async with http.post(srv.url + "/api/chat", data=chat % "null") as r:
            assert r.status == 200
        assert srv.router.model("fake").ttl == 1e12
        assert (await expiry()).year > 2200
        async with http.post(srv.url + "/api/chat", data=chat % '"1e12"') as r:
            assert r.status == 200
        await eventually(lambda: srv.router.model("fake").ttl == 0.0, what="kept")
        assert (await expiry()).year > 2200


async def test_load_and_unload_without_a_prompt(connect: Callable[..., ollama.Client]) -> None:
    """Ollama's idiom: a generate or chat without prompt loads; with keep_alive 0, unloads."""
    async with serving(fakes()) as srv:
        client = connect(srv.url)
        loaded = await off_loop(client.generate, model="fake")
        assert loaded.done_reason == "load" and state(srv, "fake") is EngineState.READY
        gone = await off_loop(client.chat, model="fake", messages=[], keep_alive=0)
        assert gone.done_reason == "unload"
        await eventually(lambda: state(srv, "fake") is EngineState.STOPPED, what="unloaded")


def recorded(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


async def test_tools_images_thinking_and_options_cross_both_ways(
    tmp_path: Path, connect: Callable[..., ollama.Client]
) -> None:
    """What the engine receives is OpenAI's shape (JSON-string arguments, tool ids,
    image parts, sampler names, response_format), and what the client gets is
    Ollama's (arguments as objects, ``thinking``), streamed and not."""
    record = tmp_path / "bodies.jsonl"
    cmd = f"{sys.executable} {SCRIPTED} --port ${{PORT}} --record {record}"
    async with serving({"s": {"cmd": cmd, "stream_usage": True}}) as srv:
        client = connect(srv.url)
        params = {"type": "object", "properties": {"city": {"type": "string"}}}
        about = {"name": "get_weather", "description": "weather of a city", "parameters": params}
        tool = {"type": "function", "function": about}
        msgs: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]
        opts = {"temperature": 0.2, "top_k": 5, "repeat_penalty": 1.1, "num_predict": 9,
                "num_ctx": 4096, "stop": ["\n"]}  # fmt: skip
        r = await off_loop(client.chat, model="s", messages=msgs, tools=[tool], options=opts,
                           think=True)  # fmt: skip
        (call,) = r.message.tool_calls or []
        assert call.function.name == "get_weather"
        assert call.function.arguments == {"city": "Paris", "unit": "celsius"}
        assert r.message.thinking == "Let me think." and r.done_reason == "stop"
        sent = recorded(record)[-1]
        assert sent["tools"] == [tool] and sent["chat_template_kwargs"] == {"enable_thinking": True}
        assert {k: sent[k] for k in ("temperature", "top_k", "repeat_penalty", "max_tokens",
                                     "stop")} == {"temperature": 0.2, "top_k": 5,
                                                  "repeat_penalty": 1.1, "max_tokens": 9,
                                                  "stop": ["\n"]}  # fmt: skip
        assert "num_ctx" not in sent

        parts = await drain(client.chat(model="s", messages=msgs, tools=[tool], stream=True))
        calls = [c for p in parts for c in p.message.tool_calls or []]
        assert [c.function.arguments for c in calls] == [{"city": "Paris", "unit": "celsius"}]
        assert parts[-1].done and parts[-1].eval_count == 3  # the usage chunk's figures

        answer = [*msgs, {"role": "assistant", "content": "",
                          "tool_calls": [{"function": {"name": "get_weather",
                                                       "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "tool_name": "get_weather", "content": "sunny"},
                  {"role": "user", "content": "and this?", "images": ["iVBORw0KGgo="]}]  # fmt: skip
        parts = await drain(client.chat(model="s", messages=answer, tools=[tool], stream=True,
                                        format="json", think=False))  # fmt: skip
        assert "".join(p.message.content for p in parts) == "It is sunny. "
        assert all(not p.message.thinking for p in parts)
        sent = recorded(record)[-1]
        assistant, tool_msg, user = sent["messages"][1:]
        (sent_call,) = assistant["tool_calls"]
        assert json.loads(sent_call["function"]["arguments"]) == {"city": "Paris"}
        assert tool_msg == {"role": "tool", "content": "sunny", "tool_call_id": sent_call["id"]}
        assert user["content"] == [
            {"type": "text", "text": "and this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]
        assert sent["response_format"] == {"type": "json_object"}
        assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        g = await off_loop(client.generate, model="s", prompt="p", system="sys", format=schema)
        assert g.response == "It is sunny." and g.prompt_eval_count == 7
        sent = recorded(record)[-1]
        assert sent["messages"] == [{"role": "system", "content": "sys"},
                                    {"role": "user", "content": "p"}]  # fmt: skip
        assert sent["response_format"]["json_schema"]["schema"] == schema


async def test_generate_with_a_suffix_fills_the_middle_through_llamacpps_infill(
    tmp_path: Path, connect: Callable[..., ollama.Client]
) -> None:
    """Code-completion plugins send prompt + suffix: a llama.cpp-style engine gets
    them on /infill (its /v1/completions ignores `suffix`), and its answer comes back
    as Ollama's, streamed and not."""
    record = tmp_path / "bodies.jsonl"
    cmd = f"{sys.executable} {SCRIPTED} --port ${{PORT}} --record {record}"
    async with serving({"s": {"cmd": cmd}}) as srv:
        client = connect(srv.url)
        g = await off_loop(client.generate, model="s", prompt="def add(a, b):\n    return ",
                           suffix="\n", options={"num_predict": 8})  # fmt: skip
        assert g.response == "a + b" and g.done_reason == "stop"
        assert (g.prompt_eval_count, g.eval_count, g.eval_duration) == (4, 2, 3_000_000)
        sent = recorded(record)[-1]
        assert (sent["input_prefix"], sent["input_suffix"]) == ("def add(a, b):\n    return ", "\n")
        assert sent["max_tokens"] == 8 and "prompt" not in sent
        parts = await drain(client.generate(model="s", prompt="x", suffix="y", stream=True))
        assert [p.response for p in parts] == ["a +", " b", ""]
        assert parts[-1].done_reason == "length" and parts[-1].eval_count == 2


# -- real llama.cpp ---------------------------------------------------------------------


@pytest.fixture
def llama_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from swapyard.defaults import ensure_default_models

    monkeypatch.setenv("SWAPYARD_LLAMA_SERVER", llama_server())
    files = ensure_default_models()
    return {
        "smollm2": {"engine": "llamacpp", "model": str(files["smollm2"]),
                    "extra_args": ["--embeddings", "--pooling", "mean", "-c", "2048"]},
        "tiny": {"engine": "llamacpp", "model": str(files["tiny"]), "extra_args": ["-c", "512"]},
    }  # fmt: skip


@pytest.mark.llamacpp
async def test_ollama_client_over_real_llamacpp_models(
    llama_models: dict[str, Any], connect: Callable[..., ollama.Client]
) -> None:
    """The ``ollama`` client's list, show, chat, generate, embed and ps on real
    llama.cpp engines (``raw`` generate: llama.cpp's own text completion)."""
    async with serving(llama_models) as srv:
        client = connect(srv.url)
        assert [m.model for m in (await off_loop(client.list)).models] == ["smollm2", "tiny"]
        smol = (await off_loop(client.list)).models[0]
        assert smol.details is not None and smol.details.family == "llama"
        assert (smol.details.quantization_level, smol.details.parameter_size) == ("Q4_1", "135M")
        shown = await off_loop(client.show, "smollm2")
        assert shown.capabilities == ["completion", "embedding"]
        assert shown.modelinfo is not None and shown.modelinfo["llama.context_length"] == 8192

        ask = [{"role": "user", "content": "What color is the sky on a clear day?"}]
        opts = {"temperature": 0, "num_predict": 24}
        r = await off_loop(client.chat, model="smollm2", messages=ask, options=opts)
        assert "blue" in (r.message.content or "").lower(), r.message.content
        assert r.eval_count and r.prompt_eval_count and r.eval_duration and r.load_duration

        parts = await drain(client.chat(model="smollm2", messages=ask, options=opts, stream=True))
        assert "blue" in "".join(p.message.content for p in parts).lower()
        assert parts[-1].done and parts[-1].eval_count == len(parts) - 1

        e = await off_loop(client.embed, model="smollm2", input=["sky", "sea"])
        assert len(e.embeddings) == 2 and len(e.embeddings[0]) == 576
        (running,) = (await off_loop(client.ps)).models
        assert running.model == "smollm2" and running.size and running.context_length == 2048

        g = await off_loop(client.generate, model="tiny", prompt="Hello", options=opts)
        assert len((g.response or "").split()) >= 3, g.response
        assert [m.model for m in (await off_loop(client.ps)).models] == ["smollm2", "tiny"]
        raw = await drain(client.generate(model="smollm2", prompt="The sky is", raw=True,
                                          options={"num_predict": 8}, stream=True))  # fmt: skip
        assert raw[-1].done and raw[-1].eval_count == 8
        with pytest.raises(ollama.ResponseError) as err:  # neither model has FIM tokens
            await off_loop(client.generate, model="smollm2", prompt="def f(", suffix="x")
        assert err.value.status_code == 501 and "Infill is not supported" in err.value.error


# -- pure conversions, and the FakeRouter's side of keep_alive ---------------------------
@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (0, 0.0), (300, 300.0), ("300", 300.0), ("5m", 300.0), ("1h30m", 5400.0),
     ("1.5s", 1.5), ("-1", -1.0), ("-1m", -60.0), ("0", 0.0), ("250ms", 0.25)],
)  # fmt: skip
def test_keep_alive_takes_seconds_and_go_durations(value: Any, seconds: float | None) -> None:
    assert keep_alive_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 m", "m", True, [1]])
def test_keep_alive_that_is_no_duration_is_refused(value: Any) -> None:
    with pytest.raises(RequestError, match="keep_alive"):
        keep_alive_seconds(value)


@pytest.mark.parametrize(
    "value", ["inf", "-inf", "nan", "Infinity", "1e400", math.inf, -math.inf, math.nan, 10**400,
              "9" * 400 + "h"],
)  # fmt: skip
def test_keep_alive_that_is_no_finite_number_is_refused(value: Any) -> None:
    """Issue 14: such a TTL made /api/ps fail for every client."""
    with pytest.raises(RequestError, match="keep_alive"):
        keep_alive_seconds(value)


@pytest.mark.parametrize("value", [1e12, "1e12", "3000000h", 10**11, 292 * 366 * 86400])
def test_keep_alive_longer_than_ollamas_largest_duration_keeps_the_model(value: Any) -> None:
    """Issue 14: past Ollama's own "forever" (292 years) is forever: -1."""
    assert keep_alive_seconds(value) == -1.0


@pytest.mark.parametrize(
    ("engine", "sent"),
    [("llamacpp", True), ("command", True), ("vllm", True), ("sglang", True),
     ("tabbyapi", False), ("ollama", False), ("openai", False)],
)  # fmt: skip
def test_think_asks_only_engines_that_take_chat_template_kwargs(engine: str, sent: bool) -> None:
    """Issue 14: a remote OpenAI server refuses the unknown field; a level is
    ``reasoning_effort`` for every engine."""
    msgs = [{"role": "user", "content": "x"}]
    body = chat_body({"think": False, "messages": msgs}, "m", engine, False)
    assert ("chat_template_kwargs" in body) is sent
    if sent:
        assert body["chat_template_kwargs"] == {"enable_thinking": False}
    _, gen = generate_body({"think": True, "prompt": "x"}, "m", engine, False)
    assert ("chat_template_kwargs" in gen) is sent
    level = chat_body({"think": "high", "messages": msgs}, "m", engine, False)
    assert level["reasoning_effort"] == "high" and "chat_template_kwargs" not in level


def test_options_go_by_each_engines_own_sampler_names() -> None:
    """llama.cpp names for llama.cpp, vLLM's for vLLM, only OpenAI's for a remote
    OpenAI-style server; load-time options and unknown ones nowhere."""
    opts = {"temperature": 0.5, "top_k": 3, "repeat_penalty": 1.2, "mirostat": 2,
            "num_predict": -1, "num_ctx": 8192, "stop": "END", "bogus": 1}  # fmt: skip
    assert sampling(opts, "llamacpp") == {"temperature": 0.5, "top_k": 3, "repeat_penalty": 1.2,
                                          "mirostat": 2, "stop": ["END"]}  # fmt: skip
    assert sampling(opts, "vllm") == {"temperature": 0.5, "top_k": 3,
                                      "repetition_penalty": 1.2, "stop": ["END"]}  # fmt: skip
    assert sampling(opts, "openai") == {"temperature": 0.5, "stop": ["END"]}
    assert sampling({"num_predict": 0}, "openai") == {"max_tokens": 0}


async def test_load_idiom_tells_the_fake_router_the_keep_alive(
    connect: Callable[..., ollama.Client],
) -> None:
    """Over a ``FakeRouter`` (no engine): the load idiom acquires and passes keep_alive on."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m")}})
    router = FakeRouter(cfg)
    async with running_server(cfg, router) as srv:
        client = connect(srv.url)
        await off_loop(client.generate, model="m", keep_alive="5m")
        assert router.acquired == ["m"] and router.keep_alives == [("m", 300.0)]
        assert router.model("m").ttl == 300.0
        await off_loop(client.generate, model="m", keep_alive=0)
        assert router.keep_alives[-1] == ("m", 0) and state(srv, "m") is EngineState.STOPPED
