"""The engine state machine as data: states and the allowed transitions (no I/O).

::

    stopped ──start──▶ starting ──health 200──▶ ready
       ▲                 │  │                     │
       │                 │  └──stop──┐            │ stop / ttl / swap
       │        exited / │           ▼            ▼
       │        timeout  │         stopping ◀─────┘
       │                 ▼           │   │
       └──────────── failed ◀────────┘   └──exited──▶ stopped
                  (start again)  (a start that failed, or a crash)

``failed`` means the process is gone and the last start (or run) ended badly; the
next request starts it again. ``ready → failed`` is a crash while serving.

Engines with a fast swap (vLLM sleep, SGLang memory saver, TabbyAPI and Ollama
unload) have one more state, ``sleeping``: the process is alive but has given
back (most of) its GPU memory::

    ready ──stop(sleep)──▶ stopping ──slept──▶ sleeping ──wake──▶ starting ──▶ ready
                             │ sleep failed: stop as usual   │ stop / exited
                             ▼                               ▼
                          stopped                  stopping / failed

A wake that fails stops the process and starts it cold (``starting → stopping →
stopped → starting``).
"""

from __future__ import annotations

from enum import StrEnum


class EngineState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"


S = EngineState

TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    S.STOPPED: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.READY, S.STOPPING, S.FAILED}),
    S.READY: frozenset({S.STOPPING, S.FAILED}),
    S.STOPPING: frozenset({S.STOPPED, S.FAILED, S.SLEEPING}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
    S.SLEEPING: frozenset({S.STARTING, S.STOPPING, S.FAILED}),
}


class InvalidTransition(RuntimeError):
    """A bug: some code asked for a transition the table does not allow."""


def check_transition(old: EngineState, new: EngineState) -> None:
    """Raise ``InvalidTransition`` unless ``old → new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"engine cannot go from {old} to {new}")


def is_running(state: EngineState) -> bool:
    """Whether a child process may exist in this state."""
    return state in (S.STARTING, S.READY, S.STOPPING, S.SLEEPING)
