"""What the GPUs hold right now: NVML on a real machine, or a simulated GPU.

A reading gives, per CUDA index, the device's total and used memory and the
processes holding it (pid, name, bytes), as ``nvidia-smi`` would. swapyard reads
it to size its budget, to measure its own engines, and to see the memory other
processes hold (the foreign share).

The simulated GPU stands in for NVML on machines without one (the test suite, CI):
``SWAPYARD_SIMULATED_GPU`` names a ledger file that the protocol fakes of vLLM,
SGLang and TabbyAPI allocate from and free into, exactly as the real engines take
and release CUDA memory; swapyard's reader reads the same file. As with a real
GPU, what a process holds is released when it dies (entries of dead processes
are ignored and pruned).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from swapyard.process.group import stat_of

log = logging.getLogger("swapyard.gpu")
SIMULATED_ENV = "SWAPYARD_SIMULATED_GPU"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    name: str
    used: int


@dataclass(frozen=True, slots=True)
class GpuReading:
    index: str
    total: int
    used: int
    processes: tuple[GpuProcess, ...] = ()

    @property
    def free(self) -> int:
        return max(0, self.total - self.used)


class GpuReader(Protocol):
    simulated: bool

    def read(self) -> dict[str, GpuReading]:
        """CUDA index → what the device holds now ({} when it cannot be read)."""
        ...


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or f"pid {pid}"
    except OSError:
        return f"pid {pid}"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: its memory is already released)."""
    st = stat_of(pid)
    return st is not None and not st.zombie


class NvmlReader:
    """NVML (``nvidia-ml-py``), initialised once and kept."""

    simulated = False

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    @classmethod
    def open(cls) -> NvmlReader | None:
        try:
            import pynvml
        except ImportError:
            return None
        nvml: Any = pynvml
        try:
            nvml.nvmlInit()
            if nvml.nvmlDeviceGetCount() == 0:
                return None
        except nvml.NVMLError as exc:
            log.info("NVML is installed but not usable (%s): using RAM", exc)
            return None
        return cls(nvml)

    def read(self) -> dict[str, GpuReading]:
        nvml = self._nvml
        out = {}
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                info = nvml.nvmlDeviceGetMemoryInfo(handle)
                procs: dict[int, int] = {}
                for name in (
                    "nvmlDeviceGetComputeRunningProcesses",
                    "nvmlDeviceGetGraphicsRunningProcesses",
                ):
                    get = getattr(nvml, name, None)
                    if get is None:
                        continue
                    with contextlib.suppress(nvml.NVMLError):
                        for p in get(handle):
                            procs[p.pid] = max(procs.get(p.pid, 0), int(p.usedGpuMemory or 0))
                holders = tuple(GpuProcess(pid, process_name(pid), n) for pid, n in procs.items())
                out[str(i)] = GpuReading(str(i), int(info.total), int(info.used), holders)
        except nvml.NVMLError as exc:  # pragma: no cover - a GPU that fell off the bus
            log.warning("NVML read failed: %s", exc)
            return {}
        return out


class Ledger:
    """The simulated GPU: a JSON file of device totals and what each pid holds,
    changed under an exclusive lock so concurrent engines see one truth."""

    simulated = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | os.PathLike[str], totals: Mapping[str, int]) -> Ledger:
        ledger = cls(path)
        with ledger.transaction() as doc:
            doc["devices"] = {str(d): int(t) for d, t in totals.items()}
            doc["held"] = {}
        return ledger

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict[str, Any]]:
        """The ledger under an exclusive lock (a lock file beside it); written back
        by a rename, so a process killed mid-write never leaves it half written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(str(self.path) + ".lock", "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                text = ""
            doc: dict[str, Any] = json.loads(text) if text.strip() else {}
            doc.setdefault("devices", {})
            doc.setdefault("held", {})
            before = json.dumps(doc, sort_keys=True)
            doc["held"] = {p: h for p, h in doc["held"].items() if alive(int(p))}
            yield doc
            after = json.dumps(doc, sort_keys=True)
            if after != before:
                tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(after)
                tmp.replace(self.path)

    def read(self) -> dict[str, GpuReading]:
        try:
            with self.transaction() as doc:
                return _readings(doc)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the simulated GPU %s: %s", self.path, exc)
            return {}

    def allocate(self, pid: int, device: str, nbytes: int) -> bool:
        """Take ``nbytes`` more on ``device`` for ``pid``; False (nothing taken) when
        fewer bytes are free, as cudaMalloc fails."""
        with self.transaction() as doc:
            reading = _readings(doc).get(device)
            if reading is None or reading.free < nbytes:
                return False
            held = doc["held"].setdefault(str(pid), {})
            held[device] = held.get(device, 0) + int(nbytes)
            return True

    def release(self, pid: int, device: str, nbytes: int | None = None) -> None:
        """Give back ``nbytes`` (all when None) that ``pid`` holds on ``device``."""
        with self.transaction() as doc:
            held = doc["held"].get(str(pid), {})
            left = 0 if nbytes is None else max(0, held.get(device, 0) - int(nbytes))
            if left:
                held[device] = left
            else:
                held.pop(device, None)
            if not held:
                doc["held"].pop(str(pid), None)


def _readings(doc: Mapping[str, Any]) -> dict[str, GpuReading]:
    out = {}
    for device, total in doc["devices"].items():
        procs = tuple(
            GpuProcess(int(pid), process_name(int(pid)), int(h[device]))
            for pid, h in doc["held"].items()
            if h.get(device)
        )
        out[device] = GpuReading(device, int(total), sum(p.used for p in procs), procs)
    return out


_READER: GpuReader | None = None
_READER_KEY: str | None = None


def reset_reader() -> None:
    """Forget the reader (tests that swap NVML or the simulated GPU)."""
    global _READER, _READER_KEY
    _READER, _READER_KEY = None, None


def reader() -> GpuReader | None:
    """The simulated GPU when ``SWAPYARD_SIMULATED_GPU`` names one, else NVML when
    it works, else None (no GPU: swapyard packs into RAM)."""
    global _READER, _READER_KEY
    key = os.environ.get(SIMULATED_ENV, "")
    if _READER is not None and key == _READER_KEY:
        return _READER
    _READER = Ledger(key) if key else NvmlReader.open()
    _READER_KEY = key
    return _READER


def pgid_of(pid: int) -> int | None:
    st = stat_of(pid)
    return st.pgid if st is not None else None
