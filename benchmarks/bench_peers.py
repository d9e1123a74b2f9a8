"""swapyard against llama-swap (built from source) in front of the same engine process.

    python benchmarks/bench_peers.py [--requests 300] [--streams 100] [--tokens 200]
                                     [--tps 500] [--rounds 3] [--llama-swap PATH]

1. Added latency: non-streamed p50 and time to the first streamed byte, direct vs
   each proxy, interleaved in a new seeded order each round.
2. CPU per 1,000 streamed tokens: ``--streams`` concurrent streams of ``--tokens``
   tokens at ``--tps`` tokens/s each through one proxy at a time (rounds
   alternate); the proxy process's own CPU time (user + system, from /proc) over
   the tokens delivered.

Both proxies are pure pass-throughs to one fake engine the benchmark starts: swapyard
with it as a remote (``engine: openai``, ``stream_usage: false`` — nothing is
rewritten), llama-swap with ``proxy:`` at it (its ``cmd`` is a ``sleep`` it
supervises). llama-swap is not in any registry here: fetch its source and
``go build -o ~/.cache/swapyard-peers/llama-swap-<commit> .`` in a copy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from bench_router import Target, _spawn, _stop, free_port, latency, wait_http

from swapyard.testing import fake_engine_cmd

PEERS = Path.home() / ".cache" / "swapyard-peers"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def engine(tps: float) -> AsyncIterator[str]:
    port = free_port()
    argv = fake_engine_cmd("fake", tokens_per_second=tps).replace("${PORT}", str(port)).split()
    proc = await _spawn(argv)
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"http://127.0.0.1:{port}/health", every=0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def swapyard(upstream: str) -> AsyncIterator[tuple[str, int]]:
    tmp = Path(tempfile.mkdtemp())
    cfg = {"usage": {"enabled": False}, "models": {"fake": {
        "engine": "openai", "base_url": upstream + "/v1", "stream_usage": False}}}  # fmt: skip
    (tmp / "c.yaml").write_text(json.dumps(cfg))
    port = free_port()
    env = {**os.environ, "SWAPYARD_DATA_DIR": str(tmp)}
    proc = await _spawn([sys.executable, "-m", "swapyard", "serve", "-c", str(tmp / "c.yaml"),
                         "--port", str(port)], env)  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"http://127.0.0.1:{port}/health", every=0.02)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        await _stop(proc)


@contextlib.asynccontextmanager
async def llama_swap(binary: str, upstream: str) -> AsyncIterator[tuple[str, int]]:
    tmp = Path(tempfile.mkdtemp())
    # concurrencyLimit: llama-swap refuses (429) more than 10 requests a model at
    # once by default; the streams section runs 100.
    (tmp / "cfg.yaml").write_text(
        "models:\n  fake:\n    cmd: sleep 100000\n"
        f"    proxy: {upstream}\n    checkEndpoint: /health\n    concurrencyLimit: 1000\n"
    )
    port = free_port()
    proc = await _spawn([binary, "-config", str(tmp / "cfg.yaml"), "-listen",
                         f"127.0.0.1:{port}"])  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            await wait_http(http, f"http://127.0.0.1:{port}/v1/models", every=0.02)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        await _stop(proc)


async def stream_all(base: str, streams: int, tokens: int) -> int:
    """``streams`` concurrent streams; returns the content chunks received."""
    body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": tokens, "stream": True}  # fmt: skip
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as http:

        async def one() -> int:
            n = 0
            async with http.post(base + "/v1/chat/completions", json=body) as r:
                if r.status != 200:
                    raise RuntimeError(f"{base}: HTTP {r.status}: {(await r.read())[:200]!r}")
                async for line in r.content:
                    if line.startswith(b"data: {"):
                        n += 1
            return n

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--tps", type=float, default=500.0)
    ap.add_argument("--rounds", type=int, default=3)
    found = sorted(glob.glob(str(PEERS / "llama-swap-*")))
    ap.add_argument("--llama-swap", default=found[-1] if found else None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if not args.llama_swap:
        raise SystemExit(f"no llama-swap binary in {PEERS} (see the docstring)")
    out: dict[str, Any] = {"llama_swap": args.llama_swap, "load": os.getloadavg()}
    async with (
        engine(1e6) as up,
        swapyard(up) as (sy, _),
        llama_swap(args.llama_swap, up) as (
            ls,
            _,
        ),
    ):
        targets = [Target("direct (fake engine)", up + "/v1", "fake"),
                   Target("swapyard", sy + "/v1", "fake"),
                   Target("llama-swap", ls + "/v1", "fake")]  # fmt: skip
        async with aiohttp.ClientSession() as http:
            rows = await latency(http, targets, args.requests, max_tokens=8)
    base = rows[targets[0].name]
    print(f"## Added latency, fake engine (8 tokens), {args.requests} requests each\n")
    print("| target | p50 ms | added p50 | TTFB p50 ms | added TTFB |")
    print("|---|---|---|---|---|")
    for t in targets:
        r = rows[t.name]
        p50, ttfb = r["p50_ms"], r["ttfb_p50_ms"]
        added, added_ttfb = p50 - base["p50_ms"], ttfb - base["ttfb_p50_ms"]
        print(f"| {t.name} | {p50:.2f} | {added:+.2f} | {ttfb:.2f} | {added_ttfb:+.2f} |")
    out["latency"] = {k: {m: v for m, v in r.items() if not m.endswith("_all")}
                      for k, r in rows.items()}  # fmt: skip
    cpu: dict[str, list[float]] = {"swapyard": [], "llama-swap": []}
    async with (
        engine(args.tps) as up,
        swapyard(up) as (sy, sy_pid),
        llama_swap(args.llama_swap, up) as (ls, ls_pid),
    ):
        proxies = {"swapyard": (sy, sy_pid), "llama-swap": (ls, ls_pid)}
        for url, _ in proxies.values():  # warm-up
            await stream_all(url, 10, 10)
        for rnd in range(args.rounds):
            order = list(proxies) if rnd % 2 == 0 else list(reversed(proxies))
            for name in order:
                url, pid = proxies[name]
                c0 = cpu_seconds(pid)
                got = await stream_all(url, args.streams, args.tokens)
                cpu[name].append((cpu_seconds(pid) - c0) / got * 1000)
    print(f"\n## CPU per 1,000 streamed tokens, {args.streams} concurrent streams of "
          f"{args.tokens} tokens at {args.tps:g} tok/s, {args.rounds} rounds\n")  # fmt: skip
    print("| proxy | CPU-seconds / 1,000 tokens (each round) | median |")
    print("|---|---|---|")
    for name, xs in cpu.items():
        each = ", ".join(f"{x:.4f}" for x in xs)
        print(f"| {name} | {each} | {sorted(xs)[len(xs) // 2]:.4f} |")
    out["cpu_per_1000_tokens"] = cpu
    print(f"\nload average at start: {out['load']}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
