"""One log line per lifecycle event (issue 10): ``format_event`` for each kind of
event in both formats, and a real ``swapyard serve`` whose stdout tells the story."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest
from test_cli import SWAPYARD, get_json, wait_listening, write_config

from swapyard.errors import EngineCrashed, EngineExitedEarly
from swapyard.events import (
    ConfigReloaded,
    EngineReaped,
    EngineStateChanged,
    Event,
    RequestAdmitted,
    RequestFinished,
    RequestRecord,
    SwapStarted,
)
from swapyard.ports import PortAllocator
from swapyard.process.state import EngineState
from swapyard.testing import fake_engine_cmd
from swapyard.usage import lifelog
from swapyard.usage.lifelog import format_event

NOW = 1_790_000_000.25  # 2026-09-21T14:13:20.250Z


def st(name: str) -> EngineState:
    """A state by name, including ones the state table does not have yet."""
    return cast(EngineState, name)


def change(old: str, new: str, **fields: Any) -> EngineStateChanged:
    return EngineStateChanged("m", st(old), st(new), **fields)


def as_json(ev: Any) -> dict[str, Any]:
    line = format_event(ev, "json", now=NOW)
    assert line is not None and "\n" not in line
    doc: dict[str, Any] = json.loads(line)
    assert doc["ts"] == "2026-09-21T14:13:20.250Z"
    assert datetime.fromisoformat(doc["ts"]).utcoffset() is not None
    return doc


# -- engine state changes -----------------------------------------------------------


def test_start_from_stopped_is_started_with_pid_and_port() -> None:
    """Entering ``starting`` from ``stopped`` is "started"; pid and port when known."""
    ev = change("stopped", "starting", pid=4242, port="40123")
    assert format_event(ev) == "m: started (pid 4242, port 40123)"
    assert as_json(ev) == {"ts": "2026-09-21T14:13:20.250Z", "model": "m", "event": "started",
                           "from_state": "stopped", "to_state": "starting", "pid": 4242,
                           "port": 40123}  # fmt: skip


@pytest.mark.parametrize("old", ["failed", "backoff"])
def test_start_after_a_failure_or_backoff_is_started(old: str) -> None:
    """A start again after ``failed`` or ``backoff`` reads the same as a first start."""
    assert format_event(change(old, "starting")) == "m: started"
    assert as_json(change(old, "starting"))["event"] == "started"


@pytest.mark.parametrize("new", ["starting", "waking"])
def test_leaving_sleep_is_waking(new: str) -> None:
    """Into ``starting`` or ``waking`` from ``sleeping`` is "waking", not a start."""
    ev = change("sleeping", new)
    assert format_event(ev) == "m: waking"
    doc = as_json(ev)
    assert (doc["event"], doc["from_state"], doc["to_state"]) == ("waking", "sleeping", new)


def test_ready_says_how_long_the_load_took() -> None:
    ev = change("starting", "ready", pid=4242, port="40123", load_s=1.2391)
    assert format_event(ev) == "m: ready after 1.24 s (pid 4242, port 40123)"
    doc = as_json(ev)
    assert doc["event"] == "ready" and doc["duration_s"] == 1.239
    assert (doc["pid"], doc["port"]) == (4242, 40123)


def test_ready_after_a_wake_is_woke() -> None:
    ev = change("starting", "ready", pid=4242, load_s=0.31, woke=True)
    assert format_event(ev) == "m: woke after 0.31 s"
    doc = as_json(ev)
    assert (doc["event"], doc["duration_s"], doc["pid"]) == ("woke", 0.31, 4242)


def test_stopping_gives_its_reason() -> None:
    assert format_event(change("ready", "stopping", reason="idle")) == "m: stopping (idle)"
    assert format_event(change("ready", "stopping", pid=7)) == "m: stopping"
    doc = as_json(change("ready", "stopping", pid=7, reason="idle"))
    assert (doc["event"], doc["reason"], doc["pid"]) == ("stopping", "idle", 7)


def test_stopped_with_and_without_an_exit_code() -> None:
    assert format_event(change("stopping", "stopped")) == "m: stopped"
    ev = change("stopping", "stopped", exit_code=-15)
    assert format_event(ev) == "m: stopped (exit code -15)"
    assert as_json(ev)["exit_code"] == -15


def test_crash_while_serving_gives_exit_code_and_first_error_line_only() -> None:
    """The error's log tail is left out: it may echo the engine's command line."""
    err = EngineCrashed("m", "the process exited with code 3 while serving",
                        ["[swapyard] starting: engine --api-key s3cret", "boom"])  # fmt: skip
    ev = change("ready", "failed", error=err, pid=4242, exit_code=3)
    text = format_event(ev)
    assert text == (
        "m: crashed (exit code 3): model 'm' crashed: the process exited with code 3 while serving"
    )
    doc = as_json(ev)
    assert (doc["event"], doc["exit_code"], doc["pid"]) == ("crashed", 3, 4242)
    assert doc["error"] == "model 'm' crashed: the process exited with code 3 while serving"
    assert "s3cret" not in text and "s3cret" not in json.dumps(doc)


def test_failure_while_starting_is_start_failed_with_its_reason() -> None:
    """A start error gives its reason, not the message that repeats the model's name."""
    err = EngineExitedEarly("m", "the process exited with code 2 before it became ready")
    ev = change("starting", "failed", error=err, exit_code=2)
    assert format_event(ev) == (
        "m: failed to start (exit code 2): the process exited with code 2 before it became ready"
    )
    doc = as_json(ev)
    assert doc["event"] == "start_failed"
    assert doc["error"] == "the process exited with code 2 before it became ready"


def test_backoff_says_when_it_retries() -> None:
    ev = change("failed", "backoff", retry_in=2.0, reason="crash")
    assert format_event(ev) == "m: backoff, retry in 2.0 s (crash)"
    doc = as_json(ev)
    assert (doc["event"], doc["retry_in_s"], doc["reason"]) == ("backoff", 2.0, "crash")


def test_asleep_gives_the_fast_swap_mode() -> None:
    ev = change("stopping", "sleeping", reason="sleep")
    assert format_event(ev) == "m: asleep (sleep)"
    assert as_json(ev)["event"] == "asleep"


def test_warming_is_an_event_of_its_own() -> None:
    assert format_event(change("starting", "warming")) == "m: warming"
    assert as_json(change("starting", "warming"))["event"] == "warming"


def test_a_state_no_table_knows_is_its_own_event() -> None:
    """A state added later needs no code: its name is the event."""
    assert format_event(change("ready", "draining")) == "m: draining"
    doc = as_json(change("ready", "draining"))
    assert (doc["event"], doc["to_state"]) == ("draining", "draining")


def test_json_leaves_out_fields_that_do_not_apply() -> None:
    doc = as_json(change("stopping", "stopped"))
    assert set(doc) == {"ts", "model", "event", "from_state", "to_state"}


# -- swaps, reaped engines, reloads, and what is not lifecycle ------------------------


def test_eviction_names_the_model_it_makes_room_for() -> None:
    ev = SwapStarted(new="b", old="a", mode="stop")
    assert format_event(ev) == "a: evicted for b (stop)"
    doc = as_json(ev)
    assert (doc["model"], doc["event"], doc["for_model"], doc["mode"]) == (
        "a", "evicted", "b", "stop"
    )  # fmt: skip


def test_reaped_engine_gives_pid_and_reason() -> None:
    ev = EngineReaped("old", 4242, "config changed")
    assert format_event(ev) == "old: reaped pid 4242 (config changed)"
    doc = as_json(ev)
    assert (doc["model"], doc["event"], doc["pid"], doc["reason"]) == (
        "old", "reaped", 4242, "config changed"
    )  # fmt: skip


def test_reload_lists_what_changed() -> None:
    ev = ConfigReloaded("my.yaml", added=("x",), changed=("y",), removed=("z",),
                        unchanged=("a", "b"))  # fmt: skip
    assert format_event(ev) == (
        "config reloaded from my.yaml: added x; changed y; removed z; unchanged a, b"
    )
    doc = as_json(ev)
    assert doc["model"] is None and doc["event"] == "config_reloaded"
    assert (doc["added"], doc["changed"], doc["removed"], doc["unchanged"]) == (
        ["x"], ["y"], ["z"], ["a", "b"]
    )  # fmt: skip


def test_reload_with_nothing_in_it_says_so() -> None:
    assert format_event(ConfigReloaded("my.yaml")) == "config reloaded from my.yaml: no models"


def test_refused_reload_gives_the_first_line_of_the_error() -> None:
    ev = ConfigReloaded("my.yaml", error="my.yaml: model 'm': unknown key 'tll'\nmore")
    assert format_event(ev) == (
        "config reload from my.yaml refused: my.yaml: model 'm': unknown key 'tll'"
    )
    doc = as_json(ev)
    assert doc["event"] == "config_reload_refused"
    assert doc["error"] == "my.yaml: model 'm': unknown key 'tll'"


def test_requests_admissions_and_swaps_without_a_victim_are_not_lifecycle() -> None:
    record = RequestRecord(request_id=1, model="m", engine="m", path="/v1/x", status=200,
                           stream=False)  # fmt: skip
    for ev in (RequestAdmitted(1, "m", 0.0), RequestFinished(record), SwapStarted("b", None)):
        assert format_event(ev) is None
        assert format_event(ev, "json") is None


# -- the logger ------------------------------------------------------------------------


@pytest.fixture
def lifecycle_stream() -> Iterator[io.StringIO]:
    """What ``log_to`` writes, with the logger and root handlers put back after."""
    logger = logging.getLogger(lifelog.LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    handler = lifelog.log_to("json", stream)
    try:
        yield stream
    finally:
        lifelog.detach(handler)
        logger.setLevel(level)


def test_listener_logs_one_record_per_lifecycle_event(lifecycle_stream: io.StringIO) -> None:
    """The bus listener writes each lifecycle event once, as the handler's format
    asks, and nothing for a request."""
    lifelog.on_event(change("starting", "ready", pid=1, load_s=0.5))
    lifelog.on_event(RequestAdmitted(1, "m", 0.0))
    lines = lifecycle_stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["event"] == "ready"


def test_crashes_backoff_and_refused_reloads_are_warnings() -> None:
    """Lines an operator must act on are logged at WARNING, the rest at INFO."""
    warn: list[Event] = [
        change("ready", "failed"), change("starting", "failed"), change("failed", "backoff"),
        ConfigReloaded("my.yaml", error="bad"),
    ]  # fmt: skip
    info: list[Event] = [
        change("stopped", "starting"), change("starting", "ready"), ConfigReloaded("my.yaml"),
    ]  # fmt: skip
    assert {lifelog.describe(ev).level for ev in warn} == {logging.WARNING}  # type: ignore[union-attr]
    assert {lifelog.describe(ev).level for ev in info} == {logging.INFO}  # type: ignore[union-attr]


# -- a real swapyard serve ---------------------------------------------------------------


def run_serve(tmp_path: Path, log_format: str) -> tuple[list[str], str, int, list[str]]:
    """Serve the fake engine, answer one request, SIGTERM; stdout lines, stderr,
    the pid ``/health`` reported, and the lines ``GET /api/logs`` held."""
    cmd = fake_engine_cmd("m", load_delay=0.2)
    cfg = write_config(tmp_path, f"models:\n  m:\n    cmd: {cmd}\n")
    port = PortAllocator().allocate()
    argv = [*SWAPYARD, "serve", "-c", str(cfg), "--port", str(port), "--log-format", log_format]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}"
        doc = get_json(url + "/v1/chat/completions", {"model": "m", "messages": []})
        assert doc["model"] == "m"
        pid = get_json(url + "/health")["models"]["m"]["pid"]  # type: ignore[index]
        req = urllib.request.Request(url + "/api/logs", headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            ring: list[str] = json.loads(r.read())["lines"]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert isinstance(pid, int)
    return out.decode().splitlines(), err.decode(), pid, ring


def test_serve_prints_one_text_line_per_lifecycle_event_on_stdout(tmp_path: Path) -> None:
    """started, ready (with its load time and the pid /health reported), stopping,
    stopped — once each, in order, on stdout; not on stderr; also in /api/logs."""
    lines, err, pid, ring = run_serve(tmp_path, "text")
    assert lines[0].startswith(f"m: started (pid {pid}, port ")
    assert lines[1].startswith("m: ready after ") and f"(pid {pid}" in lines[1]
    assert float(lines[1].split()[3]) > 0
    assert lines[2:] == ["m: stopping", "m: stopped (exit code 0)"]
    assert "m: ready" not in err and "m: started" not in err
    assert any(line.endswith(lines[1]) and "swapyard.lifecycle" in line for line in ring)


def test_serve_log_format_json_prints_one_object_per_line(tmp_path: Path) -> None:
    lines, _, pid, _ = run_serve(tmp_path, "json")
    docs = [json.loads(line) for line in lines]
    assert [d["event"] for d in docs] == ["started", "ready", "stopping", "stopped"]
    assert all(d["model"] == "m" and datetime.fromisoformat(d["ts"]) for d in docs)
    ready = docs[1]
    assert ready["pid"] == pid and ready["duration_s"] > 0
    assert (ready["from_state"], ready["to_state"]) == ("starting", "ready")
