"""The GPU memory a protocol fake takes: what its model needs, and where it takes it.

A fake engine (``engine_fakes``) takes memory the way the real engine does only
when a memory mode is on, chosen from its environment by ``from_env``:

- ``SWAPYARD_SIMULATED_GPU=FILE``: the simulated GPU (``resources.gpu.Ledger``);
  what the fake takes is booked under its own pid and freed when it dies.
- ``FAKE_GPU=cuda``: real CUDA memory through PyTorch (imported on first use), in
  ``torch.empty(n, dtype=torch.uint8)`` tensors on ``cuda:0``.
- neither: no memory behaviour (``from_env`` returns None).

The device is the first entry of ``CUDA_VISIBLE_DEVICES`` (else "0"); the process
sees it as ``cuda:0`` either way, so the engines' messages name ``cuda:0``/``GPU 0``.

What a model needs (``Footprint.of``): a folder with ``config.json`` and
``*.safetensors`` gives the weights (the files' sizes) and the KV cache per
token (layers × KV heads × head dim × 2 × 2 bytes); anything else takes
``FAKE_WEIGHTS_MIB`` (256) and ``FAKE_KV_PER_TOKEN_KIB`` (64) with a context of
4096. ``FAKE_CONTEXT_MIB`` (700) is the runtime's CUDA context, kept while asleep;
``FAKE_ACTIVATION_MIB`` (default max(5 % of the weights, 256 MiB)) the activation peak.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swapyard.resources.gpu import SIMULATED_ENV, GpuReading, Ledger

MiB = 2**20
GiB = 2**30


def gib(nbytes: float) -> str:
    return f"{nbytes / GiB:.2f}"


class GpuError(Exception):
    """A failure the engine reports as its last line and dies of; the message is
    that line, as the real engine prints it."""


class OutOfMemory(GpuError):
    def __init__(self, tried: int, total: int, free: int) -> None:
        super().__init__(
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {gib(tried)} GiB. "
            f"GPU 0 has a total capacity of {gib(total)} GiB of which {gib(free)} GiB is free."
        )


class GpuMemory(Protocol):
    """Device memory held by tag. Each call blocks until the memory is taken or freed."""

    def open(self, context: int) -> None:
        """Create the runtime's context: ``context`` bytes booked on the simulated GPU;
        the real context on CUDA. Raises ``GpuError`` when there is no device."""
        ...

    def total(self) -> int: ...

    def free(self) -> int: ...

    def take(self, tag: str, nbytes: int) -> None:
        """Allocate ``nbytes`` under ``tag`` (from its host copy when ``drop`` kept
        one), or raise ``OutOfMemory`` having taken nothing."""
        ...

    def drop(self, tag: str, *, to_host: bool = False) -> None:
        """Free what ``tag`` holds (nothing when it holds nothing), keeping a copy in
        host RAM when ``to_host``."""
        ...


def take_all(mem: GpuMemory, parts: Mapping[str, int]) -> None:
    """Take every part or none: on ``OutOfMemory`` the parts taken are freed again."""
    taken: list[str] = []
    try:
        for tag, nbytes in parts.items():
            mem.take(tag, nbytes)
            taken.append(tag)
    except OutOfMemory:
        for tag in taken:
            mem.drop(tag)
        raise


class LedgerMemory:
    """The simulated GPU: allocations are ledger entries under this process's pid."""

    def __init__(self, ledger: Ledger, device: str, pid: int) -> None:
        self.ledger, self.device, self.pid = ledger, device, pid
        self.held: dict[str, int] = {}

    def _reading(self) -> GpuReading:
        reading = self.ledger.read().get(self.device)
        if reading is None:
            raise GpuError("RuntimeError: No CUDA GPUs are available")
        return reading

    def open(self, context: int) -> None:
        self.take("context", context)

    def total(self) -> int:
        return self._reading().total

    def free(self) -> int:
        return self._reading().free

    def take(self, tag: str, nbytes: int) -> None:
        if not self.ledger.allocate(self.pid, self.device, nbytes):
            reading = self._reading()
            raise OutOfMemory(nbytes, reading.total, reading.free)
        self.held[tag] = self.held.get(tag, 0) + nbytes

    def drop(self, tag: str, *, to_host: bool = False) -> None:
        nbytes = self.held.pop(tag, 0)
        if nbytes:
            self.ledger.release(self.pid, self.device, nbytes)


class CudaMemory:
    """Real device memory through PyTorch on ``cuda:0``. The CUDA context torch
    creates is the runtime part: ``open`` creates it and books nothing more."""

    def __init__(self) -> None:
        self._torch: Any = None
        self.held: dict[str, Any] = {}  # tag -> tensor on the GPU
        self.host: dict[str, Any] = {}  # tag -> its copy in host RAM while dropped

    @property
    def torch(self) -> Any:
        if self._torch is None:
            self._torch = importlib.import_module("torch")  # only where the mode is chosen
        return self._torch

    def open(self, context: int) -> None:
        if not self.torch.cuda.is_available():
            raise GpuError("RuntimeError: No CUDA GPUs are available")
        self.torch.cuda.mem_get_info()  # creates the context

    def total(self) -> int:
        return int(self.torch.cuda.mem_get_info()[1])

    def free(self) -> int:
        return int(self.torch.cuda.mem_get_info()[0])

    def take(self, tag: str, nbytes: int) -> None:
        torch = self.torch
        try:
            if tag in self.host:
                self.held[tag] = self.host[tag].to("cuda", non_blocking=False)
                del self.host[tag]
            else:
                self.held[tag] = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            free, total = torch.cuda.mem_get_info()
            raise OutOfMemory(nbytes, int(total), int(free)) from None

    def drop(self, tag: str, *, to_host: bool = False) -> None:
        if not to_host:
            self.host.pop(tag, None)  # a level-2 sleep discards an older host copy too
        tensor = self.held.pop(tag, None)
        if tensor is None:
            return
        if to_host:
            # Pinned host memory, as vLLM's sleep mode and SGLang's CPU backup use:
            # the copy back on wake runs at the bus's speed.
            host = self.torch.empty(tensor.numel(), dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor)
            self.host[tag] = host
        del tensor
        self.torch.cuda.empty_cache()  # give it back to the driver, as the engines do


def visible_device(env: Mapping[str, str]) -> str:
    return env.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip() or "0"


def from_env(env: Mapping[str, str] = os.environ) -> GpuMemory | None:
    """The memory the fake takes from, by its environment (see the module docstring)."""
    if path := env.get(SIMULATED_ENV):
        return LedgerMemory(Ledger(path), visible_device(env), os.getpid())
    mode = env.get("FAKE_GPU", "")
    if mode == "cuda":
        return CudaMemory()
    if mode:
        raise SystemExit(f"FAKE_GPU={mode!r}: the only mode is 'cuda'")
    return None


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a model takes on the GPU, in bytes (``kv_per_token`` per token of cache)."""

    weights: int
    kv_per_token: int
    max_context: int  # the model's own context length
    context: int  # the runtime's CUDA context, kept while asleep
    activation: int

    @classmethod
    def of(cls, model: str | None, env: Mapping[str, str] = os.environ) -> Footprint:
        folder = Path(model) if model else None
        shards = list(folder.glob("*.safetensors")) if folder and folder.is_dir() else []
        if folder and shards and (folder / "config.json").is_file():
            cfg = json.loads((folder / "config.json").read_text())
            cfg = cfg.get("text_config", cfg) if "num_hidden_layers" not in cfg else cfg
            heads = int(cfg["num_attention_heads"])
            kv_heads = int(cfg.get("num_key_value_heads") or heads)
            head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
            weights = sum(f.stat().st_size for f in shards)
            kv = int(cfg["num_hidden_layers"]) * kv_heads * head_dim * 2 * 2
            max_context = int(cfg.get("max_position_embeddings") or 4096)
        else:
            weights = int(float(env.get("FAKE_WEIGHTS_MIB", 256)) * MiB)
            kv = int(float(env.get("FAKE_KV_PER_TOKEN_KIB", 64)) * 1024)
            max_context = 4096
        activation = env.get("FAKE_ACTIVATION_MIB")
        return cls(
            weights=weights,
            kv_per_token=kv,
            max_context=max_context,
            context=int(float(env.get("FAKE_CONTEXT_MIB", 700)) * MiB),
            activation=(
                int(float(activation) * MiB) if activation else max(weights // 20, 256 * MiB)
            ),
        )
