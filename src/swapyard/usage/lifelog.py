"""One log line per lifecycle event, for operators who follow ``journalctl -f`` (issue 10).

A bus listener (``on_event``) writes each engine state change, eviction, reaped
engine and config reload as one record on the ``swapyard.lifecycle`` logger; the
ring behind ``GET /api/logs`` (attached to ``swapyard``) sees it like any other
record. ``swapyard serve`` sends that logger to stdout (``log_to``) in the format
asked for, and keeps it off the stderr handler so a journal holds each line once.

``format_event`` is the whole format, a pure function of the event::

    text  m: ready after 1.24 s (pid 4242, port 40123)
    json  {"ts": "2026-...Z", "model": "m", "event": "ready", "from_state": "starting",
           "to_state": "ready", "duration_s": 1.24, "pid": 4242, "port": 40123}

An engine's state change is named by the state it enters (``STATE_EVENTS``; a
state missing from the table is its own event, so new states need no code), then
refined by where it came from: ``started`` or ``waking``, ``ready`` or ``woke``,
``crashed`` or ``start_failed``. Errors are cut to their first line (a start
error to its reason): the rest is the engine's log tail, which may echo its
command line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from swapyard.errors import EngineStartError, SwapyardError
from swapyard.events import (
    ConfigReloaded,
    EngineReaped,
    EngineStateChanged,
    Event,
    SwapStarted,
)

LOGGER = "swapyard.lifecycle"
log = logging.getLogger(LOGGER)

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")

# The event an engine's entering a state is, by state name.
STATE_EVENTS: dict[str, str] = {
    "stopped": "stopped",
    "starting": "started",
    "waking": "waking",
    "warming": "warming",
    "ready": "ready",
    "stopping": "stopping",
    "sleeping": "asleep",
    "backoff": "backoff",
    "failed": "failed",
}
# How an event reads in text, where its name is not already the words.
EVENT_WORDS: dict[str, str] = {
    "start_failed": "failed to start",
    "config_reloaded": "config reloaded",
    "config_reload_refused": "config reload refused",
}
STARTING_STATES = frozenset({"starting", "waking", "warming"})
SERVING_STATES = frozenset({"ready", "sleeping"})
# Pid and port are shown in text where an operator looks for them; json has them always.
SHOWS_PROCESS = frozenset({"started", "ready", "adopted"})
WARNINGS = frozenset({"crashed", "start_failed", "failed", "backoff", "config_reload_refused"})


@dataclass(frozen=True, slots=True)
class Line:
    """One lifecycle event, described once for both formats."""

    model: str | None
    event: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def level(self) -> int:
        return logging.WARNING if self.event in WARNINGS else logging.INFO


def state_event(old: str, new: str, woke: bool = False, reason: str | None = None) -> str:
    """The event name for an engine going from state ``old`` to ``new`` (``reason``
    as the actor gave it)."""
    if reason == "adopted":
        return "adopted"
    if new in ("starting", "waking") and old == "sleeping":
        return "waking"
    if new == "ready" and woke:
        return "woke"
    if new == "failed" and reason == "start limit":
        return "failed"
    if new in ("failed", "backoff") and old in SERVING_STATES:
        return "crashed"
    if new in ("failed", "backoff") and (old in STARTING_STATES or old in ("stopped", "stopping")):
        return "start_failed"
    if new == "stopped" and old in SERVING_STATES and reason == "exited":
        return "exited"
    return STATE_EVENTS.get(new, new)


def describe(ev: Event) -> Line | None:
    """The lifecycle line for ``ev``, or None for events that are not lifecycle
    (requests, admissions, a swap with nothing to evict)."""
    if isinstance(ev, EngineStateChanged):
        return _state_line(ev)
    if isinstance(ev, SwapStarted):
        if ev.old is None:
            return None
        return Line(ev.old, "evicted", f"{ev.old}: evicted for {ev.new} ({ev.mode})",
                    {"for_model": ev.new, "mode": ev.mode})  # fmt: skip
    if isinstance(ev, EngineReaped):
        return Line(ev.model, "reaped", f"{ev.model}: reaped pid {ev.pid} ({ev.reason})",
                    {"pid": ev.pid, "reason": ev.reason})  # fmt: skip
    if isinstance(ev, ConfigReloaded):
        return _reload_line(ev)
    return None


def format_event(ev: Event, fmt: LogFormat = "text", *, now: float | None = None) -> str | None:
    """``ev`` as one line of ``fmt``, or None when it is not a lifecycle event.

    JSON lines carry ``ts`` (ISO 8601 UTC, from ``now``, default the clock),
    ``model`` (null for reloads), ``event`` and the fields that apply."""
    line = describe(ev)
    if line is None:
        return None
    if fmt == "text":
        return line.text
    when = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    doc = {"ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
           "model": line.model, "event": line.event, **line.fields}  # fmt: skip
    return json.dumps(doc, ensure_ascii=False)


def on_event(ev: Event) -> None:
    """The bus listener: one record on ``swapyard.lifecycle`` per lifecycle event.
    The record carries the event, so a handler can render it as json."""
    line = describe(ev)
    if line is not None:
        log.log(line.level, "%s", line.text, extra={"lifecycle_event": ev})


class LifecycleFormatter(logging.Formatter):
    """Renders lifecycle records as ``format_event`` does, stamped when logged."""

    def __init__(self, fmt: LogFormat) -> None:
        super().__init__()
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        ev = getattr(record, "lifecycle_event", None)
        if ev is not None:
            out = format_event(ev, self.fmt, now=record.created)
            if out is not None:
                return out
        return record.getMessage()


def log_to(fmt: LogFormat, stream: TextIO | None = None) -> logging.Handler:
    """Send lifecycle lines to ``stream`` (stdout) in ``fmt``, and keep them off
    the handlers already on the root logger (stderr), so each is written once."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LifecycleFormatter(fmt))
    log.addHandler(handler)
    for other in logging.getLogger().handlers:
        other.addFilter(_not_lifecycle)
    return handler


def detach(handler: logging.Handler) -> None:
    """Undo ``log_to``."""
    log.removeHandler(handler)
    for other in logging.getLogger().handlers:
        other.removeFilter(_not_lifecycle)


def _not_lifecycle(record: logging.LogRecord) -> bool:
    return record.name != LOGGER and not record.name.startswith(LOGGER + ".")


def _state_line(ev: EngineStateChanged) -> Line:
    old, new = str(ev.old), str(ev.new)
    event = state_event(old, new, ev.woke, ev.reason)
    port: int | str | None = None
    if ev.port:
        port = int(ev.port) if ev.port.isdigit() else ev.port
    error = _error_text(ev.error) if ev.error is not None else None
    fields: dict[str, Any] = {"from_state": old, "to_state": new}
    optional = {"duration_s": None if ev.load_s is None else round(ev.load_s, 3),
                "pid": ev.pid, "port": port, "exit_code": ev.exit_code,
                "retry_in_s": ev.retry_in, "reason": ev.reason or None, "error": error}  # fmt: skip
    fields.update((k, v) for k, v in optional.items() if v is not None)

    text = f"{ev.model}: {EVENT_WORDS.get(event, event.replace('_', ' '))}"
    if ev.load_s is not None:
        text += f" after {ev.load_s:.2f} s"
    if ev.retry_in is not None:
        text += f", retry in {ev.retry_in:.1f} s"
    details = [ev.reason] if ev.reason and ev.reason != event else []
    if event in SHOWS_PROCESS:
        details += [f"{k} {fields[k]}" for k in ("pid", "port") if k in fields]
    if ev.exit_code is not None:
        details.append(f"exit code {ev.exit_code}")
    if details:
        text += f" ({', '.join(details)})"
    if error:
        text += f": {error}"
    return Line(ev.model, event, text, fields)


def _reload_line(ev: ConfigReloaded) -> Line:
    if ev.error is not None:
        error = _first_line(ev.error)
        return Line(None, "config_reload_refused", f"config reload from {ev.source} refused: "
                    f"{error}", {"source": ev.source, "error": error})  # fmt: skip
    groups = {"added": ev.added, "changed": ev.changed, "removed": ev.removed,
              "unchanged": ev.unchanged}  # fmt: skip
    said = "; ".join(f"{k} {', '.join(v)}" for k, v in groups.items() if v) or "no models"
    fields = {"source": ev.source, **{k: list(v) for k, v in groups.items()}}
    return Line(None, "config_reloaded", f"config reloaded from {ev.source}: {said}", fields)


def _error_text(err: SwapyardError) -> str:
    # A backoff or a start limit carries the failure that caused it: that is the news.
    # A start error keeps its reason apart: the line already names the model and
    # says it failed, so "m: failed to start: model 'm' failed to start: ..." is noise.
    cause = getattr(err, "cause", None)
    if isinstance(cause, SwapyardError):
        err = cause
    if isinstance(err, EngineStartError):
        return _first_line(err.reason)
    return _first_line(err.message)


def _first_line(message: str) -> str:
    return message.strip().split("\n", 1)[0]
