"""Runs kept in this process's memory: for tests and for engines that share runs within
one process. Nothing survives the process."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import trio

from .. import _snapshot
from .._errors import RunNotFoundError
from .._logs import STORED_LOGS, LogEntry, NewLog, with_drop_marker
from .._results import RunStatus
from ._base import TERMINAL_STATUSES, RunRow, RunSummary, Storage

_replace = msgspec.structs.replace


class MemoryStorage(Storage):
    """Runs in a dict. One instance may be shared by several engines of one process."""

    def __init__(self) -> None:
        self._rows: dict[str, RunRow] = {}
        self._version = 0
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
            )
        )

    async def load(self, run_id: str) -> RunRow:
        await trio.lowlevel.checkpoint()
        return self._get(run_id)

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
        await trio.lowlevel.checkpoint()
        row = self._get(run_id)
        if row.status in TERMINAL_STATUSES or row.owner != owner:
            return False
        self._put(
            _replace(
                row,
                status=status,
                snapshot=snapshot,
                updated_at=now,
                owner=None if release else owner,
                lease_until=None if release else row.lease_until,
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
    ) -> RunRow | None:
        await trio.lowlevel.checkpoint()
        row = self._get(run_id)
        held = row.owner is not None and row.lease_until is not None and row.lease_until >= now
        if row.status not in statuses or held:
            return None
        row = _replace(row, owner=owner, lease_until=lease_until)
        self._put(row)
        return row

    async def claim_queued(
        self,
        owner: str,
        workflow_ids: list[str],
        limit: int,
        now: float,
        lease_until: float,
    ) -> list[RunRow]:
        await trio.lowlevel.checkpoint()
        taken: list[RunRow] = []
        for row in list(self._rows.values()):  # insertion order: oldest first
            if len(taken) >= limit:
                break
            held = row.owner is not None and row.lease_until is not None and row.lease_until >= now
            if row.queued and row.status == "pending" and row.workflow_id in workflow_ids:
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

    async def recoverable(self, workflow_ids: list[str], now: float, limit: int) -> list[str]:
        await trio.lowlevel.checkpoint()
        found = [
            row.run_id
            for row in self._rows.values()
            if row.workflow_id in workflow_ids
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
        snapshot = _snapshot.cancel_idle(_snapshot.decode(run_id, row.snapshot), reason, now)
        self._put(
            _replace(
                row,
                status="canceled",
                snapshot=_snapshot.encode(snapshot),
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
    ) -> list[RunSummary]:
        await trio.lowlevel.checkpoint()
        rows = [
            row
            for row in self._rows.values()
            if (status is None or row.status == status)
            and (workflow_id is None or row.workflow_id == workflow_id)
        ]
        rows.sort(key=lambda row: row.created_at, reverse=True)
        return [
            RunSummary(
                run_id=row.run_id,
                workflow_id=row.workflow_id,
                status=row.status,
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
            for row in rows[offset : offset + limit]
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
