"""The embedded durable default: one SQLite file, no server, shared by any number of
processes on one machine.

sqlite3 blocks, so a call runs in a worker thread, one at a time per storage (a
`trio.CapacityLimiter` of 1) — except under Trio's MockClock, where it runs inline so
that it takes no virtual time (`_realtime.run_io`), and except the small writes of a
run's transitions (`_call(inline=True)`): with ``synchronous=NORMAL`` a WAL commit does
not wait for the disk and costs ~20 µs, a fifth of a trip to a worker thread, so they
run on the Trio thread when nothing else holds the connection, without waiting for a
lock (the connection's busy timeout is 0; calls in a worker thread set theirs): a
write that finds the database locked by another process goes to a worker thread and
waits there. Only every `TURN_EVERY`-th inline write passes through the scheduler.
Checkpoints, the part of WAL that does wait for the disk, run in a worker thread too
(`CHECKPOINT_EVERY`). Each call is bounded in real time by SQLite's busy timeout, never
by a Trio deadline.
WAL mode lets readers in other processes go on while one writes; each state change is
one transaction. SQLite has no notifications: `data_version` (PRAGMA data_version,
which changes when another connection commits) is the cheap check an engine polls
before looking for cancel requests.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar
from urllib.request import pathname2url

import msgspec
import trio

from .. import _journal
from .._errors import RunNotFoundError, StorageError
from .._logs import STORED_LOGS, LogEntry, NewLog, with_drop_marker
from .._queues import QueueEntry, QueueLimits, QueuePlace, QueueStats
from .._realtime import run_io
from .._results import RunStatus
from . import _queue_sql, _run_sql
from ._base import (
    SQL_COLUMNS,
    TERMINAL_STATUSES,
    Claim,
    NewRun,
    RunRow,
    RunSummary,
    ScheduleState,
    Storage,
    StoredEvent,
    Write,
    row_from_sql,
    workflow_filter,
)

T = TypeVar("T")

# Writes at most this big (in bytes of entries and snapshots) may run on the Trio thread,
# and batches of at most this many (a big batch of a busy engine goes to a worker
# thread: SQLite works there while this thread's Python goes on, on another core).
INLINE_BYTES = 64 * 1024
INLINE_ITEMS = 4
# After this many inline writes, the next call checkpoints the WAL in a worker thread
# (automatic checkpoints, which would run inline in the committing call, are off).
CHECKPOINT_EVERY = 200
# Every this many inline writes, one gives the other tasks a turn (a pass through Trio's
# scheduler), not each: a pass (an epoll call) costs about what the write does.
TURN_EVERY = 8

# 2: the queued column; 3: workflow_version, forked_from, queues; 4: the journal
SCHEMA_VERSION = 4
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
    workflow_version TEXT,
    forked_from TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trioflow_entries (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trioflow_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS trioflow_events_run ON trioflow_events (run_id, seq);
CREATE INDEX IF NOT EXISTS trioflow_runs_status ON trioflow_runs (status, workflow_id);
CREATE INDEX IF NOT EXISTS trioflow_runs_owner ON trioflow_runs (owner);
CREATE INDEX IF NOT EXISTS trioflow_runs_created ON trioflow_runs (created_at);
CREATE INDEX IF NOT EXISTS trioflow_runs_status_created ON trioflow_runs (status, created_at);
CREATE INDEX IF NOT EXISTS trioflow_runs_workflow_created
    ON trioflow_runs (workflow_id, created_at);
CREATE INDEX IF NOT EXISTS trioflow_runs_queue ON trioflow_runs (created_at)
    WHERE status = 'pending' AND queued = 1;
CREATE TABLE IF NOT EXISTS trioflow_queued (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    queue_key TEXT,
    dedup_id TEXT,
    state TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    started_at REAL
);
CREATE INDEX IF NOT EXISTS trioflow_queued_order
    ON trioflow_queued (queue, state, priority DESC, seq);
CREATE INDEX IF NOT EXISTS trioflow_queued_dedup ON trioflow_queued (queue, dedup_id)
    WHERE dedup_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS trioflow_queued_started ON trioflow_queued (queue, started_at)
    WHERE started_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS trioflow_queues (
    name TEXT PRIMARY KEY,
    concurrency INTEGER,
    per_key_concurrency INTEGER,
    rate_limit INTEGER,
    rate_per REAL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS trioflow_schedules (
    schedule_id TEXT PRIMARY KEY,
    workflow_id TEXT NOT NULL,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    catch_up TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    handled_until REAL NOT NULL,
    updated_at REAL NOT NULL
);
"""
# Runs queued before schema 3 wait in the default queue.
_QUEUE_OLD_RUNS = """
INSERT INTO trioflow_queued (run_id, queue, state, enqueued_at)
SELECT run_id, 'default', 'waiting', created_at FROM trioflow_runs
WHERE queued = 1 AND status = 'pending' ORDER BY created_at
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

    ``read_only=True`` opens an existing trioflow database for reading only (what
    ``trioflow runs list/show/watch`` do): nothing is created, migrated or written, the
    file may be read-only or in a read-only folder, and a file that is not a trioflow
    database is refused with `StorageError` and left byte-identical.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        timeout: float = 5.0,
        read_only: bool = False,
    ) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got {synchronous!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.path = os.fspath(path)
        self.read_only = read_only
        self._synchronous = synchronous.upper()
        self._timeout = timeout
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        # Small writes run inline (see the module's docstring) unless every commit waits
        # for the disk; how many did since the last checkpoint.
        self._inline = self._synchronous in ("OFF", "NORMAL")
        self._inline_writes = 0
        # run id -> (owner, status) this instance last saved while the owner held it.
        self._saved: dict[str, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"SQLiteStorage({self.path!r})"

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """`fn(connection)` in a worker thread; with `inline`, on this thread if it can
        be done at once (see the module's docstring)."""
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"{self!r} is not open; use it inside open_engine() or async with")

        def work() -> T:
            try:
                return fn(conn)
            except BaseException as exc:
                # Whatever went wrong (an SQL error, a run not found, a value that would
                # not encode), the next call must not find this transaction still open.
                if conn.in_transaction:
                    conn.rollback()
                if isinstance(exc, sqlite3.Error):
                    raise _storage_error(self.path, exc) from exc
                raise

        if inline and self._inline:
            if self._inline_writes < CHECKPOINT_EVERY:
                # Only when no worker thread holds the connection (none can take it
                # while this runs: it never yields): under load, worker threads let
                # SQLite work beside this thread's Python (2 cores).
                if self._limiter.borrowed_tokens == 0:
                    outcome = self._try_inline(work)
                    if outcome is not None:
                        if self._inline_writes % TURN_EVERY == 0:
                            await trio.lowlevel.checkpoint()
                        return outcome[0]
            else:
                self._inline_writes = 0

                def work_and_checkpoint() -> T:
                    result = work()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    return result

                return await run_io(self._waiting(conn, work_and_checkpoint), limiter=self._limiter)
        return await run_io(self._waiting(conn, work), limiter=self._limiter)

    def _waiting(self, conn: sqlite3.Connection, work: Callable[[], T]) -> Callable[[], T]:
        """`work`, waiting up to the busy timeout for another connection's lock: the
        connection of a storage that writes inline waits for none unless told so."""
        if not self._inline:
            return work
        timeout_ms = round(self._timeout * 1000)

        def waiting() -> T:
            conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            try:
                return work()
            finally:
                conn.execute("PRAGMA busy_timeout = 0")

        return waiting

    def _try_inline(self, work: Callable[[], T]) -> tuple[T] | None:
        """``(work(),)`` if it ran here without waiting for a lock (the connection's
        busy timeout is 0), else None: the database is locked by another connection
        (nothing of `work` is left behind)."""
        try:
            result = work()
        except StorageError as exc:
            if isinstance(exc.__cause__, sqlite3.OperationalError) and _is_busy(exc.__cause__):
                return None
            raise
        self._inline_writes += 1
        return (result,)

    async def open(self) -> None:
        if self._conn is not None:
            await trio.lowlevel.checkpoint()
            return
        if self.read_only:
            self._conn = await run_io(self._connect_read_only, limiter=self._limiter)
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
                if self._inline:  # checkpoints run in a worker thread (see _call)
                    conn.execute("PRAGMA wal_autocheckpoint = 0")
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
                if 1 <= version <= 2:  # runs stored before versions keep NULL
                    conn.execute("ALTER TABLE trioflow_runs ADD COLUMN workflow_version TEXT")
                    conn.execute("ALTER TABLE trioflow_runs ADD COLUMN forked_from TEXT")
                for statement in (_SCHEMA + _OBSERVABILITY_SCHEMA).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if version in (1, 2):
                    conn.execute(_QUEUE_OLD_RUNS)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                conn.execute("COMMIT")
                if self._inline:  # calls that may wait set it (`_waiting`)
                    conn.execute("PRAGMA busy_timeout = 0")
            except sqlite3.Error as exc:
                conn.close()
                raise _storage_error(self.path, exc) from exc
            except BaseException:
                conn.close()
                raise
            return conn

        self._conn = await run_io(connect, limiter=self._limiter)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that can never write, to a file checked to be ours."""
        uri = f"file:{pathname2url(os.path.abspath(self.path))}"
        try:
            conn = sqlite3.connect(
                f"{uri}?mode=ro", uri=True, timeout=self._timeout, check_same_thread=False
            )
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.OperationalError:
            # A WAL database in a read-only folder: SQLite cannot make the shared-memory
            # file it needs, so read the file as it is (no other process writes there).
            conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        try:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error as exc:
            conn.close()
            raise _storage_error(self.path, exc) from exc
        problem = None
        if "trioflow_runs" not in tables:
            problem = "it is not a trioflow database (it has no trioflow_runs table)"
        elif version > SCHEMA_VERSION:
            problem = (
                f"it was written by a newer trioflow (schema version {version}, this one "
                f"knows up to {SCHEMA_VERSION}); upgrade trioflow"
            )
        elif version < SCHEMA_VERSION:
            problem = (
                f"it was written by an older trioflow (schema version {version}); open it "
                "once with an engine (`trioflow run` or your program) to upgrade it in place"
            )
        if problem is not None:
            conn.close()
            raise StorageError(f"SQLite storage {self.path}: {problem}")
        return conn

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
        workflow_version: str | None = None,
        forked_from: str | None = None,
    ) -> None:
        run = NewRun(
            run_id, workflow_id, status, snapshot, now, queued, workflow_version, forked_from
        )
        if not await self._call(
            lambda conn: _insert(conn, run), inline=len(snapshot) <= INLINE_BYTES
        ):
            raise ValueError(f"a run with id {run_id!r} is already stored; pick another run_id")

    async def insert_many(self, runs: Sequence[NewRun]) -> list[bool]:
        def work(conn: sqlite3.Connection) -> list[bool]:
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            stored = [_insert(conn, run) for run in runs]
            conn.execute("COMMIT")
            return stored

        size = sum(len(run.snapshot) for run in runs)
        return await self._call(work, inline=_small(len(runs), size))

    async def load(self, run_id: str) -> RunRow:
        def work(conn: sqlite3.Connection) -> RunRow:
            values = conn.execute(
                f"SELECT {SQL_COLUMNS} FROM trioflow_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if values is None:
                raise RunNotFoundError(run_id)
            return _with_entries(conn, row_from_sql(values))

        return await self._call(work)

    async def save_many(self, writes: Sequence[Write], owner: str, now: float) -> list[bool]:
        # Setting status or owner rewrites their index entries, which costs more than
        # the rest of a write. Most writes (one per step) change neither: while `owner`
        # holds the run nobody else changes its status (a cancel only flags it, and a
        # takeover changes the owner, which the compare-and-set catches).
        unchanged = [
            not w.release and self._saved.get(w.run_id) == (owner, w.status) for w in writes
        ]

        def work(conn: sqlite3.Connection) -> list[bool]:
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            saved = [
                _apply(conn, write, owner, now, same)
                for write, same in zip(writes, unchanged, strict=True)
            ]
            _append(conn, [write for write, won in zip(writes, saved, strict=True) if won])
            conn.execute("COMMIT")
            return saved

        size = sum(len(data) for write in writes for data in write.entries)
        saved = await self._call(work, inline=_small(len(writes), size))
        for write, ok in zip(writes, saved, strict=True):
            if ok and not write.release:
                self._saved[write.run_id] = (owner, write.status)
            else:
                self._saved.pop(write.run_id, None)
        return saved

    async def claim(
        self,
        run_id: str,
        owner: str,
        statuses: tuple[str, ...],
        now: float,
        lease_until: float,
        *,
        workflow_version: str | None = None,
        start: Write | None = None,
    ) -> RunRow | None:
        claim = Claim(run_id, owner, statuses, now, lease_until, workflow_version, start)
        return (await self.claim_many([claim]))[0]

    async def claim_many(self, claims: Sequence[Claim]) -> list[RunRow | None]:
        def work(conn: sqlite3.Connection) -> list[RunRow | None]:
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            rows = [_claim(conn, claim) for claim in claims]
            conn.execute("COMMIT")
            return rows

        size = sum(len(data) for claim in claims if claim.start for data in claim.start.entries)
        rows = await self._call(work, inline=_small(len(claims), size))
        for claim, row in zip(claims, rows, strict=True):
            if row is not None and claim.start is not None:
                self._saved[claim.run_id] = (claim.owner, claim.start.status)
        return rows

    async def claim_queued(
        self,
        owner: str,
        workflow_ids: list[str],
        limit: int,
        now: float,
        lease_until: float,
        *,
        versions: Mapping[str, Iterable[str]] | None = None,
    ) -> list[RunRow]:
        if not workflow_ids or limit < 1:
            await trio.lowlevel.checkpoint()
            return []
        column, workflow_ids = workflow_filter(workflow_ids, versions)
        marks = ", ".join("?" * len(workflow_ids))

        takeable = (
            "SELECT run_id FROM trioflow_runs WHERE status = 'pending' AND queued = 1 "
            f"AND {column} IN ({marks}) AND (owner IS NULL OR lease_until < ?) "
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
            ),
            inline=len(run_ids) <= 1000,
        )

    async def release(self, owner: str) -> None:
        self._saved = {run_id: v for run_id, v in self._saved.items() if v[0] != owner}
        await self._call(
            lambda conn: conn.execute(
                "UPDATE trioflow_runs SET owner = NULL, lease_until = NULL WHERE owner = ?",
                (owner,),
            )
        )

    async def recoverable(
        self,
        workflow_ids: list[str],
        now: float,
        limit: int,
        *,
        versions: Mapping[str, Iterable[str]] | None = None,
    ) -> list[str]:
        if not workflow_ids:
            await trio.lowlevel.checkpoint()
            return []
        column, workflow_ids = workflow_filter(workflow_ids, versions)
        marks = ", ".join("?" * len(workflow_ids))

        def work(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                f"SELECT run_id FROM trioflow_runs WHERE status IN ('running', 'waiting') "
                f"AND {column} IN ({marks}) AND (owner IS NULL OR lease_until < ?) "
                "ORDER BY updated_at LIMIT ?",
                (*workflow_ids, now, limit),
            ).fetchall()
            return [run_id for (run_id,) in rows]

        return await self._call(work)

    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        def work(conn: sqlite3.Connection) -> RunStatus:
            conn.execute("BEGIN IMMEDIATE")
            values = conn.execute(
                "SELECT status, owner, lease_until FROM trioflow_runs WHERE run_id = ?",
                (run_id,),
            ).fetchone()
            if values is None:
                raise RunNotFoundError(run_id)
            status, owner, lease_until = values
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
            conn.execute(
                "UPDATE trioflow_runs SET status = 'canceled', cancel_requested = 1,"
                " cancel_reason = ?, owner = NULL, lease_until = NULL, updated_at = ? "
                "WHERE run_id = ?",
                (reason, now, run_id),
            )
            conn.execute(
                "INSERT INTO trioflow_entries (run_id, seq, data) SELECT ?, "
                "COALESCE(MAX(seq), 0) + 1, ? FROM trioflow_entries WHERE run_id = ?",
                (run_id, _journal.canceled_idle(reason, now), run_id),
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

    async def put_event(self, run_id: str, name: str, data: bytes, now: float) -> RunStatus:
        def work(conn: sqlite3.Connection) -> RunStatus:
            conn.execute("BEGIN IMMEDIATE")
            found = conn.execute(
                "SELECT status FROM trioflow_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if found is None:
                raise RunNotFoundError(run_id)
            if found[0] not in TERMINAL_STATUSES:
                conn.execute(
                    "INSERT INTO trioflow_events (run_id, name, data, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (run_id, name, data, now),
                )
            conn.execute("COMMIT")
            return found[0]  # type: ignore[no-any-return]

        return await self._call(work)

    async def events_for(
        self, *, owner: str | None = None, run_id: str | None = None
    ) -> list[StoredEvent]:
        return await self._read(lambda q: _run_sql.events_for(q, owner, run_id))

    async def delete(self, run_id: str) -> RunStatus:
        return await self._write(lambda q: _run_sql.delete(q, run_id))

    async def prune(self, ended_before: float, statuses: tuple[str, ...]) -> int:
        return await self._write(lambda q: _run_sql.prune(q, ended_before, statuses))

    async def data_version(self) -> int:
        return await self._call(
            lambda conn: conn.execute("PRAGMA data_version").fetchone()[0], inline=True
        )

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[RunSummary]:
        # Only the filters given go into the WHERE clause: "(? IS NULL OR status = ?)"
        # keeps SQLite from using an index, and a filter that matches no run scanned
        # the whole table (tens of ms at 100,000 runs).
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if workflow_id is not None:
            where.append("workflow_id = ?")
            params.append(workflow_id)
        if version is not None:
            where.append("workflow_version = ?")
            params.append(version)
        if since is not None:
            where.append("created_at >= ?")
            params.append(since)
        if until is not None:
            where.append("created_at < ?")
            params.append(until)
        clause = f"WHERE {' AND '.join(where)} " if where else ""

        def work(conn: sqlite3.Connection) -> list[RunSummary]:
            rows = conn.execute(
                "SELECT run_id, workflow_id, status, created_at, updated_at, workflow_version, "
                f"forked_from, lease_until FROM trioflow_runs {clause}"
                "ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
            return [
                RunSummary(
                    run_id=r[0],
                    workflow_id=r[1],
                    status=r[2],
                    created_at=r[3],
                    updated_at=r[4],
                    version=r[5],
                    forked_from=r[6],
                    lease_until=r[7],
                )
                for r in rows
            ]

        return await self._call(work)

    # --- schedules and queues: the SQL is shared with PostgreSQL (_queue_sql) -----------

    async def _write(self, fn: Callable[[_queue_sql.Query], T]) -> T:
        """`fn` in one transaction under the database's write lock (BEGIN IMMEDIATE):
        every other connection's writes wait for it, which is what serializes the
        takers of a queue."""

        def work(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            result = fn(_query(conn))
            conn.execute("COMMIT")
            return result

        return await self._call(work)

    async def _read(self, fn: Callable[[_queue_sql.Query], T]) -> T:
        return await self._call(lambda conn: fn(_query(conn)))

    async def register_schedules(
        self, states: list[ScheduleState], now: float
    ) -> dict[str, ScheduleState]:
        return await self._write(lambda q: _queue_sql.register_schedules(q, states, now))

    async def load_schedule(self, schedule_id: str) -> ScheduleState | None:
        return await self._read(lambda q: _queue_sql.load_schedule(q, schedule_id))

    async def list_schedules(self) -> list[ScheduleState]:
        return await self._read(_queue_sql.list_schedules)

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, now: float
    ) -> ScheduleState | None:
        return await self._write(
            lambda q: _queue_sql.set_schedule_paused(q, schedule_id, paused, now)
        )

    async def advance_schedule(self, schedule_id: str, until: float) -> None:
        await self._read(lambda q: _queue_sql.advance_schedule(q, schedule_id, until))

    async def insert_queued(
        self,
        run_id: str,
        workflow_id: str,
        snapshot: bytes,
        now: float,
        entry: QueueEntry,
        *,
        workflow_version: str | None = None,
        forked_from: str | None = None,
    ) -> RunRow | None:
        return await self._write(
            lambda q: _queue_sql.insert_queued(
                q, run_id, workflow_id, snapshot, now, entry, workflow_version, forked_from
            )
        )

    async def register_queues(self, queues: list[QueueLimits], now: float) -> None:
        await self._write(
            lambda q: _queue_sql.register_queues(q, queues, now, upsert=_queue_sql.UPSERT_QUEUE)
        )

    async def claim_from_queues(
        self,
        owner: str,
        workflow_ids: list[str],
        queues: list[QueueLimits],
        limit: int,
        now: float,
        lease_until: float,
        *,
        versions: Mapping[str, Iterable[str]] | None = None,
    ) -> list[RunRow]:
        if not workflow_ids or not queues or limit < 1:
            await trio.lowlevel.checkpoint()
            return []
        names = [limits.name for limits in queues]

        def work(conn: sqlite3.Connection) -> list[RunRow]:
            q = _query(conn)
            # An idle worker polls: look first, and take the write lock only for work.
            if not _queue_sql.any_waiting(q, names, workflow_ids, now):
                return []
            conn.execute("BEGIN IMMEDIATE")  # errors roll back in _call
            taken: list[RunRow] = []
            for limits in queues:
                room = limit - len(taken)
                if room <= 0:
                    break
                taken += _queue_sql.claim_from_queue(
                    q, owner, workflow_ids, limits, room, now, lease_until, versions=versions
                )
            conn.execute("COMMIT")
            return taken

        return await self._call(work)

    async def queue_place(self, run_id: str, now: float) -> QueuePlace | None:
        return await self._read(lambda q: _queue_sql.queue_place(q, run_id, now))

    async def queue_stats(self, now: float) -> list[QueueStats]:
        return await self._read(lambda q: _queue_sql.queue_stats(q, now))

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


def _query(conn: sqlite3.Connection) -> _queue_sql.Query:
    return lambda sql, params: conn.execute(sql, params).fetchall()


def _small(items: int, size: int) -> bool:
    return items <= INLINE_ITEMS and size <= INLINE_BYTES


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return "locked" in str(exc) or "busy" in str(exc)
    return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


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


def _with_entries(conn: sqlite3.Connection, row: RunRow) -> RunRow:
    entries = conn.execute(
        "SELECT data FROM trioflow_entries WHERE run_id = ? ORDER BY seq", (row.run_id,)
    ).fetchall()
    if not entries:
        return row
    return msgspec.structs.replace(row, entries=tuple(data for (data,) in entries))


def _insert(conn: sqlite3.Connection, run: NewRun) -> bool:
    """One run of `insert_many`; False if its id is taken."""
    cursor = conn.execute(
        "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, queued, created_at, "
        "updated_at, workflow_version, forked_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (run_id) DO NOTHING",
        (run.run_id, run.workflow_id, run.status, run.snapshot, run.queued, run.now, run.now,
         run.workflow_version, run.forked_from),
    )  # fmt: skip
    return cursor.rowcount == 1


def _claim(conn: sqlite3.Connection, claim: Claim) -> RunRow | None:
    """One claim of `claim_many`, inside its transaction: the row as taken (with its
    start's status, if any), with its entries and events, or None; then its start's
    entries. A start is made by the claim's own UPDATE: the row is the claimer's."""
    marks = ", ".join("?" * len(claim.statuses))
    start = claim.start
    values = conn.execute(
        "UPDATE trioflow_runs SET owner = ?, lease_until = ?, "
        "workflow_version = COALESCE(workflow_version, ?)"
        + ("" if start is None else ", status = ?, updated_at = ?")
        + f" WHERE run_id = ? AND status IN ({marks}) AND (owner IS NULL OR lease_until < ?) "
        f"RETURNING {SQL_COLUMNS}",
        (claim.owner, claim.lease_until, claim.workflow_version,
         *(() if start is None else (start.status, claim.now)),
         claim.run_id, *claim.statuses, claim.now),
    ).fetchone()  # fmt: skip
    if values is None:
        return None
    row = row_from_sql(values)
    events = _run_sql.events_for(_query(conn), None, claim.run_id)
    if start is None:
        row = _with_entries(conn, row)
    else:  # a pending run's start: the caller knows its entries (none, or a fork's)
        _append(conn, [start])
    return msgspec.structs.replace(row, events=tuple(events))


def _apply(conn: sqlite3.Connection, write: Write, owner: str, now: float, same: bool) -> bool:
    """The compare-and-set of one write of `save_many` on the run's row, inside its
    transaction; whether it won. `same`: the status stored is already `write.status`."""
    if same:
        cursor = conn.execute(
            "UPDATE trioflow_runs SET updated_at = ? "
            f"WHERE run_id = ? AND owner = ? AND {_NOT_ENDED}",
            (now, write.run_id, owner),
        )
    elif not write.release:
        cursor = conn.execute(
            "UPDATE trioflow_runs SET status = ?, updated_at = ? "
            f"WHERE run_id = ? AND owner = ? AND {_NOT_ENDED}",
            (write.status, now, write.run_id, owner),
        )
    else:
        cursor = conn.execute(
            "UPDATE trioflow_runs SET status = ?, updated_at = ?, owner = NULL, lease_until = NULL "
            f"WHERE run_id = ? AND owner = ? AND {_NOT_ENDED}",
            (write.status, now, write.run_id, owner),
        )
    return cursor.rowcount == 1


def _append(conn: sqlite3.Connection, writes: list[Write]) -> None:
    """The entries of `writes` (which won), in one statement."""
    conn.executemany(
        "INSERT INTO trioflow_entries (run_id, seq, data) VALUES (?, ?, ?)",
        [
            (write.run_id, seq, data)
            for write in writes
            for seq, data in enumerate(write.entries, write.first_seq)
        ],
    )
