"""Who a request comes from, as the scheduler sees it (issue 13): the API key's
name, else the session a client names, else the ``user`` field, else its address."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from swapyard.config import load_config
from swapyard.testing import FakeRouter, fake_engine_cmd, running_server


async def clients_seen(
    requests: list[tuple[dict[str, str], dict[str, Any]]], auth: dict[str, Any] | None = None
) -> list[str]:
    doc: dict[str, Any] = {
        "server": {"loading_status": "off"},
        "models": {"m": {"cmd": fake_engine_cmd("m")}},
    }
    if auth:
        doc["auth"] = auth
    cfg = load_config(json.dumps(doc), environ={"TEAM_KEY": "sk-team-secret"})
    router = FakeRouter(cfg)
    async with running_server(cfg, router) as srv, aiohttp.ClientSession() as http:
        for headers, extra in requests:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
            async with http.post(srv.url + "/v1/chat/completions", json=body, headers=headers) as r:
                await r.read()
    return router.clients


async def test_the_client_is_the_session_then_the_user_then_the_address() -> None:
    seen = await clients_seen([
        ({"X-Session-Id": "agent-7"}, {}),
        ({"X-Litellm-Session-Id": "run-3"}, {"user": "ignored: the session wins"}),
        ({"X-OpenWebUI-User-Id": "u-42"}, {}),
        ({}, {"user": "bob"}),
        ({}, {}),
    ])  # fmt: skip
    assert seen == [
        "session:agent-7", "session:run-3", "session:u-42", "user:bob", "addr:127.0.0.1",
    ]  # fmt: skip


async def test_an_api_key_names_its_client() -> None:
    auth = {"keys": [{"name": "team-a", "key_env": "TEAM_KEY"}]}
    seen = await clients_seen(
        [({"Authorization": "Bearer sk-team-secret", "X-Session-Id": "s"}, {})], auth
    )
    assert seen == ["key:team-a"]
