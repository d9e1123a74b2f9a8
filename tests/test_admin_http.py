"""Admin routes against a ``FakeRouter`` (no engine process needed): commands reach
the router's surface, and a config reload is validated before anything changes."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from swapyard.config import load_config_file
from swapyard.testing import FakeRouter, running_server


def write(path: Path, models: dict[str, object]) -> Path:
    path.write_text(json.dumps({"models": models}))
    return path


async def test_load_unload_pin_routes_reach_the_router(tmp_path: Path) -> None:
    cfg = load_config_file(write(tmp_path / "c.yaml", {"m": {"cmd": "x --port ${PORT}"}}))
    router = FakeRouter(cfg)
    async with running_server(cfg, router) as srv, aiohttp.ClientSession() as http:
        for verb in ("load", "pin", "unpin", "unload"):
            async with http.post(f"{srv.url}/api/models/m/{verb}") as r:
                assert r.status == 200, await r.text()
        async with http.get(srv.url + "/api/models") as r:
            assert (await r.json())["models"]["m"]["state"] == "stopped"
    assert router.commands == [("load", "m"), ("pin", "m"), ("unpin", "m"), ("unload", "m")]


async def test_reload_route_applies_a_valid_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    """A valid file reaches the router and the answer says what changed; a broken one
    is refused with 422 naming the key, and the router is never asked."""
    path = write(tmp_path / "c.yaml", {"a": {"cmd": "x --port ${PORT}"}})
    cfg = load_config_file(path)
    router = FakeRouter(cfg)
    async with running_server(cfg, router) as srv, aiohttp.ClientSession() as http:
        write(path, {"a": {"cmd": "x --port ${PORT}", "ttl": 5}, "b": {"cmd": "y --port ${PORT}"}})
        async with http.post(srv.url + "/api/config/reload") as r:
            assert r.status == 200
            assert await r.json() == {"added": ["b"], "changed": [], "removed": [],
                                      "unchanged": ["a"]}  # fmt: skip
        async with http.get(srv.url + "/v1/models") as r:
            assert [m["id"] for m in (await r.json())["data"]] == ["a", "b"]
        path.write_text("models:\n  a:\n    cmd: x ${PORT}\n    tll: 3\n")
        async with http.post(srv.url + "/api/config/reload") as r:
            assert r.status == 422
            err = (await r.json())["error"]
            assert err["code"] == "invalid_config" and "tll" in err["message"]
    assert router.commands == [("reload", str(path))]
