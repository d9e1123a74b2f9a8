"""Which engine processes a swapyard started, kept on disk so that the next one can
adopt or reap them (issue 10, "supervise like an init system").

A swapyard that is killed (``kill -9``, OOM, ``systemctl restart``) leaves its
engines running with their ports and GPU memory. Each engine it starts gets one
record, ``<directory>/<quoted model id>.json``, written when the process is
spawned and removed when it is stopped. The next swapyard reads the records,
asks ``is_alive_same`` whether each pid is still *that* process, and ``triage``
says what to do:

==================  ==================  ============  =====================================
spec in config?     ``spec_hash`` same  alive_same    decision
==================  ==================  ============  =====================================
no (model removed)  --                  yes           ``reap``: stop the whole group
no (model removed)  --                  no            ``forget``: drop the record
yes                 no (changed)        yes           ``reap``
yes                 no (changed)        no            ``forget``
yes                 yes                 no            ``forget``: dead, zombie or pid reused
yes                 yes                 yes           ``adopt_if_healthy``: health check, then
                                                      adopt (same pid, port, ready at once);
                                                      unhealthy → ``reap``
==================  ==================  ============  =====================================

``forget`` never signals anything: a pid that is not the recorded process (its
start time or process group differ) belongs to a stranger, or to nobody. A
record from before a reboot fails the same check (a match would need the same
pid, group and clock tick).

Nothing here sends a signal; the caller reaps with ``killpg(record.pgid, ...)``.
The check and the signal are not atomic, but while the recorded leader lives its
group id cannot be handed to another group, so the window is the leader's own
exit between the two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from swapyard.config import ModelSpec
from swapyard.errors import SwapyardError

log = logging.getLogger("swapyard.registry")

Decision = Literal["adopt_if_healthy", "reap", "forget"]

_FORMAT = 1  # bumped when a record's fields change meaning


def spec_hash(spec: ModelSpec) -> str:
    """A sha256 hex digest of what determines the engine *process*, so that a
    record written for one config can be matched against the current one.

    In: ``cmd`` (as configured, ``${PORT}`` unrendered: the adopted engine keeps
    its recorded port), ``env``, ``proxy`` (where it is reached),
    ``check_endpoint`` (what "healthy" means), ``engine`` (the adapter that
    talks to it) and ``fields`` (the engine settings, whole: most of them are
    already in ``cmd``, and the rest — keys, sleep level, fast swap — change what
    the process was started for or how it is driven; a needless restart costs a
    load, adopting the wrong process costs wrong answers).

    Out, because a change needs no restart: ``id``/``name``/``aliases``, ``ttl``,
    ``priority``, ``pin``, ``max_concurrent``, ``unlisted``, ``footer``,
    ``start_timeout``/``stop_timeout``, ``cmd_stop``, ``memory``/``gpus``,
    ``sleep_memory``/``host_memory``, headers, ``upstream_model``, and the stream
    flags — these are read per request or per decision, not baked into the process.

    Values may hold secrets (API keys in ``fields`` or ``cmd``); only the digest
    is kept.

    ``env_drop`` is in when it is not empty (issue 11): an engine started before
    a reload named another key variable may hold it, and must restart. (Left out
    when empty, so that a config without keys keeps the digests it had.)
    """
    fields = None if spec.fields is None else dataclasses.asdict(spec.fields)
    doc = {
        "cmd": list(spec.cmd),
        "env": dict(spec.env),
        "proxy": spec.proxy,
        "check_endpoint": spec.check_endpoint,
        "engine": spec.engine,
        "fields": fields,
    }
    if spec.env_drop:
        doc["env_drop"] = sorted(spec.env_drop)
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class EngineRecord:
    """One engine process a swapyard started. ``pid`` is the group leader;
    ``start_time`` is its start in clock ticks since boot (``/proc/<pid>/stat``
    field 22), which with ``pgid`` tells it apart from a later process that got
    the same pid."""

    model: str
    spec_hash: str
    pid: int
    pgid: int
    start_time: int
    port: str  # "" when the engine has no allocated port
    upstream: str  # base URL, ``${PORT}`` rendered
    devices: tuple[str, ...]
    started_at: float  # unix time
    owner_pid: int  # the swapyard that wrote it
    state: str = "ready"  # "ready" or "sleeping" (a fast swap out): how to adopt it

    def to_json(self) -> str:
        doc = {"format": _FORMAT, **dataclasses.asdict(self)}
        doc["devices"] = list(self.devices)
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EngineRecord:
        """Parse a record; ``ValueError`` if it is not one (wrong JSON, missing or
        extra keys, a value of the wrong type, another format)."""
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.pop("format", None) != _FORMAT:
            raise ValueError(f"not a format-{_FORMAT} record")
        names = {f.name for f in dataclasses.fields(cls)}
        if set(doc) != names:
            raise ValueError(f"keys differ: {sorted(set(doc) ^ names)}")
        devices = doc["devices"]
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise ValueError("devices: expected a list of strings")
        return cls(
            model=_typed(doc, "model", str),
            spec_hash=_typed(doc, "spec_hash", str),
            pid=_typed(doc, "pid", int),
            pgid=_typed(doc, "pgid", int),
            start_time=_typed(doc, "start_time", int),
            port=_typed(doc, "port", str),
            upstream=_typed(doc, "upstream", str),
            devices=tuple(devices),
            started_at=float(_typed(doc, "started_at", (int, float))),
            owner_pid=_typed(doc, "owner_pid", int),
            state=_typed(doc, "state", str),
        )


def _typed(doc: dict[str, Any], key: str, kind: Any) -> Any:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{key}: unexpected {type(value).__name__}")
    return value


def proc_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if there is
    no such process or it is a zombie (or dead)."""
    if pid <= 0:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) is in parentheses and may hold spaces and ")": split after the last.
    after = stat.rpartition(")")[2].split()
    try:
        state, start = after[0], int(after[19])  # fields 3 and 22
    except (IndexError, ValueError):  # pragma: no cover - not the kernel's format
        return None
    return None if state in ("Z", "X", "x") else start


def is_alive_same(record: EngineRecord) -> bool:
    """Whether ``record.pid`` is still the recorded process: it exists, is not a
    zombie, started at ``record.start_time`` and is in process group
    ``record.pgid``. Anything else — a reused pid included — is False."""
    if record.pid <= 0:
        return False
    try:
        pgid = os.getpgid(record.pid)
    except OSError:
        return False
    # Read the start time after the group: if the pid was reused before getpgid,
    # the start time we read now is the stranger's and cannot match.
    return pgid == record.pgid and proc_start_time(record.pid) == record.start_time


def triage(record: EngineRecord, spec: ModelSpec | None, *, alive_same: bool) -> Decision:
    """What to do with one record at start-up (the table in the module docstring).

    ``spec`` is the current config's spec for ``record.model`` (None: removed);
    ``alive_same`` is ``is_alive_same(record)``. ``adopt_if_healthy`` leaves the
    health check to the caller: unhealthy → reap.
    """
    if not alive_same:
        return "forget"
    if spec is None or spec_hash(spec) != record.spec_hash:
        return "reap"
    return "adopt_if_healthy"


class EngineRegistry:
    """The records in one directory, one file per model.

    Writes are atomic (a temp file in the same directory, then ``os.replace``),
    so a swapyard killed mid-write leaves the old record or the new one, never a
    torn one. Files are mode 0600. The directory is created on the first ``put``.
    Write failures raise ``SwapyardError`` naming the path and the OS reason;
    unreadable records are logged, removed and skipped.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, model: str) -> Path:
        """The record file for ``model`` (ids may hold ``/`` and ``:``)."""
        return self.directory / (quote(model, safe="") + ".json")

    def put(self, record: EngineRecord) -> None:
        """Write ``record``, replacing any record for the same model."""
        target = self.path(record.model)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _error("cannot create the engine registry", self.directory, exc) from exc
        tmp: str | None = None
        try:
            # Mode 0600 (mkstemp's); a leading dot and another suffix, so that
            # records() never reads a temp file.
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(record.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(self.directory)
        except OSError as exc:
            raise _error("cannot write the engine record", target, exc) from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def remove(self, model: str) -> None:
        """Drop the record for ``model``; a missing one is fine."""
        target = self.path(model)
        try:
            target.unlink(missing_ok=True)
        except OSError as exc:
            raise _error("cannot remove the engine record", target, exc) from exc

    def get(self, model: str) -> EngineRecord | None:
        """The record for ``model``, or None (missing, or unreadable and removed)."""
        return self._read(self.path(model))

    def records(self) -> list[EngineRecord]:
        """Every readable record, ordered by file name; a missing directory has none."""
        try:
            paths = sorted(self.directory.glob("*.json"))
        except OSError:  # pragma: no cover - glob swallows most errors itself
            return []
        return [r for p in paths if (r := self._read(p)) is not None]

    def _read(self, path: Path) -> EngineRecord | None:
        try:
            record = EngineRecord.from_json(path.read_bytes())
            if self.path(record.model) != path:
                raise ValueError(f"it names model {record.model!r}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            why = _reason(exc) if isinstance(exc, OSError) else str(exc)
            log.warning("engine record %s is unreadable (%s); removing it", path, why)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        return record


def _fsync_dir(directory: Path) -> None:
    """Make the rename durable across a power loss, not just a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _error(what: str, path: Path, exc: OSError) -> SwapyardError:
    return SwapyardError(f"{what} {path}: {_reason(exc)}")
