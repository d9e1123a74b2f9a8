"""Where the memory budget comes from: declared devices, NVML GPUs, or RAM.

NVML cannot run on these CPU machines; a stand-in ``pynvml`` module with NVML's
documented functions shows how its answers become the budget."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from helpers import config
from swapyard.resources.devices import GPU_RESERVE, gpu_totals, memory_budget, ram_bytes
from swapyard.resources.gpu import reset_reader

G = 2**30


def fake_pynvml(totals: list[int], fail_init: bool = False) -> types.ModuleType:
    mod = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def init() -> None:
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.nvmlInit = init  # type: ignore[attr-defined]
    mod.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: len(totals)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=totals[h], used=0)  # type: ignore[attr-defined]
    return mod


@pytest.fixture(autouse=True)
def fresh_reader(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each use of a stand-in NVML opens a new reader (it is kept once opened)."""
    monkeypatch.delenv("SWAPYARD_SIMULATED_GPU", raising=False)
    reset_reader()
    yield
    reset_reader()


def _swap(monkeypatch: pytest.MonkeyPatch, mod: Any) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    reset_reader()


def test_declared_devices_win(monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, fake_pynvml([80 * G]))
    cfg = config({}, devices={"0": {"memory": "24GiB", "reserve": "1GiB"}})
    assert memory_budget(cfg) == ({"0": 23 * G}, True)
    named = config({}, devices={"big": {"memory": "8GiB"}})
    assert memory_budget(named) == ({"big": 8 * G}, False)


def test_nvml_gpus_become_cuda_indexed_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, fake_pynvml([24 * G, 16 * G]))
    assert gpu_totals() == {"0": 24 * G, "1": 16 * G}
    assert memory_budget(config({})) == (
        {"0": 24 * G - GPU_RESERVE, "1": 16 * G - GPU_RESERVE}, True,
    )  # fmt: skip


def test_without_usable_nvml_the_budget_is_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    _swap(monkeypatch, fake_pynvml([24 * G], fail_init=True))
    budget, cuda = memory_budget(config({}))
    assert list(budget) == ["ram"] and not cuda
    assert 0 < budget["ram"] < ram_bytes()
    _swap(monkeypatch, fake_pynvml([]))
    assert gpu_totals() is None
    none: Any = None
    _swap(monkeypatch, none)  # import fails: not installed
    assert gpu_totals() is None


def test_gpu_memory_of_a_process_group_comes_from_nvml_per_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from swapyard.resources.measure import group_gpu_memory

    me = os.getpid()
    mod = fake_pynvml([24 * G, 24 * G])
    procs = {0: [types.SimpleNamespace(pid=1, usedGpuMemory=9 * G)],
             1: [types.SimpleNamespace(pid=me, usedGpuMemory=3 * G),
                 types.SimpleNamespace(pid=me, usedGpuMemory=None)]}  # fmt: skip
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: procs[h]  # type: ignore[attr-defined]
    _swap(monkeypatch, mod)
    assert group_gpu_memory(os.getpgid(0)) == {"1": 3 * G}  # only our group, per device
    _swap(monkeypatch, fake_pynvml([24 * G], fail_init=True))
    assert group_gpu_memory(os.getpgid(0)) is None
    none: Any = None
    _swap(monkeypatch, none)
    assert group_gpu_memory(os.getpgid(0)) is None
