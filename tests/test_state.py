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
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.READY),
    (S.STARTING, S.FAILED),
    (S.STARTING, S.STOPPING),
    (S.READY, S.STOPPING),
    (S.READY, S.FAILED),
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.FAILED),
    (S.FAILED, S.STARTING),
    (S.FAILED, S.STOPPED),
    # fast swaps
    (S.STOPPING, S.SLEEPING),
    (S.SLEEPING, S.STARTING),
    (S.SLEEPING, S.STOPPING),
    (S.SLEEPING, S.FAILED),
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
        "stopped", "starting", "ready", "stopping", "failed", "sleeping",
    ]  # fmt: skip
    assert [s for s in S if is_running(s)] == [S.STARTING, S.READY, S.STOPPING, S.SLEEPING]
