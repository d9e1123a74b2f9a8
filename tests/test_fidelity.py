"""Issue 11, pass-through fidelity: other protocols, llama.cpp's own usage and
unknown fields reach clients as the engine sent them; the footer goes only into
plain chat text, before the ``finish_reason`` chunk; CORS for browsers; loading
status lines end with a newline.

Real processes throughout: fake engines, the real llama.cpp server (the
``llamacpp`` tests) with the real ``anthropic`` and ``openai`` clients, and a real
headless Chromium for CORS.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from anthropic import AsyncAnthropic
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel

from helpers import config, eventually, llama_server
from swapyard.api.loading import status_chunk
from swapyard.config import load_config
from swapyard.defaults import ensure_default_models
from swapyard.ports import PortAllocator
from swapyard.quirks import StreamFix, adapt_request
from swapyard.testing import fake_engine_cmd, running_server
from swapyard.usage.meter import FooterSlot, footer_wanted

CHAT, COMPLETIONS, MESSAGES = "/v1/chat/completions", "/v1/completions", "/v1/messages"
FOOTER = b"data: FOOTER\n\n"
N = 6  # tokens per answer from the fake engine


# -- what is sent upstream, what is kept back ---------------------------------------


def spec_of(**fields: Any) -> Any:
    return config({"m": {"cmd": "x --port ${PORT}", **fields}}).models["m"]


def test_usage_is_asked_for_only_on_openai_completion_routes() -> None:
    """Anthropic's /v1/messages and any other route go to the engine as sent."""
    doc = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    body = json.dumps(doc).encode()
    engine = spec_of(stream_usage=True)
    for path in (MESSAGES, "/v1/responses", "/v1/audio/speech"):
        out, fix = adapt_request(engine, path, dict(doc), body)
        assert out is body and not fix.active, path
    for path in (CHAT, COMPLETIONS):
        out, fix = adapt_request(engine, path, dict(doc), body)
        assert json.loads(out)["stream_options"] == {"include_usage": True} and fix.drop_usage


def feed_in_steps(fix: StreamFix, data: bytes, step: int) -> bytes:
    out = b"".join(fix.feed(data[i : i + step]) for i in range(0, len(data), step))
    return out + fix.flush()


# As llama-server 0.3.36 streams them (seen on the wire, ids and timings trimmed).
LLAMACPP_COMPLETION = (
    b'data: {"choices":[{"text":"rem","index":0,"logprobs":null,"finish_reason":null}],'
    b'"object":"text_completion"}\n\n'
    b'data: {"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}],'
    b'"object":"text_completion","usage":{"completion_tokens":4,"prompt_tokens":1,'
    b'"total_tokens":5},"timings":{"predicted_n":4}}\n\n'
    b"data: [DONE]\n\n"
)
ANTHROPIC = (
    b'event: message_start\ndata: {"type":"message_start","message":{"usage":'
    b'{"input_tokens":31,"output_tokens":0}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
    b'"max_tokens","stop_sequence":null},"usage":{"output_tokens":8}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
ADDED_USAGE = b'data: {"choices":[],"usage":{"completion_tokens":4}}\n\n'


def test_only_the_usage_chunk_swapyard_added_is_kept_back() -> None:
    """Usage on a chunk with choices, events without choices, unknown fields and
    CRLF framing pass byte for byte; the usage-only chunk with empty choices goes."""
    crlf = LLAMACPP_COMPLETION.replace(b"\n", b"\r\n")
    for data in (LLAMACPP_COMPLETION, ANTHROPIC, crlf):
        for step in (1, 7, len(data)):
            assert feed_in_steps(StreamFix(drop_usage=True), data, step) == data
    done = b"data: [DONE]\n\n"
    chat = LLAMACPP_COMPLETION.removesuffix(done)
    fix = StreamFix(drop_usage=True)
    assert feed_in_steps(fix, chat + ADDED_USAGE + done, 5) == chat + done
    assert fix.usage == {"completion_tokens": 4}  # still read for the figures


# -- the footer ---------------------------------------------------------------------


def test_footer_goes_only_into_plain_chat_text() -> None:
    chat = {"model": "m", "messages": []}
    assert footer_wanted(True, CHAT, chat)
    assert not footer_wanted(False, CHAT, chat)
    assert not footer_wanted(True, COMPLETIONS, {"model": "m", "prompt": "x"})
    assert footer_wanted("always", COMPLETIONS, {"model": "m", "prompt": "x"})
    assert not footer_wanted("always", MESSAGES, chat)
    assert not footer_wanted("always", "/v1/embeddings", {"model": "m", "input": "x"})
    assert not footer_wanted(True, CHAT, None)  # a multipart form
    parsed: list[dict[str, Any]] = [
        {"response_format": {"type": "json_object"}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"functions": [{"name": "f"}]},
        {"json_schema": {"type": "object"}},  # llama.cpp's own field
        {"grammar": 'root ::= "a"'},
        {"guided_json": {"type": "object"}},  # vLLM's
    ]
    for extra in parsed:
        assert not footer_wanted("always", CHAT, {**chat, **extra}), extra
    assert footer_wanted(True, CHAT, {**chat, "response_format": {"type": "text"}, "tools": []})


def event(**doc: Any) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


TEXT = event(choices=[{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}])
FINISH = event(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
USAGE = event(choices=[], usage={"completion_tokens": 1})
DONE = b"data: [DONE]\n\n"


def slot_in_steps(data: bytes, step: int) -> bytes:
    slot = FooterSlot(lambda: FOOTER)
    out = b"".join(slot.feed(data[i : i + step]) for i in range(0, len(data), step))
    return out + slot.flush()


def test_footer_slot_is_before_the_finish_reason_chunk_however_the_bytes_arrive() -> None:
    data = TEXT + TEXT + FINISH + USAGE + DONE
    for step in (1, 2, 5, 13, len(TEXT) + 3, len(data)):
        assert slot_in_steps(data, step) == TEXT + TEXT + FOOTER + FINISH + USAGE + DONE
    compact = data.replace(b'"finish_reason": "stop"', b'"finish_reason":"stop"')
    assert slot_in_steps(compact, 4).index(FOOTER) == 2 * len(TEXT)
    crlf = (TEXT + FINISH + DONE).replace(b"\n", b"\r\n")
    assert slot_in_steps(crlf, 3) == crlf[: len(TEXT) + 2] + FOOTER + crlf[len(TEXT) + 2 :]


def test_footer_slot_keeps_the_last_text_first_and_skips_tool_calls() -> None:
    last = event(choices=[{"index": 0, "delta": {"content": "end"}, "finish_reason": "stop"}])
    assert slot_in_steps(TEXT + last + DONE, 3) == TEXT + last + FOOTER + DONE
    assert slot_in_steps(TEXT + DONE, 3) == TEXT + FOOTER + DONE  # no finish_reason sent
    assert slot_in_steps(TEXT + TEXT, 3) == TEXT + TEXT  # never finished: no footer
    call = event(choices=[{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c"}]}}])
    assert slot_in_steps(call + FINISH + DONE, 4) == call + FINISH + DONE


# -- through swapyard, fake engines -------------------------------------------------


def events_of(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            payload = block[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


async def post_text(http: aiohttp.ClientSession, url: str, **body: Any) -> str:
    async with http.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        return await r.text()


async def test_stream_footer_comes_before_finish_reason_and_usage(
    http: aiohttp.ClientSession,
) -> None:
    """Chat: footer, finish_reason chunk, usage chunk, [DONE]; /v1/completions only
    when the model says ``footer: always``; never with a JSON response_format."""
    models = {
        "chat": {"cmd": fake_engine_cmd("chat"), "footer": True},
        "text": {"cmd": fake_engine_cmd("text"), "footer": "always"},
    }
    async with running_server(config(models, loading_status="off")) as srv:
        chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                "stream": True, "max_tokens": N}  # fmt: skip
        evs = events_of(await post_text(
            http, srv.url + CHAT, **chat, stream_options={"include_usage": True}
        ))  # fmt: skip
        kinds = [
            "done" if e == "[DONE]"
            else "usage" if not e["choices"]
            else "footer" if e["id"] == "swapyard-footer"
            else "finish" if e["choices"][0]["finish_reason"]
            else "text"
            for e in evs
        ]  # fmt: skip
        assert kinds == ["text"] * N + ["footer", "finish", "usage", "done"]
        footer = evs[N]["choices"][0]["delta"]["content"]
        assert footer.startswith("\n\n⚡") and f"({N} tokens in" in footer
        json_mode = await post_text(
            http, srv.url + CHAT, **chat, response_format={"type": "json_object"}
        )
        assert "⚡" not in json_mode and "swapyard-footer" not in json_mode
        async with http.post(srv.url + COMPLETIONS, json={**chat, "model": "chat"}) as r:
            assert "⚡" not in await r.text()  # footer: true is chat only
        text = events_of(await post_text(
            http, srv.url + COMPLETIONS, model="text", prompt="hi", stream=True, max_tokens=N
        ))  # fmt: skip
        assert text[N]["object"] == "text_completion" and "⚡" in text[N]["choices"][0]["text"]
        assert text[N + 1]["choices"][0]["finish_reason"] == "length"


async def test_non_streaming_footer_skips_json_mode(http: aiohttp.ClientSession) -> None:
    async with running_server(config({"m": {"cmd": fake_engine_cmd("m")}}, footer=True,
                                     loading_status="off")) as srv:  # fmt: skip
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": N}
        plain = json.loads(await post_text(http, srv.url + CHAT, **body))
        assert "⚡" in plain["choices"][0]["message"]["content"]
        fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
        parsed = json.loads(await post_text(http, srv.url + CHAT, **body, response_format=fmt))
        assert "⚡" not in parsed["choices"][0]["message"]["content"]


async def test_other_routes_reach_the_engine_as_sent(http: aiohttp.ClientSession) -> None:
    """The engine gets the very bytes of a streaming /v1/messages request: no
    stream_options added (the fake engine echoes how many bytes it got)."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m"), "stream_usage": True}}, loading_status="off")
    async with running_server(cfg) as srv:
        raw = json.dumps({"model": "m", "stream": True, "max_tokens": 4,
                          "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip
        for path in (MESSAGES, "/v1/responses"):
            async with http.post(srv.url + path, data=raw,
                                 headers={"Content-Type": "application/json"}) as r:  # fmt: skip
                echo = await r.json()
            assert echo["path"] == path and echo["bytes"] == len(raw)


async def test_loading_status_lines_each_end_with_a_newline(http: aiohttp.ClientSession) -> None:
    """Open WebUI showed "…0.0 sLoading model…": one line per status chunk (issue 11)."""
    for field in ("reasoning_content", "content"):
        chunk = json.loads(status_chunk("id", "m", "Loading", field, True)[6:])
        assert chunk["choices"][0]["delta"][field] == "Loading\n"
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=1.2)}})
    async with running_server(cfg) as srv:
        text = await post_text(http, srv.url + CHAT, model="m", stream=True, max_tokens=2,
                               messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    status = [e["choices"][0]["delta"]["reasoning_content"] for e in events_of(text)
              if e != "[DONE]" and "reasoning_content" in e["choices"][0]["delta"]]  # fmt: skip
    assert len(status) >= 2 and all(s.endswith("\n") for s in status), status
    assert "".join(status).count("\n") == len(status)


# -- CORS ---------------------------------------------------------------------------

PAGE_ORIGIN_OK = "http://app.example"


def keyed(cors: list[str] | None) -> Any:
    """One API key (``sk-cors``, from ``$SWAPYARD_TEST_CORS_KEY``) and ``server.cors``."""
    server: dict[str, Any] = {"loading_status": "off"}
    if cors is not None:
        server["cors"] = cors
    return load_config(json.dumps({
        "server": server, "scheduler": {"learn_memory": False},
        "auth": {"keys": [{"name": "web", "key_env": "SWAPYARD_TEST_CORS_KEY"}]},
        "models": {"m": {"cmd": fake_engine_cmd("m")}},
    }))  # fmt: skip


def preflight(origin: str) -> dict[str, str]:
    return {"Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip


async def test_cors_preflight_and_requests_with_api_keys(
    http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preflight passes without a key; the real request still needs one; only an
    allowed origin gets Access-Control-Allow-Origin (errors and streams included)."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    key = {"Authorization": "Bearer sk-cors"}
    monkeypatch.setenv("SWAPYARD_TEST_CORS_KEY", "sk-cors")
    async with running_server(keyed([PAGE_ORIGIN_OK])) as srv:
        url = srv.url + CHAT
        async with http.options(url, headers=preflight(PAGE_ORIGIN_OK)) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN_OK
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert r.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
            assert int(r.headers["Access-Control-Max-Age"]) > 0
            assert "Origin" in r.headers.getall("Vary")
        async with http.options(url, headers=preflight("http://evil.example")) as r:
            assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
        origin = {"Origin": PAGE_ORIGIN_OK}
        async with http.post(url, json=chat, headers={**origin, **key}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN_OK
        async with http.post(url, json={**chat, "stream": True}, headers={**origin, **key}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN_OK
            assert (await r.text()).endswith("data: [DONE]\n\n")
        async with http.post(url, json=chat, headers=origin) as r:
            assert r.status == 401  # readable by the page: it carries the header
            assert r.headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN_OK
        async with http.post(url, json=chat, headers={"Origin": "http://evil.example", **key}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
    async with running_server(keyed(None)) as srv:  # off by default
        async with http.options(srv.url + CHAT, headers=preflight(PAGE_ORIGIN_OK)) as r:
            assert r.status == 401 and "Access-Control-Allow-Origin" not in r.headers
    async with running_server(keyed(["*"])) as srv:
        async with http.options(srv.url + CHAT, headers=preflight("http://any.example")) as r:
            assert r.status == 204
            assert r.headers["Access-Control-Allow-Origin"] == "http://any.example"


def test_cors_origins_are_checked_at_load() -> None:
    from swapyard.errors import ConfigError

    for bad in ("http://app.example/", "app.example", "http://a.example/path"):
        with pytest.raises(ConfigError, match=r"server\.cors"):
            config({"m": {"cmd": "x --port ${PORT}"}}, cors=[bad])
    assert config({"m": {"cmd": "x --port ${PORT}"}}).server.cors == ()


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("no chromium/chromedriver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="swapyard-chromium-")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(arg)  # fmt: skip
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def page(_: web.Request) -> web.Response:
    return web.Response(text="<title>page</title>", content_type="text/html")


async def page_server(port: int) -> web.AppRunner:
    """A page of another origin (another port) for the browser to fetch from."""
    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


FETCH = """
const [url, key, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const headers = {"Content-Type": "application/json"};
if (key) headers["Authorization"] = "Bearer " + key;
fetch(url, {method: "POST", headers, body: JSON.stringify(
    {model: "m", max_tokens: 2, messages: [{role: "user", content: "hi"}]})})
  .then(r => r.text().then(t => done(r.status + " " + t)))
  .catch(e => done("blocked: " + e));
"""


async def test_a_browser_calls_swapyard_from_an_allowed_origin_only(
    browser: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real Chromium: preflight, then the POST with its key, from a page on another
    origin; a page on an origin not in server.cors is blocked."""
    monkeypatch.setenv("SWAPYARD_TEST_CORS_KEY", "sk-cors")
    ports = PortAllocator()
    allowed, other = ports.allocate(), ports.allocate()
    pages = [await page_server(allowed), await page_server(other)]
    try:
        async with running_server(keyed([f"http://127.0.0.1:{allowed}"])) as srv:

            async def fetch_from(port: int, key: str | None) -> str:
                await asyncio.to_thread(browser.get, f"http://127.0.0.1:{port}/")
                got = await asyncio.to_thread(
                    browser.execute_async_script, FETCH, srv.url + CHAT, key
                )
                return str(got)

            ok = await fetch_from(allowed, "sk-cors")
            assert ok.startswith("200 ") and '"m: ' in ok, ok
            assert (await fetch_from(allowed, None)).startswith("401 ")
            assert (await fetch_from(other, "sk-cors")).startswith("blocked: ")
    finally:
        for runner in pages:
            await runner.cleanup()


# -- the real llama.cpp server, real clients ----------------------------------------


@pytest.fixture
async def smol() -> AsyncIterator[Any]:
    """swapyard with SmolLM2 on llama-server (which speaks /v1/messages itself),
    the footer on, and its engine loaded."""
    files = await asyncio.to_thread(ensure_default_models)
    model = {"engine": "llamacpp", "model": str(files["smollm2"]), "launcher": llama_server(),
             "extra_args": "-t 2", "context": 2048}  # fmt: skip
    models = {"smol": model, "smolc": {**model, "footer": "always"}}
    cfg = load_config(json.dumps({"server": {"footer": True}, "models": models}))
    async with running_server(cfg) as srv:
        yield srv


async def upstream_of(srv: Any, model: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(srv.url + f"/api/models/{model}/load") as r:
            assert r.status < 300, await r.text()
    view = await eventually(lambda: (v := srv.router.model(model)).state == "ready" and v)
    return str(view.engine.upstream)


async def anthropic_stream(base_url: str) -> tuple[list[str], Any]:
    """The event types of one streamed /v1/messages answer, and the final message."""
    client = AsyncAnthropic(base_url=base_url, api_key="none", max_retries=0)
    try:
        async with client.messages.stream(
            model="smol", max_tokens=8, extra_body={"temperature": 0},
            messages=[{"role": "user", "content": "What color is the sky?"}],
        ) as stream:  # fmt: skip
            types: list[str] = [ev.type async for ev in stream]
            return types, await stream.get_final_message()
    finally:
        await client.close()


@pytest.mark.llamacpp
async def test_anthropic_stream_through_swapyard_matches_llamacpp_directly(smol: Any) -> None:
    """Same events in the same order, same stop_reason, same output tokens (before
    issue 11 the message_delta event was dropped: stop_reason None, 0 tokens)."""
    direct = await upstream_of(smol, "smol")
    via_types, via = await anthropic_stream(smol.url)
    direct_types, got = await anthropic_stream(direct)
    assert via_types == direct_types and "message_delta" in via_types
    assert via.stop_reason == got.stop_reason == "max_tokens"
    assert via.usage.output_tokens == got.usage.output_tokens == 8
    prompt = [u.input_tokens + (u.cache_read_input_tokens or 0) for u in (via.usage, got.usage)]
    assert prompt[0] == prompt[1] > 0  # the second run reads the prompt from llama's cache
    assert "⚡" not in via.content[0].text  # the footer is for OpenAI chat text

    async def recorded() -> Any:
        async with aiohttp.ClientSession() as http:
            async with http.get(smol.url + "/api/requests?limit=1") as r:
                rows = (await r.json())["requests"]
        return rows and rows[0]["path"] == MESSAGES and rows[0]

    row = await eventually(recorded)
    assert row["completion_tokens"] == 8 and row["prompt_tokens"] == via.usage.input_tokens


class Sky(BaseModel):
    color: Literal["blue", "green", "red"]


@pytest.mark.llamacpp
async def test_openai_parse_with_a_json_schema_while_the_footer_is_on(smol: Any) -> None:
    client = AsyncOpenAI(base_url=smol.url + "/v1", api_key="none", max_retries=0)
    try:
        question: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "What color is the sky on a clear day?"}
        ]
        plain = await client.chat.completions.create(
            model="smol", messages=question, max_tokens=8, temperature=0
        )
        assert "⚡" in (plain.choices[0].message.content or "")  # the footer is on
        r = await client.chat.completions.parse(
            model="smol", messages=question, max_tokens=40, temperature=0, response_format=Sky,
        )  # fmt: skip
        assert r.choices[0].message.parsed is not None
        assert r.choices[0].message.parsed.color in ("blue", "green", "red")
    finally:
        await client.close()


@pytest.mark.llamacpp
async def test_llamacpp_completion_usage_and_cors_headers_pass_as_sent(smol: Any) -> None:
    """llama.cpp's usage on the last /v1/completions chunk reaches the client (with
    the footer, asked for by ``footer: always``, before that chunk); llama-server's
    own CORS headers do not: server.cors is off."""
    direct = await upstream_of(smol, "smolc")
    body = {"model": "smolc", "prompt": "The sky is", "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(direct + COMPLETIONS, json=body,
                             headers={"Origin": "http://evil.example"}) as r:  # fmt: skip
            assert r.headers.get("Access-Control-Allow-Origin") == "http://evil.example"
            await r.read()
        async with http.post(smol.url + COMPLETIONS, json=body,
                             headers={"Origin": "http://evil.example"}) as r:  # fmt: skip
            assert "Access-Control-Allow-Origin" not in r.headers
            evs = events_of(await r.text())
    assert evs[-1] == "[DONE]"
    last = evs[-2]
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"]["completion_tokens"] == 4  # llama.cpp's own, kept
    assert "timings" in last  # unknown fields too
    assert evs[-3]["id"] == "swapyard-footer" and "⚡" in evs[-3]["choices"][0]["text"]
