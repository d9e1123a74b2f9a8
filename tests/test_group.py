"""Issue 10: an engine's descendants that leave its process group (``setsid``) are still
found and stopped, and orphans adopted by a subreaper are reaped without taking a
``Popen``'s exit status. Real processes throughout; a test that needs this process to
be a subreaper makes a child Python one instead, since the leak check in
``conftest.py`` relies on pytest's orphans going elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from helpers import pid_alive
from swapyard.ports import PortAllocator
from swapyard.process.group import (
    Tree,
    descendants,
    is_subreaper,
    killpg,
    orphans,
    reap_orphans,
    signal_if_same,
    stat_of,
)


def fake_engine_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "swapyard.testing.fake_engine",
        "--port", str(port), "--grandchild", "--setsid-grandchild",
    ]  # fmt: skip


def read_grandchildren(stdout: IO[bytes]) -> tuple[int, int]:
    """The pids the fake engine prints: (in-group grandchild, setsid grandchild)."""
    seen: list[str] = []
    found: dict[str, int] = {}
    while len(found) < 2 and (line := stdout.readline().decode()):
        seen.append(line)
        m = re.search(r"\] (setsid )?grandchild pid (\d+)", line)
        if m:
            found[m.group(1) or ""] = int(m.group(2))
    assert len(found) == 2, f"no grandchild pids in the engine's output: {seen}"
    return found[""], found["setsid "]


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` is no longer a live process (a zombie counts as gone)."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def wait_ignoring_sigterm(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` has set SIGTERM to ignored (the fake's grandchild does so
    once its interpreter is up, a moment after its pid is printed)."""
    deadline = time.monotonic() + timeout
    while True:
        status = Path(f"/proc/{pid}/status").read_text()
        ignored = re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M)
        assert ignored is not None
        if int(ignored[1], 16) & (1 << (signal.SIGTERM - 1)):
            return
        assert time.monotonic() < deadline, f"{pid} never ignored SIGTERM"
        time.sleep(0.01)


def wait_zombie(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (st := stat_of(pid)) is not None and not st.zombie:
        assert time.monotonic() < deadline, f"{pid} did not exit"
        time.sleep(0.02)


@dataclass
class Engine:
    proc: subprocess.Popen[bytes]
    in_group: int  # ignores SIGTERM
    grandchild: int  # called setsid()


@pytest.fixture
def engine() -> Iterator[Engine]:
    """The fake engine in a session of its own, with a grandchild in its group that
    ignores SIGTERM and one that left the group."""
    proc = subprocess.Popen(
        fake_engine_argv(PortAllocator().allocate()),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    grandchild = None
    try:
        in_group, grandchild = read_grandchildren(proc.stdout)
        wait_ignoring_sigterm(in_group)
        yield Engine(proc, in_group, grandchild)
    finally:
        killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        if grandchild is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(grandchild, signal.SIGKILL)


def sleeper() -> subprocess.Popen[bytes]:
    """A live process unrelated to any engine, in a session of its own."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )


def gone_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def finish(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait()


def test_descendants_include_a_grandchild_that_left_the_process_group(engine: Engine) -> None:
    """`descendants` finds a grandchild after its setsid(), with its start time."""
    found = dict(descendants(engine.proc.pid))
    st = stat_of(engine.grandchild)
    assert st is not None
    assert found.get(engine.grandchild) == st.start
    assert st.pgid != engine.proc.pid and st.sid != engine.proc.pid
    assert engine.in_group in found
    assert engine.grandchild not in dict(descendants(engine.grandchild))


def test_group_kill_misses_the_setsid_grandchild_and_tree_kill_all_stops_it(
    engine: Engine,
) -> None:
    """Issue 10: SIGKILL to the group leaves the escaped helper alive; the tree
    remembered while the engine ran still reaches it after the engine is gone."""
    tree = Tree.of(engine.proc.pid)
    assert engine.grandchild in tree.track()
    killpg(engine.proc.pid, signal.SIGKILL)
    engine.proc.wait()
    assert pid_alive(engine.grandchild)  # the problem: it outlived its engine
    assert tree.kill_all(signal.SIGKILL) == [engine.grandchild]
    assert wait_gone(engine.grandchild)


def test_kill_all_escalation_stops_the_engine_and_all_its_grandchildren(engine: Engine) -> None:
    """The actor's stop: `kill_all(SIGTERM)` reaches the group (the engine) and the
    escaped helper; once the leader exits, `kill_all(SIGKILL)` reaches what is left in
    the group (a grandchild that ignores SIGTERM). Group members are signalled once,
    through the group."""
    tree = Tree.of(engine.proc.pid)
    assert tree.track() == sorted([engine.in_group, engine.grandchild])
    assert tree.kill_all(signal.SIGTERM) == [engine.grandchild]
    engine.proc.wait(timeout=10)
    assert wait_gone(engine.grandchild)
    assert pid_alive(engine.in_group)
    assert tree.kill_all(signal.SIGKILL) == []
    assert wait_gone(engine.in_group)
    assert tree.track() == []
    assert tree.seen == {}  # the dead are forgotten


def test_kill_all_skips_a_remembered_pid_whose_start_time_differs() -> None:
    """A remembered pid now held by another process (another start time) is not signalled."""
    leader, stranger = sleeper(), sleeper()
    try:
        st = stat_of(stranger.pid)
        assert st is not None
        assert not signal_if_same(stranger.pid, st.start + 1, signal.SIGKILL)
        assert not signal_if_same(gone_pid(), st.start, signal.SIGKILL)
        tree = Tree.of(leader.pid)
        tree.seen[stranger.pid] = st.start + 1
        assert tree.kill_all(signal.SIGKILL) == []
        assert leader.wait(timeout=10) == -signal.SIGKILL
        assert pid_alive(stranger.pid)
        assert stranger.pid not in tree.seen
    finally:
        finish(leader, stranger)


def test_kill_all_skips_the_group_once_the_leader_pid_is_another_process() -> None:
    """A leader pid recycled by a stranger (who may lead a group of that id) is left alone."""
    stranger = sleeper()
    try:
        st = stat_of(stranger.pid)
        assert st is not None and st.pgid == stranger.pid
        tree = Tree(stranger.pid, st.start + 1)
        assert tree.track() == []
        assert tree.kill_all(signal.SIGKILL) == []
        assert pid_alive(stranger.pid)
    finally:
        finish(stranger)


def test_reap_orphans_reaps_an_unknown_zombie_child_and_leaves_known_ones() -> None:
    """A zombie child in a session of its own and not in `known` is reaped; a known
    `Popen` keeps its exit status, and a child in our own session is never an orphan."""
    argv = [sys.executable, "-c", "pass"]
    orphan = os.posix_spawn(sys.executable, argv, os.environ, setsid=True)
    ours = os.posix_spawn(sys.executable, argv, os.environ)
    live = os.posix_spawn(
        sys.executable, [sys.executable, "-c", "import time; time.sleep(60)"], os.environ,
        setsid=True,
    )  # fmt: skip
    popen = subprocess.Popen([sys.executable, "-c", "raise SystemExit(7)"], start_new_session=True)
    try:
        for pid in (orphan, ours, popen.pid):
            wait_zombie(pid)
        assert sorted(st.pid for st in orphans([popen.pid])) == sorted([orphan, live])
        assert reap_orphans([popen.pid]) == [orphan]
        assert stat_of(orphan) is None
        assert pid_alive(live)
        assert reap_orphans([popen.pid]) == []
        assert popen.wait() == 7
    finally:
        os.kill(live, signal.SIGKILL)
        for pid in (orphan, ours, live):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        popen.wait()


def run_helper(script: str, *args: str) -> dict[str, object]:
    """Run ``script`` in a child Python; it prints one JSON object as its last line."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


SUBREAPER_SCRIPT = """
import contextlib, json, os, signal, subprocess, sys
from swapyard.process.group import become_subreaper, descendants, is_subreaper, stat_of

before = is_subreaper()
ok = become_subreaper()
middle = subprocess.Popen([sys.executable, "-c", '''
import os, sys
argv = [sys.executable, "-c", "import time; time.sleep(60)"]
print(os.posix_spawn(sys.executable, argv, os.environ), flush=True)
'''], stdout=subprocess.PIPE)
grandchild = int(middle.stdout.readline())
try:
    middle.wait()
    middle.stdout.close()
    st = stat_of(grandchild)
    found = grandchild in dict(descendants(os.getpid()))
    print(json.dumps({"before": before, "ok": ok, "after": is_subreaper(), "me": os.getpid(),
                      "ppid": st.ppid, "found": found}))
finally:
    os.kill(grandchild, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(grandchild, 0)
"""


def test_become_subreaper_adopts_an_orphaned_grandchild() -> None:
    """Under a subreaper, a grandchild whose parent exits is re-parented to it, not to
    init, and so is still among its descendants. The test run itself is none."""
    out = run_helper(SUBREAPER_SCRIPT)
    me = out["me"]
    assert out == {"before": False, "ok": True, "after": True, "me": me, "ppid": me, "found": True}
    assert not is_subreaper()


ESCAPE_SCRIPT = """
import contextlib, json, os, signal, subprocess, sys, time
from swapyard.process.group import (
    become_subreaper, kill_orphans, killpg, orphans, reap_orphans, stat_of,
)

assert become_subreaper()
engine = subprocess.Popen(
    [sys.executable, "-m", "swapyard.testing.fake_engine", "--port", sys.argv[1],
     "--setsid-grandchild"],
    stdout=subprocess.PIPE, start_new_session=True,
)
grandchild = None
try:
    while grandchild is None:
        line = engine.stdout.readline().decode()
        assert line, "engine ended early"
        if "setsid grandchild pid" in line:
            grandchild = int(line.split()[-1])
    killpg(engine.pid, signal.SIGKILL)
    engine.wait()
    known = [engine.pid]
    adopted = [st.pid for st in orphans(known)]
    killed = kill_orphans(known, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (st := stat_of(grandchild)) is not None and not st.zombie:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    reaped = reap_orphans(known)
    gone = stat_of(grandchild) is None
    print(json.dumps({"grandchild": grandchild, "adopted": adopted, "killed": killed,
                      "reaped": reaped, "gone": gone}))
finally:
    engine.stdout.close()
    if grandchild is not None and stat_of(grandchild) is not None:
        os.kill(grandchild, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(grandchild, 0)
"""


def test_subreaper_kills_and_reaps_a_helper_that_escaped_untracked() -> None:
    """Issue 10: under a subreaper, a setsid helper whose engine died is adopted;
    `kill_orphans` stops it and `reap_orphans` leaves no zombie behind."""
    out = run_helper(ESCAPE_SCRIPT, str(PortAllocator().allocate()))
    g = out["grandchild"]
    assert out == {"grandchild": g, "adopted": [g], "killed": [g], "reaped": [g], "gone": True}
