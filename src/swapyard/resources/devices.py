"""The memory swapyard may use, per device: declared in the config, else the GPUs
NVML reports (``nvidia-ml-py``, optional) or the simulated GPU, else the machine's
RAM as one device. The budget is the device less a reserve; what other processes
hold is subtracted before each placement (``swapyard.router``), not here."""

from __future__ import annotations

import logging

from swapyard.config import Config
from swapyard.resources.gpu import reader

log = logging.getLogger("swapyard.devices")
GPU_RESERVE = 512 * 2**20  # CUDA context and driver per GPU, when not declared
RAM_SHARE = 0.9


def gpu_totals() -> dict[str, int] | None:
    """CUDA index → total memory of each GPU (NVML or the simulated GPU), or None."""
    r = reader()
    if r is None:
        return None
    return {i: g.total for i, g in r.read().items()} or None


def gpu_usage() -> dict[str, tuple[int, int]]:
    """CUDA index → (used, total) bytes now; {} without a GPU."""
    r = reader()
    return {i: (g.used, g.total) for i, g in r.read().items()} if r is not None else {}


def ram_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError):  # pragma: no cover - not Linux
        kib = 8 * 2**20
    return kib * 1024


def memory_budget(config: Config) -> tuple[dict[str, int], bool]:
    """Budget per device, and whether the device ids are CUDA indexes."""
    if config.devices:
        budget = {d.id: d.budget for d in config.devices}
        return budget, all(d.isdigit() for d in budget)
    gpus = gpu_totals()
    if gpus:
        return {i: total - GPU_RESERVE for i, total in gpus.items()}, True
    return {"ram": int(ram_bytes() * RAM_SHARE)}, False
