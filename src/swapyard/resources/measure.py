"""What a running engine really uses: GPU memory of its process group per device
(NVML, or the simulated GPU), or the resident memory of its process group (CPU engines)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from swapyard.resources.gpu import reader

_PAGE = os.sysconf("SC_PAGE_SIZE")


def group_pids(pgid: int, proc: Path = Path("/proc")) -> dict[int, Path]:
    """Live (non-zombie) processes of process group ``pgid``: pid → /proc entry."""
    out = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            out[int(entry.name)] = entry
    return out


def group_rss(pgid: int) -> int:
    """Resident bytes of every live process in process group ``pgid``."""
    total = 0
    for entry in group_pids(pgid).values():
        try:
            total += int((entry / "statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def group_gpu_memory(pgid: int, others: Iterable[int] = ()) -> dict[str, int] | None:
    """GPU memory the group's processes (and ``others``) hold, per CUDA index (NVML
    or the simulated GPU), or None without a GPU or when they hold none."""
    r = reader()
    if r is None:
        return None
    pids = set(group_pids(pgid)) | set(others)
    out = {}
    for index, g in r.read().items():
        used = sum(p.used for p in g.processes if p.pid in pids)
        if used:
            out[index] = used
    return out or None
