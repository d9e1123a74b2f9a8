"""End to end on a real llama.cpp server with real GGUF models, through the official
``openai`` client: A, then B, then A again, streaming and not, while swapyard swaps.

Runs twice: with the prebuilt ``xllamacpp`` wheel (the default engine) and with
``llama-server`` compiled from the llama-cpp-python sdist (``scripts/build-llama-server``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from helpers import llama_server
from swapyard.config import load_config
from swapyard.defaults import default_config_text, ensure_default_models
from swapyard.testing import running_server

pytestmark = pytest.mark.llamacpp

QUESTION = "What color is the sky on a clear day?"


@pytest.fixture(scope="session")
def models() -> dict[str, Path]:
    return ensure_default_models()


@pytest.fixture(params=["xllamacpp", "llama-server"])
def engine(request: pytest.FixtureRequest) -> Iterator[str]:
    old = os.environ.pop("SWAPYARD_LLAMA_SERVER", None)
    if request.param == "llama-server":
        os.environ["SWAPYARD_LLAMA_SERVER"] = llama_server()
    try:
        yield request.param
    finally:
        os.environ.pop("SWAPYARD_LLAMA_SERVER", None)
        if old is not None:
            os.environ["SWAPYARD_LLAMA_SERVER"] = old


async def ask(client: AsyncOpenAI, model: str, *, stream: bool) -> tuple[str, list[str]]:
    """The answer text and any loading-status lines."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
    if not stream:
        r = await client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=24,
            temperature=0,
        )
        return r.choices[0].message.content or "", []
    text, status = "", []
    chunks = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=24, temperature=0, stream=True,
    )  # fmt: skip
    async for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text += delta.content or ""
        extra = (delta.model_extra or {}).get("reasoning_content")
        if extra:
            status.append(extra)
    return text, status


async def resident(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as http, http.get(url + "/health") as r:
        doc = await r.json()
    return {m: s["state"] for m, s in doc["models"].items()}


async def test_real_llamacpp_swaps_between_two_models(engine: str, models: dict[str, Path]) -> None:
    config = load_config(default_config_text(models, threads=2))
    async with running_server(config) as srv:
        client = AsyncOpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        try:
            listed = [m.id async for m in client.models.list()]
            assert listed == ["smollm2", "tiny"]

            answer, status = await ask(client, "smollm2", stream=False)
            assert "blue" in answer.lower(), answer
            assert await resident(srv.url) == {"smollm2": "ready", "tiny": "stopped"}

            answer, status = await ask(client, "tiny", stream=True)
            assert len(answer.split()) >= 3, answer  # real tokens from random weights
            assert status and status[-1].startswith("Model tiny ready after")
            assert await resident(srv.url) == {"smollm2": "stopped", "tiny": "ready"}

            answer, status = await ask(client, "smollm2-135m", stream=True)
            assert "blue" in answer.lower(), answer
            assert status[-1].startswith("Model smollm2 ready after")
            assert await resident(srv.url) == {"smollm2": "ready", "tiny": "stopped"}

            answer, _ = await ask(client, "tiny", stream=False)
            assert len(answer.split()) >= 3, answer
        finally:
            await client.close()


async def test_engine_llamacpp_with_only_model_given(engine: str, models: dict[str, Path]) -> None:
    """``engine: llamacpp`` + ``model:`` is all a user writes: swapyard builds the
    command, health check and readiness; streaming usage is requested from the
    engine and reaches the client only when it asked for it."""
    only = {"engine": "llamacpp", "model": str(models["smollm2"])}
    cfg = load_config(json.dumps({"models": {"smol": only}}))
    async with running_server(cfg) as srv:
        client = AsyncOpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        try:
            answer, status = await ask(client, "smol", stream=True)
            assert "blue" in answer.lower(), answer
            assert status[-1].startswith("Model smol ready after")
            chunks = await client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
                stream=True, stream_options={"include_usage": True},
            )  # fmt: skip
            usage = [c.usage async for c in chunks if c.usage is not None]
            assert usage and usage[-1].completion_tokens == 8
            plain = await client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
                stream=True,
            )  # fmt: skip
            assert [c.usage async for c in plain if c.usage is not None] == []
        finally:
            await client.close()
        launched = next(ln for ln in srv.router.logs("smol").tail() if "starting:" in ln)
        assert "--alias smol" in launched and "--port" in launched
