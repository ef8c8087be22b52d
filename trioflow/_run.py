"""A run: one execution history of a workflow, with `start`, `resume`, `watch`, `cancel`.

Each execution (a `start` or a `resume`) runs inside the run's own `trio.CancelScope`;
the run's `AbortSignal` is that scope's face for step authors. `cancel()` aborts the
signal (listeners run), then cancels the scope (at once, or after a grace period via the
scope's deadline), and the finalizer, which runs once the step loop has exited, records
the one terminal outcome.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import trio

from . import _events as ev
from . import _follow, _journal, _snapshot, _tracing
from ._abort import AbortController, Timer, call_at
from ._clock import wall_time
from ._errors import (
    RunStateError,
    RunTimeoutError,
    StorageError,
    UnstorableDataError,
    ValidationError,
)
from ._executor import (
    BailRun,
    FailRun,
    Frame,
    Key,
    StopRun,
    SuspendRun,
    execute_workflow,
)
from ._graph import ForeachNode, Graph, LoopNode, Node, WaitEventNode, node_ids, node_steps
from ._journal import RunSet
from ._logs import PendingLogs
from ._results import TERMINAL, CancelResult, RunResult, RunStatus, StepResult
from ._schema import convert
from ._state import NO_EVENT, ExecutionState
from ._step import Step
from ._transitions import (
    Outcome,
    cancel_result,
    final_status,
    resolve_suspended,
    suspended_leaves,
)
from ._util import random_run_id
from .storage._base import EXECUTING_STATUSES

if TYPE_CHECKING:
    from .storage import RunRow, Storage, StoredEvent

logger = logging.getLogger("trioflow")

_current_run: contextvars.ContextVar[Run | None] = contextvars.ContextVar(
    "trioflow_current_run", default=None
)


class Host(Protocol):
    """What a durable run needs of the engine that stores and executes it
    (`_engine.Engine`). Written down here, where it is needed: the engine imports this
    module, so this one does not import the engine (not even for type checking)."""

    storage: Storage
    poll_interval: float
    _live: dict[str, Run]

    def _check_version(self, run: Run) -> None: ...
    async def _claim(self, run: Run, statuses: tuple[str, ...]) -> bool: ...
    async def _claim_start(self, run: Run) -> bool: ...
    def _drop_live(self, run: Run) -> None: ...
    def _start_soon(self, run: Run) -> None: ...
    async def _save(self, run: Run, *, release: bool, unless_only: str | None = None) -> None: ...
    async def _store_canceled(self, run: Run) -> None: ...
    async def _cancel_elsewhere(self, run: Run, reason: object) -> RunStatus: ...
    async def _wait_stored(self, run: Run) -> None: ...


class Run:
    """One run of a workflow. Get one with ``await workflow.create_run()``."""

    __slots__ = (
        "_controller",
        "_deadline",
        "_done",
        "_engine",
        "_event_arrived",
        "_events_taken",
        "_executing",
        "_fault",
        "_forked_from",
        "_logs",
        "_lost",
        "_resuming",
        "_save_lock",
        "_scope",
        "_signal",
        "_state",
        "_status",
        "_stored_status",
        "_timeout",
        "_timeout_error",
        "_trace",
        "_trace_carrier",
        "_unknown_version",
        "_waiting",
        "_watchers",
        "cancel_requested",
        "run_id",
        "workflow",
    )

    def __init__(self, workflow: Graph, run_id: str | None = None) -> None:
        self.workflow = workflow
        self.run_id = run_id if run_id is not None else random_run_id()
        self.cancel_requested = False
        self._status: RunStatus = "pending"
        self._controller = AbortController()
        self._signal = self._controller.signal
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None
        self._executing = False
        # The records, progress, states, outcome... of the run: changed only through
        # its methods, by the executor and by this handle.
        self._state = ExecutionState()
        self._resuming: str | None = None
        self._waiting = 0
        # The number of the last event taken from the storage (`send_event` from another
        # process): stored with the run, so that none is taken twice or lost.
        self._events_taken = 0
        self._event_arrived: trio.Event | None = None
        self._watchers = ev.Watchers()
        self._engine: Host | None = None
        self._lost = False  # another process ended or took this run: write nothing more
        self._save_lock: trio.Lock | None = None
        # The status of the last snapshot this process stored (None: not stored yet).
        self._stored_status: RunStatus | None = None
        # Data of this run could not be stored: the failure that ends the step loop.
        self._fault: FailRun | None = None
        # The run this one was forked from: it starts with that run's input.
        self._forked_from: str | None = None
        # The run's timeout (seconds), its wall-clock deadline once it first executed
        # (both stored: they survive recovery), and the error once it passed.
        self._timeout: float | None = workflow.timeout
        self._deadline: float | None = None
        self._timeout_error: RunTimeoutError | None = None
        # The stored version of a run loaded by an engine that does not know it (the
        # records are read with the latest definition; the run is never executed here).
        self._unknown_version: str | None = None
        # Observability (_tracing.py, _logs.py): the trace of the execution under way,
        # the run's trace context once known, and what ctx.logger said since the last write.
        self._trace: _tracing.Execution | None = None
        self._trace_carrier: dict[str, str] | None = None
        self._logs: PendingLogs | None = None

    def __repr__(self) -> str:
        return f"<trioflow.Run {self.run_id!r} of {self.workflow.id!r}: {self._status}>"

    @property
    def status(self) -> RunStatus:
        """The live status: pending, running, waiting, suspended, success, failed, canceled."""
        return self._status

    @property
    def abort_signal(self) -> Any:
        """The run's `AbortSignal`, aborted by `cancel()` (and by ``ctx.abort()``)."""
        return self._controller.signal

    # --- public API -------------------------------------------------------------------

    async def start(
        self,
        input_data: Any = None,
        *,
        initial_state: Any = None,
        # The run's own timeout, stored with it: not a bound on this call (ASYNC109).
        timeout: float | None = None,  # noqa: ASYNC109
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> RunResult:
        """Execute the run from its first step; the result once it stops executing.

        `timeout` (default: the workflow's) bounds the whole run, suspended and waiting
        time included, from now: when it passes, the run is interrupted as by `cancel()`
        (its signal aborts with a `RunTimeoutError`) and ends ``'failed'`` with it.

        A run canceled before it started returns its ``'canceled'`` result. With
        ``await nursery.start(run.start, input_data)``, the start returns once the run
        is ``'running'`` (claimed and stored, for a durable run) and the run goes on in
        the nursery; cancelling that nursery is a cancellation from outside the run.
        """
        await trio.lowlevel.checkpoint()
        if await self._prepare_start(input_data, initial_state, timeout):
            return await self._execute(task_status)
        task_status.started()  # canceled before it started: nothing more will happen
        return self.result_nowait()

    async def start_soon(
        self,
        input_data: Any = None,
        *,
        initial_state: Any = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the run's, as for start()
    ) -> None:
        """Start a durable run in its engine's nursery and return at once; wait for it
        with `result()`. `timeout` as for `start`."""
        engine = self._engine
        if engine is None:
            raise RuntimeError(
                "start_soon() needs a durable run: create it with engine.create_run() "
                "inside open_engine(), or await run.start() instead"
            )
        await trio.lowlevel.checkpoint()
        if await self._prepare_start(input_data, initial_state, timeout):
            self._executing = True
            if self._done is None or self._done.is_set():
                self._done = trio.Event()
            engine._start_soon(self)

    async def result(self) -> RunResult:
        """The result once the run stops executing (ended or suspended), wherever it
        executes. Cancelling this wait does not cancel the run."""
        # `_done` too: the execution's final write is under way after `_executing` is
        # over, and its outcome is not the result until it is stored.
        while self._executing or (self._done is not None and not self._done.is_set()):
            assert self._done is not None
            await self._done.wait()
        if self._engine is not None and self._status in ("pending", "running", "waiting"):
            await self._engine._wait_stored(self)
        else:
            await trio.lowlevel.checkpoint()
        return self.result_nowait()

    async def _prepare_start(
        self, input_data: Any, initial_state: Any, run_timeout: float | None = None
    ) -> bool:
        """Check that the run may start and take it; False for a canceled run."""
        timeout = None if run_timeout is None else _check_timeout(run_timeout)
        if self._engine is not None and not self._executing:
            # While this start loads and claims the run, a cancel() of this handle is a
            # cancel of a run executing here: it waits for the start and is not raced.
            self._executing = True
            self._done = trio.Event()
            try:
                started = await self._prepare_durable_start(input_data, initial_state)
            except BaseException:
                self._executing = False
                self._done.set()
                raise
        else:
            started = self._prepare_memory_start(input_data, initial_state)
        if started and timeout is not None:  # after the stored run was loaded
            self._timeout = timeout
        return started

    async def _prepare_durable_start(self, input_data: Any, initial_state: Any) -> bool:
        engine = self._engine
        assert engine is not None
        engine._check_version(self)
        if self._status == "pending" and not self.cancel_requested:
            if self._forked_from is not None and (
                input_data is not None or initial_state is not None
            ):
                raise ValueError(
                    f"run {self.run_id!r} was forked from {self._forked_from!r} and starts "
                    "with its input and state; call start() without input_data"
                )
            # As this handle knows it: take it, set it 'running' and store its input in
            # one transaction. A pending run is written by nothing but a start or the
            # cancel that ends its pending, so nothing stored is newer than this
            # handle unless the claim fails.
            if self._forked_from is None:
                self._take_input(input_data, initial_state)
            if await engine._claim_start(self):
                return True
        # Lost the claim (to another process, or to a cancel() that canceled the pending
        # run in storage meanwhile: then this start returns its result), or a stale handle.
        self._load_row(await engine.storage.load(self.run_id))
        engine._check_version(self)
        if self._status == "canceled" or self.cancel_requested:
            if self._status != "canceled":  # asked while this start was claiming it
                await engine._cancel_elsewhere(self, self._controller.signal.reason)
            self._executing = False
            assert self._done is not None
            self._done.set()
            return False
        if self._status == "pending":  # held by a start elsewhere
            raise RunStateError(
                self.run_id, self._status, f"run {self.run_id!r} was started by another process"
            )
        raise RunStateError(self.run_id, self._status, self._not_startable())

    def _prepare_memory_start(self, input_data: Any, initial_state: Any) -> bool:
        if self._status == "canceled":
            return False
        if self._status != "pending" or self._executing:
            raise RunStateError(self.run_id, self._status, self._not_startable())
        self._take_input(input_data, initial_state)
        return True

    def _not_startable(self) -> str:
        if self._status == "suspended":
            return (
                f"run {self.run_id!r} is suspended; continue it with run.resume(), "
                "or start a new run with create_run()"
            )
        return (
            f"run {self.run_id!r} was already started (it is {self._status!r}); "
            "start a new run with create_run()"
        )

    def _take_input(self, input_data: Any, initial_state: Any) -> None:
        self._state.set_input(input_data)
        state_schema = self.workflow.state_schema
        if initial_state is not None or state_schema is not None:
            self._state.set_state("", _initial_state(self.workflow, initial_state))

    async def resume(
        self,
        step: str | Step[Any, Any] | Graph | list[str] | None = None,
        resume_data: Any = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> RunResult:
        """Continue a suspended run: `step` (an id, a step, or a nested path list) runs
        again with `resume_data` as ``ctx.resume_data``, validated by its resume schema.
        With ``await nursery.start(partial(run.resume, step, data))``, a refused resume
        (wrong state, step or data) raises there, and the start returns once the run is
        ``'running'`` again, as for `start`.
        """
        await trio.lowlevel.checkpoint()
        engine = self._engine
        if engine is not None and not self._executing:
            self._load_row(await engine.storage.load(self.run_id))
            engine._check_version(self)
        if self._status != "suspended" or self._executing:
            raise RunStateError(self.run_id, self._status, self._not_resumable())
        path = self._suspended_path(step)
        target = _find_step(self.workflow, path.split("."))
        schema = target.resume_schema if isinstance(target, Step) else None
        data = convert(resume_data, schema, step_id=path, what="resume data")
        if engine is not None and not await engine._claim(self, ("suspended",)):
            raise RunStateError(
                self.run_id,
                self._status,
                f"run {self.run_id!r} is being resumed by another process",
            )
        self._state.resume_step(path, data)
        self._resuming = path
        try:
            return await self._execute(task_status)
        finally:
            self._resuming = None

    async def cancel(self, reason: object = None, *, grace_period: float = 0) -> CancelResult:
        """Cancel the run. Returns once nothing of the run is executing, except when called
        from inside the run itself, which only requests the cancellation.

        The run's `abort_signal` aborts first (with `reason`, or a new `AbortError`), then
        its cancel scope is cancelled, at once or after `grace_period` seconds of Trio's
        clock if the run has not ended by then. Returns
        ``CancelResult(message="Workflow run canceled", status="canceled")``, or for a run
        that had already ended ``"Workflow run already success"`` (or ``failed``) with
        that status. The guide "Cancellation" says what happens, in order.
        """
        # The request is made before this task first yields (cancel_requested is True
        # from the moment cancel() is called, so no step can start in between), and not
        # at all if the caller is already cancelled, as Trio's own primitives do.
        await trio.lowlevel.checkpoint_if_cancelled()
        if isinstance(grace_period, bool) or not isinstance(grace_period, int | float):
            raise TypeError(f"grace_period must be a number of seconds, got {grace_period!r}")
        if not grace_period >= 0:  # NaN too
            raise ValueError(f"grace_period must be >= 0 seconds, got {grace_period!r}")
        engine = self._engine
        if engine is not None and not self._executing:
            live = engine._live.get(self.run_id)
            if live is not None and live is not self:  # executing here, by another handle
                return await live.cancel(reason, grace_period=grace_period)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return cancel_result(await engine._cancel_elsewhere(self, reason))
        if engine is not None and not self.cancel_requested:
            return await self._cancel_durable(engine, reason, grace_period)
        if self._status in TERMINAL and not self._executing:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return cancel_result(self._status)
        try:
            first = self._request_cancel(reason, cancel_scope=False)
        except BaseException:
            # A listener raised what abort() does not catch (KeyboardInterrupt): the
            # run is interrupted all the same before it propagates.
            if self._executing:
                self._cancel_scope(grace_period)
            raise
        if not self._executing:
            if first:
                self._finish_idle_cancel()
            await trio.lowlevel.cancel_shielded_checkpoint()
            return cancel_result(self._status)
        self._cancel_scope(grace_period)
        if _current_run.get() is self:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return cancel_result("canceled")
        assert self._done is not None
        await self._done.wait()
        return cancel_result(self._status)

    async def _cancel_durable(
        self, engine: Host, reason: object, grace_period: float
    ) -> CancelResult:
        """Cancel a durable run executing here. The request (and its reason) is stored
        before the run is interrupted, so a crash in between cannot let recovery run the
        interrupted step again; `'canceled'` is reported only once it is stored."""
        self.cancel_requested = True  # no step starts from now on
        try:
            with trio.CancelScope(shield=True):
                await engine.storage.request_cancel(
                    self.run_id, _snapshot.reason_text(reason), wall_time()
                )
        except StorageError:
            logger.warning(
                "run %s: the cancel request could not be stored; canceling it here",
                self.run_id,
                exc_info=True,
            )
        finally:
            self._interrupt(reason, cancel_scope=False)
            self._cancel_scope(grace_period)
        if _current_run.get() is self:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return cancel_result("canceled")
        assert self._done is not None
        await self._done.wait()
        if self._status == "canceled" and not self._lost:
            await engine._store_canceled(self)
        elif self._lost:  # another process ended it meanwhile: its outcome is the one
            await engine._wait_stored(self)
        return cancel_result(self._status)

    def _cancel_scope(self, grace_period: float) -> None:
        scope = self._scope
        if scope is None:
            pass  # the execution has not begun: it will stop before any step
        elif grace_period > 0:
            scope.deadline = min(scope.deadline, trio.current_time() + grace_period)
        else:
            scope.cancel()

    def watch(self, *, buffer: int = ev.DEFAULT_BUFFER) -> ev._WatchContext:
        """``async with run.watch() as events: async for event in events: ...`` — the
        events from now on, ending after the next ``workflow-finish``.

        At most `buffer` events wait for this watcher: while it is full, events are
        dropped for it alone, and it then first receives one ``watch-overflow`` event
        counting them. ``workflow-finish`` always arrives.

        A durable run that executes in another process (or ended there) is followed
        through storage: first the output events its steps stored, then its stored
        transitions, until it ends or suspends."""
        return self._watchers.watch(buffer, partial(_follow_elsewhere, self))

    async def send_event(self, name: str, data: Any = None) -> None:
        """Deliver an event to `.wait_for_event(name, ...)`: kept until waited for.

        The data is validated at once by the waiting step's resume schema.
        """
        await trio.lowlevel.checkpoint()
        if self._status in TERMINAL:
            raise _no_events(self.run_id, self._status)
        engine = self._engine
        if engine is not None and not self._executing:
            live = engine._live.get(self.run_id)
            if live is not None and live is not self:  # executing here, by another handle
                return await live.send_event(name, data)
            await self._store_event(engine, name, data)
            return
        node = _find_event_node(self.workflow, name)
        if node is None:
            raise ValueError(
                f"workflow {self.workflow.id!r} has no .wait_for_event({name!r}, ...); "
                "check the event name"
            )
        data = convert(data, node.step.resume_schema, step_id=node.step.id, what="event data")
        self._state.add_event(name, data)
        if self._event_arrived is not None:
            self._event_arrived.set()
            self._event_arrived = None

    async def _store_event(self, engine: Host, name: str, data: Any) -> None:
        """Send an event to a durable run that does not execute here: stored, and taken
        by the process that executes the run as soon as it hears of it (as of a cancel
        request), or by the engine that starts or resumes it."""
        node = _find_event_node(self.workflow, name)
        if node is None:
            raise ValueError(
                f"workflow {self.workflow.id!r} has no .wait_for_event({name!r}, ...); "
                "check the event name"
            )
        data = convert(data, node.step.resume_schema, step_id=node.step.id, what="event data")
        encoded = _snapshot.encode_value(self.run_id, f"the data of event {name!r}", data)
        status = await engine.storage.put_event(self.run_id, name, encoded, wall_time())
        if status in TERMINAL:
            raise _no_events(self.run_id, status)
        live = engine._live.get(self.run_id)
        if live is not None:  # taken here meanwhile: SQLite does not tell us of our writes
            live._take_stored_events(await engine.storage.events_for(run_id=self.run_id))

    def _take_stored_events(self, events: Sequence[StoredEvent]) -> None:
        """Queue the events sent through the storage that this run has not taken yet."""
        for event in events:
            if event.run_id != self.run_id or event.seq <= self._events_taken:
                continue
            data = _retype(
                msgspec.json.decode(event.data), _event_schema(self.workflow, event.name)
            )
            self._state.add_event(event.name, data)
            self._events_taken = event.seq
            if self._event_arrived is not None:
                self._event_arrived.set()
                self._event_arrived = None

    def result_nowait(self) -> RunResult:
        """The run's result as it stands now."""
        state = self._state
        return RunResult(
            run_id=self.run_id,
            status=self._status,
            result=state.result,
            error=state.error,
            steps=dict(state.steps),
            suspended=[path.split(".") for path in state.suspended],
        )

    # --- execution --------------------------------------------------------------------

    async def _execute(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> RunResult:
        self._executing = True
        if self._done is None or self._done.is_set():
            self._done = trio.Event()
        self._scope = scope = trio.CancelScope()
        if self.cancel_requested:
            scope.cancel()
        previous, self._status = self._status, "running"
        instruments = _tracing.instruments()  # None (the usual case): no tracing at all
        trace: _tracing.Execution | None = None
        self._state.set_suspended([])
        if self._watchers.channels:
            self._watchers.emit(ev.WorkflowStart(run_id=self.run_id, workflow_id=self.workflow.id))
        outcome: BaseException | None = None
        output: Any = None
        token = _current_run.set(self)
        engine = self._engine
        timer = self._start_deadline()
        recorded = False
        try:
            with scope:
                try:
                    if instruments is not None:
                        trace = self._trace = await self._open_trace(instruments, previous)
                    if engine is not None:
                        await engine._save(self, release=False)
                    task_status.started()  # 'running', and stored for a durable run
                    if engine is not None:
                        self._raise_fault()
                    output = await execute_workflow(
                        Frame(self, self.workflow, "", self._state.input), self._state.input, ()
                    )
                except (FailRun, SuspendRun, StopRun, BailRun) as exc:
                    outcome = exc
                else:
                    outcome = BailRun(output)
        finally:
            _current_run.reset(token)
            self._executing = False
            if timer is not None:
                timer.cancel()
            # An outcome, our own cancel or our timeout: record it. Otherwise the
            # cancellation came from outside and the run stays as it was at its last
            # transition.
            stopped = self.cancel_requested or self._timeout_error is not None
            try:
                if (outcome is not None or stopped) and not self._lost:
                    recorded = True
                    self._finish(outcome)
                    if engine is not None:
                        await engine._save(self, release=True)
                    if not self._lost:
                        self._emit_finish(self._status)
                else:
                    self._watchers.end_all()
            finally:
                if engine is not None:
                    engine._drop_live(self)
                self._done.set()
                if trace is not None:
                    self._trace = None
                    state = self._state
                    trace.end(self._status, state.error, state.suspended, ended=recorded)
        if self._lost and engine is not None:
            # Another process took the run over (or ended it): its outcome is the result.
            await engine._wait_stored(self)
        return self.result_nowait()

    def _start_deadline(self) -> Timer | None:
        """Arm the run's timeout for this execution: the whole timeout the first time
        (from now), what is left of it after that (a resume, a recovery)."""
        if self._timeout is None:
            return None
        if self._deadline is None:
            self._deadline = wall_time() + self._timeout
            wait = self._timeout
        else:
            wait = self._deadline - wall_time()
            if wait <= 0:  # passed while the run was suspended or down: no step starts
                self._time_out()
                return None
        return call_at(trio.current_time() + wait, self._time_out)

    def _time_out(self) -> None:
        """The deadline passed: interrupt the run as a cancel does; it ends 'failed'."""
        if self._timeout_error is not None or self.cancel_requested or not self._executing:
            return
        assert self._timeout is not None
        self._timeout_error = RunTimeoutError(self.run_id, self._timeout)
        self._interrupt(self._timeout_error, cancel_scope=True)

    async def _open_trace(
        self, instruments: _tracing.Instruments, previous: RunStatus
    ) -> _tracing.Execution:
        """The trace of this execution: the first continues the caller's trace, later
        ones (a resume, a recovery elsewhere) the trace of the first."""
        storage = None if self._engine is None else self._engine.storage
        trace = await _tracing.open_execution(
            instruments,
            run_id=self.run_id,
            workflow=self.workflow,
            carrier=self._trace_carrier,
            load=None if storage is None else partial(storage.load_trace_context, self.run_id),
            store=None if storage is None else partial(storage.store_trace_context, self.run_id),
        )
        self._trace_carrier = trace.carrier
        if self._resuming is not None:
            trace.event("resume", **{_tracing.STEP_ID: self._resuming})
        elif previous in ("running", "waiting"):
            trace.event("takeover")  # recovered: its last executor stopped renewing its lease
        return trace

    def _raise_fault(self) -> None:
        """Raise the failure recorded when some of the run's data could not be stored."""
        fault = self._fault
        if fault is not None:
            self._fault = None
            raise fault

    def _drop_unstorable(self) -> None:
        """Some of the run's data cannot be encoded (a step returned an object, or a
        str from a non-UTF-8 file name): drop it, and fail the run with an error that
        names where the first such value came from. The run stays storable and ends
        alone; the step loop ends at `_raise_fault`."""
        found = self._state.drop_unencodable()  # (step path, where, value)
        culprit: str | None = None
        where, value = "some of its data", None
        if found:
            culprit, where, value = found[0]
        error = UnstorableDataError(self.run_id, where, _snapshot.unstorable_detail(value))
        if culprit is not None:
            self._state.fail_step(culprit, error)
        if self._executing:  # the step loop ends at `_raise_fault`, the run 'failed'
            self._fault = FailRun(error, culprit)
        elif self._status not in ("canceled", "failed"):  # its final write
            self._status = "failed"
            self._state.set_error(error)
            self._state.set_result(None)

    def _give_up(self, error: BaseException) -> None:
        """Record the run ``'failed'`` with `error` after its execution broke down the
        same way too often; its steps still in flight fail with it."""
        state = self._state
        state.fail_in_flight(error)
        self._status = "failed"
        state.set_error(error)
        state.set_suspended([])
        self._emit_finish("failed")

    def _finish(self, outcome: BaseException | None) -> None:
        """The one terminal (or suspended) transition of an execution. A requested
        cancel wins over whatever the step loop reached, so `cancel()`, the result and
        the events always agree."""
        state = self._state
        reached: Outcome | None = None
        if isinstance(outcome, FailRun):
            reached = "failed"
        elif isinstance(outcome, SuspendRun):
            reached = "suspended"
        elif isinstance(outcome, BailRun):
            reached = "success"
        if self._timeout_error is not None and not self.cancel_requested:
            # The deadline passed: whatever the step loop reached, the run failed with
            # the timeout; the steps it interrupted are recorded as a cancel records them.
            self._cancel_in_flight(())
            state.set_error(self._timeout_error)
            state.set_result(None)
            self._status = "failed"
            return
        status = final_status(reached, cancel_requested=self.cancel_requested)
        if status == "canceled":
            self._cancel_in_flight(())
        elif isinstance(outcome, FailRun):
            state.set_error(outcome.error)
        elif isinstance(outcome, SuspendRun):
            state.set_suspended(outcome.paths)
        elif isinstance(outcome, BailRun):
            state.set_result(outcome.result)
        self._status = status

    def _emit_finish(self, status: RunStatus) -> None:
        if not self._watchers.channels:
            return
        if status == "canceled":
            reason = self._controller.signal.reason
            self._watchers.emit(
                ev.WorkflowCanceled(
                    run_id=self.run_id, reason=None if reason is None else str(reason)
                )
            )
        self._watchers.emit(
            ev.WorkflowFinish(
                run_id=self.run_id,
                status=status,
                result=self._state.result,
                error=None if self._state.error is None else str(self._state.error),
            )
        )

    def _finish_idle_cancel(self) -> None:
        """Cancel a run that is not executing (pending, suspended, waiting in storage):
        its suspended or waiting steps become ``'canceled'``."""
        self._state.cancel_idle()
        self._status = "canceled"
        self._state.set_suspended([])
        if self._watchers.channels:
            self._emit_finish("canceled")

    def _request_cancel(self, reason: object, *, cancel_scope: bool) -> bool:
        """Mark the run canceled and abort its signal, once; True the first time."""
        if self.cancel_requested:
            return False
        self.cancel_requested = True
        self._interrupt(reason, cancel_scope=cancel_scope)
        return True

    def _interrupt(self, reason: object, *, cancel_scope: bool) -> None:
        if self._trace is not None:
            self._trace.event("cancel", **{_tracing.CANCEL_REASON: _snapshot.reason_text(reason)})
        try:
            self._controller.abort(reason)
        finally:
            # Even when a listener raises what abort() does not catch (KeyboardInterrupt):
            # the run is interrupted before that propagates.
            if cancel_scope and self._scope is not None:
                self._scope.cancel()

    def _cancel_in_flight(self, key: Key, *, keep: str | None = None) -> None:
        """Record the steps in flight under `key` ``'canceled'``, in declaration order."""
        for path in self._state.cancel_in_flight(key, keep):
            if self._watchers.channels:
                self._watchers.emit(
                    ev.WorkflowStepResult(run_id=self.run_id, step_id=path, status="canceled")
                )

    # --- snapshots --------------------------------------------------------------------

    def _to_snapshot(self) -> _snapshot.Snapshot:
        """The whole run as one snapshot: the header of a run stored with what it has."""
        state = self._state
        steps = {path: _snapshot.step_record(r, path) for path, r in state.steps.items()}
        return _snapshot.Snapshot(
            run_id=self.run_id,
            workflow_id=self.workflow.id,
            status=self._status,
            input=state.input,
            result=state.result,
            error=_snapshot.error_record(state.error),
            steps=steps,
            progress=dict(state.progress),
            states=dict(state.states),
            suspended=state.suspended,
            pending_events={name: list(q) for name, q in state.pending_events.items()},
            events_taken=self._events_taken,
            timeout=self._timeout,
            deadline=self._deadline,
            cancel_requested=self.cancel_requested,
            cancel_reason=_snapshot.reason_text(self._controller.signal.reason)
            if self.cancel_requested
            else None,
            outputs=state.outputs,
        )

    def _run_fields(self) -> RunSet:
        """The run's own fields, as its journal stores them (the result aside)."""
        state = self._state
        pending = state.pending_events
        return RunSet(
            status=self._status,
            error=_snapshot.error_record(state.error),
            suspended=state.suspended,
            pending_events={name: list(q) for name, q in pending.items()} if pending else {},
            cancel_requested=self.cancel_requested,
            cancel_reason=_snapshot.reason_text(self._controller.signal.reason)
            if self.cancel_requested
            else None,
            events_taken=self._events_taken,
            timeout=self._timeout,
            deadline=self._deadline,
        )

    def _track(self, *, entries: int = 0, input_stored: bool = True) -> None:
        """Make the run durable from here: note the changes to its tables from now on,
        for its journal (which holds `entries` entries so far)."""
        self._state.track(entries=entries, input_stored=input_stored)

    def _load_row(self, row: RunRow) -> None:
        """Take the state of the run as stored."""
        self._load(_journal.of_row(row))
        self._state.track(entries=len(row.entries)).loaded(self)
        self._stored_status = row.status
        self._forked_from = row.forked_from

    def _load(self, snapshot: _snapshot.Snapshot) -> None:
        """Take the state of a stored snapshot (a run rebuilt in another process, or a
        refresh before resuming). Outputs are converted back to their schemas' types."""
        workflow = self.workflow
        self._status = snapshot.status
        self._state.load(
            input_data=snapshot.input,
            result=_retype(snapshot.result, workflow.output_schema),
            error=_snapshot.error_from_record(snapshot.error),
            steps={
                path: _retype_record(workflow, path, record)
                for path, record in snapshot.steps.items()
            },
            progress={
                path: _retype_progress(workflow, path, value)
                for path, value in snapshot.progress.items()
            },
            states={
                prefix: _retype(state, _state_schema(workflow, prefix))
                for prefix, state in snapshot.states.items()
            },
            suspended=list(snapshot.suspended),
            pending_events={
                name: deque(_retype(data, _event_schema(workflow, name)) for data in queue)
                for name, queue in snapshot.pending_events.items()
            },
            outputs=list(snapshot.outputs),
        )
        self._events_taken = max(self._events_taken, snapshot.events_taken)
        if snapshot.timeout is not None:
            self._timeout, self._deadline = snapshot.timeout, snapshot.deadline
        if snapshot.cancel_requested and not self.cancel_requested:
            # A loaded run reads the stored reason (None: the default AbortError).
            self.cancel_requested = True
            if not self._controller.signal.aborted:
                self._controller.abort(snapshot.cancel_reason)

    @classmethod
    def _from_row(cls, workflow: Graph, row: RunRow, engine: Host) -> Run:
        run = cls(workflow, row.run_id)
        run._engine = engine
        run._load_row(row)
        return run

    # --- helpers of the executor --------------------------------------------------------

    def _is_resuming(self, path: str) -> bool:
        resuming = self._resuming
        return resuming is not None and (resuming == path or resuming.startswith(path + "."))

    def _suspended_leaves(self, path: str) -> list[str]:
        """The suspended steps at or under `path` that hold no suspended step below."""
        return suspended_leaves(((p, r.status) for p, r in self._state.steps.items()), path)

    def _enter_waiting(self) -> None:
        self._waiting += 1
        self._status = "waiting"

    def _leave_waiting(self) -> None:
        self._waiting -= 1
        if self._waiting == 0 and self._status == "waiting":
            self._status = "running"

    async def _wait_event(self, name: str) -> Any:
        while True:
            data = self._state.take_event(name)
            if data is not NO_EVENT:
                return data
            if self._event_arrived is None:
                self._event_arrived = trio.Event()
            await self._event_arrived.wait()

    def _not_resumable(self) -> str:
        if self._status == "canceled":
            return f"run {self.run_id!r} was canceled; a canceled run cannot be resumed"
        if self._executing:
            return f"run {self.run_id!r} is executing; wait for it to suspend before resuming"
        return (
            f"run {self.run_id!r} is {self._status!r}, not 'suspended'; "
            "only a suspended run can be resumed"
        )

    def _suspended_path(self, step: str | Step[Any, Any] | Graph | list[str] | None) -> str:
        if step is None or isinstance(step, str):
            wanted = step
        elif isinstance(step, list | tuple):
            wanted = ".".join(step)
        else:
            wanted = step.id
        return resolve_suspended(self.run_id, self._state.suspended, wanted)


def _retype(value: Any, schema: Any) -> Any:
    """`value` decoded from JSON, back as `schema`'s type where it fits."""
    if schema is None or value is None:
        return value
    try:
        return convert(value, schema, step_id=None, what="stored value")
    except ValidationError:
        return value


def _retype_output(workflow: Graph, path: str, output: Any) -> Any:
    target = _find_step(workflow, path.split("."))
    schema = None if target is None else target.output_schema
    if schema is None or output is None:
        return output
    for candidate in (schema, list.__class_getitem__(schema)):  # a foreach keeps a list
        try:
            return convert(output, candidate, step_id=path, what="stored output")
        except ValidationError:
            continue
    return output


def _retype_record(workflow: Graph, path: str, record: _snapshot.StepRecord) -> StepResult:
    """A stored step record with its output, suspend and resume payloads typed back."""
    result = _snapshot.step_result(record, _retype_output(workflow, path, record.output))
    target = _find_step(workflow, path.split("."))
    if not isinstance(target, Step) or (
        record.suspend_payload is None and record.resume_payload is None
    ):
        return result
    return msgspec.structs.replace(
        result,
        suspend_payload=_retype(record.suspend_payload, target.suspend_schema),
        resume_payload=_retype(record.resume_payload, target.resume_schema),
    )


def _retype_progress(workflow: Graph, path: str, value: Any) -> Any:
    """Stored progress typed back: a loop's last output, a foreach's finished outputs,
    an event's data, so that a recovered run hands its steps what the original did."""
    node = _find_node(workflow, path.split("."))
    if isinstance(node, LoopNode) and isinstance(value, list | tuple) and len(value) == 3:
        iteration, output, done = value
        return (iteration, _retype(output, node.step.output_schema), done)
    if isinstance(node, ForeachNode) and isinstance(value, dict):
        return {index: _retype(out, node.step.output_schema) for index, out in value.items()}
    if isinstance(node, WaitEventNode):
        return _retype(value, node.step.resume_schema)
    return value


def _state_schema(workflow: Graph, prefix: str) -> Any:
    """The state schema of the workflow whose state is kept under `prefix`."""
    if prefix == "":
        return workflow.state_schema
    nested = _find_step(workflow, prefix[:-1].split("."))
    return None if nested is None or isinstance(nested, Step) else nested.state_schema


def _event_schema(workflow: Graph, name: str) -> Any:
    node = _find_event_node(workflow, name)
    return None if node is None else node.step.resume_schema


def _find_node(workflow: Graph, parts: list[str]) -> Node | None:
    """The node that records under a dotted path of ids."""
    head, rest = parts[0], parts[1:]
    for node in workflow.nodes:
        if head not in node_ids(node):
            continue
        if not rest:
            return node
        for candidate in node_steps(node):
            if candidate.id == head and not isinstance(candidate, Step):
                if rest[0].isdigit():  # a foreach item of a nested workflow
                    rest = rest[1:]
                return _find_node(candidate, rest) if rest else None
    return None


def _no_events(run_id: str, status: str) -> RunStateError:
    return RunStateError(run_id, status, f"run {run_id!r} is {status}; it takes no events")


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    if not 0 < timeout < math.inf:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return float(timeout)


def _initial_state(workflow: Graph, initial_state: Any) -> Any:
    schema = workflow.state_schema
    if initial_state is None:
        try:
            return convert({}, schema, step_id=None, what="state")
        except ValidationError as exc:
            raise ValueError(
                f"workflow {workflow.id!r} has a state schema without defaults; "
                "pass start(..., initial_state=...)"
            ) from exc
    return convert(initial_state, schema, step_id=None, what="state")


def _find_step(workflow: Graph, parts: list[str]) -> Step[Any, Any] | Graph | None:
    """The step or nested workflow at a dotted path of ids."""
    head, rest = parts[0], parts[1:]
    for node in workflow.nodes:
        for candidate in node_steps(node):
            if candidate.id == head:
                if not rest:
                    return candidate
                if not isinstance(candidate, Step):  # a nested workflow
                    if rest and rest[0].isdigit():  # a foreach item of a nested workflow
                        rest = rest[1:]
                    return _find_step(candidate, rest)
    return None


def _find_event_node(workflow: Graph, name: str) -> WaitEventNode | None:
    for node in workflow.nodes:
        if isinstance(node, WaitEventNode) and node.name == name:
            return node
        for candidate in node_steps(node):
            if not isinstance(candidate, Step):  # a nested workflow
                found = _find_event_node(candidate, name)
                if found is not None:
                    return found
    return None


async def _follow_elsewhere(run: Run, watcher: ev.Watcher) -> bool:
    """Feed `watcher` from storage if `run` executes (or ended) somewhere else; False
    when its events will be emitted in this process (it is pending or suspended here,
    or executing here)."""
    engine = run._engine
    if engine is None or run._executing:
        return False
    row = await engine.storage.load(run.run_id)
    if engine._live.get(run.run_id) is run:  # claimed here meanwhile: about to execute
        return False
    if run._executing or row.status not in (*EXECUTING_STATUSES, "success", "failed", "canceled"):
        return False
    follower = _follow.StoredEvents(engine.storage, run.run_id, engine.poll_interval, watcher)
    follower.take(row, first=True)
    watcher.refill = follower.refill
    return True
