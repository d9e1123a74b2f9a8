"""Replay one mixed-model trace against the FIFO baseline and the batch policy.

    python benchmarks/bench_scheduler.py [--requests 80] [--seed 1] [--only fake,llama]

The trace is open-loop: request arrival times, models and lengths are drawn once
(seeded) and replayed identically against each policy, with the same
``max_wait``. Several clients' requests interleave across more models than the
memory budget holds. Reported per policy: p50/p95 end-to-end latency, the number
of engine starts (loads after the first of each model count as swaps) and the
time until the last answer.

- fake: four fake engines that take 1.5 s to load and claim 1 GiB each, on a
  declared 2.5 GiB device (two fit).
- llama: the two real models on llama-server, with the built-in default's demo
  budget (one fits at a time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).parent))
from bench_router import (
    LLAMA_SERVER,
    _spawn,
    _stop,
    free_port,
    llama_cmd,
    pct,
    wait_http,
)

from swapyard.config import SchedulerSpec
from swapyard.defaults import ensure_default_models
from swapyard.resources.needs import estimate_argv
from swapyard.testing import fake_engine_cmd


@dataclass(frozen=True)
class Arrival:
    at: float
    model: str
    max_tokens: int


def make_trace(
    models: list[str], n: int, rate: float, seed: int, lengths: tuple[int, ...] = (32, 64, 128)
) -> list[Arrival]:
    """Poisson arrivals; each client sticks to its favourite model most of the time,
    as people chatting with one model each do, so requests for the same model are
    spread out between other models' requests."""
    rng = random.Random(seed)
    clients = [models[i % len(models)] for i in range(len(models) + 2)]
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        fav = rng.choice(clients)
        model = fav if rng.random() < 0.7 else rng.choice(models)
        out.append(Arrival(round(t, 3), model, rng.choice(lengths)))
    return out


async def replay(
    http: aiohttp.ClientSession, url: str, trace: list[Arrival]
) -> tuple[list[float], float]:
    t0 = time.perf_counter()

    async def one(a: Arrival) -> float:
        await asyncio.sleep(max(0.0, a.at - (time.perf_counter() - t0)))
        start = time.perf_counter()
        body = {"model": a.model, "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": a.max_tokens}  # fmt: skip
        async with http.post(url + "/v1/chat/completions", json=body) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"{a.model}: HTTP {r.status}")
        return time.perf_counter() - start

    lat = await asyncio.gather(*(one(a) for a in trace))
    return list(lat), time.perf_counter() - t0


async def starts(http: aiohttp.ClientSession, url: str, models: list[str]) -> int:
    n = 0
    for m in models:
        async with http.get(f"{url}/api/models/{m}/logs?lines=100000") as r:
            n += (await r.text()).count("[swapyard] starting:")
    return n


async def run_policies(
    http: aiohttp.ClientSession, cfg: dict[str, Any], traces: list[list[Arrival]]
) -> dict[str, dict[str, Any]]:
    """Each policy against each trace (one per seed); latencies pooled, swaps and
    times summed over the seeds."""
    rows: dict[str, dict[str, Any]] = {}
    for policy in ("fifo", "batch"):
        runs = [await run_policy(http, cfg, policy, t) for t in traces]
        lat = [x for r in runs for x in r.pop("latencies")]
        rows[policy] = {
            "p50_s": statistics.median(lat),
            "p95_s": pct(lat, 0.95),
            "max_s": max(lat),
            "starts": sum(r["starts"] for r in runs),
            "swaps": sum(r["swaps"] for r in runs),
            "total_s": sum(r["total_s"] for r in runs),
            "per_seed": runs,
        }
    return rows


async def run_policy(
    http: aiohttp.ClientSession, cfg: dict[str, Any], policy: str, trace: list[Arrival]
) -> dict[str, Any]:
    cfg = {**cfg, "scheduler": {**cfg.get("scheduler", {}), "policy": policy}}
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    port = free_port()
    env = {"SWAPYARD_DATA_DIR": str(tmp)}
    proc = await _spawn(
        [sys.executable, "-m", "swapyard", "serve", "-c", str(path), "--port", str(port)], env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(http, url + "/health", every=0.02)
        lat, total = await replay(http, url, trace)
        models = list(cfg["models"])
        n_starts = await starts(http, url, models)
    finally:
        await _stop(proc)
    used = {a.model for a in trace}
    return {
        "p50_s": statistics.median(lat),
        "p95_s": pct(lat, 0.95),
        "max_s": max(lat),
        "starts": n_starts,
        "swaps": n_starts - len(used),
        "total_s": total,
        "latencies": lat,
    }


def table(title: str, rows: dict[str, dict[str, Any]], n: int) -> str:
    f, b = rows["fifo"], rows["batch"]
    rows = {k: v for k, v in rows.items() if k in ("fifo", "batch")}
    out = [
        f"\n### {title} ({n} requests)\n",
        "| policy | p50 s | p95 s | max s | engine starts | swaps | time to last answer s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        out.append(
            f"| {name} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['max_s']:.2f} | "
            f"{r['starts']} | {r['swaps']} | {r['total_s']:.1f} |"
        )
    swaps = f"{f['swaps'] / b['swaps']:.1f}x" if b["swaps"] else "all (batch: 0)"
    out.append(
        f"\nbatch vs fifo: {swaps} fewer swaps, p95 {f['p95_s'] / b['p95_s']:.1f}x lower, "
        f"p50 {f['p50_s'] / b['p50_s']:.1f}x lower"
    )
    return "\n".join(out)


def one_at_a_time(models: dict[str, Path]) -> int:
    """Room for the larger model alone, as run by llama-server here."""
    needs = [estimate_argv(tuple(llama_cmd(p, "x").split())) or 0 for p in models.values()]
    return max(needs) + min(needs) // 2


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="traces to replay: seed, seed+1, ...")
    ap.add_argument("--rate", type=float, default=2.0, help="arrivals per second")
    ap.add_argument("--max-wait", default="20s")
    defaults = SchedulerSpec()  # the config's defaults, so the benchmark follows them
    ap.add_argument("--min-residency", default=f"{defaults.min_residency:g}s")
    ap.add_argument("--assumed-load", default=f"{defaults.assumed_load:g}s")
    ap.add_argument("--swap-factor", type=float, default=defaults.swap_factor)
    ap.add_argument("--only", default="fake,llama")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    only = set(args.only.split(","))
    res: dict[str, Any] = {"max_wait": args.max_wait, "seed": args.seed, "seeds": args.seeds}
    sched = {
        "max_wait": args.max_wait,
        "min_residency": args.min_residency,
        "assumed_load": args.assumed_load,
        "swap_factor": args.swap_factor,
    }
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        if "fake" in only:
            names = ["m1", "m2", "m3", "m4"]
            cfg = {
                "server": {"loading_status": "off"},
                "devices": {"gpu0": {"memory": "2560MiB"}},
                "scheduler": sched,
                "models": {
                    m: {
                        "cmd": fake_engine_cmd(m, load_delay=1.5, tokens_per_second=100),
                        "memory": "1GiB",
                    }
                    for m in names
                },
            }
            traces = [
                make_trace(names, args.requests, rate=args.rate, seed=args.seed + i)
                for i in range(args.seeds)
            ]
            rows = await run_policies(http, cfg, traces)
            res["fake"] = rows
            title = "Fake engines: 4 models, memory for 2, 1.5 s loads"
            print(table(title, rows, sum(map(len, traces))))
        if "llama" in only and os.access(LLAMA_SERVER, os.X_OK):
            models = ensure_default_models()
            names = ["smollm2", "tiny"]
            cfg = {
                "server": {"loading_status": "off"},
                "devices": {"ram": {"memory": one_at_a_time(models)}},
                "scheduler": sched,
                "models": {m: {"cmd": llama_cmd(models[m], m)} for m in names},
            }
            n = max(20, args.requests // 2)
            traces = [
                make_trace(names, n, rate=args.rate, seed=args.seed + i) for i in range(args.seeds)
            ]
            rows = await run_policies(http, cfg, traces)
            res["llama"] = rows
            title = "llama.cpp: smollm2 + tiny, memory for one"
            print(table(title, rows, sum(map(len, traces))))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
