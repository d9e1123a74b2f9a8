"""Issue 11: no secret on an open route or in an engine's environment.

Against a real server on 127.0.0.1 and the fake engine."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from swapyard.config import load_config
from swapyard.testing import fake_engine_cmd, running_server

ADMIN, CLIENT, OTHER = "sk-admin-5d1e", "sk-client-77a0", "sk-other-engine-c3f9"
SECRET = "engine-secret-90b2"  # given to an engine on its command line via ${env.*}
KEY_ENV = {
    "SWAPYARD_ADMIN_KEY": ADMIN,  # auth.admin_key_env
    "TEST_CLIENT_KEY": CLIENT,  # auth.keys[].key_env
    "TEST_OTHER_ENGINE_KEY": OTHER,  # another model's api_key_env
}


def keyed(environ: dict[str, str], m: dict[str, Any], **server: Any) -> Any:
    """A config with an admin key, a client key, the model ``m`` and a remote
    model whose engine key comes from the environment."""
    doc = {
        "server": server,
        "scheduler": {"learn_memory": False},
        "auth": {"admin_key_env": "SWAPYARD_ADMIN_KEY",
                 "keys": [{"name": "client", "key_env": "TEST_CLIENT_KEY"}]},
        "models": {
            "m": m,
            "remote": {"engine": "openai", "base_url": "http://127.0.0.1:9/v1",
                       "api_key_env": "TEST_OTHER_ENGINE_KEY"},
        },
    }  # fmt: skip
    return load_config(json.dumps(doc), environ=environ)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


# -- secrets -------------------------------------------------------------------------


def test_engines_leave_out_auth_keys_and_other_models_keys_not_their_own() -> None:
    """``env_drop``: every variable auth names and every other model's key
    variable; a model's own key variable stays (an engine may read it there)."""
    env = {**KEY_ENV, "OWN_KEY": "own"}
    cfg = keyed(env, {"engine": "vllm", "model": "org/m", "api_key_env": "OWN_KEY"})
    assert cfg.models["m"].env_drop == set(KEY_ENV)
    assert cfg.models["remote"].env_drop == {"SWAPYARD_ADMIN_KEY", "TEST_CLIENT_KEY", "OWN_KEY"}


def test_command_lines_are_shown_with_env_macros_as_written() -> None:
    """``cmd_display`` keeps ``${env.*}`` (directly or through a user macro) as written."""
    text = (
        "macros: {key: '${env.SECRET}'}\n"
        "models:\n  m:\n"
        "    cmd: srv --port ${PORT} --key ${key} --again '${env.SECRET}' --id ${MODEL_ID}\n"
        "    cmd_stop: stop ${PID} --key ${env.SECRET}\n"
        "  plain: {cmd: 'srv --port ${PORT}'}\n"
    )
    cfg = load_config(text, environ={"SECRET": SECRET})
    m = cfg.models["m"]
    assert SECRET in m.cmd
    assert m.cmd_display == "srv --port ${PORT} --key ${env.SECRET} --again ${env.SECRET} --id m"
    assert m.cmd_stop_display == "stop ${PID} --key ${env.SECRET}"
    assert cfg.models["plain"].cmd_display == "srv --port ${PORT}"


async def test_engine_environment_holds_no_key_variable(
    monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession
) -> None:
    """The running engine's /proc/<pid>/environ has none of the admin key, the
    client keys or another model's engine key, by name or by value; the rest of
    swapyard's environment is still there."""
    for name, value in {**KEY_ENV, "TEST_HARMLESS": "still-here"}.items():
        monkeypatch.setenv(name, value)
    cfg = keyed(KEY_ENV, {"cmd": fake_engine_cmd("m")})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m"),
                             headers=bearer(CLIENT)) as r:  # fmt: skip
            assert r.status == 200, await r.text()
        async with http.get(srv.url + "/health") as r:
            pid = (await r.json())["models"]["m"]["pid"]
        environ = (await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)).split(b"\0")
    names = {item.split(b"=", 1)[0].decode() for item in environ if item}
    assert "TEST_HARMLESS" in names
    assert names.isdisjoint(KEY_ENV), names & set(KEY_ENV)
    for value in KEY_ENV.values():
        assert all(value.encode() not in item for item in environ)


async def test_failed_start_shows_clients_the_cause_and_only_admins_the_log(
    http: aiohttp.ClientSession,
) -> None:
    """After a failed start: /health (open) has the state and the error's code, no
    command line, no log line, no secret; a plain key's 503 names the model and
    the cause, no log tail; the admin routes have the log lines, whose command
    line shows ``${env.ENGINE_SECRET}``, not its value."""
    env = {**KEY_ENV, "ENGINE_SECRET": SECRET}
    cmd = fake_engine_cmd("m", exit_on_start=3) + " --require-key ${env.ENGINE_SECRET}"
    cfg = keyed(env, {"cmd": cmd, "start_limit": 1})
    async with running_server(cfg) as srv:
        async with http.post(srv.url + "/v1/chat/completions", json=chat("m"),
                             headers=bearer(CLIENT)) as r:  # fmt: skip
            assert r.status == 503
            client_body = await r.text()
        async with http.get(srv.url + "/health") as r:
            health_body = await r.text()
        async with http.get(srv.url + "/api/models/m/logs", headers=bearer(ADMIN)) as r:
            assert r.status == 200
            lines = await r.text()
        async with http.get(srv.url + "/api/models", headers=bearer(ADMIN)) as r:
            last = (await r.json())["models"]["m"]["last_error"]
    err = json.loads(client_body)["error"]
    assert err["code"] == "engine_exited"
    assert err["message"] == (
        "model 'm' failed to start: the process exited with code 3 before it became ready"
    )
    health = json.loads(health_body)["models"]["m"]
    assert (health["state"], health["last_error"]) == ("failed", "engine_failed")
    for body in (client_body, health_body):
        for leak in ("starting:", "--require-key", "fake_engine", "corrupt", SECRET, "${env"):
            assert leak not in body
    assert "[swapyard] starting: " in lines and "--require-key ${env.ENGINE_SECRET}" in lines
    assert "file is corrupt (simulated)" in lines
    assert SECRET not in lines
    assert last["code"] == "engine_failed" and "file is corrupt (simulated)" in last["detail"]
