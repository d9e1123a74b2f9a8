"""What an engine actor's inbox carries: commands from callers, news from its helper
tasks. News about a child carries the spawn generation it is about."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from swapyard.config import ModelSpec
    from swapyard.process.registry import EngineRecord


# -- commands ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Start:
    reply: asyncio.Future[None]
    env: dict[str, str]
    devices: tuple[str, ...] = ()
    args: tuple[str, ...] = ()  # appended to its command (the memory share swapyard chose)


@dataclass(frozen=True, slots=True)
class Stop:
    reply: asyncio.Future[None]
    sleep: bool = False  # use the engine's fast swap if it has one


@dataclass(frozen=True, slots=True)
class Reset:
    """Forget past failures (an explicit load, a reload): ``backoff``/``failed`` →
    ``stopped``."""

    reply: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class Adopt:
    """Take over an engine a previous swapyard started (checked healthy)."""

    reply: asyncio.Future[None]
    record: EngineRecord


@dataclass(frozen=True, slots=True)
class Respec:
    """A reloaded config: ``spec`` applies at once, or, when ``restart`` (what its
    process runs changed), from the next start on. Past failures are forgotten."""

    spec: ModelSpec = field(repr=False)
    restart: bool = False


# -- news from helper tasks ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Slept:
    """The fast swap out finished (``error`` None) or failed."""

    gen: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Woke:
    """The fast swap in (state ``waking``) or the warm-up after a cold start
    (state ``warming``) finished (``error`` None) or failed."""

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
    returncode: int | None  # None: not our child (adopted), its status is unknown


@dataclass(frozen=True, slots=True)
class KillNow:
    gen: int


@dataclass(frozen=True, slots=True)
class BackoffOver:
    gen: int


@dataclass(frozen=True, slots=True)
class TrackTree:
    """Time to look for the child's descendants again (those that leave its group)."""

    gen: int


Message = (
    Start | Stop | Reset | Adopt | Respec | Healthy | StartTimedOut | Exited | KillNow | Slept
    | Woke | Progress | BackoffOver | TrackTree
)  # fmt: skip
