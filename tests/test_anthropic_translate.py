"""Issue 14, Anthropic's Messages API over any engine: passed through to engines
that speak it, translated to and from chat completions for those that do not.

The real ``anthropic`` client against a running swapyard: over the vLLM fake
(which, like vLLM, has no ``/v1/messages``), over the fake engine with its faults,
and (``llamacpp`` tests) over llama-server, natively and forced to translate.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from anthropic import AsyncAnthropic

from helpers import config, eventually, llama_server
from swapyard.api.anthropic_chat import Ask, to_chat, to_message
from swapyard.api.anthropic_stream import EventStream
from swapyard.defaults import ensure_default_models
from swapyard.errors import RequestError, UpstreamDied
from swapyard.testing import fake_engine_cmd, running_server

VLLM_FAKE = [sys.executable, "-m", "swapyard.testing.engine_fakes", "vllm"]
PARROT = Path(__file__).with_name("parrot_engine.py")
HI: Any = [{"role": "user", "content": "hi"}]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}


# -- the translation itself -----------------------------------------------------------


def test_request_becomes_a_chat_completion_with_system_images_tools_and_sampling() -> None:
    """Every field of a Messages request lands where chat completions keep it."""
    doc = {
        "model": "m", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "stream": True, "stop_sequences": ["END"], "metadata": {"user_id": "u1"},
        "system": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "What is here?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0KGgo="}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
    }  # fmt: skip
    chat, ask = to_chat(doc)
    assert chat == {
        "model": "m", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9, "top_k": 40,
        "stream": True, "stop": ["END"],
        "tools": [{"type": "function", "function": {
            "name": "get_weather", "description": "The weather in a city",
            "parameters": WEATHER["input_schema"]}}],
        "tool_choice": "required", "parallel_tool_calls": False,
        "messages": [
            {"role": "system", "content": "Be brief.\nBe kind."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is here?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ]},
            {"role": "assistant", "content": "Let me look.", "tool_calls": [
                {"id": "toolu_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
            {"role": "user", "content": "And tomorrow?"},
        ],
    }  # fmt: skip
    assert ask == Ask("m", ("END",), thinking=False)


def test_tool_choice_names_a_function_and_errors_are_marked() -> None:
    """``tool`` picks one function; an error result says so; a system turn in the
    messages (newer agents send one) stays a system message."""
    chat, _ = to_chat({
        "model": "m", "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                          "is_error": True,
                                          "content": [{"type": "text", "text": "no city"}]}]},
        ],
    })  # fmt: skip
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "tool", "tool_call_id": "t", "content": "Error: no city"},
    ]


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "document"}]}]},
         "messages.0.content.0"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": "hi"}, "messages"),
        ({"messages": HI, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
         "tools.0"),
        ({"messages": HI, "tool_choice": {"type": "maybe"}}, "tool_choice"),
    ],
)  # fmt: skip
def test_what_cannot_be_translated_is_refused_by_name(doc: dict[str, Any], where: str) -> None:
    with pytest.raises(RequestError) as exc:
        to_chat({"model": "m", **doc})
    assert exc.value.status == 400 and exc.value.param == where


def sse(*docs: Any) -> bytes:
    return b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs)


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
    return {"object": "chat.completion.chunk", "choices": [choice]}


def events(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) of each event; the data's own type must match the event line."""
    out = []
    for raw in data.decode().split("\n\n"):
        if not raw.strip():
            continue
        lines = raw.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), raw
        kind, doc = lines[0][7:], json.loads(lines[1][6:])
        assert doc["type"] == kind
        out.append((kind, doc))
    return out


ENGINE_STREAM = sse(
    chunk({"role": "assistant", "reasoning_content": "Think"}),
    chunk({"reasoning_content": "ing."}),
    chunk({"content": "Hel"}),
    chunk({"content": "lo"}),
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Oslo"}'}}]}),
    chunk({}, "tool_calls"),
    {"object": "chat.completion.chunk", "choices": [],
     "usage": {"prompt_tokens": 12, "completion_tokens": 7}},
) + b"data: [DONE]\n\n"  # fmt: skip


@pytest.mark.parametrize("step", [1, 7, len(ENGINE_STREAM)])
@pytest.mark.parametrize("crlf", [False, True])
def test_stream_events_come_in_anthropics_order(step: int, crlf: bool) -> None:
    """Thinking, text and a tool call each get a block; message_delta carries the
    stop reason and the usage that came last; bytes may be cut anywhere."""
    data = ENGINE_STREAM.replace(b"\n", b"\r\n") if crlf else ENGINE_STREAM
    ev = EventStream(Ask("asked", thinking=True))
    out = b"".join(ev.feed(data[i : i + step]) for i in range(0, len(data), step)) + ev.end()
    got = events(out)
    assert [k for k, _ in got] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert got[0][1]["message"]["model"] == "asked"
    starts = [d["content_block"] for k, d in got if k == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "text", "tool_use"]
    assert starts[2]["id"] == "call_1" and starts[2]["name"] == "get_weather"
    deltas = [d["delta"] for k, d in got if k == "content_block_delta"]
    assert "".join(d.get("text", "") for d in deltas) == "Hello"
    assert "".join(d.get("partial_json", "") for d in deltas) == '{"city": "Oslo"}'
    indexes = [d["index"] for k, d in got if k.startswith("content_block")]
    assert indexes == [0] * 4 + [1] * 4 + [2] * 4
    final = got[-2][1]
    assert final["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert final["usage"] == {"input_tokens": 12, "output_tokens": 7}


def test_reasoning_is_left_out_unless_thinking_was_asked_for() -> None:
    ev = EventStream(Ask("m"))
    kinds = [d["content_block"]["type"] for k, d in events(ev.feed(ENGINE_STREAM) + ev.end())
             if k == "content_block_start"]  # fmt: skip
    assert kinds == ["text", "tool_use"]


def test_a_broken_stream_ends_with_an_error_event_and_nothing_after() -> None:
    ev = EventStream(Ask("m"))
    begun = ev.feed(sse(chunk({"content": "Hel"})))
    last = ev.error(UpstreamDied("m", "the engine of 'm' stopped in the middle of the answer"))
    got = events(begun + last + ev.end() + ev.feed(sse(chunk({"content": "lo"}))))
    said = "the engine of 'm' stopped in the middle of the answer"
    assert got[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": said}})
    assert [k for k, _ in got].count("error") == 1 and "message_stop" not in dict(got)


def test_whole_answer_maps_finish_reasons_and_usage() -> None:
    """length → max_tokens; a stop string vLLM names → stop_sequence; else end_turn;
    cached prompt tokens are counted apart, as Anthropic counts them."""
    ask = Ask("asked", stops=("END",))

    def answer(finish: str, **choice: Any) -> dict[str, Any]:
        usage = {"prompt_tokens": 9, "completion_tokens": 3,
                 "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
        msg = {"role": "assistant", "content": "hi"}
        return to_message(ask, {"choices": [{"message": msg, "finish_reason": finish, **choice}],
                                "usage": usage})  # fmt: skip

    got = answer("length")
    assert got["stop_reason"] == "max_tokens" and got["model"] == "asked"
    assert got["content"] == [{"type": "text", "text": "hi"}]
    assert got["usage"] == {"input_tokens": 5, "output_tokens": 3, "cache_read_input_tokens": 4}
    assert answer("stop", stop_reason="END")["stop_sequence"] == "END"
    assert answer("stop", stop_reason="END")["stop_reason"] == "stop_sequence"
    assert answer("stop")["stop_reason"] == "end_turn"
    assert answer("stop", stop_reason=2)["stop_reason"] == "end_turn"  # a token id: EOS


# -- which engines get what ---------------------------------------------------------------


def test_engine_kinds_say_whether_they_speak_messages_and_a_model_may_override() -> None:
    models = {
        "l": {"engine": "llamacpp", "model": "/m.gguf"},
        "o": {"engine": "ollama", "model": "q:7b"},
        "v": {"engine": "vllm", "model": "x"},
        "s": {"engine": "sglang", "model": "x"},
        "t": {"engine": "tabbyapi", "model": "x"},
        "r": {"engine": "openai", "base_url": "http://h/v1"},
        "c": {"cmd": "x --port ${PORT}"},
        "lt": {"engine": "llamacpp", "model": "/m.gguf", "anthropic": "translate"},
        "vn": {"engine": "vllm", "model": "x", "anthropic": "native"},
    }
    got = {k: m.anthropic for k, m in config(models).models.items()}
    assert got == {"l": "native", "o": "native", "v": "translate", "s": "translate",
                   "t": "translate", "r": "translate", "c": "native", "lt": "translate",
                   "vn": "native"}  # fmt: skip


# -- the real client against a running swapyard -------------------------------------------


@pytest.fixture
async def yard() -> AsyncIterator[Any]:
    """swapyard over the vLLM fake (``v``: no /v1/messages, translated by default) and
    the fake engine refusing unknown routes, forced to translate, with its faults."""

    def fake(**flags: Any) -> dict[str, Any]:
        cmd = fake_engine_cmd("f", strict_routes=True, **flags)
        return {"cmd": cmd, "anthropic": "translate", "stream_usage": True}

    cfg = config({
        "v": {"engine": "vllm", "model": "/models/v", "launcher": VLLM_FAKE, "fast_swap": False},
        "eos": fake(eos_after=3),
        "cut": fake(reset_after_tokens=3),
        "bad": fake(error_status=400),
        "down": fake(error_status=503),
        "strict": {"cmd": fake_engine_cmd("s", strict_routes=True)},
    }, loading_status="off")  # fmt: skip
    async with running_server(cfg) as srv:
        yield srv


@pytest.fixture
async def client(yard: Any) -> AsyncIterator[AsyncAnthropic]:
    c = AsyncAnthropic(base_url=yard.url, api_key="x", max_retries=0)
    try:
        yield c
    finally:
        await c.close()


async def test_messages_over_an_engine_without_them_streaming_and_not(yard: Any) -> None:
    """The client's own model name, text, max_tokens and the engine's usage, whether
    the answer is whole (the synchronous client, as users write it) or streamed."""

    def ask() -> anthropic.types.Message:
        with anthropic.Anthropic(base_url=yard.url, api_key="x", max_retries=0) as c:
            return c.messages.create(model="v", max_tokens=4, messages=HI)

    whole = await asyncio.to_thread(ask)
    assert whole.model == "v" and whole.role == "assistant" and whole.id.startswith("msg_")
    assert whole.content[0].type == "text" and whole.content[0].text == "v: The quick brown"
    assert whole.stop_reason == "max_tokens"
    assert (whole.usage.input_tokens, whole.usage.output_tokens) == (5, 4)
    async with AsyncAnthropic(base_url=yard.url, api_key="x", max_retries=0) as c:
        async with c.messages.stream(model="v", max_tokens=4, messages=HI) as stream:
            texts = [t async for t in stream.text_stream]
            streamed = await stream.get_final_message()
    assert "".join(texts) == "v: The quick brown" and len(texts) == 4
    assert streamed.stop_reason == "max_tokens" and streamed.model == "v"
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (5, 4)


async def test_stream_on_the_wire_is_event_and_data_lines(
    yard: Any, http: aiohttp.ClientSession
) -> None:
    body = {"model": "v", "max_tokens": 2, "stream": True, "messages": HI}
    async with http.post(yard.url + "/v1/messages", json=body) as r:
        assert r.status == 200 and r.content_type == "text/event-stream"
        got = events(await r.read())
    assert [k for k, _ in got] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip


async def test_tool_call_round_trip_whole_and_streamed(client: AsyncAnthropic) -> None:
    """The model calls the tool (its arguments parsed into ``input``), the client
    sends the result back under the call's id, and the model answers in words."""
    ask: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    call = await client.messages.create(model="v", max_tokens=20, tools=[WEATHER], messages=ask)
    assert call.stop_reason == "tool_use"
    use = call.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "fox", "days": 1}
    async with client.messages.stream(model="v", max_tokens=20, tools=[WEATHER],
                                      messages=ask) as stream:  # fmt: skip
        streamed = await stream.get_final_message()
    s_use = streamed.content[-1]
    assert streamed.stop_reason == "tool_use" and s_use.type == "tool_use"
    assert s_use.input == use.input and s_use.name == "get_weather"
    result = [
        *ask,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in call.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "rain, 7 °C"}]},
    ]  # fmt: skip
    after = await client.messages.create(model="v", max_tokens=3, tools=[WEATHER],
                                         messages=result)  # fmt: skip
    assert after.stop_reason == "max_tokens" and after.content[0].type == "text"
    assert after.content[0].text == "v: The quick"


async def test_stop_sequences_and_the_end_of_the_answer(client: AsyncAnthropic) -> None:
    """vLLM names the stop string that matched: stop_sequence; a model that reaches
    its end of sequence: end_turn."""
    hit = await client.messages.create(model="v", max_tokens=10, messages=HI,
                                       stop_sequences=["brown"])  # fmt: skip
    assert hit.stop_reason == "stop_sequence" and hit.stop_sequence == "brown"
    assert hit.content[0].type == "text" and hit.content[0].text == "v: The quick"
    async with client.messages.stream(model="v", max_tokens=10, messages=HI,
                                      stop_sequences=["brown"]) as stream:  # fmt: skip
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == "brown"
    done = await client.messages.create(model="eos", max_tokens=10, messages=HI)
    assert done.stop_reason == "end_turn" and done.usage.output_tokens == 3


async def test_errors_have_anthropics_shape_and_status(client: AsyncAnthropic) -> None:
    """An unknown model, the engine's own 400, an engine that is unavailable: the
    client's typed errors, with Anthropic's error body."""
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="nope", max_tokens=4, messages=HI)
    assert missing.value.body == {"type": "error", "error": {
        "type": "not_found_error",
        "message": "model 'nope' does not exist; available models: bad, cut, down, eos, strict, v",
    }}  # fmt: skip
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="bad", max_tokens=4, messages=HI)
    assert bad.value.body == {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "the engine answered: simulated engine error"}}  # fmt: skip
    for stream in (False, True):
        with pytest.raises(anthropic.APIStatusError) as down:
            await client.messages.create(model="down", max_tokens=4, messages=HI, stream=stream)
        assert down.value.status_code == 503
        assert isinstance(down.value.body, dict) and down.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError) as refused:
        pdf: Any = [{"role": "user", "content": [{"type": "document"}]}]  # no chat equivalent
        await client.messages.create(model="v", max_tokens=4, messages=pdf)
    said: Any = refused.value.body
    assert said["error"]["message"].startswith("messages.0.content.0: ")


async def test_an_engine_answer_that_is_no_completion_is_a_502_in_anthropics_shape(
    http: aiohttp.ClientSession,
) -> None:
    """Issue 14: whatever a translated engine answers with HTTP 200, the client gets
    a Messages answer or a 502 in Anthropic's error shape, never a 500."""
    parrot = {"cmd": f"{sys.executable} {PARROT} --port ${{PORT}}", "anthropic": "translate"}
    async with running_server(config({"p": parrot}, loading_status="off")) as srv:

        async def ask(said: Any, path: str = "/v1/messages") -> tuple[int, Any]:
            text = said if isinstance(said, str) else json.dumps(said)
            body = {"model": "p", "max_tokens": 4, "messages": [{"role": "user", "content": text}]}
            async with http.post(srv.url + path, json=body) as r:
                return r.status, await r.json()

        said: Any
        for said in ({"choices": [1]}, {"usage": 5}, {"choices": []}, [1], "not JSON"):
            status, doc = await ask(said)
            assert status == 502 and doc["type"] == "error", (said, doc)
            assert doc["error"]["type"] == "api_error" and doc["error"]["message"]
        for said in ({"usage": 5}, "not JSON"):
            status, doc = await ask(said, "/v1/messages/count_tokens")
            assert status == 502 and doc["error"]["type"] == "api_error", (said, doc)
        odd = {"choices": [{"message": {"content": "hi", "tool_calls": 5}, "finish_reason": 6}],
               "usage": 7}  # fmt: skip
        status, doc = await ask(odd)
        assert status == 200 and doc["content"] == [{"type": "text", "text": "hi"}], doc
        assert doc["usage"] == {"input_tokens": 0, "output_tokens": 0}


async def test_a_stream_cut_mid_way_ends_with_an_error_event(
    client: AsyncAnthropic, yard: Any, http: aiohttp.ClientSession
) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as cut:
        async with client.messages.stream(model="cut", max_tokens=10, messages=HI) as stream:
            async for text in stream.text_stream:
                texts.append(text)
    assert len(texts) == 3 and "stopped in the middle of the answer" in str(cut.value)
    body = {"model": "cut", "max_tokens": 10, "stream": True, "messages": HI}
    async with http.post(yard.url + "/v1/messages", json=body) as r:
        got = events(await r.read())
    assert got[-1][0] == "error" and got[-1][1]["error"]["type"] == "api_error"
    assert "message_stop" not in [k for k, _ in got]


async def test_count_tokens_reads_the_engines_prompt_count(client: AsyncAnthropic) -> None:
    count = await client.messages.count_tokens(model="v", messages=HI, tools=[WEATHER])
    assert count.input_tokens == 5  # the fakes' prompt_tokens


async def test_a_native_engine_gets_the_request_as_sent(
    yard: Any, http: aiohttp.ClientSession
) -> None:
    """A raw ``cmd`` is assumed to speak /v1/messages: its own 404 comes back as it
    said it (the fake refuses unknown routes as vLLM does), query string and all."""
    for path in ("/v1/messages?beta=true", "/v1/messages/count_tokens"):
        async with http.post(yard.url + path, json={"model": "strict", "messages": HI}) as r:
            assert r.status == 404 and await r.json() == {"detail": "Not Found"}

    async def logged() -> bool:
        async with http.get(yard.url + "/api/models/strict/logs") as r:
            return "no route /v1/messages?beta=true" in await r.text()

    await eventually(logged)


# -- a real engine: llama-server, natively and translated ----------------------------------


@pytest.fixture
async def smol() -> AsyncIterator[Any]:
    """SmolLM2 on llama-server twice: ``native`` passes /v1/messages through,
    ``translated`` goes through chat completions."""
    files = await asyncio.to_thread(ensure_default_models)
    model = {"engine": "llamacpp", "model": str(files["smollm2"]), "launcher": llama_server(),
             "extra_args": "-t 2", "context": 2048}  # fmt: skip
    cfg = config({"native": model, "translated": {**model, "anthropic": "translate"}},
                 loading_status="off")  # fmt: skip
    async with running_server(cfg) as srv:
        yield srv


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", ["native", "translated"])
async def test_llama_server_answers_messages_both_ways(smol: Any, name: str) -> None:
    """Whole and streamed, the same words, stop reason and token counts, whether
    llama-server translates or swapyard does."""
    async with AsyncAnthropic(base_url=smol.url, api_key="x", max_retries=0) as c:
        ask: list[Any] = [{"role": "user", "content": "What color is the sky?"}]
        greedy = {"temperature": 0}  # not a keyword of this client version
        whole = await c.messages.create(model=name, max_tokens=8, messages=ask, extra_body=greedy)
        async with c.messages.stream(model=name, max_tokens=8, messages=ask,
                                     extra_body=greedy) as stream:  # fmt: skip
            streamed = await stream.get_final_message()
    for got in (whole, streamed):
        assert got.model == name and got.stop_reason == "max_tokens"
        assert got.usage.output_tokens == 8
        assert got.usage.input_tokens + (got.usage.cache_read_input_tokens or 0) > 5
    assert whole.content[0].type == streamed.content[0].type == "text"
    assert whole.content[0].text == streamed.content[0].text != ""


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", ["native", "translated"])
async def test_llama_server_takes_a_turn_that_offers_tools(smol: Any, name: str) -> None:
    """Tools and a tool result in the history reach llama-server in a shape it
    accepts, both ways. SmolLM2's chat template knows no tools (llama-server then
    answers in words even when a call is demanded), so the calls themselves are
    the protocol fake's part above."""
    history: list[Any] = [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                                           "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "rain, 7 degrees"}]},
    ]  # fmt: skip
    async with AsyncAnthropic(base_url=smol.url, api_key="x", max_retries=0) as c:
        how: dict[str, Any] = {"model": name, "max_tokens": 6, "messages": history,
                               "tools": [WEATHER], "extra_body": {"temperature": 0}}  # fmt: skip
        got = await c.messages.create(**how)
        async with c.messages.stream(**how) as stream:
            streamed = await stream.get_final_message()
    for message in (got, streamed):
        assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 6
        first: Any = message.content[0]
        assert first.type == "text" and first.text


@pytest.mark.llamacpp
async def test_count_tokens_translated_agrees_with_llama_servers_own(smol: Any) -> None:
    """The one-token chat completion counts the prompt as llama-server's own
    /v1/messages/count_tokens does: the same chat template applied."""
    ask: list[Any] = [{"role": "user", "content": "What color is the sky?"}]
    async with AsyncAnthropic(base_url=smol.url, api_key="x", max_retries=0) as c:
        counts = [
            (
                await c.messages.count_tokens(model=name, messages=ask, system="Be brief.")
            ).input_tokens
            for name in ("native", "translated")
        ]
    assert counts[0] == counts[1] > 5, counts
