"""The router's memory book (its task only): each model's figures, the GPUs'
totals, and what the devices hold now, split into swapyard's engines and the
processes it did not start (the foreign share).

It reads the GPUs (``resources.gpu``: NVML or the simulated GPU) when the router
asks — before placements, after state changes, every few seconds — and answers
three questions for the router: the foreign share per device (the scheduler
subtracts it from the budget), the share an engine that pre-allocates is told
(``--gpu-memory-utilization``, ``--mem-fraction-static``), and, when a start ran
out of memory, who holds the GPU.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from swapyard.config import Config, ModelSpec
from swapyard.errors import EngineBackoff, EngineOutOfMemory, SwapyardError
from swapyard.resources.devices import GPU_RESERVE
from swapyard.resources.gpu import GpuProcess, GpuReading, alive, pgid_of, reader
from swapyard.resources.needs import MemoryFigures, initial_figures
from swapyard.resources.store import MeasuredStore
from swapyard.scheduler.placement import fmt_bytes

log = logging.getLogger("swapyard.memory")
MAX_SHARE = 0.99  # the most of a device an engine is ever told to take


@dataclass(frozen=True, slots=True)
class Holder:
    """A process holding memory on a GPU; ``model`` when it is one of our engines."""

    pid: int
    name: str
    used: int
    model: str | None = None

    def as_json(self) -> dict[str, object]:
        return {"pid": self.pid, "name": self.name, "used": self.used, "model": self.model}


@dataclass(frozen=True, slots=True)
class DeviceHeld:
    """One GPU as last read: its total, what is used, the foreign share, and who."""

    total: int
    used: int
    foreign: int
    holders: tuple[Holder, ...] = ()


def share_for(need: int, readings: list[GpuReading], of_device: bool) -> float:
    """The share of a device to tell an engine that pre-allocates: its ``need``
    (plus, for an engine that counts every process's memory against its share,
    what the device holds now), as a fraction of the total, rounded up to 0.001."""
    worst = max((need + (g.used if of_device else 0)) / g.total for g in readings if g.total)
    return min(MAX_SHARE, max(0.001, math.ceil(worst * 1000) / 1000))


class MemoryBook:
    def __init__(self, config: Config, store: MeasuredStore | None, cuda: bool) -> None:
        self._store = store
        self.cuda = cuda
        self.figures: dict[str, MemoryFigures] = {}
        self.devices: dict[str, DeviceHeld] = {}
        self.totals = self._totals(config)
        for spec in config.models.values():
            self.add(spec)

    def _totals(self, config: Config) -> dict[str, int]:
        """What a declared share is a share of: the declared devices' memory, else
        the GPUs' totals (none on a machine without a GPU)."""
        if config.devices:
            return {d.id: d.memory for d in config.devices}
        r = reader() if self.cuda else None
        return {i: g.total for i, g in r.read().items()} if r is not None else {}

    def reconfigure(self, config: Config, cuda: bool) -> None:
        self.cuda = cuda
        self.totals = self._totals(config)

    def add(self, spec: ModelSpec) -> None:
        self.figures[spec.id] = initial_figures(spec, self._store, self.totals)

    def drop(self, model: str) -> None:
        self.figures.pop(model, None)

    def needs(self, learn: bool) -> dict[str, int | None]:
        if learn:
            return {mid: f.scheduled for mid, f in self.figures.items()}
        return {mid: f.declared or f.estimated for mid, f in self.figures.items()}

    def measured(self, spec: ModelSpec, nbytes: int, asleep: bool = False) -> None:
        """Keep a measurement (and persist it); a figure above the declared one is
        logged: the declared figure stays what the scheduler uses."""
        f = self.figures.get(spec.id)
        if f is None:
            return
        if asleep:
            f.asleep = nbytes
        else:
            f.measured = nbytes
            if f.declared is not None and nbytes > f.declared:
                log.warning(
                    "model %s was measured at %s, above its declared %s: the declared figure "
                    "is what swapyard places it with",
                    spec.id, fmt_bytes(nbytes), fmt_bytes(f.declared),
                )  # fmt: skip
        if self._store is not None:
            self._store.put(spec, nbytes, asleep=asleep)

    # -- what the GPUs hold now -------------------------------------------------------
    def read(self, ours: Mapping[int, str], planned: Mapping[str, int]) -> dict[str, int]:
        """Read the GPUs; return the foreign share per device. ``ours``: process
        group → model of each running engine; ``planned``: what the scheduler
        places our models with per device (used when the GPU lists processes of
        another PID namespace, as in a container, which cannot be told apart)."""
        r = reader() if self.cuda else None
        if r is None:
            self.devices = {}
            return {}
        out: dict[str, DeviceHeld] = {}
        for index, g in r.read().items():
            holders = tuple(_holder(p, ours) for p in g.processes)
            if any(not alive(h.pid) for h in holders):
                foreign = g.used - GPU_RESERVE - planned.get(index, 0)
            else:
                foreign = sum(h.used for h in holders if h.model is None)
            out[index] = DeviceHeld(g.total, g.used, max(0, foreign), holders)
        self.devices = out
        return {d: h.foreign for d, h in out.items()}

    def share_args(self, spec: ModelSpec, devices: tuple[str, ...], need: int | None) -> list[str]:
        """The flag and share to start ``spec`` with on ``devices`` (none when the
        user declared a share, or the engine takes none, or there is no GPU)."""
        share = spec.share
        if share is None or share.declared is not None or not need or not self.cuda:
            return []
        r = reader()
        if r is None:
            return []
        now = r.read()
        readings = [now[d] for d in devices if d in now]
        if not readings:
            return []
        return [share.flag, f"{share_for(need, readings, share.of_device):.3f}"]

    def explain(
        self, model: str, error: SwapyardError, devices: tuple[str, ...], need: int | None
    ) -> SwapyardError:
        """An out-of-memory start failure, told with what was free on its devices,
        what it needed and which processes hold the GPU (``self.devices`` must be
        a fresh reading)."""
        cause = error.cause if isinstance(error, EngineBackoff) else error
        if not isinstance(cause, EngineOutOfMemory):
            return error
        parts = []
        for d in devices:
            held = self.devices.get(d)
            if held is None:
                continue
            who = "; ".join(
                f"pid {h.pid} ({h.name}) {fmt_bytes(h.used)}"
                + (f", swapyard's {h.model!r}" if h.model else ", not started by swapyard")
                for h in sorted(held.holders, key=lambda h: -h.used)
            )
            parts.append(
                f"GPU {d}: {fmt_bytes(held.total - held.used)} free of {fmt_bytes(held.total)}"
                + (f", it needs {fmt_bytes(need)}" if need else "")
                + (f"; held by {who}" if who else "")
            )
        if not parts:
            return error
        told = EngineOutOfMemory(model, f"{cause.reason}. " + ". ".join(parts), cause.log_tail)
        if isinstance(error, EngineBackoff):
            return EngineBackoff(model, told, error.retry_after)
        return told


def _holder(p: GpuProcess, ours: Mapping[int, str]) -> Holder:
    return Holder(p.pid, p.name, p.used, ours.get(pgid_of(p.pid) or -1))
