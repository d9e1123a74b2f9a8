"""The operator's surface: per-request figures (headers, footer, store), metrics,
live streams and API keys, against fake engines with known timing and token counts."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import config
from swapyard.errors import ConfigError
from swapyard.testing import fake_engine_cmd, running_server
from swapyard.usage.store import MIGRATIONS, connect, migrate, schema_version

TPS = 50.0  # the fake engine's tokens per second
N = 20  # tokens per answer


def models(**extra: Any) -> dict[str, Any]:
    return {
        "a": {"cmd": fake_engine_cmd("a", tokens_per_second=TPS), **extra},
        "b": {"cmd": fake_engine_cmd("b", tokens_per_second=TPS)},
    }


def chat(model: str, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": N, "stream": stream, **extra}  # fmt: skip


def events_of(text: str) -> list[dict[str, Any]]:
    """Every SSE event must be a JSON document or [DONE]: the framing holds."""
    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[6:]
        if payload != "[DONE]":
            out.append(json.loads(payload))
    assert text.endswith("data: [DONE]\n\n")
    return out


def assert_figures_add_up(h: Mapping[str, str]) -> None:
    """The wait and the generation (tokens over tok/s) lie within the total: one
    arrival, one clock, in order, however fast the machine (0.2 ms: the rounding)."""
    total, wait = float(h["X-Swapyard-Total-Ms"]), float(h["X-Swapyard-Wait-Ms"])
    gen = 1000 * int(h["X-Swapyard-Completion-Tokens"]) / float(h["X-Swapyard-Tokens-Per-Second"])
    assert 0 <= wait < wait + gen <= total + 0.2, dict(h)


async def test_non_streaming_answer_carries_its_figures_as_headers(
    http: aiohttp.ClientSession,
) -> None:
    async with running_server(config(models(), loading_status="off")) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            assert r.status == 200
            h = r.headers
            await r.read()
        assert h["X-Swapyard-Completion-Tokens"] == str(N)
        assert h["X-Swapyard-Prompt-Tokens"] == "5"  # the fake engine's usage
        assert h["X-Swapyard-Loaded"] == "true"  # the first request waited for a load
        assert float(h["X-Swapyard-Wait-Ms"]) > 0  # the wait for the load is counted
        assert_figures_add_up(h)
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            assert r.headers["X-Swapyard-Loaded"] == "false"
            assert_figures_add_up(r.headers)


async def test_stream_figures_reach_the_store_metrics_and_events(
    http: aiohttp.ClientSession,
) -> None:
    t_start = time.time()  # the usage store is shared by the tests of a session
    async with running_server(config(models(), loading_status="off")) as srv:
        async with http.get(srv.url + "/api/events") as live:
            for _ in range(3):
                async with http.post(
                    srv.url + "/v1/chat/completions",
                    json=chat("a", stream=True, stream_options={"include_usage": True}),
                ) as r:
                    events_of(await r.text())
            async with http.post(srv.url + "/v1/chat/completions", json=chat("b")) as r:
                await r.read()
            seen: list[dict[str, Any]] = []
            while len([e for e in seen if e["type"] == "request"]) < 4:
                line = await asyncio.wait_for(live.content.readline(), 10)
                if line.startswith(b"data: "):
                    seen.append(json.loads(line[6:]))
        kinds = {e["type"] for e in seen}
        assert {"state", "request", "admitted"} <= kinds
        async with http.get(srv.url + "/api/requests?limit=10") as r:
            rows = (await r.json())["requests"]
        streamed = [x for x in rows if x["model"] == "a" and x["at"] >= t_start]
        assert len(streamed) == 3 and all(x["completion_tokens"] == N for x in streamed)
        for x in streamed:  # TTFT counts from arrival (any wait included), then N-1 intervals
            span = (N - 1) / x["tok_s"]
            assert 0 <= x["wait_s"] <= x["ttft_s"] < x["ttft_s"] + span <= x["total_s"] + 1e-6
            assert x["status"] == 200 and x["stream"] == 1
        assert sum(x["loaded"] for x in streamed) == 1  # the first stream waited for a's load
        async with http.get(srv.url + f"/api/usage?by=model&since={t_start}") as r:
            summary = {x["name"]: x for x in (await r.json())["rows"]}
        assert summary["a"]["requests"] == 3 and summary["a"]["completion_tokens"] == 3 * N
        assert summary["b"]["requests"] == 1 and summary["b"]["prompt_tokens"] == 5
        async with http.get(srv.url + "/metrics") as r:
            text = await r.text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        samples = fams["swapyard_requests"].samples
        reqs = {(s.labels["model"], s.labels["status"]): s.value
                for s in samples if s.name.endswith("_total")}  # fmt: skip
        assert reqs[("a", "200")] == 3 and reqs[("b", "200")] == 1
        toks = {(s.labels["model"], s.labels["kind"]): s.value
                for s in fams["swapyard_tokens"].samples if s.name.endswith("_total")}  # fmt: skip
        assert toks[("a", "completion")] == 3 * N
        ttft = [s for s in fams["swapyard_time_to_first_token_seconds"].samples
                if s.name.endswith("_count") and s.labels["model"] == "a"]  # fmt: skip
        assert ttft[0].value == 3
        state = {(s.labels["model"], s.labels["state"]): s.value
                 for s in fams["swapyard_engine_state"].samples}  # fmt: skip
        assert state[("b", "ready")] == 1.0 and state[("a", "ready")] == 0.0
        loads = [s for s in fams["swapyard_load_seconds"].samples
                 if s.name.endswith("_count") and s.labels["model"] == "a"]  # fmt: skip
        assert loads and loads[0].value >= 1
        swaps = [s for s in fams["swapyard_swaps"].samples if s.name.endswith("_total")]
        assert sum(s.value for s in swaps) >= 1


async def test_tokens_are_counted_when_the_engine_sends_no_usage(
    http: aiohttp.ClientSession,
) -> None:
    async with running_server(config(models(), loading_status="off")) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a", True)) as r:
            assert '"usage"' not in await r.text()
        async with http.get(srv.url + "/api/requests?limit=1") as r:
            row = (await r.json())["requests"][0]
        assert row["completion_tokens"] == N and row["tokens_counted"] == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_footer_on_and_off(http: aiohttp.ClientSession, stream: bool) -> None:
    cfg = config(models(footer=True), loading_status="off")
    async with running_server(cfg) as srv:
        for model, on in (("a", True), ("b", False)):
            async with http.post(srv.url + "/v1/chat/completions", json=chat(model, stream)) as r:
                text = await r.text()
            if stream:
                evs = events_of(text)
                body = "".join(c["delta"].get("content") or "" for e in evs for c in e["choices"])
            else:
                body = json.loads(text)["choices"][0]["message"]["content"]
            assert ("⚡" in body) is on, body
            if on:
                footer = body[body.index("\n\n⚡") :]
                assert "tok/s" in footer and f"({N} tokens in" in footer
                assert body.startswith("a: The quick")


async def test_footer_for_every_model_from_the_server_switch(http: aiohttp.ClientSession) -> None:
    async with running_server(config(models(), loading_status="off", footer=True)) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("b")) as r:
            assert "⚡" in (await r.json())["choices"][0]["message"]["content"]


def test_store_migrations_keep_rows(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    db = sqlite3.connect(str(path), isolation_level=None)
    migrate(db, to=1)  # an old swapyard's store
    db.execute("INSERT INTO requests (at, model, status) VALUES (?, 'old', 200)", (time.time(),))
    db.close()
    db = connect(path)
    assert schema_version(db) == len(MIGRATIONS) == 2
    row = db.execute("SELECT model, tokens_counted FROM requests").fetchone()
    assert tuple(row) == ("old", 0)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def keyed(**extra: Any) -> Any:
    env = {"K_ALICE": "sk-alice", "K_BOB": "sk-bob", "K_ADMIN": "sk-admin"}
    doc = {
        "server": {"loading_status": "off"},
        "scheduler": {"learn_memory": False},
        "auth": {
            "admin_key_env": "K_ADMIN",
            "keys": [
                {"name": "alice", "key_env": "K_ALICE"},
                {"name": "bob", "key_env": "K_BOB", "models": ["b"]},
            ],
        },
        "models": models(),
        **extra,
    }
    from swapyard.config import load_config

    return load_config(json.dumps(doc), environ=env)


async def test_key_rules(http: aiohttp.ClientSession) -> None:
    async with running_server(keyed()) as srv:
        u = srv.url + "/v1/chat/completions"

        async def status(url: str, key: str | None, method: str = "POST", **kw: Any) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            async with http.request(method, url, headers=headers, **kw) as r:
                await r.read()
                return r.status

        assert await status(u, None, json=chat("a")) == 401
        assert await status(u, "sk-wrong", json=chat("a")) == 401
        assert await status(u, "sk-alice", json=chat("a")) == 200
        assert await status(u, "sk-bob", json=chat("a")) == 403  # not in bob's allow-list
        assert await status(u, "sk-bob", json=chat("b")) == 200
        async with http.post(u, json=chat("b"), headers={"x-api-key": "sk-bob"}) as r:
            assert r.status == 200  # x-api-key works too
        async with http.get(srv.url + "/v1/models", headers={"x-api-key": "sk-bob"}) as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["b"]
        load = srv.url + "/api/models/a/load"
        assert await status(load, "sk-alice") == 403  # admin routes refuse a plain key
        assert await status(load, None) == 401
        assert await status(srv.url + "/metrics", "sk-alice", "GET") == 403
        assert await status(load, "sk-admin") == 200
        assert await status(srv.url + "/health", None, "GET") == 200
        async with http.get(srv.url + "/api/usage?by=key", headers={"x-api-key": "sk-admin"}) as r:
            names = {x["name"] for x in (await r.json())["rows"]}
        assert {"alice", "bob"} <= names and not any(n.startswith("sk-") for n in names)
        # keys are never forwarded to the engine
        async with http.post(srv.url + "/v1/other", json={"model": "a"},
                             headers={"Authorization": "Bearer sk-alice"}) as r:  # fmt: skip
            assert (await r.json())["saw_client_key"] is False


def test_no_keys_means_loopback_unless_said_otherwise() -> None:
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        config(models(), host="0.0.0.0")
    assert config(models(), host="0.0.0.0", allow_unauthenticated=True).server.host == "0.0.0.0"
    assert keyed(server={"host": "0.0.0.0", "loading_status": "off"}).server.host == "0.0.0.0"


async def test_engine_log_and_own_log_follow(http: aiohttp.ClientSession) -> None:
    async with running_server(config(models(), loading_status="off")) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("a")) as r:
            await r.read()
        async with http.get(srv.url + "/api/models/a/logs?follow=1&lines=5") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            first = await asyncio.wait_for(r.content.readline(), 5)
            assert first.startswith(b"data: ")
        async with http.get(srv.url + "/api/logs") as r:
            assert r.status == 200


async def test_live_streams_end_when_swapyard_shuts_down(http: aiohttp.ClientSession) -> None:
    """An open dashboard (event stream, log follow) must not hold the shutdown drain."""
    async with running_server(config(models(), loading_status="off")) as srv:
        events = await http.get(srv.url + "/api/events")
        logs = await http.get(srv.url + "/api/models/a/logs?follow=1")
    for r in (events, logs):
        rest = await asyncio.wait_for(r.content.read(), 10)  # EOF, not a hang
        assert b"keep-alive" not in rest
        r.release()
