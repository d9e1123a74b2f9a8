"""Several hosts behind one endpoint (issue 15): what a front swapyard adds, and
how long a dead or hung peer interrupts its clients.

    python benchmarks/bench_hosts.py [--requests 300] [--reps 5] [--timeout 2]
                                     [--only latency,failover] [--json out.json]

Every swapyard is ``swapyard serve`` as its own process, on its own loopback
address standing for its own machine: peers on 127.0.0.2 and 127.0.0.3, the
front on 127.0.0.1 with ``peers:`` naming them.

1. Added latency. One fake engine (8 tokens, a million tokens/s) is owned by the
   peer on 127.0.0.2 and listens there; it is asked directly, through that peer,
   and through the front. Each round asks every target once, in a new seeded
   order, non-streamed and then streamed (time to the first byte). "Added" is
   against the row before it, in the same run: the peer's own cost, then the
   front's (its hop to the peer included).
2. Failover. Two peers serve the same model, both ready, the front before them;
   one client sends short non-streamed requests back to back. With one request
   at a time the replicas tie on queue and the first peer in config order gets
   every request, so the peer that served the last one is the one taken away:
   SIGKILL to each process group of that host (its swapyard and its engines, as
   when the machine dies), or SIGSTOP to them (a hung host: its sockets open,
   nothing answering; found by the front's ``/health`` probe within about
   2 × ``timeout``). Per event: the requests that failed; those still open when
   the host came back (a hung host is resumed after ``HANG_CAP`` s without a good
   answer); the time from the event to the first good answer to a request sent
   after it (and after the last failure); the longest request; when and why the
   front marked the host down (its ``/api/models``, polled every 25 ms); and once
   the host is back (restarted on the same port, or SIGCONT) how long until the
   front sends it requests again. The events come in a seeded order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_router import Target, latency, paired

from swapyard.ports import PortAllocator
from swapyard.testing import fake_engine_cmd

TAG = "SWAPYARD_BENCH_HOSTS"
FRONT, B, C = "127.0.0.1", "127.0.0.2", "127.0.0.3"
TOKENS = 8
FAST = {"tokens_per_second": 1e6}
HANG_CAP = 30.0  # a request still open this long after the event is left hanging
SHORT = {"model": "shared", "max_tokens": 4, "temperature": 0,
         "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip


# -- hosts ---------------------------------------------------------------------------------


class Host:
    """One ``swapyard serve`` and every process it started (marked by ``TAG`` in
    their environment, which engines inherit)."""

    def __init__(self, name: str, addr: str, port: int, tmp: Path) -> None:
        self.name, self.addr, self.port, self.tmp = name, addr, port, tmp
        self.url = f"http://{addr}:{port}"
        self.tag = f"{name}-{uuid.uuid4().hex[:8]}"
        self.proc: asyncio.subprocess.Process | None = None

    def groups(self) -> set[int]:
        """The process groups of this host's live processes (swapyard's own, and
        each engine's: engines run in their own sessions)."""
        mark = f"{TAG}={self.tag}".encode()
        out = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        out.add(os.getpgid(int(entry.name)))
        return out

    def signal(self, sig: signal.Signals) -> None:
        for pgid in self.groups():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)

    async def start(self, http: aiohttp.ClientSession, doc: dict[str, Any]) -> None:
        """Serve ``doc`` (plus this host's address, port and data dir) until it
        answers ``/health`` with every preloaded model ready."""
        self.tag = f"{self.name}-{uuid.uuid4().hex[:8]}"
        data = self.tmp / f"data-{self.name}"
        cfg = self.tmp / f"{self.name}.yaml"
        cfg.write_text(json.dumps({"usage": {"path": str(data / "usage.db")}, **doc}))
        env = {**os.environ, TAG: self.tag, "SWAPYARD_DATA_DIR": str(data)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swapyard", "serve", "-c", str(cfg),
            "--host", self.addr, "--port", str(self.port), env=env, start_new_session=True,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.perf_counter() + 60
        while time.perf_counter() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(self.url + "/health") as r:
                    h = await r.json()
                if r.status == 200 and all(
                    h["models"][m]["state"] == "ready" for m in doc.get("preload", ())
                ):
                    return
            await asyncio.sleep(0.02)
        raise RuntimeError(f"host {self.name} at {self.url} never got ready")

    async def stop(self) -> None:
        """SIGCONT (it may be stopped), SIGTERM swapyard, SIGKILL whatever is left."""
        self.signal(signal.SIGCONT)
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 20)
        self.signal(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()


def peer_doc(models: dict[str, Any], preload: list[str]) -> dict[str, Any]:
    return {"models": models, "preload": preload}


def front_doc(peers: list[Host], timeout: float) -> dict[str, Any]:
    return {"models": {}, "peers": {h.name: {"url": h.url, "timeout": timeout} for h in peers}}


async def front_view(http: aiohttp.ClientSession, front: Host) -> dict[str, Any]:
    async with http.get(front.url + "/api/models") as r:
        peers: dict[str, Any] = (await r.json())["peers"]
        return peers


async def front_sees(http: aiohttp.ClientSession, front: Host, model: str, *names: str) -> None:
    """Until the front says each named peer is up with ``model`` ready there."""
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, KeyError):
            v = await front_view(http, front)
            if all(v[n]["up"] and v[n]["models"][model]["state"] == "ready" for n in names):
                return
        await asyncio.sleep(0.02)
    raise RuntimeError(f"the front never saw {names} up with {model} ready")


# -- 1. added latency ----------------------------------------------------------------------


async def section_latency(http: aiohttp.ClientSession, tmp: Path, n: int) -> dict[str, Any]:
    port = PortAllocator(B).allocate()
    engine = f"http://{B}:{port}"
    cmd = fake_engine_cmd("fake", host=B, **FAST).replace("${PORT}", str(port))
    peer = Host("b", B, PortAllocator(B).allocate(), tmp)
    front = Host("front", FRONT, PortAllocator(FRONT).allocate(), tmp)
    try:
        await peer.start(http, peer_doc({"fake": {"cmd": cmd, "proxy": engine}}, ["fake"]))
        await front.start(http, front_doc([peer], 2.0))
        await front_sees(http, front, "fake", "b")
        targets = [Target(f"engine, direct ({B})", engine + "/v1", "fake"),
                   Target(f"peer swapyard ({B}) → engine", peer.url + "/v1", "fake"),
                   Target(f"front swapyard ({FRONT}) → peer → engine", front.url + "/v1",
                          "fake")]  # fmt: skip
        rows = await latency(http, targets, n, max_tokens=TOKENS)
    finally:
        await front.stop()
        await peer.stop()
    print(latency_table(rows, n))
    return rows


def latency_table(rows: dict[str, dict[str, Any]], n: int) -> str:
    out = [f"### Added latency of a peer and of the front, fake engine ({TOKENS} tokens, "
           f"{n} requests per target)", "",
           "| target | p50 ms | p99 ms | added p50 ms | added p50, paired ms (IQR) "
           "| TTFB p50 ms | TTFB p99 ms | added TTFB p50 ms | added TTFB, paired ms (IQR) |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    prev: dict[str, Any] | None = None
    for name, r in rows.items():
        p = prev or r
        pair = "—" if prev is None else paired(r["total_all"], p["total_all"], 2)
        tpair = "—" if prev is None else paired(r["ttfb_all"], p["ttfb_all"], 2)
        out.append(
            f"| {name} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
            f"{r['p50_ms'] - p['p50_ms']:+.2f} | {pair} | {r['ttfb_p50_ms']:.2f} | "
            f"{r['ttfb_p99_ms']:.2f} | {r['ttfb_p50_ms'] - p['ttfb_p50_ms']:+.2f} | {tpair} |"
        )
        prev = r
    return "\n".join(out)


# -- 2. failover ---------------------------------------------------------------------------


@dataclass
class Sample:
    sent: float
    done: float
    ok: bool
    host: str
    why: str = ""


@dataclass
class Rep:
    event: str
    victim: str
    requests: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    recovered_s: float | None = None
    longest_s: float = 0.0
    marked_down_s: float | None = None
    down_why: str = ""
    hung_until_back: int = 0
    rejoined_s: float | None = None
    failed_on_return: int = 0


async def client(
    http: aiohttp.ClientSession, url: str, out: list[Sample], stop: asyncio.Event
) -> None:
    """Short non-streamed requests, back to back, until ``stop``."""
    timeout = aiohttp.ClientTimeout(total=60)
    while not stop.is_set():
        t0 = time.perf_counter()
        host, why = "", ""
        try:
            async with http.post(url + "/v1/chat/completions", json=SHORT,
                                 timeout=timeout) as r:  # fmt: skip
                body = await r.read()
                host = r.headers.get("X-Swapyard-Host", "")
                if r.status != 200 or b'"choices"' not in body:
                    why = f"HTTP {r.status}: {body[:160].decode(errors='replace')}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            why = repr(exc)
        out.append(Sample(t0, time.perf_counter(), not why, host, why))


async def until(cond: Any, limit: float, every: float = 0.02) -> bool:
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if cond():
            return True
        await asyncio.sleep(every)
    return False


async def failover_rep(
    http: aiohttp.ClientSession, front: Host, peers: dict[str, Host], doc: dict[str, Any],
    event: str, timeout: float, clients: int,
) -> Rep:  # fmt: skip
    samples: list[Sample] = []
    stop = asyncio.Event()
    loops = [asyncio.ensure_future(client(http, front.url, samples, stop)) for _ in range(clients)]
    try:
        await asyncio.sleep(0.5)
        served = [s.host for s in samples if s.ok]
        if not served or served[-1] not in peers:
            raise RuntimeError(f"no good answer from a peer before the event: {samples[-3:]}")
        victim = peers[served[-1]]
        rep = Rep(event, victim.name)
        t_event = time.perf_counter()
        victim.signal(signal.SIGKILL if event == "SIGKILL" else signal.SIGSTOP)
        # When the front marks it down, polled beside the client.
        down_at: list[float] = []

        async def poll_down() -> None:
            while not down_at:
                with contextlib.suppress(aiohttp.ClientError, OSError, KeyError):
                    v = (await front_view(http, front))[victim.name]
                    if not v["up"]:
                        down_at.append(time.perf_counter())
                        rep.down_why = str(v["error"])
                await asyncio.sleep(0.025)

        poller = asyncio.ensure_future(poll_down())
        # A hung host is found within about 2 × timeout: watch that long at least,
        # so a failure that comes late is not missed; then until a good answer to
        # a request sent after the event, for at most HANG_CAP seconds.
        await asyncio.sleep(1.0 if event == "SIGKILL" else 2 * timeout + 1.0)
        await until(lambda: any(s.ok and s.sent > t_event for s in samples), HANG_CAP)
        await until(lambda: bool(down_at), 10)
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        # Bring it back: the same host restarted on its port, or SIGCONT.
        if event == "SIGKILL":
            assert victim.proc is not None
            await victim.proc.wait()
            await victim.start(http, doc)
        else:
            victim.signal(signal.SIGCONT)
        t_back = time.perf_counter()
        await until(lambda: any(s.host == victim.name and s.sent > t_back for s in samples), 30)
    finally:
        stop.set()
        await asyncio.gather(*loops)
    outage = [s for s in samples if s.done > t_event and s.sent < t_back]
    bad = [s for s in outage if not s.ok]
    after = max([t_event] + [s.done for s in bad])
    good = [s.done for s in outage if s.ok and s.sent > after and s.done < t_back]
    back = [s for s in samples if s.sent > t_back]
    first_b = [s.done for s in back if s.host == victim.name]
    rep.requests = len(outage)
    rep.failed = len(bad)
    rep.errors = [f"{s.done - t_event:.3f} s after: {s.why}" for s in bad]
    rep.recovered_s = min(good) - t_event if good else None
    rep.longest_s = max((s.done - s.sent for s in outage), default=0.0)
    rep.marked_down_s = down_at[0] - t_event if down_at else None
    rep.rejoined_s = min(first_b) - t_back if first_b else None
    rep.failed_on_return = sum(not s.ok for s in back)
    # Open for over a second (answers take milliseconds) and still open when it was back.
    rep.hung_until_back = sum(s.sent < t_back - 1.0 < t_back < s.done for s in outage)
    return rep


async def section_failover(
    http: aiohttp.ClientSession, tmp: Path, reps: int, timeout: float, clients: int
) -> dict[str, Any]:
    doc = peer_doc({"shared": {"cmd": fake_engine_cmd("shared", **FAST)}}, ["shared"])
    peers = {n: Host(n, a, PortAllocator(a).allocate(), tmp) for n, a in (("b", B), ("c", C))}
    front = Host("front", FRONT, PortAllocator(FRONT).allocate(), tmp)
    order = ["SIGKILL", "SIGSTOP"] * reps
    random.Random(15).shuffle(order)
    out: list[Rep] = []
    try:
        for h in peers.values():
            await h.start(http, doc)
        await front.start(http, front_doc(list(peers.values()), timeout))
        for event in order:
            await front_sees(http, front, "shared", *peers)
            rep = await failover_rep(http, front, peers, doc, event, timeout, clients)
            print(f"  {event} {rep.victim}: failed {rep.failed}, hung {rep.hung_until_back}, "
                  f"recovered {fmt_s(rep.recovered_s)} s, longest {rep.longest_s:.3f} s, "
                  f"down after {fmt_s(rep.marked_down_s)} s ({rep.down_why}), "
                  f"rejoined {fmt_s(rep.rejoined_s)} s", file=sys.stderr)  # fmt: skip
            out.append(rep)
    finally:
        await front.stop()
        for h in peers.values():
            await h.stop()
    res = {"timeout_s": timeout, "clients": clients, "reps": [asdict(r) for r in out]}
    print(failover_table(out, timeout, clients))
    return res


def fmt_s(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


def med_max(xs: list[float | None], ms: bool = False) -> str:
    ys = [x for x in xs if x is not None]
    if not ys:
        return "—"
    k, f = (1000, ".0f") if ms else (1, ".3f")
    missing = f" ({len(xs) - len(ys)} none)" if len(ys) < len(xs) else ""
    return f"{statistics.median(ys) * k:{f}} / {max(ys) * k:{f}}{missing}"


def failover_table(reps: list[Rep], timeout: float, clients: int) -> str:
    out = [f"### Failover: one of two replicas taken away ({clients} client(s) back to back, "
           f"peer `timeout` {timeout:g} s, {len(reps) // 2} events each)", "",
           "| event | failed requests (per event) | requests answered only once the host "
           "was back | first good answer after the event, s (median / max) | longest "
           "request, ms (median / max) | front marked it down after, ms (median / max) "
           "| back in use after its return, s (median / max) | failed on its return |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for event in ("SIGKILL", "SIGSTOP"):
        rs = [r for r in reps if r.event == event]
        if not rs:
            continue
        per = ", ".join(str(r.failed) for r in rs)
        hung = ", ".join(str(r.hung_until_back) for r in rs)
        out.append(
            f"| {event} | {sum(r.failed for r in rs)} ({per}) "
            f"| {sum(r.hung_until_back for r in rs)} ({hung}) "
            f"| {med_max([r.recovered_s for r in rs])} "
            f"| {med_max([r.longest_s for r in rs], ms=True)} "
            f"| {med_max([r.marked_down_s for r in rs], ms=True)} "
            f"| {med_max([r.rejoined_s for r in rs])} | {sum(r.failed_on_return for r in rs)} |"
        )
    errors = [f"- {r.event} {r.victim}: {e}" for r in reps for e in r.errors]
    if errors:
        out += ["", "Failed requests:", *errors]
    whys = sorted({(r.event, r.down_why) for r in reps})
    out += ["", "Why the front marked the host down:",
            *(f"- {event}: {why!r}" for event, why in whys)]  # fmt: skip
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(","))
    res: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *sys.argv]),
        "loadavg_before": os.getloadavg(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench-hosts-"))
    async with aiohttp.ClientSession() as http:
        if "latency" in only:
            res["latency"] = await section_latency(http, tmp, args.requests)
            res["loadavg_after_latency"] = os.getloadavg()
        if "failover" in only:
            res["failover"] = await section_failover(
                http, tmp, args.reps, args.timeout, args.clients
            )
    res["loadavg_after"] = os.getloadavg()
    print(f"\nload average (1, 5, 15 min): before {fmt_load(res['loadavg_before'])}, "
          f"after {fmt_load(res['loadavg_after'])}")  # fmt: skip
    return res


def fmt_load(xs: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--requests", type=int, default=300, help="per target, latency section")
    p.add_argument("--reps", type=int, default=5, help="events of each kind, failover section")
    p.add_argument("--timeout", type=float, default=2.0, help="the front's peers' `timeout`")
    p.add_argument("--clients", type=int, default=1, help="client loops, failover section")
    p.add_argument("--only", default="latency,failover")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    res = asyncio.run(run(a))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
