"""Edges of the translating fronts found in review (issue 14): what an engine gets
when swapyard translates a request, and what a translated stream reads from an
engine that was not asked for usage."""

from __future__ import annotations

import json
import sys

import aiohttp
import anthropic
import pytest

from helpers import config, llama_server
from swapyard.defaults import ensure_default_models
from swapyard.testing import running_server

FAKES = [sys.executable, "-m", "swapyard.testing.engine_fakes"]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_translated_calls_reach_a_fastapi_engine_as_json(
    http: aiohttp.ClientSession,
) -> None:
    """The body is swapyard's JSON whatever the client's Content-Type said: ``curl -d``
    (Ollama's own docs) sends form-urlencoded, which FastAPI engines (vLLM, SGLang)
    refuse with a 422, as the vLLM fake does. ``/api/chat`` and a translated
    ``/v1/messages`` sent as a form reach it as JSON; the pass-through route keeps
    the client's own header."""
    models = {"v": {"engine": "vllm", "model": "/models/v", "launcher": [*FAKES, "vllm"],
                    "fast_swap": False, "memory": "1MiB"}}  # fmt: skip
    async with running_server(config(models, loading_status="off")) as srv:
        chat = {"model": "v", "stream": False, "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": 3}}  # fmt: skip
        async with http.post(srv.url + "/api/chat", data=json.dumps(chat), headers=FORM) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["message"]["content"]
        msg = {"model": "v", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(srv.url + "/v1/messages", data=json.dumps(msg), headers=FORM) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["content"][0]["type"] == "text"
        openai = {"model": "v", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(srv.url + "/v1/chat/completions", data=json.dumps(openai),
                             headers=FORM) as r:  # fmt: skip
            assert r.status == 422  # passed through as sent: the engine's own answer


@pytest.mark.llamacpp
async def test_a_translated_stream_counts_tokens_from_llama_servers_timings() -> None:
    """A raw ``cmd`` running llama-server is not asked for usage, but times each answer:
    a translated Anthropic stream reports its input and output tokens from that."""
    smol = ensure_default_models()["smollm2"]
    cmd = [llama_server(), "-m", str(smol), "--port", "${PORT}", "-c", "512", "-t", "2"]
    models = {"m": {"cmd": cmd, "anthropic": "translate", "start_timeout": 60}}
    async with running_server(config(models, loading_status="off")) as srv:
        client = anthropic.AsyncAnthropic(base_url=srv.url, api_key="x", max_retries=0)
        async with client.messages.stream(
            model="m", max_tokens=8, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            final = await stream.get_final_message()
        await client.close()
    assert final.usage.input_tokens > 0 and 0 < final.usage.output_tokens <= 8
