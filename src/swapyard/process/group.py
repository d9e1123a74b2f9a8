"""An engine's process tree: its process group, and the descendants that left it.

House style 5: supervise the tree, not the PID. An engine runs in a session and
process group of its own, and a stop signals the group. A helper that calls
``setsid()`` (a wrapper, ``ollama serve``'s runners, the Docker CLI, Python
multiprocessing in a new session) leaves the group and would outlive both the
engine and swapyard (issue 10). So:

- ``become_subreaper()`` makes swapyard the parent that orphaned descendants are
  re-parented to, instead of init: they stay swapyard's descendants, to be found,
  stopped and reaped (``reap_orphans``, ``kill_orphans``; only where
  ``is_subreaper()``).
- ``Tree`` remembers every descendant of an engine seen while it runs, as
  (pid, start time) so a recycled pid is never signalled, and ``kill_all`` signals
  those still alive as well as the group.

``read_table()`` is the only function that reads all of ``/proc``; the rest works
on the table it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
PR_GET_CHILD_SUBREAPER = 37


async def wait_for_exit(proc: subprocess.Popen[bytes]) -> int:
    """The exit status, as soon as the process exits (it is reaped here).

    A pidfd becomes readable on exit, whatever still holds the process's pipes;
    where pidfds are missing (Linux < 5.3), a thread blocks in waitpid instead.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # pragma: no cover - old kernels only
        return await asyncio.to_thread(proc.wait)
    await _readable(fd)
    return proc.wait()


async def wait_for_pid_exit(pid: int, poll: float = 0.5) -> None:
    """Return once ``pid`` — not necessarily our child (an adopted engine) — has
    exited. A pidfd says so at once; without one, ``/proc`` is polled."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # pragma: no cover - old kernels only
        await asyncio.to_thread(_wait_gone, pid, poll)
        return
    await _readable(fd)


async def _readable(fd: int) -> None:
    """Wait until the pidfd ``fd`` is readable (its process exited); closes it."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_exit)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def _wait_gone(pid: int, poll: float) -> None:  # pragma: no cover - old kernels only
    while not _gone(pid):
        time.sleep(poll)


def _gone(pid: int) -> bool:  # pragma: no cover - old kernels only
    """No such process, or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux ≥ 3.4): an orphan
    among them is re-parented to it rather than to init. False where that is not
    available; never raises. Not inherited by children; kept across exec."""
    prctl = _prctl(ctypes.c_ulong)
    return prctl is not None and prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def is_subreaper() -> bool:
    """Whether this process is a subreaper: only then can it have adopted orphans,
    and only then should it sweep for them (an embedding process, a test run, may
    have ``Popen`` children of its own that are none of swapyard's business)."""
    prctl = _prctl(ctypes.POINTER(ctypes.c_int))
    flag = ctypes.c_int(0)
    return (
        prctl is not None
        and prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) == 0
        and bool(flag.value)
    )


def _prctl(arg2: Any) -> Any:
    """libc's ``prctl`` with the given type for its second argument, or None."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - not Linux
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True)["prctl"]  # a fresh function object
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    prctl.argtypes = [ctypes.c_int, arg2, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# -- /proc -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` we use. ``start`` is the start time in
    clock ticks since boot: with the pid, it names one process for good."""

    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    start: int

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def parse_stat(pid: int, text: str) -> ProcStat:
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    f = text.rsplit(")", 1)[1].split()
    return ProcStat(pid, f[0], int(f[1]), int(f[2]), int(f[3]), int(f[19]))


def stat_of(pid: int, proc: Path = Path("/proc")) -> ProcStat | None:
    """``pid``'s stat now (zombies included), or None when there is no such process."""
    try:
        return parse_stat(pid, (proc / str(pid) / "stat").read_text())
    except (OSError, IndexError, ValueError):
        return None


def read_table(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every process visible now (zombies included): one pass over ``/proc``."""
    table = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            st = stat_of(int(entry.name), proc)
            if st is not None:
                table[st.pid] = st
    return table


def descendants_in(table: Mapping[int, ProcStat], roots: Iterable[int]) -> dict[int, int]:
    """Live descendants of ``roots`` in ``table`` (the roots excluded): pid → start.
    Zombies are skipped, but their live children are not."""
    children: dict[int, list[int]] = {}
    for st in table.values():
        children.setdefault(st.ppid, []).append(st.pid)
    roots = set(roots)
    out: dict[int, int] = {}
    todo = [c for r in roots for c in children.get(r, ())]
    seen = set(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo += children.get(pid, ())
        if not table[pid].zombie:
            out[pid] = table[pid].start
    return out


def descendants(pid: int) -> list[tuple[int, int]]:
    """Every live descendant of ``pid`` as (pid, start time), whatever its session
    or process group. A snapshot: an orphan re-parented away (to init, or to a
    subreaper) is no longer a descendant."""
    return sorted(descendants_in(read_table(), [pid]).items())


# -- one engine's tree -------------------------------------------------------------


@dataclass
class Tree:
    """What an engine's actor knows of its child's tree: the leader (also the
    process group id) and every descendant seen while it ran, pid → start time.

    ``track()`` while the engine runs: a helper that leaves the group and whose
    parent then exits is re-parented away from the leader, and only a process seen
    before that can still be found. Not thread-safe; owned by one actor."""

    leader: int
    leader_start: int
    seen: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, leader: int) -> Tree:
        """The tree of a child just spawned (not yet reaped, so its stat exists)."""
        st = stat_of(leader)
        return cls(leader, st.start if st is not None else -1)

    def track(self, table: Mapping[int, ProcStat] | None = None) -> list[int]:
        """Remember every live descendant of the leader and of the processes already
        remembered; forget those gone. Returns the pids seen for the first time."""
        table = read_table() if table is None else table
        self.seen = {p: s for p, s in self.seen.items() if _same(table, p, s)}
        roots = [p for p in (self.leader,) if _same(table, p, self.leader_start)]
        found = descendants_in(table, [*roots, *self.seen])
        new = sorted(p for p in found if p not in self.seen)
        self.seen.update(found)
        return new

    def kill_all(self, sig: signal.Signals) -> list[int]:
        """Send ``sig`` to the leader's process group and to every remembered
        descendant still alive and still the same process (same start time), after
        a last ``track()``. Returns the pids signalled outside the group.

        The group is skipped once the leader's pid belongs to another process (it
        could lead a stranger's group)."""
        table = read_table()
        self.track(table)
        leader = table.get(self.leader)
        group = leader is None or leader.start == self.leader_start
        if group:
            killpg(self.leader, sig)
        outside = []
        for pid, start in sorted(self.seen.items()):
            st = table.get(pid)
            if group and st is not None and st.pgid == self.leader:
                continue  # the group's signal reached it
            if signal_if_same(pid, start, sig):
                outside.append(pid)
        return outside


def _same(table: Mapping[int, ProcStat], pid: int, start: int) -> bool:
    st = table.get(pid)
    return st is not None and st.start == start and not st.zombie


def signal_if_same(pid: int, start: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``pid`` if it is still the process that started at ``start``.

    The check is made on a pidfd opened first, so the pid cannot be recycled
    between check and signal (where pidfds are missing, a plain kill follows the
    check)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # pragma: no cover - Linux < 5.3
        fd = -1
    try:
        st = stat_of(pid)
        if st is None or st.start != start or st.zombie:
            return False
        if fd >= 0:
            signal.pidfd_send_signal(fd, sig)
        else:  # pragma: no cover - Linux < 5.3
            os.kill(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):  # pragma: no cover - exited since
        return False
    finally:
        if fd >= 0:
            os.close(fd)


# -- orphans adopted by this process (when it is a subreaper) ------------------------


def orphans(known: Collection[int], table: Mapping[int, ProcStat] | None = None) -> list[ProcStat]:
    """Children of this process that it did not spawn: re-parented to it as a
    subreaper. ``known`` holds the engine children it spawned in sessions of their
    own (their ``Popen`` pids); a child in this process's own session (a
    ``subprocess.run``, an asyncio subprocess) is never an orphan of an engine,
    since nothing can join a session from outside, so it need not be listed."""
    table = read_table() if table is None else table
    me = os.getpid()
    mine = table.get(me)
    my_sid = mine.sid if mine is not None else os.getsid(0)
    return [
        st for st in table.values() if st.ppid == me and st.pid not in known and st.sid != my_sid
    ]


def reap_orphans(known: Collection[int]) -> list[int]:
    """Reap the zombies among ``orphans(known)``; returns their pids.

    Each is waited for by pid, never with ``waitpid(-1)``, which would take the
    exit status of a child that a ``Popen`` (or asyncio) still has to read."""
    reaped = []
    for st in orphans(known):
        if not st.zombie:
            continue
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(st.pid, os.WNOHANG)
            if pid == st.pid:
                reaped.append(pid)
    return reaped


def kill_orphans(known: Collection[int], sig: signal.Signals) -> list[int]:
    """Send ``sig`` to every live orphan (see ``orphans``) and its descendants: at
    shutdown, once the engines are stopped, whatever escaped them and was never
    tracked. Returns the pids signalled."""
    table = read_table()
    live = {st.pid: st.start for st in orphans(known, table) if not st.zombie}
    live.update(descendants_in(table, list(live)))
    return [pid for pid, start in sorted(live.items()) if signal_if_same(pid, start, sig)]
