"""swapyard against calling the engine directly and against the peers, in one run.

    python benchmarks/bench_router.py [--requests 200] [--swaps 5] [--json out.json]

Sections (each prints a markdown table):

1. Added latency, fake engine: non-streaming p50/p99 and time to first streamed
   byte, direct vs swapyard vs LiteLLM, all in front of the *same* engine process.
   swapyard three ways: the one that owns the engine (``serve``'s default loop,
   uvloop where installed) and two more with that engine as a remote
   (``engine: openai``, a pure pass-through), one ``--loop uvloop`` and one
   ``--loop asyncio``: those two differ only in the event loop (issue 9).
2. Added latency, llama.cpp (``llama-server``, tiny model): direct vs the same
   three swapyards vs LiteLLM on the same process, and llama.cpp's own router mode
   (its own child, same binary and flags).
3. Cold swap: time to first token for a request that needs another model
   (stop A, start B), minus the same done by hand (SIGTERM A and wait, spawn B,
   poll its health every 5 ms, ask it). For swapyard and for llama.cpp's router.
4. Does a running answer survive a request for another model?

Requests are interleaved across targets (one request to each per round, in a new
seeded order every round) so drift, and the work a target leaves behind for the
next one, hit all alike.
Everything runs on 127.0.0.1; peers that cannot run here are reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from swapyard.config import load_config
from swapyard.defaults import ensure_default_models
from swapyard.testing import fake_engine_cmd

CACHE = Path.home() / ".cache" / "swapyard"
LLAMA_SERVER = os.environ.get(
    "SWAPYARD_LLAMA_SERVER", str(CACHE / "llama-server-0.3.36" / "llama-server")
)
LITELLM = os.environ.get("LITELLM_BIN", str(CACHE / "litellm-venv" / "bin" / "litellm"))
LITELLM_KEY = "sk-bench-1234"
HAND_STOP_TIMES: list[float] = []
PROMPT = [{"role": "user", "content": "What color is the sky on a clear day?"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def paired(xs: list[float], base: list[float], places: int = 1) -> str:
    """Median of per-rep differences ``x - base`` in ms, with the 25th-75th percentiles."""
    d = [(x - b) * 1000 for x, b in zip(xs, base, strict=True)]
    f = f"+.{places}f"
    return f"{statistics.median(d):{f}} ({pct(d, 0.25):{f}}…{pct(d, 0.75):{f}})"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def _spawn(argv: list[str], env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """A process in its own group, output discarded (stopped with ``_stop``)."""
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True, env={**os.environ, **(env or {})},
    )  # fmt: skip


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the group, await the leader, SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def wait_http(
    http: aiohttp.ClientSession, url: str, timeout: float = 60, every: float = 0.005, **kw: Any
) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError):
            async with http.get(url, **kw) as r:
                await r.read()
                if r.status == 200:
                    return
        await asyncio.sleep(every)
    raise RuntimeError(f"{url} never answered 200")


@dataclass
class Target:
    name: str
    base: str  # up to and including /v1
    model: str
    headers: dict[str, str] = field(default_factory=dict)


async def one_request(
    http: aiohttp.ClientSession, t: Target, *, stream: bool, max_tokens: int
) -> tuple[float, float, float]:
    """(total, first byte, first content token) in seconds."""
    body = {"model": t.model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    if stream:
        body["stream"] = True
    t0 = time.perf_counter()
    for attempt in (1, 2):
        try:
            return await _one_request(http, t, body, stream=stream, t0=t0)
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            # llama-server closes a connection after each streamed answer while
            # announcing keep-alive: retry once on a new one, as swapyard does.
            if attempt == 2 or isinstance(exc, aiohttp.ClientConnectorError):
                raise RuntimeError(f"{t.name}: {exc!r}") from exc
    raise AssertionError("unreachable")


async def _one_request(
    http: aiohttp.ClientSession, t: Target, body: dict[str, Any], *, stream: bool, t0: float
) -> tuple[float, float, float]:
    first_byte = first_token = 0.0
    async with http.post(t.base + "/chat/completions", json=body, headers=t.headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{t.name}: HTTP {r.status}: {(await r.read())[:300]!r}")
        if not stream:
            await r.read()
            first_byte = first_token = time.perf_counter() - t0
        else:
            buf = b""
            async for chunk in r.content.iter_any():
                now = time.perf_counter() - t0
                first_byte = first_byte or now
                if not first_token:
                    buf += chunk
                    if (
                        b'"content":"' in buf.replace(b'": "', b'":"')
                        and b'"content":""' not in buf
                    ):
                        first_token = now
    return time.perf_counter() - t0, first_byte, first_token


async def latency(
    http: aiohttp.ClientSession, targets: list[Target], n: int, max_tokens: int
) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, list[float]]] = {t.name: {"total": [], "ttfb": []} for t in targets}
    for t in targets:  # warm-up
        for _ in range(5):
            await one_request(http, t, stream=False, max_tokens=max_tokens)
            await one_request(http, t, stream=True, max_tokens=max_tokens)
    # Non-streamed, then streamed, each round robin over the targets: mixing them on
    # one connection would charge llama-server's close-after-stream to every request.
    # Each round in a new (seeded) order: what a target leaves running after its
    # answer (a proxy's metering, llama-server's threads spinning down) lands on
    # whoever comes next, and with a fixed order that is always the same target.
    rng = random.Random(9)
    for stream in (False, True):
        for _ in range(n):
            for t in rng.sample(targets, len(targets)):
                total, ttfb, _ = await one_request(http, t, stream=stream, max_tokens=max_tokens)
                res[t.name]["ttfb" if stream else "total"].append(ttfb if stream else total)
    return {
        name: {
            "p50_ms": pct(v["total"], 0.5) * 1000,
            "p99_ms": pct(v["total"], 0.99) * 1000,
            "ttfb_p50_ms": pct(v["ttfb"], 0.5) * 1000,
            "ttfb_p99_ms": pct(v["ttfb"], 0.99) * 1000,
            "total_all": v["total"],
            "ttfb_all": v["ttfb"],
        }
        for name, v in res.items()
    }


def loop_delta(rows: dict[str, Any]) -> str:
    """asyncio minus uvloop: the two remote swapyards' requests of each round paired
    (same moment, same engine), median and 25th-75th percentiles, in ms."""
    u, a = (rows[f"swapyard ({loop}, remote)"] for loop in LOOPS)
    return (
        f"\nasyncio − uvloop (remote swapyards, paired per round), ms: "
        f"p50 {paired(a['total_all'], u['total_all'], 2)}, "
        f"TTFB {paired(a['ttfb_all'], u['ttfb_all'], 2)}"
    )


def latency_table(title: str, rows: dict[str, dict[str, Any]], direct: str) -> str:
    d = rows[direct]
    out = [
        f"\n### {title}\n",
        "| target | p50 ms | p99 ms | added p50 ms | TTFB p50 ms | TTFB p99 ms "
        "| added TTFB p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        out.append(
            f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] - d['p50_ms']:+.2f} | {r['ttfb_p50_ms']:.2f} | "
            f"{r['ttfb_p99_ms']:.2f} | {r['ttfb_p50_ms'] - d['ttfb_p50_ms']:+.2f} |"
        )
    return "\n".join(out)


@contextlib.asynccontextmanager
async def litellm_proxy(
    http: aiohttp.ClientSession, model: str, api_base: str
) -> AsyncIterator[Target | None]:
    if not os.access(LITELLM, os.X_OK):
        print(f"LiteLLM not installed at {LITELLM}: skipped", file=sys.stderr)
        yield None
        return
    tmp = Path(tempfile.mkdtemp())
    cfg = tmp / "litellm.yaml"
    cfg.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {
                            "model": f"openai/{model}", "api_base": api_base, "api_key": "none",
                        },
                    }
                ],
                "litellm_settings": {"telemetry": False},
            }
        )
    )  # fmt: skip
    port = free_port()
    proc = await _spawn(
        [LITELLM, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_MASTER_KEY": LITELLM_KEY},
    )
    try:
        await wait_http(http, f"http://127.0.0.1:{port}/health/liveliness", timeout=120, every=0.2)
        yield Target("LiteLLM proxy", f"http://127.0.0.1:{port}/v1", model,
                     {"Authorization": f"Bearer {LITELLM_KEY}"})  # fmt: skip
    finally:
        await _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def llama_router(http: aiohttp.ClientSession, models: dict[str, Path]) -> AsyncIterator[str]:
    """llama.cpp's own router mode over a dir holding the same GGUFs; yields its /v1."""
    tmp = Path(tempfile.mkdtemp())
    for mid, path in models.items():
        (tmp / f"{mid}.gguf").symlink_to(path)
    port = free_port()
    proc = await _spawn(
        [LLAMA_SERVER, "--models-dir", str(tmp), "--models-max", "1", "--host", "127.0.0.1",
         "--port", str(port), "-c", "2048", "-t", str(THREADS)]
    )  # fmt: skip
    try:
        await wait_http(http, f"http://127.0.0.1:{port}/v1/models", every=0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


THREADS = int(os.environ.get("BENCH_LLAMA_THREADS", "2"))


@contextlib.asynccontextmanager
async def swapyard_server(
    http: aiohttp.ClientSession, cfg: dict[str, Any], loop: str = "auto"
) -> AsyncIterator[Any]:
    """``swapyard serve --loop LOOP`` as its own process, as users run it; yields an
    object with ``.url``. (In-process it would share the benchmark client's event
    loop.) Each server gets its own usage store, so that servers running side by
    side do not contend for one SQLite file."""
    tmp = Path(tempfile.mkdtemp())
    path = tmp / "swapyard.json.yaml"
    path.write_text(json.dumps({"usage": {"path": str(tmp / "usage.db")}, **cfg}))
    port = free_port()
    proc = await _spawn([sys.executable, "-m", "swapyard", "serve", "-c", str(path),
                         "--port", str(port), "--loop", loop])  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_http(http, url + "/health", every=0.02)
        yield type("Srv", (), {"url": url})()
    finally:
        await _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def llama_cmd(path: Path, alias: str) -> str:
    return (
        f"{LLAMA_SERVER} --host 127.0.0.1 --port ${{PORT}} -c 2048 -t {THREADS} -m {path} "
        f"--alias {alias}"
    )


def on_port(model: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``model`` with its engine on a port chosen here, and that engine's URL: no
    route shows an engine's own URL (issue 11), and the benchmark asks it directly."""
    port = free_port()
    cmd = model["cmd"]
    cmd = (
        cmd.replace("${PORT}", str(port))
        if isinstance(cmd, str)
        else [a.replace("${PORT}", str(port)) for a in cmd]
    )
    url = f"http://127.0.0.1:{port}"
    return {**model, "cmd": cmd, "proxy": url}, url


LOOPS = ("uvloop", "asyncio")


@contextlib.asynccontextmanager
async def swapyard_remotes(
    http: aiohttp.ClientSession, model: str, upstream: str
) -> AsyncIterator[list[Target]]:
    """One ``swapyard serve --loop L`` per loop, each with the running engine at
    ``upstream`` as a remote: no ``model:`` (the request's name goes as sent) and no
    ``stream_usage`` (nothing is added to the request or kept back from the stream),
    so the path is the same byte pipe as the owning swapyard's and the two differ
    only in the loop."""
    cfg = {"models": {model: {"engine": "openai", "base_url": upstream + "/v1",
                              "stream_usage": False}}}  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        targets: list[Target] = []
        for loop in LOOPS:
            srv = await stack.enter_async_context(swapyard_server(http, cfg, loop))
            t = Target(f"swapyard ({loop}, remote)", srv.url + "/v1", model)
            await one_request(http, t, stream=False, max_tokens=4)
            targets.append(t)
        yield targets


# -- sections ----------------------------------------------------------------------------


async def section_fake(http: aiohttp.ClientSession, n: int) -> dict[str, Any]:
    model, up = on_port({"cmd": fake_engine_cmd("fake", tokens_per_second=1e6)})
    cfg = {"models": {"fake": model}}
    async with swapyard_server(http, cfg) as srv:
        await one_request(http, Target("warm", srv.url + "/v1", "fake"), stream=False, max_tokens=4)
        targets = [Target("direct (fake engine)", up + "/v1", "fake"),
                   Target("swapyard", srv.url + "/v1", "fake")]  # fmt: skip
        async with (
            swapyard_remotes(http, "fake", up) as remotes,
            litellm_proxy(http, "fake", up + "/v1") as lite,
        ):
            targets += remotes
            if lite:
                targets.append(lite)
            rows = await latency(http, targets, n, max_tokens=8)
    print(latency_table("Added latency, fake engine (8 tokens)", rows, targets[0].name))
    print(loop_delta(rows))
    return rows


async def section_llama(
    http: aiohttp.ClientSession, models: dict[str, Path], n: int
) -> dict[str, Any]:
    model, up = on_port({"cmd": llama_cmd(models["tiny"], "tiny")})
    cfg = {"models": {"tiny": model}}
    async with swapyard_server(http, cfg) as srv:
        await one_request(http, Target("warm", srv.url + "/v1", "tiny"), stream=False, max_tokens=4)
        targets = [Target("direct (llama-server)", up + "/v1", "tiny"),
                   Target("swapyard", srv.url + "/v1", "tiny")]  # fmt: skip
        async with (
            swapyard_remotes(http, "tiny", up) as remotes,
            llama_router(http, {"tiny": models["tiny"]}) as router_url,
            litellm_proxy(http, "tiny", up + "/v1") as lite,
        ):
            targets += remotes
            targets.append(Target("llama.cpp router mode", router_url, "tiny"))
            if lite:
                targets.append(lite)
            rows = await latency(http, targets, n, max_tokens=4)
    print(latency_table("Added latency, llama.cpp tiny model (4 tokens)", rows, targets[0].name))
    print(loop_delta(rows))
    return rows


async def swap_series(
    http: aiohttp.ClientSession, base: str, a: str, b: str, reps: int
) -> list[float]:
    """TTFT of a streamed request for b right after a served one (a warm)."""
    out = []
    for _ in range(reps):
        await one_request(http, Target("a", base, a), stream=False, max_tokens=2)
        _, _, ttft = await one_request(http, Target("b", base, b), stream=True, max_tokens=4)
        out.append(ttft)
    return out


async def section_swap(
    http: aiohttp.ClientSession, models: dict[str, Path], reps: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    engines = {
        "fake engine": (
            {m: {"cmd": fake_engine_cmd(m)} for m in ("a", "b")},
            "a",
            "b",
        ),
        "llama.cpp (smollm2 → tiny)": (
            {m: {"cmd": llama_cmd(models[m], m)} for m in ("smollm2", "tiny")},
            "smollm2",
            "tiny",
        ),
    }
    rows = ["\n### Cold swap: time to first token for a request that needs the other model\n",
            "| engine | by hand: stop A, start B, first token (ms) | of which stopping A (ms) "
            "| swapyard (ms) | "
            "swapyard added, median (IQR) ms | llama.cpp router mode (ms) "
            "| router added, median (IQR) ms |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, (models_cfg, a, b) in engines.items():
        HAND_STOP_TIMES.clear()
        raw = {"server": {"loading_status": "off"}, "models": models_cfg}
        cfg = load_config(json.dumps(raw))
        a_cmd = list(cfg.models[a].cmd)
        b_cmd = list(cfg.models[b].cmd)
        hand: list[float] = []
        sy: list[float] = []
        rt: list[float] = []
        async with contextlib.AsyncExitStack() as stack:
            srv = await stack.enter_async_context(swapyard_server(http, raw))
            router_url = None
            if label.startswith("llama.cpp"):
                router_url = await stack.enter_async_context(
                    llama_router(http, {a: models[a], b: models[b]})
                )
            for _ in range(reps):
                # interleave the ways so drift hits all of them alike
                hand.append(await _hand_swap_ttft(http, a_cmd, b_cmd, b))
                sy += await swap_series(http, srv.url + "/v1", a, b, 1)
                if router_url is not None:
                    rt += await swap_series(http, router_url, a, b, 1)
        h, s = statistics.median(hand) * 1000, statistics.median(sy) * 1000
        r = statistics.median(rt) * 1000 if rt else None
        results[label] = {"hand_ms": h, "swapyard_ms": s, "router_ms": r,
                          "hand_all": hand, "swapyard_all": sy, "router_all": rt}  # fmt: skip
        rcell = f"{r:.1f} | {paired(rt, hand)}" if r is not None else "n/a (GGUF only) | n/a"
        stop_ms = statistics.median(HAND_STOP_TIMES) * 1000
        results[label]["hand_stop_ms"] = stop_ms
        rows.append(
            f"| {label} | {h:.1f} | {stop_ms:.1f} | {s:.1f} | {paired(sy, hand)} | {rcell} |"
        )
    print("\n".join(rows))
    return results


async def _hand_swap_ttft(
    http: aiohttp.ClientSession, a_cmd: list[str], b_cmd: list[str], b_model: str
) -> float:
    """By hand: SIGTERM A's group and await its exit, spawn B, poll B's health every
    5 ms, send the request: seconds from the stop to B's first token."""
    pa = free_port()
    a_proc = await _spawn([x.replace("${PORT}", str(pa)) for x in a_cmd])
    await wait_http(http, f"http://127.0.0.1:{pa}/health")
    a_model = "a" if "fake_engine" in " ".join(a_cmd) else a_cmd[a_cmd.index("--alias") + 1]
    # A serves a request first, as it does in the router runs.
    await one_request(
        http, Target("a", f"http://127.0.0.1:{pa}/v1", a_model), stream=False, max_tokens=2
    )
    t0 = time.perf_counter()
    await _stop(a_proc)
    HAND_STOP_TIMES.append(time.perf_counter() - t0)
    return await _hand_start_ttft(http, b_cmd, b_model, t0)


async def _hand_start_ttft(
    http: aiohttp.ClientSession, cmd: list[str], model: str, t0: float
) -> float:
    """By hand: spawn the engine, poll its health every 5 ms, ask it; seconds from
    ``t0`` to the first token."""
    port = free_port()
    proc = await _spawn([x.replace("${PORT}", str(port)) for x in cmd])
    try:
        await wait_http(http, f"http://127.0.0.1:{port}/health")
        t = Target("hand", f"http://127.0.0.1:{port}/v1", model)
        req_start = time.perf_counter()
        _, _, ttft = await one_request(http, t, stream=True, max_tokens=4)
        return (req_start - t0) + ttft
    finally:
        await _stop(proc)


async def section_cold(
    http: aiohttp.ClientSession, models: dict[str, Path], reps: int
) -> dict[str, Any]:
    """Nothing loaded; one streamed request: time to first token, swapyard and the
    llama.cpp router against spawning the engine by hand."""
    cases = {
        "fake engine": ("m", {"cmd": fake_engine_cmd("m")}),
        "llama.cpp tiny": ("tiny", {"cmd": llama_cmd(models["tiny"], "tiny")}),
        "llama.cpp smollm2": ("smollm2", {"cmd": llama_cmd(models["smollm2"], "smollm2")}),
    }
    rows = ["\n### Cold start: nothing loaded, time to first token of one streamed request\n",
            "| engine | by hand: spawn, poll health /5 ms, ask (ms) | swapyard (ms) | "
            "swapyard added, median (IQR) ms | llama.cpp router mode (ms) "
            "| router added, median (IQR) ms |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    results: dict[str, Any] = {}
    for label, (mid, mcfg) in cases.items():
        raw = {"server": {"loading_status": "off"}, "models": {mid: mcfg}}
        cmd = list(load_config(json.dumps(raw)).models[mid].cmd)
        hand: list[float] = []
        sy: list[float] = []
        rt: list[float] = []
        for _ in range(reps):
            hand.append(await _hand_start_ttft(http, cmd, mid, time.perf_counter()))
            async with swapyard_server(http, raw) as srv:
                _, _, ttft = await one_request(
                    http, Target("s", srv.url + "/v1", mid), stream=True, max_tokens=4
                )
                sy.append(ttft)
            if mid in models:
                async with llama_router(http, {mid: models[mid]}) as url:
                    _, _, ttft = await one_request(
                        http, Target("r", url, mid), stream=True, max_tokens=4
                    )
                    rt.append(ttft)
        h, sv = statistics.median(hand) * 1000, statistics.median(sy) * 1000
        r = statistics.median(rt) * 1000 if rt else None
        results[label] = {"hand_ms": h, "swapyard_ms": sv, "router_ms": r,
                          "hand_all": hand, "swapyard_all": sy, "router_all": rt}  # fmt: skip
        rcell = f"{r:.1f} | {paired(rt, hand)}" if r is not None else "n/a (GGUF only) | n/a"
        rows.append(f"| {label} | {h:.1f} | {sv:.1f} | {paired(sy, hand)} | {rcell} |")
    print("\n".join(rows))
    return results


async def survives(
    http: aiohttp.ClientSession, base: str, long_model: str, other: str
) -> dict[str, Any]:
    """Stream a long answer from long_model; after 5 chunks ask other. Did it finish?"""
    body = {"model": long_model, "messages": PROMPT, "max_tokens": 200, "stream": True,
            "temperature": 0, "ignore_eos": True}  # fmt: skip
    await one_request(http, Target("w", base, long_model), stream=False, max_tokens=2)
    chunks = 0
    done = finished = False
    other_task: asyncio.Task[Any] | None = None
    error = ""
    try:
        async with http.post(base + "/chat/completions", json=body) as r:
            buf = b""
            async for chunk in r.content.iter_any():
                buf += chunk
                chunks = buf.count(b"data: ")
                if chunks >= 5 and other_task is None:
                    other_task = asyncio.ensure_future(
                        one_request(http, Target("o", base, other), stream=False, max_tokens=2)
                    )
            done = b"data: [DONE]" in buf
            finished = b'"finish_reason":"length"' in buf.replace(b'": "', b'":"')
    except aiohttp.ClientError as exc:
        error = repr(exc)
    other_ok = False
    if other_task is not None:
        try:
            await other_task
            other_ok = True
        except Exception as exc:
            error = error or repr(exc)
    return {"chunks": chunks, "done": done, "finished": finished, "other_ok": other_ok,
            "error": error}  # fmt: skip


async def section_survival(http: aiohttp.ClientSession, models: dict[str, Path]) -> dict[str, Any]:
    cfg = {"server": {"loading_status": "off"}, "models": {
        m: {"cmd": llama_cmd(models[m], m)} for m in ("smollm2", "tiny")}}  # fmt: skip
    out: dict[str, Any] = {}
    async with swapyard_server(http, cfg) as srv:
        out["swapyard"] = await survives(http, srv.url + "/v1", "smollm2", "tiny")
    async with llama_router(http, {m: models[m] for m in ("smollm2", "tiny")}) as url:
        out["llama.cpp router mode"] = await survives(http, url, "smollm2", "tiny")
    rows = ["\n### Does a running answer survive a request for another model?\n",
            "| router | answer complete | SSE chunks received | other request served | note |",
            "|---|---|---|---|---|"]  # fmt: skip
    for name, r in out.items():
        ok = "yes" if r["done"] and r["finished"] else "**no, cut**"
        rows.append(f"| {name} | {ok} | {r['chunks']} | {'yes' if r['other_ok'] else 'no'} | "
                    f"{r['error'][:80]} |")  # fmt: skip
    rows.append("| LiteLLM proxy | n/a: no swapping (both engines must already run) | | | |")
    print("\n".join(rows))
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--swaps", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default="fake,llama,cold,swap,survival")
    args = ap.parse_args()
    only = set(args.only.split(","))
    models = ensure_default_models()
    res: dict[str, Any] = {"cpu_count": os.cpu_count(), "llama_server": LLAMA_SERVER,
                           "when": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as http:
        if "fake" in only:
            res["fake"] = await section_fake(http, args.requests)
        if "llama" in only:
            res["llama"] = await section_llama(http, models, args.requests)
        if "cold" in only:
            res["cold"] = await section_cold(http, models, args.swaps)
        if "swap" in only:
            res["swap"] = await section_swap(http, models, args.swaps)
        if "survival" in only:
            res["survival"] = await section_survival(http, models)
    print(
        "\nllama-swap: not measured here: the Go module proxy refuses "
        "github.com/mostlygeek/llama-swap (403), so it cannot be installed on this machine."
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
