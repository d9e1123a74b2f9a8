"""A ``RouterSurface`` with no engines behind it, for HTTP tests that need no
engine process: it records what the HTTP layer asked of it and answers what the
test set up (states, an upstream URL per model, errors)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace

from swapyard.config import Config
from swapyard.errors import ShuttingDown, SwapyardError
from swapyard.events import EngineStateChanged, EventBus
from swapyard.process.logring import LogRing
from swapyard.process.state import EngineState
from swapyard.reload import ConfigDiff, diff
from swapyard.surface import (
    DeviceSnapshot,
    EngineView,
    ErrorView,
    Lease,
    ModelSnapshot,
    Snapshot,
)


@dataclass
class FakeRouter:
    """``acquire`` marks the model ready and leases ``upstreams[model]`` (default: a
    closed port, so forwarding fails as an unreachable engine would), unless
    ``refuse[model]`` holds an exception to raise (one that is not a
    ``SwapyardError`` stands for a bug behind the surface); ``admission_error`` is
    raised by ``check_admission``. ``acquired``/``released``/``commands`` record
    the calls."""

    config: Config
    upstreams: dict[str, str] = field(default_factory=dict)
    refuse: dict[str, Exception] = field(default_factory=dict)
    admission_error: SwapyardError | None = None
    bus: EventBus = field(default_factory=EventBus)
    acquired: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)  # who asked, per acquire (issue 13)
    released: list[int] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)
    keep_alives: list[tuple[str, float]] = field(default_factory=list)  # (model, ttl) asked
    running: bool = False
    closing: bool = False

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._views = {mid: EngineView(state_since=time.monotonic()) for mid in self.config.models}
        self._in_flight = dict.fromkeys(self.config.models, 0)
        self._logs = {mid: LogRing() for mid in self.config.models}
        self._ttl = {mid: m.ttl for mid, m in self.config.models.items()}
        self._stop_idle: set[str] = set()  # keep_alive 0 asked while busy
        self._started_at = time.time()

    # -- test controls --
    def set_state(self, model: str, state: EngineState, error: SwapyardError | None = None) -> None:
        """Move ``model`` to ``state`` and publish the change as an actor would."""
        old = self._views[model].state
        self._views[model] = replace(
            self._views[model], state=state, state_since=time.monotonic(),
            last_error=ErrorView.of(error),
        )  # fmt: skip
        self.bus.publish(EngineStateChanged(model, old, state, error))

    # -- lifecycle --
    def run(self) -> None:
        self.running = True

    def stop_admitting(self) -> None:
        self.closing = True

    async def shutdown(self, deadline: float, keep_engines: bool = False) -> None:
        self.stop_admitting()
        self.running = False

    # -- requests --
    def new_request_id(self) -> int:
        return next(self._ids)

    def check_admission(self) -> None:
        if self.closing:
            raise ShuttingDown("swapyard is shutting down")
        if self.admission_error is not None:
            raise self.admission_error

    def ready_now(self, model: str) -> bool:
        return self._views[model].state is EngineState.READY

    async def acquire(self, model: str, request_id: int | None = None, client: str = "") -> Lease:
        self.check_admission()
        self.acquired.append(model)
        self.clients.append(client)
        if model in self.refuse:
            raise self.refuse[model]
        if self._views[model].state is not EngineState.READY:
            self.set_state(model, EngineState.READY)
        self._in_flight[model] += 1
        rid = self.new_request_id() if request_id is None else request_id
        return Lease(rid, model, self.upstreams.get(model, "http://127.0.0.1:9"), 0.0)

    def release(self, lease: Lease) -> None:
        self._in_flight[lease.model] -= 1
        self.released.append(lease.request_id)
        if lease.model in self._stop_idle and not self._in_flight[lease.model]:
            self._stop_idle.discard(lease.model)
            self.set_state(lease.model, EngineState.STOPPED)

    # -- reads --
    def snapshot(self) -> Snapshot:
        models = {mid: self.model(mid) for mid in self.config.models if mid in self._views}
        return Snapshot(models, {"default": DeviceSnapshot("default", 1, 0)},
                        started_at=self._started_at)  # fmt: skip

    def model(self, model: str) -> ModelSnapshot:
        ttl = 0.0 if model in self._stop_idle else max(0.0, self._ttl[model])
        return ModelSnapshot(model, self._views[model], in_flight=self._in_flight[model], ttl=ttl)

    def logs(self, model: str) -> LogRing:
        return self._logs[model]

    def device_usage(self) -> dict[str, tuple[int, int]]:
        return {}

    # -- control --
    async def load(self, model: str) -> EngineState:
        self.commands.append(("load", model))
        self.set_state(model, EngineState.READY)
        return EngineState.READY

    async def unload(self, model: str) -> EngineState:
        self.commands.append(("unload", model))
        self.set_state(model, EngineState.STOPPED)
        return EngineState.STOPPED

    async def pin(self, model: str, pinned: bool) -> EngineState:
        self.commands.append(("pin" if pinned else "unpin", model))
        return self._views[model].state

    def keep_alive(self, model: str, ttl: float) -> None:
        """Recorded; ``0`` stops the model (once its requests are released), any
        other value is its TTL as snapshots show it (no timer runs here)."""
        self.keep_alives.append((model, ttl))
        if ttl != 0:
            self._ttl[model] = ttl
        elif self._in_flight[model]:
            self._stop_idle.add(model)
        elif self._views[model].state is not EngineState.STOPPED:
            self.set_state(model, EngineState.STOPPED)

    async def reload(self, config: Config) -> ConfigDiff:
        d = diff(self.config, config)
        self.commands.append(("reload", config.source))
        self.config = config
        self._ttl = {mid: m.ttl for mid, m in config.models.items()}
        for mid in d.added:
            self._views[mid] = EngineView(state_since=time.monotonic())
            self._in_flight[mid] = 0
            self._logs[mid] = LogRing()
        return d
