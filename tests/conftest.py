"""Shared fixtures, and the check that no process a test started outlives the suite.

Every process started during the run inherits ``SWAPYARD_TEST_RUN``; after each
test module and at the end of the session we look for live processes carrying
it (grandchildren included, whatever their process group) and fail if any
remain.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from swapyard.models.fetch import models_dir

MARKER = "SWAPYARD_TEST_RUN"
os.environ.setdefault(MARKER, uuid.uuid4().hex)
# Tests keep their state (measured memory) to themselves, but share the models
# fetched by `swapyard fetch-models` into the user's data dir.
os.environ.setdefault("SWAPYARD_MODELS_DIR", str(models_dir()))
os.environ["SWAPYARD_DATA_DIR"] = tempfile.mkdtemp(prefix="swapyard-test-data-")


def leaked_processes() -> list[tuple[int, str]]:
    """Live (non-zombie) processes of this test run, other than pytest itself."""
    tag = f"{MARKER}={os.environ[MARKER]}".encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if tag not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        found.append((int(entry.name), cmd.strip()))
    return found


def wait_for_no_leaks(timeout: float = 5.0) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while True:
        leaks = leaked_processes()
        if not leaks or time.monotonic() > deadline:
            return leaks
        time.sleep(0.05)


def kill(procs: list[tuple[int, str]]) -> None:
    for pid, _ in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(autouse=True, scope="module")
def no_leaked_processes_after_module() -> Iterator[None]:
    yield
    leaks = wait_for_no_leaks()
    kill(leaks)
    assert not leaks, f"processes outlived their tests: {leaks}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = wait_for_no_leaks()
    if leaks:
        kill(leaks)
        print(f"\nFAILED: processes outlived the test suite: {leaks}")
        session.exitstatus = 1
