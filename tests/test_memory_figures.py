"""Which figure places a model, and what an engine that pre-allocates is told
(issue 12): pure functions, no processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import config
from swapyard.config import load_config
from swapyard.defaults import CONTEXT, ensure_default_models
from swapyard.engines.base import out_of_memory_line
from swapyard.memory import MAX_SHARE, share_for
from swapyard.resources.gpu import GpuReading, Ledger
from swapyard.resources.needs import (
    PREALLOC_RUNTIME,
    MemoryFigures,
    estimate_argv,
    initial_figures,
)

G = 2**30


def hf_dir(root: Path, weights: int, layers: int = 32, ctx: int = 8192) -> Path:
    """A Hugging Face folder as the estimate reads it: config.json and a sparse
    safetensors file of ``weights`` bytes."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"num_hidden_layers": layers, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": ctx}  # fmt: skip
    (root / "config.json").write_text(json.dumps(cfg))
    with open(root / "model.safetensors", "wb") as f:
        f.truncate(weights)
    return root


def test_declared_beats_measured_beats_estimated() -> None:
    assert MemoryFigures(declared=3, estimated=1, measured=2).scheduled == 3
    assert MemoryFigures(estimated=1, measured=2).scheduled == 2
    assert MemoryFigures(estimated=1).scheduled == 1
    assert MemoryFigures().scheduled is None


def test_vllm_without_a_declared_share_is_sized_to_start_and_told_its_share(
    tmp_path: Path,
) -> None:
    d = hf_dir(tmp_path / "llama", 16 * G)
    cfg = config({"m": {"engine": "vllm", "model": str(d), "launcher": ["vllm"]}})
    spec = cfg.models["m"]
    assert spec.share is not None and spec.share.declared is None
    assert "--gpu-memory-utilization" not in spec.cmd  # swapyard adds it at start
    fig = initial_figures(spec, None, {"0": 140 * G})
    kv = 32 * 8192 * 8 * 128 * 2 * 2
    assert fig.estimated == 16 * G + kv + int(16 * G * 0.1) + PREALLOC_RUNTIME
    assert fig.declared is None


@pytest.mark.parametrize(
    "fields",
    [{"gpu_memory_fraction": 0.3}, {"extra_args": ["--gpu-memory-utilization", "0.3"]}],
)
def test_a_declared_share_sets_the_need(tmp_path: Path, fields: dict[str, object]) -> None:
    d = hf_dir(tmp_path / "llama", 16 * G)
    cfg = config({"m": {"engine": "vllm", "model": str(d), "launcher": ["vllm"], **fields}})
    spec = cfg.models["m"]
    assert spec.share is not None and spec.share.declared == 0.3
    fig = initial_figures(spec, None, {"0": 100 * G})
    assert fig.declared == 30 * G and fig.scheduled == 30 * G and fig.estimated is None


def test_the_share_told_is_the_need_over_the_total_or_with_what_the_device_holds() -> None:
    g = [GpuReading("0", 100 * G, 40 * G)]
    assert share_for(20 * G, g, of_free=False) == 0.2  # vLLM: of the device's total
    assert share_for(20 * G, g, of_free=True) == 0.3334  # SGLang: of what is free (60)
    assert share_for(int(20.005 * G), g, of_free=False) == 0.2001  # rounded up
    assert share_for(200 * G, g, of_free=False) == MAX_SHARE
    assert share_for(G, [GpuReading("0", 100 * G, 100 * G)], of_free=True) is None


async def test_the_share_reaches_the_engine_command_on_a_simulated_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swapyard.memory import MemoryBook
    from swapyard.resources.gpu import reset_reader

    ledger = tmp_path / "gpu.json"
    Ledger.create(ledger, {"0": 100 * G})
    monkeypatch.setenv("SWAPYARD_SIMULATED_GPU", str(ledger))
    reset_reader()
    try:
        d = hf_dir(tmp_path / "llama", 16 * G)
        cfg = config({
            "v": {"engine": "vllm", "model": str(d), "launcher": ["vllm"]},
            "s": {"engine": "sglang", "model": str(d), "launcher": ["sglang"]},
            "fixed": {"engine": "vllm", "model": str(d), "gpu_memory_fraction": 0.5},
        })  # fmt: skip
        book = MemoryBook(cfg, None, cuda=True)
        assert book.totals == {"0": 100 * G}
        need = book.figures["v"].estimated
        assert need is not None
        assert book.share_args(cfg.models["v"], ("0",), 25 * G) == [
            "--gpu-memory-utilization",
            f"{need / (100 * G) + 0.00005:.4f}",
        ]  # fmt: skip  (from the estimate, not the 25 GiB a measurement placed it with)
        Ledger(ledger).allocate(os.getpid(), "0", 10 * G)
        assert book.share_args(cfg.models["s"], ("0",), 25 * G) == [
            "--mem-fraction-static", f"{need / (90 * G) + 0.00005:.4f}",
        ]  # fmt: skip
        assert book.share_args(cfg.models["fixed"], ("0",), 50 * G) == []  # passed as written
        assert "0.5" in cfg.models["fixed"].cmd
        assert book.figures["fixed"].declared == 50 * G
    finally:
        reset_reader()


def test_llamacpp_estimate_uses_the_context_the_engine_really_runs() -> None:
    """The xllamacpp launcher runs 2048 tokens unless told (the issue: an estimate at
    the model's 8192 was 345 MiB for 214 MiB used)."""
    smol = str(ensure_default_models()["smollm2"])
    launcher = ("python3", "-m", "swapyard.engines.xllamacpp_server", "-m", smol)
    assert estimate_argv(launcher) == estimate_argv((*launcher, "-c", str(CONTEXT)))
    server = ("llama-server", "-m", smol)  # llama-server: 0 = the model's own context
    assert estimate_argv(server) == estimate_argv((*server, "-c", "8192"))
    assert estimate_argv(server) > estimate_argv(launcher)  # type: ignore[operator]


def test_engine_logs_that_say_out_of_memory_are_recognised() -> None:
    said = [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.",
        "ValueError: Free memory on device cuda:0 (14.20/139.80 GiB) on startup is less "
        "than desired GPU memory utilization (0.90, 125.82 GiB).",
        "ValueError: No available memory for the cache blocks. Try increasing",
        "RuntimeError: Not enough memory. Please try to increase --mem-fraction-static.",
        "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 MiB on device 0: "
        "cudaMalloc failed: out of memory",
    ]
    for line in said:
        assert out_of_memory_line(["loading", line, "exiting"]) == line
    assert out_of_memory_line(["ValueError: unknown quantization method", "bye"]) is None


def test_a_load_config_with_vllm_and_extra_share_keeps_it_once(tmp_path: Path) -> None:
    d = hf_dir(tmp_path / "m", G)
    text = f"""
models:
  m:
    engine: vllm
    model: {d}
    extra_args: [--gpu-memory-utilization=0.4]
"""
    spec = load_config(text).models["m"]
    assert spec.share is not None and spec.share.declared == 0.4
    assert sum(a.startswith("--gpu-memory-utilization") for a in spec.cmd) == 1


def test_resident_memory_beats_an_estimate_only_when_larger() -> None:
    """Resident memory leaves out pages not touched yet (llama.cpp's KV cache): on
    the CPU it only corrects an estimate upward; NVML's figure replaces it."""
    assert MemoryFigures(estimated=10, measured=5, measured_on_gpu=False).scheduled == 10
    assert MemoryFigures(estimated=10, measured=15, measured_on_gpu=False).scheduled == 15
    assert MemoryFigures(estimated=10, measured=5, measured_on_gpu=True).scheduled == 5


def test_a_raw_cmd_is_run_as_written(tmp_path: Path) -> None:
    """swapyard adds no share to a command it did not build; one written in it is
    declared (the gb10 example's docker command carries its own)."""
    d = hf_dir(tmp_path / "m", G)
    own = ["vllm", "serve", str(d), "--port", "${PORT}", "--gpu-memory-utilization", "0.45"]
    cfg = config({"own": {"engine": "vllm", "model": str(d), "cmd": own},
                  "bare": {"engine": "vllm", "model": str(d), "cmd": own[:-2]}})  # fmt: skip
    share = cfg.models["own"].share
    assert share is not None and share.declared == 0.45
    assert cfg.models["bare"].share is None
