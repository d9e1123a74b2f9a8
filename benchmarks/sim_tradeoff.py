"""The batch policy's ``swap_factor`` against FIFO on the trace suite's shapes, in
virtual time: the real scheduler driven by ``swapyard.testing.simulate`` (engines
that load in the shapes' times, answers at 50 tokens/s, stops of 0.2 s; no
processes, no HTTP, no clocks), so a whole sweep takes a second.

    python benchmarks/sim_tradeoff.py [--factors 0.25,0.5,1,2,3.5] [--seed 1]

The shapes follow ``benchmarks/bench_traces.py`` (2a, 2b, 3, 4, 5, 6; shape 1's
person is one client, whom no policy holds back) as closely as a simulation can:
the same models, load times, memory, request counts, lengths and think times. The
real run, with engines and llama-swap, is bench_traces.py; this one shows what
each setting trades, which is how the default was chosen.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from swapyard.config import SchedulerSpec
from swapyard.scheduler.core import ModelTerms
from swapyard.testing.simulate import Ask, Client, Result, Sim

TPS = 50.0  # the fake engine's speed in the suite


@dataclass
class Shape:
    name: str
    loads: dict[str, float]
    fit: int
    clients: list[Client]
    steps: list[list[Ask]] | None = None  # one closed-loop client sending steps (fan-outs)


def play(shape: Shape, policy: str, **spec: float) -> Result:
    terms = {m: ModelTerms(need=1) for m in shape.loads}
    cfg = SchedulerSpec(policy=policy, **spec)  # type: ignore[arg-type]
    sim = Sim(terms, {"0": shape.fit}, cfg, shape.loads, stop=0.2)
    if shape.steps:
        sim.chain(shape.steps)
    return sim.run(shape.clients)


def shapes(seed: int) -> list[Shape]:
    rng = random.Random(seed)
    out = []
    agents = [
        Client(f"agent-{i}", [Ask(m, 120 / TPS, rng.uniform(0.5, 2.0) if k else 0.0)
                              for k in range(8)])
        for i, m in ((1, "a"), (2, "b"))
    ]  # fmt: skip
    out.append(Shape("2a. two agents, a and b", {"a": 5.0, "b": 5.0}, 1, agents))
    alt = [Ask("ab"[k % 2], 120 / TPS, rng.uniform(0.5, 2.0) if k else 0.0) for k in range(12)]
    out.append(Shape("2b. one agent alternating", {"a": 5.0, "b": 5.0}, 1, [Client("agent", alt)]))
    steps: list[list[Ask]] = []
    for _ in range(5):
        steps.append([Ask("o", 150 / TPS)])
        subs = ["s1", "s2"] + [rng.choice(["s1", "s2"]) for _ in range(2)]
        steps.append([Ask(subs[j], 100 / TPS, 0.0, f"sub-agent-{j + 1}") for j in range(4)])
    out.append(Shape("3. orchestrator and sub-agents", {"o": 20.0, "s1": 4.0, "s2": 4.0}, 2, [],
                     steps))  # fmt: skip
    t, asks = 0.0, dict[str, list[Ask]]()
    models = ["m1", "m2", "m3", "m4"]
    for _ in range(60):
        t += rng.expovariate(0.5)
        c = rng.randrange(8)
        m = models[c % 4] if rng.random() < 0.7 else rng.choice(models)
        asks.setdefault(f"client-{c + 1}", []).append(Ask(m, rng.choice((64, 128, 256)) / TPS, t))
    poisson = [Client(c, a, open_loop=True) for c, a in asks.items()]
    out.append(Shape("4. Poisson, 4 models, room for 2",
                     {"m1": 3.0, "m2": 5.0, "m3": 8.0, "m4": 12.0}, 2, poisson))  # fmt: skip
    pings = [Ask("b", 16 / TPS, float(i)) for i in range(1, 31)]
    long = [Client("writer", [Ask("a", 30.0)]), Client("pinger", pings, open_loop=True)]
    out.append(Shape("5. long stream, short requests", {"a": 6.0, "b": 3.0}, 1, long))
    seq = [rng.choice(["m1", "m2", "m3"])]
    while len(seq) < 150:
        change = rng.random() < 0.93
        seq.append(rng.choice([m for m in ("m1", "m2", "m3") if m != seq[-1]]) if change
                   else seq[-1])  # fmt: skip
    mixed = [
        Client(f"client-{i}", [Ask(seq[j], rng.choice((32, 64, 128)) / TPS, rng.uniform(0, 1))
                               for j in range(i, 150, 6)])
        for i in range(6)
    ]  # fmt: skip
    out.append(Shape("6. mixed", {"m1": 1.5, "m2": 1.5, "m3": 1.5}, 2, mixed))
    return out


def table(factors: Sequence[float], seed: int) -> str:
    rows = ["| shape | policy | p50 s | p95 s | max s | starts | wall s |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for shape in shapes(seed):
        runs = [("fifo", play(shape, "fifo"))]
        runs += [
            (f"batch, swap_factor {f:g}", play(shape, "batch", swap_factor=f)) for f in factors
        ]
        for i, (name, r) in enumerate(runs):
            label = shape.name if i == 0 else ""
            figures = f"{r.pct(50):.1f} | {r.pct(95):.1f} | {r.pct(100):.1f}"
            rows.append(f"| {label} | {name} | {figures} | {r.total_starts} | {r.wall:.1f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--factors", default="0.25,0.5,1,2,3.5")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    print(table([float(f) for f in a.factors.split(",")], a.seed))


if __name__ == "__main__":
    main()
