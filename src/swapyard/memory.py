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


def share_for(need: int, readings: list[GpuReading], of_free: bool) -> float | None:
    """The share to tell an engine that pre-allocates so that it holds ``need``: of
    the device's total (vLLM), or, with ``of_free``, of what is free when it starts
    (SGLang); the worst device, rounded up to 0.0001. None without a reading."""
    bases = [(g.total - g.used) if of_free else g.total for g in readings]
    if not bases or min(bases) <= 0:
        return None
    worst = need / min(bases)
    return min(MAX_SHARE, max(0.0001, math.ceil(worst * 10_000) / 10_000))


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
        """What a declared share is a share of: the GPUs' physical totals (what the
        engine applies it to), else the declared devices' memory."""
        r = reader() if self.cuda else None
        totals = {i: g.total for i, g in r.read().items()} if r is not None else {}
        return totals or {d.id: d.memory for d in config.devices}

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

    def measured(
        self, spec: ModelSpec, nbytes: int, asleep: bool = False, gpu: bool = True
    ) -> None:
        """Keep a measurement (and persist it); a figure above the declared one is
        logged: the declared figure stays what the scheduler uses."""
        f = self.figures.get(spec.id)
        if f is None:
            return
        if asleep:
            f.asleep = nbytes
        else:
            f.measured, f.measured_on_gpu = nbytes, gpu
            if f.declared is not None and nbytes > f.declared:
                log.warning(
                    "model %s was measured at %s, above its declared %s: the declared figure "
                    "is what swapyard places it with",
                    spec.id, fmt_bytes(nbytes), fmt_bytes(f.declared),
                )  # fmt: skip
        if self._store is not None:
            self._store.put(spec, nbytes, asleep=asleep, gpu=gpu)

    # -- what the GPUs hold now -------------------------------------------------------
    def read(
        self,
        groups: Mapping[int, str],
        tree: Mapping[int, str],
        planned: Mapping[str, int],
        budget: Mapping[str, int],
    ) -> dict[str, int]:
        """Read the GPUs; return per device what other processes hold beyond the
        part of the device the budget leaves aside (a declared budget smaller than
        the device already leaves room for them). ``groups``: process group →
        model of each running engine; ``tree``: pid → model of their descendants
        that left the group; ``planned``: what the scheduler places our models
        with per device (used when the GPU lists processes of another PID
        namespace, as in a container, which cannot be told apart)."""
        r = reader() if self.cuda else None
        if r is None:
            self.devices = {}
            return {}
        out: dict[str, DeviceHeld] = {}
        beyond: dict[str, int] = {}
        for index, g in r.read().items():
            holders = tuple(_holder(p, groups, tree) for p in g.processes)
            if any(not alive(h.pid) for h in holders):
                foreign = g.used - GPU_RESERVE - planned.get(index, 0)
            else:
                foreign = sum(h.used for h in holders if h.model is None)
            out[index] = DeviceHeld(g.total, g.used, max(0, foreign), holders)
            aside = max(0, g.total - GPU_RESERVE - budget.get(index, g.total))
            beyond[index] = max(0, foreign - aside)
        self.devices = out
        return beyond

    def share_args(self, spec: ModelSpec, devices: tuple[str, ...], need: int | None) -> list[str]:
        """The flag and share to start ``spec`` with on ``devices``: none when the
        user declared a share, the engine takes none, or there is no GPU. The share
        comes from the declared or estimated need when there is one, not from a
        measurement (what an engine held beyond its share would otherwise come
        back as a bigger share at every start)."""
        share = spec.share
        if share is None or share.declared is not None or not self.cuda:
            return []
        f = self.figures.get(spec.id)
        base = next((n for n in (f.declared, f.estimated) if n is not None), need) if f else need
        if not base:
            return []
        r = reader()
        now = r.read() if r is not None else {}
        readings = [
            now.get(d) or GpuReading(d, self.totals[d], 0) for d in devices
            if d in now or d in self.totals
        ]  # fmt: skip
        fraction = share_for(base, readings, share.of_free)
        if fraction is None:
            log.warning("no reading of GPU %s: %s starts with its engine's own default share",
                        ",".join(devices), spec.id)  # fmt: skip
            return []
        return [share.flag, f"{fraction:.4f}"]

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
                + (f", swapyard's {h.model!r}" if h.model else "")
                + (", not started by swapyard" if not h.model and alive(h.pid) else "")
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


def _holder(p: GpuProcess, groups: Mapping[int, str], tree: Mapping[int, str]) -> Holder:
    if not alive(p.pid):  # listed by NVML from another PID namespace (a container)
        return Holder(p.pid, "(not visible from here)", p.used)
    return Holder(p.pid, p.name, p.used, tree.get(p.pid) or groups.get(pgid_of(p.pid) or -1))
