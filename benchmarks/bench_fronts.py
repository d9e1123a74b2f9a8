"""What each client front adds (issue 14): the same question to the same llama-server,
directly and through swapyard's OpenAI route, its Ollama API and its Anthropic
``/v1/messages`` (passed through, and translated to chat completions).

    python benchmarks/bench_fronts.py [--requests 200] [--json out.json]

One llama-server (tiny model, 4 tokens a request, temperature 0) is started by
hand; one ``swapyard serve`` has it as two remote models (``engine: openai``):
``native`` passes ``/v1/messages`` through, ``translated`` translates it. Every
front asks the same engine, so the differences are the fronts' own work. Each
round asks every target once, in a new seeded order, non-streamed and then
streamed (time to the first byte of the answer). The direct rows are the
engine's own routes (``/v1/chat/completions`` for the OpenAI and Ollama rows,
``/v1/messages`` for both Anthropic rows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from bench_router import LLAMA_SERVER, THREADS, _spawn, _stop, free_port, pct, swapyard_server
from bench_router import wait_http as wait_ok

from swapyard.defaults import ensure_default_models

QUESTION = "What color is the sky on a clear day?"
TOKENS = 4


def openai_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "max_tokens": TOKENS, "temperature": 0, "stream": stream,
            "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip


def ollama_body(model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "stream": stream, "options": {"num_predict": TOKENS, "temperature": 0},
            "messages": [{"role": "user", "content": QUESTION}]}  # fmt: skip


@dataclass
class Target:
    name: str
    url: str
    model: str
    body: Callable[[str, bool], dict[str, Any]]
    baseline: str  # the direct row it is compared with


async def ask(http: aiohttp.ClientSession, t: Target, stream: bool) -> float:
    """Seconds to the whole answer (non-streamed) or to its first byte (streamed)."""
    t0 = time.perf_counter()
    for attempt in (1, 2):  # llama-server closes a connection after each stream
        try:
            async with http.post(t.url, json=t.body(t.model, stream)) as r:
                if r.status != 200:
                    raise RuntimeError(f"{t.name}: HTTP {r.status}: {(await r.read())[:300]!r}")
                if not stream:
                    await r.read()
                    return time.perf_counter() - t0
                await r.content.readany()
                first = time.perf_counter() - t0
                await r.read()
                return first
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
            if attempt == 2:
                raise
            t0 = time.perf_counter()
    raise AssertionError("unreachable")


async def run(n: int) -> dict[str, Any]:
    tiny = ensure_default_models()["tiny"]
    port = free_port()
    engine = await _spawn([LLAMA_SERVER, "--host", "127.0.0.1", "--port", str(port), "-c", "2048",
                           "-t", str(THREADS), "-m", str(tiny), "--alias", "tiny"])  # fmt: skip
    up = f"http://127.0.0.1:{port}"
    remote = {"engine": "openai", "base_url": up + "/v1", "model": "tiny", "stream_usage": True}
    cfg = {"models": {"native": {**remote, "anthropic": "native"},
                      "translated": {**remote, "anthropic": "translate"}}}  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            await wait_ok(http, up + "/health")
            async with swapyard_server(http, cfg) as srv:
                s = srv.url
                targets = [
                    Target("direct /v1/chat/completions", up + "/v1/chat/completions", "tiny",
                           openai_body, ""),
                    Target("swapyard /v1/chat/completions", s + "/v1/chat/completions",
                           "native", openai_body, "direct /v1/chat/completions"),
                    Target("swapyard /api/chat (Ollama, translated)", s + "/api/chat",
                           "native", ollama_body, "direct /v1/chat/completions"),
                    Target("direct /v1/messages", up + "/v1/messages", "tiny", openai_body, ""),
                    Target("swapyard /v1/messages (passed through)", s + "/v1/messages",
                           "native", openai_body, "direct /v1/messages"),
                    Target("swapyard /v1/messages (translated)", s + "/v1/messages",
                           "translated", openai_body, "direct /v1/messages"),
                ]  # fmt: skip
                for t in targets:  # warm-up, and every front answers
                    for stream in (False, True) * 3:
                        await ask(http, t, stream)
                res: dict[str, dict[str, list[float]]] = {t.name: {"total": [], "ttfb": []}
                                                          for t in targets}  # fmt: skip
                rng = random.Random(14)
                for stream in (False, True):
                    for _ in range(n):
                        for t in rng.sample(targets, len(targets)):
                            res[t.name]["ttfb" if stream else "total"].append(
                                await ask(http, t, stream)
                            )
    finally:
        await _stop(engine)
    rows = {}
    for t in targets:
        v = res[t.name]
        rows[t.name] = {"baseline": t.baseline, "p50_ms": pct(v["total"], 0.5) * 1000,
                        "p99_ms": pct(v["total"], 0.99) * 1000,
                        "ttfb_p50_ms": pct(v["ttfb"], 0.5) * 1000,
                        "ttfb_p99_ms": pct(v["ttfb"], 0.99) * 1000}  # fmt: skip
    return rows


def table(rows: dict[str, Any], n: int) -> str:
    out = [f"### Added latency per front, llama.cpp tiny model ({TOKENS} tokens, {n} requests "
           "per target)", "",
           "| target | p50 ms | p99 ms | added p50 ms | TTFB p50 ms | TTFB p99 ms "
           "| added TTFB p50 ms |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        base = rows.get(r["baseline"], r)
        out.append(
            f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] - base['p50_ms']:+.2f} | {r['ttfb_p50_ms']:.2f} | "
            f"{r['ttfb_p99_ms']:.2f} | {r['ttfb_p50_ms'] - base['ttfb_p50_ms']:+.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = asyncio.run(run(a.requests))
    print(table(rows, a.requests))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
