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
from ._errors import StorageError
from ._results import RunStatus
from ._schema import convert
from .storage import RunRow, RunSummary, Storage

if TYPE_CHECKING:
    from ._run import Run
    from ._workflow import Workflow

logger = logging.getLogger("trioflow")

# A snapshot write is cleanup that must survive cancellation, but never hang forever.
SAVE_TIMEOUT = 30.0
RECOVER_BATCH = 100


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
        return self._rebuild(row.snapshot, row.workflow_id, run_id)

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

    def _rebuild(self, data: bytes, workflow_id: str, run_id: str) -> Run:
        from ._run import Run

        snapshot = _snapshot.decode(run_id, data)
        return Run._from_snapshot(self._workflow(workflow_id), snapshot, self)

    async def _claim(self, run: Run, statuses: tuple[str, ...]) -> bool:
        """Take `run` for this engine if it is in one of `statuses` and nobody else
        executes it; on success the run's state is refreshed from storage."""
        now = wall_time()
        row = await self.storage.claim(
            run.run_id, self.owner_id, statuses, now, now + self.lease_seconds
        )
        if row is None:
            return False
        run._load(_snapshot.decode(run.run_id, row.snapshot))
        self._add_live(run)
        return True

    def _add_live(self, run: Run) -> None:
        self._live[run.run_id] = run
        self._live_changed.set()

    def _drop_live(self, run: Run) -> None:
        if self._live.get(run.run_id) is run:
            del self._live[run.run_id]
            self._live_changed.set()

    def _start_soon(self, run: Run) -> None:
        self._nursery.start_soon(self._drive, run, name=f"trioflow run {run.run_id}")

    async def _drive(self, run: Run) -> None:
        try:
            await run._execute()
        except StorageError:
            # One run that cannot be stored must not stop the others: it stays as last
            # stored, and is recovered (here or elsewhere) once its lease expires.
            logger.exception("run %s stopped: its state could not be stored", run.run_id)
        finally:
            self._drop_live(run)

    async def _save(self, run: Run, *, release: bool) -> None:
        """Write the run's snapshot (shielded and bounded: a recorded transition is
        never lost to a cancellation). A write that loses its compare-and-set means
        another process ended or took the run: this execution stops without a trace."""
        if run._lost:
            return
        if run._save_lock is None:
            run._save_lock = trio.Lock()
        lock = run._save_lock
        with trio.move_on_after(SAVE_TIMEOUT, shield=True) as scope:
            try:  # uncontended (one save at a time): no extra pass through the scheduler
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                data = run._encode_snapshot()
                saved = await self.storage.save(
                    run.run_id, run._status, data, self.owner_id, wall_time(), release=release
                )
            finally:
                lock.release()
        if scope.cancelled_caught:
            raise StorageError(
                f"saving run {run.run_id!r} took over {SAVE_TIMEOUT:g}s; is the storage locked?"
            )
        if not saved:
            logger.warning(
                "run %s was ended or taken over by another process; stopping here", run.run_id
            )
            run._lost = True
            if run._scope is not None:
                run._scope.cancel()

    async def _cancel_elsewhere(self, run: Run, reason: object) -> RunStatus:
        """Cancel a run this engine does not execute: in storage at once if nobody
        executes it, else by a request its executor notices; returns once the stored
        run has ended."""
        text = None if reason is None else str(reason)
        storage = self.storage
        status = await storage.request_cancel(run.run_id, text, wall_time())
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
        row = await storage.load(run.run_id)
        run._load(_snapshot.decode(run.run_id, row.snapshot))
        return row.status

    async def _wait_stored(self, run: Run) -> None:
        """Wait until the stored run stops executing (ended or suspended) elsewhere."""
        while True:
            row = await self.storage.load(run.run_id)
            if row.status not in ("pending", "running", "waiting"):
                run._load(_snapshot.decode(run.run_id, row.snapshot))
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
        renew_every = self.lease_seconds / 3
        recover_every = self.lease_seconds / 2
        next_renew = trio.current_time() + renew_every
        next_recover = trio.current_time() + recover_every
        seen_version: int | None = None
        while True:
            await trio.sleep(self.poll_interval)
            now = trio.current_time()
            try:
                if now >= next_renew:
                    next_renew = now + renew_every
                    if self._live:
                        until = wall_time() + self.lease_seconds
                        await self.storage.renew(self.owner_id, list(self._live), until)
                if now >= next_recover and not self._closing and not self.workers:
                    next_recover = now + recover_every
                    await self._recover()
                if self._live and not self.storage.notifies_cancels:
                    version = await self.storage.data_version()
                    if version != seen_version:
                        for run_id, reason in await self.storage.cancel_requests(self.owner_id):
                            run = self._live.get(run_id)
                            if run is not None:
                                run._request_cancel(reason, cancel_scope=True)
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
            if run_id in self._live:
                continue  # executing here: its lease renewal was late (a locked storage)
            row = await self.storage.claim(
                run_id, self.owner_id, ("running", "waiting"), now, now + self.lease_seconds
            )
            if row is None:
                continue  # another engine was faster
            try:
                run = self._rebuild(row.snapshot, row.workflow_id, run_id)
            except Exception:
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
        while True:
            await self.storage.wait_cancel_requests()
            if self._live or self.workers:
                try:
                    await self._pass_cancels()
                except StorageError as exc:  # issue 11: contained
                    # Unreachable for longer than the storage retries: look again at
                    # the next notification, reconnection or backstop.
                    logger.warning("looking for cancel requests failed, retrying: %s", exc)

    def _start_claimed(self, row: RunRow) -> None:
        """Execute a queued run this engine has just taken."""
        try:
            run = self._rebuild(row.snapshot, row.workflow_id, row.run_id)
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
        next_recover = trio.current_time() + recover_every
        while not self._closing:
            self._slot_freed = trio.Event()
            free = taken = 0
            try:  # issue 11: contained (a storage error must not stop the worker)
                if trio.current_time() >= next_recover:
                    next_recover = trio.current_time() + recover_every
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
                logger.warning("taking queued runs failed, retrying: %s", exc)
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
    if not lease_seconds > 0 or not poll_interval > 0 or math.isinf(lease_seconds):
        raise ValueError("lease_seconds and poll_interval must be positive numbers of seconds")
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
                with trio.move_on_after(SAVE_TIMEOUT, shield=True):
                    await storage.release(engine.owner_id)
        if body_error is not None:
            raise body_error
