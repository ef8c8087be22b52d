"""Runs in PostgreSQL: many worker processes on many machines sharing one database.

psycopg's async API does not run on Trio, so this backend uses psycopg 3's synchronous
connections from worker threads: a small pool of them, at most ``max_connections`` in use
at once (a `trio.CapacityLimiter` of ours). When Trio cancels a call whose query is still
running, the query is cancelled on the server too (`Connection.cancel_safe`), and the
call waits for its thread before it raises `trio.Cancelled`, so a connection is never
shared by two queries. A call that completed despite the cancellation returns normally:
if it was cancelled, it did not happen; if it happened, it is reported.

Lost connections (a server restart, a terminated backend, a dead network) are replaced.
A pooled connection that has anything to read while idle is the server saying goodbye
(FATAL, then EOF), so it is thrown away before it is used. A call whose connection breaks
is retried on a new one, after a capped exponential back-off measured in real time in the
worker thread (never Trio's clock: the outage is in the outside world), when that is
safe: reads and idempotent writes, and any call whose query was never sent. Any other
write raises `StorageError`, since it may or may not have committed; the engine keeps
that fault with its run. So does a server that stays unreachable for
``reconnect_timeout`` seconds. Opening the storage does not retry: a wrong password or
database name fails at once. A stalled server is waited for (its queries resume with
it); a dead peer is detected by TCP keepalives and ``tcp_user_timeout``, and a query that
runs away by ``statement_timeout``, all measured by the driver or the server.

Cancel requests travel by notification: `request_cancel` flags the run and sends
``NOTIFY trioflow_cancel, '<run id>'`` in the same transaction; each storage keeps one
dedicated connection that LISTENs, driven by Trio's own readiness waiting on its socket
(`wait_cancel_requests`), with a backstop in real time. After that connection is lost
and re-established, `wait_cancel_requests` returns, so the engine looks for requests sent
meanwhile. The other way round, an executor that stops executing a run (ended or
suspended: its save releases the run) sends ``NOTIFY trioflow_ended, '<run id>'`` in the
same statement, and a canceller in another process waits for that (`wait_run_ended`)
instead of polling.

The schema is created and migrated by trioflow; its version is stored in the
``trioflow_meta`` table.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import msgspec
import outcome
import trio

from .. import _journal
from .._errors import RunNotFoundError, StorageError
from .._logs import STORED_LOGS, LogEntry, NewLog, with_drop_marker
from .._queues import QueueEntry, QueueLimits, QueuePlace, QueueStats
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

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

logger = logging.getLogger("trioflow")

# 2: versions, forks, events, queues, schedules, logs and traces; 3: the journal
SCHEMA_VERSION = 3
_NOT_ENDED = "status NOT IN ('success', 'failed', 'canceled')"
_encoder = msgspec.json.Encoder()
CANCEL_CHANNEL = "trioflow_cancel"
# Notified with the run id when an executor stops executing a run (ended or suspended).
ENDED_CHANNEL = "trioflow_ended"
# pg_advisory_xact_lock key that serializes schema migrations of concurrent openers.
_MIGRATION_LOCK = 0x7472696F666C6F77  # "trioflow"
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE trioflow_runs (
            run_id TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            status TEXT NOT NULL,
            snapshot BYTEA NOT NULL,
            owner TEXT,
            lease_until DOUBLE PRECISION,
            cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
            cancel_reason TEXT,
            queued BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX trioflow_runs_status ON trioflow_runs (status, workflow_id)",
        "CREATE INDEX trioflow_runs_owner ON trioflow_runs (owner)",
        "CREATE INDEX trioflow_runs_created ON trioflow_runs (created_at)",
        "CREATE INDEX trioflow_runs_queue ON trioflow_runs (created_at) "
        "WHERE status = 'pending' AND queued",
    ),
    # Runs stored before versions keep NULL: they take the version that first loads them.
    2: (
        "ALTER TABLE trioflow_runs ADD COLUMN workflow_version TEXT",
        "ALTER TABLE trioflow_runs ADD COLUMN forked_from TEXT",
        """CREATE TABLE trioflow_events (
            seq BIGSERIAL PRIMARY KEY,
            run_id TEXT NOT NULL,
            name TEXT NOT NULL,
            data BYTEA NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX trioflow_events_run ON trioflow_events (run_id, seq)",
        """CREATE TABLE trioflow_queued (
            seq BIGSERIAL PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,
            queue TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            queue_key TEXT,
            dedup_id TEXT,
            state TEXT NOT NULL,
            enqueued_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION
        )""",
        "CREATE INDEX trioflow_queued_order ON trioflow_queued (queue, state, priority DESC, seq)",
        "CREATE INDEX trioflow_queued_dedup ON trioflow_queued (queue, dedup_id) "
        "WHERE dedup_id IS NOT NULL",
        "CREATE INDEX trioflow_queued_started ON trioflow_queued (queue, started_at) "
        "WHERE started_at IS NOT NULL",
        """CREATE TABLE trioflow_queues (
            name TEXT PRIMARY KEY,
            concurrency INTEGER,
            per_key_concurrency INTEGER,
            rate_limit INTEGER,
            rate_per DOUBLE PRECISION,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE trioflow_schedules (
            schedule_id TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            cron TEXT NOT NULL,
            timezone TEXT NOT NULL,
            catch_up TEXT NOT NULL,
            paused INTEGER NOT NULL DEFAULT 0,
            handled_until DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
        # Runs queued before wait in the default queue.
        "INSERT INTO trioflow_queued (run_id, queue, state, enqueued_at) "
        "SELECT run_id, 'default', 'waiting', created_at FROM trioflow_runs "
        "WHERE queued AND status = 'pending' ORDER BY created_at",
        """CREATE TABLE trioflow_logs (
            run_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            time DOUBLE PRECISION NOT NULL,
            level TEXT NOT NULL,
            step_id TEXT,
            attempt INTEGER,
            message TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
        """CREATE TABLE trioflow_traces (
            run_id TEXT PRIMARY KEY,
            traceparent TEXT NOT NULL,
            tracestate TEXT
        )""",
    ),
    # A run's snapshot column is its header from now on; a whole snapshot written
    # before is a header that holds everything, and its journal starts empty.
    3: (
        """CREATE TABLE trioflow_entries (
            run_id TEXT NOT NULL,
            seq BIGINT NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
}
# A run with its journal, in one statement.
_ROW_WITH_ENTRIES = (
    f"SELECT {SQL_COLUMNS}, ARRAY(SELECT e.data FROM trioflow_entries e "
    "WHERE e.run_id = r.run_id ORDER BY e.seq) FROM trioflow_runs r WHERE r.run_id = %s"
)
# New runs, each unless its id is taken: the ids stored. They go as one JSON array of
# NewRun tuples, the snapshot in hex (why JSON: see _ADD_ENTRIES). Such parameters of
# plain strings and numbers are read as jsonb, parsed once; `->>` on json text parses
# the element again for each field.
_INSERT = (
    "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, created_at, "
    "queued, workflow_version, forked_from, updated_at) SELECT x->>0, x->>1, x->>2, "
    "decode(x->>3, 'hex'), (x->>4)::float8, (x->>5)::boolean, x->>6, x->>7, "
    "(x->>4)::float8 FROM jsonb_array_elements(%s::jsonb) x "
    "ON CONFLICT (run_id) DO NOTHING RETURNING run_id"
)
# Journal entries sent as one JSON array of [run id, first seq, [entry, ...]] per write
# (`_entries_json`): each entry is JSON already, and a `json` value keeps its text as
# sent, so the stored bytes are the entry's own. (Arrays of parameters cost a Python
# loop per item in psycopg, under load the most of a batch's time on this process's GIL.)
_ADD_ENTRIES = (
    "INSERT INTO trioflow_entries (run_id, seq, data) SELECT x->>0, (x->>1)::bigint + e.n - 1, "
    "convert_to(e.entry::text, 'UTF8') FROM json_array_elements(%(entries)s::json) x, "
    "json_array_elements(x->2) WITH ORDINALITY e(entry, n)"
)
# Claims, each with its start (a new status and entries) if given, in one statement:
# under load each answer waits for this process's GIL, so round trips are dear. Rows are
# locked in run id order (see _SAVE_MANY). The rows as claimed, with their events and,
# for a claim without a start, their entries (a start's caller knows them).
_CLAIM_MANY = (
    "WITH c AS (SELECT x->>0 AS run_id, x->>1 AS owner, (x->>2)::float8 AS lease_until, "
    "x->>3 AS version, x->>4 AS allowed, (x->>5)::float8 AS now, x->>6 AS start "
    "FROM jsonb_array_elements(%(claims)s::jsonb) x), "
    "locked AS (SELECT r.run_id FROM trioflow_runs r JOIN c ON c.run_id = r.run_id "
    "WHERE r.status = ANY(string_to_array(c.allowed, ',')) "
    "AND (r.owner IS NULL OR r.lease_until < c.now) ORDER BY r.run_id FOR UPDATE OF r), "
    "claimed AS (UPDATE trioflow_runs r SET owner = c.owner, lease_until = c.lease_until, "
    "workflow_version = COALESCE(r.workflow_version, c.version), "
    "status = COALESCE(c.start, r.status), "
    "updated_at = CASE WHEN c.start IS NULL THEN r.updated_at ELSE c.now END "
    "FROM c WHERE r.run_id = c.run_id AND r.run_id IN (SELECT run_id FROM locked) "
    f"RETURNING {_queue_sql.RUN_COLUMNS}, c.start), "
    f"added AS ({_ADD_ENTRIES} WHERE x->>0 IN (SELECT run_id FROM claimed)) "
    f"SELECT {SQL_COLUMNS}, CASE WHEN start IS NULL THEN "
    "ARRAY(SELECT e.data FROM trioflow_entries e WHERE e.run_id = claimed.run_id ORDER BY e.seq) "
    "ELSE '{}' END, "
    "ARRAY(SELECT v.seq FROM trioflow_events v WHERE v.run_id = claimed.run_id ORDER BY v.seq), "
    "ARRAY(SELECT v.name FROM trioflow_events v WHERE v.run_id = claimed.run_id ORDER BY v.seq), "
    "ARRAY(SELECT v.data FROM trioflow_events v WHERE v.run_id = claimed.run_id ORDER BY v.seq) "
    "FROM claimed"
)
# The writes of save_many, in one statement: the compare-and-set on each run's row (rows
# locked in run id order, as renew locks them: two transactions that lock the same rows
# in different orders can deadlock), the entries of the runs whose write won, and for
# the runs that stop executing here, a notification to cancellers waiting elsewhere
# (delivered when the statement commits).
_SAVE_MANY = (
    "WITH w AS (SELECT x->>0 AS run_id, x->>1 AS status, (x->>2)::boolean AS release "
    "FROM jsonb_array_elements(%(writes)s::jsonb) x), "
    "locked AS (SELECT r.run_id FROM trioflow_runs r JOIN w ON w.run_id = r.run_id "
    f"WHERE r.owner = %(owner)s AND r.{_NOT_ENDED} ORDER BY r.run_id FOR UPDATE OF r), "
    "saved AS (UPDATE trioflow_runs r SET status = w.status, updated_at = %(now)s, "
    "owner = CASE WHEN w.release THEN NULL ELSE r.owner END, "
    "lease_until = CASE WHEN w.release THEN NULL ELSE r.lease_until END "
    "FROM w WHERE r.run_id = w.run_id AND r.run_id IN (SELECT run_id FROM locked) "
    "RETURNING r.run_id, w.release), "
    f"added AS ({_ADD_ENTRIES} WHERE x->>0 IN (SELECT run_id FROM saved)), "
    "notified AS (SELECT pg_notify(%(channel)s, run_id) FROM saved WHERE release) "
    "SELECT run_id FROM saved WHERE (SELECT count(*) FROM notified) >= 0"
)
# Deadlocks and serialization failures roll the transaction back: safe to run it again.
_RETRIES = 3
# Back-off between reconnection attempts, in real seconds: doubles from the first to the cap.
_BACKOFF_FIRST = 0.05
_BACKOFF_CAP = 2.0
# TCP keepalives and tcp_user_timeout (libpq settings, the DSN's own values win): a peer
# that vanished without closing (power loss, a cut network) is noticed in about 20 s.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 20000,
}
# Run ids of recently released runs nobody was waiting for, kept for a canceller that
# starts waiting just after the notification was read.
_RECENTLY_ENDED = 1000


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            "PostgresStorage needs psycopg 3: pip install 'trioflow[postgres]'"
        ) from exc
    return psycopg


class PostgresStorage(Storage):
    """Runs in the PostgreSQL database at `dsn` (a libpq connection string or URL).

    At most `max_connections` queries run at once (each on its own connection, opened
    when first needed and kept), plus one connection that listens for cancel requests.
    `notify_backstop` is how often (seconds) the engine looks for cancel requests even
    without a notification, in case one was lost (it also looks at once after the
    listening connection reconnects).

    Connections that break are replaced (see the module's notes): `connect_timeout`
    bounds one attempt to connect, `reconnect_timeout` how long a call keeps trying
    before it raises `StorageError`, and `statement_timeout` (``None``: the server's
    setting) how long the server lets one statement run. All are real seconds.

    Leases compare wall-clock times of the machines that share the database: keep
    their clocks synchronized (NTP) well within ``lease_seconds``. Give each engine its
    own instance.
    """

    notifies_cancels = True

    def __init__(
        self,
        dsn: str,
        *,
        max_connections: int = 4,
        notify_backstop: float = 5.0,
        connect_timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        statement_timeout: float | None = 30.0,
        read_only: bool = False,
    ) -> None:
        _psycopg()
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        for name, value in (
            ("notify_backstop", notify_backstop),
            ("connect_timeout", connect_timeout),
            ("reconnect_timeout", reconnect_timeout),
            ("statement_timeout", 1.0 if statement_timeout is None else statement_timeout),
        ):
            if not 0 < value < float("inf"):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.dsn = dsn
        # Read only: create, migrate and listen for nothing (`trioflow runs list/show`).
        self.read_only = read_only
        self.max_connections = max_connections
        self.notify_backstop = notify_backstop
        self.reconnect_timeout = reconnect_timeout
        self._connect_timeout = max(2, round(connect_timeout))  # libpq's minimum is 2
        self._statement_timeout = statement_timeout
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[psycopg.Connection[Any]] = []
        self._listener: psycopg.Connection[Any] | None = None
        self._open = False
        # Cancellers waiting in `wait_run_ended`, by run id; set by the listening task.
        self._ended_waiters: dict[str, list[trio.Event]] = {}
        self._recently_ended: dict[str, None] = {}

    def __repr__(self) -> str:
        return f"PostgresStorage({_describe(self.dsn)!r})"

    # --- connections and threads ----------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection (in a worker thread), with our keepalive and
        timeout settings added to the DSN's own."""
        pg = _psycopg()
        try:
            params = pg.conninfo.conninfo_to_dict(self.dsn)
            for key, value in _KEEPALIVE.items():
                params.setdefault(key, value)
            options = str(params.get("options") or "")
            if self._statement_timeout is not None and "statement_timeout" not in options:
                milliseconds = max(1, round(self._statement_timeout * 1000))
                params["options"] = f"{options} -c statement_timeout={milliseconds}".strip()
            params["connect_timeout"] = self._connect_timeout
            conn: psycopg.Connection[Any] = pg.Connection.connect(autocommit=True, **params)
        except pg.Error as exc:
            raise _storage_error(self, exc) from exc
        return conn

    async def _call(
        self, fn: Callable[[psycopg.Connection[Any]], T], *, idempotent: bool = False
    ) -> T:
        """Run `fn(connection)` in a worker thread on a pooled connection: one
        transaction (or statement), retried after a deadlock or serialization failure,
        and on a new connection after the old one broke if `idempotent` (running it
        twice does no harm) or if it was never sent; psycopg errors become
        `StorageError`."""
        if not self._open:
            raise RuntimeError(f"{self!r} is not open; use it inside open_engine() or async with")
        pg = _psycopg()
        async with self._limiter:
            # An idle connection with something to read is being closed by the server.
            stale: list[psycopg.Connection[Any]] = []
            attempt = _Attempt()
            while self._idle and attempt.conn is None:
                pooled = self._idle.pop()
                if _is_usable(pooled):
                    attempt.conn = pooled
                else:
                    stale.append(pooled)
            try:
                return await _in_thread(
                    lambda: self._attempt(fn, attempt, stale, idempotent), attempt.cancel
                )
            except pg.errors.QueryCanceled as exc:  # not by us: statement_timeout, an admin...
                raise StorageError(f"{self!r}: the server cancelled a query: {exc}") from exc
            finally:
                # The thread is over. A broken connection, or one left inside a
                # transaction, is not reused.
                conn = attempt.conn
                if conn is not None:
                    idle = pg.pq.TransactionStatus.IDLE
                    if not conn.broken and conn.info.transaction_status == idle:
                        self._idle.append(conn)
                    else:
                        conn.close()

    def _attempt(
        self,
        fn: Callable[[psycopg.Connection[Any]], T],
        attempt: _Attempt,
        stale: list[psycopg.Connection[Any]],
        idempotent: bool,
    ) -> T:
        """`_call`'s worker thread: connect if needed, run `fn`, reconnect and retry
        while that is safe and the server comes back within `reconnect_timeout`."""
        pg = _psycopg()
        errors = pg.errors
        for old in stale:
            old.close()
        backoff = _Backoff(self, attempt.stop)
        while True:
            if attempt.stop.is_set():
                raise _Interrupted
            conn: psycopg.Connection[Any] | None = attempt.conn
            if conn is None:
                try:
                    conn = attempt.conn = self._connect()
                except StorageError as exc:
                    backoff.wait(exc)
                    continue
                if backoff.failures:
                    logger.info("reconnected to %r", self)
                if attempt.stop.is_set():  # cancelled while connecting: send nothing
                    raise _Interrupted
            sent = False
            try:
                if conn.pgconn.status != pg.pq.ConnStatus.OK:
                    raise pg.OperationalError("the connection is lost")
                sent = True
                for retry in range(_RETRIES):
                    try:
                        return fn(conn)
                    except (errors.DeadlockDetected, errors.SerializationFailure):
                        if retry == _RETRIES - 1:
                            raise
            except errors.QueryCanceled:
                raise  # turned into trio.Cancelled (or StorageError) on the Trio side
            except pg.Error as exc:
                if not conn.broken and sent:
                    raise _storage_error(self, exc) from exc
                attempt.conn = None
                conn.close()
                if sent and not idempotent:
                    raise StorageError(
                        f"{self!r}: the connection was lost during a write, which may or "
                        f"may not have been stored: {str(exc).strip()}"
                    ) from exc
                logger.warning("lost the connection to %r (%s); reconnecting", self, exc)
                backoff.wait(_storage_error(self, exc))

    # --- Storage ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            await trio.lowlevel.checkpoint()
            return
        pg = _psycopg()

        def check() -> psycopg.Connection[Any]:
            conn = self._connect()
            try:
                conn.execute("SET default_transaction_read_only = on")
                found = conn.execute("SELECT to_regclass('trioflow_meta')").fetchone()
                version = None
                if found is not None and found[0] is not None:
                    row = conn.execute(
                        "SELECT value FROM trioflow_meta WHERE key = 'schema_version'"
                    ).fetchone()
                    version = None if row is None else int(row[0])
                conn.commit()
            except pg.Error as exc:
                conn.close()
                raise _storage_error(self, exc) from exc
            if version != SCHEMA_VERSION:
                conn.close()
                problem = (
                    "no trioflow runs are stored there (no trioflow_meta table)"
                    if version is None
                    else f"its runs are of schema version {version}, this trioflow reads "
                    f"{SCHEMA_VERSION}: open it once with an engine to upgrade it"
                    if version < SCHEMA_VERSION
                    else f"its runs were written by a newer trioflow (schema version "
                    f"{version}); upgrade trioflow"
                )
                raise StorageError(f"{self!r}: {problem}")
            return conn

        def migrate() -> psycopg.Connection[Any]:
            conn = self._connect()
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    conn.execute(
                        "CREATE TABLE IF NOT EXISTS trioflow_meta "
                        "(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                    )
                    found = conn.execute(
                        "SELECT value FROM trioflow_meta WHERE key = 'schema_version'"
                    ).fetchone()
                    version = 0 if found is None else int(found[0])
                    if version > SCHEMA_VERSION:
                        raise StorageError(
                            f"{self!r} holds runs written by a newer trioflow (schema version "
                            f"{version}, this one knows up to {SCHEMA_VERSION}); upgrade trioflow"
                        )
                    for step in range(version + 1, SCHEMA_VERSION + 1):
                        for statement in _MIGRATIONS[step]:
                            conn.execute(statement)
                    if version != SCHEMA_VERSION:
                        conn.execute(
                            "INSERT INTO trioflow_meta (key, value) VALUES ('schema_version', %s) "
                            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                            (str(SCHEMA_VERSION),),
                        )
            except pg.Error as exc:
                conn.close()
                raise _storage_error(self, exc) from exc
            except BaseException:
                conn.close()
                raise
            return conn

        # No reconnecting here: a wrong password, database or DSN fails at once.
        conn = await trio.to_thread.run_sync(check if self.read_only else migrate)
        self._idle.append(conn)
        if self.read_only:
            self._open = True
            return
        try:
            self._listener = await trio.to_thread.run_sync(self._listen)
        except BaseException:
            self._idle.clear()
            conn.close()
            raise
        self._open = True

    async def aclose(self) -> None:
        self._open = False
        conns, self._idle = self._idle, []
        listener, self._listener = self._listener, None
        self._wake_ended_waiters()
        if listener is not None:
            with contextlib.suppress(Exception):  # a lost connection has no socket
                trio.lowlevel.notify_closing(listener.pgconn.socket)
            conns.append(listener)
        if not conns:
            await trio.lowlevel.checkpoint()
            return

        def close_all() -> None:
            for conn in conns:
                conn.close()

        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(close_all)

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
        if not (await self.insert_many([run]))[0]:
            raise ValueError(f"a run with id {run_id!r} is already stored; pick another run_id")

    async def insert_many(self, runs: Sequence[NewRun]) -> list[bool]:
        new = _json([(*run[:3], run.snapshot.hex(), *run[4:]) for run in runs])

        def work(conn: psycopg.Connection[Any]) -> list[bool]:
            ids = {run_id for (run_id,) in conn.execute(_INSERT, (new,)).fetchall()}
            stored = []
            for run in runs:  # the first of two runs with one id in a batch is the one stored
                stored.append(run.run_id in ids)
                ids.discard(run.run_id)
            return stored

        return await self._call(work)

    async def load(self, run_id: str) -> RunRow:
        def work(conn: psycopg.Connection[Any]) -> RunRow:
            values = conn.execute(_ROW_WITH_ENTRIES, (run_id,)).fetchone()
            if values is None:
                raise RunNotFoundError(run_id)
            return _row_with_entries(values)

        return await self._call(work, idempotent=True)

    async def save_many(self, writes: Sequence[Write], owner: str, now: float) -> list[bool]:
        params = {
            "writes": _json([[w.run_id, w.status, w.release] for w in writes]),
            "entries": _entries_json(writes),
            "now": now,
            "owner": owner,
            "channel": ENDED_CHANNEL,
        }

        def work(conn: psycopg.Connection[Any]) -> list[bool]:
            saved = {run_id for (run_id,) in conn.execute(_SAVE_MANY, params).fetchall()}
            return [write.run_id in saved for write in writes]

        return await self._call(work)

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
        # A run claimed twice in one batch (two starts of one handle's run): the first
        # claim is the one made, the others lose.
        first: dict[str, Claim] = {}
        for claim in claims:
            first.setdefault(claim.run_id, claim)
        made = list(first.values())
        claimed = [
            [c.run_id, c.owner, c.lease_until, c.workflow_version, ",".join(c.statuses), c.now,
             None if c.start is None else c.start.status]
            for c in made
        ]  # fmt: skip
        params = {
            "claims": _json(claimed),
            "entries": _entries_json([c.start for c in made if c.start is not None]),
        }

        def work(conn: psycopg.Connection[Any]) -> list[RunRow | None]:
            rows = {}
            for values in conn.execute(_CLAIM_MANY, params).fetchall():
                row = _claimed(values)
                rows[row.run_id] = row
            return [
                rows.get(claim.run_id) if first[claim.run_id] is claim else None for claim in claims
            ]

        return await self._call(work)

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

        def work(conn: psycopg.Connection[Any]) -> list[RunRow]:
            rows = conn.execute(
                "UPDATE trioflow_runs SET owner = %s, lease_until = %s WHERE run_id IN ("
                "SELECT run_id FROM trioflow_runs WHERE status = 'pending' AND queued "
                f"AND {column} = ANY(%s) AND (owner IS NULL OR lease_until < %s) "
                "ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {SQL_COLUMNS}",
                (owner, lease_until, workflow_ids, now, limit),
            ).fetchall()
            return sorted((row_from_sql(values) for values in rows), key=lambda r: r.created_at)

        return await self._call(work)

    async def renew(self, owner: str, run_ids: list[str], lease_until: float) -> None:
        # Rows locked in run id order, as save_many locks them: two transactions that
        # lock the same rows in different orders can deadlock.
        await self._call(
            lambda conn: conn.execute(
                "UPDATE trioflow_runs SET lease_until = %s WHERE run_id IN (SELECT run_id "
                "FROM trioflow_runs WHERE owner = %s AND run_id = ANY(%s) ORDER BY run_id "
                "FOR UPDATE)",
                (lease_until, owner, run_ids),
            ),
            idempotent=True,
        )

    async def release(self, owner: str) -> None:
        # Cancellers waiting for these runs look again: nobody executes them now.
        await self._call(
            lambda conn: conn.execute(
                "WITH released AS (UPDATE trioflow_runs SET owner = NULL, lease_until = NULL "
                "WHERE owner = %s RETURNING run_id) SELECT pg_notify(%s, run_id) FROM released",
                (owner, ENDED_CHANNEL),
            ),
            idempotent=True,
        )

    async def recoverable(
        self,
        workflow_ids: list[str],
        now: float,
        limit: int,
        *,
        versions: Mapping[str, Iterable[str]] | None = None,
    ) -> list[str]:
        if not workflow_ids or limit < 1:
            await trio.lowlevel.checkpoint()
            return []
        column, workflow_ids = workflow_filter(workflow_ids, versions)

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(
                "SELECT run_id FROM trioflow_runs WHERE status IN ('running', 'waiting') "
                f"AND {column} = ANY(%s) AND (owner IS NULL OR lease_until < %s) "
                "ORDER BY updated_at LIMIT %s",
                (workflow_ids, now, limit),
            ).fetchall()
            return [run_id for (run_id,) in rows]

        return await self._call(work, idempotent=True)

    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        def work(conn: psycopg.Connection[Any]) -> RunStatus:
            # The usual case, a run executing somewhere, in one statement (one round
            # trip, not five: this is on the path of every cross-process cancel).
            flagged = conn.execute(
                "WITH flagged AS (UPDATE trioflow_runs SET cancel_requested = TRUE, "
                f"cancel_reason = %s WHERE run_id = %s AND {_NOT_ENDED} "
                "AND owner IS NOT NULL AND lease_until >= %s RETURNING run_id, status) "
                "SELECT status, pg_notify(%s, run_id) FROM flagged",
                (reason, run_id, now, CANCEL_CHANNEL),
            ).fetchone()
            if flagged is not None:
                return flagged[0]  # type: ignore[no-any-return]
            with conn.transaction():
                values = conn.execute(
                    "SELECT status, owner, lease_until FROM trioflow_runs "
                    "WHERE run_id = %s FOR UPDATE",
                    (run_id,),
                ).fetchone()
                if values is None:
                    raise RunNotFoundError(run_id)
                status, owner, lease_until = values
                if status in TERMINAL_STATUSES:
                    return status  # type: ignore[no-any-return]
                if owner is not None and lease_until is not None and lease_until >= now:
                    conn.execute(
                        "UPDATE trioflow_runs SET cancel_requested = TRUE, cancel_reason = %s "
                        "WHERE run_id = %s",
                        (reason, run_id),
                    )
                    # Delivered to the listeners when this transaction commits.
                    conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, run_id))
                    return status  # type: ignore[no-any-return]
                conn.execute(
                    "UPDATE trioflow_runs SET status = 'canceled', "
                    "cancel_requested = TRUE, cancel_reason = %s, owner = NULL, "
                    "lease_until = NULL, updated_at = %s WHERE run_id = %s",
                    (reason, now, run_id),
                )
                conn.execute(
                    "INSERT INTO trioflow_entries (run_id, seq, data) SELECT %s, "
                    "COALESCE(MAX(seq), 0) + 1, %s FROM trioflow_entries WHERE run_id = %s",
                    (run_id, _journal.canceled_idle(reason, now), run_id),
                )
                conn.execute("SELECT pg_notify(%s, %s)", (ENDED_CHANNEL, run_id))
                return "canceled"

        # Asking twice is asking once: safe to repeat after a lost connection.
        return await self._call(work, idempotent=True)

    async def cancel_requests(self, owner: str) -> list[tuple[str, str | None]]:
        def work(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None]]:
            rows = conn.execute(
                "SELECT run_id, cancel_reason FROM trioflow_runs "
                f"WHERE owner = %s AND cancel_requested AND {_NOT_ENDED}",
                (owner,),
            ).fetchall()
            return [(run_id, reason) for run_id, reason in rows]

        return await self._call(work, idempotent=True)

    async def put_event(self, run_id: str, name: str, data: bytes, now: float) -> RunStatus:
        def work(conn: psycopg.Connection[Any]) -> RunStatus:
            found = conn.execute(
                "SELECT status FROM trioflow_runs WHERE run_id = %s FOR UPDATE", (run_id,)
            ).fetchone()
            if found is None:
                raise RunNotFoundError(run_id)
            if found[0] not in TERMINAL_STATUSES:
                conn.execute(
                    "INSERT INTO trioflow_events (run_id, name, data, created_at) "
                    "VALUES (%s, %s, %s, %s)",
                    (run_id, name, data, now),
                )
                # The executor hears of it as it hears of a cancel request.
                conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, run_id))
            return found[0]  # type: ignore[no-any-return]

        return await self._call(work)

    async def events_for(
        self, *, owner: str | None = None, run_id: str | None = None
    ) -> list[StoredEvent]:
        return await self._transaction(
            lambda q: _run_sql.events_for(q, owner, run_id), idempotent=True
        )

    async def delete(self, run_id: str) -> RunStatus:
        # Deleting twice is deleting once: safe to run again on a new connection.
        return await self._transaction(lambda q: _run_sql.delete(q, run_id), idempotent=True)

    async def prune(self, ended_before: float, statuses: tuple[str, ...]) -> int:
        return await self._transaction(
            lambda q: _run_sql.prune(q, ended_before, statuses), idempotent=True
        )

    async def data_version(self) -> int:
        # The next transaction id: it moves whenever any transaction writes. The engine
        # does not poll it here (notifications replace the poll); it is only cheap.
        def work(conn: psycopg.Connection[Any]) -> int:
            found = conn.execute(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            ).fetchone()
            assert found is not None
            return int(found[0])

        return await self._call(work, idempotent=True)

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
        where: list[str] = []
        params: list[object] = []
        for condition, value in (
            ("status = %s", status),
            ("workflow_id = %s", workflow_id),
            ("workflow_version = %s", version),
            ("created_at >= %s", since),
            ("created_at < %s", until),
        ):
            if value is not None:
                where.append(condition)
                params.append(value)
        clause = f"WHERE {' AND '.join(where)} " if where else ""

        def work(conn: psycopg.Connection[Any]) -> list[RunSummary]:
            rows = conn.execute(
                "SELECT run_id, workflow_id, status, created_at, updated_at, workflow_version, "
                f"forked_from, lease_until FROM trioflow_runs {clause}"
                "ORDER BY created_at DESC, run_id LIMIT %s OFFSET %s",
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

        return await self._call(work, idempotent=True)

    # --- schedules and queues: the SQL is shared with SQLite (_queue_sql) ---------------

    async def _transaction(
        self, fn: Callable[[_queue_sql.Query], T], *, idempotent: bool = False
    ) -> T:
        def work(conn: psycopg.Connection[Any]) -> T:
            with conn.transaction():
                return fn(_query(conn))

        return await self._call(work, idempotent=idempotent)

    async def register_schedules(
        self, states: list[ScheduleState], now: float
    ) -> dict[str, ScheduleState]:
        return await self._transaction(
            lambda q: _queue_sql.register_schedules(q, states, now), idempotent=True
        )

    async def load_schedule(self, schedule_id: str) -> ScheduleState | None:
        return await self._transaction(
            lambda q: _queue_sql.load_schedule(q, schedule_id), idempotent=True
        )

    async def list_schedules(self) -> list[ScheduleState]:
        return await self._transaction(_queue_sql.list_schedules, idempotent=True)

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, now: float
    ) -> ScheduleState | None:
        return await self._transaction(
            lambda q: _queue_sql.set_schedule_paused(q, schedule_id, paused, now),
            idempotent=True,
        )

    async def advance_schedule(self, schedule_id: str, until: float) -> None:
        await self._transaction(
            lambda q: _queue_sql.advance_schedule(q, schedule_id, until), idempotent=True
        )

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
        def work(q: _queue_sql.Query) -> RunRow | None:
            # Two engines storing the same run id or dedup id at once: the second waits
            # for the first to commit, then finds its run. (Two keys whose hashes
            # collide only wait for each other.)
            q("SELECT pg_advisory_xact_lock(hashtext(?))", (f"trioflow run {run_id}",))
            if entry.dedup_id is not None:
                lock = f"trioflow dedup {entry.queue} {entry.dedup_id}"
                q("SELECT pg_advisory_xact_lock(hashtext(?))", (lock,))
            return _queue_sql.insert_queued(
                q, run_id, workflow_id, snapshot, now, entry, workflow_version, forked_from
            )

        # Idempotent: a second attempt after a lost connection finds the first's run.
        return await self._transaction(work, idempotent=True)

    async def register_queues(self, queues: list[QueueLimits], now: float) -> None:
        await self._transaction(
            lambda q: _queue_sql.register_queues(q, queues, now, upsert=_queue_sql.UPSERT_QUEUE),
            idempotent=True,
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

        def work(conn: psycopg.Connection[Any]) -> list[RunRow]:
            q = _query(conn)
            # An idle worker polls: look first, and lock only for work.
            if not _queue_sql.any_waiting(q, names, workflow_ids, now):
                return []
            taken: list[RunRow] = []
            for limits in queues:
                room = limit - len(taken)
                if room <= 0:
                    break
                # One transaction per queue. A queue with limits is locked (its row)
                # so that its takers count its executing runs one after the other
                # (each holds it for a few statements); they wait for it rather than
                # skip it: with SKIP LOCKED, a worker whose run has just freed a slot
                # could find the row busy and sleep a poll interval, leaving the slot
                # empty. A queue without limits is not locked: its takers skip each
                # other's rows.
                with conn.transaction():
                    if limits.limited:
                        lock = "SELECT name FROM trioflow_queues WHERE name = ? FOR UPDATE"
                        if not q(lock, (limits.name,)):
                            q(
                                "INSERT INTO trioflow_queues (name, updated_at) VALUES (?, ?) "
                                "ON CONFLICT (name) DO NOTHING",
                                (limits.name, now),
                            )
                            q(lock, (limits.name,))
                    taken += _queue_sql.claim_from_queue(
                        q,
                        owner,
                        workflow_ids,
                        limits,
                        room,
                        now,
                        lease_until,
                        lock_rows="FOR UPDATE OF e SKIP LOCKED",
                        versions=versions,
                    )
            return taken

        return await self._call(work)

    async def queue_place(self, run_id: str, now: float) -> QueuePlace | None:
        return await self._transaction(
            lambda q: _queue_sql.queue_place(q, run_id, now), idempotent=True
        )

    async def queue_stats(self, now: float) -> list[QueueStats]:
        return await self._transaction(lambda q: _queue_sql.queue_stats(q, now), idempotent=True)

    # --- logs and trace contexts ----------------------------------------------------------

    async def append_logs(self, run_id: str, logs: Sequence[NewLog], *, skipped: int = 0) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                # One writer per run at a time (a run's executor, and one that lost its
                # lease but does not know yet), so that two never take the same numbers.
                conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", ("trioflow_logs:" + run_id,)
                )
                found = conn.execute(
                    "SELECT MAX(seq) FROM trioflow_logs WHERE run_id = %s", (run_id,)
                ).fetchone()
                last = None if found is None else found[0]
                first = (-1 if last is None else last) + 1 + skipped
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO trioflow_logs (run_id, seq, time, level, step_id, "
                        "attempt, message) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [
                            (
                                run_id,
                                first + i,
                                log.time,
                                log.level,
                                log.step_id,
                                log.attempt,
                                log.message,
                            )
                            for i, log in enumerate(logs)
                        ],
                    )
                conn.execute(
                    "DELETE FROM trioflow_logs WHERE run_id = %s AND seq <= %s",
                    (run_id, first + len(logs) - 1 - STORED_LOGS),
                )

        await self._call(work)

    async def read_logs(self, run_id: str, *, after: int = -1) -> list[LogEntry]:
        def work(conn: psycopg.Connection[Any]) -> list[LogEntry]:
            rows = conn.execute(
                "SELECT seq, time, level, message, step_id, attempt FROM trioflow_logs "
                "WHERE run_id = %s AND seq > %s ORDER BY seq",
                (run_id, after),
            ).fetchall()
            return [
                LogEntry(seq=r[0], time=r[1], level=r[2], message=r[3], step_id=r[4], attempt=r[5])
                for r in rows
            ]

        return with_drop_marker(await self._call(work, idempotent=True), after)

    async def store_trace_context(self, run_id: str, carrier: dict[str, str]) -> None:
        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO trioflow_traces (run_id, traceparent, tracestate) "
                "VALUES (%s, %s, %s) ON CONFLICT (run_id) DO NOTHING",
                (run_id, carrier["traceparent"], carrier.get("tracestate")),
            )

        await self._call(work, idempotent=True)

    async def load_trace_context(self, run_id: str) -> dict[str, str] | None:
        def work(conn: psycopg.Connection[Any]) -> dict[str, str] | None:
            row = conn.execute(
                "SELECT traceparent, tracestate FROM trioflow_traces WHERE run_id = %s",
                (run_id,),
            ).fetchone()
            if row is None:
                return None
            return {"traceparent": row[0], **({"tracestate": row[1]} if row[1] else {})}

        return await self._call(work, idempotent=True)

    # --- notifications --------------------------------------------------------------------

    def _listen(self, attempt: _Attempt | None = None) -> psycopg.Connection[Any]:
        """A connection that LISTENs for cancel requests and ended runs (in a worker
        thread). After LISTEN it runs no query: it is only read, from the Trio thread.
        With an `attempt`, failures are retried with back-off until it is stopped."""
        pg = _psycopg()
        backoff = None if attempt is None else _Backoff(self, attempt.stop, bounded=False)
        while True:
            try:
                conn = self._connect()
                try:
                    conn.execute(f"LISTEN {CANCEL_CHANNEL}; LISTEN {ENDED_CHANNEL}")
                except pg.Error as exc:
                    conn.close()
                    raise _storage_error(self, exc) from exc
            except StorageError as exc:
                if backoff is None:
                    raise
                backoff.wait(exc)
                continue
            return conn

    async def wait_cancel_requests(self) -> None:
        """Return when a cancel request may have been written: a notification came, the
        listening connection was re-established (notifications may have been lost
        meanwhile), or `notify_backstop` seconds of real time passed. Notifications of
        ended runs are passed on to `wait_run_ended` on the way. While the server is
        unreachable this keeps trying to reconnect (it never raises for that)."""
        pg = _psycopg()
        with _after_real_seconds(self.notify_backstop):
            while True:
                conn = self._listener
                if conn is None:
                    if not self._open:
                        raise RuntimeError(f"{self!r} is not open")
                    attempt = _Attempt()
                    conn = await _in_thread(partial(self._listen, attempt), attempt.cancel)
                    if not self._open:
                        conn.close()
                        raise RuntimeError(f"{self!r} is not open")
                    self._listener = conn
                    logger.info("listening for cancel requests again on %r", self)
                    self._wake_ended_waiters()  # their notifications may be lost too
                    return
                pgconn = conn.pgconn
                fd = pgconn.socket
                await trio.lowlevel.wait_readable(fd)
                try:
                    pgconn.consume_input()
                except pg.Error as exc:
                    logger.warning("lost the connection listening for cancel requests: %s", exc)
                    self._listener = None
                    trio.lowlevel.notify_closing(fd)
                    conn.close()
                    continue
                canceled = False
                while (notify := pgconn.notifies()) is not None:
                    if notify.relname.decode() == CANCEL_CHANNEL:
                        canceled = True
                    else:
                        self._ended(notify.extra.decode())
                if canceled:
                    return

    async def wait_run_ended(self, run_id: str, poll_interval: float) -> None:
        """Return when the run's executor notifies that it stopped executing it (or
        released it), when the listening connection was re-established, or after
        `notify_backstop` seconds of real time. The engine's listening task
        (`wait_cancel_requests`) reads the notifications; without one this waits for the
        backstop."""
        if run_id in self._recently_ended:  # notified before this call
            del self._recently_ended[run_id]
            await trio.lowlevel.checkpoint()
            return
        event = trio.Event()
        waiters = self._ended_waiters.setdefault(run_id, [])
        waiters.append(event)
        try:
            with _after_real_seconds(self.notify_backstop):
                await event.wait()
        finally:
            if event in waiters:
                waiters.remove(event)
                if not waiters and self._ended_waiters.get(run_id) is waiters:
                    del self._ended_waiters[run_id]

    def _ended(self, run_id: str) -> None:
        """A notification that `run_id` stopped executing: wake its cancellers, or keep
        it for one that is about to wait."""
        waiters = self._ended_waiters.pop(run_id, None)
        if waiters:
            for event in waiters:
                event.set()
            return
        self._recently_ended[run_id] = None
        if len(self._recently_ended) > _RECENTLY_ENDED:
            del self._recently_ended[next(iter(self._recently_ended))]

    def _wake_ended_waiters(self) -> None:
        waiters, self._ended_waiters = self._ended_waiters, {}
        for events in waiters.values():
            for event in events:
                event.set()


def _json(value: Any) -> str:
    return _encoder.encode(value).decode()


def _entries_json(writes: Iterable[Write]) -> str:
    """The entries of `writes` for `_ADD_ENTRIES`."""
    return _json(
        [
            [write.run_id, write.first_seq, msgspec.Raw(b"[" + b",".join(write.entries) + b"]")]
            for write in writes
            if write.entries
        ]
    )


def _claimed(values: Any) -> RunRow:
    """A row of `_CLAIM_MANY`'s answer."""
    *columns, seqs, names, datas = values
    run_id = columns[0]
    events = [
        StoredEvent(run_id, seq, name, bytes(data))
        for seq, name, data in zip(seqs, names, datas, strict=True)
    ]
    return msgspec.structs.replace(_row_with_entries(columns), events=tuple(events))


def _row_with_entries(values: Any) -> RunRow:
    entries = tuple(bytes(data) for data in values[-1])
    return msgspec.structs.replace(row_from_sql(values), entries=entries)


def _query(conn: psycopg.Connection[Any]) -> _queue_sql.Query:
    def query(sql: str, params: Any) -> list[Any]:
        cursor = conn.execute(sql.replace("?", "%s"), params)
        return cursor.fetchall() if cursor.description is not None else []

    return query


class _Interrupted(Exception):
    """A worker thread gave up waiting to reconnect: the Trio side cancelled the call."""


class _Attempt:
    """One storage call in its worker thread, seen from the Trio thread: the
    connection it uses (to cancel its query on the server) and a flag that stops its
    reconnection back-off."""

    def __init__(self) -> None:
        self.conn: psycopg.Connection[Any] | None = None
        self.stop = threading.Event()

    def cancel(self) -> None:  # in a thread of its own: cancel_safe talks to the server
        self.stop.set()
        conn = self.conn
        if conn is not None:
            conn.cancel_safe()


class _Backoff:
    """Waits between reconnection attempts, in real time and in a worker thread:
    doubling from `_BACKOFF_FIRST` to `_BACKOFF_CAP`; when `bounded`, the failure is
    raised once ``storage.reconnect_timeout`` seconds of waits have not helped."""

    def __init__(
        self, storage: PostgresStorage, stop: threading.Event, *, bounded: bool = True
    ) -> None:
        self.storage = storage
        self.stop = stop
        self.bounded = bounded
        self.failures = 0
        self.waited = 0.0

    def wait(self, error: StorageError) -> None:
        limit = self.storage.reconnect_timeout
        if self.bounded and self.waited >= limit:
            raise StorageError(
                f"{error} (still failing after {limit:g}s of reconnecting; raise "
                "reconnect_timeout to wait longer)"
            ) from error
        if self.failures == 0 or (not self.bounded and self.waited >= limit):
            logger.warning("cannot reach the server, retrying: %s", error)
            if not self.bounded and self.waited >= limit:
                self.waited = 0.0  # unbounded: warn again every reconnect_timeout
        delay = min(_BACKOFF_FIRST * 2**self.failures, _BACKOFF_CAP)
        self.failures += 1
        self.waited += delay
        if self.stop.wait(delay):
            raise _Interrupted


def _is_usable(conn: psycopg.Connection[Any]) -> bool:
    """Whether a pooled, idle connection may carry a query. The server sends nothing
    to an idle connection that does not LISTEN, except when it closes it (FATAL, then
    EOF): readable means lost."""
    if conn.closed or conn.broken:
        return False
    fd = conn.pgconn.socket
    if not hasattr(select, "poll"):  # Windows
        return not select.select([fd], [], [], 0)[0]
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)


@contextlib.contextmanager
def _after_real_seconds(seconds: float) -> Iterator[trio.CancelScope]:
    """A cancel scope cancelled after `seconds` of real time, timed by a worker thread:
    for waits on the outside world, which Trio's clock (maybe a MockClock) must not
    bound."""
    token = trio.lowlevel.current_trio_token()
    over = threading.Event()
    with trio.CancelScope() as scope:

        def expire() -> None:
            if not over.wait(seconds):
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

        trio.lowlevel.start_thread_soon(expire, lambda _: None)
        try:
            yield scope
        finally:
            over.set()


async def _in_thread(fn: Callable[[], T], cancel: Callable[[], None] | None) -> T:
    """`fn()` in a worker thread. If the calling task is cancelled meanwhile, `cancel()`
    runs (in another thread: it talks to the server) and both threads are waited for:
    a cancelled `fn` raises `trio.Cancelled`, a completed one returns its result."""
    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()
    pending = 1
    result: outcome.Outcome[T] | None = None
    raise_cancel: Callable[[], NoReturn] | None = None

    def one_done() -> None:  # on the Trio thread
        nonlocal pending
        pending -= 1
        if pending == 0:
            trio.lowlevel.reschedule(task)

    def deliver(value: outcome.Outcome[T]) -> None:  # in the worker thread
        nonlocal result
        result = value
        token.run_sync_soon(one_done)

    def send_cancel() -> None:  # in a second thread
        try:
            assert cancel is not None
            cancel()
        except Exception:  # the query may be over already; nothing to undo
            logger.debug("cancelling a query on the server failed", exc_info=True)

    def abort(raise_cancel_fn: Callable[[], NoReturn]) -> trio.lowlevel.Abort:
        nonlocal pending, raise_cancel
        if raise_cancel is None:
            raise_cancel = raise_cancel_fn
            if cancel is not None:
                pending += 1
                trio.lowlevel.start_thread_soon(
                    send_cancel, lambda _: token.run_sync_soon(one_done)
                )
        return trio.lowlevel.Abort.FAILED

    trio.lowlevel.start_thread_soon(fn, deliver)
    await trio.lowlevel.wait_task_rescheduled(abort)
    assert result is not None
    if isinstance(result, outcome.Error) and isinstance(
        result.error, (_psycopg().errors.QueryCanceled, _Interrupted)
    ):
        if raise_cancel is not None:
            raise_cancel()
    return result.unwrap()


def _describe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(dsn)
    except Exception:
        return "<dsn>"
    params.pop("password", None)
    keys = ("host", "port", "dbname", "user")
    return " ".join(f"{key}={params[key]}" for key in keys if params.get(key) is not None)


def _storage_error(storage: PostgresStorage, exc: Exception) -> StorageError:
    text = str(exc).strip() or type(exc).__name__
    errors = _psycopg().errors
    if isinstance(exc, errors.InsufficientPrivilege):
        hint = "grant this role the rights on the trioflow tables, or connect as their owner"
    elif isinstance(exc, errors.ReadOnlySqlTransaction):
        hint = "the server is a read-only standby; connect to the primary"
    elif isinstance(exc, errors.UndefinedTable):
        hint = "the trioflow tables are missing; open the storage to create them"
    elif "password authentication failed" in text:
        hint = "check the user and password in the DSN"
    elif "does not exist" in text and "connection" in text:
        hint = "check the database and user names in the DSN (create the database first)"
    elif isinstance(exc, _psycopg().ProgrammingError) and "option" in text:
        hint = "fix the DSN: a libpq connection string (host=... dbname=...) or a URL"
    elif isinstance(exc, _psycopg().OperationalError):
        hint = "check that the server is running and that the DSN is right"
    else:
        hint = "see the cause below"
    return StorageError(f"{storage!r}: {text}; {hint}")
