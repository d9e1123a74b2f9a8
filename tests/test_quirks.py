"""Stream quirks fixed on the way through, and remote OpenAI-compatible upstreams."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import aiohttp

from helpers import config, eventually
from swapyard.config import ModelSpec
from swapyard.ports import PortAllocator
from swapyard.quirks import StreamFix, adapt_request
from swapyard.testing import fake_engine_cmd, running_server

CHAT = "/v1/chat/completions"


def sse(*docs: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs) + (
        b"data: [DONE]\n\n"
    )


def chunk(text: str, usage: dict[str, int] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"choices": [{"index": 0, "delta": {"content": text}}]}
    if usage:
        doc["usage"] = usage
    return doc


def run(fix: StreamFix, data: bytes, step: int) -> bytes:
    out = b"".join(fix.feed(data[i : i + step]) for i in range(0, len(data), step))
    return out + fix.flush()


def deltas(out: bytes) -> list[str]:
    texts = []
    for ev in out.split(b"\n\n"):
        if ev.startswith(b"data: {"):
            for c in json.loads(ev[6:]).get("choices", []):
                texts.append(c["delta"].get("content", ""))
    return texts


def test_cumulative_stream_becomes_deltas_whatever_the_chunking() -> None:
    data = sse(chunk("Hel"), chunk("Hello"), chunk("Hello, wor"), chunk("Hello, world"))
    for step in (1, 3, 7, len(data)):
        out = run(StreamFix(cumulative=True), data, step)
        assert deltas(out) == ["Hel", "lo", ", wor", "ld"]
        assert out.endswith(b"data: [DONE]\n\n")


def test_usage_chunk_the_client_did_not_ask_for_is_kept_back_but_read() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    data = sse(chunk("a"), chunk("b"), {"choices": [], "usage": usage})
    fix = StreamFix(drop_usage=True)
    out = run(fix, data, 5)
    assert b"usage" not in out and deltas(out) == ["a", "b"]
    assert fix.usage == usage
    untouched = StreamFix()
    assert run(untouched, data, 5) == data  # nothing to fix: the bytes as they came


def spec_of(**fields: Any) -> ModelSpec:
    return config({"m": {"cmd": "x --port ${PORT}", **fields}}).models["m"]


def test_requests_get_usage_and_the_engines_model_name_only_when_needed() -> None:
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    doc = json.loads(body)
    same, fix = adapt_request(spec_of(), CHAT, doc, body)
    assert same is body and not fix.active
    out, fix = adapt_request(spec_of(stream_usage=True), CHAT, doc, body)
    assert json.loads(out)["stream_options"] == {"include_usage": True} and fix.drop_usage
    asked = {**doc, "stream_options": {"include_usage": True}}
    raw = json.dumps(asked).encode()
    out, fix = adapt_request(spec_of(stream_usage=True), CHAT, asked, raw)
    assert out is raw and not fix.drop_usage  # the client asked: it gets the usage chunk
    ollama = config({"o": {"engine": "ollama", "model": "qwen2.5:7b"}}).models["o"]
    out, _ = adapt_request(ollama, CHAT, {"model": "o"}, b'{"model": "o"}')
    assert json.loads(out)["model"] == "qwen2.5:7b"


async def stream_text(http: aiohttp.ClientSession, url: str, model: str, **extra: Any) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "max_tokens": 6, **extra}  # fmt: skip
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        assert r.status == 200
        return await r.text()


async def test_cumulative_engine_reaches_clients_as_deltas(http: aiohttp.ClientSession) -> None:
    models = {
        "cum": {"cmd": fake_engine_cmd("cum", cumulative=True), "cumulative_stream": True},
        "raw": {"cmd": fake_engine_cmd("raw", cumulative=True)},
    }
    async with running_server(config(models, loading_status="off")) as srv:
        fixed = deltas((await stream_text(http, srv.url, "cum")).encode())
        assert "".join(fixed) == "cum: The quick brown fox jumps"
        assert fixed[1] == " The"
        raw = deltas((await stream_text(http, srv.url, "raw")).encode())
        assert raw[-2] == "raw: The quick brown fox jumps"  # untouched without the flag


async def test_usage_is_requested_and_only_shown_when_asked(http: aiohttp.ClientSession) -> None:
    models = {"u": {"cmd": fake_engine_cmd("u"), "stream_usage": True}}
    async with running_server(config(models, loading_status="off")) as srv:
        plain = await stream_text(http, srv.url, "u")
        assert '"usage"' not in plain and plain.endswith("data: [DONE]\n\n")
        await eventually(lambda: any("stream=True" in ln for ln in srv.router.logs("u").tail()))
        asked = await stream_text(http, srv.url, "u", stream_options={"include_usage": True})
        assert '"completion_tokens": 6' in asked


async def test_remote_openai_upstream_gets_its_own_key(http: aiohttp.ClientSession) -> None:
    port = PortAllocator().allocate()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swapyard.testing.fake_engine", "--port", str(port),
        "--model-id", "gpt-remote", "--require-key", "sk-upstream",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        os.environ["SWAPYARD_TEST_REMOTE_KEY"] = "sk-upstream"
        models = {
            "remote": {
                "engine": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                "api_key_env": "SWAPYARD_TEST_REMOTE_KEY", "model": "gpt-remote",
                "start_timeout": 10,
            }
        }  # fmt: skip
        async with running_server(config(models, loading_status="off")) as srv:
            body = {"model": "remote", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": "Bearer client-key"}  # not forwarded
            async with http.post(srv.url + "/v1/chat/completions", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["choices"][0]["message"]["content"].startswith(
                    "gpt-remote:"
                )
            assert srv.router.model("remote").engine.pid is None  # no process of ours
            await srv.router.unload("remote")
    finally:
        os.environ.pop("SWAPYARD_TEST_REMOTE_KEY", None)
        proc.terminate()
        await proc.wait()
