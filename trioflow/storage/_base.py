"""The storage interface. A backend stores rows of runs: a header (the snapshot the run
was created with) and a journal of entries appended after it, JSON documents whose
content is opaque to it; the status; and who executes the run under which lease. Every
method is one transaction; the compare-and-set ones are what keep one terminal
transition and one executor per run across processes."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import msgspec
import trio

from .._clock import wall_time
from .._logs import LogEntry, NewLog
from .._queues import QueueEntry, QueueLimits, QueuePlace, QueueStats
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
    #: The workflow version the run executes on (None: stored before versions existed).
    version: str | None = None
    #: The run this one was forked from (`Engine.fork_run`, `Engine.retry_run`).
    forked_from: str | None = None
    #: Until when its executor's lease holds (None: nobody holds it): a ``'running'`` or
    #: ``'waiting'`` run whose lease has passed is orphaned, until an engine takes it over.
    lease_until: float | None = None


class StoredEvent(msgspec.Struct, frozen=True):
    """An event sent to a run through the storage: `data` is its JSON."""

    run_id: str
    seq: int
    name: str
    data: bytes


class RunRow(msgspec.Struct, frozen=True, kw_only=True):
    """A stored run: its header (`snapshot`), its journal (`entries`, the entry
    numbered ``i + 1`` at index ``i``) and its executor's lease. `_journal.fold` makes
    the two one snapshot. Rows of listings and claims of many runs have no entries."""

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
    workflow_version: str | None = None
    forked_from: str | None = None
    entries: tuple[bytes, ...] = ()
    #: The events stored for the run, oldest first (rows of `Storage.claim` only).
    events: tuple[StoredEvent, ...] = ()


class NewRun(NamedTuple):
    """A run to store, for `Storage.insert_many` (the arguments of `Storage.insert`)."""

    run_id: str
    workflow_id: str
    status: RunStatus
    snapshot: bytes
    now: float
    queued: bool = False
    workflow_version: str | None = None
    forked_from: str | None = None


class Claim(NamedTuple):
    """A claim, for `Storage.claim_many` (the arguments of `Storage.claim`)."""

    run_id: str
    owner: str
    statuses: tuple[str, ...]
    now: float
    lease_until: float
    workflow_version: str | None = None
    start: Write | None = None


class Write(NamedTuple):
    """One transition of a run, for `Storage.save_many`: its status, and the journal
    entries to append, numbered from `first_seq`."""

    run_id: str
    status: RunStatus
    entries: Sequence[bytes] = ()
    first_seq: int = 1
    release: bool = False


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as stored: its definition (for ``schedules list``), whether it is
    paused, and `handled_until`: its fire times at or before this wall-clock time have
    been dealt with (fired, skipped while paused, or passed over by its catch-up)."""

    schedule_id: str
    workflow_id: str
    cron: str
    timezone: str
    catch_up: str
    paused: bool
    handled_until: float
    updated_at: float


# The columns of the runs table of the SQL backends, in the order `row_from_sql` reads.
SQL_COLUMNS = (
    "run_id, workflow_id, status, snapshot, owner, lease_until, cancel_requested, "
    "created_at, updated_at, cancel_reason, queued, workflow_version, forked_from"
)
# A run's workflow and version as one value ("order.2"; "order." before versions existed):
# workflow ids never hold a '.', so the key is unambiguous. Filters on known versions
# compare it with `workflow_keys`.
WORKFLOW_KEY_SQL = "workflow_id || '.' || COALESCE(workflow_version, '')"


def workflow_key(workflow_id: str, version: str | None) -> str:
    return f"{workflow_id}.{version or ''}"


def workflow_filter(
    workflow_ids: list[str], versions: Mapping[str, Iterable[str]] | None
) -> tuple[str, list[str]]:
    """The SQL expression and the values a filter on known workflows compares (``IN``
    on SQLite, ``= ANY`` on PostgreSQL): the ids, or with `versions` the keys."""
    if versions is None:
        return "workflow_id", workflow_ids
    return f"({WORKFLOW_KEY_SQL})", workflow_keys(versions)


def workflow_keys(versions: Mapping[str, Iterable[str]]) -> list[str]:
    """The keys of runs on these versions of these workflows, and of each workflow's
    runs stored before versions existed (those take the version that loads them)."""
    keys = []
    for workflow_id, known in versions.items():
        keys.append(workflow_key(workflow_id, None))
        keys += [workflow_key(workflow_id, version) for version in known]
    return keys


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
        workflow_version=values[11],
        forked_from=values[12],
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
        workflow_version: str | None = None,
        forked_from: str | None = None,
    ) -> None:
        """Store a new run with `snapshot` as its header, of `workflow_version` of its
        workflow (forked from the run `forked_from`, if given); `ValueError` if the id is
        taken. A `queued` run (status ``'pending'``) waits for a worker to take it with
        `claim_queued`."""

    @abc.abstractmethod
    async def load(self, run_id: str) -> RunRow:
        """The stored run with its entries; `RunNotFoundError` if there is none."""

    @abc.abstractmethod
    async def save_many(self, writes: Sequence[Write], owner: str, now: float) -> list[bool]:
        """Apply the writes, in one transaction: each sets its run's status and appends
        its entries if `owner` still holds the run and it has not ended (dropping the
        lease when `release`). Per write, False if it lost (someone else ended or holds
        the run: nothing of it is written). An error fails the whole batch."""

    async def save(
        self,
        run_id: str,
        status: RunStatus,
        owner: str,
        now: float,
        *,
        release: bool,
        entries: Sequence[bytes] = (),
        first_seq: int = 1,
    ) -> bool:
        """`save_many` of one write."""
        write = Write(run_id, status, entries, first_seq, release)
        return (await self.save_many([write], owner, now))[0]

    @abc.abstractmethod
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
        """Take the run for `owner` if its status is in `statuses` and nobody holds a
        live lease on it; the row as taken (with its events, and its entries unless
        `start` is given), or None. A run stored before versions existed takes
        `workflow_version`. With `start`, the same transaction also applies that write
        (a run's start: its status and input)."""

    async def insert_many(self, runs: Sequence[NewRun]) -> list[bool]:
        """`insert` each run, in one transaction where the backend can; per run, False
        if its id was taken (nothing stored for it)."""
        stored = []
        for run in runs:
            try:
                await self.insert(
                    *run[:5],
                    queued=run.queued,
                    workflow_version=run.workflow_version,
                    forked_from=run.forked_from,
                )
            except ValueError:
                stored.append(False)
            else:
                stored.append(True)
        return stored

    async def claim_many(self, claims: Sequence[Claim]) -> list[RunRow | None]:
        """`claim` each, in one transaction where the backend can."""
        return [
            await self.claim(*claim[:5], workflow_version=claim.workflow_version, start=claim.start)
            for claim in claims
        ]

    @abc.abstractmethod
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
    async def recoverable(
        self,
        workflow_ids: list[str],
        now: float,
        limit: int,
        *,
        versions: Mapping[str, Iterable[str]] | None = None,
    ) -> list[str]:
        """Ids of executing runs of these workflows that nobody holds a live lease on;
        with `versions`, only runs on those versions (or stored before versions)."""

    @abc.abstractmethod
    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        """Ask for a run's cancellation. A run that no live executor holds is canceled
        here and now (its entry `_journal.canceled_idle` appended); one that executes
        elsewhere is flagged for its executor. The status after the request."""

    @abc.abstractmethod
    async def cancel_requests(self, owner: str) -> list[tuple[str, str | None]]:
        """(run id, reason) of the runs `owner` executes that were asked to cancel."""

    @abc.abstractmethod
    async def put_event(self, run_id: str, name: str, data: bytes, now: float) -> RunStatus:
        """Store an event for the run (`Run.send_event` from any process) unless the run
        has ended; the run's status either way. `RunNotFoundError` if there is none.
        Events are numbered in the order stored; the executor takes them in that order
        (`events_for`) and keeps the number of the last one it took in the run's
        snapshot, so none is lost or taken twice across a crash."""

    @abc.abstractmethod
    async def events_for(
        self, *, owner: str | None = None, run_id: str | None = None
    ) -> list[StoredEvent]:
        """The stored events of the runs `owner` holds (that have not ended), or of one
        run, oldest first."""

    @abc.abstractmethod
    async def delete(self, run_id: str) -> RunStatus:
        """Delete the run if it has ended; its status either way (a run that has not
        ended is left as it is). `RunNotFoundError` if there is none."""

    @abc.abstractmethod
    async def prune(self, ended_before: float, statuses: tuple[str, ...]) -> int:
        """Delete the runs in one of `statuses` (all ended ones) last changed before
        `ended_before`; how many."""

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
        version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[RunSummary]:
        """Stored runs, newest first, paged."""

    # --- schedules and queues (trioflow/_schedules.py, trioflow/_queues.py) -------------
    # Kept in tables of their own; of the runs table they read only status, owner and
    # lease. Backends that do not support them raise NotImplementedError.

    async def register_schedules(
        self, states: list[ScheduleState], now: float
    ) -> dict[str, ScheduleState]:
        """Store schedules an engine opens with: new ones as given, known ones with
        their definition updated but their paused flag and `handled_until` kept. The
        stored states, by schedule id."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    async def load_schedule(self, schedule_id: str) -> ScheduleState | None:
        """The stored schedule, or None if no engine has registered it."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    async def list_schedules(self) -> list[ScheduleState]:
        """Every stored schedule, by id."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, now: float
    ) -> ScheduleState | None:
        """Pause or resume a schedule (None if unknown). Resuming moves `handled_until`
        to `now`: the fire times passed while paused are not made up."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

    async def advance_schedule(self, schedule_id: str, until: float) -> None:
        """Record that the schedule's fire times up to `until` were dealt with (never
        moves `handled_until` back)."""
        raise NotImplementedError(f"{type(self).__name__} does not support schedules")

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
        """Store a new ``'pending'`` run waiting in `entry.queue`, in one transaction
        with the checks: None when stored; else the run already there, unchanged —
        the run with this id, or the queued or executing run of the queue with the
        same `entry.dedup_id`."""
        raise NotImplementedError(f"{type(self).__name__} does not support named queues")

    async def register_queues(self, queues: list[QueueLimits], now: float) -> None:
        """Store the queues' limits as an engine declares them (for ``queues list``
        and ``runs show``; claims use the limits the claimer passes)."""
        raise NotImplementedError(f"{type(self).__name__} does not support named queues")

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
        """Take for `owner` up to `limit` waiting runs of these workflows (on these
        `versions`, or stored before versions, when given) from
        `queues` (in that order), within each queue's limits counted from the stored
        state of every taker: in one transaction per queue, serialized with the
        other takers of that queue. Higher priority first, first in first out within
        a priority. The rows as taken."""
        raise NotImplementedError(f"{type(self).__name__} does not support named queues")

    async def queue_place(self, run_id: str, now: float) -> QueuePlace | None:
        """Where a queued run is (None for a run that was never queued)."""
        raise NotImplementedError(f"{type(self).__name__} does not support named queues")

    async def queue_stats(self, now: float) -> list[QueueStats]:
        """Every queue that has runs or stored limits: waiting and executing counts."""
        raise NotImplementedError(f"{type(self).__name__} does not support named queues")

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
