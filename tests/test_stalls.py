"""Engines that stall, die or end a stream by closing the connection, and streams
running at the shutdown deadline: the client always learns what happened
(issue 11). Real fake-engine processes, real sockets; timeouts kept small."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from test_router_http import chat, sse_events

from helpers import config, eventually
from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd, running_server


async def stream(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> list[Any]:
    async with http.post(url + "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status == 200, await r.text()
        return [e async for e in sse_events(r)]


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


async def engine_said(srv: Any, model: str, words: str) -> None:
    """Wait for a line of the engine's log (its stdout) that contains ``words``."""
    await eventually(lambda: any(words in ln for ln in srv.router.logs(model).tail()), what=words)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def upstream(routes: Mapping[str, Handler], **settings: Any) -> AsyncIterator[dict[str, Any]]:
    """A one-off engine for what the fake engine does not do (``routes``: POST path →
    handler), on a real port; yields the ``models:`` entry that reaches it
    (``engine: openai``, with ``settings``)."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "a", "object": "model"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    port = PortAllocator().allocate()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield {"engine": "openai", "base_url": f"http://127.0.0.1:{port}/v1", **settings}
    finally:
        await runner.cleanup()


def idle_engine(srv: Any, model: str) -> bool:
    m = srv.router.model(model)
    return m.in_flight == 0 and str(m.state) == "ready"


async def test_a_stream_with_no_first_byte_ends_with_an_upstream_timeout_event(
    http: aiohttp.ClientSession,
) -> None:
    """The head came, the body never does: after ``first_byte_timeout`` the stream
    ends with an ``upstream_timeout`` event — whether it began with the loading
    status or as the engine's own — and the engine's connection is closed."""
    models = {"m": {"cmd": fake_engine_cmd("m", stall_before_first_byte=3600),
                    "first_byte_timeout": 1}}  # fmt: skip
    async with running_server(config(models)) as srv:
        cold = await stream(http, srv.url, chat("m"))  # begins with the loading status
        assert "reasoning_content" in cold[0]["choices"][0]["delta"]
        await engine_said(srv, "m", "client disconnected after 0 tokens")
        await eventually(lambda: idle_engine(srv, "m"))
        warm = await stream(http, srv.url, chat("m"))  # the engine's own stream
        assert len(warm) == 1
        for events in (cold, warm):
            err = events[-1]["error"]
            assert err["code"] == "upstream_timeout"
            assert err["source"] == "engine"
            assert "first_byte_timeout" in err["message"]
        await eventually(lambda: idle_engine(srv, "m"))


async def test_a_plain_request_the_engine_never_answers_gets_504(
    http: aiohttp.ClientSession,
) -> None:
    """No response head within ``response_timeout``: 504 ``upstream_timeout``, and the
    lease is given back."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", stall_before_first_byte=3600)}},
                 response_timeout=1)  # fmt: skip
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 504
            err = (await r.json())["error"]
        assert err["code"] == "upstream_timeout"
        assert err["source"] == "engine"
        assert "response_timeout" in err["message"]
        await eventually(lambda: idle_engine(srv, "m"))


async def test_a_stream_that_stalls_mid_answer_ends_with_upstream_timeout_and_the_model_serves_on(
    http: aiohttp.ClientSession,
) -> None:
    """Three tokens, then silence: after ``idle_timeout`` the stream ends with an
    ``upstream_timeout`` event; the engine stays up and answers the next request."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", stall_after_tokens=3), "idle_timeout": 1}},
                 loading_status="off")  # fmt: skip
    async with running_server(cfg) as srv:
        events = await stream(http, srv.url, chat("m", max_tokens=10))
        assert events[-1]["error"]["code"] == "upstream_timeout"
        assert "idle_timeout" in events[-1]["error"]["message"]
        assert len(text_of(events).split()) == 3
        await engine_said(srv, "m", "client disconnected after 3 tokens")
        events = await stream(http, srv.url, chat("m", max_tokens=3))  # ends before the stall
        assert events[-1] == "[DONE]"
        assert len(text_of(events).split()) == 3
        assert srv.router.model("m").in_flight == 0


async def test_a_close_delimited_stream_cut_by_a_crash_makes_the_openai_client_raise() -> None:
    """The engine answers HTTP/1.0-style (the body ends when the connection closes)
    and crashes mid-answer: to HTTP that is a clean end, but the stream lacks
    ``[DONE]``, so it ends with ``upstream_died`` and the openai client raises
    instead of returning the truncated text as an answer."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", close_delimited=True, crash_after_tokens=3)}},
                 loading_status="off")  # fmt: skip
    async with running_server(cfg) as srv:
        async with openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0) as c:
            chunks = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=10,
                stream=True,
            )  # fmt: skip
            got = []
            with pytest.raises(openai.APIError) as e:
                async for ch in chunks:
                    got.append(ch.choices[0].delta.content or "" if ch.choices else "")
        assert e.value.code == "upstream_died"
        assert "[DONE]" in e.value.message
        assert len("".join(got).split()) == 2


@pytest.mark.parametrize("close_delimited", [True, False], ids=["close-delimited", "chunked"])
async def test_a_connection_reset_mid_answer_ends_with_upstream_died(
    http: aiohttp.ClientSession, close_delimited: bool
) -> None:
    """A TCP reset after three tokens (the engine stays up): the stream ends with
    ``upstream_died``, and the engine serves the next request."""
    cmd = fake_engine_cmd("m", reset_after_tokens=3, close_delimited=close_delimited)
    async with running_server(config({"m": {"cmd": cmd}}, loading_status="off")) as srv:
        events = await stream(http, srv.url, chat("m", max_tokens=10))
        assert events[-1]["error"]["code"] == "upstream_died"
        assert events[-1]["error"]["source"] == "engine"
        assert len(text_of(events).split()) == 3
        events = await stream(http, srv.url, chat("m", max_tokens=3))
        assert events[-1] == "[DONE]"


async def test_a_whole_close_delimited_answer_passes_untouched(
    http: aiohttp.ClientSession,
) -> None:
    """An engine that ends every body by closing the connection, and finishes its
    answers: streams (chat and legacy completions) end with ``[DONE]`` and no error,
    a plain answer arrives whole, and the openai client gets the full text."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", close_delimited=True)}}, loading_status="off")
    async with running_server(cfg) as srv:
        events = await stream(http, srv.url, chat("m", max_tokens=5))
        assert events[-1] == "[DONE]"
        assert not any(isinstance(e, dict) and "error" in e for e in events)
        assert len(text_of(events).split()) == 5
        body = {"model": "m", "prompt": "hi", "max_tokens": 5, "stream": True}
        async with http.post(srv.url + "/v1/completions", json=body) as r:
            events = [e async for e in sse_events(r)]
        assert events[-1] == "[DONE]"
        assert not any(isinstance(e, dict) and "error" in e for e in events)
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 200
            doc = await r.json(content_type=None)
        assert len(doc["choices"][0]["message"]["content"].split()) == 4
        async with openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0) as c:
            chunks = await c.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                stream=True,
            )  # fmt: skip
            parts = [ch.choices[0].delta.content or "" async for ch in chunks if ch.choices]
        assert "".join(parts).split() == ["m:", "The", "quick", "brown", "fox", "jumps"]


async def test_an_engine_that_sends_no_head_or_half_a_plain_answer_gets_upstream_timeout(
    http: aiohttp.ClientSession,
) -> None:
    """No head within ``response_timeout`` (llama-server sends a stream's head only
    after reading the prompt): a stream the loading status had begun ends with an
    ``upstream_timeout`` event, any other request gets 504. A plain answer whose
    head came without its body gets 504 after ``first_byte_timeout``, one whose
    body stopped half-way after ``idle_timeout``."""

    async def never(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("not cancelled")

    async def head_only(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 100
        await resp.prepare(request)
        if request.path == "/v1/embeddings":
            await resp.write(b'{"object": "list", ')  # then nothing
        return await never(request)

    routes = {"/v1/chat/completions": never, "/v1/completions": head_only,
              "/v1/embeddings": head_only}  # fmt: skip
    settings = {"response_timeout": 1, "first_byte_timeout": 1, "idle_timeout": 1}
    async with upstream(routes, **settings) as model:
        async with running_server(config({"a": model})) as srv:
            cold = await stream(http, srv.url, chat("a"))
            assert "reasoning_content" in cold[0]["choices"][0]["delta"]
            assert cold[-1]["error"]["code"] == "upstream_timeout"
            assert "response_timeout" in cold[-1]["error"]["message"]
            for body in (chat("a", stream=True), chat("a")):
                async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
                    assert r.status == 504
                    err = (await r.json())["error"]
                assert err["code"] == "upstream_timeout"
                assert "response_timeout" in err["message"]
            for path, key in (("/v1/completions", "first_byte"), ("/v1/embeddings", "idle")):
                async with http.post(srv.url + path, json={"model": "a", "input": "hi"}) as r:
                    assert r.status == 504
                    assert f"{key}_timeout" in (await r.json())["error"]["message"]
            await eventually(lambda: srv.router.model("a").in_flight == 0)


async def test_only_openai_completion_streams_are_judged_by_done(
    http: aiohttp.ClientSession,
) -> None:
    """An Anthropic ``/v1/messages`` stream ends with ``event: message_stop``, not
    ``[DONE]``: it passes as it came. The same bytes on ``/v1/chat/completions``
    are a cut stream."""
    events = (
        b'event: message_start\ndata: {"type": "message_start"}\n\n'
        b'event: content_block_delta\ndata: {"type": "content_block_delta", '
        b'"delta": {"type": "text_delta", "text": "hi"}}\n\n'
        b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
    )

    async def answer(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(events)
        return resp

    routes = {"/v1/messages": answer, "/v1/chat/completions": answer}
    async with upstream(routes, anthropic="native") as model:  # it speaks /v1/messages
        async with running_server(config({"a": model}, loading_status="off")) as srv:
            body = {"model": "a", "max_tokens": 5, "stream": True,
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            async with http.post(srv.url + "/v1/messages", json=body) as r:
                assert await r.read() == events
            async with http.post(srv.url + "/v1/chat/completions", json=body) as r:
                got = [e async for e in sse_events(r)]
            assert got[-1]["error"]["code"] == "upstream_died"


async def test_streams_running_at_the_shutdown_deadline_end_with_shutting_down(
    http: aiohttp.ClientSession,
) -> None:
    """When the drain time (half of ``shutdown_timeout``) is up, a stream still
    running gets a ``shutting_down`` event before it is closed, and a plain request
    still waiting for its answer a 503 ``shutting_down``."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", stall_after_tokens=2)}},
                 loading_status="off", shutdown_timeout=2)  # fmt: skip
    server = running_server(cfg)
    srv = await server.__aenter__()
    closing: asyncio.Future[Any] | None = None
    try:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", max_tokens=1)) as r:
            assert r.status == 200  # the engine is up
        plain = asyncio.ensure_future(
            http.post(srv.url + "/v1/chat/completions", json=chat("m", max_tokens=10))
        )
        async with http.post(
            srv.url + "/v1/chat/completions", json=chat("m", stream=True, max_tokens=10)
        ) as r:
            events = sse_events(r)
            got = [await anext(events), await anext(events)]
            await eventually(lambda: srv.router.model("m").in_flight == 2)
            closing = asyncio.ensure_future(server.__aexit__(None, None, None))
            got += [e async for e in events]
        assert len(text_of(got).split()) == 2
        assert got[-1]["error"]["code"] == "shutting_down"
        assert got[-1]["error"]["source"] == "swapyard"
        async with await plain as rp:
            assert rp.status == 503
            assert (await rp.json())["error"]["code"] == "shutting_down"
    finally:
        await (closing if closing is not None else server.__aexit__(None, None, None))
