"""The engine actor against real child processes (the fake engine) on 127.0.0.1:
one test per state-machine edge, plus the stop escalation (house style 5)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from helpers import eventually, grandchild_pid, group_members, pid_alive, spec
from swapyard.config import ModelSpec
from swapyard.errors import (
    EngineBackoff,
    EngineCrashed,
    EngineExitedEarly,
    EngineFailed,
    EngineStartTimeout,
    EngineStopped,
    PortInUse,
)
from swapyard.events import EngineStateChanged, EventBus
from swapyard.ports import PortAllocator
from swapyard.process.actor import EngineProcess
from swapyard.process.state import EngineState
from swapyard.testing import fake_engine_cmd

S = EngineState


async def answer_until_it_crashes(h: Harness, e: EngineProcess) -> None:
    """Ask for more tokens than an engine with ``crash_after_tokens`` gives."""
    body = {"model": "m", "messages": [], "max_tokens": 3}
    with pytest.raises(aiohttp.ClientError):
        async with h.http.post(e.upstream + "/v1/chat/completions", json=body) as r:
            await r.read()


class Harness:
    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.bus = EventBus()
        self.events: list[tuple[str, str]] = []
        self.bus.add_listener(self._record)
        self.engines: list[EngineProcess] = []

    def _record(self, e: object) -> None:
        if isinstance(e, EngineStateChanged):
            self.events.append((str(e.old), str(e.new)))

    def engine(self, s: ModelSpec) -> EngineProcess:
        e = EngineProcess(s, self.bus, PortAllocator(), self.http)
        e.run()
        self.engines.append(e)
        return e


@pytest.fixture
async def h() -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as http:
        harness = Harness(http)
        yield harness
        for e in harness.engines:
            await e.close()


async def test_stopped_to_starting_to_ready_when_health_passes(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(load_delay=0.2)))
    await e.start()
    assert e.state is S.READY
    assert h.events == [("stopped", "starting"), ("starting", "ready")]
    async with h.http.get(e.upstream + "/health") as r:
        assert r.status == 200


async def test_starting_to_backoff_when_process_exits_early_with_log_lines(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(exit_on_start=2)))
    with pytest.raises(EngineExitedEarly) as info:
        await e.start()
    assert "code 2" in info.value.message
    assert "file is corrupt (simulated)" in (info.value.detail or "")
    assert "simulated" not in info.value.message, "the log tail is for operators (issue 11)"
    assert any("simulated" in line for line in info.value.log_tail)
    assert e.state is S.BACKOFF
    assert h.events == [("stopped", "starting"), ("starting", "backoff")]


async def test_starting_to_stopping_to_failed_when_health_never_passes(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(never_healthy=True), start_timeout=3))
    with pytest.raises(EngineStartTimeout) as info:
        await e.start()
    assert "did not answer 200 within 3 s" in info.value.message
    assert any("listening" in line for line in info.value.log_tail)
    await eventually(lambda: e.state is S.BACKOFF)
    assert h.events == [("stopped", "starting"), ("starting", "stopping"), ("stopping", "backoff")]


async def test_ready_to_stopping_to_stopped_and_group_gone(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd()))
    await e.start()
    pgid = e.pid
    assert pgid is not None and group_members(pgid)
    await e.stop()
    assert e.state is S.STOPPED
    assert group_members(pgid) == []
    assert h.events[-2:] == [("ready", "stopping"), ("stopping", "stopped")]


async def test_sigterm_ignoring_engine_is_killed_by_escalation(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(ignore_sigterm=True), stop_timeout=0.3))
    await e.start()
    pgid = e.pid
    assert pgid is not None
    await e.stop()
    assert e.state is S.STOPPED
    assert any("sending SIGKILL" in line for line in e.logs.tail())
    assert group_members(pgid) == []


async def test_grandchild_does_not_survive_stop(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(grandchild=True), stop_timeout=0.3))
    await e.start()
    child = grandchild_pid(e.logs.tail())
    assert pid_alive(child)
    await e.stop()
    await eventually(lambda: not pid_alive(child))


async def test_cmd_stop_replaces_sigterm(h: Harness) -> None:
    """With SIGTERM ignored, only cmd_stop (SIGINT here) can stop it before the kill timer."""
    e = h.engine(
        spec(fake_engine_cmd(ignore_sigterm=True), cmd_stop="kill -INT ${PID}", stop_timeout=60)
    )
    await e.start()
    pid = e.pid
    await e.stop()
    lines = e.logs.tail()
    assert f"[swapyard] stopping with: kill -INT {pid}" in lines
    assert not any("sending SIGKILL" in line for line in lines)


async def test_ready_to_backoff_when_engine_crashes(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(crash_after_tokens=1)))
    await e.start()
    await answer_until_it_crashes(h, e)
    await eventually(lambda: e.state is S.BACKOFF)
    assert isinstance(e.last_error, EngineCrashed)
    assert "crashing after 1 tokens" in (e.last_error.detail or "")
    assert h.events[-1] == ("ready", "backoff")


async def test_starting_to_stopping_when_stopped_during_start(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(load_delay=30)))
    starting = asyncio.ensure_future(e.start())
    await eventually(lambda: e.state is S.STARTING)
    await e.stop()
    with pytest.raises(EngineStopped):
        await starting
    assert h.events == [("stopped", "starting"), ("starting", "stopping"), ("stopping", "stopped")]


async def test_backoff_refuses_a_start_until_it_is_over_then_starts(
    h: Harness, tmp_path: object
) -> None:
    """After a failed start the engine backs off: a start meanwhile is refused with
    the time left (no spawn); once the backoff is over it starts again (issue 10)."""
    flag = f"{tmp_path}/tried"
    fake = fake_engine_cmd().replace("${PORT}", '"$1"')
    script = f"if [ -f {flag} ]; then exec {fake}; else touch {flag}; echo nope; exit 4; fi"
    e = h.engine(spec(["sh", "-c", script, "sh", "${PORT}"], backoff=0.5))
    with pytest.raises(EngineExitedEarly):
        await e.start()
    with pytest.raises(EngineBackoff) as info:
        await e.start()
    assert 0 < info.value.retry_after <= 0.5
    assert "exited with code 4" in info.value.message
    await eventually(lambda: e.state is S.STOPPED)
    await e.start()
    assert e.state is S.READY
    assert h.events == [
        ("stopped", "starting"), ("starting", "backoff"), ("backoff", "stopped"),
        ("stopped", "starting"), ("starting", "ready"),
    ]  # fmt: skip


async def test_backoff_doubles_then_failed_after_the_start_limit(h: Harness) -> None:
    """A crash loop backs off 0.1 s, 0.2 s, 0.4 s … and after `start_limit` failures
    within the interval stays failed: no more spawns until a reset (issue 10)."""
    e = h.engine(spec(fake_engine_cmd(exit_on_start=3), backoff=0.1, start_limit=3))
    retries: list[float | None] = []
    h.bus.add_listener(
        lambda ev: (
            retries.append(ev.retry_in)
            if isinstance(ev, EngineStateChanged) and ev.new is S.BACKOFF
            else None
        )
    )
    for _ in range(3):
        await eventually(lambda: e.state is S.STOPPED)
        with pytest.raises(EngineExitedEarly):
            await e.start()
    assert e.state is S.FAILED
    assert retries == [pytest.approx(0.1), pytest.approx(0.2)]
    with pytest.raises(EngineFailed, match="failed 3 times"):
        await e.start()
    assert sum(1 for ev in h.events if ev == ("stopped", "starting")) == 3  # 3 spawns only
    await e.reset()
    assert e.view().state is S.STOPPED and e.last_error is None


async def test_stop_in_backoff_changes_nothing_and_reset_clears_it(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(exit_on_start=1), backoff=30))
    with pytest.raises(EngineExitedEarly):
        await e.start()
    await e.stop()
    assert e.state is S.BACKOFF
    await e.reset()
    assert e.view().state is S.STOPPED and e.last_error is None
    assert h.events[-1] == ("backoff", "stopped")


async def test_ready_to_stopped_when_engine_exits_cleanly(h: Harness) -> None:
    """An engine that exits with code 0 while serving is not a failure: no backoff."""
    e = h.engine(spec(fake_engine_cmd()))
    await e.start()
    assert e.pid is not None
    os.kill(e.pid, signal.SIGINT)  # the fake engine stops with code 0 on SIGINT
    await eventually(lambda: e.state is S.STOPPED)
    assert h.events[-1] == ("ready", "stopped")


async def test_start_during_stopping_restarts_after_the_stop(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(ignore_sigterm=True), stop_timeout=0.3))
    await e.start()
    stopping = asyncio.ensure_future(e.stop())
    await eventually(lambda: e.state is S.STOPPING)
    await e.start()
    await stopping
    assert e.state is S.READY
    assert h.events[-4:] == [
        ("ready", "stopping"), ("stopping", "stopped"), ("stopped", "starting"),
        ("starting", "ready"),
    ]  # fmt: skip


async def test_fixed_port_in_use_fails_at_once(h: Harness) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        e = h.engine(spec(f"{sys.executable} -c pass", proxy=f"http://127.0.0.1:{port}"))
        with pytest.raises(PortInUse, match=f"port {port}"):
            await e.start()
    assert e.state is S.BACKOFF
    assert h.events == [("stopped", "backoff")]  # never spawned


async def test_missing_binary_fails_with_a_clear_error(h: Harness) -> None:
    e = h.engine(spec("/nonexistent/engine --port ${PORT}"))
    with pytest.raises(EngineExitedEarly, match="cannot execute '/nonexistent/engine'"):
        await e.start()


async def test_concurrent_starts_share_one_process(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(load_delay=0.3)))
    await asyncio.gather(*(e.start() for _ in range(5)))
    assert h.events == [("stopped", "starting"), ("starting", "ready")]


async def test_engine_output_is_kept_in_the_log_ring(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(model_id="ringtest")))
    await e.start()
    assert any("model ringtest" in line for line in e.logs.tail())
    q = e.logs.follow()
    async with h.http.post(
        e.upstream + "/v1/completions", json={"model": "x", "prompt": "hi", "max_tokens": 2}
    ) as r:
        await r.read()
    line = await asyncio.wait_for(q.get(), 5)
    assert "request /v1/completions" in line


async def test_crash_is_seen_while_a_grandchild_still_holds_the_output_pipe(h: Harness) -> None:
    """Exit is watched on the process, not on its pipe: an orphan holding stdout open
    must not hide a crash (and is killed with the rest of the group)."""
    e = h.engine(spec(fake_engine_cmd(crash_after_tokens=1, grandchild=True)))
    await e.start()
    child = grandchild_pid(e.logs.tail())
    await answer_until_it_crashes(h, e)
    await eventually(lambda: e.state is S.BACKOFF)
    await eventually(lambda: not pid_alive(child))


def setsid_grandchild(lines: list[str]) -> int:
    for line in lines:
        if "setsid grandchild pid" in line:
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no setsid grandchild in log: {lines}")


async def test_setsid_grandchild_is_stopped_with_its_engine(h: Harness) -> None:
    """A helper that called setsid() left the engine's process group; stopping the
    engine still stops it (issue 10)."""
    e = h.engine(spec(fake_engine_cmd(setsid_grandchild=True)))
    await e.start()
    child = setsid_grandchild(e.logs.tail())
    assert pid_alive(child) and os.getpgid(child) != e.pid
    await e.stop()
    await eventually(lambda: not pid_alive(child))


async def test_setsid_grandchild_is_stopped_when_its_engine_crashes(h: Harness) -> None:
    e = h.engine(spec(fake_engine_cmd(setsid_grandchild=True, crash_after_tokens=1)))
    await e.start()
    child = setsid_grandchild(e.logs.tail())
    await answer_until_it_crashes(h, e)
    await eventually(lambda: e.state is S.BACKOFF)
    await eventually(lambda: not pid_alive(child))
