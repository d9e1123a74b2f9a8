"""Supervision like an init system (issue 10), with real `swapyard serve` processes
and real engines: adopt after swapyard dies, reap what it cannot adopt, leave
strangers alone, reload on SIGHUP, refuse a broken reload, back off a crash
loop, and never loop two explicit loads."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_cli import SWAPYARD, get_json, wait_listening

from helpers import config, eventually, eventually_sync, pid_alive
from swapyard.events import Event, SwapStarted
from swapyard.ports import PortAllocator
from swapyard.process.registry import EngineRecord, EngineRegistry, proc_start_time
from swapyard.process.state import EngineState
from swapyard.testing import fake_engine_cmd, running_server

S = EngineState


class Serve:
    """One `swapyard serve` process with its own data dir (the engine registry)."""

    def __init__(self, tmp: Path, cfg: Path, port: int | None = None) -> None:
        self.port = port or PortAllocator().allocate()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "SWAPYARD_DATA_DIR": str(tmp / "data")}
        self.out = open(tmp / f"stdout-{self.port}-{time.monotonic_ns()}.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(self.port)],
            stdout=self.out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        wait_listening(self.port, self.proc)

    def lines(self) -> list[str]:
        self.out.flush()
        self.out.seek(0)
        return self.out.read().decode(errors="replace").splitlines()

    def health(self) -> dict[str, Any]:
        doc = get_json(self.url + "/health")
        models = doc["models"]
        assert isinstance(models, dict)
        return models

    def pid(self, model: str) -> int:
        pid = self.health()[model]["pid"]
        assert isinstance(pid, int)
        return pid

    def ask(self, model: str, **extra: Any) -> dict[str, object]:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
        return get_json(self.url + "/v1/chat/completions", body)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.out.close()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        s.stop()


def write(path: Path, models: dict[str, dict[str, Any]], **top: Any) -> Path:
    path.write_text(json.dumps({"models": models, **top}))
    return path


def test_restarted_swapyard_adopts_the_running_engine(tmp_path: Path, servers: list[Serve]) -> None:
    """kill -9 of swapyard leaves its engine running; the next swapyard adopts it:
    same pid serves the next request at once, no second engine is started."""
    cfg = write(tmp_path / "c.yaml", {"m": {"cmd": fake_engine_cmd("m", load_delay=1.0)}})
    first = Serve(tmp_path, cfg)
    servers.append(first)
    first.ask("m")
    pid = first.pid("m")
    first.kill9()
    assert pid_alive(pid)  # the engine outlived its swapyard
    second = Serve(tmp_path, cfg)
    servers.append(second)
    eventually_sync(lambda: second.health()["m"]["state"] == "ready", what="adopted")
    assert second.pid("m") == pid
    assert second.ask("m")["model"] == "m"
    assert second.pid("m") == pid
    assert any("m: adopted" in line for line in second.lines()), second.lines()
    assert not any("m: started" in line for line in second.lines())
    second.stop()
    eventually_sync(lambda: not pid_alive(pid), what="the adopted engine stopped with swapyard")


def test_sigusr2_leaves_the_engines_for_the_next_swapyard(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """SIGUSR2: a clean exit (status 75, for systemd to restart it) that leaves the
    engines running; the next swapyard adopts them (an upgrade without reloads)."""
    cfg = write(tmp_path / "c.yaml", {"m": {"cmd": fake_engine_cmd("m")}})
    first = Serve(tmp_path, cfg)
    servers.append(first)
    first.ask("m")
    pid = first.pid("m")
    first.proc.send_signal(signal.SIGUSR2)
    assert first.proc.wait(timeout=30) == 75
    assert pid_alive(pid)
    second = Serve(tmp_path, cfg)
    servers.append(second)
    eventually_sync(lambda: second.health()["m"]["pid"] == pid, what="adopted")
    assert second.ask("m")["model"] == "m"


def test_engine_whose_config_changed_is_reaped_not_adopted(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """A record whose effective spec no longer matches the config: the old engine is
    stopped (group and all) and the next request starts the new one."""
    cfg = write(tmp_path / "c.yaml", {"m": {"cmd": fake_engine_cmd("m")}})
    first = Serve(tmp_path, cfg)
    servers.append(first)
    first.ask("m")
    old = first.pid("m")
    first.kill9()
    write(cfg, {"m": {"cmd": fake_engine_cmd("m", tokens_per_second=500)}})
    second = Serve(tmp_path, cfg)
    servers.append(second)
    eventually_sync(lambda: not pid_alive(old), what="the old engine reaped")
    assert second.health()["m"]["state"] == "stopped"
    second.ask("m")
    assert second.pid("m") != old
    assert any("reaped" in line and str(old) in line for line in second.lines()), second.lines()


def test_record_whose_pid_now_belongs_to_a_stranger_is_left_alone(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """A record naming a live pid whose start time differs (the pid was reused):
    swapyard never signals it, and drops the record."""
    stranger = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        registry = EngineRegistry(tmp_path / "data" / "engines")
        start = proc_start_time(stranger.pid)
        assert start is not None
        registry.put(
            EngineRecord(
                model="m",
                spec_hash="x",
                pid=stranger.pid,
                pgid=stranger.pid,
                start_time=start + 1,
                port="1",
                upstream="http://127.0.0.1:1",
                devices=(),
                started_at=time.time(),
                owner_pid=1,
            )
        )
        cfg = write(tmp_path / "c.yaml", {"m": {"cmd": fake_engine_cmd("m")}})
        servers.append(Serve(tmp_path, cfg))
        eventually_sync(lambda: registry.get("m") is None, what="the stale record dropped")
        assert stranger.poll() is None and pid_alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


def test_sighup_reload_restarts_only_the_changed_model(
    tmp_path: Path, servers: list[Serve]
) -> None:
    """SIGHUP with one model's command changed: the other keeps its pid and its
    running stream is not interrupted; the changed one restarts with the new spec."""
    models = {
        "a": {"cmd": fake_engine_cmd("a"), "memory": "1MiB"},
        "b": {"cmd": fake_engine_cmd("b", tokens_per_second=20), "memory": "1MiB"},
    }
    cfg = write(tmp_path / "c.yaml", models, devices={"ram": {"memory": "1GiB"}})
    srv = Serve(tmp_path, cfg)
    servers.append(srv)
    srv.ask("a")
    srv.ask("b", max_tokens=1)
    pid_a, pid_b = srv.pid("a"), srv.pid("b")
    req = urllib.request.Request(
        srv.url + "/v1/chat/completions",
        data=json.dumps({"model": "b", "messages": [], "max_tokens": 40, "stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as stream:
        first = stream.readline()  # the stream has begun
        models["a"]["cmd"] = fake_engine_cmd("a", tokens_per_second=500)
        write(cfg, models, devices={"ram": {"memory": "1GiB"}})
        srv.proc.send_signal(signal.SIGHUP)
        rest = stream.read()
    assert first.startswith(b"data: ")
    assert rest.rstrip().endswith(b"data: [DONE]")  # b's answer ran to its end
    eventually_sync(
        lambda: any("config reloaded" in ln for ln in srv.lines()), what="the reload line"
    )
    assert srv.pid("b") == pid_b
    eventually_sync(lambda: srv.health()["a"]["state"] == "stopped", what="a drained and stopped")
    srv.ask("a")
    assert srv.pid("a") != pid_a


def test_broken_reload_changes_nothing_and_says_why(tmp_path: Path, servers: list[Serve]) -> None:
    cfg = write(tmp_path / "c.yaml", {"m": {"cmd": fake_engine_cmd("m")}})
    srv = Serve(tmp_path, cfg)
    servers.append(srv)
    srv.ask("m")
    pid = srv.pid("m")
    cfg.write_text("models:\n  m:\n    cmd: x ${PORT}\n    tll: 3\n")
    req = urllib.request.Request(srv.url + "/api/config/reload", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 422
    err = json.loads(info.value.read())["error"]
    assert err["code"] == "invalid_config" and "tll" in err["message"]
    srv.proc.send_signal(signal.SIGHUP)  # the same through the signal: logged, no change
    eventually_sync(
        lambda: any("config reload from" in ln and "refused" in ln for ln in srv.lines()),
        what="refusal logged",
    )
    assert srv.pid("m") == pid and srv.health()["m"]["state"] == "ready"
    assert srv.ask("m")["model"] == "m"


async def test_crash_loop_backs_off_then_fails_after_the_start_limit(
    http: aiohttp.ClientSession,
) -> None:
    """30 client retries of an engine that exits at once: 3 spawns (start_limit 3),
    then engine_failed; in between, engine_backoff with Retry-After (issue 10)."""
    model = {"cmd": fake_engine_cmd("m", exit_on_start=3), "backoff": 0.2, "start_limit": 3}
    cfg = config({"m": model})
    spawns: list[Event] = []
    async with running_server(cfg) as srv:
        srv.router.bus.add_listener(
            lambda e: spawns.append(e) if getattr(e, "new", None) is S.STARTING else None
        )
        codes: list[tuple[int, str, str | None]] = []
        for _ in range(30):
            async with http.post(srv.url + "/v1/chat/completions", json={"model": "m"}) as r:
                err = (await r.json())["error"]
                codes.append((r.status, err["code"], r.headers.get("Retry-After")))
            if err["code"] == "engine_failed":
                break
            if err["code"] == "engine_backoff":
                await eventually(lambda: srv.router.model("m").state is not S.BACKOFF)
        assert len(spawns) == 3
        assert [c for _, c, _ in codes].count("engine_exited") == 3
        assert codes[-1][:2] == (503, "engine_failed")
        backoffs = [(s, ra) for s, c, ra in codes if c == "engine_backoff"]
        assert all(s == 503 and ra is not None for s, ra in backoffs)
        await srv.router.load("m")  # an explicit load resets it and tries again
        assert len(spawns) == 4


async def test_two_explicit_loads_that_do_not_fit_do_not_swap_forever() -> None:
    """`swapyard load a; swapyard load b` with room for one: b evicts a once, and
    a is not brought back (issue 10)."""
    models = {m: {"cmd": fake_engine_cmd(m), "memory": "6GiB"} for m in ("a", "b")}
    cfg = config(models, devices={"gpu0": {"memory": "8GiB"}})
    swaps: list[SwapStarted] = []
    async with running_server(cfg) as srv:
        srv.router.bus.add_listener(
            lambda e: swaps.append(e) if isinstance(e, SwapStarted) else None
        )
        assert await srv.router.load("a") is S.READY
        assert await srv.router.load("b") is S.READY
        for _ in range(20):  # a while for a loop to show (none may)
            await asyncio.sleep(0.05)
        assert [(s.old, s.new) for s in swaps] == [("a", "b")]
        assert srv.router.model("a").state is S.STOPPED
