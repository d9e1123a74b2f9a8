"""The router's surface: the one way the HTTP layer, metrics and tests reach it.

Everything here is a value or a protocol; nothing imports the router. Reads are
frozen snapshots — the router's task publishes its scheduler's figures after
every decision, each engine's actor publishes its own view, and ``snapshot()``
puts the two together — so a reader never touches the scheduler or an actor,
and a snapshot never changes under it. Writes are commands (``acquire``,
``release``, ``load``, ``unload``, ``pin``, ``keep_alive``) that the router's task carries out.

``swapyard.router.Router`` is the real implementation; ``swapyard.testing.FakeRouter``
is one for HTTP tests that need no engine process.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from swapyard.config import Config
from swapyard.errors import SwapyardError
from swapyard.events import EventBus
from swapyard.process.logring import LogRing
from swapyard.process.state import EngineState

if TYPE_CHECKING:
    from swapyard.reload import ConfigDiff


@dataclass(frozen=True, slots=True)
class Lease:
    """Permission to send one request to ``model``'s engine at ``upstream``."""

    request_id: int
    model: str
    upstream: str
    waited: float


@dataclass(frozen=True, slots=True)
class MemorySnapshot:
    """One model's memory figures, in bytes; ``scheduled`` is what the scheduler
    places it with (declared, else measured, else estimated); ``asleep`` is what
    it keeps on its devices asleep (``asleep_measured`` once seen)."""

    declared: int | None = None
    estimated: int | None = None
    measured: int | None = None
    scheduled: int | None = None
    asleep_measured: int | None = None
    asleep: int | None = None

    @property
    def source(self) -> str | None:
        """Which figure ``scheduled`` is."""
        for name in ("declared", "measured", "estimated"):
            if getattr(self, name) is not None:
                return name
        return "learned" if self.scheduled is not None else None

    @property
    def over_declared(self) -> bool:
        """Measured above the declared figure (shown; the declared one is used)."""
        m, d = self.measured, self.declared
        return m is not None and d is not None and m > d

    def as_dict(self) -> dict[str, int | str | bool | None]:
        return {
            "declared": self.declared,
            "estimated": self.estimated,
            "measured": self.measured,
            "scheduled": self.scheduled,
            "source": self.source,
            "over_declared": self.over_declared,
            "asleep": self.asleep,
            "asleep_measured": self.asleep_measured,
        }


@dataclass(frozen=True, slots=True)
class ErrorView:
    """An engine's last failure as readers see it: ``code`` is safe on the open
    ``/health``; ``message`` is what clients are told; ``detail`` (its last log
    lines) only the admin routes show (issue 11)."""

    code: str
    message: str
    detail: str | None = None

    @staticmethod
    def of(err: SwapyardError | None) -> ErrorView | None:
        return None if err is None else ErrorView(err.code, err.message, err.detail)

    def as_json(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class EngineView:
    """What an engine's actor publishes about itself (its own state machine)."""

    state: EngineState = EngineState.STOPPED
    state_since: float = 0.0  # time.monotonic() of the last transition
    pid: int | None = None
    upstream: str | None = None  # while starting or ready
    last_error: ErrorView | None = None
    fast_swap: str | None = None  # the engine's fast swap ("sleep", "unload"...), if any
    loading_since: float | None = None  # monotonic start of the current start or wake
    waking: bool = False  # starting by a fast swap in
    progress: tuple[float | None, str] | None = None  # what the engine reported
    engine_args: tuple[str, ...] = ()  # what swapyard added to its command (its share)


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """One model as the router sees it at one moment."""

    id: str
    engine: EngineView
    in_flight: int = 0
    queued: int = 0
    devices: tuple[str, ...] = ()
    memory: MemorySnapshot = MemorySnapshot()
    pinned: bool = False
    idle_since: float | None = None  # monotonic; None: busy or not ready
    ttl: float = 0.0  # the idle TTL in effect (config or a client's keep_alive); 0: none

    @property
    def state(self) -> EngineState:
        return self.engine.state

    def as_json(self, now: float) -> dict[str, Any]:
        """JSON-ready, with durations relative to ``now`` (``time.monotonic()``)."""
        e = self.engine
        return {
            "state": str(e.state),
            "state_for_s": round(now - e.state_since, 3),
            "pid": e.pid,
            "upstream": e.upstream,
            "last_error": e.last_error.as_json() if e.last_error is not None else None,
            "fast_swap": e.fast_swap,
            "progress": e.progress,
            "engine_args": list(e.engine_args),
            "devices": list(self.devices),
            "memory": self.memory.as_dict(),
            "pinned": self.pinned,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "idle_s": round(now - self.idle_since, 3) if self.idle_since is not None else None,
        }


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One device's memory budget, what swapyard's models hold of it, and what
    processes swapyard did not start hold (``foreign``; GPUs only, with the
    device's ``total`` and its ``holders`` as last read)."""

    id: str
    budget: int
    used: int
    foreign: int = 0
    total: int | None = None
    holders: tuple[dict[str, object], ...] = ()

    @property
    def free(self) -> int:
        return self.budget - self.used - self.foreign


@dataclass(frozen=True, slots=True)
class Snapshot:
    models: Mapping[str, ModelSnapshot]
    devices: Mapping[str, DeviceSnapshot]
    host_used: int = 0  # host RAM held by sleeping engines
    queue: tuple[int, ...] = ()  # waiting request ids, first served first
    started_at: float = 0.0  # Unix time the router was built

    def position(self, request_id: int) -> int | None:
        """1-based place in the queue, or None once dispatched (or unknown)."""
        try:
            return self.queue.index(request_id) + 1
        except ValueError:
            return None


class RouterSurface(Protocol):
    """What the HTTP layer and metrics may use of the router. Only the router's
    own task touches the scheduler and the engine actors."""

    config: Config
    bus: EventBus

    # -- lifecycle (the app's lifespan) --
    def run(self) -> None: ...

    def stop_admitting(self) -> None:
        """Refuse new requests and reject the queued ones; running ones go on."""
        ...

    async def shutdown(self, deadline: float, keep_engines: bool = False) -> None:
        """Stop every engine by ``deadline`` (``time.monotonic()``), then end; with
        ``keep_engines``, leave them running (and recorded) for the next swapyard."""
        ...

    # -- requests --
    def new_request_id(self) -> int: ...

    def check_admission(self) -> None:
        """Raise now what ``acquire`` would answer at once (``ShuttingDown``,
        ``QueueFull``), before any streaming starts."""
        ...

    def ready_now(self, model: str) -> bool:
        """Whether a request for ``model`` would be dispatched without waiting."""
        ...

    async def acquire(self, model: str, request_id: int | None = None, client: str = "") -> Lease:
        """Wait until ``model`` is ready and this request may run on it; raises the
        ``SwapyardError`` that keeps it from running. Cancelling leaves the queue.
        ``client`` says who asks (the scheduler tells people apart by it)."""
        ...

    def release(self, lease: Lease) -> None: ...

    # -- reads --
    def snapshot(self) -> Snapshot: ...

    def model(self, model: str) -> ModelSnapshot: ...

    def logs(self, model: str) -> LogRing: ...

    def device_usage(self) -> dict[str, tuple[int, int]]:
        """(used, total) bytes per GPU as NVML reports them; {} without GPUs."""
        ...

    # -- control --
    async def load(self, model: str) -> EngineState: ...

    async def unload(self, model: str) -> EngineState: ...

    async def pin(self, model: str, pinned: bool) -> EngineState: ...

    def keep_alive(self, model: str, ttl: float) -> None:
        """A client's keep_alive (the Ollama API): ``0`` stops ``model`` once it is
        idle, ``> 0`` is its idle TTL in seconds and ``< 0`` keeps it loaded, until
        the next one or a config reload. Returns at once."""
        ...

    async def reload(self, config: Config) -> ConfigDiff:
        """Apply a new, validated config in the router's task (``swapyard.reload``)."""
        ...
