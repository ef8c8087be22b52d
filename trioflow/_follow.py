"""`Run.watch()` of a durable run that executes somewhere else: events read from storage.

A run that executes in this process emits its events as they happen. One that executes
in another process (or ended there) reaches this one only through its stored snapshot,
so its watch reads the stored run every ``poll_interval`` of Trio's clock and turns what
changed into the same events, into the same bounded buffer (`_events.Watcher`):

- first, every output event still stored (steps created with
  ``store_output_events=True``): what another process's watcher replays;
- then step transitions as they are stored (a step is stored when it ends, or when it
  begins to wait, so its start is shown with its first stored output or its end), the
  new stored outputs between a step's start and its end, and ``workflow-finish`` (after
  ``workflow-canceled`` for a canceled run) once the run ends or suspends.

Rejected: a background task per watch, which would need a nursery that ``watch()``
does not have; the reader's own task polls, only while it waits for an event.
"""

from __future__ import annotations

from typing import Any

import trio

from . import _events as ev
from . import _journal, _snapshot
from .storage import RunRow, Storage
from .storage._base import EXECUTING_STATUSES


class StoredEvents:
    """Turns successive stored snapshots of one run into watch events."""

    __slots__ = ("_interval", "_outputs_seen", "_run_id", "_steps", "_storage", "_watcher")

    def __init__(self, storage: Storage, run_id: str, interval: float, watcher: ev.Watcher):
        self._storage = storage
        self._run_id = run_id
        self._interval = interval
        self._watcher = watcher
        self._steps: dict[str, tuple[Any, ...]] = {}  # path -> the record's key as seen
        self._outputs_seen = -1  # the `seq` of the last stored output sent

    async def refill(self) -> None:
        """Wait one poll interval, then send what changed in the stored run."""
        await trio.sleep(self._interval)
        self.take(await self._storage.load(self._run_id), first=False)

    def take(self, row: RunRow, *, first: bool) -> None:
        """Send what changed since the last snapshot taken: per step, in the order
        steps are recorded, its start, its new outputs, its end. (Outputs of steps that
        ran side by side within one poll interval come grouped by step.)"""
        run_id = self._run_id
        snapshot = _journal.of_row(row)
        send = self._watcher.send_nowait
        outputs: dict[str, list[_snapshot.OutputRecord]] = {}
        for output in snapshot.outputs:
            if output.seq > self._outputs_seen:
                self._outputs_seen = output.seq
                outputs.setdefault(output.step_id, []).append(output)

        def send_outputs(path: str) -> None:
            for output in outputs.pop(path, ()):
                send(ev.WorkflowStepOutput(run_id=run_id, step_id=path, data=output.data))

        for path, record in snapshot.steps.items():
            key = (record.status, record.started_at, record.ended_at)
            seen = self._steps.get(path)
            self._steps[path] = key
            if first or seen == key:
                # Unchanged, or before the watch began (not replayed): outputs only.
                send_outputs(path)
                continue
            if record.status == "waiting":
                send(ev.WorkflowStepWaiting(run_id=run_id, step_id=path))
                send_outputs(path)
                continue
            if seen is None:
                send(ev.WorkflowStepStart(run_id=run_id, step_id=path, payload=record.payload))
            send_outputs(path)
            if record.status == "suspended":
                send(
                    ev.WorkflowStepSuspended(
                        run_id=run_id, step_id=path, payload=record.suspend_payload
                    )
                )
            elif record.status != "running":
                send(
                    ev.WorkflowStepResult(
                        run_id=run_id,
                        step_id=path,
                        status=record.status,
                        output=record.output,
                        error=None if record.error is None else record.error.message,
                    )
                )
        for path in list(outputs):  # steps not stored yet: their first output shows them
            if path not in self._steps:
                self._steps[path] = ("running", None, None)
                send(ev.WorkflowStepStart(run_id=run_id, step_id=path))
            send_outputs(path)
        if row.status in EXECUTING_STATUSES or row.status == "pending":
            return
        if row.status == "canceled":
            send(ev.WorkflowCanceled(run_id=run_id, reason=snapshot.cancel_reason))
        error = snapshot.error
        send(
            ev.WorkflowFinish(
                run_id=run_id,
                status=row.status,
                result=snapshot.result,
                error=None if error is None else error.message,
            )
        )
        self._watcher.close()
