"""What a starting swapyard does with the engines a previous one left running.

Each record in the engine registry (``process/registry.py``) is triaged against
the config: the same model with the same effective spec, still the same process
(pid and start time) and answering its health check → **adopt** (the actor takes
it over: same pid, same port, ready at once); a changed or removed model, or an
engine that does not answer → **reap** (SIGTERM to its process group, SIGKILL
after the model's ``stop_timeout``); a record whose process is gone or whose pid
now belongs to another process → **forget** (never signal a stranger).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from swapyard.config import Config, ModelSpec
from swapyard.process.group import wait_for_pid_exit
from swapyard.process.registry import EngineRecord, EngineRegistry, is_alive_same, triage

log = logging.getLogger("swapyard.adopt")
HEALTH_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Verdict:
    record: EngineRecord
    action: str  # "adopt", "reap" or "forget"
    reason: str


async def survey(
    registry: EngineRegistry,
    config: Config,
    http: aiohttp.ClientSession,
    devices: Mapping[str, int],
) -> list[Verdict]:
    """Decide, for every record, what to do (health checks run side by side)."""
    records = registry.records()
    return list(await asyncio.gather(*(_judge(r, config, http, devices) for r in records)))


async def _judge(
    record: EngineRecord, config: Config, http: aiohttp.ClientSession, devices: Mapping[str, int]
) -> Verdict:
    spec = config.models.get(record.model)
    alive = is_alive_same(record)
    decision = triage(record, spec, alive_same=alive)
    if decision == "forget":
        return Verdict(record, "forget", "its process is gone" if not alive else "unknown")
    if decision == "reap" or spec is None:
        why = "removed from the config" if spec is None else "config changed"
        return Verdict(record, "reap", why)
    if spec.remote or any(d not in devices for d in record.devices):
        return Verdict(record, "reap", "its devices are not configured")
    if not await healthy(http, record, spec):
        return Verdict(record, "reap", "unhealthy")
    return Verdict(record, "adopt", "healthy")


async def healthy(http: aiohttp.ClientSession, record: EngineRecord, spec: ModelSpec) -> bool:
    url = record.upstream + spec.check_endpoint
    try:
        async with http.get(
            url, headers=spec.check_headers, timeout=aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)
        ) as resp:
            await resp.read()
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


async def reap(record: EngineRecord, grace: float) -> None:
    """Stop a previous swapyard's engine, group and all: SIGTERM, then SIGKILL after
    ``grace`` seconds. The record is re-checked before each signal, so a pid that
    changed hands meanwhile is never signalled."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        if not is_alive_same(record):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pgid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wait_for_pid_exit(record.pid), wait)
    if is_alive_same(record):  # pragma: no cover - SIGKILL cannot be ignored
        log.warning("%s: pid %d survived SIGKILL", record.model, record.pid)
