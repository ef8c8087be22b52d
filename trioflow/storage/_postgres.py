"""Runs in PostgreSQL: many worker processes on many machines sharing one database.

psycopg's async API does not run on Trio, so this backend uses psycopg 3's synchronous
connections from worker threads: a small pool of them, at most ``max_connections`` in use
at once (a `trio.CapacityLimiter` of ours). When Trio cancels a call whose query is still
running, the query is cancelled on the server too (`Connection.cancel_safe`), and the
call waits for its thread before it raises `trio.Cancelled`, so a connection is never
shared by two queries. A call that completed despite the cancellation returns normally:
if it was cancelled, it did not happen; if it happened, it is reported.

Cancel requests travel by notification: `request_cancel` flags the run and sends
``NOTIFY trioflow_cancel, '<run id>'`` in the same transaction; each storage keeps one
dedicated connection that LISTENs, driven by Trio's own readiness waiting on its socket
(`wait_cancel_requests`), with a slow poll as the backstop after a reconnect.

The schema is created and migrated by trioflow; its version is stored in the
``trioflow_meta`` table.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import outcome
import trio

from .. import _snapshot
from .._errors import RunNotFoundError, StorageError
from .._results import RunStatus
from ._base import SQL_COLUMNS, TERMINAL_STATUSES, RunRow, RunSummary, Storage, row_from_sql

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")

logger = logging.getLogger("trioflow")

SCHEMA_VERSION = 1
CANCEL_CHANNEL = "trioflow_cancel"
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
}
_NOT_ENDED = "status NOT IN ('success', 'failed', 'canceled')"
# Deadlocks and serialization failures roll the transaction back: safe to run it again.
_RETRIES = 3
# How long a listener waits before trying to reconnect after losing its connection.
_RECONNECT_DELAY = 0.5


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
    ) -> None:
        _psycopg()
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections!r}")
        if not notify_backstop > 0:
            raise ValueError(
                f"notify_backstop must be a positive number of seconds, got {notify_backstop!r}"
            )
        self.dsn = dsn
        self.max_connections = max_connections
        self.notify_backstop = notify_backstop
        self._connect_timeout = max(1, round(connect_timeout))
        self._limiter = trio.CapacityLimiter(max_connections)
        self._idle: list[psycopg.Connection[Any]] = []
        self._listener: psycopg.Connection[Any] | None = None
        self._open = False

    def __repr__(self) -> str:
        return f"PostgresStorage({_describe(self.dsn)!r})"

    # --- connections and threads ----------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        """A new autocommit connection (in a worker thread)."""
        pg = _psycopg()
        try:
            conn: psycopg.Connection[Any] = pg.Connection.connect(
                self.dsn, autocommit=True, connect_timeout=self._connect_timeout
            )
        except pg.Error as exc:
            raise _storage_error(self, exc) from exc
        return conn

    async def _call(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `fn(connection)` in a worker thread on a pooled connection: one
        transaction (or statement), retried after a deadlock or serialization failure;
        psycopg errors become `StorageError`."""
        if not self._open:
            raise RuntimeError(f"{self!r} is not open; use it inside open_engine() or async with")
        pg = _psycopg()
        errors = pg.errors

        def work(conn: psycopg.Connection[Any]) -> T:
            for attempt in range(_RETRIES):
                try:
                    return fn(conn)
                except errors.QueryCanceled:
                    raise  # turned into trio.Cancelled (or StorageError) on the Trio side
                except (errors.DeadlockDetected, errors.SerializationFailure) as exc:
                    if attempt == _RETRIES - 1:
                        raise _storage_error(self, exc) from exc
                except pg.Error as exc:
                    raise _storage_error(self, exc) from exc
            raise AssertionError("unreachable")

        async with self._limiter:
            conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = await _in_thread(self._connect, None)
            try:
                return await _in_thread(lambda: work(conn), conn.cancel_safe)
            except errors.QueryCanceled as exc:  # not by us: statement_timeout, an admin...
                raise StorageError(f"{self!r}: the server cancelled a query: {exc}") from exc
            finally:
                # The thread is over. A broken connection, or one left inside a
                # transaction, is not reused.
                idle = pg.pq.TransactionStatus.IDLE
                if not conn.broken and conn.info.transaction_status == idle:
                    self._idle.append(conn)
                else:
                    conn.close()

    # --- Storage ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            await trio.lowlevel.checkpoint()
            return
        pg = _psycopg()

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

        conn = await trio.to_thread.run_sync(migrate)
        self._idle.append(conn)
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
    ) -> None:
        errors = _psycopg().errors

        def work(conn: psycopg.Connection[Any]) -> None:
            try:
                conn.execute(
                    "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, queued, "
                    "created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (run_id, workflow_id, status, snapshot, queued, now, now),
                )
            except errors.UniqueViolation:
                raise ValueError(
                    f"a run with id {run_id!r} is already stored; pick another run_id"
                ) from None

        await self._call(work)

    async def load(self, run_id: str) -> RunRow:
        def work(conn: psycopg.Connection[Any]) -> RunRow:
            values = conn.execute(
                f"SELECT {SQL_COLUMNS} FROM trioflow_runs WHERE run_id = %s", (run_id,)
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
        def work(conn: psycopg.Connection[Any]) -> bool:
            cursor = conn.execute(
                "UPDATE trioflow_runs SET status = %s, snapshot = %s, updated_at = %s, "
                "owner = CASE WHEN %s THEN NULL ELSE owner END, "
                "lease_until = CASE WHEN %s THEN NULL ELSE lease_until END "
                f"WHERE run_id = %s AND owner = %s AND {_NOT_ENDED}",
                (status, snapshot, now, release, release, run_id, owner),
            )
            return cursor.rowcount == 1

        return await self._call(work)

    async def claim(
        self,
        run_id: str,
        owner: str,
        statuses: tuple[str, ...],
        now: float,
        lease_until: float,
    ) -> RunRow | None:
        def work(conn: psycopg.Connection[Any]) -> RunRow | None:
            values = conn.execute(
                "UPDATE trioflow_runs SET owner = %s, lease_until = %s WHERE run_id = %s "
                "AND status = ANY(%s) AND (owner IS NULL OR lease_until < %s) "
                f"RETURNING {SQL_COLUMNS}",
                (owner, lease_until, run_id, list(statuses), now),
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

        def work(conn: psycopg.Connection[Any]) -> list[RunRow]:
            rows = conn.execute(
                "UPDATE trioflow_runs SET owner = %s, lease_until = %s WHERE run_id IN ("
                "SELECT run_id FROM trioflow_runs WHERE status = 'pending' AND queued "
                "AND workflow_id = ANY(%s) AND (owner IS NULL OR lease_until < %s) "
                "ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                f"RETURNING {SQL_COLUMNS}",
                (owner, lease_until, workflow_ids, now, limit),
            ).fetchall()
            return sorted((row_from_sql(values) for values in rows), key=lambda r: r.created_at)

        return await self._call(work)

    async def renew(self, owner: str, run_ids: list[str], lease_until: float) -> None:
        await self._call(
            lambda conn: conn.execute(
                "UPDATE trioflow_runs SET lease_until = %s WHERE owner = %s AND run_id = ANY(%s)",
                (lease_until, owner, run_ids),
            )
        )

    async def release(self, owner: str) -> None:
        await self._call(
            lambda conn: conn.execute(
                "UPDATE trioflow_runs SET owner = NULL, lease_until = NULL WHERE owner = %s",
                (owner,),
            )
        )

    async def recoverable(self, workflow_ids: list[str], now: float, limit: int) -> list[str]:
        if not workflow_ids or limit < 1:
            await trio.lowlevel.checkpoint()
            return []

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            rows = conn.execute(
                "SELECT run_id FROM trioflow_runs WHERE status IN ('running', 'waiting') "
                "AND workflow_id = ANY(%s) AND (owner IS NULL OR lease_until < %s) "
                "ORDER BY updated_at LIMIT %s",
                (workflow_ids, now, limit),
            ).fetchall()
            return [run_id for (run_id,) in rows]

        return await self._call(work)

    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        def work(conn: psycopg.Connection[Any]) -> RunStatus:
            with conn.transaction():
                values = conn.execute(
                    "SELECT status, snapshot, owner, lease_until FROM trioflow_runs "
                    "WHERE run_id = %s FOR UPDATE",
                    (run_id,),
                ).fetchone()
                if values is None:
                    raise RunNotFoundError(run_id)
                status, data, owner, lease_until = values
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
                snapshot = _snapshot.cancel_idle(_snapshot.decode(run_id, bytes(data)), reason, now)
                conn.execute(
                    "UPDATE trioflow_runs SET status = 'canceled', snapshot = %s, "
                    "cancel_requested = TRUE, cancel_reason = %s, owner = NULL, "
                    "lease_until = NULL, updated_at = %s WHERE run_id = %s",
                    (_snapshot.encode(snapshot), reason, now, run_id),
                )
                return "canceled"

        return await self._call(work)

    async def cancel_requests(self, owner: str) -> list[tuple[str, str | None]]:
        def work(conn: psycopg.Connection[Any]) -> list[tuple[str, str | None]]:
            rows = conn.execute(
                "SELECT run_id, cancel_reason FROM trioflow_runs "
                f"WHERE owner = %s AND cancel_requested AND {_NOT_ENDED}",
                (owner,),
            ).fetchall()
            return [(run_id, reason) for run_id, reason in rows]

        return await self._call(work)

    async def data_version(self) -> int:
        # The next transaction id: it moves whenever any transaction writes. The engine
        # does not poll it here (notifications replace the poll); it is only cheap.
        def work(conn: psycopg.Connection[Any]) -> int:
            found = conn.execute(
                "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
            ).fetchone()
            assert found is not None
            return int(found[0])

        return await self._call(work)

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunSummary]:
        where: list[str] = []
        params: list[object] = []
        if status is not None:
            where.append("status = %s")
            params.append(status)
        if workflow_id is not None:
            where.append("workflow_id = %s")
            params.append(workflow_id)
        clause = f"WHERE {' AND '.join(where)} " if where else ""

        def work(conn: psycopg.Connection[Any]) -> list[RunSummary]:
            rows = conn.execute(
                "SELECT run_id, workflow_id, status, created_at, updated_at FROM trioflow_runs "
                f"{clause}ORDER BY created_at DESC, run_id LIMIT %s OFFSET %s",
                (*params, limit, offset),
            ).fetchall()
            return [
                RunSummary(
                    run_id=r[0], workflow_id=r[1], status=r[2], created_at=r[3], updated_at=r[4]
                )
                for r in rows
            ]

        return await self._call(work)

    # --- notifications --------------------------------------------------------------------

    def _listen(self) -> psycopg.Connection[Any]:
        """A connection that LISTENs for cancel requests (in a worker thread). After
        LISTEN it runs no query: it is only read, from the Trio thread."""
        pg = _psycopg()
        conn = self._connect()
        try:
            conn.execute(f"LISTEN {CANCEL_CHANNEL}")
        except pg.Error as exc:
            conn.close()
            raise _storage_error(self, exc) from exc
        return conn

    async def wait_cancel_requests(self) -> None:
        """Return when a cancel request may have been written: a notification came, the
        listening connection was re-established (notifications may have been lost
        meanwhile), or `notify_backstop` seconds passed."""
        pg = _psycopg()
        with trio.move_on_after(self.notify_backstop):
            while True:
                conn = self._listener
                if conn is None:
                    if not self._open:
                        raise RuntimeError(f"{self!r} is not open")
                    try:
                        conn = await trio.to_thread.run_sync(self._listen)
                    except StorageError as exc:
                        logger.warning("cannot listen for cancel requests: %s; retrying", exc)
                        await trio.sleep(_RECONNECT_DELAY)
                        continue
                    if not self._open:
                        conn.close()
                        raise RuntimeError(f"{self!r} is not open")
                    self._listener = conn
                    logger.info("listening for cancel requests again on %r", self)
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
                notified = False
                while pgconn.notifies() is not None:
                    notified = True
                if notified:
                    return


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
    if raise_cancel is not None and isinstance(result, outcome.Error):
        if isinstance(result.error, _psycopg().errors.QueryCanceled):
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
    elif isinstance(exc, _psycopg().OperationalError):
        hint = "check that the server is running and that the DSN is right"
    else:
        hint = "see the cause below"
    return StorageError(f"{storage!r}: {text}; {hint}")
