"""A restarted swapyard serving a model its predecessor had loaded (adopted) vs a
cold start of the same model, on real llama.cpp (issue 10).

    python benchmarks/bench_restart.py [--reps 5] [--models smollm2,tiny]

Each rep, per model: start ``swapyard serve`` with no engine running and time the
first answer (``cold``: swapyard's start + the engine's load + the answer); then
``kill -9`` swapyard (its engine keeps running), start a new ``swapyard serve``
on the same data dir and time its first answer (``adopted``: swapyard's start +
finding and checking the engine + the answer). Both clocks start when the
``swapyard serve`` process is spawned and stop when the one-token answer has
arrived. Prints a markdown table of medians and the lifecycle lines of one
adopted run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from swapyard.defaults import CONTEXT, ensure_default_models
from swapyard.ports import PortAllocator


def config_text(model: str, path: Path) -> str:
    return json.dumps(
        {
            "models": {
                model: {
                    "engine": "llamacpp", "model": str(path), "context": CONTEXT,
                    "extra_args": ["-t", "2"], "start_timeout": 60,
                }
            }
        }
    )  # fmt: skip


def spawn(cfg: Path, data: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    out = data / f"serve-{port}-{time.monotonic_ns()}.log"
    env = {**os.environ, "SWAPYARD_DATA_DIR": str(data)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "swapyard", "serve", "-c", str(cfg), "--port", str(port)],
        stdout=out.open("wb"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    return proc, out


def first_answer(port: int, model: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait for the port, then ask for one token (the clock is the caller's)."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError("swapyard exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.002)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()


def health_pid(port: int, model: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        pid: int = json.loads(r.read())["models"][model]["pid"]
        return pid


def one_rep(model: str, path: Path) -> tuple[float, float, list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        cfg = data / "c.yaml"
        cfg.write_text(config_text(model, path))
        ports = PortAllocator()
        port = ports.allocate()
        t0 = time.perf_counter()
        proc, _ = spawn(cfg, data, port)
        first_answer(port, model, proc)
        cold = time.perf_counter() - t0
        pid = health_pid(port, model)
        proc.kill()  # kill -9: the engine keeps running
        proc.wait()
        port2 = ports.allocate()
        t0 = time.perf_counter()
        proc2, out2 = spawn(cfg, data, port2)
        first_answer(port2, model, proc2)
        adopted = time.perf_counter() - t0
        if health_pid(port2, model) != pid:
            raise RuntimeError("the engine was not adopted")
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(timeout=60)
        lines = [ln for ln in out2.read_text().splitlines() if ln.startswith(f"{model}:")]
        return cold, adopted, lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--models", default="smollm2,tiny")
    args = ap.parse_args()
    files = ensure_default_models()
    rows = []
    sample: list[str] = []
    for model in args.models.split(","):
        colds, adopts = [], []
        for _ in range(args.reps):
            cold, adopted, lines = one_rep(model, files[model])
            colds.append(cold)
            adopts.append(adopted)
            sample = sample or lines
        rows.append((model, statistics.median(colds), statistics.median(adopts),
                     min(colds), max(colds), min(adopts), max(adopts)))  # fmt: skip
    server = os.environ.get("SWAPYARD_LLAMA_SERVER", "xllamacpp (default launcher)")
    print(f"llama.cpp: {server}; {args.reps} reps; medians (min–max)\n")
    print("| model | cold start → first token | restarted, adopted → first token | ratio |")
    print("|---|---|---|---|")

    def ms(median: float, lo: float, hi: float) -> str:
        return f"{median * 1000:.0f} ms ({lo * 1000:.0f}–{hi * 1000:.0f})"

    for model, c, a, cmin, cmax, amin, amax in rows:
        print(f"| {model} | {ms(c, cmin, cmax)} | {ms(a, amin, amax)} | {c / a:.1f}× |")
    print("\nlifecycle lines of an adopted run:")
    for line in sample:
        print("   ", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
