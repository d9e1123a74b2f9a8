"""Memory estimates for Hugging Face folders: config.json + safetensors sizes, with
each quantization method the engines meet (generated folders, no hub)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from swapyard.resources.hf import estimate_dir, is_model_dir
from swapyard.resources.needs import estimate_argv

ARCH = {
    "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "hidden_size": 256,
    "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 8192,
    "torch_dtype": "bfloat16",
}  # fmt: skip


def write_safetensors(path: Path, nbytes: int) -> None:
    header = json.dumps({"w": {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}})
    raw = header.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * nbytes)


def model_dir(tmp_path: Path, quant: dict[str, Any] | None, shards: int = 2) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    cfg = dict(ARCH)
    if quant is not None:
        cfg["quantization_config"] = quant
    (d / "config.json").write_text(json.dumps(cfg))
    for i in range(shards):
        write_safetensors(d / f"model-{i + 1:05d}-of-{shards:05d}.safetensors", 100_000)
    return d


@pytest.mark.parametrize(
    ("quant", "method", "bits"),
    [
        (None, None, None),
        ({"quant_method": "awq", "bits": 4, "group_size": 128}, "awq", 4.0),
        ({"quant_method": "gptq", "bits": 4, "desc_act": False}, "gptq", 4.0),
        ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "fp8", None),
        ({"quant_method": "compressed-tensors", "format": "float-quantized"},
         "compressed-tensors", None),
        ({"quant_method": "exl2", "bits": 4.65}, "exl2", 4.65),
    ],
)  # fmt: skip
def test_estimate_reads_sizes_architecture_and_quantization(
    tmp_path: Path, quant: dict[str, Any] | None, method: str | None, bits: float | None
) -> None:
    d = model_dir(tmp_path, quant)
    assert is_model_dir(d)
    est = estimate_dir(d, context=4096)
    files = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    assert est.weights == files
    assert est.kv_cache == 4 * 4096 * 2 * (256 // 8) * 2 * 2  # layers ctx kv-heads dim K+V fp16
    assert est.total == est.weights + est.kv_cache + est.overhead
    assert (est.quant_method, est.bits) == (method, bits)


def test_context_defaults_to_the_models_maximum(tmp_path: Path) -> None:
    est = estimate_dir(model_dir(tmp_path, None))
    assert est.context == 8192


def test_exl2_folder_without_quantization_config_is_recognised(tmp_path: Path) -> None:
    d = model_dir(tmp_path, None)
    (d / "measurement.json").write_text("{}")
    assert estimate_dir(d).quant_method == "exl2"


def test_engine_command_naming_a_folder_is_estimated(tmp_path: Path) -> None:
    d = model_dir(tmp_path, {"quant_method": "awq", "bits": 4})
    argv = ("vllm", "serve", str(d), "--port", "${PORT}", "--max-model-len", "2048")
    assert estimate_argv(argv) == estimate_dir(d, 2048).total
    assert estimate_argv(("vllm", "serve", "Qwen/Qwen2.5-7B")) is None
