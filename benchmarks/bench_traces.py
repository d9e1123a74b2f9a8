"""Replay traffic shapes against swapyard and llama-swap, side by side, in one run.

    python benchmarks/bench_traces.py [--shapes 1,2,3,4,5,6] [--engines fake,llama]
        [--targets batch,fifo,llama-swap,llama-swap-best] [--scale 1] [--size 1]
        [--seed 1] [--out traces.md] [--llama-swap PATH]

Each shape is a seeded, deterministic trace of client scripts, replayed against
every target in turn (one at a time, the same engines and memory for all):

- ``batch``, ``fifo``: ``swapyard serve`` as its own process with
  ``scheduler.policy`` set and every other scheduler setting at its default; a
  declared device of ``fit`` GiB + 512 MiB and ``memory: 1GiB`` per model, so
  exactly ``fit`` models fit.
- ``llama-swap``: its default config, every model listed on its own and nothing
  else, so one model runs at a time.
- ``llama-swap-best``: the best config a user would write for the same memory.
  With room for ``fit`` > 1 models: the ``matrix`` router (groups cannot say
  "any 2 of 3": a group either swaps its members one at a time or holds them all)
  with one set per combination of ``fit`` models, and ``evict_costs`` set to
  each model's load time (in tenths of a second), as its own example does for a
  slow cold start, so that the solver keeps the slow model and evicts a fast
  one. Shape 3 thus keeps the orchestrator loaded and swaps the sub-agents
  beside it (what a ``persistent`` group for O and a swapping group for S1/S2
  would also do); shapes 4 and 6 may run any pair. With room for one model only,
  one at a time is all there is to write. In both cases ``concurrencyLimit:
  1000``: llama-swap answers 429 to an 11th request admitted for one model
  (queued or served, default limit 10), and a user who saw that would raise it.
  No ``ttl`` (unloading an idle model can only add loads when memory is what
  limits) and no ``sendLoadingState`` (it would add chunks to the answers).
  llama-swap checks a starting engine's health 250 ms after the spawn and then
  once a second; that is its behaviour and it is not scaled with ``--scale``.

Engines (``--engines``): ``fake`` runs swapyard's fake engine with a load delay
per model (seconds at ``--scale 1``, below) and 50 tokens/s; ``llama`` runs
llama-server with the two default models (shapes 1, 2 and 5 only: A = smollm2,
B = tiny; real load times, ~0.3 s). Every engine command is wrapped in
``sh -c 'echo MODEL >> FILE; exec CMD'``, so engine starts are counted the same
way for every target.

Every request is a chat completion with ``max_tokens`` (llama-server also gets
``ignore_eos``, so answers have that length) and an ``X-Session-Id`` naming its
client. ``--scale`` multiplies load times, think times, arrival times and answer
lengths (tokens, at least 2); swapyard's own scheduler constants (``min_residency``
8 s, ``assumed_load`` 5 s, ``max_wait`` 60 s) and llama-swap's 1 s health poll stay
as they are, so below ``--scale 1`` both are measured against a trace they were not
tuned for. ``--size`` multiplies the number of requests (turns, rounds).

The shapes (figures at ``--scale 1 --size 1``; "ask" = send and wait for the
answer, closed loop; "at t" = send at t seconds after the start whatever else is
pending, open loop):

1. One person in Open WebUI (session ``person``), models a (4 s load) and b
   (8 s), memory for one. Visits a, b, a; 3 turns each; a turn: ask a streamed
   200-token chat, then in the background (not awaited, same session) a 12-token
   title and a 24-token tags request, non-streamed, while the person thinks
   4-12 s before the next turn. The first chat of the 2nd and 3rd visits is a
   switch: its time to first token is reported against doing it by hand (SIGTERM
   the old engine after it has answered and await its exit, spawn the new one,
   poll its /health every 5 ms, ask; median of 3 per direction); overhead =
   switch - by hand.
2a. Two agents, memory for one, a and b (5 s loads): ``agent-1`` asks a,
   ``agent-2`` asks b, 8 non-streamed 120-token requests each, 0.5-2 s of tool
   time between them.
2b. One agent (``agent``) alternating a, b, a, b ... 12 requests, as above.
3. Orchestrator: o (20 s load), s1 and s2 (4 s), memory for two. 5 rounds: the
   orchestrator asks o (streamed, 150 tokens), then asks 4 sub-agents at once
   (sessions ``sub-agent-1..4``, 100 tokens, non-streamed; at least one on s1 and
   one on s2, the rest drawn) and waits for all.
4. Poisson: m1..m4 (3, 5, 8, 12 s loads), memory for two, 8 clients
   (``client-1..8``), 60 requests at 0.5/s; each goes to a random client, for
   that client's favourite model (m1..m4 in turn) 70 % of the time, else any;
   64/128/256 tokens, streamed half the time. Open loop.
5. Long stream: a (6 s), b (3 s), memory for one. ``writer`` asks a for a
   1500-token streamed answer (30 s) at t=0; ``pinger`` sends a 16-token
   request for b at t=1, 2, ... 30 s. Cut streams are counted (a stream that ends
   without ``data: [DONE]``, carries an error, or breaks).
6. The mixed trace: m1..m3 (1.5 s loads), memory for two, 6 clients, 150
   requests: a seeded sequence of models with exactly 138 changes between
   consecutive requests; client i (``client-i``) asks requests i, i+6, i+12, ...
   of it in a closed loop (32/64/128 tokens, non-streamed, 0-1 s think time).

The table: latency (send to last byte) p50/p95/max in seconds over the answered
requests (errors and cut streams are left out of them and counted apart), engine
starts, and wall time (start to the last answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import os
import random
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_peers import PEERS
from bench_router import (
    LLAMA_SERVER,
    _hand_start_ttft,
    _spawn,
    _stop,
    free_port,
    llama_cmd,
    pct,
    swapyard_server,
    wait_http,
)

from swapyard.defaults import ensure_default_models
from swapyard.testing import fake_engine_cmd

TARGETS = ("batch", "fifo", "llama-swap", "llama-swap-best")
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]
TOKENS_PER_SECOND = 50.0


# -- traces ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    model: str
    max_tokens: int
    stream: bool = False
    session: str | None = None  # None: the client's own name
    label: str = ""  # "switch": the first chat after a change of model (shape 1)


@dataclass(frozen=True)
class Send:
    """Send ``reqs`` together; with ``wait`` go on once all are answered (closed
    loop), else leave them running (background, open loop). ``at``: not before
    this many seconds after the trace started."""

    reqs: tuple[Req, ...]
    wait: bool = True
    at: float | None = None


@dataclass(frozen=True)
class Think:
    seconds: float


@dataclass(frozen=True)
class Client:
    name: str  # its X-Session-Id
    steps: tuple[Send | Think, ...]


@dataclass(frozen=True)
class Shape:
    key: str
    title: str
    loads: dict[str, float]  # model -> the fake engine's load delay, scaled
    fit: int  # how many of the models the memory holds
    clients: tuple[Client, ...]
    llama: dict[str, str] = field(default_factory=dict)  # model -> default model to run it


@dataclass(frozen=True)
class Knobs:
    scale: float = 1.0
    size: float = 1.0

    def t(self, seconds: float) -> float:
        return seconds * self.scale

    def tokens(self, n: int) -> int:
        return max(2, round(n * self.scale))

    def n(self, count: int) -> int:
        return max(1, round(count * self.size))


def ask(*reqs: Req) -> Send:
    return Send(reqs)


def one_person(rng: random.Random, k: Knobs) -> Shape:
    steps: list[Send | Think] = []
    for visit, m in enumerate("aba"):
        for turn in range(k.n(3)):
            label = "switch" if visit and not turn else ""
            steps.append(ask(Req(m, k.tokens(200), stream=True, label=label)))
            steps.append(Send((Req(m, k.tokens(12)), Req(m, k.tokens(24))), wait=False))
            steps.append(Think(k.t(rng.uniform(4, 12))))
    return Shape("1", "one person (chat, title, tags), a→b→a", {"a": k.t(4), "b": k.t(8)}, 1,
                 (Client("person", tuple(steps[:-1])),), {"a": "smollm2", "b": "tiny"})  # fmt: skip


def _agent(rng: random.Random, k: Knobs, models: str, n: int) -> tuple[Send | Think, ...]:
    steps: list[Send | Think] = []
    for i in range(n):
        steps += [ask(Req(models[i % len(models)], k.tokens(120))), Think(k.t(rng.uniform(0.5, 2)))]
    return tuple(steps[:-1])


def two_agents(rng: random.Random, k: Knobs) -> Shape:
    clients = (Client("agent-1", _agent(rng, k, "a", k.n(8))),
               Client("agent-2", _agent(rng, k, "b", k.n(8))))  # fmt: skip
    return Shape("2a", "two agents, a and b", {"a": k.t(5), "b": k.t(5)}, 1, clients,
                 {"a": "smollm2", "b": "tiny"})  # fmt: skip


def alternating_agent(rng: random.Random, k: Knobs) -> Shape:
    clients = (Client("agent", _agent(rng, k, "ab", k.n(12))),)
    return Shape("2b", "one agent, a b a b …", {"a": k.t(5), "b": k.t(5)}, 1, clients,
                 {"a": "smollm2", "b": "tiny"})  # fmt: skip


def orchestrator(rng: random.Random, k: Knobs) -> Shape:
    steps: list[Send | Think] = []
    for _ in range(k.n(5)):
        steps.append(ask(Req("o", k.tokens(150), stream=True)))
        subs = ["s1", "s2"] + [rng.choice(("s1", "s2")) for _ in range(2)]
        rng.shuffle(subs)
        steps.append(ask(*(Req(m, k.tokens(100), session=f"sub-agent-{j + 1}")
                           for j, m in enumerate(subs))))  # fmt: skip
    loads = {"o": k.t(20), "s1": k.t(4), "s2": k.t(4)}
    return Shape("3", "orchestrator o, fan-out to s1/s2", loads, 2,
                 (Client("orchestrator", tuple(steps)),))  # fmt: skip


def poisson(rng: random.Random, k: Knobs) -> Shape:
    models = ("m1", "m2", "m3", "m4")
    steps: list[list[Send | Think]] = [[] for _ in range(8)]
    t = 0.0
    for _ in range(k.n(60)):
        t += rng.expovariate(0.5)
        c = rng.randrange(8)
        m = models[c % 4] if rng.random() < 0.7 else rng.choice(models)
        req = Req(m, k.tokens(rng.choice((64, 128, 256))), stream=rng.random() < 0.5)
        steps[c].append(Send((req,), wait=False, at=k.t(t)))
    loads = {m: k.t(s) for m, s in zip(models, (3, 5, 8, 12), strict=True)}
    clients = tuple(Client(f"client-{i + 1}", tuple(s)) for i, s in enumerate(steps) if s)
    return Shape("4", "Poisson, 8 clients, 4 models", loads, 2, clients)


def long_stream(rng: random.Random, k: Knobs) -> Shape:
    writer = Client("writer", (ask(Req("a", k.tokens(1500), stream=True)),))
    pings = tuple(
        Send((Req("b", k.tokens(16)),), wait=False, at=k.t(1 + i)) for i in range(k.n(30))
    )
    return Shape("5", "long stream on a, short requests for b", {"a": k.t(6), "b": k.t(3)}, 1,
                 (writer, Client("pinger", pings)), {"a": "smollm2", "b": "tiny"})  # fmt: skip


def mixed(rng: random.Random, k: Knobs) -> Shape:
    models = ("m1", "m2", "m3")
    n = k.n(150)
    changes = round(138 * (n - 1) / 149)
    same = set(rng.sample(range(1, n), n - 1 - changes))
    seq = [rng.choice(models)]
    for i in range(1, n):
        seq.append(seq[-1] if i in same else rng.choice([m for m in models if m != seq[-1]]))
    clients = []
    for c in range(6):
        steps: list[Send | Think] = []
        for m in seq[c::6]:
            steps += [ask(Req(m, k.tokens(rng.choice((32, 64, 128))))), Think(k.t(rng.random()))]
        clients.append(Client(f"client-{c + 1}", tuple(steps[:-1])))
    title = f"mixed, 6 clients, {changes} model changes"
    return Shape("6", title, {m: k.t(1.5) for m in models}, 2, tuple(clients))


SHAPES: dict[str, Callable[[random.Random, Knobs], Shape]] = {
    "1": one_person, "2a": two_agents, "2b": alternating_agent, "3": orchestrator,
    "4": poisson, "5": long_stream, "6": mixed,
}  # fmt: skip


# -- replay and measurement --------------------------------------------------------------


@dataclass
class Answer:
    client: str
    model: str
    label: str
    stream: bool
    start: float  # seconds since the trace started
    first: float = 0.0  # first content token (streamed), else the whole answer
    end: float = 0.0
    error: str = ""
    cut: bool = False  # a stream that began and did not end with [DONE]

    @property
    def latency(self) -> float:
        return self.end - self.start


_CONTENT = re.compile(rb'"content": ?"[^"]')
_ERROR = re.compile(rb'data: ?\{"error"')


async def send(http: aiohttp.ClientSession, base: str, session: str, req: Req, t0: float) -> Answer:
    body: dict[str, Any] = {"model": req.model, "messages": PROMPT, "max_tokens": req.max_tokens,
                            "temperature": 0, "ignore_eos": True, "stream": req.stream}  # fmt: skip
    a = Answer(session, req.model, req.label, req.stream, time.perf_counter() - t0)
    began = False
    try:
        headers = {"X-Session-Id": session}
        async with http.post(base + "/v1/chat/completions", json=body, headers=headers) as r:
            if r.status != 200:
                a.error = f"HTTP {r.status}"
                await r.read()
            elif not req.stream:
                await r.read()
            else:
                began = True
                head, tail, error = b"", b"", False
                async for chunk in r.content.iter_any():
                    if not a.first:
                        head += chunk
                        if _CONTENT.search(head):
                            a.first = time.perf_counter() - t0
                    error = error or bool(_ERROR.search(tail[-16:] + chunk))
                    tail = (tail + chunk)[-64:]
                a.cut = error or b"data: [DONE]" not in tail
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        a.cut, a.error = began, "" if began else type(exc).__name__
    a.end = time.perf_counter() - t0
    a.first = a.first or a.end
    return a


async def play(http: aiohttp.ClientSession, base: str, clients: tuple[Client, ...]) -> list[Answer]:
    """Run every client's script at once; the answers, timed from one start."""
    t0 = time.perf_counter()

    async def run(c: Client) -> list[Answer]:
        done: list[Answer] = []
        background: list[asyncio.Task[Answer]] = []
        for step in c.steps:
            if isinstance(step, Think):
                await asyncio.sleep(step.seconds)
                continue
            if step.at is not None:
                await asyncio.sleep(max(0.0, t0 + step.at - time.perf_counter()))
            tasks = [asyncio.ensure_future(send(http, base, r.session or c.name, r, t0))
                     for r in step.reqs]  # fmt: skip
            if step.wait:
                done += await asyncio.gather(*tasks)
            else:
                background += tasks
        return done + list(await asyncio.gather(*background))

    return [a for got in await asyncio.gather(*(run(c) for c in clients)) for a in got]


# -- targets -----------------------------------------------------------------------------


def counted(cmd: str, model: str, starts: Path) -> str:
    """``cmd`` that first appends its model to ``starts``: one line per engine start,
    whichever router started it."""
    return "sh -c " + shlex.quote(f"echo {model} >> {shlex.quote(str(starts))}; exec {cmd}")


def engine_cmds(shape: Shape, engines: str, starts: Path, gguf: dict[str, Path]) -> dict[str, str]:
    out = {}
    for m, load in shape.loads.items():
        cmd = (
            fake_engine_cmd(m, load_delay=round(load, 3), tokens_per_second=TOKENS_PER_SECOND)
            if engines == "fake"
            else llama_cmd(gguf[shape.llama[m]], m)
        )
        out[m] = counted(cmd, m, starts)
    return out


def swapyard_config(shape: Shape, cmds: dict[str, str], policy: str) -> dict[str, Any]:
    return {
        "server": {"loading_status": "off"},
        "devices": {"gpu0": {"memory": f"{shape.fit * 1024 + 512}MiB"}},
        "scheduler": {"policy": policy},
        "models": {m: {"cmd": cmd, "memory": "1GiB"} for m, cmd in cmds.items()},
    }


def best_routing(shape: Shape) -> dict[str, Any] | None:
    """llama-swap's ``routing`` for the best config: a matrix of every combination
    of ``shape.fit`` models, evicting the quickest to reload (module docstring)."""
    if shape.fit < 2:
        return None
    combos = itertools.combinations(shape.loads, shape.fit)
    sets = {f"fit{i + 1}": " & ".join(c) for i, c in enumerate(combos)}
    costs = {m: max(1, round(load * 10)) for m, load in shape.loads.items()}
    matrix = {"evict_costs": costs, "sets": sets}
    return {"router": {"use": "matrix", "settings": {"matrix": matrix}}}


def llama_swap_config(shape: Shape, cmds: dict[str, str], best: bool) -> dict[str, Any]:
    """Its default (each model on its own: one at a time), or the best a user would
    write for ``shape.fit`` models (see the module docstring)."""
    models: dict[str, Any] = {}
    for m, cmd in cmds.items():
        port = free_port()
        models[m] = {"cmd": cmd.replace("${PORT}", str(port)), "proxy": f"http://127.0.0.1:{port}"}
        if best:
            models[m]["concurrencyLimit"] = 1000
    cfg: dict[str, Any] = {"models": models}
    if best and (routing := best_routing(shape)):
        cfg["routing"] = routing
    return cfg


@contextlib.asynccontextmanager
async def llama_swap(
    http: aiohttp.ClientSession, binary: str, cfg: dict[str, Any]
) -> AsyncIterator[str]:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "config.yaml").write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    url = f"http://127.0.0.1:{free_port()}"
    proc = await _spawn([binary, "-config", str(tmp / "config.yaml"),
                         "-listen", url.removeprefix("http://")])  # fmt: skip
    try:
        await wait_http(http, url + "/v1/models", every=0.02)
        yield url
    finally:
        await _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def target(
    http: aiohttp.ClientSession, name: str, shape: Shape, cmds: dict[str, str], binary: str
) -> AsyncIterator[str]:
    if name in ("batch", "fifo"):
        async with swapyard_server(http, swapyard_config(shape, cmds, name)) as srv:
            yield srv.url
    else:
        cfg = llama_swap_config(shape, cmds, best=name == "llama-swap-best")
        async with llama_swap(http, binary, cfg) as url:
            yield url


@dataclass
class Row:
    shape: Shape
    engines: str
    target: str
    answers: list[Answer]
    starts: int

    def cells(self) -> list[str]:
        ok = [a.latency for a in self.answers if not a.error and not a.cut]
        errors = [a.error for a in self.answers if a.error]
        kinds = ", ".join(f"{e}×{errors.count(e)}" for e in sorted(set(errors)))
        cut = sum(a.cut for a in self.answers)
        lat = ["-"] * 3
        if ok:
            lat = [f"{statistics.median(ok):.2f}", f"{pct(ok, 0.95):.2f}", f"{max(ok):.2f}"]
        wall = max(a.end for a in self.answers)
        return [f"{self.shape.key}. {self.shape.title}", self.engines, self.target,
                str(len(self.answers)), *lat, str(self.starts), f"{wall:.1f}",
                f"{len(errors)}{f' ({kinds})' if kinds else ''} / {cut}"]  # fmt: skip


async def run_target(
    http: aiohttp.ClientSession, shape: Shape, engines: str, name: str, binary: str,
    gguf: dict[str, Path],
) -> Row:  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        starts = Path(tmp) / "starts"
        starts.touch()
        cmds = engine_cmds(shape, engines, starts, gguf)
        async with target(http, name, shape, cmds, binary) as url:
            answers = await play(http, url, shape.clients)
        return Row(shape, engines, name, answers, len(starts.read_text().split()))


# -- shape 1: the switch against doing it by hand ----------------------------------------


async def by_hand(http: aiohttp.ClientSession, cmds: dict[str, str], old: str, new: str) -> float:
    """SIGTERM ``old``'s engine after it has answered and await its exit, spawn
    ``new``'s, poll its /health every 5 ms, ask: seconds from the stop to the first
    token."""
    port = free_port()
    proc = await _spawn([x.replace("${PORT}", str(port)) for x in shlex.split(cmds[old])])
    try:
        await wait_http(http, f"http://127.0.0.1:{port}/health")
        await send(http, f"http://127.0.0.1:{port}", "by-hand", Req(old, 4), time.perf_counter())
    except BaseException:
        await _stop(proc)
        raise
    t0 = time.perf_counter()
    await _stop(proc)
    return await _hand_start_ttft(http, shlex.split(cmds[new]), new, t0)


def switches(shape: Shape) -> list[tuple[str, str]]:
    seq = [r.model for c in shape.clients for s in c.steps if isinstance(s, Send) for r in s.reqs]
    return [(a, b) for a, b in itertools.pairwise(seq) if a != b]


def switch_rows(row: Row, hand: dict[tuple[str, str], float]) -> list[list[str]]:
    out, prev = [], ""
    for a in sorted(row.answers, key=lambda a: a.start):
        if a.label == "switch":
            ttft, base = a.first - a.start, hand[(prev, a.model)]
            over = f"{(ttft - base) * 1000:+.0f}" if not (a.error or a.cut) else "-"
            lat = f"{ttft:.3f}" + (f" ({a.error or 'cut'})" if over == "-" else "")
            out.append([row.engines, row.target, f"{prev}→{a.model}", lat, f"{base:.3f}", over])
        prev = a.model
    return out


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


async def by_hand_baseline(
    http: aiohttp.ClientSession, shape: Shape, engines: str, gguf: dict[str, Path]
) -> dict[tuple[str, str], float]:
    """Median of 3 switches by hand for each change of model in ``shape``."""
    hand = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = engine_cmds(shape, engines, Path(tmp) / "starts", gguf)
        for old, new in sorted(set(switches(shape))):
            hand[(old, new)] = statistics.median(
                [await by_hand(http, cmds, old, new) for _ in range(3)]
            )
    return hand


async def run_all(
    args: argparse.Namespace, shapes: list[Shape], engines: list[str], targets: list[str]
) -> tuple[list[Row], list[list[str]]]:
    """Every shape against every target, one at a time; the rows, and shape 1's switches."""
    gguf = ensure_default_models() if "llama" in engines else {}
    rows: list[Row] = []
    switch_table: list[list[str]] = []
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        for shape in shapes:
            for kind in engines:
                if kind == "llama" and not shape.llama:
                    continue
                hand = await by_hand_baseline(http, shape, kind, gguf) if shape.key == "1" else {}
                for name in targets:
                    row = await run_target(http, shape, kind, name, args.llama_swap, gguf)
                    print("| " + " | ".join(row.cells()) + " |", file=sys.stderr, flush=True)
                    rows.append(row)
                    switch_table += switch_rows(row, hand) if hand else []
    return rows, switch_table


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--shapes", default="1,2,3,4,5,6", help="2 means 2a and 2b")
    ap.add_argument("--engines", default="fake,llama")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--scale", type=float, default=1.0, help="load/think/arrival times, tokens")
    ap.add_argument("--size", type=float, default=1.0, help="number of requests")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the tables here")
    found = sorted(glob.glob(str(PEERS / "llama-swap-*")))
    ap.add_argument("--llama-swap", default=found[-1] if found else "")
    args = ap.parse_args()
    wanted = args.shapes.split(",")
    knobs = Knobs(args.scale, args.size)
    shapes = [build(random.Random(f"{args.seed}-{key}"), knobs) for key, build in SHAPES.items()
              if key in wanted or key.rstrip("ab") in wanted]  # fmt: skip
    targets = [t for t in args.targets.split(",") if t]
    if bad := set(targets) - set(TARGETS):
        raise SystemExit(f"unknown targets {sorted(bad)}; choose from {', '.join(TARGETS)}")
    if any(t.startswith("llama-swap") for t in targets) and not os.access(args.llama_swap, os.X_OK):
        raise SystemExit(f"no llama-swap binary at {args.llama_swap!r} (see bench_peers.py)")
    engines = args.engines.split(",")
    if "llama" in engines and not os.access(LLAMA_SERVER, os.X_OK):
        print(f"no llama-server at {LLAMA_SERVER}: llama engines skipped", file=sys.stderr)
        engines.remove("llama")
    load = os.getloadavg()[0]
    rows, switch_table = await run_all(args, shapes, engines, targets)
    head = ["shape", "engines", "target", "requests", "p50 s", "p95 s", "max s",
            "engine starts", "wall s", "errors / cut streams"]  # fmt: skip
    out = [f"Traces: seed {args.seed}, --scale {args.scale:g}, --size {args.size:g}, "
           f"{time.strftime('%Y-%m-%d %H:%M')}, load average at start {load:.2f}\n",
           markdown(head, [r.cells() for r in rows])]  # fmt: skip
    if "llama-swap-best" in targets:
        out.append("\nllama-swap-best: `concurrencyLimit: 1000` on every model, and `routing`:\n")
        for sh in shapes:
            routing = best_routing(sh)
            out.append(
                f"- {sh.key}: "
                + (f"`{json.dumps(routing)}`" if routing else "none (memory for one)")
            )
    if switch_table:
        head = ["engines", "target", "switch", "latency s", "by hand s", "overhead ms"]
        out += ["\nShape 1, switches: time to first token of the first chat on the new model\n",
                markdown(head, switch_table)]  # fmt: skip
    print("\n".join(out))
    if args.out:
        args.out.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
