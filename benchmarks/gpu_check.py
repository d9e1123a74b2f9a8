"""GPU memory as it really is, checked on a real NVIDIA GPU (issue 12).

    python benchmarks/gpu_check.py                # a machine with an NVIDIA GPU + PyTorch
    python benchmarks/gpu_check.py --simulated    # anywhere: the simulated GPU (a ledger)

No vLLM is needed: the engines are swapyard's vLLM fake (``swapyard.testing.
engine_fakes``) with ``FAKE_GPU=cuda``, which takes ``vllm serve``'s flags and
allocates real CUDA memory the way vLLM does (refuses to start when less than
``--gpu-memory-utilization`` x total is free, then holds that share: weights, an
activation peak and KV cache; a level-1 sleep copies the weights to host RAM and
keeps only its CUDA context). Model folders are config.json plus a sparse
safetensors file of the weights' size. swapyard runs in this process and reads
NVML; after every step the script prints NVML's figures beside swapyard's:

1. two vLLM models with nothing declared (vLLM's default share would take 0.9 of
   the GPU for the first);
2. four models with a declared share, three fit: the fourth evicts one by sleep;
   a wake is timed against a cold start;
3. a process swapyard did not start holds half of the GPU: swapyard sees it,
   shows it, and evicts rather than failing.

Exit 0 when every step behaved as expected, 1 when one did not, and 0 with a
clear "no NVIDIA GPU" line where there is none (use ``--simulated`` there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

SRC = str(Path(__file__).resolve().parents[1] / "src")
sys.path.insert(0, SRC)  # swapyard from this checkout, here and in the engines it starts
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))

from swapyard.config import load_config  # noqa: E402
from swapyard.resources.gpu import Ledger, NvmlReader, reader, reset_reader  # noqa: E402
from swapyard.testing import running_server  # noqa: E402

G = 2**30
FAKES = [sys.executable, "-m", "swapyard.testing.engine_fakes", "vllm"]
FAILURES: list[str] = []


def gib(n: int | float | None) -> str:
    return "-" if n is None else f"{n / G:.2f}"


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}")
    if not ok:
        FAILURES.append(what)


def model_dir(root: Path, name: str, weights: int, ctx: int = 8192) -> str:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "max_position_embeddings": ctx}  # fmt: skip
    (d / "config.json").write_text(json.dumps(cfg))
    with open(d / "model.safetensors", "wb") as f:
        f.truncate(weights)  # sparse: only its size is read
    return str(d)


def config_text(models: dict[str, dict[str, Any]], env: dict[str, str]) -> str:
    # FIFO: each step's swap happens at once (the batch policy's hold on a model in
    # steady demand is not what this checks; benchmarks/bench_scheduler.py does).
    doc: dict[str, Any] = {"models": {}, "scheduler": {"policy": "fifo", "host_memory": "100GiB"}}
    for name, m in models.items():
        doc["models"][name] = {
            "engine": "vllm", "launcher": FAKES, "start_timeout": 120,
            "env": {"FAKE_LOAD_S": "0", **env}, **m,
        }  # fmt: skip
    return json.dumps(doc)


async def ask(http: aiohttp.ClientSession, url: str, model: str) -> tuple[int, float, str]:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    t0 = time.monotonic()
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        text = await r.text()
        return r.status, time.monotonic() - t0, text


async def load_seconds(http: aiohttp.ClientSession, url: str, model: str, mode: str) -> float:
    """The engine's own starting → ready (``cold``) or waking → ready (``wake``)
    seconds, summed, from swapyard's metrics."""
    async with http.get(url + "/metrics") as r:
        text = await r.text()
    key = f'swapyard_load_seconds_sum{{mode="{mode}",model="{model}"}}'
    alt = f'swapyard_load_seconds_sum{{model="{model}",mode="{mode}"}}'
    for line in text.splitlines():
        if line.startswith((key, alt)):
            return float(line.split()[-1])
    return 0.0


async def table(http: aiohttp.ClientSession, url: str, step: str) -> dict[str, Any]:
    """NVML's figures (per process and device) beside swapyard's, after ``step``."""
    await asyncio.sleep(1.0)  # let swapyard measure what just became ready or slept
    async with http.get(url + "/api/models") as r:
        doc: dict[str, Any] = await r.json()
    gpu = reader()
    now = gpu.read() if gpu is not None else {}
    per_pid = {p.pid: p.used for g in now.values() for p in g.processes}
    print(f"\n### {step}\n")
    print("| model | state | swapyard scheduled GiB | measured GiB | asleep GiB | NVML GiB "
          "(its process) | flag swapyard chose |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for mid, m in doc["models"].items():
        mem = m["memory"]
        asleep = mem["asleep"] if m["state"] == "sleeping" else None
        nvml = per_pid.get(m["pid"]) if m["pid"] else None
        print(f"| {mid} | {m['state']} | {gib(mem['scheduled'])} | {gib(mem['measured'])} | "
              f"{gib(asleep)} | {gib(nvml)} | {' '.join(m['engine_args']) or '-'} |")  # fmt: skip
    for d, v in doc["devices"].items():
        g = now.get(d)
        print(f"\nGPU {d}: NVML used {gib(g.used if g else None)} of {gib(g.total if g else None)}"
              f" GiB; swapyard: budget {gib(v['budget'])}, its models {gib(v['used'])}, other "
              f"processes {gib(v['foreign'])}, free {gib(v['free'])}")  # fmt: skip
    return doc


async def two_undeclared(http: aiohttp.ClientSession, root: Path, env: dict[str, str],
                         total: int) -> None:  # fmt: skip
    print("\n## 1. Two vLLM models, nothing declared")
    w = int(0.1 * total)
    models = {m: {"model": model_dir(root, m, w)} for m in ("a", "b")}
    async with running_server(load_config(config_text(models, env))) as srv:
        for m in ("a", "b"):
            status, took, text = await ask(http, srv.url, m)
            why = "" if status == 200 else ": " + text[:300]
            check(status == 200, f"{m} answered ({status}, {took:.2f} s){why}")
            doc = await table(http, srv.url, f"after a request for {m}")
        both = [doc["models"][m]["state"] for m in ("a", "b")]
        check(both == ["ready", "ready"], f"both resident at once ({both})")


async def four_declared(http: aiohttp.ClientSession, root: Path, env: dict[str, str],
                        total: int) -> None:  # fmt: skip
    print("\n## 2. Four models with a declared share (0.28 each), three fit")
    w = int(0.12 * total)
    names = ("a", "b", "c", "d")
    models = {m: {"model": model_dir(root, m, w), "gpu_memory_fraction": 0.28} for m in names}
    async with running_server(load_config(config_text(models, env))) as srv:
        cold: dict[str, float] = {}
        for m in names:
            status, took, text = await ask(http, srv.url, m)
            cold[m] = took
            check(status == 200, f"{m} cold start answered ({status}) in {took:.2f} s"
                  + ("" if status == 200 else ": " + text[:300]))  # fmt: skip
        doc = await table(http, srv.url, "after a, b, c, d (d evicted one by sleep)")
        asleep = [m for m in names if doc["models"][m]["state"] == "sleeping"]
        check(len(asleep) == 1, f"one model asleep ({asleep})")
        if asleep:
            m = asleep[0]
            cold_load = await load_seconds(http, srv.url, m, "cold")
            status, took, _ = await ask(http, srv.url, m)
            wake = await load_seconds(http, srv.url, m, "wake")
            check(status == 200, f"{m} answered in {took:.2f} s after a sleep")
            print(f"  {m}: cold start {cold_load:.2f} s (engine start to ready), wake {wake:.2f} s "
                  f"({cold_load / max(wake, 1e-9):.1f}x faster); the rest of the request "
                  f"({took - wake:.2f} s) is putting another model to sleep (its weights to "
                  "pinned host RAM) to make room")  # fmt: skip
            check(wake < cold_load, "the wake is faster than the cold start")
            await table(http, srv.url, f"after waking {m}")


def hold_foreign(nbytes: int, simulated: Ledger | None) -> subprocess.Popen[bytes]:
    """A process swapyard did not start, holding ``nbytes`` of GPU 0."""
    if simulated is not None:
        proc = subprocess.Popen(["sleep", "600"])
        simulated.allocate(proc.pid, "0", nbytes)
        return proc
    code = ("import sys, time, torch; x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, "
            "device='cuda'); print('held', flush=True); time.sleep(600)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(nbytes)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.readline()
    return proc


async def foreign_process(http: aiohttp.ClientSession, root: Path, env: dict[str, str],
                          total: int, simulated: Ledger | None) -> None:  # fmt: skip
    print("\n## 3. A process swapyard did not start holds half of the GPU")
    held = int(0.5 * total)
    proc = hold_foreign(held, simulated)
    try:
        w = int(0.22 * total)
        models = {m: {"model": model_dir(root, m, w)} for m in ("e", "f")}
        async with running_server(load_config(config_text(models, env))) as srv:
            for m in ("e", "f"):
                status, took, text = await ask(http, srv.url, m)
                check(status == 200, f"{m} answered ({status}, {took:.2f} s)"
                      + ("" if status == 200 else ": " + text[:300]))  # fmt: skip
                doc = await table(http, srv.url, f"after a request for {m}")
            dev = doc["devices"]["0"]
            check(abs(dev["foreign"] - held) < 0.02 * total,
                  f"swapyard sees {gib(dev['foreign'])} GiB held by others "
                  f"(the process holds {gib(held)})")  # fmt: skip
            others = [h for h in dev["holders"] if not h["model"]]
            check(
                any(h["pid"] == proc.pid for h in others),
                f"the holder is named: {[(h['pid'], h['name'], gib(h['used'])) for h in others]}",
            )
            check(
                doc["models"]["e"]["state"] in ("stopped", "stopping", "sleeping"),
                f"e was evicted for f rather than f failing ({doc['models']['e']['state']})",
            )
    finally:
        proc.kill()
        proc.wait()


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--simulated", action="store_true",
                   help="use the simulated GPU (a ledger) instead of a real one")  # fmt: skip
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="swapyard-gpu-check-") as tmp:
        root = Path(tmp)
        simulated: Ledger | None = None
        if args.simulated:
            simulated = Ledger.create(root / "gpu.json", {"0": 140 * G})
            os.environ["SWAPYARD_SIMULATED_GPU"] = str(simulated.path)
            env: dict[str, str] = {}
        else:
            os.environ.pop("SWAPYARD_SIMULATED_GPU", None)
            if NvmlReader.open() is None:
                print(
                    "gpu_check: no NVIDIA GPU here (NVML is missing or finds no device): "
                    "nothing was checked. Run it on a machine with one, or with --simulated."
                )
                return 0
            env = {"FAKE_GPU": "cuda"}
        reset_reader()
        gpu = reader()
        assert gpu is not None
        total = gpu.read()["0"].total
        print(f"# gpu_check: {'simulated' if simulated else 'NVML'} GPU 0, {gib(total)} GiB")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
            await two_undeclared(http, root, env, total)
            await four_declared(http, root, env, total)
            await foreign_process(http, root, env, total, simulated)
    print(f"\n{len(FAILURES)} check(s) failed" + (": " + "; ".join(FAILURES) if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
