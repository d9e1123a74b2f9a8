"""Peers with keys (issue 15): a peer whose ``auth`` has data keys and an admin
key, named in the front's ``peers:`` with ``key_env``/``admin_key_env``. The front
reaches it, forwards admin calls with the admin key, and shows its keys nowhere:
not on its open or data routes, not in its log, not in its engines' environment."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
import pytest
from peer_hosts import engine, host

from helpers import eventually
from swapyard.config import load_config
from swapyard.testing import running_server

B = "127.0.0.2"
DATA_KEY = "sk-peer-data-4f1c9a7e2b"
ADMIN_KEY = "sk-peer-admin-8d3e6b0a51"
FRONT_ADMIN = (
    "sk-front-admin-3c7f1e9b26"  # the front lends a peer's admin key only to its own admin
)
HI = [{"role": "user", "content": "hi"}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_front_uses_a_peers_keys_and_shows_them_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the peer's keys in the front's environment, the front lists and serves
    the peer's models and, for a caller with its own admin key, loads one there
    through its admin route (which the data key may not do); no key is in the
    front's /health, model lists, log, or its own engine's environment."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PEER_B_KEY", DATA_KEY)
    monkeypatch.setenv("PEER_B_ADMIN", ADMIN_KEY)
    monkeypatch.setenv("FRONT_ADMIN", FRONT_ADMIN)
    auth = {"keys": [{"name": "front", "key": DATA_KEY}], "admin_key": ADMIN_KEY}
    models = {"alpha": engine("alpha"), "beta": engine("beta")}
    async with host(tmp_path, "b", B, models, preload=["alpha"], auth=auth) as b:
        doc = {
            "scheduler": {"learn_memory": False},
            "models": {"gamma": engine("gamma")},
            "auth": {"admin_key_env": "FRONT_ADMIN"},
            "peers": {"b": {"url": b.url, "key_env": "PEER_B_KEY",
                            "admin_key_env": "PEER_B_ADMIN", "timeout": 1}},
        }  # fmt: skip
        async with (
            running_server(load_config(json.dumps(doc))) as a,
            aiohttp.ClientSession(headers=bearer(FRONT_ADMIN)) as http,
        ):
            async with http.get(b.url + "/v1/models") as r:
                assert r.status == 401  # the peer does want a key
            async with http.post(b.url + "/api/models/beta/load", headers=bearer(DATA_KEY)) as r:
                assert r.status in (401, 403)  # and its data key is no admin key

            async def b_up() -> bool:
                async with http.get(a.url + "/api/models") as r:
                    return bool((await r.json())["peers"]["b"]["up"])

            await eventually(b_up)
            chat = {"model": "alpha", "messages": HI, "max_tokens": 4}
            async with http.post(a.url + "/v1/chat/completions", json=chat) as r:
                assert r.status == 200 and r.headers["X-Swapyard-Host"] == "b"
            async with http.post(a.url + "/api/chat", json={**chat, "stream": False}) as r:
                assert r.status == 200 and r.headers["X-Swapyard-Host"] == "b"
            async with http.post(a.url + "/api/models/beta/load") as r:
                assert r.status == 200, await r.text()
            async with http.get(b.url + "/api/models", headers=bearer(ADMIN_KEY)) as r:
                assert (await r.json())["models"]["beta"]["state"] == "ready"
            async with http.post(
                a.url + "/v1/chat/completions", json={**chat, "model": "gamma"}
            ) as r:
                assert r.status == 200 and r.headers["X-Swapyard-Host"] == "local"

            shown = []
            for path in ("/health", "/v1/models", "/v1/models/alpha", "/api/models",
                         "/api/tags", "/api/ps", "/api/models/gamma/logs"):  # fmt: skip
                async with http.get(a.url + path) as r:
                    assert r.status == 200, path
                    shown.append(await r.text())
            pid = a.router.model("gamma").engine.pid
            assert pid is not None
            raw = await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)
            environ = raw.decode(errors="replace")
            for key in (DATA_KEY, ADMIN_KEY, FRONT_ADMIN):
                assert all(key not in text for text in shown)
                assert key not in caplog.text
                assert key not in environ
            assert "alpha" in shown[1] and "PEER_B_KEY" not in environ
            assert "FRONT_ADMIN" not in environ
            assert "gamma" in caplog.text  # the log was captured: its engine's start
