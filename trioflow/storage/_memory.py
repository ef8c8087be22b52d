"""Runs kept in this process's memory: for tests and for engines that share runs within
one process. Nothing survives the process."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec
import trio

from .. import _journal
from .._errors import RunNotFoundError
from .._logs import STORED_LOGS, LogEntry, NewLog, with_drop_marker
from .._queues import (
    DEFAULT_QUEUE,
    Candidate,
    QueueEntry,
    QueueLimits,
    QueuePlace,
    QueueStats,
    pick,
)
from .._results import RunStatus
from ._base import (
    TERMINAL_STATUSES,
    RunRow,
    RunSummary,
    ScheduleState,
    Storage,
    StoredEvent,
    Write,
    workflow_key,
    workflow_keys,
)

_replace = msgspec.structs.replace


class MemoryStorage(Storage):
    """Runs in a dict. One instance may be shared by several engines of one process."""

    def __init__(self) -> None:
        self._rows: dict[str, RunRow] = {}  # without their entries: those are in _entries
        self._entries: dict[str, list[bytes]] = {}
        # Events sent through the storage (`put_event`), numbered from 1.
        self._events: list[StoredEvent] = []
        self._version = 0
        self._schedules: dict[str, ScheduleState] = {}
        self._queues: dict[str, QueueLimits] = {}
        # run id -> its queue entry, in the order enqueued (the same rules as the SQL
        # backends' trioflow_queued: see _queue_sql.claim_from_queue).
        self._queued: dict[str, _Queued] = {}
        # run id -> its stored log records (the last STORED_LOGS), and trace contexts.
        self._logs: dict[str, list[LogEntry]] = {}
        self._traces: dict[str, dict[str, str]] = {}

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    def _get(self, run_id: str) -> RunRow:
        try:
            return self._rows[run_id]
        except KeyError:
            raise RunNotFoundError(run_id) from None

    def _put(self, row: RunRow) -> None:
        self._rows[row.run_id] = row
        self._version += 1

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
        await trio.lowlevel.checkpoint()
        if run_id in self._rows:
            raise ValueError(f"a run with id {run_id!r} is already stored; pick another run_id")
        self._put(
            RunRow(
                run_id=run_id,
                workflow_id=workflow_id,
                status=status,
                snapshot=snapshot,
                owner=None,
                lease_until=None,
                cancel_requested=False,
                created_at=now,
                updated_at=now,
                queued=queued,
                workflow_version=workflow_version,
                forked_from=forked_from,
            )
        )

    def _with_entries(self, row: RunRow) -> RunRow:
        return _replace(row, entries=tuple(self._entries.get(row.run_id, ())))

    async def load(self, run_id: str) -> RunRow:
        await trio.lowlevel.checkpoint()
        return self._with_entries(self._get(run_id))

    async def save_many(self, writes: Sequence[Write], owner: str, now: float) -> list[bool]:
        await trio.lowlevel.checkpoint()
        return [self._apply(write, owner, now) for write in writes]

    def _apply(self, write: Write, owner: str, now: float) -> bool:
        row = self._get(write.run_id)
        if row.status in TERMINAL_STATUSES or row.owner != owner:
            return False
        journal = self._entries.setdefault(write.run_id, [])
        if len(journal) + 1 != write.first_seq and write.entries:
            raise ValueError(f"run {write.run_id!r}: entry {write.first_seq} is stored already")
        journal.extend(write.entries)
        self._put(
            _replace(
                row,
                status=write.status,
                updated_at=now,
                owner=None if write.release else owner,
                lease_until=None if write.release else row.lease_until,
            )
        )
        return True

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
        await trio.lowlevel.checkpoint()
        row = self._get(run_id)
        held = row.owner is not None and row.lease_until is not None and row.lease_until >= now
        if row.status not in statuses or held:
            return None
        version = row.workflow_version or workflow_version
        row = _replace(row, owner=owner, lease_until=lease_until, workflow_version=version)
        self._put(row)
        events = tuple(event for event in self._events if event.run_id == run_id)
        if start is None:
            return _replace(self._with_entries(row), events=events)
        self._apply(start, owner, now)
        # As the SQL backends answer: the row with its start's status, without entries.
        return _replace(self._get(run_id), events=events)

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
        await trio.lowlevel.checkpoint()
        known = _known(workflow_ids, versions)
        taken: list[RunRow] = []
        for row in list(self._rows.values()):  # insertion order: oldest first
            if len(taken) >= limit:
                break
            held = row.owner is not None and row.lease_until is not None and row.lease_until >= now
            if row.queued and row.status == "pending" and known(row):
                if not held:
                    row = _replace(row, owner=owner, lease_until=lease_until)
                    self._put(row)
                    taken.append(row)
        return taken

    async def renew(self, owner: str, run_ids: list[str], lease_until: float) -> None:
        await trio.lowlevel.checkpoint()
        for run_id in run_ids:
            row = self._rows.get(run_id)
            if row is not None and row.owner == owner:
                self._rows[run_id] = _replace(row, lease_until=lease_until)

    async def release(self, owner: str) -> None:
        await trio.lowlevel.checkpoint()
        for row in list(self._rows.values()):
            if row.owner == owner:
                self._put(_replace(row, owner=None, lease_until=None))

    async def recoverable(
        self,
        workflow_ids: list[str],
        now: float,
        limit: int,
        *,
        versions: Mapping[str, Iterable[str]] | None = None,
    ) -> list[str]:
        await trio.lowlevel.checkpoint()
        known = _known(workflow_ids, versions)
        found = [
            row.run_id
            for row in self._rows.values()
            if known(row)
            and row.status in ("running", "waiting")
            and (row.owner is None or row.lease_until is None or row.lease_until < now)
        ]
        return found[:limit]

    async def request_cancel(self, run_id: str, reason: str | None, now: float) -> RunStatus:
        await trio.lowlevel.checkpoint()
        row = self._get(run_id)
        if row.status in TERMINAL_STATUSES:
            return row.status
        held = row.owner is not None and row.lease_until is not None and row.lease_until >= now
        if held:
            self._put(_replace(row, cancel_requested=True, cancel_reason=reason))
            return row.status
        self._entries.setdefault(run_id, []).append(_journal.canceled_idle(reason, now))
        self._put(
            _replace(
                row,
                status="canceled",
                cancel_requested=True,
                cancel_reason=reason,
                owner=None,
                lease_until=None,
                updated_at=now,
            )
        )
        return "canceled"

    async def cancel_requests(self, owner: str) -> list[tuple[str, str | None]]:
        await trio.lowlevel.checkpoint()
        return [
            (row.run_id, row.cancel_reason)
            for row in self._rows.values()
            if row.owner == owner and row.cancel_requested and row.status not in TERMINAL_STATUSES
        ]

    async def put_event(self, run_id: str, name: str, data: bytes, now: float) -> RunStatus:
        await trio.lowlevel.checkpoint()
        row = self._get(run_id)
        if row.status not in TERMINAL_STATUSES:
            self._events.append(StoredEvent(run_id, len(self._events) + 1, name, data))
            self._version += 1
        return row.status

    async def events_for(
        self, *, owner: str | None = None, run_id: str | None = None
    ) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        found = []
        for event in self._events:
            row = self._rows.get(event.run_id)
            if row is None or row.status in TERMINAL_STATUSES:
                continue
            if (owner is None or row.owner == owner) and (run_id in (None, event.run_id)):
                found.append(event)
        return found

    async def delete(self, run_id: str) -> RunStatus:
        await trio.lowlevel.checkpoint()
        row = self._get(run_id)
        if row.status in TERMINAL_STATUSES:
            self._forget(run_id)
            self._version += 1
        return row.status

    def _forget(self, run_id: str) -> None:
        """Drop an ended run with what is kept beside it: its journal, queue entry, logs,
        trace."""
        del self._rows[run_id]
        for beside in (self._entries, self._queued, self._logs, self._traces):
            beside.pop(run_id, None)

    async def prune(self, ended_before: float, statuses: tuple[str, ...]) -> int:
        await trio.lowlevel.checkpoint()
        doomed = [
            row.run_id
            for row in self._rows.values()
            if row.status in statuses
            and row.status in TERMINAL_STATUSES
            and row.updated_at < ended_before
        ]
        for run_id in doomed:
            self._forget(run_id)
        self._version += 1
        return len(doomed)

    async def data_version(self) -> int:
        await trio.lowlevel.checkpoint()
        return self._version

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
        await trio.lowlevel.checkpoint()
        rows = [
            row
            for row in self._rows.values()
            if (status is None or row.status == status)
            and (workflow_id is None or row.workflow_id == workflow_id)
            and (version is None or row.workflow_version == version)
            and (since is None or row.created_at >= since)
            and (until is None or row.created_at < until)
        ]
        rows.sort(key=lambda row: row.created_at, reverse=True)
        return [
            RunSummary(
                run_id=row.run_id,
                workflow_id=row.workflow_id,
                status=row.status,
                created_at=row.created_at,
                updated_at=row.updated_at,
                version=row.workflow_version,
                forked_from=row.forked_from,
                lease_until=row.lease_until,
            )
            for row in rows[offset : offset + limit]
        ]

    # --- schedules and queues -------------------------------------------------------------

    async def register_schedules(
        self, states: list[ScheduleState], now: float
    ) -> dict[str, ScheduleState]:
        await trio.lowlevel.checkpoint()
        for state in states:
            old = self._schedules.get(state.schedule_id)
            if old is not None:
                state = _replace(
                    state, paused=old.paused, handled_until=old.handled_until, updated_at=now
                )
            self._schedules[state.schedule_id] = state
        return {state.schedule_id: self._schedules[state.schedule_id] for state in states}

    async def load_schedule(self, schedule_id: str) -> ScheduleState | None:
        await trio.lowlevel.checkpoint()
        return self._schedules.get(schedule_id)

    async def list_schedules(self) -> list[ScheduleState]:
        await trio.lowlevel.checkpoint()
        return [self._schedules[key] for key in sorted(self._schedules)]

    async def set_schedule_paused(
        self, schedule_id: str, paused: bool, now: float
    ) -> ScheduleState | None:
        await trio.lowlevel.checkpoint()
        old = self._schedules.get(schedule_id)
        if old is None:
            return None
        until = old.handled_until if paused else max(old.handled_until, now)
        new = _replace(old, paused=paused, handled_until=until, updated_at=now)
        self._schedules[schedule_id] = new
        return new

    async def advance_schedule(self, schedule_id: str, until: float) -> None:
        await trio.lowlevel.checkpoint()
        old = self._schedules.get(schedule_id)
        if old is not None and old.handled_until < until:
            self._schedules[schedule_id] = _replace(old, handled_until=until)

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
        await trio.lowlevel.checkpoint()
        if run_id in self._rows:
            return self._rows[run_id]
        if entry.dedup_id is not None:
            for queued in self._queued.values():
                row = self._rows.get(queued.run_id)
                if (
                    row is not None
                    and queued.entry.queue == entry.queue
                    and queued.entry.dedup_id == entry.dedup_id
                    and row.status in ("pending", "running", "waiting")
                ):
                    return row
        self._put(
            RunRow(
                run_id=run_id,
                workflow_id=workflow_id,
                status="pending",
                snapshot=snapshot,
                owner=None,
                lease_until=None,
                cancel_requested=False,
                created_at=now,
                updated_at=now,
                queued=True,
                workflow_version=workflow_version,
                forked_from=forked_from,
            )
        )
        self._queued[run_id] = _Queued(run_id, entry, len(self._queued))
        return None

    async def register_queues(self, queues: list[QueueLimits], now: float) -> None:
        await trio.lowlevel.checkpoint()
        for limits in queues:
            self._queues[limits.name] = limits

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
        await trio.lowlevel.checkpoint()
        known = _known(workflow_ids, versions)
        taken: list[RunRow] = []
        for limits in queues:
            room = limit - len(taken)
            if room <= 0:
                break
            entries = [e for e in self._queued.values() if e.entry.queue == limits.name]
            active_keys: list[str | None] = []
            for queued in entries:
                if queued.state == "active":
                    row = self._rows[queued.run_id]
                    held = row.owner is not None and (row.lease_until or 0) >= now
                    if row.status in ("running", "waiting") or (row.status == "pending" and held):
                        active_keys.append(queued.entry.key)
                    else:
                        queued.state = "waiting" if row.status == "pending" else "done"
            started = 0
            if limits.rate_per is not None:
                started = sum(1 for e in entries if (e.started_at or -1) > now - limits.rate_per)
            candidates = []
            for queued in sorted(entries, key=lambda e: (-e.entry.priority, e.seq)):
                if queued.state != "waiting":
                    continue
                row = self._rows[queued.run_id]
                held = row.owner is not None and (row.lease_until or 0) >= now
                if row.status != "pending":
                    queued.state = "done"
                elif known(row) and not held:
                    candidates.append(Candidate(queued.run_id, queued.entry.key))
            for run_id in pick(
                limits, candidates, active_keys=active_keys, started_in_window=started, room=room
            ):
                row = _replace(self._rows[run_id], owner=owner, lease_until=lease_until)
                self._put(row)
                self._queued[run_id].state = "active"
                self._queued[run_id].started_at = now
                taken.append(row)
        return taken

    async def queue_place(self, run_id: str, now: float) -> QueuePlace | None:
        await trio.lowlevel.checkpoint()
        queued = self._queued.get(run_id)
        if queued is None:
            return None
        entry = queued.entry
        state = queued.state
        if self._rows[run_id].status in (*TERMINAL_STATUSES, "suspended"):
            state = "done"
        position = None
        if state == "waiting":
            position = 1 + sum(
                1
                for other in self._queued.values()
                if other.entry.queue == entry.queue
                and other.state == "waiting"
                and (-other.entry.priority, other.seq) < (-entry.priority, queued.seq)
            )
        return QueuePlace(
            queue=entry.queue,
            priority=entry.priority,
            key=entry.key,
            dedup_id=entry.dedup_id,
            state=state,
            position=position,
            limits=self._queues.get(entry.queue),
        )

    async def queue_stats(self, now: float) -> list[QueueStats]:
        await trio.lowlevel.checkpoint()
        counts: dict[str, list[int]] = {}
        for queued in self._queued.values():
            row = self._rows[queued.run_id]
            if row.status not in ("pending", "running", "waiting"):
                continue
            held = row.owner is not None and (row.lease_until or 0) >= now
            taken = row.status != "pending" or held
            counts.setdefault(queued.entry.queue, [0, 0])[1 if taken else 0] += 1
        names = sorted(set(counts) | set(self._queues) | {DEFAULT_QUEUE})
        return [
            QueueStats(
                name=name,
                waiting=counts.get(name, [0, 0])[0],
                executing=counts.get(name, [0, 0])[1],
                limits=self._queues.get(name),
            )
            for name in names
        ]

    async def append_logs(self, run_id: str, logs: Sequence[NewLog], *, skipped: int = 0) -> None:
        await trio.lowlevel.checkpoint()
        stored = self._logs.setdefault(run_id, [])
        seq = (stored[-1].seq + 1 if stored else 0) + skipped
        stored.extend(LogEntry(seq=seq + i, **log._asdict()) for i, log in enumerate(logs))
        if len(stored) > STORED_LOGS:
            del stored[: len(stored) - STORED_LOGS]

    async def read_logs(self, run_id: str, *, after: int = -1) -> list[LogEntry]:
        await trio.lowlevel.checkpoint()
        entries = [entry for entry in self._logs.get(run_id, ()) if entry.seq > after]
        return with_drop_marker(entries, after)

    async def store_trace_context(self, run_id: str, carrier: dict[str, str]) -> None:
        await trio.lowlevel.checkpoint()
        self._traces.setdefault(run_id, dict(carrier))

    async def load_trace_context(self, run_id: str) -> dict[str, str] | None:
        await trio.lowlevel.checkpoint()
        carrier = self._traces.get(run_id)
        return None if carrier is None else dict(carrier)


class _Queued:
    """A queued run's entry: `state` is 'waiting', 'active' (taken) or 'done'."""

    __slots__ = ("entry", "run_id", "seq", "started_at", "state")

    def __init__(self, run_id: str, entry: QueueEntry, seq: int) -> None:
        self.run_id = run_id
        self.entry = entry
        self.seq = seq
        self.state = "waiting"
        self.started_at: float | None = None


def _known(
    workflow_ids: list[str], versions: Mapping[str, Iterable[str]] | None
) -> Callable[[RunRow], bool]:
    """Whether a row is a run of these workflows (on these versions, if given)."""
    if versions is None:
        return lambda row: row.workflow_id in workflow_ids
    keys = set(workflow_keys(versions))
    return lambda row: workflow_key(row.workflow_id, row.workflow_version) in keys
