"""``swapyard scan DIR...``: find models on disk and print a config entry for each.

GGUF files (llama.cpp), Hugging Face folders (``config.json`` + safetensors)
with their quantization method (AWQ, GPTQ, FP8, compressed-tensors, ...) and
EXL2/EXL3 folders (TabbyAPI). For each: format, architecture, parameter count,
quantization, estimated memory, the engine that fits, warnings for engines that
cannot load it, and an inventory: on disk vs configured vs running.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml

from swapyard.cli.client import Client, ClientError, fmt_bytes
from swapyard.resources import gguf, hf

# Which engines load which quantization methods (as their docs list them).
ENGINES_FOR = {
    "gguf": ["llamacpp", "ollama"],
    "exl2": ["tabbyapi"],
    "exl3": ["tabbyapi"],
    "awq": ["vllm", "sglang"],
    "gptq": ["vllm", "sglang"],
    "fp8": ["vllm", "sglang"],
    "compressed-tensors": ["vllm", "sglang"],
    "bitsandbytes": ["vllm", "sglang"],
    None: ["vllm", "sglang"],  # unquantized safetensors
}
GGUF_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
              15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 30: "BF16"}  # fmt: skip


@dataclass
class Found:
    path: Path
    format: str  # gguf | safetensors | exl2 | exl3
    architecture: str
    params: int | None
    quantization: str | None
    memory: int | None
    context: int | None
    engine: str
    warnings: list[str] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        name = self.path.stem if self.path.is_file() else self.path.name
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower()

    def entry(self) -> dict[str, Any]:
        e: dict[str, Any] = {"engine": self.engine, "model": str(self.path)}
        if self.quantization and self.engine in ("vllm", "sglang") and self.quantization in (
            "awq", "gptq", "fp8"
        ):  # fmt: skip
            e["quantization"] = self.quantization
        if self.context:
            e["context"] = min(self.context, 8192)
        if self.memory:
            gib = self.memory / 2**30
            e["memory"] = f"{gib:.1f}GiB" if gib >= 1 else f"{-(-self.memory // 2**20)}MiB"
        return e


def scan_paths(paths: list[Path]) -> list[Found]:
    out: list[Found] = []
    for root in paths:
        for dirpath, dirnames, filenames in os.walk(root):
            d = Path(dirpath)
            if (d / "config.json").is_file() and any(f.endswith(".safetensors") for f in filenames):
                out.append(_hf(d))
                dirnames.clear()  # a model folder: do not descend
                continue
            for f in sorted(filenames):
                if f.endswith(".gguf") and not re.search(r"-0000[2-9]-of-", f):
                    out.append(_gguf(d / f))
            dirnames.sort()
    return out


def _gguf(path: Path) -> Found:
    try:
        info = gguf.read_info(path)
    except (OSError, ValueError) as exc:
        return Found(path, "gguf", "?", None, None, None, None, "llamacpp", [f"unreadable: {exc}"])
    ftype = info.metadata.get("general.file_type")
    quant = GGUF_TYPES.get(ftype, f"type {ftype}") if isinstance(ftype, int) else None
    params = info.n_params or None
    ctx = info.arch("context_length")
    est = gguf.estimate(info, min(int(ctx), 8192) if ctx else None).total
    return Found(path, "gguf", info.architecture, params, quant, est,
                 int(ctx) if ctx else None, "llamacpp")  # fmt: skip


def _hf(path: Path) -> Found:
    method, bits = hf.quantization(path)
    cfg = hf.read_config(path)
    arch = (json.loads((path / "config.json").read_text()).get("architectures") or ["?"])[0]
    warnings = []
    fmt = "exl2" if method == "exl2" else "exl3" if method == "exl3" else "safetensors"
    engines = ENGINES_FOR.get(method, ["vllm"])
    if fmt in ("exl2", "exl3"):
        warnings.append(f"{fmt} loads only in TabbyAPI (ExLlama), not in vLLM or SGLang")
    elif method == "compressed-tensors":
        warnings.append("compressed-tensors: check your SGLang/vLLM build supports its scheme")
    try:
        est = hf.estimate_dir(path, min(8192, int(cfg.get("max_position_embeddings") or 8192)))
        memory = est.total
        ctx = int(cfg.get("max_position_embeddings") or 0) or None
    except (KeyError, ValueError, OSError) as exc:
        memory, ctx = None, None
        warnings.append(f"cannot estimate memory: {exc}")
    params = _hf_params(path, cfg)
    quant = f"{method} {bits:g}-bit" if method and bits else method
    return Found(path, fmt, arch, params, quant, memory, ctx, engines[0], warnings)


def _hf_params(path: Path, cfg: dict[str, Any]) -> int | None:
    """From the safetensors index's metadata when present, else from the shapes."""
    idx = next(iter(path.glob("*.safetensors.index.json")), None)
    if idx is not None:
        meta = json.loads(idx.read_text()).get("metadata", {})
        if isinstance(meta.get("total_parameters"), int):
            return int(meta["total_parameters"])
    total = 0
    for f in path.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in t["shape"]:
                count *= dim
            # packed 4-bit weights (AWQ/GPTQ int32 qweight) hold 8 values per element
            if t["dtype"] == "I32" and name.endswith(("qweight", "qzeros")):
                count *= 8
            total += count
    return total or None


def fmt_params(n: int | None) -> str:
    if not n:
        return "-"
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("-c", "--config", "config_path", default=None, type=click.Path(dir_okay=False),
              help="Compare with this config (configured / not configured).")  # fmt: skip
@click.option("--url", default=None, help="Ask this swapyard what is running.")
@click.option("--json", "as_json", is_flag=True)
def scan(dirs: tuple[str, ...], config_path: str | None, url: str | None, as_json: bool) -> None:
    """Find models in DIRS; print what each is and a config entry for it."""
    found = scan_paths([Path(d) for d in dirs])
    configured: dict[str, str] = {}
    if config_path:
        from swapyard.config import load_config_file

        cfg = load_config_file(config_path)
        for m in cfg.models.values():
            for f in found:
                if str(f.path) in m.cmd or (m.fields and m.fields.model == str(f.path)):
                    configured[str(f.path)] = m.id
    running: dict[str, str] = {}
    try:
        if url or os.environ.get("SWAPYARD_URL"):
            states = Client(url).get("/api/models")["models"]
            running = {mid: s["state"] for mid, s in states.items()}
    except ClientError as err:
        click.echo(f"swapyard: {err} (inventory without running state)", err=True)
    if as_json:
        click.echo(json.dumps([{**f.__dict__, "path": str(f.path), "entry": f.entry(),
                                "configured_as": configured.get(str(f.path))} for f in found],
                              indent=2))  # fmt: skip
        return
    if not found:
        click.echo("no models found (GGUF files, or folders with config.json + *.safetensors)")
        sys.exit(1)
    entries: dict[str, Any] = {}
    for f in found:
        mid = configured.get(str(f.path))
        where = f"configured as {mid}" if mid else "not configured"
        if mid and mid in running:
            where += f", {running[mid]}"
        click.echo(
            f"{f.path}\n  {f.format}, {f.architecture}, {fmt_params(f.params)} params, "
            f"{f.quantization or 'unquantized'}, ~{fmt_bytes(f.memory)} "
            f"(context {min(f.context or 0, 8192) or '?'}); engine: {f.engine}; {where}"
        )
        for w in f.warnings:
            click.echo(f"  warning: {w}")
        if not mid:
            entries[f.model_id] = f.entry()
    if entries:
        click.echo("\n# config entries for the models not configured yet:")
        click.echo(yaml.safe_dump({"models": entries}, sort_keys=False).rstrip())
