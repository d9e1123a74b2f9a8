"""Swapyard hosts for the peers tests (issue 15): each a real ``swapyard serve``
process on its own loopback address (127.0.0.2, 127.0.0.3 stand for other
machines) with fake engines, that a test can kill as a machine dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from helpers import eventually
from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd

TAG = "SWAPYARD_PEERS_TEST_HOST"


def engine(model: str, **flags: object) -> dict[str, Any]:
    """A fake engine declaring 64 MiB: a host (1 GiB) runs several at once."""
    return {"cmd": fake_engine_cmd(model, **flags), "memory": "64MiB"}


class Host:
    """One running host: ``url``, and ``die`` to kill it with all its engines."""

    def __init__(self, name: str, url: str, proc: asyncio.subprocess.Process, tag: str) -> None:
        self.name, self.url, self.proc, self.tag = name, url, proc, tag

    def pids(self) -> list[int]:
        """Every live process of this host (swapyard and its engines)."""
        mark = f"{TAG}={self.tag}".encode()
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        out.append(int(entry.name))
        return out

    async def die(self) -> None:
        """SIGKILL swapyard and every engine it ran, as when the machine goes."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await self.proc.wait()


@asynccontextmanager
async def host(
    tmp: Path,
    name: str,
    addr: str,
    models: dict[str, Any],
    *,
    port: int | None = None,
    preload: list[str] | None = None,
    auth: dict[str, Any] | None = None,
    peers: dict[str, Any] | None = None,
    **top: Any,
) -> AsyncIterator[Host]:
    """``swapyard serve`` on ``addr`` (a free port unless given), its own data dir,
    until the block ends (then stopped, or killed if it was not already); ``auth``:
    its ``auth:`` section (its ``/health`` stays open); ``peers``: its ``peers:``;
    ``top``: other top-level sections (``virtual``)."""
    port = port or PortAllocator(addr).allocate()
    doc = {
        "server": {"host": addr, "port": port},
        "scheduler": {"learn_memory": False},
        "usage": {"enabled": False},
        "devices": {"d0": {"memory": "1GiB"}},
        "preload": preload or [],
        "models": models,
        **({} if auth is None else {"auth": auth}),
        **({} if peers is None else {"peers": peers}),
        **top,
    }
    cfg = tmp / f"{name}-{port}.yaml"
    cfg.write_text(json.dumps(doc))
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, TAG: tag, "SWAPYARD_DATA_DIR": str(tmp / f"data-{name}")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swapyard", "serve", "-c", str(cfg), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    h = Host(name, f"http://{addr}:{port}", proc, tag)
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                async with http.get(h.url + "/health") as r:
                    doc = await r.json()
                return r.status == 200 and all(
                    doc["models"][m]["state"] == "ready" for m in preload or ()
                )

            await eventually(ready, ignoring=(aiohttp.ClientError,), what=f"host {name} up")
        yield h
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                await h.die()
