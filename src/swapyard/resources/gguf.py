"""Estimate a GGUF model's memory from its header: weights + KV cache + buffers.

Only the header is read (metadata and tensor table), never the weights. The
format: magic ``GGUF``, version, tensor count, metadata count, then typed
key/value pairs, then the tensor table, then the data (aligned).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_STRING, _ARRAY = 8, 9
RUNTIME = 32 * 2**20  # the server process itself: code, libraries, HTTP threads
UBATCH = 512  # llama.cpp's default micro-batch
BIG_ARRAY = 4096  # metadata arrays this long are counted, not decoded
# Compute buffer per micro-batch token and embedding unit, fitted to llama.cpp's own
# report for SmolLM2-135M (n_embd 576): "CPU compute buffer size = 15.51 MiB".
COMPUTE_PER_TOKEN_EMBD = 56


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    path: Path
    file_size: int
    data_offset: int
    architecture: str
    metadata: dict[str, Any]
    n_params: int = 0  # elements of all tensors

    def arch(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)


@dataclass(frozen=True, slots=True)
class Estimate:
    weights: int
    kv_cache: int
    buffers: int
    context: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.buffers


def read_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """The header of a GGUF file; ``ValueError`` for a file that is not one, or is cut
    short (a model still being copied), ``OSError`` for one that cannot be read."""
    try:
        return _read_info(Path(path))
    except (struct.error, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        raise ValueError(f"{path}: not a whole GGUF file ({exc})") from exc


def _read_info(p: Path) -> GGUFInfo:
    with open(p, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{p}: not a GGUF file")
        version, n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"{p}: GGUF version {version} is not supported")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = _string(f)
            (vtype,) = struct.unpack("<I", f.read(4))
            meta[key] = _value(f, vtype)
        n_params = 0
        for _ in range(n_tensors):  # name, dims, type, offset
            _string(f)
            (n_dims,) = struct.unpack("<I", f.read(4))
            count = 1
            for dim in struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims)):
                count *= dim
            n_params += count
            f.read(4 + 8)
        align = int(meta.get("general.alignment", 32))
        offset = -(-f.tell() // align) * align
    arch = str(meta.get("general.architecture", ""))
    return GGUFInfo(p, p.stat().st_size, offset, arch, meta, n_params)


def estimate(info: GGUFInfo, context: int | None = None, parallel: int = 4) -> Estimate:
    """Memory for serving ``info`` with ``context`` tokens of KV cache (default: the
    model's training context) in f16, with ``parallel`` slots (llama-server's default
    is 4, sharing one unified KV cache)."""
    n_ctx = context or int(info.arch("context_length", 4096))
    n_layer = int(info.arch("block_count", 0))
    n_embd = int(info.arch("embedding_length", 0))
    n_head = int(info.arch("attention.head_count", 1) or 1)
    n_head_kv = int(info.arch("attention.head_count_kv", n_head) or n_head)
    head_k = int(info.arch("attention.key_length", n_embd // n_head))
    head_v = int(info.arch("attention.value_length", n_embd // n_head))
    kv = n_layer * n_ctx * n_head_kv * (head_k + head_v) * 2
    n_vocab = len(info.metadata.get("tokenizer.ggml.tokens", ())) or int(info.arch("vocab_size", 0))
    output = n_vocab * 4 * parallel
    buffers = output + UBATCH * n_embd * COMPUTE_PER_TOKEN_EMBD + RUNTIME
    return Estimate(info.file_size - info.data_offset, kv, buffers, n_ctx)


def parallel(argv: tuple[str, ...], launcher: bool = False) -> int:
    """The slots a llama.cpp-style command runs (``-np``): llama-server's default is
    4, the xllamacpp launcher's 1."""
    for i, arg in enumerate(argv[:-1]):
        if arg in ("-np", "--parallel") and argv[i + 1].isdigit():
            return max(1, int(argv[i + 1]))
    return 1 if launcher else 4


def model_file_and_context(argv: tuple[str, ...]) -> tuple[str | None, int | None]:
    """The ``-m/--model`` GGUF and ``-c/--ctx-size`` of a llama.cpp-style command."""
    model: str | None = None
    ctx: int | None = None
    for i, arg in enumerate(argv[:-1]):
        nxt = argv[i + 1]
        if arg in ("-m", "--model") and nxt.endswith(".gguf"):
            model = nxt
        elif arg in ("-c", "--ctx-size") and nxt.isdigit():
            ctx = int(nxt)
    return model, ctx


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", "replace")


def _value(f: BinaryIO, vtype: int) -> Any:
    if vtype == _STRING:
        return _string(f)
    if vtype == _ARRAY:
        # Big arrays (the tokenizer's tokens, merges, scores) are only counted:
        # skipped, not decoded, so reading a header stays cheap at start-up.
        itype, n = struct.unpack("<IQ", f.read(12))
        if itype == _STRING:
            if n < BIG_ARRAY:
                return [_string(f) for _ in range(n)]
            for _ in range(n):
                (length,) = struct.unpack("<Q", f.read(8))
                f.seek(length, os.SEEK_CUR)
            return [None] * n
        fmt = _SCALARS[itype]
        size = struct.calcsize(fmt)
        if n >= BIG_ARRAY:
            f.seek(size * n, os.SEEK_CUR)
            return [None] * n
        return list(struct.unpack(f"<{n}{fmt[1]}", f.read(size * n)))
    fmt = _SCALARS[vtype]
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
