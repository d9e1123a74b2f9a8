"""Issue 11: no secret on an open route or in an engine's environment, a client's
mistakes are 4xx in the OpenAI envelope (a bug is a 500 with a request id), and a
client cannot hold the server with stalled or surplus connections.

Against a real server on 127.0.0.1; a ``FakeRouter`` where no engine process is
needed, the fake engine where one is. Timeouts are tiny and the tests assert that
the connection was closed, never how fast."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers import config, eventually
from swapyard.api.openai import MAX_JSON_DEPTH, parse_model
from swapyard.config import load_config
from swapyard.errors import InvalidJSON
from swapyard.events import RequestFinished, RequestRecord
from swapyard.testing import FakeRouter, fake_engine_cmd, running_server
from swapyard.usage.store import UsageStore

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


# -- a client's mistakes ------------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"model": "m", "x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def test_json_nested_up_to_the_limit_parses_and_one_level_more_is_refused() -> None:
    assert parse_model("application/json", nested(MAX_JSON_DEPTH))[0] == "m"
    with pytest.raises(InvalidJSON, match="deeper than"):
        parse_model("application/json", nested(MAX_JSON_DEPTH + 1))


@pytest.fixture
async def fake() -> Any:
    cfg = config({"m": {"cmd": fake_engine_cmd("m")}}, max_body_bytes=4 * 2**20)
    router = FakeRouter(cfg)
    async with running_server(cfg, router) as srv:
        yield srv.url, router


async def test_deeply_nested_json_is_400_not_a_recursion_error(
    fake: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    url, router = fake
    for depth in (MAX_JSON_DEPTH + 1, 100_000):
        async with http.post(url + "/v1/chat/completions", data=nested(depth),
                             headers={"Content-Type": "application/json"}) as r:  # fmt: skip
            assert r.status == 400
            err = (await r.json())["error"]
        assert err["code"] == "invalid_json" and "deeper than" in err["message"]
    assert router.acquired == []
    assert not [rec for rec in caplog.records if rec.exc_info]


@pytest.mark.parametrize(
    "path",
    [
        "/api/models/m/logs?lines=abc",
        "/api/models/m/logs?lines=-1",
        "/api/logs?lines=1e3",
        "/api/requests?limit=abc",
        "/api/requests?limit=-5",
        "/api/usage?since=abc",
        "/api/usage?since=nan",
        "/api/usage?by=nobody",
        "/api/events?history=abc",
    ],
)
async def test_bad_admin_query_parameter_is_400_naming_it(
    fake: Any, http: aiohttp.ClientSession, path: str
) -> None:
    url, _ = fake
    async with http.get(url + path) as r:
        assert r.status == 400
        err = (await r.json())["error"]
    name = path.split("?")[1].split("=")[0]
    assert (err["type"], err["param"]) == ("invalid_request_error", name)
    assert f"?{name}=" in err["message"]


async def raw_exchange(url: str, data: bytes, *, bound: float = 30.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it
    (``bound`` only keeps a broken server from hanging the suite)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), bound)
    finally:
        writer.close()


async def test_authorization_header_that_is_not_utf8_is_401() -> None:
    cfg = keyed(KEY_ENV, {"cmd": fake_engine_cmd("m")})
    async with running_server(cfg, FakeRouter(cfg)) as srv:
        for header in (b"Authorization: Bearer \xff\xfe\x80", b"x-api-key: sk-\xc3\x28"):
            got = await raw_exchange(
                srv.url,
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                + header
                + b"\r\n\r\n",
            )
            head, _, body = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 401"), got
            assert json.loads(body)["error"]["code"] == "invalid_api_key"


async def test_unknown_model_name_is_echoed_cut(fake: Any, http: aiohttp.ClientSession) -> None:
    url, _ = fake
    body = io.BytesIO(json.dumps(chat("x" * 2**20)).encode())  # a 1 MiB name
    async with http.post(url + "/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as r:  # fmt: skip
        assert r.status == 404
        err = (await r.json())["error"]
    assert len(err["message"]) < 200 and "x" * 64 + "…" in err["message"]


async def test_unexpected_exception_is_a_500_envelope_with_its_request_id_in_the_log(
    fake: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """One log line carries the traceback and the request id; the client gets the
    id in the envelope, never the traceback."""
    url, router = fake
    router.refuse["m"] = RuntimeError("a bug behind the surface")
    async with http.post(url + "/v1/chat/completions", json=chat("m")) as r:
        assert r.status == 500
        rid = r.headers["X-Request-Id"]
        body = await r.text()
    err = json.loads(body)["error"]
    assert (err["type"], err["code"]) == ("server_error", "internal_error")
    assert rid in err["message"]
    assert "Traceback" not in body and "a bug behind" not in body
    logged = [rec for rec in caplog.records if rec.exc_info]
    assert len(logged) == 1 and rid in logged[0].getMessage()


async def test_unexpected_exception_after_a_stream_began_closes_it_logged_once(
    fake: Any, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A loading-status stream has begun when the bug strikes: the connection is
    closed (no envelope can follow) and the traceback is logged once, by us."""
    url, router = fake
    router.refuse["m"] = RuntimeError("a bug behind the surface")
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(url + "/v1/chat/completions", json=chat("m", stream=True)) as r:
            assert r.status == 200
            await r.read()
    logged = [rec for rec in caplog.records if rec.exc_info]
    assert len(logged) == 1 and "request id" in logged[0].getMessage()


# -- what one client may hold ---------------------------------------------------------


@pytest.fixture
async def stingy() -> Any:
    """A server with tiny header and body timeouts."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m")}}, header_timeout=0.2, body_timeout=0.2)
    async with running_server(cfg, FakeRouter(cfg)) as srv:
        yield srv.url


async def test_connection_that_sends_nothing_is_closed(stingy: str) -> None:
    assert await raw_exchange(stingy, b"") == b""


async def test_connection_that_sends_half_a_head_is_closed(stingy: str) -> None:
    half = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl"
    assert await raw_exchange(stingy, half) == b""


async def test_body_that_stops_arriving_is_408_and_the_connection_closed(stingy: str) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")  # fmt: skip
    got = await raw_exchange(stingy, head + b'{"model": "m", ')
    head_out, _, body = got.partition(b"\r\n\r\n")
    assert head_out.startswith(b"HTTP/1.1 408"), got
    assert json.loads(body)["error"]["code"] == "request_timeout"


async def test_connections_beyond_max_connections_get_503_and_one_log_line(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Two idle connections hold the cap of 2: five more are each answered 503 and
    closed, with one log line; once the two go, new connections are served."""
    cfg = config({"m": {"cmd": fake_engine_cmd("m")}}, max_connections=2)
    async with running_server(cfg, FakeRouter(cfg)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
        for _ in range(5):
            got = await raw_exchange(srv.url, b"")  # (a request sent now could meet a reset)
            assert got.startswith(b"HTTP/1.1 503"), got
            assert b"too_many_connections" in got
        reached = [r for r in caplog.records if "connection limit of 2 reached" in r.getMessage()]
        assert len(reached) == 1
        for _, writer in held:
            writer.close()

        async def served() -> bool:
            got = await raw_exchange(
                srv.url, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            return got.startswith(b"HTTP/1.1 200")

        await eventually(served, what="a connection served once the two are gone")
    assert any("connections were refused" in r.getMessage() for r in caplog.records)


# -- the usage store's writer ------------------------------------------------------------


def finished(request_id: int, **kw: Any) -> RequestFinished:
    return RequestFinished(RequestRecord(request_id=request_id, model="m", engine="command",
                                         path="/v1/chat/completions", status=200, stream=False,
                                         **kw))  # fmt: skip


def store_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "swapyard.usage" and r.levelno >= logging.ERROR]


async def test_usage_writer_keeps_rows_while_the_database_is_locked_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes fail while another process holds the database: one log line however
    many tries, the rows wait, and they are written once it is free."""
    path = tmp_path / "usage.db"
    store = UsageStore(path, flush_every=0.02)
    store.db.execute("PRAGMA busy_timeout = 0")  # fail at once instead of after 5 s
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    store.run()
    try:
        for n in (1, 2, 3):
            store.on_event(finished(n))
            assert await store.flush() is False
        assert len(store_errors(caplog)) == 1
        other.execute("COMMIT")
        store.on_event(finished(4))  # for the writer task, which went on
        await eventually(lambda: len(store.recent()) == 4, what="every row written")
        assert any("writing again" in r.getMessage() for r in caplog.records)
    finally:
        other.close()
        await store.close()


async def test_usage_writer_drops_rows_sqlite_refuses_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = UsageStore(tmp_path / "usage.db", flush_every=0.02)
    store.run()
    try:
        store.on_event(finished(1, key=["not", "storable"]))  # a bug upstream of the store
        await eventually(lambda: store_errors(caplog), what="the refused row logged")
        store.on_event(finished(2))
        await eventually(lambda: [r["request_id"] for r in store.recent()] == [2])
        assert len(store_errors(caplog)) == 1
    finally:
        await store.close()
