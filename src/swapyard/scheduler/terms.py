"""The scheduler's contract: what it is told about models, what it asks of the
world (``Effects``), and its per-model bookkeeping. How it is configured is
``swapyard.config.SchedulerSpec``, the one place its defaults live."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Protocol

from swapyard.errors import SwapyardError
from swapyard.process.state import EngineState

S = EngineState
TO_LOAD = (S.STOPPED, S.SLEEPING)  # a request for it needs a start or a wake
LOADING = (S.STARTING, S.WARMING, S.WAKING)  # the scheduler sees all three as starting
BROKEN = (S.BACKOFF, S.FAILED)  # no process, and no start until its backoff ends or a reset


class Effects(Protocol):
    """What the scheduler asks the world to do. Implementations must not call back
    into the scheduler synchronously; they report outcomes as later events."""

    def start(self, model: str, devices: tuple[str, ...], need: int | None = None) -> None:
        """Start ``model`` on ``devices``, where it was placed with ``need`` bytes each
        (an engine that takes a share of the device is told that share)."""
        ...

    def stop(self, model: str, *, for_model: str | None, sleep: bool = False) -> None:
        """Stop ``model`` (to make room ``for_model``, if given); with ``sleep``, put
        it to sleep instead (its fast swap), which keeps ``sleep_need`` on its
        devices and ``host_need`` in host RAM."""
        ...

    def dispatch(self, request_id: int, model: str) -> None: ...

    def reject(self, request_id: int, error: SwapyardError) -> None: ...

    def arm_idle_timer(self, model: str, ttl: float, token: int) -> None: ...

    def wake_at(self, when: float) -> None: ...

    def reset(self, model: str) -> None:
        """Clear ``model``'s failures (an explicit load of a model in ``backoff`` or
        ``failed``): its engine then reports ``stopped``."""
        ...


@dataclass(frozen=True, slots=True)
class ModelTerms:
    """What the scheduler knows of one model."""

    ttl: float = 0.0
    need: int | None = None
    count: int = 1
    pinned: bool = False
    priority: int = 0
    max_concurrent: int = 0  # 0: no limit
    sleep_need: int | None = None  # None: no fast swap; else memory kept on its devices asleep
    host_need: int = 0  # host RAM a sleeping engine holds
    restart: str = "on-failure"  # a kept model after a crash: on-failure, always, never


@dataclass(slots=True)
class Queued:
    request_id: int
    model: str
    arrived: float
    client: str = ""  # who asks ("": unknown, counted as someone else every time)


@dataclass(slots=True)
class ModelView:
    terms: ModelTerms
    state: EngineState = S.STOPPED
    inflight: int = 0
    devices: tuple[str, ...] = ()
    loaded_at: float = 0.0
    last_used: float = 0.0
    token: int = 0
    keep: bool = False  # loaded on purpose (preload/admin): not abandoned
    need: int | None = field(default=None)
    pinned: bool = False
    draining: bool = False  # unload asked: no new requests, stop once idle
    started: list[float] = field(default_factory=list)  # dispatch times, pruned on dispatch
    started_by: list[str] = field(default_factory=list)  # the client of each, alike
    asked_at: list[float] = field(default_factory=list)  # when each arrived, alike
    starting_at: float = 0.0
    load_time: float | None = None  # last starting -> ready, seconds
    to_sleep: bool = False  # stopping into sleep (its fast swap), not to stopped
    failure: SwapyardError | None = None  # in backoff or failed: what requests are told
    failure_at: float = 0.0
    retiring: bool = False  # removed from the config: forgotten once stopped
    sleep_need: int | None = None  # measured while asleep: beats terms.sleep_need
    oom_retried: bool = False  # its start ran out of memory once: the retry is used
    oom_retrying: bool = False  # a retry after an out-of-memory start awaits its backoff
    oom_wait: tuple[str, ...] = ()  # evicted for that retry: it starts once they stopped
    # A client's keep_alive (the Ollama API, issue 14): the idle TTL from now on
    # (None: the config's; < 0: none), and a one-off stop once idle (keep_alive 0).
    ttl: float | None = None
    unload_idle: bool = False

    @property
    def idle_ttl(self) -> float:
        """The idle TTL in effect, in seconds; 0 or less: never stopped for idleness."""
        return self.terms.ttl if self.ttl is None else self.ttl

    def recent(self, now: float, window: float) -> list[float]:
        """When it started the requests of the last ``window`` seconds, oldest first."""
        return self.started[bisect_right(self.started, now - window) :]

    def demand(self, now: float, window: float, besides: frozenset[str] = frozenset()) -> int:
        """How many requests it started in the last ``window`` seconds (``started``
        is in dispatch order, so sorted: a bisection, not a scan), leaving out
        those of the clients ``besides`` (an unknown client is never left out)."""
        cut = bisect_right(self.started, now - window)
        if not besides:
            return len(self.started) - cut
        return sum(1 for c in self.started_by[cut:] if not c or c not in besides)

    def note_start(self, now: float, window: float, client: str = "", arrived: float = -1) -> None:
        """Record a dispatch at ``now`` for ``client`` of a request that arrived at
        ``arrived``, forgetting those older than ``window``."""
        started = self.started
        cut = bisect_right(started, now - window)
        if cut:
            del started[:cut]
            del self.started_by[:cut]
            del self.asked_at[:cut]
        started.append(now)
        self.started_by.append(client)
        self.asked_at.append(now if arrived < 0 else arrived)
