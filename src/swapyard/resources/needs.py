"""Each model's memory figures, and which one the scheduler uses: declared, else
measured (after a load, persisted across restarts), else estimated from its files.

An engine that takes a share of the device at start-up (vLLM, SGLang) holds what
swapyard tells it to, so its estimate is rounded up to what lets it start: the
weights, the KV cache of one full context, and a floor for the CUDA context,
graphs and activations (``PREALLOC_RUNTIME``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from swapyard.config import ModelSpec
from swapyard.engines import xllamacpp_server
from swapyard.resources import gguf, hf
from swapyard.resources.store import MeasuredStore

log = logging.getLogger("swapyard.memory")


PREALLOC_RUNTIME = 2**30  # CUDA context, CUDA graphs, sampler: beyond 10 % of the weights


@dataclass(slots=True)
class MemoryFigures:
    declared: int | None = None
    estimated: int | None = None
    measured: int | None = None
    asleep: int | None = None  # measured while asleep (fast swap)
    measured_on_gpu: bool = True  # NVML's figure; else resident memory (RAM)

    @property
    def scheduled(self) -> int | None:
        """Declared is authoritative; a GPU measurement beats an estimate; a RAM one
        only when larger (resident memory leaves out pages not touched yet)."""
        if self.declared is not None:
            return self.declared
        if self.measured is not None and self.estimated is not None and not self.measured_on_gpu:
            return max(self.measured, self.estimated)
        return self.measured if self.measured is not None else self.estimated


# The xllamacpp launcher runs llama.cpp inside a Python interpreter: measured on
# the tiny model, its process holds ~24 MiB more than llama-server's.
PYTHON_LAUNCHER = "swapyard.engines.xllamacpp_server"
PYTHON_RUNTIME = 24 * 2**20
LAUNCHER_CONTEXT = xllamacpp_server.CONTEXT  # its -c default


def estimate_argv(argv: tuple[str, ...]) -> int | None:
    """An estimate from the model files a command names: a ``-m`` GGUF
    (llama.cpp), else a Hugging Face folder among its arguments (vLLM, SGLang)."""
    path, context = gguf.model_file_and_context(argv)
    if path is None:
        return _estimate_hf(argv)
    python = PYTHON_LAUNCHER in argv
    if context is None and python:  # its default, not the model's (llama-server's)
        context = LAUNCHER_CONTEXT
    try:
        total = gguf.estimate(gguf.read_info(path), context, gguf.parallel(argv, python)).total
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot estimate the memory needed by %s: %s", path, exc)
        return None
    return total + (PYTHON_RUNTIME if python else 0)


def estimate_from_files(spec: ModelSpec) -> int | None:
    return estimate_argv(spec.cmd)


def declared_need(spec: ModelSpec, totals: Mapping[str, int]) -> int | None:
    """``memory:``, else a declared share of the device (fraction x total)."""
    if spec.memory is not None:
        return spec.memory
    if spec.share is not None and spec.share.declared is not None and totals:
        return int(spec.share.declared * max(totals.values()))
    return None


def initial_figures(
    spec: ModelSpec, store: MeasuredStore | None, totals: Mapping[str, int] | None = None
) -> MemoryFigures:
    """``totals``: the GPUs' total memory (a declared share is a share of it)."""
    declared = declared_need(spec, totals or {})
    estimated = estimate_from_files(spec) if declared is None else None
    if estimated is not None and spec.share is not None:
        estimated += PREALLOC_RUNTIME
    return MemoryFigures(
        declared=declared,
        estimated=estimated,
        measured=store.get(spec) if store is not None else None,
        asleep=store.get(spec, asleep=True) if store is not None else None,
        measured_on_gpu=store.on_gpu(spec) if store is not None else True,
    )


def _estimate_hf(argv: tuple[str, ...]) -> int | None:
    context = None
    for flag in ("--max-model-len", "--context-length", "--max_seq_len"):
        if flag in argv[:-1] and argv[argv.index(flag) + 1].isdigit():
            context = int(argv[argv.index(flag) + 1])
    for arg in argv[1:]:
        if arg.startswith("/") and hf.is_model_dir(arg):
            try:
                return hf.estimate_dir(arg, context).total
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cannot estimate the memory needed by %s: %s", arg, exc)
                return None
    return None
