"""Swap time through each engine's fast mode against stop/start, on the
protocol-faithful fakes (real processes, real sockets).

    python benchmarks/bench_fastswap.py [--reps 6] [--load 3.0] [--wake 0.3]

Two models of one engine kind with memory for one awake (and one asleep). The
fakes take ``--load`` seconds to load cold and ``--wake`` seconds to wake, resume
or load in-process (``FAKE_LOAD_S``/``FAKE_WAKE_S``): the configured ratio is
load/wake. Measured: the latency of the first request after a change of model
(the swap plus a 3-token answer), alternating A, B, A, ... after a warm-up that
starts both once; median over ``--reps`` swaps, for ``fast_swap: true`` and
``false``, in one run, under the FIFO policy (every change of model swaps).
Ollama's cold start is a new ``ollama serve`` plus the same model load as its
fast mode, so its gain is the process start only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from swapyard.config import load_config
from swapyard.testing import running_server

FAKES = [sys.executable, "-m", "swapyard.testing.engine_fakes"]
KINDS = ("vllm", "sglang", "tabbyapi", "ollama")


def cfg(kind: str, fast: bool, load: float, wake: float) -> Any:
    models = {}
    for name in ("a", "b"):
        models[name] = {
            "engine": kind, "fast_swap": fast, "memory": "6GiB", "start_timeout": 60,
            "model": f"{name}:7b" if kind == "ollama" else f"/models/{name}",
            "launcher": [*FAKES, kind],
            "env": {"FAKE_LOAD_S": str(load), "FAKE_WAKE_S": str(wake)},
        }  # fmt: skip
    doc = {
        "server": {"loading_status": "off"},
        "devices": {"gpu0": {"memory": "10GiB"}},
        # FIFO: swap at once on every change of model, to time the mechanism itself
        # (the batch policy would hold a hot model back, by design).
        "scheduler": {"policy": "fifo", "host_memory": "64GiB", "learn_memory": False},
        "models": models,
    }
    return load_config(json.dumps(doc))


async def one(http: aiohttp.ClientSession, url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    t0 = time.perf_counter()
    async with http.post(url + "/v1/chat/completions", json=body) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{model}: HTTP {r.status}")
    return time.perf_counter() - t0


async def swaps(kind: str, fast: bool, reps: int, load: float, wake: float) -> list[float]:
    async with aiohttp.ClientSession() as http, running_server(cfg(kind, fast, load, wake)) as srv:
        await one(http, srv.url, "a")
        await one(http, srv.url, "b")  # both have been loaded once
        out = []
        for i in range(reps):
            out.append(await one(http, srv.url, "ab"[i % 2]))
        return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--load", type=float, default=3.0)
    ap.add_argument("--wake", type=float, default=0.3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows: dict[str, Any] = {}
    print(f"configured ratio load/wake: {args.load / args.wake:.1f}x\n")
    print("| engine | fast mode swap s (median) | stop/start swap s (median) | speed-up |")
    print("|---|---|---|---|")
    for kind in KINDS:
        fast = await swaps(kind, True, args.reps, args.load, args.wake)
        slow = await swaps(kind, False, args.reps, args.load, args.wake)
        f, s = statistics.median(fast), statistics.median(slow)
        rows[kind] = {"fast_s": fast, "stop_start_s": slow}
        print(f"| {kind} | {f:.3f} | {s:.3f} | {s / f:.1f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, **rows}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
