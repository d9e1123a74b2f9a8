"""The engine state machine as data: states and the allowed transitions (no I/O).

::

                 ┌───────────── adopt (a previous swapyard's engine) ──────────────┐
                 │                                                                  ▼
    stopped ──spawn──▶ starting ──health 200──▶ [warming] ──warm-up done──▶ ready ◀──┐
      ▲ ▲                │    │                    │                        │       │
      │ │    exited /    │    └─stop / timeout─┐   │ stop / warm-up failed  │ stop, │
      │ │    timeout     │                     ▼   ▼                        │ ttl,  │
      │ │                │                   stopping ◀─────────────────────┘ swap  │
      │ │                ▼                    │   │  └─slept─▶ sleeping ──▶ waking ─┘
      │ └── backoff ◀── (a failure) ◀──────── ┘   └──exited──▶ stopped   (wake call,
      │   (timer) │                                                     health again)
      │           └─ start_limit failures in start_limit_interval ─▶ failed
      └──────────── reset (an explicit load, a reload) ◀──────────────────┘

``backoff`` and ``failed`` have no process. In ``backoff`` a start is refused
(``engine_backoff``, with the time left) until its timer moves it to ``stopped``:
1 s, then 2, 4, … up to ``backoff_max``. ``failed`` is terminal (``engine_failed``)
until an explicit load or a config reload resets it. A failure is a start that
did not reach ``ready`` (it exited, timed out, its port was taken, its warm-up
failed) or an engine that exited non-zero while ready or asleep; one that exits
with 0 while serving goes to ``stopped``. ``warming`` runs the engine's own load
step after the health check (Ollama loads the model on request); ``waking`` is
the fast swap in of a ``sleeping`` engine (vLLM sleep, SGLang memory saver,
TabbyAPI and Ollama unload) followed by the health check again. A wake that
fails stops the process and starts it cold. See ``docs/states.md``.
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
    WARMING = "warming"
    WAKING = "waking"
    BACKOFF = "backoff"


S = EngineState

FAILURES = frozenset({S.BACKOFF, S.FAILED})

TRANSITIONS: dict[EngineState, frozenset[EngineState]] = {
    S.STOPPED: frozenset({S.STARTING, S.READY, S.SLEEPING} | FAILURES),
    S.STARTING: frozenset({S.WARMING, S.READY, S.STOPPING} | FAILURES),
    S.WARMING: frozenset({S.READY, S.STOPPING} | FAILURES),
    S.READY: frozenset({S.STOPPING, S.STOPPED} | FAILURES),
    S.STOPPING: frozenset({S.STOPPED, S.SLEEPING} | FAILURES),
    S.SLEEPING: frozenset({S.WAKING, S.STOPPING, S.STOPPED} | FAILURES),
    S.WAKING: frozenset({S.READY, S.STOPPING} | FAILURES),
    S.BACKOFF: frozenset({S.STOPPED}),
    S.FAILED: frozenset({S.STOPPED}),
}


class InvalidTransition(RuntimeError):
    """A bug: some code asked for a transition the table does not allow."""


def check_transition(old: EngineState, new: EngineState) -> None:
    """Raise ``InvalidTransition`` unless ``old → new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransition(f"engine cannot go from {old} to {new}")


def is_running(state: EngineState) -> bool:
    """Whether a child process may exist in this state."""
    return state not in (S.STOPPED, S.BACKOFF, S.FAILED)
