"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swapyard.config import Config, ModelSpec, load_config
from swapyard.resources.measure import group_pids

T = TypeVar("T")


def config(
    models: dict[str, Any],
    *,
    devices: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    preload: list[str] | None = None,
    **server: Any,
) -> Config:
    """A config from plain dicts (JSON is YAML); keyword arguments go to ``server:``.

    Memory learning is off unless ``scheduler`` turns it on: models without a
    declared need then run one at a time, the swap semantics these tests pin down,
    whatever an earlier test measured."""
    doc: dict[str, Any] = {"server": server, "models": models}
    scheduler = {"learn_memory": False, **(scheduler or {})}
    for key, value in (("devices", devices), ("scheduler", scheduler), ("preload", preload)):
        if value is not None:
            doc[key] = value
    return load_config(json.dumps(doc))


def spec(cmd: str | list[str], **fields: Any) -> ModelSpec:
    return config({"m": {"cmd": cmd, **fields}}).models["m"]


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    return sorted(group_pids(pgid))


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def load_counts(http: aiohttp.ClientSession, url: str, model: str) -> dict[str, float]:
    """How often ``model`` came up, by mode ("cold" start or "wake" from a fast swap),
    as swapyard's /metrics counts them (the swapyard_load_seconds histogram)."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    return {
        s.labels["mode"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "swapyard_load_seconds"
        for s in f.samples
        if s.name.endswith("_count") and s.labels["model"] == model
    }


def grandchild_pid(lines: list[str]) -> int:
    for line in lines:
        m = re.search(r"grandchild pid (\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no grandchild pid in log: {lines}")


async def eventually(
    predicate: Callable[[], object],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    what: str = "",
    ignoring: tuple[type[Exception], ...] = (),
) -> Any:
    """Call ``predicate`` (plain or async) every ``interval`` s until it returns
    something truthy, and return that: the one way tests wait for a real process or
    server to get somewhere.

    Fails with an ``AssertionError`` naming ``what`` (else the predicate's source)
    and the last value seen once ``timeout`` s have passed. Exceptions of the
    ``ignoring`` types count as "not yet" (a server not listening yet, a page still
    rendering); any other propagates."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = predicate()
            if inspect.isawaitable(got):
                got = await got
        except ignoring as exc:
            got = exc
        else:
            if got:
                return got
        if time.monotonic() >= deadline:
            raise AssertionError(_never(what or predicate, timeout, got))
        await asyncio.sleep(interval)


def eventually_sync(
    predicate: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """``eventually`` for a synchronous test (one that drives a subprocess with blocking calls)."""
    deadline = time.monotonic() + timeout
    while not (got := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(_never(what or predicate, timeout, got))
        time.sleep(interval)
    return got


def _never(what: str | Callable[[], object], timeout: float, last: object) -> str:
    return f"not within {timeout:g} s: {_describe(what)} (last seen: {last!r})"


def _describe(what: str | Callable[[], object]) -> str:
    if isinstance(what, str):
        return what
    if what.__name__ == "<lambda>":
        with contextlib.suppress(OSError, TypeError):
            return inspect.getsource(what).strip()
    return what.__qualname__


LLAMA_SERVER_VERSION = "0.3.36"


def llama_server() -> str:
    """The compiled llama-server the end-to-end tests run (``scripts/test`` builds it)."""
    path = os.environ.get("SWAPYARD_LLAMA_SERVER") or str(
        Path.home() / ".cache" / "swapyard" / f"llama-server-{LLAMA_SERVER_VERSION}"
        / "llama-server"
    )  # fmt: skip
    if not os.access(path, os.X_OK):
        pytest.fail(f"no llama-server at {path}: run scripts/build-llama-server (or scripts/test)")
    return path
