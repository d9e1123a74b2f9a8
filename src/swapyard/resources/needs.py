"""Each model's memory figures, and which one the scheduler uses: declared, else
estimated from its files, else learned (measured after a load, persisted)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from swapyard.config import ModelSpec
from swapyard.resources import gguf, hf
from swapyard.resources.store import MeasuredStore

log = logging.getLogger("swapyard.memory")


@dataclass(slots=True)
class MemoryFigures:
    declared: int | None = None
    estimated: int | None = None
    measured: int | None = None

    @property
    def scheduled(self) -> int | None:
        for figure in (self.declared, self.estimated, self.measured):
            if figure is not None:
                return figure
        return None

    def as_dict(self) -> dict[str, int | None]:
        return {
            "declared": self.declared,
            "estimated": self.estimated,
            "measured": self.measured,
            "scheduled": self.scheduled,
        }


# The xllamacpp launcher runs llama.cpp inside a Python interpreter: measured on
# the tiny model, its process holds ~24 MiB more than llama-server's.
PYTHON_LAUNCHER = "swapyard.engines.xllamacpp_server"
PYTHON_RUNTIME = 24 * 2**20


def estimate_argv(argv: tuple[str, ...]) -> int | None:
    """An estimate from the model files a command names: a ``-m`` GGUF
    (llama.cpp), else a Hugging Face folder among its arguments (vLLM, SGLang)."""
    path, context = gguf.model_file_and_context(argv)
    if path is None:
        return _estimate_hf(argv)
    try:
        total = gguf.estimate(gguf.read_info(path), context).total
    except (OSError, ValueError, KeyError) as exc:
        log.warning("cannot estimate the memory needed by %s: %s", path, exc)
        return None
    return total + (PYTHON_RUNTIME if PYTHON_LAUNCHER in argv else 0)


def estimate_from_files(spec: ModelSpec) -> int | None:
    return estimate_argv(spec.cmd)


def initial_figures(spec: ModelSpec, store: MeasuredStore | None) -> MemoryFigures:
    return MemoryFigures(
        declared=spec.memory,
        estimated=None if spec.memory is not None else estimate_from_files(spec),
        measured=store.get(spec) if store is not None else None,
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
