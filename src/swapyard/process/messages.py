"""What an engine actor's inbox carries: commands from callers, news from its helper
tasks. News about a child carries the spawn generation it is about."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Start:
    reply: asyncio.Future[None]
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Stop:
    reply: asyncio.Future[None]
    sleep: bool = False  # use the engine's fast swap if it has one


@dataclass(frozen=True, slots=True)
class Slept:
    """The fast swap out finished (``error`` None) or failed."""

    gen: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Woke:
    """The fast swap in (or the warm-up after a cold start) finished or failed."""

    gen: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Progress:
    gen: int
    fraction: float | None
    text: str


@dataclass(frozen=True, slots=True)
class Healthy:
    gen: int


@dataclass(frozen=True, slots=True)
class StartTimedOut:
    gen: int


@dataclass(frozen=True, slots=True)
class Exited:
    gen: int
    returncode: int


@dataclass(frozen=True, slots=True)
class KillNow:
    gen: int


Message = Start | Stop | Healthy | StartTimedOut | Exited | KillNow | Slept | Woke | Progress
