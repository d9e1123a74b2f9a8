"""``swapyard bench``: load a server with streaming chat requests and report TTFT,
tok/s, requests/s and latency percentiles. Works against swapyard or any
OpenAI-compatible server (``--url``), so the same run can measure an engine
directly and through swapyard."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import click

from swapyard.cli.client import table


@dataclass
class One:
    model: str
    ok: bool
    ttft_s: float | None
    total_s: float
    completion_tokens: int
    tok_s: float | None
    error: str | None = None


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one(http: aiohttp.ClientSession, url: str, key: str | None, model: str,
              prompt: str, max_tokens: int, ignore_eos: bool) -> One:  # fmt: skip
    body: dict[str, Any] = {
        "model": model, "stream": True, "max_tokens": max_tokens, "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    if ignore_eos:
        body["ignore_eos"] = True
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    t0 = time.perf_counter()
    first = last = None
    chunks = 0
    usage = None
    try:
        async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status != 200:
                text = (await r.text())[:200]
                return One(
                    model,
                    False,
                    None,
                    time.perf_counter() - t0,
                    0,
                    None,
                    f"HTTP {r.status}: {text}",
                )
            async for raw in r.content:
                if not raw.startswith(b"data: {"):
                    continue
                doc = json.loads(raw[6:])
                if doc.get("usage"):
                    usage = doc["usage"]
                for c in doc.get("choices") or ():
                    d = c.get("delta") or {}
                    if d.get("content") or d.get("reasoning_content"):
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        chunks += 1
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return One(model, False, None, time.perf_counter() - t0, 0, None, str(exc))
    total = time.perf_counter() - t0
    n = (usage or {}).get("completion_tokens") or chunks
    tok_s = (n - 1) / (last - first) if first and last and last > first and n > 1 else None
    return One(model, True, (first - t0) if first else None, total, n, tok_s)


async def run(url: str, key: str | None, models: list[str], requests: int, concurrency: int,
              prompt_tokens: int, max_tokens: int, ignore_eos: bool, progress: bool
              ) -> tuple[list[One], float]:  # fmt: skip
    prompt = " ".join(["hello"] * max(1, prompt_tokens))
    sem = asyncio.Semaphore(concurrency)
    done = 0
    results: list[One] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:

        async def task(i: int) -> None:
            nonlocal done
            async with sem:
                results.append(await one(http, url, key, models[i % len(models)], prompt,
                                         max_tokens, ignore_eos))  # fmt: skip
            done += 1
            if progress:
                n = int(30 * done / requests)
                click.echo(f"\r[{'#' * n}{'.' * (30 - n)}] {done}/{requests}", err=True, nl=False)

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(requests)))
        wall = time.perf_counter() - t0
    if progress:
        click.echo("", err=True)
    return results, wall


def summarize(results: list[One], wall: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for model in [*sorted({r.model for r in results}), "(all)"]:
        rs = [r for r in results if model in ("(all)", r.model)]
        ok = [r for r in rs if r.ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        toks = [r.tok_s for r in ok if r.tok_s is not None]
        lat = [r.total_s for r in ok]
        out[model] = {
            "requests": len(rs), "errors": len(rs) - len(ok),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p95_s": pct(ttft, 0.95),
            "tok_s_p50": statistics.median(toks) if toks else None,
            "latency_p50_s": pct(lat, 0.5), "latency_p95_s": pct(lat, 0.95),
            "requests_per_s": len(ok) / wall if wall else None,
            "tokens_per_s": sum(r.completion_tokens for r in ok) / wall if wall else None,
        }  # fmt: skip
    return out


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


@click.command()
@click.argument("models", nargs=-1)
@click.option("--url", default=None, help="The server (default $SWAPYARD_URL or :8080).")
@click.option("-c", "--concurrency", default=1, show_default=True)
@click.option("-n", "--requests", "n_requests", default=10, show_default=True)
@click.option("--prompt-tokens", default=32, show_default=True, help="About this many tokens.")
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--ignore-eos", is_flag=True, help="Ask for exactly --max-tokens (llama.cpp, vLLM).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(
    models: tuple[str, ...],
    url: str | None,
    concurrency: int,
    n_requests: int,
    prompt_tokens: int,
    max_tokens: int,
    ignore_eos: bool,
    as_json: bool,
) -> None:
    """Benchmark MODELS (default: every listed model) with streaming chat requests."""
    import os

    from swapyard.cli.client import Client, ClientError

    client = Client(url)
    key = os.environ.get("SWAPYARD_API_KEY") or client.key
    names = list(models)
    if not names:
        try:
            names = [m["id"] for m in client.get("/v1/models")["data"]]
        except ClientError as err:
            click.echo(f"swapyard: {err}", err=True)
            sys.exit(1)
    results, wall = asyncio.run(run(client.url, key, names, n_requests, concurrency,
                                    prompt_tokens, max_tokens, ignore_eos,
                                    progress=not as_json and sys.stderr.isatty()))  # fmt: skip
    summary = summarize(results, wall)
    if as_json:
        click.echo(json.dumps({"url": client.url, "wall_s": wall, "summary": summary,
                               "requests": [asdict(r) for r in results]}, indent=2))  # fmt: skip
    else:
        rows = [[m, str(s["requests"]), str(s["errors"]), _f(s["ttft_p50_s"], ".3f"),
                 _f(s["ttft_p95_s"], ".3f"), _f(s["tok_s_p50"], ".1f"),
                 _f(s["latency_p50_s"], ".3f"), _f(s["latency_p95_s"], ".3f"),
                 _f(s["requests_per_s"], ".2f"), _f(s["tokens_per_s"], ".1f")]
                for m, s in summary.items()]  # fmt: skip
        click.echo(table(["MODEL", "REQUESTS", "ERRORS", "TTFT P50 s", "TTFT P95 s",
                          "TOK/S P50", "LATENCY P50 s", "LATENCY P95 s", "REQ/S",
                          "TOK/S TOTAL"], rows))  # fmt: skip
        for r in results:
            if r.error:
                click.echo(f"error ({r.model}): {r.error}", err=True)
                break
    if any(not r.ok for r in results):
        sys.exit(1)
