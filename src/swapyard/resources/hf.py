"""Estimate a Hugging Face model folder's memory: ``config.json`` + safetensors.

Weights are the safetensors files as stored (a quantized checkpoint is stored
quantized: AWQ/GPTQ pack 4-bit weights, fp8 one byte, EXL2 its bits per weight),
so their sizes are the weight memory; the quantization method is reported, since
it decides which engines can load the model. The KV cache is computed from the
architecture for the context, in 16 bits unless told otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OVERHEAD = 0.10  # activations, CUDA graphs and allocator slack, as a share of weights


@dataclass(frozen=True, slots=True)
class HFEstimate:
    weights: int
    kv_cache: int
    overhead: int
    context: int
    quant_method: str | None
    bits: float | None

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def is_model_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def read_config(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((path / "config.json").read_text())
    return doc.get("text_config") or doc  # multimodal configs nest the language model


def quantization(path: Path) -> tuple[str | None, float | None]:
    """The quantization method and bits, from config.json (or EXL2's own file)."""
    doc = json.loads((path / "config.json").read_text())
    q = doc.get("quantization_config") or {}
    method = q.get("quant_method")
    bits = q.get("bits") or q.get("w_bit")
    if method is None and (path / "measurement.json").is_file():
        method = "exl2"
    if method == "exl2" and bits is None:
        bits = q.get("bpw")
    return method, float(bits) if bits is not None else None


def estimate_dir(
    path: str | os.PathLike[str], context: int | None = None, kv_bytes: int = 2
) -> HFEstimate:
    p = Path(path)
    cfg = read_config(p)
    n_layer = int(cfg["num_hidden_layers"])
    hidden = int(cfg["hidden_size"])
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    n_ctx = context or int(cfg.get("max_position_embeddings") or 4096)
    weights = sum(f.stat().st_size for f in p.glob("*.safetensors"))
    kv = n_layer * n_ctx * n_kv * head_dim * 2 * kv_bytes
    method, bits = quantization(p)
    return HFEstimate(weights, kv, int(weights * OVERHEAD), n_ctx, method, bits)
