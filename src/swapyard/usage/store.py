"""The usage store: one row per request, plus swap and load events, in SQLite.

A file in the data dir (``usage.db``), WAL journal, schema versioned by
``PRAGMA user_version`` with migrations applied in order at open. Writes never
block the data path: rows are queued in memory and written in batches by one
background task, in a thread (``flush_every`` seconds, or sooner when
``batch`` rows are waiting). Rows older than ``retention`` are deleted at start
and then hourly. Queries are for the CLI and the dashboard.

The writer outlives any failure (issue 11: an ``OSError`` with file descriptors
exhausted ended it, and usage was lost from then on): a failed write is logged
once per distinct error and its rows wait for the next try — at most
``MAX_PENDING``, the oldest dropped first — unless the rows themselves are what
sqlite refused; one line says when writing works again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swapyard.errors import SwapyardError
from swapyard.events import EngineStateChanged, Event, RequestFinished, RequestRecord, SwapStarted
from swapyard.process.state import EngineState

log = logging.getLogger("swapyard.usage")
S = EngineState
MAX_PENDING = 10_000  # rows kept for a retry while writes fail
# sqlite refused the values (a type it cannot store is a ProgrammingError), not
# the write: retrying the same rows cannot help.
_BAD_ROWS = (
    sqlite3.ProgrammingError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.IntegrityError,
)  # fmt: skip

# Each entry takes the schema from version i to i+1. Never edit a released one:
# add a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, request_id INTEGER, model TEXT NOT NULL,
        engine TEXT, path TEXT, status INTEGER, stream INTEGER, key TEXT,
        prompt_tokens INTEGER, completion_tokens INTEGER, ttft_s REAL, tok_s REAL,
        total_s REAL, wait_s REAL, loaded INTEGER, error TEXT
    );
    CREATE INDEX requests_at ON requests(at);
    CREATE INDEX requests_model_at ON requests(model, at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, kind TEXT NOT NULL, model TEXT,
        other TEXT, seconds REAL
    );
    CREATE INDEX events_at ON events(at);
    """,
    """
    ALTER TABLE requests ADD COLUMN tokens_counted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX requests_key_at ON requests(key, at);
    """,
)
REQUEST_COLUMNS = (
    "at", "request_id", "model", "engine", "path", "status", "stream", "key", "prompt_tokens",
    "completion_tokens", "ttft_s", "tok_s", "total_s", "wait_s", "loaded", "error",
    "tokens_counted",
)  # fmt: skip


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating or migrating) the store, and its directory on first use.

    Raises ``SwapyardError`` naming the path and why when either cannot be made:
    a new user's first ``serve`` used to die in a traceback here (issue 10)."""
    path = Path(path)
    _make_dir(path.parent, "the usage store")
    try:
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error as exc:
        raise SwapyardError(f"cannot open the usage store {path}: {exc}") from exc
    migrate(db)
    return db


def _make_dir(path: Path, purpose: str) -> None:
    """Create ``path`` with its parents unless it is there; ``SwapyardError`` if not possible."""
    if path.is_dir():
        return
    if path.exists():
        raise SwapyardError(f"cannot use {path} for {purpose}: it exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SwapyardError(
            f"cannot create the directory {path} for {purpose}: {exc.strerror or exc}"
        ) from exc


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, to: int | None = None) -> None:
    target = len(MIGRATIONS) if to is None else to
    current = schema_version(db)
    if current > len(MIGRATIONS):
        raise RuntimeError(f"usage store schema {current} is newer than this swapyard")
    for version in range(current, target):
        db.execute("BEGIN")
        try:
            for stmt in MIGRATIONS[version].split(";"):
                if stmt.strip():
                    db.execute(stmt)
            db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


class UsageStore:
    def __init__(
        self,
        path: Path | str,
        retention: float = 90 * 86400.0,
        flush_every: float = 0.5,
        batch: int = 200,
    ) -> None:
        self.path = Path(path)
        self.retention = retention
        self.flush_every = flush_every
        self.batch = batch
        self.db = connect(self.path)
        # Held by the thread that writes, and to close: a write cancelled on the
        # loop's side goes on in its thread, and closing the connection under it
        # crashed the process (a segfault in sqlite at shutdown).
        self._db_lock = threading.Lock()
        self._rows: list[tuple[str, tuple[Any, ...]]] = []
        self._errors: set[str] = set()  # the distinct write errors logged since the last success
        self.dropped = 0  # rows given up on since the last success
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.prune()

    # -- writing -------------------------------------------------------------------
    def on_event(self, ev: Event) -> None:
        now = time.time()
        if isinstance(ev, RequestFinished):
            r = ev.record
            values = tuple(
                int(v) if isinstance(v, bool) else v
                for v in (getattr(r, c) for c in REQUEST_COLUMNS)
            )
            self._queue("requests", values)
        elif isinstance(ev, SwapStarted) and ev.old is not None:
            self._queue("events", (now, "swap", ev.old, ev.new, None))
        elif isinstance(ev, EngineStateChanged):
            if ev.load_s is not None:
                kind = "wake" if ev.woke else "load"
                self._queue("events", (now, kind, ev.model, None, ev.load_s))
            elif ev.new in (S.FAILED, S.BACKOFF, S.SLEEPING, S.STOPPED) and ev.new is not ev.old:
                self._queue("events", (now, str(ev.new), ev.model, None, None))

    def _queue(self, table: str, values: tuple[Any, ...]) -> None:
        self._rows.append((table, values))
        if len(self._rows) >= self.batch:
            self._wake.set()

    def run(self) -> None:
        self._task = asyncio.create_task(self._writer(), name="usage-store")

    async def _writer(self) -> None:
        last_prune = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_every)
            self._wake.clear()
            if not await self.flush():
                await asyncio.sleep(self.flush_every)  # not as fast as rows arrive
            if time.monotonic() - last_prune > 3600:
                last_prune = time.monotonic()
                try:
                    await asyncio.to_thread(self.prune)
                except Exception as exc:
                    self._failed(exc, "cannot delete old rows")

    async def flush(self) -> bool:
        """Write the queued rows; never raises. False when the write failed (the
        rows wait for the next try, unless they were the problem)."""
        rows, self._rows = self._rows, []
        if not rows:
            return True
        try:
            await asyncio.to_thread(self._write, rows)
        except Exception as exc:
            if isinstance(exc, _BAD_ROWS):
                self.dropped += len(rows)
                self._failed(exc, f"dropped {len(rows)} rows sqlite refused")
            else:
                self._rows[:0] = rows
                over = max(0, len(self._rows) - MAX_PENDING)
                del self._rows[:over]
                self.dropped += over
                self._failed(exc, f"cannot write; {len(self._rows)} rows wait for the next try")
            return False
        if self._errors:
            log.warning("usage store: writing again (%d rows dropped meanwhile)", self.dropped)
            self._errors.clear()
            self.dropped = 0
        return True

    def _failed(self, exc: Exception, what: str) -> None:
        """Log ``exc`` once per distinct error until a write succeeds."""
        key = f"{type(exc).__name__}: {exc}"
        if key not in self._errors:
            self._errors.add(key)
            log.error("usage store %s: %s (said once until it works again)", self.path,
                      f"{what}: {key}", exc_info=exc)  # fmt: skip

    def _write(self, rows: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        req = [v for t, v in rows if t == "requests"]
        evs = [v for t, v in rows if t == "events"]
        cols = ", ".join(REQUEST_COLUMNS)
        marks = ", ".join("?" * len(REQUEST_COLUMNS))
        with self._db_lock, self.db:
            self.db.execute("BEGIN")
            self.db.executemany(f"INSERT INTO requests ({cols}) VALUES ({marks})", req)
            self.db.executemany(
                "INSERT INTO events (at, kind, model, other, seconds) VALUES (?, ?, ?, ?, ?)", evs
            )

    def prune(self) -> int:
        cutoff = time.time() - self.retention
        with self._db_lock, self.db:
            self.db.execute("BEGIN")
            n = self.db.execute("DELETE FROM requests WHERE at < ?", (cutoff,)).rowcount
            self.db.execute("DELETE FROM events WHERE at < ?", (cutoff,))
        return int(n)

    async def close(self) -> None:
        """Stop the writer, write what is queued, close the file (once no thread
        is writing to it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        await asyncio.to_thread(self._close_db)

    def _close_db(self) -> None:
        with self._db_lock:
            self.db.close()

    # -- reading -------------------------------------------------------------------
    def recent(self, limit: int = 50, model: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM requests" + (" WHERE model = ?" if model else "")
        sql += " ORDER BY at DESC, id DESC LIMIT ?"
        args: tuple[Any, ...] = (model, limit) if model else (limit,)
        return [dict(row) for row in self.db.execute(sql, args)]

    def summary(self, since: float = 0.0, by: str = "model") -> list[dict[str, Any]]:
        """Requests, tokens, errors, TTFT and tok/s per model (or per key)."""
        col = {"model": "model", "key": "COALESCE(key, '-')"}[by]
        sql = f"""
            SELECT {col} AS name, COUNT(*) AS requests,
                   SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
                   COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,
                   COALESCE(SUM(completion_tokens), 0) AS completion_tokens,
                   AVG(ttft_s) AS avg_ttft_s, AVG(tok_s) AS avg_tok_s,
                   SUM(loaded) AS waited_for_load
            FROM requests WHERE at >= ? GROUP BY name ORDER BY requests DESC, name"""
        return [dict(row) for row in self.db.execute(sql, (since,))]

    def events(self, since: float = 0.0, limit: int = 200) -> list[dict[str, Any]]:
        sql = "SELECT * FROM events WHERE at >= ? ORDER BY at DESC, id DESC LIMIT ?"
        return [dict(row) for row in self.db.execute(sql, (since, limit))]


def record_from_row(row: dict[str, Any]) -> RequestRecord:
    """A stored row as a record (for tests and exports)."""
    fields = {k: row[k] for k in REQUEST_COLUMNS if k in row}
    for b in ("stream", "loaded", "tokens_counted"):
        fields[b] = bool(fields.get(b))
    return RequestRecord(**fields)
