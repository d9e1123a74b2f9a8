"""The memory swapyard may use, per device: declared in the config, else the GPUs
NVML reports (``nvidia-ml-py``, optional), else the machine's RAM as one device."""

from __future__ import annotations

import logging
from typing import Any

from swapyard.config import Config

log = logging.getLogger("swapyard.devices")
GPU_RESERVE = 512 * 2**20  # CUDA context and driver per GPU, when not declared
RAM_SHARE = 0.9


def nvml_gpus() -> dict[str, int] | None:
    """CUDA index → total memory of each GPU, or None without NVML or GPUs."""
    try:
        import pynvml
    except ImportError:
        return None
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        log.info("NVML is installed but not usable (%s): using RAM", exc)
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        gpus = {
            str(i): int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).total)
            for i in range(count)
        }
    finally:
        nvml.nvmlShutdown()
    return gpus or None


def nvml_usage() -> dict[str, tuple[int, int]]:
    """CUDA index → (used, total) bytes as NVML reports them now; {} without NVML."""
    try:
        import pynvml
    except ImportError:
        return {}
    nvml: Any = pynvml
    try:
        nvml.nvmlInit()
    except nvml.NVMLError:
        return {}
    try:
        out = {}
        for i in range(nvml.nvmlDeviceGetCount()):
            info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i))
            out[str(i)] = (int(info.used), int(info.total))
        return out
    finally:
        nvml.nvmlShutdown()


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
    gpus = nvml_gpus()
    if gpus:
        return {i: total - GPU_RESERVE for i, total in gpus.items()}, True
    return {"ram": int(ram_bytes() * RAM_SHARE)}, False
