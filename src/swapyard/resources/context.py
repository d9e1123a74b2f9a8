"""How many tokens one request to a model may use, as clients ask (issue 14).

``/v1/models`` (``context_length``, ``max_model_len``, ``meta.n_ctx``) and Ollama's
``/api/show``/``/api/ps`` report it. For a llama.cpp-style command it is the
context the engine was told (``context:``, ``-c``; the xllamacpp launcher's 2048
by default, else llama-server's own: the model's) split over its slots
(``-np``) unless they share one cache (``-kvu``), and never more than the model
was trained for (llama.cpp caps each sequence there).
"""

from __future__ import annotations

import functools
import os

from swapyard.config import ModelSpec
from swapyard.resources import gguf
from swapyard.resources.needs import LAUNCHER_CONTEXT, PYTHON_LAUNCHER

_PARALLEL = ("-np", "--parallel")
_UNIFIED = ("-kvu", "--kv-unified")


def served_context(spec: ModelSpec) -> tuple[int | None, int | None]:
    """(tokens one request may use, tokens the model was trained for); None where
    unknown."""
    path, in_cmd = gguf.model_file_and_context(spec.cmd)
    trained = trained_context(path) if path is not None else None
    n_ctx = spec.fields.context if spec.fields is not None else None
    n_ctx = n_ctx or in_cmd or (LAUNCHER_CONTEXT if PYTHON_LAUNCHER in spec.cmd else None)
    if n_ctx is None:
        return trained, trained
    slots = _slots(spec.cmd)
    if slots > 1 and not any(a in _UNIFIED for a in spec.cmd):
        n_ctx //= slots
    return (min(n_ctx, trained) if trained else n_ctx), trained


def _slots(argv: tuple[str, ...]) -> int:
    for i, arg in enumerate(argv[:-1]):
        if arg in _PARALLEL and argv[i + 1].isdigit():
            return max(1, int(argv[i + 1]))
    return 1


def trained_context(path: str) -> int | None:
    """The GGUF's ``<arch>.context_length``; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _header_context(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _header_context(path: str, mtime_ns: int, size: int) -> int | None:
    # Cached per file version: a model list is asked for often, and a header
    # holds the whole vocabulary.
    try:
        value = gguf.read_info(path).arch("context_length")
    except (OSError, ValueError, KeyError):
        return None
    return int(value) if isinstance(value, int) else None
