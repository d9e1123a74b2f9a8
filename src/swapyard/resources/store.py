"""Measured memory per model, persisted across restarts (a small JSON file).

A figure is keyed by the model id and a digest of its command, so a changed
config does not reuse what an older engine used."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from swapyard.config import ModelSpec


def spec_key(spec: ModelSpec) -> str:
    """Its command, and whether swapyard tells it its share (issue 12: a figure
    measured when vLLM took its default 0.9 of the GPU must not come back)."""
    told = spec.share is not None and spec.share.declared is None
    parts = (*spec.cmd, "(share told by swapyard)") if told else spec.cmd
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


class MeasuredStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] = {}
        with contextlib.suppress(OSError, ValueError):
            self._data = json.loads(path.read_text())

    def get(self, spec: ModelSpec, asleep: bool = False) -> int | None:
        """The figure measured while serving (``asleep``: while asleep)."""
        entry = self._data.get(spec.id)
        name = "asleep" if asleep else "bytes"
        if entry and entry.get("key") == spec_key(spec) and entry.get(name) is not None:
            return int(entry[name])
        return None

    def on_gpu(self, spec: ModelSpec) -> bool:
        """Whether the figure measured while serving is NVML's (else resident memory)."""
        entry = self._data.get(spec.id) or {}
        return bool(entry.get("gpu", False))

    def put(self, spec: ModelSpec, nbytes: int, asleep: bool = False, gpu: bool = False) -> None:
        entry = self._data.get(spec.id)
        if not entry or entry.get("key") != spec_key(spec):
            entry = self._data[spec.id] = {"key": spec_key(spec)}
        entry["asleep" if asleep else "bytes"] = nbytes
        if not asleep:
            entry["gpu"] = gpu
        entry["at"] = time.time()
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
            tmp.replace(self.path)
