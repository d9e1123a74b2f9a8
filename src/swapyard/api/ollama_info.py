"""What the Ollama API says about a model (``/api/tags``, ``/api/ps``, ``/api/show``),
from its config and, where it names one, its model file (issue 14).

A GGUF file (``-m`` on a llama.cpp command, or ``model:``) gives the family, the
parameter count, the quantization, the context length and the chat template
(which says whether the model takes tools or thinks); a Hugging Face folder gives
its ``config.json``. Anything else gets empty values of the right type, which
Ollama clients accept. Only file headers are read, once per file version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from swapyard.config import ModelSpec
from swapyard.resources import gguf, hf

log = logging.getLogger("swapyard.ollama")

# llama.cpp's `general.file_type` (enum llama_ftype), as Ollama names them.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}  # fmt: skip
# Architectures that only embed (Ollama lists them with "embedding" alone).
EMBED_ONLY = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "t5encoder"})
EMBED_FLAGS = frozenset({"--embedding", "--embeddings", "--is-embedding"})
EPOCH = datetime.fromtimestamp(0, UTC)


@dataclass(frozen=True, slots=True)
class Facts:
    """What is known of one model's weights; empty strings and zeros when not."""

    format: str = ""
    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    parameters: int = 0
    context_length: int = 0  # what the model was trained for
    size: int = 0  # bytes of the weights on disk
    modified: datetime = EPOCH
    digest: str = ""
    template: str = ""  # its chat template
    extra: tuple[tuple[str, Any], ...] = ()  # more of model_info

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": self.format,
            "family": self.family,
            "families": [self.family] if self.family else None,
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }

    def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        if self.family:
            info["general.architecture"] = self.family
        if self.parameters:
            info["general.parameter_count"] = self.parameters
        if self.family and self.context_length:
            info[f"{self.family}.context_length"] = self.context_length
        info.update(self.extra)
        return info


def human_count(n: int) -> str:
    """A parameter count as Ollama shows it: ``135M``, ``7.2B``."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.1f}B"
    if n >= 1_000_000:
        return f"{n / 1e6:.0f}M"
    return f"{n / 1e3:.0f}K" if n else ""


def model_path(spec: ModelSpec) -> str | None:
    """The model file or folder ``spec`` serves, if its config names one."""
    path, _ = gguf.model_file_and_context(spec.cmd)
    if path is None and spec.fields is not None and spec.fields.model:
        path = spec.fields.model
    return path


def facts(spec: ModelSpec) -> Facts:
    """What ``spec``'s model file says; ``Facts()`` with a digest of the config
    when it names none (or it cannot be read)."""
    path = model_path(spec)
    if path is not None:
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None:
            found = _read(path, st.st_size, st.st_mtime_ns)
            if found is not None:
                return found
    digest = hashlib.sha256(f"{spec.id}\0{spec.cmd_display}".encode()).hexdigest()
    return Facts(digest=digest)


@lru_cache(maxsize=256)
def _read(path: str, size: int, mtime_ns: int) -> Facts | None:
    """The facts of one version of a file (the cache key has its size and mtime)."""
    modified = datetime.fromtimestamp(mtime_ns / 1e9, UTC)
    digest = hashlib.sha256(f"{path}\0{size}\0{mtime_ns}".encode()).hexdigest()
    try:
        if path.endswith(".gguf"):
            return _gguf(path, modified, digest)
        if hf.is_model_dir(path):
            return _hf(Path(path), modified, digest)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read %s for the Ollama API: %s", path, exc)
    return None


def _gguf(path: str, modified: datetime, digest: str) -> Facts:
    info = gguf.read_info(path)
    ftype = info.metadata.get("general.file_type")
    extra = []
    for key in ("embedding_length", "block_count", "attention.head_count"):
        if (v := info.arch(key)) is not None:
            extra.append((f"{info.architecture}.{key}", v))
    return Facts(
        format="gguf", family=info.architecture, parameter_size=human_count(info.n_params),
        quantization_level=FILE_TYPES.get(ftype, "") if isinstance(ftype, int) else "",
        parameters=info.n_params, context_length=int(info.arch("context_length", 0) or 0),
        size=info.file_size, modified=modified, digest=digest,
        template=str(info.metadata.get("tokenizer.chat_template") or ""), extra=tuple(extra),
    )  # fmt: skip


def _hf(path: Path, modified: datetime, digest: str) -> Facts:
    doc = hf.read_config(path)
    method, bits = hf.quantization(path)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    template = ""
    tok = path / "tokenizer_config.json"
    if tok.is_file():
        template = str(json.loads(tok.read_text()).get("chat_template") or "")
    quant = method or ""
    if method and bits:
        quant = f"{method.upper()}-{bits:g}bit"
    return Facts(
        format="safetensors", family=str(doc.get("model_type") or ""), quantization_level=quant,
        context_length=int(doc.get("max_position_embeddings") or 0), size=size,
        modified=modified, digest=digest, template=template,
    )  # fmt: skip


def capabilities(spec: ModelSpec, f: Facts) -> list[str]:
    """What Ollama's ``/api/show`` lists: ``completion`` unless the model only
    embeds, ``embedding`` when the engine was told to embed, ``tools`` and
    ``thinking`` when its chat template handles them, ``vision`` with a projector."""
    args = set(spec.cmd) | set(spec.fields.extra_args if spec.fields is not None else ())
    embed_only = f.family in EMBED_ONLY
    caps = [] if embed_only else ["completion"]
    if embed_only or args & EMBED_FLAGS or "embed" in _value_of(spec.cmd, "--task"):
        caps.append("embedding")
    if "tools" in f.template:
        caps.append("tools")
    if any(w in f.template for w in ("<think>", "enable_thinking", "reasoning_content")):
        caps.append("thinking")
    if "--mmproj" in args or "-mm" in args:
        caps.append("vision")
    return caps


def _value_of(argv: tuple[str, ...], name: str) -> str:
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[i + 1]
    return ""


def iso(when: datetime) -> str:
    """RFC 3339, as Ollama writes times."""
    return when.isoformat().replace("+00:00", "Z")
