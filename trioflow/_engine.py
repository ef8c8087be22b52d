"""The engine: durable runs in a storage, executed in the caller's nursery.

An engine owns a nursery (the caller opens it with ``async with open_engine(...)``) in
which it executes runs started with `Run.start_soon` and runs it recovers, and one
maintenance task that renews the leases of the runs it executes, takes over runs whose
lease expired, and notices cancel requests written by other processes.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from . import _snapshot
from ._clock import wall_time
from ._errors import StorageError, UnstorableDataError
from ._results import RunStatus
from ._schema import convert
from .storage import RunRow, RunSummary, Storage

if TYPE_CHECKING:
    from ._logs import PendingLogs
    from ._run import Run
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
    ) -> None:
        self.storage = storage
        self.workflows: dict[str, Workflow] = {}
        for workflow in workflows:
            if not workflow.committed:
                raise RuntimeError(f"workflow {workflow.id!r} is not committed; call .commit()")
            self.workflows[workflow.id] = workflow
        self.owner_id = uuid.uuid4().hex
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

    def __repr__(self) -> str:
        return f"<trioflow.Engine on {self.storage!r}: {len(self._live)} executing>"

    # --- public API -------------------------------------------------------------------

    async def create_run(self, workflow: str | Workflow, run_id: str | None = None) -> Run:
        """A new durable run of `workflow` (an id or a workflow given to the engine),
        stored ``'pending'``."""
        from ._run import Run

        run = Run(self._workflow(workflow), run_id)
        run._engine = self
        snapshot = _snapshot.encode(run._to_snapshot())
        await self.storage.insert(run.run_id, run.workflow.id, "pending", snapshot, wall_time())
        return run

    async def enqueue(
        self,
        workflow: str | Workflow,
        input_data: Any = None,
        *,
        run_id: str | None = None,
        initial_state: Any = None,
    ) -> Run:
        """A new durable run of `workflow` with its input, stored ``'pending'`` and
        queued in one write: an engine opened with ``workers=N`` (any process sharing
        the storage) takes it and executes it. Wait for it with ``run.result()``,
        cancel it with ``run.cancel()``."""
        from ._run import Run, _initial_state

        run = Run(self._workflow(workflow), run_id)
        run._engine = self
        convert(input_data, run.workflow.input_schema, step_id=None, what="input")
        run._input = input_data
        if initial_state is not None or run.workflow.state_schema is not None:
            run._states[""] = _initial_state(run.workflow, initial_state)
        snapshot = _snapshot.encode(run._to_snapshot())
        await self.storage.insert(
            run.run_id, run.workflow.id, "pending", snapshot, wall_time(), queued=True
        )
        return run

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
    ) -> list[RunSummary]:
        """Summaries of the stored runs, newest first: `limit` of them after `offset`."""
        return await self.storage.list_runs(
            status=status, workflow_id=workflow_id, limit=limit, offset=offset
        )

    # --- what runs ask of their engine --------------------------------------------------

    def _workflow(self, workflow: str | Workflow) -> Workflow:
        workflow_id = workflow if isinstance(workflow, str) else workflow.id
        try:
            return self.workflows[workflow_id]
        except KeyError:
            raise LookupError(
                f"this engine does not know workflow {workflow_id!r}; "
                f"pass it in open_engine(workflows=[...]) (known: {sorted(self.workflows)})"
            ) from None

    def _rebuild(self, row: RunRow) -> Run:
        """The run of a stored row, as a handle of this engine."""
        from ._run import Run

        run = Run._from_snapshot(
            self._workflow(row.workflow_id), _snapshot.decode(row.run_id, row.snapshot), self
        )
        run._stored_status = row.status
        return run

    async def _claim(self, run: Run, statuses: tuple[str, ...]) -> bool:
        """Take `run` for this engine if it is in one of `statuses` and nobody else
        executes it; on success the run's state is refreshed from storage."""
        now = wall_time()
        row = await self.storage.claim(
            run.run_id, self.owner_id, statuses, now, now + self.lease_seconds
        )
        if row is None:
            return False
        run._load_row(row)
        self._add_live(run)
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

    async def _save(self, run: Run, *, release: bool) -> None:
        """Write the run's snapshot, shielded: a recorded transition is never lost to a
        cancellation. Bounded in real time by the storage itself (SQLite's busy timeout,
        PostgreSQL's timeouts), never by a Trio deadline: under MockClock, autojump
        would jump straight to it. Data msgspec cannot encode fails the run, not the
        write (`Run._drop_unstorable`). A write that loses its compare-and-set means
        another process ended or took the run: this execution stops without a trace."""
        if run._lost:
            return
        if run._save_lock is None:
            run._save_lock = trio.Lock()
        lock = run._save_lock
        with trio.CancelScope(shield=True):
            try:  # uncontended (one save at a time): no extra pass through the scheduler
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                try:
                    data = run._encode_snapshot()
                except UnstorableDataError:
                    run._drop_unstorable()
                    data = run._encode_snapshot()
                status = run._status
                if run._logs:  # first, so a reader that sees the run ended sees its logs
                    await self._store_logs(run, run._logs)
                saved = await self.storage.save(
                    run.run_id, status, data, self.owner_id, wall_time(), release=release
                )
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
        await self._recover()
        if self.storage.notifies_cancels:
            self._nursery.start_soon(self._listen_cancels, name="trioflow cancel listener")
        if self.workers:
            self._nursery.start_soon(self._serve_queue, name="trioflow queue")
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

    async def _recover(self) -> None:
        """Take over runs of known workflows whose executor's lease expired; each goes
        on from its last completed step."""
        now = wall_time()
        limit = RECOVER_BATCH
        if self.workers:  # a worker executes at most `workers` runs at once
            limit = max(0, min(limit, self.workers - len(self._live)))
        ids = await self.storage.recoverable(list(self.workflows), now, limit)
        for run_id in ids:
            if run_id in self._live or run_id in self._unreadable:
                # Executing here (its lease renewal was late: a locked storage), or its
                # snapshot cannot be read (logged once; left as stored, for a person).
                continue
            row = await self.storage.claim(
                run_id, self.owner_id, ("running", "waiting"), now, now + self.lease_seconds
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

    async def _listen_cancels(self) -> None:
        """For storages that notify cancel requests: wait for one, then look."""
        failures = 0
        while True:
            try:
                await self.storage.wait_cancel_requests()
                if self._live or self.workers:
                    await self._pass_cancels()
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
                    rows = await self.storage.claim_queued(
                        self.owner_id, workflow_ids, free, now, now + self.lease_seconds
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
) -> AsyncIterator[Engine]:
    """Open `storage` and an engine of durable runs of `workflows` on it.

    Leaving the block normally waits for the runs this engine executes, as a nursery
    does; leaving it by an exception or an outside cancellation interrupts them and
    leaves them recoverable (their leases are dropped so another engine can take them
    over at once).

    With ``workers=N`` the engine is also a worker: it takes queued runs (see
    `Engine.enqueue`) of its workflows and executes at most N runs at once.
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
    for workflow in workflows:  # misuse raises as itself, not from inside the nursery
        if not workflow.committed:
            raise RuntimeError(f"workflow {workflow.id!r} is not committed; call .commit()")
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
                )
                await nursery.start(engine._maintain)
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


def _first_leaf(exc: BaseException) -> BaseException:
    """The first exception that is not a group: what a log line and a run's error name."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _backoff(base: float, failures: int, cap: float) -> float:
    return float(min(cap, base * 2 ** min(failures, 16)))
