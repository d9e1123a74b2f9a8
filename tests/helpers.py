"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from swapyard.config import Config, ModelSpec, load_config
from swapyard.resources.measure import group_pids


def config(
    models: dict[str, dict[str, Any]],
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


def grandchild_pid(lines: list[str]) -> int:
    for line in lines:
        m = re.search(r"grandchild pid (\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no grandchild pid in log: {lines}")
