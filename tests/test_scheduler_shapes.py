"""The traffic shapes of issue 13 through the real scheduler, in virtual time
(``swapyard.testing.simulate``: no processes, no sleeps). Each compares the
default policy with FIFO on the same trace; the same shapes run against real
processes and llama-swap in ``benchmarks/bench_traces.py``."""

from __future__ import annotations

import random

from swapyard.config import SchedulerSpec
from swapyard.scheduler.core import ModelTerms
from swapyard.testing.simulate import Ask, Client, Result, Sim

LOAD = 3.0
STOP = 0.2


def run(
    models: str | list[str],
    fit: int,
    clients: list[Client],
    policy: str = "batch",
    load: float = LOAD,
    **spec: float,
) -> Result:
    """``clients`` through the scheduler: one device with room for ``fit`` models."""
    terms = {m: ModelTerms(need=1) for m in models}
    cfg = SchedulerSpec(policy=policy, **spec)  # type: ignore[arg-type]
    return Sim(terms, {"0": fit}, cfg, {m: load for m in models}, stop=STOP).run(clients)


def turns(model: str, n: int) -> list[Ask]:
    """An Open WebUI turn: the chat (streamed, 2 s), then its title and tags requests
    right after the answer, then the person reads and types (8 s)."""
    out = []
    for _ in range(n):
        out += [Ask(model, 2.0, 8.0), Ask(model, 0.3), Ask(model, 0.3)]
    return out


def test_shape_1_one_person_switching_models_waits_for_the_swap_and_nothing_more() -> None:
    person = Client("alice", turns("a", 3) + turns("b", 3) + turns("a", 2))
    r = run("ab", 1, [person])
    switches = [d for i, d in enumerate(r.done) if i and d.model != r.done[i - 1].model]
    assert len(switches) == 2
    for d in switches:  # stop the other, start this one, answer: not a moment more
        assert abs(d.latency - (STOP + LOAD + 2.0)) < 1e-9
    assert r.total_starts == 3
    fifo = run("ab", 1, [person], "fifo")
    assert (r.pct(95), r.wall) == (fifo.pct(95), fifo.wall)


def test_shape_1_the_same_turns_from_two_people_are_held_for_the_first_one() -> None:
    """What tells the switch from a second person is who asks: the same requests
    from two clients make the first model worth keeping while its person goes on."""
    alice = Client("alice", turns("a", 3))
    bob = Client("bob", [Ask("b", 2.0, 11.0)])  # asks for b in alice's second turn
    r = run("ab", 1, [alice, bob])
    b = next(d for d in r.done if d.model == "b")
    assert b.latency > STOP + LOAD + 2.0  # held while alice's title and tags ran


def agents(n: int) -> list[Client]:
    return [
        Client("agent-1", [Ask("a", 1.0, 0.2)] * n),
        Client("agent-2", [Ask("b", 1.0, 0.2)] * n),
    ]


def test_shape_2_two_agents_on_two_models_never_fare_worse_than_fifo() -> None:
    batch, fifo = run("ab", 1, agents(20)), run("ab", 1, agents(20), "fifo")
    assert fifo.total_starts == 40  # a swap for every request
    assert batch.total_starts <= fifo.total_starts
    assert batch.pct(95) <= fifo.pct(95) and batch.wall <= fifo.wall and batch.errors == 0


def test_shape_2_a_larger_swap_factor_trades_the_tail_for_turns_without_thrash() -> None:
    """The README's trade-off: rent longer and the agents take long turns (a third
    of the starts, half the wall time), and the one waiting waits for a turn."""
    batch = run("ab", 1, agents(20), swap_factor=3.5)
    fifo = run("ab", 1, agents(20), "fifo")
    assert batch.total_starts * 3 <= fifo.total_starts and batch.wall * 2 < fifo.wall
    assert batch.pct(50) < fifo.pct(50) and batch.pct(100) > fifo.pct(100)


def test_shape_2_one_agent_alternating_models_swaps_at_once() -> None:
    """Nobody else asks: holding the model it just left would only make it wait."""
    one = [Client("agent", [Ask("ab"[i % 2], 1.0, 0.2) for i in range(20)])]
    batch, fifo = run("ab", 1, one), run("ab", 1, one, "fifo")
    assert (batch.total_starts, batch.pct(95), batch.wall) == (
        fifo.total_starts, fifo.pct(95), fifo.wall,
    )  # fmt: skip


def orchestrator(rounds: int, sub: str = "") -> list[list[Ask]]:
    """The orchestrator's request on o, then four sub-agent requests on s1 and s2
    at once, waiting for all; ``sub``: the sub-agents' own client (else the
    orchestrator's: one process, one key)."""
    steps = []
    for _ in range(rounds):
        steps.append([Ask("o", 1.0, 0.5)])
        steps.append([Ask(("s1", "s2")[j % 2], 1.0 + 0.5 * (j % 3), 0.0, sub and f"{sub}{j}")
                      for j in range(4)])  # fmt: skip
    return steps


def run_steps(
    steps: list[list[Ask]], policy: str = "batch", loads: dict[str, float] | None = None
) -> Result:
    """One closed-loop client whose each step sends its asks at once and waits for
    all of them (a fan-out); room for two of the models."""
    loads = loads or {"o": LOAD, "s1": LOAD, "s2": LOAD}
    terms = {m: ModelTerms(need=1) for m in loads}
    cfg = SchedulerSpec(policy=policy)  # type: ignore[arg-type]
    sim = Sim(terms, {"0": 2}, cfg, loads, stop=STOP)
    sim.chain(steps)
    return sim.run([])


def test_shape_3_an_orchestrator_fanning_out_to_sub_agents() -> None:
    for sub in ("", "sub"):  # one client for all, or each sub-agent its own
        batch, fifo = run_steps(orchestrator(8, sub)), run_steps(orchestrator(8, sub), "fifo")
        assert batch.pct(95) < fifo.pct(95), sub
        assert batch.pct(50) <= fifo.pct(50), sub
        if not sub:
            assert batch.wall <= fifo.wall
        else:  # a burst that is over holds its models back for one probe (1 s) a round
            assert batch.wall <= fifo.wall * 1.05


def poisson(n: int, seed: int = 1) -> list[Client]:
    rng = random.Random(seed)
    t, asks = 0.0, dict[str, list[Ask]]()
    for _ in range(n):
        t += rng.expovariate(1.0)
        ask = Ask(rng.choice("abcd"), rng.choice((0.5, 1.0, 2.0)), t)
        asks.setdefault(f"client-{rng.randrange(8)}", []).append(ask)
    return [Client(c, a, open_loop=True) for c, a in asks.items()]


def test_shape_4_many_clients_poisson_over_four_models_with_room_for_two() -> None:
    batch, fifo = run("abcd", 2, poisson(120)), run("abcd", 2, poisson(120), "fifo")
    assert batch.pct(95) * 2 <= fifo.pct(95) and batch.pct(50) < fifo.pct(50)
    assert batch.wall < fifo.wall and batch.total_starts < fifo.total_starts


def test_shape_5_a_long_stream_is_never_cut_while_short_requests_wait() -> None:
    clients = [
        Client("writer", [Ask("a", 30.0)]),
        Client("pinger", [Ask("b", 0.5, 1.0 + i) for i in range(20)], open_loop=True),
    ]
    batch, fifo = run("ab", 1, clients), run("ab", 1, clients, "fifo")
    assert batch.cut == 0 and fifo.cut == 0
    writer = next(d for d in batch.done if d.model == "a")
    assert writer.latency == LOAD + 30.0  # started once, ran to its end
    assert batch.pct(95) <= fifo.pct(95) and batch.wall <= fifo.wall
    assert batch.total_starts == 2


def mixed(seed: int = 1) -> list[Client]:
    """Six clients in closed loop over three models (room for two), the model of
    each request drawn at random: the whole trace changes model most of the time."""
    rng = random.Random(seed)
    return [
        Client(f"client-{i}", [Ask(rng.choice("abc"), rng.choice((0.3, 0.6, 1.0)),
                                   rng.choice((0.0, 0.2, 0.5))) for _ in range(25)])
        for i in range(6)
    ]  # fmt: skip


def test_shape_6_the_mixed_trace() -> None:
    batch, fifo = run("abc", 2, mixed(), load=1.5), run("abc", 2, mixed(), "fifo", load=1.5)
    assert batch.total_starts * 2 <= fifo.total_starts
    assert batch.pct(95) * 1.5 <= fifo.pct(95) and batch.wall < fifo.wall


def test_shape_3_an_orchestrator_that_is_slow_to_load_stays_while_its_sub_agents_swap() -> None:
    """o loads in 20 s, s1 and s2 in 4 s, room for two: evicting o for a sub-agent
    would cost 20 s a round; waiting for the sub-agent model that is answering
    costs seconds (as llama-swap's ``evict_costs`` does by hand)."""
    loads = {"o": 20.0, "s1": 4.0, "s2": 4.0}
    steps = []
    for _ in range(5):
        steps.append([Ask("o", 3.0)])
        steps.append([Ask(("s1", "s2")[j % 2], 2.4, 0.0, f"sub-agent-{j}") for j in range(4)])

    batch, fifo = run_steps(steps, loads=loads), run_steps(steps, "fifo", loads)
    assert batch.starts["o"] == 1 and fifo.starts["o"] == 5
    assert batch.pct(50) < fifo.pct(50) and batch.pct(95) < fifo.pct(95)
    assert batch.wall < fifo.wall and batch.total_starts < fifo.total_starts
