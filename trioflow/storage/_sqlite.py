"""The embedded durable default: one SQLite file, no server, shared by any number of
processes on one machine.

sqlite3 blocks, so every call runs in a worker thread, one at a time per storage (a
`trio.CapacityLimiter` of 1), and never on the Trio thread — except under Trio's
MockClock, where it runs inline so that it takes no virtual time (`_realtime.run_io`).
Each call is bounded in real time by SQLite's busy timeout, never by a Trio deadline.
WAL mode lets readers in other processes go on while one writes; each state change is
one transaction. SQLite has no notifications: `data_version` (PRAGMA data_version,
which changes when another connection commits) is the cheap check an engine polls
before looking for cancel requests.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from .. import _snapshot
from .._errors import RunNotFoundError, StorageError
from .._logs import STORED_LOGS, LogEntry, NewLog, with_drop_marker
from .._realtime import run_io
from .._results import RunStatus
from ._base import SQL_COLUMNS, TERMINAL_STATUSES, RunRow, RunSummary, Storage, row_from_sql

T = TypeVar("T")

SCHEMA_VERSION = 2  # 2: the queued column
_SCHEMA = """
CREATE TABLE IF NOT EXISTS trioflow_runs (
    run_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    status TEXT NOT NULL,
    snapshot BLOB NOT NULL,
    owner TEXT,
    lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_reason TEXT,
    queued INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trioflow_runs_status ON trioflow_runs (status, workflow_id);
CREATE INDEX IF NOT EXISTS trioflow_runs_owner ON trioflow_runs (owner);
CREATE INDEX IF NOT EXISTS trioflow_runs_created ON trioflow_runs (created_at);
CREATE INDEX IF NOT EXISTS trioflow_runs_queue ON trioflow_runs (created_at)
    WHERE status = 'pending' AND queued = 1;
"""
# Beside the runs: each run's log records and the trace context of its first execution.
# New tables only, created when missing, which an older trioflow ignores: no version bump.
_OBSERVABILITY_SCHEMA = """
CREATE TABLE IF NOT EXISTS trioflow_logs (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    level TEXT NOT NULL,
    step_id TEXT,
    attempt INTEGER,
    message TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trioflow_traces (
    run_id TEXT PRIMARY KEY,
    traceparent TEXT NOT NULL,
    tracestate TEXT
);
"""
_NOT_ENDED = "status NOT IN ('success', 'failed', 'canceled')"


class SQLiteStorage(Storage):
    """Runs in the SQLite file at `path` (created if missing).

    ``synchronous="NORMAL"`` (the default, with WAL) survives a crash of the process at
    any point; a power loss may lose the last transactions. ``"FULL"`` survives that
    too, at the price of an fsync per transaction. Give each engine its own instance:
    `data_version` only sees commits of other connections. `timeout` is how many seconds
    a call waits for a lock another connection holds before it raises `StorageError`.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL", timeout: float = 5.0
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.path = os.fspath(path)
        self._synchronous = synchronous.upper()
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        # run id -> (owner, status) this instance last saved while the owner held it.
        self._saved: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self!r} is not open; use it inside open_engine() or async with")

        def work() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.rollback()
                raise _storage_error(self.path, exc) from exc

        return await run_io(work, limiter=self._limiter)

    async def open(self) -> None:
        if self._conn is not None:
            await trio.lowlevel.checkpoint()
            return

        def connect() -> sqlite3.Connection:
            try:
                conn = sqlite3.connect(
                    self.path,
                    timeout=self._timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            except sqlite3.Error as exc:
                raise _storage_error(self.path, exc) from exc
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute("BEGIN IMMEDIATE")
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                if version > SCHEMA_VERSION:
                    conn.rollback()
                    raise StorageError(
                        f"{self.path} was written by a newer trioflow (schema version "
                        f"{version}, this one knows up to {SCHEMA_VERSION}); upgrade trioflow"
                    )
                if version == 1:
                    conn.execute(
                        "ALTER TABLE trioflow_runs ADD COLUMN queued INTEGER NOT NULL DEFAULT 0"
                    )
                for statement in (_SCHEMA + _OBSERVABILITY_SCHEMA).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                conn.close()
                raise _storage_error(self.path, exc) from exc
            except BaseException:
                conn.close()
                raise
            return conn

        self._conn = await run_io(connect, limiter=self._limiter)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.CancelScope(shield=True):
            await run_io(conn.close, limiter=self._limiter)

    async def insert(
        self,
        run_id: str,
        workflow_id: str,
        status: RunStatus,
        snapshot: bytes,
        now: float,
        *,
        queued: bool = False,
    ) -> None:
        def work(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, "
                    "queued, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, workflow_id, status, snapshot, queued, now, now),
                )
            except sqlite3.IntegrityError:
                raise ValueError(
                    f"a run with id {run_id!r} is already stored; pick another run_id"
                ) from None

        await self._call(work)

    async def load(self, run_id: str) -> RunRow:
        def work(conn: sqlite3.Connection) -> RunRow:
            values = conn.execute(
                f"SELECT {SQL_COLUMNS} FROM trioflow_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if values is None:
                raise RunNotFoundError(run_id)
            return row_from_sql(values)

        return await self._call(work)

    async def save(
        self,
        run_id: str,
        status: RunStatus,
        snapshot: bytes,
        owner: str,
        now: float,
        *,
        release: bool,
    ) -> bool:
        # Setting status or owner rewrites their index entries, which costs more than
        # the snapshot itself. Most saves (one per step) change neither: while `owner`
        # holds the run nobody else changes its status (a cancel only flags it, and a
        # takeover changes the owner, which the compare-and-set below catches).
        unchanged = not release and self._saved.get(run_id) == (owner, status)

        def work(conn: sqlite3.Connection) -> bool:
            if unchanged:
                cursor = conn.execute(
                    "UPDATE trioflow_runs SET snapshot = ?, updated_at = ? "
                    f"WHERE run_id = ? AND owner = ? AND {_NOT_ENDED}",
                    (snapshot, now, run_id, owner),
                )
            elif not release:
                cursor = conn.execute(
                    "UPDATE trioflow_runs SET status = ?, snapshot = ?, updated_at = ? "
                    f"WHERE run_id = ? AND owner = ? AND {_NOT_ENDED}",
                    (status, snapshot, now, run_id, owner),
                )
            else:
                cursor = conn.execute(
                    "UPDATE trioflow_runs SET status = ?, snapshot = ?, updated_at = ?, "
                    "owner = NULL, lease_until = NULL "
                    f"WHERE run_id = ? AND owner = ? AND {_NOT_ENDED}",
                    (status, snapshot, now, run_id, owner),
                )
            return cursor.rowcount == 1

        saved = await self._call(work)
        if saved and not release:
            self._saved[run_id] = (owner, status)
        else:
            self._saved.pop(run_id, None)
        return saved

    async def claim(
        self,
        run_id: str,
        owner: str,
        statuses: tuple[str, ...],
        now: float,
        lease_until: float,
    ) -> RunRow | None:
        marks = ", ".join("?" * len(statuses))

        def work(conn: sqlite3.Connection) -> RunRow | None:
            values = conn.execute(
                f"UPDATE trioflow_runs SET owner = ?, lease_until = ? WHERE run_id = ? "
                f"AND status IN ({marks}) AND (owner IS NULL OR lease_until < ?) "
                f"RETURNING {SQL_COLUMNS}",
                (owner, lease_until, run_id, *statuses, now),
            ).fetchone()
            return None if values is None else row_from_sql(values)

        return await self._call(work)

    async def claim_queued(
        self,
        owner: str,
        workflow_ids: list[str],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[RunRow]:
        if not workflow_ids or limit < 1:
            await trio.lowlevel.checkpoint()
            return []
        marks = ", ".join("?" * len(workflow_ids))

        takeable = (
            "SELECT run_id FROM trioflow_runs WHERE status = 'pending' AND queued = 1 "
            f"AND workflow_id IN ({marks}) AND (owner IS NULL OR lease_until < ?) "
            "ORDER BY created_at LIMIT ?"
        )

        def work(conn: sqlite3.Connection) -> list[RunRow]:
            # An idle worker polls: look first, and take the write lock only for work.
            if not conn.execute(takeable, (*workflow_ids, now, 1)).fetchone():
                return []
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            rows = conn.execute(
                "UPDATE trioflow_runs SET owner = ?, lease_until = ? "
                f"WHERE run_id IN ({takeable}) RETURNING {SQL_COLUMNS}",
                (owner, lease_until, *workflow_ids, now, limit),
            ).fetchall()
            conn.execute("COMMIT")
            return sorted((row_from_sql(values) for values in rows), key=lambda r: r.created_at)

        return await self._call(work)

    async def renew(self, owner: str, run_ids: list[str], lease_until: float) -> None:
        await self._call(
            lambda conn: conn.executemany(
                "UPDATE trioflow_runs SET lease_until = ? WHERE owner = ? AND run_id = ?",
                [(lease_until, owner, run_id) for run_id in run_ids],
            )
        )

    async def release(self, owner: str) -> None:
        self._saved = {run_id: v for run_id, v in self._saved.items() if v[0] != owner}
        await self._call(
            lambda conn: conn.execute(
                "UPDATE trioflow_runs SET owner = NULL, lease_until = NULL WHERE owner = ?",
                (owner,),
            )
        )

    async def recoverable(self, workflow_ids: list[str], now: float, limit: int) -> list[str]:
        if not workflow_ids:
            await trio.lowlevel.checkpoint()
            return []
        marks = ", ".join("?" * len(workflow_ids))

        def work(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT run_id FROM trioflow_runs WHERE status IN ('running', 'waiting') "
                f"AND workflow_id IN ({marks}) AND (owner IS NULL OR lease_until < ?) "
                "ORDER BY updated_at LIMIT ?",
                (*workflow_ids, now, limit),
            ).fetchall()
            return [run_id for (run_id,) in rows]

        return await self._call(work)

    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        def work(conn: sqlite3.Connection) -> RunStatus:
            conn.execute("BEGIN IMMEDIATE")
            values = conn.execute(
                "SELECT status, snapshot, owner, lease_until FROM trioflow_runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if values is None:
                conn.rollback()
                raise RunNotFoundError(run_id)
            status, data, owner, lease_until = values
            if status in TERMINAL_STATUSES:
                conn.rollback()
                return status  # type: ignore[no-any-return]
            if owner is not None and lease_until is not None and lease_until >= now:
                conn.execute(
                    "UPDATE trioflow_runs SET cancel_requested = 1, cancel_reason = ? "
                    "WHERE run_id = ?",
                    (reason, run_id),
                )
                conn.execute("COMMIT")
                return status  # type: ignore[no-any-return]
            try:
                snapshot = _snapshot.cancel_idle(_snapshot.decode(run_id, data), reason, now)
            except BaseException:
                conn.rollback()
                raise
            conn.execute(
                "UPDATE trioflow_runs SET status = 'canceled', snapshot = ?, cancel_requested = 1,"
                " cancel_reason = ?, owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE run_id = ?",
                (_snapshot.encode(snapshot), reason, now, run_id),
            )
            conn.execute("COMMIT")
            return "canceled"

        return await self._call(work)

    async def cancel_requests(self, owner: str) -> list[tuple[str, str | None]]:
        def work(conn: sqlite3.Connection) -> list[tuple[str, str | None]]:
            return conn.execute(
                "SELECT run_id, cancel_reason FROM trioflow_runs "
                f"WHERE owner = ? AND cancel_requested = 1 AND {_NOT_ENDED}",
                (owner,),
            ).fetchall()

        return await self._call(work)

    async def data_version(self) -> int:
        return await self._call(lambda conn: conn.execute("PRAGMA data_version").fetchone()[0])

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunSummary]:
        def work(conn: sqlite3.Connection) -> list[RunSummary]:
            rows = conn.execute(
                "SELECT run_id, workflow_id, status, created_at, updated_at FROM trioflow_runs "
                "WHERE (? IS NULL OR status = ?) AND (? IS NULL OR workflow_id = ?) "
                "ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?",
                (status, status, workflow_id, workflow_id, limit, offset),
            ).fetchall()
            return [
                RunSummary(
                    run_id=r[0], workflow_id=r[1], status=r[2], created_at=r[3], updated_at=r[4]
                )
                for r in rows
            ]

        return await self._call(work)

    async def append_logs(self, run_id: str, logs: Sequence[NewLog], *, skipped: int = 0) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            (last,) = conn.execute(
                "SELECT MAX(seq) FROM trioflow_logs WHERE run_id = ?", (run_id,)
            ).fetchone()
            first = (-1 if last is None else last) + 1 + skipped
            conn.executemany(
                "INSERT INTO trioflow_logs (run_id, seq, time, level, step_id, attempt, "
                "message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (run_id, first + i, log.time, log.level, log.step_id, log.attempt, log.message)
                    for i, log in enumerate(logs)
                ],
            )
            conn.execute(
                "DELETE FROM trioflow_logs WHERE run_id = ? AND seq <= ?",
                (run_id, first + len(logs) - 1 - STORED_LOGS),
            )
            conn.execute("COMMIT")

        await self._call(work)

    async def read_logs(self, run_id: str, *, after: int = -1) -> list[LogEntry]:
        def work(conn: sqlite3.Connection) -> list[LogEntry]:
            rows = conn.execute(
                "SELECT seq, time, level, message, step_id, attempt FROM trioflow_logs "
                "WHERE run_id = ? AND seq > ? ORDER BY seq",
                (run_id, after),
            ).fetchall()
            return [
                LogEntry(seq=r[0], time=r[1], level=r[2], message=r[3], step_id=r[4], attempt=r[5])
                for r in rows
            ]

        return with_drop_marker(await self._call(work), after)

    async def store_trace_context(self, run_id: str, carrier: dict[str, str]) -> None:
        await self._call(
            lambda conn: conn.execute(
                "INSERT OR IGNORE INTO trioflow_traces (run_id, traceparent, tracestate) "
                "VALUES (?, ?, ?)",
                (run_id, carrier["traceparent"], carrier.get("tracestate")),
            )
        )

    async def load_trace_context(self, run_id: str) -> dict[str, str] | None:
        def work(conn: sqlite3.Connection) -> dict[str, str] | None:
            row = conn.execute(
                "SELECT traceparent, tracestate FROM trioflow_traces WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                return None
            return {"traceparent": row[0], **({"tracestate": row[1]} if row[1] else {})}

        return await self._call(work)


def _storage_error(path: str, exc: sqlite3.Error) -> StorageError:
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        hint = "the file or its folder is read-only; give this process write access"
    elif "locked" in text or "busy" in text:
        hint = "another program holds a lock on it; close that program or retry"
    elif "unable to open" in text:
        hint = "check that the folder exists and is writable"
    elif "not a database" in text or "malformed" in text:
        hint = "it is not a trioflow SQLite database; point --db / SQLiteStorage at another file"
    else:
        hint = "see the cause below"
    return StorageError(f"SQLite storage {path}: {text}; {hint}")
