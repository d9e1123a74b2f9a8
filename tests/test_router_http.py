"""The router through its HTTP API, on a real port, with fake engines as real processes:
swaps with answers in flight, joining a load, TTL unload, disconnects, loading status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from helpers import config, eventually, group_members, load_counts
from swapyard.testing import fake_engine_cmd, running_server


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """Parsed ``data:`` payloads of an SSE response as they arrive (``[DONE]`` as str)."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[6:]
                    yield data.decode() if data == b"[DONE]" else json.loads(data)


def chat(model: str, *, stream: bool = False, max_tokens: int = 4) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def health(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + "/health") as r:
        doc: dict[str, Any] = await r.json()
        return doc


async def engine_log(http: aiohttp.ClientSession, url: str, model: str) -> str:
    async with http.get(f"{url}/api/models/{model}/logs?lines=1000") as r:
        return await r.text()


TWO = {
    "a": {"cmd": fake_engine_cmd("a", tokens_per_second=40)},
    "b": {"cmd": fake_engine_cmd("b"), "aliases": ["bee"]},
}


async def test_swap_waits_for_the_running_answer_which_completes(
    http: aiohttp.ClientSession,
) -> None:
    """A request for b while a streams: a's answer finishes whole, then b is served."""
    async with running_server(config(TWO, loading_status="off")) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            assert r.status == 200  # a is loaded and warm
        async with http.post(
            srv.url + "/v1/chat/completions", json=chat("a", stream=True, max_tokens=40)
        ) as ra:
            events = sse_events(ra)
            first = [await anext(events)]
            b_task = asyncio.ensure_future(
                http.post(srv.url + "/v1/chat/completions", json=chat("b"))
            )
            rest = [e async for e in events]
        a_events = first + rest
        assert a_events[-1] == "[DONE]"
        assert len(text_of(a_events).split()) == 40
        async with await b_task as rb:
            assert rb.status == 200
            doc = await rb.json()
        assert doc["choices"][0]["message"]["content"].startswith("b:")
        log_a = await engine_log(http, srv.url, "a")
        assert "finished stream of 40 tokens" in log_a
        assert "client disconnected" not in log_a
        states = {m: s["state"] for m, s in (await health(http, srv.url))["models"].items()}
        assert states == {"a": "stopped", "b": "ready"}


async def test_swap_back_and_forth_serves_each_model(http: aiohttp.ClientSession) -> None:
    async with running_server(config(TWO)) as srv:
        for model in ("a", "b", "a", "bee"):
            async with http.post(srv.url + "/v1/chat/completions", json=chat(model)) as r:
                assert r.status == 200
                assert r.headers["X-Fake-Engine"] == ("b" if model == "bee" else model)


async def test_concurrent_requests_for_a_cold_model_join_one_load(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=0.5)}})
    async with running_server(cfg) as srv:

        async def one() -> int:
            async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
                await r.read()
                return r.status

        assert await asyncio.gather(*(one() for _ in range(6))) == [200] * 6
        assert await load_counts(http, srv.url, "m") == {"cold": 1}


async def test_ttl_unloads_an_idle_engine(http: aiohttp.ClientSession) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m"), "ttl": 0.3}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 200
        pid = (await health(http, srv.url))["models"]["m"]["pid"]
        assert pid is not None

        async def stopped() -> bool:
            return (await health(http, srv.url))["models"]["m"]["state"] == "stopped"

        await eventually(stopped)
        assert group_members(pid) == []  # its processes are gone


async def test_client_disconnect_mid_stream_closes_the_upstream(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", tokens_per_second=20)}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 200
        resp = await http.post(
            srv.url + "/v1/chat/completions", json=chat("m", stream=True, max_tokens=200)
        )
        events = sse_events(resp)
        await anext(events)
        await anext(events)
        resp.close()  # the client goes away after two chunks

        async def engine_saw_it() -> bool:
            return "client disconnected after" in await engine_log(http, srv.url, "m")

        await eventually(engine_saw_it)
        assert "finished stream of 200" not in await engine_log(http, srv.url, "m")
        assert (await health(http, srv.url))["models"]["m"]["in_flight"] == 0


async def test_engine_dying_mid_stream_ends_with_an_error_event(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", crash_after_tokens=3)}}, loading_status="off")
    async with running_server(cfg) as srv:
        async with http.post(
            srv.url + "/v1/chat/completions", json=chat("m", stream=True, max_tokens=10)
        ) as r:
            assert r.status == 200
            events = [e async for e in sse_events(r)]
        assert events[-1]["error"]["code"] == "upstream_died"
        assert events[-1]["error"]["source"] == "engine"
        assert len(text_of(events).split()) == 2


async def test_engine_dying_before_a_plain_answer_gives_502(http: aiohttp.ClientSession) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", crash_after_tokens=2)}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 502
            err = (await r.json())["error"]
        assert err["source"] == "engine"
        assert err["code"] in {"upstream_died", "upstream_unavailable"}


async def test_crashed_engine_backs_off_then_is_started_again_by_the_next_request(
    http: aiohttp.ClientSession,
) -> None:
    """A crash while serving: 502 for that answer, 503 engine_backoff with
    Retry-After while it backs off, then the next request starts it (issue 10)."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", crash_after_tokens=5), "backoff": 1.0}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", max_tokens=9)) as r:
            assert r.status == 502

        async def state() -> str:
            s: str = (await health(http, srv.url))["models"]["m"]["state"]
            return s

        async def backing_off() -> bool:
            return await state() == "backoff"

        await eventually(backing_off)
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", max_tokens=2)) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "engine_backoff"
            assert r.headers["Retry-After"] == "1"

        async def stopped() -> bool:
            return await state() == "stopped"

        await eventually(stopped)
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", max_tokens=2)) as r:
            assert r.status == 200


async def test_loading_status_streams_in_reasoning_content_then_the_answer(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=1.5), "start_timeout": 30}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            events = [e async for e in sse_events(r)]
        status = [
            e["choices"][0]["delta"]["reasoning_content"]
            for e in events
            if isinstance(e, dict) and "reasoning_content" in e["choices"][0]["delta"]
        ]
        assert len(status) >= 3  # at least one a second over ~1.5 s, plus "ready"
        assert any(s.startswith("Loading model m:") and "of 30 s" in s for s in status)
        assert status[-1].startswith("Model m ready after ")
        assert text_of(events).startswith("m:")  # the answer text carries no status
        assert events[-1] == "[DONE]"


async def test_loading_status_can_go_into_content(http: aiohttp.ClientSession) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=0.3)}}, loading_status="content")
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            events = [e async for e in sse_events(r)]
        text = text_of(events)
        assert "Model m ready after" in text
        assert "m: The quick" in text


async def test_loading_status_off_sends_only_the_engine_stream(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=0.3)}}, loading_status="off")
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            assert r.headers["X-Fake-Engine"] == "m"  # the engine's own response
            events = [e async for e in sse_events(r)]
        assert all(e == "[DONE]" or e["id"].startswith("fake-") for e in events)


async def test_loading_status_reports_a_failed_start_as_an_error_event(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", exit_on_start=7)}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            events = [e async for e in sse_events(r)]
        err = events[-1]["error"]
        assert err["code"] == "engine_exited"
        assert "exited with code 7" in err["message"]
        assert "simulated" not in err["message"], "the log tail is for admins (issue 11)"


async def test_non_streaming_request_simply_waits_for_the_load(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=0.5)}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("application/json")
            assert (await r.json())["choices"][0]["message"]["content"].startswith("m:")


async def test_upstream_status_headers_and_body_pass_through(
    http: aiohttp.ClientSession,
) -> None:
    async with running_server(config(TWO)) as srv:
        async with http.post(
            srv.url + "/v1/embeddings", json={"model": "b", "input": ["ab", "abc"]}
        ) as r:
            assert r.status == 200
            assert r.headers["X-Fake-Engine"] == "b"
            doc = await r.json()
        assert [d["embedding"][0] for d in doc["data"]] == [2.0, 3.0]
        async with http.post(
            srv.url + "/v1/completions?trace=1", json={"model": "b", "prompt": "x"}
        ) as r:
            assert (await r.json())["choices"][0]["text"].startswith("b:")
        async with http.post(srv.url + "/v1/some/other/route?x=1", json={"model": "a"}) as r:
            assert await r.json() == {
                "engine": "a", "path": "/v1/some/other/route?x=1",
                "content_type": "application/json", "bytes": 14, "saw_client_key": False,
            }  # fmt: skip


async def test_multipart_form_model_field_routes_the_request(
    http: aiohttp.ClientSession,
) -> None:
    async with running_server(config(TWO)) as srv:
        form = aiohttp.FormData()
        form.add_field("file", b"RIFF....WAVE", filename="a.wav", content_type="audio/wav")
        form.add_field("model", "bee")
        async with http.post(srv.url + "/v1/audio/transcriptions", data=form) as r:
            doc = await r.json()
        assert doc["engine"] == "b"
        assert doc["content_type"] == "multipart/form-data"
        form = aiohttp.FormData()
        form.add_field("file", b"x", filename="a.wav")
        async with http.post(srv.url + "/v1/audio/transcriptions", data=form) as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "missing_model"


async def test_cumulative_stream_passes_through_untouched(http: aiohttp.ClientSession) -> None:
    """The data path does not rewrite streams (cumulative→delta is opt-in, issue #4)."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", cumulative=True)}}, loading_status="off")
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            events = [e async for e in sse_events(r)]
        texts = [e["choices"][0]["delta"].get("content") for e in events[:4]]
        assert texts == ["m:", "m: The", "m: The quick", "m: The quick brown"]


async def test_models_list_shows_state_hides_unlisted_and_can_list_aliases(
    http: aiohttp.ClientSession,
) -> None:
    models = {**TWO, "hidden": {"cmd": fake_engine_cmd("h"), "unlisted": True}}
    async with running_server(config(models)) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            assert r.status == 200
        async with http.get(srv.url + "/v1/models") as r:
            data = (await r.json())["data"]
        assert {d["id"]: d["state"] for d in data} == {"a": "ready", "b": "stopped"}
        async with http.get(srv.url + "/v1/models/bee") as r:
            assert (await r.json())["id"] == "b"
    async with running_server(config(models, list_aliases=True)) as srv:
        async with http.get(srv.url + "/v1/models") as r:
            data = (await r.json())["data"]
        assert {d["id"]: d.get("alias_of") for d in data} == {"a": None, "b": None, "bee": "b"}


async def test_health_reports_swapyard_and_each_engine(http: aiohttp.ClientSession) -> None:
    async with running_server(config(TWO)) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("b")) as r:
            assert r.status == 200
        doc = await health(http, srv.url)
        assert doc["status"] == "ok"
        assert doc["models"]["b"]["state"] == "ready"
        assert isinstance(doc["models"]["b"]["pid"], int)
        assert doc["models"]["a"] == {
            "state": "stopped", "pid": None,
            "state_for_s": doc["models"]["a"]["state_for_s"], "last_error": None,
            "in_flight": 0, "queued": 0, "fast_swap": None,
        }  # fmt: skip
        async with http.get(
            srv.url + "/api/models/bee/logs", headers={"Accept": "application/json"}
        ) as r:
            assert any("listening" in line for line in (await r.json())["lines"])


async def test_engine_closing_connections_after_streams_is_not_an_error(
    http: aiohttp.ClientSession,
) -> None:
    """llama-server closes each connection after a streamed answer while announcing
    keep-alive; the next request must not fail on the dead pooled connection."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", close_after_stream=True)}},
                 loading_status="off")  # fmt: skip
    async with running_server(cfg) as srv:
        for stream in (True, False, True, True, False):
            async with http.post(
                srv.url + "/v1/chat/completions", json=chat("m", stream=stream)
            ) as r:
                assert r.status == 200, await r.text()
                await r.read()


async def test_shutdown_rejects_queued_requests_and_drains_running_answers(
    http: aiohttp.ClientSession,
) -> None:
    cfg = config(TWO, loading_status="off", shutdown_timeout=20)
    server = running_server(cfg)
    srv = await server.__aenter__()
    closing: asyncio.Future[Any] | None = None
    try:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            assert r.status == 200
        async with http.post(
            srv.url + "/v1/chat/completions", json=chat("a", stream=True, max_tokens=40)
        ) as ra:
            events = sse_events(ra)
            first = [await anext(events)]
            b_task = asyncio.ensure_future(
                http.post(srv.url + "/v1/chat/completions", json=chat("b"))
            )
            await eventually(lambda: srv.router.model("b").queued == 1)
            closing = asyncio.ensure_future(server.__aexit__(None, None, None))
            async with await b_task as rb:
                assert rb.status == 503
                assert (await rb.json())["error"]["code"] == "shutting_down"
            rest = [e async for e in events]
        assert (first + rest)[-1] == "[DONE]"
        assert len(text_of(first + rest).split()) == 40
    finally:
        await (closing if closing is not None else server.__aexit__(None, None, None))


async def test_engine_error_after_the_status_stream_began_is_passed_on_as_an_event(
    http: aiohttp.ClientSession,
) -> None:
    """Headers already went out with the status chunks: the engine's own error
    envelope arrives as the stream's last event."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m", load_delay=0.2, error_status=500)}})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            assert r.status == 200
            events = [e async for e in sse_events(r)]
        assert "reasoning_content" in events[0]["choices"][0]["delta"]
        assert events[-1]["error"]["message"] == "simulated engine error"
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m")) as r:
            assert r.status == 500  # when no stream has begun, the engine's status as is
            assert (await r.json())["error"]["code"] == 500


async def test_loading_status_says_which_model_it_waits_for(http: aiohttp.ClientSession) -> None:
    """During a swap the status names the busy model, then the unload, then the load."""
    models = {"a": {"cmd": fake_engine_cmd("a", tokens_per_second=20)},
              "b": {"cmd": fake_engine_cmd("b", load_delay=0.5)}}  # fmt: skip
    async with running_server(config(models)) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            assert r.status == 200
        async with http.post(
            srv.url + "/v1/chat/completions", json=chat("a", stream=True, max_tokens=30)
        ) as ra:
            events = sse_events(ra)
            await anext(events)
            async with http.post(
                srv.url + "/v1/chat/completions", json=chat("b", stream=True)
            ) as rb:
                first = await anext(sse_events(rb))
                rest_a = [e async for e in events]
                rest_b = [e async for e in sse_events(rb)]
        status = [first["choices"][0]["delta"]["reasoning_content"]] + [
            e["choices"][0]["delta"]["reasoning_content"]
            for e in rest_b
            if isinstance(e, dict) and "reasoning_content" in e["choices"][0]["delta"]
        ]
        assert status[0].startswith("Waiting for model a to finish 1 request before loading b")
        assert any(s.startswith("Loading model b:") for s in status)
        assert status[-1].startswith("Model b ready after")
        assert rest_a[-1] == "[DONE]"
        assert text_of(rest_b).startswith("b:")
