"""The engine registry (issue 10): records of the engines a swapyard started, told
apart from strangers by start time and process group, against real processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapyard.config import ModelSpec, load_config
from swapyard.errors import SwapyardError
from swapyard.process.registry import (
    EngineRecord,
    EngineRegistry,
    is_alive_same,
    proc_start_time,
    spec_hash,
    triage,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(30)"]


def model(yaml: str, name: str = "m") -> ModelSpec:
    return load_config(yaml).models[name]


def record(model: str = "m", **changes: Any) -> EngineRecord:
    base = EngineRecord(
        model=model,
        spec_hash="0" * 64,
        pid=12345,
        pgid=12345,
        start_time=1000,
        port="5800",
        upstream="http://127.0.0.1:5800",
        devices=("cuda:0", "cuda:1"),
        started_at=1_700_000_000.5,
        owner_pid=4242,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def live_record(proc: subprocess.Popen[bytes]) -> EngineRecord:
    start = proc_start_time(proc.pid)
    assert start is not None
    return record(pid=proc.pid, pgid=os.getpgid(proc.pid), start_time=start)


# --- processes -------------------------------------------------------------------


def test_proc_start_time_of_a_live_child_is_after_our_own(
    child: subprocess.Popen[bytes],
) -> None:
    """A live child's start time is a tick count no earlier than ours."""
    mine = proc_start_time(os.getpid())
    theirs = proc_start_time(child.pid)
    assert mine is not None and theirs is not None
    assert theirs >= mine


def test_proc_start_time_is_none_for_no_such_process() -> None:
    """A pid that exists nowhere (or is not positive) has no start time."""
    assert proc_start_time(2**22 + 1) is None  # above the kernel's pid_max
    assert proc_start_time(0) is None
    assert proc_start_time(-1) is None


def test_proc_start_time_is_none_for_a_zombie() -> None:
    """An exited child not yet reaped (a zombie) has no start time."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    try:
        while Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            os.sched_yield()
        assert proc_start_time(proc.pid) is None
    finally:
        proc.wait()


def test_proc_start_time_reads_a_comm_with_spaces_and_parentheses() -> None:
    """A process that names itself ``a) (b c`` still gives the right field 22."""
    rename = "open('/proc/self/comm', 'w').write('a) (b c'); print(flush=True); input()"
    proc = subprocess.Popen(
        [sys.executable, "-c", rename], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        assert Path(f"/proc/{proc.pid}/comm").read_text() == "a) (b c\n"
        expected = int(Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[-1].split()[19])
        assert proc_start_time(proc.pid) == expected
    finally:
        proc.kill()
        proc.communicate()


def test_is_alive_same_true_for_the_recorded_live_child(child: subprocess.Popen[bytes]) -> None:
    """The child a record was written for is recognised as the same process."""
    assert is_alive_same(live_record(child))


def test_is_alive_same_false_after_the_child_exits_and_is_reaped() -> None:
    """Once the process is gone, its record no longer matches anything."""
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        rec = live_record(proc)
    finally:
        proc.kill()
        proc.wait()
    assert not is_alive_same(rec)


def test_is_alive_same_false_for_a_reused_pid(child: subprocess.Popen[bytes]) -> None:
    """The right pid with another start time is a stranger that got the pid."""
    rec = live_record(child)
    assert not is_alive_same(dataclasses.replace(rec, start_time=rec.start_time - 1))


def test_is_alive_same_false_for_a_wrong_process_group(child: subprocess.Popen[bytes]) -> None:
    """The right pid and start time in another process group is not ours."""
    rec = live_record(child)
    assert not is_alive_same(dataclasses.replace(rec, pgid=os.getpgid(0)))


def test_is_alive_same_false_for_a_non_positive_pid() -> None:
    """Pid 0 would mean "this process" to getpgid; a record with it is never alive."""
    me = os.getpid()
    start = proc_start_time(me)
    assert start is not None
    assert not is_alive_same(record(pid=0, pgid=os.getpgid(0), start_time=start))


# --- records ---------------------------------------------------------------------


def test_record_json_round_trips() -> None:
    """``from_json(to_json())`` gives back an equal record, devices as a tuple."""
    rec = record(devices=("cuda:0",), port="")
    assert EngineRecord.from_json(rec.to_json()) == rec


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        "{}",
        '{"format": 2}',
        '{"format": 1, "model": "m"}',
        "not json",
    ],
)
def test_record_from_json_rejects_what_is_not_a_record(text: str) -> None:
    """Wrong JSON, another format or missing keys raise ValueError."""
    with pytest.raises(ValueError):
        EngineRecord.from_json(text)


@pytest.mark.parametrize(
    ("key", "value"),
    [("pid", "12"), ("pid", True), ("devices", "cuda:0"), ("devices", [0]), ("port", 5800)],
)
def test_record_from_json_rejects_a_value_of_the_wrong_type(key: str, value: object) -> None:
    """A field of the wrong JSON type is refused, not coerced."""
    doc = json.loads(record().to_json())
    doc[key] = value
    with pytest.raises(ValueError):
        EngineRecord.from_json(json.dumps(doc))


# --- the registry ----------------------------------------------------------------


def test_registry_put_get_records_remove_round_trip(tmp_path: Path) -> None:
    """What is put is got and listed until it is removed."""
    reg = EngineRegistry(tmp_path)
    a, b = record("a"), record("b", pid=7, pgid=7)
    reg.put(a)
    reg.put(b)
    assert reg.get("a") == a
    assert reg.records() == [a, b]
    reg.remove("a")
    assert reg.get("a") is None
    assert reg.records() == [b]


def test_registry_put_replaces_the_models_record(tmp_path: Path) -> None:
    """A second put for a model overwrites the first."""
    reg = EngineRegistry(tmp_path)
    reg.put(record(port="1"))
    reg.put(record(port="2"))
    assert [r.port for r in reg.records()] == ["2"]


def test_registry_remove_of_a_missing_record_is_fine(tmp_path: Path) -> None:
    """Removing what is not there (even with no directory) does nothing."""
    reg = EngineRegistry(tmp_path / "absent")
    reg.remove("m")
    assert reg.records() == []
    assert reg.get("m") is None


def test_registry_remove_that_fails_raises_naming_the_path(tmp_path: Path) -> None:
    """A record path that cannot be unlinked (a directory) raises SwapyardError."""
    reg = EngineRegistry(tmp_path)
    reg.path("m").mkdir()
    with pytest.raises(SwapyardError, match="cannot remove the engine record") as info:
        reg.remove("m")
    assert str(reg.path("m")) in info.value.message


def test_registry_writes_leave_only_record_files_with_mode_0600(tmp_path: Path) -> None:
    """An atomic put leaves no temp file behind, and the record is private."""
    reg = EngineRegistry(tmp_path)
    for port in ("1", "2", "3"):
        reg.put(record(port=port))
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["m.json"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


def test_registry_skips_and_removes_a_corrupt_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A torn or foreign file is logged, deleted and left out of records()."""
    reg = EngineRegistry(tmp_path)
    good = record("good")
    reg.put(good)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "bad", "pid": ')
    with caplog.at_level(logging.WARNING, "swapyard.registry"):
        assert reg.records() == [good]
    assert not bad.exists()
    assert str(bad) in caplog.text


def test_registry_removes_a_record_filed_under_another_models_name(tmp_path: Path) -> None:
    """A record whose model does not match its file name is treated as corrupt."""
    reg = EngineRegistry(tmp_path)
    reg.put(record("a"))
    (tmp_path / "a.json").rename(tmp_path / "b.json")
    assert reg.get("b") is None
    assert not (tmp_path / "b.json").exists()


def test_registry_get_of_a_corrupt_record_is_none_and_removes_it(tmp_path: Path) -> None:
    """get() treats a corrupt file like records() does."""
    reg = EngineRegistry(tmp_path)
    (tmp_path / "m.json").write_bytes(b"\xff\xfe\x00")
    assert reg.get("m") is None
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("name", ["org/model:Q4_K_M", "a/b/c", "%2F", "..", "ünï cödé"])
def test_registry_round_trips_model_ids_with_slashes_and_colons(tmp_path: Path, name: str) -> None:
    """Any model id maps to one flat file in the directory and back."""
    reg = EngineRegistry(tmp_path)
    rec = record(name)
    reg.put(rec)
    assert reg.get(name) == rec
    assert reg.records() == [rec]
    assert [p.parent for p in tmp_path.iterdir()] == [tmp_path]
    reg.remove(name)
    assert list(tmp_path.iterdir()) == []


def test_registry_creates_its_directory_with_parents(tmp_path: Path) -> None:
    """The first put creates the directory and any missing parents."""
    reg = EngineRegistry(tmp_path / "a" / "b" / "engines")
    reg.put(record())
    assert (tmp_path / "a" / "b" / "engines" / "m.json").is_file()


def test_registry_directory_that_cannot_be_created_raises_naming_the_path(
    tmp_path: Path,
) -> None:
    """A directory under a regular file raises SwapyardError with the path and reason."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    where = blocker / "engines"
    with pytest.raises(SwapyardError, match="engine registry") as info:
        EngineRegistry(where).put(record())
    assert str(where) in info.value.message
    assert "Not a directory" in info.value.message
    assert "\n" not in info.value.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_registry_unwritable_directory_raises_naming_the_path(tmp_path: Path) -> None:
    """A put into a read-only directory raises SwapyardError and leaves no temp file."""
    reg = EngineRegistry(tmp_path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(SwapyardError, match=re.escape(str(tmp_path))):
            reg.put(record())
    finally:
        tmp_path.chmod(0o700)
    assert list(tmp_path.iterdir()) == []


def test_registry_failed_write_raises_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """A record that cannot be written (a file name over the limit) raises
    SwapyardError naming it, and its temp file is cleaned up."""
    reg = EngineRegistry(tmp_path)
    with pytest.raises(SwapyardError, match="cannot write the engine record") as info:
        reg.put(record("m" * 300))
    assert str(reg.path("m" * 300)) in info.value.message
    assert list(tmp_path.iterdir()) == []


# --- spec_hash -------------------------------------------------------------------

BASE = "models: {m: {cmd: 'x --port ${PORT}'}}"


def test_spec_hash_is_a_sha256_hex_digest() -> None:
    """The digest is 64 hex characters and the same for the same config."""
    h = spec_hash(model(BASE))
    assert len(h) == 64 and int(h, 16) >= 0
    assert spec_hash(model(BASE)) == h


def test_spec_hash_ignores_settings_that_need_no_restart() -> None:
    """ttl, aliases, name, pin and friends do not change the digest."""
    other = model(
        "models: {m: {cmd: 'x --port ${PORT}', ttl: 60, aliases: [a, b], name: Nice,"
        " pin: true, priority: 3, max_concurrent: 2, unlisted: true, start_timeout: 9}}"
    )
    assert spec_hash(other) == spec_hash(model(BASE))


@pytest.mark.parametrize(
    "changed",
    [
        "models: {m: {cmd: 'y --port ${PORT}'}}",
        "models: {m: {cmd: 'x --port ${PORT}', env: {A: '1'}}}",
        "models: {m: {cmd: 'x --port ${PORT}', check_endpoint: /v1/models}}",
        "models: {m: {cmd: 'x --port ${PORT}', proxy: 'http://127.0.0.1:${PORT}/api'}}",
    ],
)
def test_spec_hash_changes_with_the_process_command_env_or_endpoint(changed: str) -> None:
    """A changed cmd, env, check endpoint or proxy changes the digest."""
    assert spec_hash(model(changed)) != spec_hash(model(BASE))


def test_spec_hash_changes_with_an_engine_field() -> None:
    """Changing an engine setting (the context size) changes the digest."""
    a = model("models: {m: {engine: llamacpp, model: /m.gguf, context: 4096}}")
    b = model("models: {m: {engine: llamacpp, model: /m.gguf, context: 8192}}")
    assert spec_hash(a) != spec_hash(b)


def test_spec_hash_changes_with_an_engine_field_outside_cmd() -> None:
    """A field that is not in cmd (the spec's engine settings) still changes it."""
    a = model("models: {m: {engine: llamacpp, model: /m.gguf}}")
    fields = a.fields
    assert fields is not None
    b = dataclasses.replace(a, fields=dataclasses.replace(fields, fast_swap=not fields.fast_swap))
    assert b.cmd == a.cmd
    assert spec_hash(a) != spec_hash(b)


def test_spec_hash_does_not_contain_secrets_in_clear() -> None:
    """An API key in the engine settings is only part of the digest."""
    a = model("models: {m: {engine: llamacpp, model: /m.gguf}}")
    assert a.fields is not None
    b = dataclasses.replace(a, fields=dataclasses.replace(a.fields, api_key="sk-secret"))
    assert spec_hash(a) != spec_hash(b)
    assert "sk-secret" not in spec_hash(b)


# --- triage ----------------------------------------------------------------------

SPEC = model(BASE)
SAME = record(spec_hash=spec_hash(SPEC))
STALE = record(spec_hash="f" * 64)


def test_triage_reaps_a_live_engine_whose_model_was_removed() -> None:
    """No spec and still the same process: reap its group."""
    assert triage(SAME, None, alive_same=True) == "reap"


def test_triage_forgets_a_dead_engine_whose_model_was_removed() -> None:
    """No spec and not the same process: drop the record, signal nothing."""
    assert triage(SAME, None, alive_same=False) == "forget"


def test_triage_reaps_a_live_engine_whose_spec_changed() -> None:
    """A changed spec and the same live process: reap it."""
    assert triage(STALE, SPEC, alive_same=True) == "reap"


def test_triage_forgets_a_dead_engine_whose_spec_changed() -> None:
    """A changed spec and a gone process: forget it."""
    assert triage(STALE, SPEC, alive_same=False) == "forget"


def test_triage_forgets_a_matching_record_whose_pid_is_not_the_same_process() -> None:
    """Same spec but dead, zombie or reused pid: forget, never signal."""
    assert triage(SAME, SPEC, alive_same=False) == "forget"


def test_triage_adopts_if_healthy_a_live_engine_with_the_same_spec() -> None:
    """Same spec and the same live process: adopt once its health check passes."""
    assert triage(SAME, SPEC, alive_same=True) == "adopt_if_healthy"


def test_triage_adopts_when_only_restart_free_settings_changed() -> None:
    """A config that changed only ttl and aliases still adopts the engine."""
    spec = model("models: {m: {cmd: 'x --port ${PORT}', ttl: 5, aliases: [z]}}")
    assert triage(SAME, spec, alive_same=True) == "adopt_if_healthy"
