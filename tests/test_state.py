"""The engine state table: every allowed edge, and refusal of the rest."""

from __future__ import annotations

import itertools

import pytest

from swapyard.process.state import (
    TRANSITIONS,
    EngineState,
    InvalidTransition,
    check_transition,
    is_running,
)

S = EngineState
ALLOWED = {
    (S.STOPPED, S.STARTING),  # spawned
    (S.STOPPED, S.READY),  # adopted from a previous swapyard
    (S.STOPPED, S.SLEEPING),  # adopted asleep
    (S.STOPPED, S.BACKOFF),  # could not even spawn (port taken, no such command)
    (S.STOPPED, S.FAILED),  # ... and that was the start limit
    (S.STARTING, S.WARMING),  # healthy; the engine's own load step follows (Ollama)
    (S.STARTING, S.READY),  # healthy
    (S.STARTING, S.STOPPING),  # stopped while starting, or its start timed out
    (S.STARTING, S.BACKOFF),  # exited before it was ready
    (S.STARTING, S.FAILED),
    (S.WARMING, S.READY),
    (S.WARMING, S.STOPPING),  # warm-up failed (then backoff), or stopped
    (S.WARMING, S.BACKOFF),  # exited while warming
    (S.WARMING, S.FAILED),
    (S.READY, S.STOPPING),
    (S.READY, S.STOPPED),  # exited with code 0 while serving: not a failure
    (S.READY, S.BACKOFF),  # crashed while serving
    (S.READY, S.FAILED),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.SLEEPING),  # the fast swap out succeeded
    (S.STOPPING, S.BACKOFF),  # the stop of a start that timed out or failed its warm-up
    (S.STOPPING, S.FAILED),
    (S.SLEEPING, S.WAKING),
    (S.SLEEPING, S.STOPPING),
    (S.SLEEPING, S.STOPPED),  # exited with code 0 while asleep
    (S.SLEEPING, S.BACKOFF),  # crashed while asleep
    (S.SLEEPING, S.FAILED),
    (S.WAKING, S.READY),
    (S.WAKING, S.STOPPING),  # the wake call failed: stop, then start cold
    (S.WAKING, S.BACKOFF),  # exited while waking
    (S.WAKING, S.FAILED),
    (S.BACKOFF, S.STOPPED),  # its backoff is over, or a reset
    (S.FAILED, S.STOPPED),  # a reset: an explicit load or a reload
}


@pytest.mark.parametrize(("old", "new"), sorted(ALLOWED))
def test_allowed_transition(old: EngineState, new: EngineState) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), [p for p in itertools.product(S, S) if p not in ALLOWED])
def test_refused_transition(old: EngineState, new: EngineState) -> None:
    with pytest.raises(InvalidTransition):
        check_transition(old, new)


def test_table_is_exactly_the_documented_edges() -> None:
    assert {(a, b) for a, bs in TRANSITIONS.items() for b in bs} == ALLOWED


def test_states_are_lower_case_strings() -> None:
    assert [str(s) for s in S] == [
        "stopped", "starting", "ready", "stopping", "failed", "sleeping", "warming", "waking",
        "backoff",
    ]  # fmt: skip
    assert [s for s in S if is_running(s)] == [
        S.STARTING, S.READY, S.STOPPING, S.SLEEPING, S.WARMING, S.WAKING,
    ]  # fmt: skip
