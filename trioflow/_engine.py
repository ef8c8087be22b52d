"""The engine: durable runs in a storage, executed in the caller's nursery.

An engine owns a nursery (the caller opens it with ``async with open_engine(...)``) in
which it executes runs started with `Run.start_soon` and runs it recovers, and one
maintenance task that renews the leases of the runs it executes, takes over runs whose
lease expired, and notices cancel requests written by other processes.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from . import _journal, _queues, _schedules, _snapshot
from ._clock import wall_time
from ._commits import GroupCommit
from ._errors import RunStateError, StorageError, UnstorableDataError, WorkflowVersionError
from ._queues import Queue, QueueEntry, QueueLimits, QueuePlace, check_queues
from ._results import RunStatus
from ._run import Run, _initial_state
from ._schedules import Schedule, check_schedules, serve_schedules
from ._schema import convert
from ._util import random_run_id
from .storage import Claim, NewRun, RunRow, RunSummary, ScheduleState, Storage, Write

if TYPE_CHECKING:
    from ._logs import PendingLogs
    from ._step import Step
    from ._workflow import Workflow

logger = logging.getLogger("trioflow")

RECOVER_BATCH = 100
# A run whose execution breaks down the same way this many times in a row (here, or
# after each recovery) is recorded 'failed' instead of being retried for ever.
FAULTS_BEFORE_FAILING = 3
# How often `cancel()` tries to store a run's 'canceled' before it gives up.
STORE_CANCELED_ATTEMPTS = 3
# Every how many wall-clock seconds an engine writes what its running steps have logged.
LOG_FLUSH_INTERVAL = 0.5


class Engine:
    """Durable runs of `workflows` in `storage`. Get one from `open_engine`."""

    def __init__(
        self,
        storage: Storage,
        workflows: Iterable[Workflow],
        nursery: trio.Nursery,
        *,
        lease_seconds: float,
        poll_interval: float,
        workers: int = 0,
        queues: Iterable[Queue] = (),
        schedules: Iterable[Schedule] = (),
        serve_queues: Iterable[str] | None = None,
    ) -> None:
        self.storage = storage
        # id -> version -> definition; id -> the last version given (what create_run(id)
        # takes).
        self._versions = index_versions(workflows)
        self.workflows = {id: list(known.values())[-1] for id, known in self._versions.items()}
        self.owner_id = uuid.uuid4().hex
        # Group commit (trioflow/_commits.py) of runs' creations, starts and writes; the
        # storage's methods looked up at each call (a test may wrap them meanwhile).
        self._inserts: GroupCommit[NewRun, bool] = GroupCommit(
            lambda runs: self.storage.insert_many(runs)
        )
        self._claims: GroupCommit[Claim, RunRow | None] = GroupCommit(
            lambda claims: self.storage.claim_many(claims)
        )
        self._writes: GroupCommit[Write, bool] = GroupCommit(
            lambda writes: self.storage.save_many(writes, self.owner_id, wall_time())
        )
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._nursery = nursery
        self._live: dict[str, Run] = {}
        self._live_changed = trio.Event()
        self._closing = False
        self.workers = workers  # > 0: take queued runs, at most this many executing at once
        # Cancel requests seen for runs this engine holds but had not made live yet.
        self._early_cancels: dict[str, str | None] = {}
        self._slot_freed = trio.Event()
        # run id -> (what went wrong, how many times in a row): see `_contain`.
        self._faults: dict[str, tuple[str, int]] = {}
        # Runs whose stored snapshot cannot be read: logged once, then left alone.
        self._unreadable: set[str] = set()
        # Runs stored before versions existed, told once that they take the latest version.
        self._adopted: set[str] = set()
        # --- schedules and queues (trioflow/_schedules.py, trioflow/_queues.py) ---
        self.queues: dict[str, Queue] = check_queues(queues)
        self.schedules: dict[str, Schedule] = check_schedules(schedules)
        for schedule in self.schedules.values():
            self._workflow(schedule.workflow)  # a LookupError naming the known ones
        # The queues this engine takes runs from when it is a worker, in the order it
        # looks at them (rotated at each claim, so no queue starves another).
        self._served: list[QueueLimits] = _queues.served(self.queues, serve_queues)

    def __repr__(self) -> str:
        return f"<trioflow.Engine on {self.storage!r}: {len(self._live)} executing>"

    # --- public API -------------------------------------------------------------------

    async def create_run(
        self, workflow: str | Workflow, run_id: str | None = None, *, version: str | None = None
    ) -> Run:
        """A new durable run of `workflow` (an id or a workflow given to the engine),
        stored ``'pending'``: on `version` of it, or the last version given to the
        engine (a workflow object: its own version).

        Idempotent: with the `run_id` of a run that is stored already, of the same
        workflow, that run is returned (it never executes twice); of another workflow,
        `ValueError` naming both."""
        run = Run(self._workflow(workflow, version), run_id)
        run._engine = self
        run._track()
        snapshot = _snapshot.encode(run._to_snapshot())
        new = NewRun(
            run.run_id, run.workflow.id, "pending", snapshot, wall_time(),
            workflow_version=run.workflow.version,
        )  # fmt: skip
        stored = await self._inserts(new)  # not cancellable: stored or not, we know which
        if not stored:
            if run_id is None:  # a fresh UUID4 collided: not a run the caller asked for again
                raise ValueError(f"a run with id {run.run_id!r} is already stored")
            found = await self.storage.load(run_id)
            if found.workflow_id != run.workflow.id:
                raise ValueError(
                    f"run {run_id!r} is stored already, of workflow {found.workflow_id!r}, "
                    f"not {run.workflow.id!r}; pick another run_id"
                ) from None
            return await self.get_run(run_id)
        return run

    async def enqueue(
        self,
        workflow: str | Workflow,
        input_data: Any = None,
        *,
        queue: str | None = None,
        priority: int = 0,
        key: str | None = None,
        dedup_id: str | None = None,
        run_id: str | None = None,
        initial_state: Any = None,
        version: str | None = None,
    ) -> Run:
        """A new durable run of `workflow` with its input, stored ``'pending'`` and
        queued in one write: an engine opened with ``workers=N`` (any process sharing
        the storage) that serves `queue` and knows its version takes it and executes
        it. Wait for it with ``run.result()``, cancel it with ``run.cancel()``.

        `queue` names a queue given to ``open_engine(queues=[...])`` (default: the
        default queue, which has no limits); runs of higher `priority` start first,
        first in first out within a priority; `key` is what the queue's
        ``per_key_concurrency`` counts. While a run of the queue with the same
        `dedup_id` is queued or executing, that run is returned instead of a new one;
        so is the run with id `run_id` if it is stored already (of the same workflow:
        else `ValueError`)."""
        entry = _queues.entry(self.queues, queue, priority, key, dedup_id)
        run, _ = await self._enqueue(workflow, input_data, entry, run_id, initial_state, version)
        return run

    async def _enqueue(
        self,
        workflow: str | Workflow,
        input_data: Any,
        entry: QueueEntry,
        run_id: str | None,
        initial_state: Any = None,
        version: str | None = None,
    ) -> tuple[Run, bool]:
        """`enqueue`, and whether the run is new (False: an existing one returned)."""
        run = Run(self._workflow(workflow, version), run_id)
        run._engine = self
        convert(input_data, run.workflow.input_schema, step_id=None, what="input")
        run._state.set_input(input_data)
        if initial_state is not None or run.workflow.state_schema is not None:
            run._state.set_state("", _initial_state(run.workflow, initial_state))
        snapshot = _snapshot.encode(run._to_snapshot())
        found = await self.storage.insert_queued(
            run.run_id,
            run.workflow.id,
            snapshot,
            wall_time(),
            entry,
            workflow_version=run.workflow.version,
        )
        if found is None:
            run._track()
            return run, True
        if found.workflow_id != run.workflow.id:
            raise ValueError(
                f"run {found.run_id!r} is stored already, of workflow {found.workflow_id!r}, "
                f"not {run.workflow.id!r}; pick another run_id"
            )
        live = self._live.get(found.run_id)
        return (live if live is not None else self._rebuild(found)), False

    async def queue_place(self, run_id: str) -> QueuePlace | None:
        """Where a queued run is: its queue, priority, key, state and (while it waits)
        its position, 1 for the next to start; None for a run that was never queued."""
        return await self.storage.queue_place(run_id, wall_time())

    # --- schedules (trioflow/_schedules.py): pausing one never cancels a run ----------

    async def pause_schedule(self, schedule_id: str) -> ScheduleState:
        """Stop the schedule's fires, in every engine sharing the storage, until
        `resume_schedule`. Runs it already started go on: cancel those with
        ``run.cancel()``. `LookupError` for a schedule no engine registered."""
        return await _schedules.set_paused(self, schedule_id, True)

    async def resume_schedule(self, schedule_id: str) -> ScheduleState:
        """Let a paused schedule fire again, from its next fire time (the fire times
        passed while it was paused are not made up)."""
        return await _schedules.set_paused(self, schedule_id, False)

    async def trigger_schedule(self, schedule_id: str) -> Run:
        """Fire the schedule now (also while paused): a run with id
        ``"<id>@<now, ISO 8601 UTC>"``, as a fire at this time would make."""
        return await _schedules.trigger(self, schedule_id)

    async def get_run(self, run_id: str) -> Run:
        """The run with this id, as stored (the live object if this engine executes it).
        Raises `RunNotFoundError` for an unknown id."""
        live = self._live.get(run_id)
        if live is not None:
            await trio.lowlevel.checkpoint()
            return live
        row = await self.storage.load(run_id)
        return self._rebuild(row)

    async def list_runs(
        self,
        *,
        status: str | None = None,
        workflow_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
        version: str | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> list[RunSummary]:
        """Summaries of the stored runs, newest first: `limit` of them after `offset`
        (each names the workflow version it executes on); `since` and `until`
        (timezone-aware datetimes) bound when they were created, `until` excluded."""
        bounds = [_timestamp(name, value) for name, value in (("since", since), ("until", until))]
        return await self.storage.list_runs(
            status=status,
            workflow_id=workflow_id,
            limit=limit,
            offset=offset,
            version=version,
            since=bounds[0],
            until=bounds[1],
        )

    async def fork_run(
        self,
        run_id: str,
        from_step: str | list[str] | Step[Any, Any] | Workflow,
        *,
        new_run_id: str | None = None,
    ) -> Run:
        """A new ``'pending'`` run of the same workflow version and input as `run_id`
        that keeps the original's records of the steps that ended before `from_step`
        (an id, a path list, or the step) started, and runs `from_step` and everything
        after it again; start it with ``start()`` or ``start_soon()`` (no input: it has
        the original's). The original is not changed. Works on finished, canceled and
        suspended runs; the new run's summary names the original (``forked_from``)."""
        row = await self.storage.load(run_id)
        if row.status not in _snapshot.FORKABLE:
            raise RunStateError(
                run_id,
                row.status,
                f"run {run_id!r} is {row.status!r}; fork a run that ended or is suspended "
                "(cancel it first to fork it now)",
            )
        source = self._rebuild(row)
        self._check_version(source)
        if isinstance(from_step, list | tuple):
            path = ".".join(from_step)
        else:
            path = from_step if isinstance(from_step, str) else from_step.id
        new_id = new_run_id if new_run_id is not None else random_run_id()
        forked = _snapshot.fork(_journal.of_row(row), new_id, path)
        await self.storage.insert(
            new_id,
            row.workflow_id,
            "pending",
            _snapshot.encode(forked),
            wall_time(),
            workflow_version=source.workflow.version,
            forked_from=run_id,
        )
        return await self.get_run(new_id)

    async def retry_run(self, run_id: str, *, new_run_id: str | None = None) -> Run:
        """`fork_run` from the run's first failed or canceled step (the step itself, not
        the nested workflow around it): what succeeded before it is kept."""
        row = await self.storage.load(run_id)
        step = _snapshot.first_to_retry(_journal.of_row(row))
        return await self.fork_run(run_id, step, new_run_id=new_run_id)

    async def delete_run(self, run_id: str) -> None:
        """Delete a finished run (``'success'``, ``'failed'`` or ``'canceled'``) from the
        storage. `RunStateError` for a run that has not ended (cancel it first),
        `RunNotFoundError` for an unknown id."""
        status = await self.storage.delete(run_id)
        if status not in ("success", "failed", "canceled"):
            raise RunStateError(
                run_id,
                status,
                f"run {run_id!r} is {status!r}; only a finished run can be deleted "
                "(cancel it first, then delete it)",
            )

    async def prune_runs(self, older_than: dt.timedelta, status: str | None = None) -> int:
        """Delete the finished runs (of `status`, or every finished status) that ended
        more than `older_than` ago; how many."""
        seconds = _retention_seconds("older_than", older_than)
        if status is not None and status not in ("success", "failed", "canceled"):
            raise ValueError(
                f"status must be 'success', 'failed' or 'canceled', got {status!r}: "
                "only finished runs are pruned"
            )
        statuses = ("success", "failed", "canceled") if status is None else (status,)
        return await self.storage.prune(wall_time() - seconds, statuses)

    async def _prune_forever(self, retention: dt.timedelta) -> None:
        """Prune finished runs older than `retention`, every tenth of it (at most every
        hour, at least every poll interval); a storage error waits for the next round."""
        every = min(max(retention.total_seconds() / 10, self.poll_interval), 3600.0)
        while True:
            try:
                pruned = await self.prune_runs(retention)
            except StorageError as exc:
                logger.warning("pruning finished runs failed, retrying: %s", exc)
            else:
                if pruned:
                    logger.info("pruned %d finished runs older than %s", pruned, retention)
            await trio.sleep(every)

    # --- what runs ask of their engine --------------------------------------------------

    def _workflow(self, workflow: str | Workflow, version: str | None = None) -> Workflow:
        """The definition of `version` of `workflow` (default: a workflow object's own
        version, else the last version given to the engine)."""
        workflow_id = workflow if isinstance(workflow, str) else workflow.id
        known = self._versions.get(workflow_id)
        if known is None:
            raise LookupError(
                f"this engine does not know workflow {workflow_id!r}; "
                f"pass it in open_engine(workflows=[...]) (known: {sorted(self.workflows)})"
            )
        if version is None and not isinstance(workflow, str):
            version = workflow.version
        if version is None:
            return self.workflows[workflow_id]
        try:
            return known[version]
        except KeyError:
            raise WorkflowVersionError(workflow_id, version, list(known)) from None

    def _known_versions(self) -> dict[str, list[str]]:
        return {workflow_id: list(known) for workflow_id, known in self._versions.items()}

    def _rebuild(self, row: RunRow) -> Run:
        """The run of a stored row, as a handle of this engine, on the definition of the
        version it stored. A run on a version this engine does not know can be looked at
        and canceled here, never executed (`Run._unknown_version`)."""
        known = self._versions.get(row.workflow_id, {})
        version = row.workflow_version
        definition = known.get(version) if version is not None else None
        if definition is None:
            definition = self._workflow(row.workflow_id)  # the latest: to read the records
            if version is None and row.run_id not in self._adopted:
                self._adopted.add(row.run_id)
                logger.warning(
                    "run %s was stored before workflow versions; it takes version %r of %s",
                    row.run_id,
                    definition.version,
                    row.workflow_id,
                )
        run = Run._from_row(definition, row, self)
        if version is not None and version not in known:
            run._unknown_version = version
        return run

    def _check_version(self, run: Run) -> None:
        """Raise `WorkflowVersionError` if `run` is on a version this engine cannot run."""
        if run._unknown_version is not None:
            known = list(self._versions.get(run.workflow.id, {}))
            raise WorkflowVersionError(
                run.workflow.id, run._unknown_version, known, run_id=run.run_id
            )

    async def _claim(self, run: Run, statuses: tuple[str, ...]) -> bool:
        """Take `run` for this engine if it is in one of `statuses` and nobody else
        executes it; on success the run's state is refreshed from storage."""
        now = wall_time()
        row = await self.storage.claim(
            run.run_id,
            self.owner_id,
            statuses,
            now,
            now + self.lease_seconds,
            workflow_version=run.workflow.version,
        )
        if row is None:
            return False
        run._load_row(row)
        self._add_live(run)
        run._take_stored_events(row.events)
        return True

    async def _claim_start(self, run: Run) -> bool:
        """Take the pending `run` for this engine and store its start ('running', its
        input and initial state) in the same transaction; False if it was not pending
        and free (the handle is then stale: the caller loads the run)."""
        journal = run._state.journal
        assert journal is not None
        run._status = "running"  # as the start stores it; `_execute` sets it again
        try:
            entries = journal.take(run)
        except UnstorableDataError:  # `_execute`'s first write fails the run
            return await self._claim(run, ("pending",))
        finally:
            run._status = "pending"
        now = wall_time()
        start = Write(run.run_id, "running", entries, journal.seq + 1)
        claim = Claim(
            run.run_id, self.owner_id, ("pending",), now, now + self.lease_seconds,
            run.workflow.version, start,
        )  # fmt: skip
        try:
            row = await self._claims(claim)  # not cancellable
        except BaseException:
            journal.not_stored(run)
            raise
        if row is None:
            journal.not_stored(run)
            return False
        journal.stored(len(entries))
        run._stored_status = "running"
        self._add_live(run)
        run._take_stored_events(row.events)
        return True

    def _add_live(self, run: Run) -> None:
        self._live[run.run_id] = run
        self._live_changed.set()
        if run.run_id in self._early_cancels:  # asked before it became live here
            run._request_cancel(self._early_cancels.pop(run.run_id), cancel_scope=True)

    def _drop_live(self, run: Run) -> None:
        if self._live.get(run.run_id) is run:
            del self._live[run.run_id]
            self._live_changed.set()

    def _start_soon(self, run: Run) -> None:
        self._nursery.start_soon(self._drive, run, name=f"trioflow run {run.run_id}")

    async def _drive(self, run: Run) -> None:
        """Execute `run`: the containment boundary of one run. Whatever escapes its
        execution (an exception group from its nursery included) is that run's fault,
        never the engine's: the other runs and the engine go on."""
        again = True
        while again:
            again = False
            try:
                await run._execute()
            except Exception as exc:
                again = await self._contain(run, exc)
            except BaseExceptionGroup as group:  # errors mixed with our own cancellation
                errors, rest = group.split(Exception)
                if errors is not None:
                    await self._contain(run, errors)
                if rest is not None:
                    raise rest from None
            else:
                self._faults.pop(run.run_id, None)
            finally:
                self._drop_live(run)
            if again:
                # Started here and nothing of it stored yet (its first write failed):
                # no other engine can recover it, so this one tries again.
                await trio.sleep(_backoff(self.poll_interval, 1, self.lease_seconds / 3))
                self._add_live(run)

    async def _contain(self, run: Run, exc: Exception) -> bool:
        """A run's execution broke down (storage unreachable, a bug): park it, as last
        stored, for recovery (here or elsewhere) once its lease expires; the third time
        in a row it breaks down the same way, record it 'failed' with the error. True
        when this engine must execute it again itself (nothing of it is stored)."""
        error = _first_leaf(exc)
        what = f"{type(error).__qualname__}: {error}"
        previous, count = self._faults.get(run.run_id, ("", 0))
        count = count + 1 if previous == what else 1
        self._faults[run.run_id] = (what, count)
        if count < FAULTS_BEFORE_FAILING:
            logger.error(
                "run %s stopped (%s); it stays as last stored and will be recovered",
                run.run_id,
                what,
                exc_info=exc,
            )
            return run._stored_status == "pending" and not run.cancel_requested
        logger.error(
            "run %s stopped %d times in a row (%s); recording it 'failed'",
            run.run_id,
            count,
            what,
            exc_info=exc,
        )
        del self._faults[run.run_id]
        run._give_up(error)
        try:
            await self._save(run, release=True)
        except Exception:
            logger.exception("run %s: its failure could not be stored either", run.run_id)
        return False

    async def _save(self, run: Run, *, release: bool, unless_only: str | None = None) -> None:
        """Store what changed in the run since its last write, not cancellable: a
        recorded transition is never lost to a cancellation. No write is made when
        nothing is new, nor when all that is new is the start of the step at
        `unless_only`, about to run (its start goes with the next write). Concurrent
        runs' writes share transactions (`GroupCommit`). Bounded in real time by the
        storage itself (SQLite's busy timeout, PostgreSQL's timeouts), never by a Trio
        deadline: under MockClock, autojump would jump straight to it. Data msgspec
        cannot encode fails the run, not the write (`Run._drop_unstorable`). A write
        that loses its compare-and-set means another process ended or took the run:
        this execution stops without a trace."""
        if run._lost:
            return
        journal = run._state.journal
        assert journal is not None
        if run._save_lock is None:
            run._save_lock = trio.Lock()
        lock = run._save_lock
        if (  # no write under way (it could hold ends this call must wait for)
            not lock.locked()
            and not release
            and run._status == run._stored_status
            and journal.nothing_new(run, unless_only)
        ):
            return
        # Not cancellable, without a cancel scope where none is needed (one costs a run
        # more than a step does): the write itself cannot be cancelled (`GroupCommit`).
        try:  # uncontended (one save at a time): no extra pass through the scheduler
            lock.acquire_nowait()
            waited = False
        except trio.WouldBlock:
            with trio.CancelScope(shield=True):
                await lock.acquire()
            waited = True
        try:
            if (  # the write waited for may have taken all there was
                waited
                and not release
                and run._status == run._stored_status
                and journal.nothing_new(run, unless_only)
            ):
                return
            try:
                entries = journal.take(run)
            except UnstorableDataError:
                run._drop_unstorable()
                entries = journal.take(run)
            status = run._status
            if run._logs:  # first, so a reader that sees the run ended sees its logs
                with trio.CancelScope(shield=True):
                    await self._store_logs(run, run._logs)
            write = Write(run.run_id, status, entries, journal.seq + 1, release)
            try:
                saved = await self._writes(write)
            except BaseException:
                journal.not_stored(run)
                raise
            journal.stored(len(entries))
        finally:
            lock.release()
        if saved:
            run._stored_status = status
        else:
            logger.warning(
                "run %s was ended or taken over by another process; stopping here", run.run_id
            )
            run._lost = True
            if run._scope is not None:
                run._scope.cancel()

    async def _store_logs(self, run: Run, pending: PendingLogs) -> None:
        """Write what the run's steps logged since the last write. A failure keeps the
        records for the next write and does not stop the run: logs are not its state."""
        logs, skipped = pending.take()
        try:
            await self.storage.append_logs(run.run_id, logs, skipped=skipped)
        except StorageError:
            pending.put_back(logs, skipped)
            logger.warning("run %s: its logs could not be stored yet", run.run_id, exc_info=True)

    async def _flush_logs(self) -> None:
        """Write the logs of the runs executing here that logged since their last write
        (their snapshots are written when their steps end, which may be long)."""
        for run in list(self._live.values()):
            if not run._logs or run._lost:
                continue
            if run._save_lock is None:
                run._save_lock = trio.Lock()
            async with run._save_lock:  # one writer of a run's records at a time
                if run._logs:
                    with trio.CancelScope(shield=True):
                        await self._store_logs(run, run._logs)

    async def _store_canceled(self, run: Run) -> None:
        """Make sure the 'canceled' that `cancel()` is about to report is stored: try
        again if the run's final write failed; `StorageError` if it keeps failing (the
        stored cancel request still wins: recovery finishes the run 'canceled')."""
        for attempt in range(STORE_CANCELED_ATTEMPTS):
            if run._stored_status == "canceled" or run._lost:
                return
            if attempt:
                await trio.sleep(self.poll_interval * 2**attempt)
            try:
                await self._save(run, release=True)
            except StorageError as exc:
                error = exc
        if run._stored_status != "canceled" and not run._lost:
            raise StorageError(
                f"run {run.run_id!r} was canceled, but 'canceled' could not be stored "
                f"({error}); its stored cancel request stands: the run will not go on, "
                "and the engine that recovers it records it 'canceled'"
            )

    async def _cancel_elsewhere(self, run: Run, reason: object) -> RunStatus:
        """Cancel a run this engine does not execute: in storage at once if nobody
        executes it, else by a request its executor notices; returns once the stored
        run has ended."""
        text = _snapshot.reason_text(reason)
        storage = self.storage
        status = await storage.request_cancel(run.run_id, text, wall_time())
        if status not in ("success", "failed", "canceled"):
            # Taken by this engine meanwhile (a start racing this cancel)? Its request
            # came through our own connection, which SQLite's data_version does not see.
            self._early_cancels[run.run_id] = text
            live = self._live.get(run.run_id)
            if live is not None:
                self._add_live(live)  # delivers it
        while status not in ("success", "failed", "canceled"):
            # Until the executor stores the outcome: notified where the storage can
            # (PostgreSQL), else polled soon, then every poll interval.
            await storage.wait_run_ended(run.run_id, self.poll_interval)
            row = await storage.load(run.run_id)
            status = row.status
            held = row.owner is not None and (row.lease_until or 0) >= wall_time()
            if status not in ("success", "failed", "canceled") and not held:
                # Nobody executes it (any more): its executor suspended it or died.
                status = await storage.request_cancel(run.run_id, text, wall_time())
        self._early_cancels.pop(run.run_id, None)
        row = await storage.load(run.run_id)
        run._load_row(row)
        return row.status

    async def _wait_stored(self, run: Run) -> None:
        """Wait until the stored run stops executing (ended or suspended) elsewhere."""
        while True:
            row = await self.storage.load(run.run_id)
            if row.status not in ("pending", "running", "waiting"):
                run._load_row(row)
                return
            await trio.sleep(self.poll_interval)

    # --- maintenance --------------------------------------------------------------------

    async def _maintain(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Renew leases, take over expired runs, and pass on cancel requests."""
        await self._note_unknown_versions()
        await self._recover()
        if self.storage.notifies_cancels:
            self._nursery.start_soon(self._listen_cancels, name="trioflow cancel listener")
        if self.queues:  # shown by `queues list` and `runs show`
            limits = [queue.limits() for queue in self.queues.values()]
            await self.storage.register_queues(limits, wall_time())
        if self.workers:
            self._nursery.start_soon(self._serve_queue, name="trioflow queue")
        if self.schedules:
            schedules = list(self.schedules.values())
            await self._nursery.start(serve_schedules, self, schedules)
        task_status.started()
        # Leases expire on the wall clock, so they are renewed by it too: under a
        # MockClock Trio's time may run far ahead of (or behind) the wall clock.
        renew_every = self.lease_seconds / 3
        recover_every = self.lease_seconds / 2
        next_renew = wall_time() + renew_every
        next_recover = wall_time() + recover_every
        next_flush = wall_time() + LOG_FLUSH_INTERVAL
        seen_version: int | None = None
        while True:
            await trio.sleep(self.poll_interval)
            now = wall_time()
            try:
                if now >= next_renew:
                    next_renew = now + renew_every
                    if self._live:
                        until = wall_time() + self.lease_seconds
                        await self.storage.renew(self.owner_id, list(self._live), until)
                if now >= next_recover and not self._closing and not self.workers:
                    next_recover = now + recover_every
                    await self._recover()
                if now >= next_flush:  # what long steps logged, for `runs logs --follow`
                    next_flush = now + LOG_FLUSH_INTERVAL
                    await self._flush_logs()
                if self._live and not self.storage.notifies_cancels:
                    version = await self.storage.data_version()
                    if version != seen_version:
                        delivered = True
                        await self._pass_events()
                        for run_id, reason in await self.storage.cancel_requests(self.owner_id):
                            run = self._live.get(run_id)
                            if run is not None:
                                run._request_cancel(reason, cancel_scope=True)
                            else:  # claimed, not yet live here: look again next tick
                                delivered = False
                        if delivered:
                            seen_version = version
            except StorageError as exc:
                # A storage locked or unreachable for a while must not stop the runs
                # executing here: try again at the next tick.
                logger.warning("engine maintenance failed, retrying: %s", exc)

    async def _note_unknown_versions(self) -> None:
        """Say once, at open, which recoverable runs this engine leaves to others because
        it does not know their workflow version."""
        now = wall_time()
        ids = list(self.workflows)
        every = await self.storage.recoverable(ids, now, RECOVER_BATCH)
        known = set(
            await self.storage.recoverable(ids, now, RECOVER_BATCH, versions=self._known_versions())
        )
        for run_id in every:
            if run_id not in known:
                row = await self.storage.load(run_id)
                logger.warning(
                    "run %s is on version %r of %s, which this engine does not know "
                    "(known: %s); leaving it to an engine that does",
                    run_id,
                    row.workflow_version,
                    row.workflow_id,
                    ", ".join(map(repr, self._versions[row.workflow_id])),
                )

    async def _recover(self) -> None:
        """Take over runs of known workflows whose executor's lease expired; each goes
        on from its last completed step."""
        now = wall_time()
        limit = RECOVER_BATCH
        if self.workers:  # a worker executes at most `workers` runs at once
            limit = max(0, min(limit, self.workers - len(self._live)))
        # Only runs on versions this engine knows (and runs stored before versions): a
        # run on another version is left to an engine that has its definition.
        ids = await self.storage.recoverable(
            list(self.workflows), now, limit, versions=self._known_versions()
        )
        for run_id in ids:
            if run_id in self._live or run_id in self._unreadable:
                # Executing here (its lease renewal was late: a locked storage), or its
                # snapshot cannot be read (logged once; left as stored, for a person).
                continue
            # A run stored before versions existed takes the latest version given here.
            workflow_id = (await self.storage.load(run_id)).workflow_id
            row = await self.storage.claim(
                run_id,
                self.owner_id,
                ("running", "waiting"),
                now,
                now + self.lease_seconds,
                workflow_version=self.workflows[workflow_id].version,
            )
            if row is None:
                continue  # another engine was faster
            try:
                run = self._rebuild(row)
            except Exception:
                self._unreadable.add(run_id)
                logger.exception("cannot recover run %s; it is left as stored", run_id)
                continue
            logger.info("recovering run %s of %s", run_id, row.workflow_id)
            if row.cancel_requested:  # asked while its executor was dying
                run._request_cancel(row.cancel_reason, cancel_scope=False)
            self._add_live(run)
            run._take_stored_events(row.events)
            self._start_soon(run)

    async def _wait_idle(self) -> None:
        while self._live:
            self._live_changed = trio.Event()
            await self._live_changed.wait()

    # --- notified cancels and queued runs ---------------------------------------------

    async def _pass_cancels(self) -> None:
        """Pass the cancel requests stored for runs this engine holds to those runs."""
        early: dict[str, str | None] = {}
        for run_id, reason in await self.storage.cancel_requests(self.owner_id):
            run = self._live.get(run_id)
            if run is not None:
                run._request_cancel(reason, cancel_scope=True)
            else:  # taken by a claim whose result this task has not seen yet
                early[run_id] = reason
        self._early_cancels = early

    async def _pass_events(self) -> None:
        """Pass the events stored for runs this engine executes (sent from another
        process) to those runs."""
        if not self._live:
            return
        events = await self.storage.events_for(owner=self.owner_id)
        for run_id in {event.run_id for event in events}:
            run = self._live.get(run_id)
            if run is not None:
                run._take_stored_events(events)

    async def _listen_cancels(self) -> None:
        """For storages that notify cancel requests: wait for one, then look."""
        failures = 0
        while True:
            try:
                await self.storage.wait_cancel_requests()
                if self._live or self.workers:
                    await self._pass_cancels()
                    await self._pass_events()
            except StorageError as exc:
                # Storage down for a while: the runs executing here go on; look again
                # (the backend reconnects), backing off to the lease's third.
                failures += 1
                logger.warning("waiting for cancel requests failed, retrying: %s", exc)
                await trio.sleep(_backoff(self.poll_interval, failures, self.lease_seconds / 3))
            else:
                failures = 0

    def _start_claimed(self, row: RunRow) -> None:
        """Execute a queued run this engine has just taken."""
        try:
            run = self._rebuild(row)
        except Exception:
            logger.exception("cannot start queued run %s; it is left as stored", row.run_id)
            return
        if row.cancel_requested or row.run_id in self._early_cancels:
            reason = row.cancel_reason or self._early_cancels.pop(row.run_id, None)
            run._request_cancel(reason, cancel_scope=False)
        run._executing = True
        run._done = trio.Event()
        self._add_live(run)
        self._nursery.start_soon(self._drive_claimed, run, name=f"trioflow run {run.run_id}")

    async def _drive_claimed(self, run: Run) -> None:
        try:
            try:
                run._take_stored_events(await self.storage.events_for(run_id=run.run_id))
            except StorageError as exc:  # taken later, as they are for a running run
                logger.warning(
                    "run %s: its stored events could not be read yet: %s", run.run_id, exc
                )
            await self._drive(run)
        finally:
            self._slot_freed.set()

    async def _serve_queue(self) -> None:
        """A worker's loop: keep up to `workers` runs executing, taking over expired
        runs first, then queued ones, oldest first."""
        workflow_ids = list(self.workflows)
        recover_every = self.lease_seconds / 2
        next_recover = wall_time() + recover_every
        failures = 0
        while not self._closing:
            self._slot_freed = trio.Event()
            free = self.workers - len(self._live)
            taken = 0
            try:
                if wall_time() >= next_recover:
                    next_recover = wall_time() + recover_every
                    await self._recover()
                    free = self.workers - len(self._live)
                if free > 0:
                    now = wall_time()
                    # Queue limits are counted by the storage, in its claim transaction; only
                    # runs on versions this engine knows are taken.
                    served = self._served = [*self._served[1:], *self._served[:1]]
                    rows = await self.storage.claim_from_queues(
                        self.owner_id,
                        workflow_ids,
                        served,
                        free,
                        now,
                        now + self.lease_seconds,
                        versions=self._known_versions(),
                    )
                    for row in rows:
                        self._start_claimed(row)
                    taken = len(rows)
            except StorageError as exc:
                # A worker outlives a storage outage: its runs go on, it takes new ones
                # once the storage answers again.
                failures += 1
                logger.warning("taking queued runs failed, retrying: %s", exc)
                await trio.sleep(_backoff(self.poll_interval, failures, self.lease_seconds / 3))
                continue
            failures = 0
            if free > 0 and taken < free:
                await trio.sleep(self.poll_interval)  # the queue is empty: poll again later
            else:
                with trio.move_on_after(self.poll_interval):
                    await self._slot_freed.wait()  # all busy: go on when one finishes


@asynccontextmanager
async def open_engine(
    *,
    storage: Storage,
    workflows: Iterable[Workflow],
    lease_seconds: float = 10.0,
    poll_interval: float = 0.02,
    workers: int = 0,
    retention: dt.timedelta | None = None,
    queues: Iterable[Queue] = (),
    schedules: Iterable[Schedule] = (),
    serve_queues: Iterable[str] | None = None,
) -> AsyncIterator[Engine]:
    """Open `storage` and an engine of durable runs of `workflows` on it.

    Leaving the block normally waits for the runs this engine executes, as a nursery
    does; leaving it by an exception or an outside cancellation interrupts them and
    leaves them recoverable (their leases are dropped so another engine can take them
    over at once).

    With ``workers=N`` the engine is also a worker: it takes queued runs (see
    `Engine.enqueue`) of its workflows and executes at most N runs at once, from
    the queues named in `serve_queues` (default: the default queue and every queue
    in `queues`).

    `queues` declares named queues and their limits (`trioflow.Queue`), which hold
    across every engine sharing the storage; `schedules` (`trioflow.Schedule`) start
    runs at the times of their cron expressions, each fire once across those engines.

    With ``retention=timedelta(days=30)`` the engine deletes, in the background, the
    finished runs that ended longer ago than that (`Engine.prune_runs`).
    """
    for name, value in (("lease_seconds", lease_seconds), ("poll_interval", poll_interval)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number of seconds, got {value!r}")
        if not 0 < value < math.inf:  # NaN too
            raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    if not poll_interval < lease_seconds / 2:
        # An engine that looks less often than that could let its lease lapse between
        # two renewals, and another engine would take over a run it still executes.
        raise ValueError(
            f"poll_interval ({poll_interval:g}s) must be less than half of lease_seconds "
            f"({lease_seconds:g}s); lower poll_interval or raise lease_seconds"
        )
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")
    workflows = list(workflows)
    index_versions(workflows)  # misuse raises as itself, not from inside the nursery
    if retention is not None:
        _retention_seconds("retention", retention)
    queues, schedules = list(queues), list(schedules)
    _schedules.check_workflows(check_schedules(schedules), workflows)
    if serve_queues is not None:
        serve_queues = list(serve_queues)
    _queues.served(check_queues(queues), serve_queues)  # a LookupError for unknown names
    async with storage:
        engine: Engine | None = None
        body_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                engine = Engine(
                    storage,
                    workflows,
                    nursery,
                    lease_seconds=lease_seconds,
                    poll_interval=poll_interval,
                    workers=workers,
                    queues=queues,
                    schedules=schedules,
                    serve_queues=serve_queues,
                )
                await nursery.start(engine._maintain)
                if retention is not None:
                    nursery.start_soon(engine._prune_forever, retention, name="trioflow retention")
                try:
                    yield engine
                except BaseException as exc:
                    # Kept out of the nursery's ExceptionGroup and re-raised as it came.
                    body_error = exc
                    nursery.cancel_scope.cancel()
                else:
                    engine._closing = True
                    await engine._wait_idle()
                    nursery.cancel_scope.cancel()
        finally:
            if engine is not None:
                # Shielded, bounded in real time by the storage; an error here must not
                # replace the body's own exception: the leases expire anyway.
                with trio.CancelScope(shield=True):
                    try:
                        await storage.release(engine.owner_id)
                    except Exception:
                        logger.exception("could not release the leases of this engine")
        if body_error is not None:
            raise body_error


def index_versions(workflows: Iterable[Workflow]) -> dict[str, dict[str, Workflow]]:
    """Workflow id -> version -> definition, each id's versions in the order given."""
    versions: dict[str, dict[str, Workflow]] = {}
    for workflow in workflows:
        if not workflow.committed:
            raise RuntimeError(f"workflow {workflow.id!r} is not committed; call .commit()")
        known = versions.setdefault(workflow.id, {})
        same = known.pop(workflow.version, workflow)
        if same is not workflow:
            raise ValueError(
                f"two definitions of workflow {workflow.id!r} have version "
                f"{workflow.version!r}; give each its own version= (or leave version= "
                "out to derive one from the definition)"
            )
        known[workflow.version] = workflow
    return versions


def _timestamp(name: str, value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.timestamp()


def _retention_seconds(name: str, value: object) -> float:
    if not isinstance(value, dt.timedelta):
        raise TypeError(f"{name} must be a datetime.timedelta, got {value!r}")
    if value < dt.timedelta(0):
        raise ValueError(f"{name} must not be negative, got {value}")
    return value.total_seconds()


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception that is not a group: what a log line and a run's error name."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _backoff(base: float, failures: int, cap: float) -> float:
    return float(min(cap, base * 2 ** min(failures, 16)))
