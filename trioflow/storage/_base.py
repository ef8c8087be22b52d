"""The storage interface. A backend stores rows of runs: the snapshot (opaque bytes to
it, except where a transaction must cancel an idle run), the status, and who executes
the run under which lease. Every method is one transaction; the compare-and-set ones
are what keep one terminal transition and one executor per run across processes."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
import trio

from .._clock import wall_time
from .._logs import LogEntry, NewLog
from .._results import RunStatus

TERMINAL_STATUSES = ("success", "failed", "canceled")
EXECUTING_STATUSES = ("running", "waiting")


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A stored run, as `Engine.list_runs()` lists it. Times are wall-clock seconds."""

    run_id: str
    workflow_id: str
    status: RunStatus
    created_at: float
    updated_at: float


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """A stored run with its snapshot and its executor's lease."""

    run_id: str
    workflow_id: str
    status: RunStatus
    snapshot: bytes
    owner: str | None
    lease_until: float | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    cancel_reason: str | None = None
    queued: bool = False


# The columns of the runs table of the SQL backends, in the order `row_from_sql` reads.
SQL_COLUMNS = (
    "run_id, workflow_id, status, snapshot, owner, lease_until, cancel_requested, "
    "created_at, updated_at, cancel_reason, queued"
)


def row_from_sql(values: Any) -> RunRow:
    """A `RunRow` from a row of `SQL_COLUMNS` (SQLite and PostgreSQL alike)."""
    return RunRow(
        run_id=values[0],
        workflow_id=values[1],
        status=values[2],
        snapshot=bytes(values[3]),
        owner=values[4],
        lease_until=values[5],
        cancel_requested=bool(values[6]),
        created_at=values[7],
        updated_at=values[8],
        cancel_reason=values[9],
        queued=bool(values[10]),
    )


class Storage(abc.ABC):
    """What an engine needs from a backend. Open it with ``async with``, or let
    `open_engine` do it."""

    #: True for backends that push cancel requests: the engine then waits in
    #: `wait_cancel_requests` instead of polling `data_version`.
    notifies_cancels: ClassVar[bool] = False

    async def __aenter__(self) -> Storage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or check the schema."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection; idempotent."""

    @abc.abstractmethod
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
        """Store a new run; `ValueError` if the id is taken. A `queued` run (status
        ``'pending'``) waits for a worker to take it with `claim_queued`."""

    @abc.abstractmethod
    async def load(self, run_id: str) -> RunRow:
        """The stored run; `RunNotFoundError` if there is none."""

    @abc.abstractmethod
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
        """Write the run if `owner` still holds it and it has not ended; drop the lease
        when `release`. False if the write lost (someone else ended or holds it)."""

    @abc.abstractmethod
    async def claim(
        self,
        run_id: str,
        owner: str,
        statuses: tuple[str, ...],
        now: float,
        lease_until: float,
    ) -> RunRow | None:
        """Take the run for `owner` if its status is in `statuses` and nobody holds a
        live lease on it; the row as taken, or None."""

    @abc.abstractmethod
    async def claim_queued(
        self,
        owner: str,
        workflow_ids: list[str],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[RunRow]:
        """Take for `owner` up to `limit` queued ``'pending'`` runs of these workflows
        that nobody holds a live lease on, oldest first, each in one transaction with
        the other takers (no run is taken twice); the rows as taken."""

    @abc.abstractmethod
    async def renew(self, owner: str, run_ids: list[str], lease_until: float) -> None:
        """Extend the leases `owner` holds on `run_ids` (the runs it still executes)."""

    @abc.abstractmethod
    async def release(self, owner: str) -> None:
        """Drop every lease `owner` holds (its runs become recoverable at once)."""

    @abc.abstractmethod
    async def recoverable(self, workflow_ids: list[str], now: float, limit: int) -> list[str]:
        """Ids of executing runs of these workflows that nobody holds a live lease on."""

    @abc.abstractmethod
    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        """Ask for a run's cancellation. A run that no live executor holds is canceled
        here and now (its snapshot rewritten); one that executes elsewhere is flagged
        for its executor. The status after the request."""

    @abc.abstractmethod
    async def cancel_requests(self, owner: str) -> list[tuple[str, str | None]]:
        """(run id, reason) of the runs `owner` executes that were asked to cancel."""

    @abc.abstractmethod
    async def data_version(self) -> int:
        """A number that changes whenever another connection commits a change: a cheap
        check before looking for cancel requests."""

    @abc.abstractmethod
    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunSummary]:
        """Stored runs, newest first, paged."""

    # --- observability: a run's logs and trace context, beside its row ---------------

    @abc.abstractmethod
    async def append_logs(self, run_id: str, logs: Sequence[NewLog], *, skipped: int = 0) -> None:
        """Store log records of a run after those it has: numbered on from its last
        stored ``seq``, leaving a gap of `skipped` (records dropped before they were
        stored); keep the run's last `_logs.STORED_LOGS`."""

    @abc.abstractmethod
    async def read_logs(self, run_id: str, *, after: int = -1) -> list[LogEntry]:
        """The run's stored log records with ``seq > after``, oldest first, led by a
        marker record when some the reader has not seen were dropped
        (`_logs.with_drop_marker`). Empty for an unknown run."""

    @abc.abstractmethod
    async def store_trace_context(self, run_id: str, carrier: dict[str, str]) -> None:
        """Keep the W3C trace context (``traceparent``, optional ``tracestate``) of a
        run's first traced execution; a run that has one keeps its first."""

    @abc.abstractmethod
    async def load_trace_context(self, run_id: str) -> dict[str, str] | None:
        """The trace context kept by `store_trace_context`, or None."""

    async def wait_cancel_requests(self) -> None:
        """Backends that push cancel requests (`notifies_cancels`): return when one may
        have been written for any run, and every so often anyway (a backstop for lost
        notifications); the engine then calls `cancel_requests`. Others do not
        implement it: the engine polls `data_version`."""
        raise NotImplementedError(f"{type(self).__name__} does not notify cancel requests")

    async def wait_run_ended(self, run_id: str, poll_interval: float) -> None:
        """Return when the run may have stopped executing where it executes (its
        terminal status is stored, or nobody holds it any more: its executor suspended
        it, released it or died), or when it is time to look again anyway. The caller
        then reads the stored run itself; returning early is always allowed.

        This default polls the stored run: after 2 ms, then at doubling intervals up to
        `poll_interval`. Backends that can push the news (PostgreSQL) wait for it."""
        delay = min(0.002, poll_interval)
        while True:
            await trio.sleep(delay)
            row = await self.load(run_id)
            held = row.owner is not None and (row.lease_until or 0) >= wall_time()
            if row.status in TERMINAL_STATUSES or not held:
                return
            delay = min(delay * 2, poll_interval)
