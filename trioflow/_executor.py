"""Walks a workflow's graph for one run: the step loop, parallelism, loops, retries.

Every node first checks the run's records so that a resumed or recovered run replays:
a step recorded ``'success'`` is not run again. A step in progress is in
the run state's ``in_flight`` under a sort key of declaration indices; whoever interrupts a group
of steps (the run's finalizer, a failing parallel branch) records those still in flight
``'canceled'`` in that key order, never in the order Trio happens to wake them.

Only the control exceptions below leave a node; `trio.Cancelled` passes through
untouched and leaves the interrupted steps in flight for the canceller to record.

The executor reads the run's `ExecutionState` (`_state.py`, one per run, held by each
`Frame`) and changes it only through its methods: this module never assigns into its
tables (`tests/test_layers.py` checks), so a durable run's journal sees every change.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, Protocol

import trio

from . import _events as ev
from ._abort import AbortController, AbortSignal, call_at
from ._clock import wall_time
from ._errors import (
    AbortError,
    EventTimeoutError,
    RunTimeoutError,
    StepTimeoutError,
    ValidationError,
)
from ._graph import (
    BranchNode,
    ForeachNode,
    Graph,
    LoopNode,
    MapNode,
    Node,
    ParallelNode,
    SleepNode,
    StepNode,
    WaitEventNode,
)
from ._realtime import run_in_thread
from ._results import StepResult
from ._schema import convert
from ._state import NO_EVENT, ExecutionState
from ._step import (
    Bail,
    ConditionContext,
    Step,
    StepContext,
    StepRun,
    Suspend,
    call_maybe_async,
)
from ._tracing import ATTEMPT, STEP_ID, Execution

Key = tuple[int, ...]


class Outcome(Exception):
    """Ends the step loop: the run (or a nested workflow) stops here."""


class StopRun(Outcome):
    """The run is canceled: nothing more may start."""


class FailRun(Outcome):
    def __init__(self, error: BaseException, step_id: str | None) -> None:
        self.error = error
        self.step_id = step_id


class SuspendRun(Outcome):
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths


class BailRun(Outcome):
    def __init__(self, result: Any) -> None:
        self.result = result


class RunState(StepRun, Protocol):
    """What the executor reads of a run (`_run.Run`): its execution state (changed
    through that object's methods), its signal, and the few methods of the run itself.
    Written down here, where it is needed: `_run` imports this module, so this one does
    not import `_run` (not even for type checking). A frame holds the `Run` itself: no
    cost at run time."""

    _state: ExecutionState
    _signal: AbortSignal
    _lost: bool
    _fault: FailRun | None
    _timeout_error: RunTimeoutError | None
    _trace: Execution | None

    def _raise_fault(self) -> None: ...
    def _is_resuming(self, path: str) -> bool: ...
    def _suspended_leaves(self, path: str) -> list[str]: ...
    def _cancel_in_flight(self, key: Key, *, keep: str | None = None) -> None: ...
    def _enter_waiting(self) -> None: ...
    def _leave_waiting(self) -> None: ...
    async def _wait_event(self, name: str) -> Any: ...


class Frame:
    """One workflow level of an execution: the run's own workflow or a nested one."""

    __slots__ = ("exec_state", "init_data", "prefix", "run", "workflow")

    def __init__(self, run: RunState, workflow: Graph, prefix: str, init_data: Any) -> None:
        self.run = run
        self.exec_state = run._state  # bound once: the hot path reads it per step
        self.workflow = workflow
        self.prefix = prefix
        self.init_data = init_data

    @property
    def state(self) -> Any:
        return self.exec_state.states.get(self.prefix)

    def set_state(self, value: Any) -> None:
        self.exec_state.set_state(
            self.prefix,
            convert(
                value, self.workflow.state_schema, step_id=self.prefix[:-1] or None, what="state"
            ),
        )

    def get_step_result(self, step: Step[Any, Any] | Graph | str) -> Any:
        step_id = step if isinstance(step, str) else step.id
        record = self.exec_state.steps.get(self.prefix + step_id)
        return record.output if record is not None and record.status == "success" else None


async def execute_workflow(frame: Frame, value: Any, key: Key) -> Any:
    """Run every node of `frame.workflow` in order; the last output, validated."""
    workflow = frame.workflow
    step_id = frame.prefix[:-1] or None
    try:
        value = convert(
            value, workflow.input_schema, step_id=step_id, what="input", workflow_id=workflow.id
        )
    except ValidationError as exc:
        raise FailRun(exc, step_id) from None
    for index, node in enumerate(workflow.nodes):
        value = await execute_node(frame, node, value, (*key, index))
    try:
        return convert(
            value, workflow.output_schema, step_id=step_id, what="output", workflow_id=workflow.id
        )
    except ValidationError as exc:
        raise FailRun(exc, step_id) from None


async def execute_node(frame: Frame, node: Node, value: Any, key: Key) -> Any:
    if type(node) is StepNode:
        return await run_step(frame, node.step, value, key)
    if type(node) is LoopNode:
        return await _run_loop(frame, node, value, key)
    if type(node) is ParallelNode:
        return await _run_parallel(frame, node.steps, value, key)
    if type(node) is BranchNode:
        return await _run_branch(frame, node, value, key)
    if type(node) is ForeachNode:
        return await _run_foreach(frame, node, value, key)
    if type(node) is MapNode:
        return await _run_map(frame, node, value, key)
    if type(node) is SleepNode:
        return await _run_sleep(frame, node, value, key)
    assert type(node) is WaitEventNode
    return await _run_wait_for_event(frame, node, value, key)


# --- steps ------------------------------------------------------------------------------


def _replayed(
    run: RunState, state: ExecutionState, path: str, *, loop: bool = False
) -> StepResult | None:
    """The record of `path` from an earlier execution, if any. Raises if the step must
    not start: the run is canceled, or the step stays suspended (another one resumes).
    A ``'success'`` record means "replay its output" unless `loop` (an earlier iteration).
    """
    record = state.steps.get(path)
    if record is not None:
        if record.status == "success" and not loop:
            return record
        if record.status == "suspended" and not run._is_resuming(path):
            raise SuspendRun(run._suspended_leaves(path))
    if run.cancel_requested or run._lost or run._timeout_error is not None:
        # Canceled, timed out, or another process took the run over (a lost
        # compare-and-set): checked before every step start, not left to the cancel scope.
        raise StopRun
    return record


def _begin(
    run: RunState,
    state: ExecutionState,
    path: str,
    value: Any,
    key: Key,
    previous: StepResult | None = None,
) -> None:
    """Record `path` running (`previous`: its record from an earlier execution).
    (Inlined in `begin_step` and `_run_loop`, the hot path.)"""
    state.begin_step(path, value, key, previous)
    if run._watchers.channels:
        _emit_start(run, path, value)


def _emit_start(run: RunState, path: str, value: Any) -> None:
    run._watchers.emit(ev.WorkflowStepStart(run_id=run.run_id, step_id=path, payload=value))


def _end(run: RunState, path: str, status: str, **fields: Any) -> None:
    """Record a step's outcome: it is no longer in flight."""
    run._state.end_step(path, status, **fields)
    if run._watchers.channels:
        if status == "suspended":
            event: ev.WorkflowEvent = ev.WorkflowStepSuspended(
                run_id=run.run_id, step_id=path, payload=fields.get("suspend_payload")
            )
        else:
            error = fields.get("error")
            event = ev.WorkflowStepResult(
                run_id=run.run_id,
                step_id=path,
                status=status,
                output=fields.get("output"),
                error=None if error is None else str(error),
            )
        run._watchers.emit(event)


async def run_step(
    frame: Frame,
    step: Step[Any, Any] | Graph,
    value: Any,
    key: Key,
    *,
    loop: bool = False,
    resume_data: Any = None,
) -> Any:
    """Run one step (or nested workflow) on `value`, recording it; its output.

    In a loop (`loop=True`) an earlier iteration's ``'success'`` is not a replay.
    """
    started, extra = begin_step(frame, step, value, key, loop=loop, resume_data=resume_data)
    if not started:
        return extra
    return await finish_step(frame, step, frame.prefix + step.id, value, key, extra)


def begin_step(
    frame: Frame,
    step: Step[Any, Any] | Graph,
    value: Any,
    key: Key,
    *,
    loop: bool = False,
    resume_data: Any = None,
) -> tuple[bool, Any]:
    """The synchronous start of a step: ``(False, output)`` when its recorded output is
    replayed, else ``(True, resume_data)`` once it is recorded running."""
    run = frame.run
    state = frame.exec_state
    path = frame.prefix + step.id
    record = _replayed(run, state, path, loop=loop)
    if record is not None:
        if record.status == "success" and not loop:
            return False, record.output
        if record.status == "suspended":
            resume_data = record.resume_payload
    state.begin_step(path, value, key, record)  # _begin, inline
    if run._watchers.channels:
        _emit_start(run, path, value)
    return True, resume_data


async def finish_step(
    frame: Frame,
    step: Step[Any, Any] | Graph,
    path: str,
    value: Any,
    key: Key,
    resume_data: Any,
) -> Any:
    """Execute the step at `path` that `begin_step` started, and record how it ended.
    Its end is stored by the run's next write: before the next step executes (with that
    step's start), or by the finalizer."""
    run = frame.run
    if not isinstance(step, Step):  # a nested workflow
        return await _run_nested(frame, step, path, value, key)
    assert type(step) is Step
    if run._engine is not None:
        await store_before(run, path)
    try:
        if _is_plain(step, frame.workflow):
            # The common case, without the coroutine layer of retries and timeouts.
            ctx = StepContext(frame, value, run._signal, resume_data, 0, False, step)
            try:
                if run._trace is None:
                    output = await step.execute(ctx)
                else:
                    with run._trace.step(path, 1):
                        output = await step.execute(ctx)
            finally:
                if ctx._signal is not None:
                    ctx._close()
        else:
            output = await call_step(frame, step, path, value, resume_data)
    except Exception as exc:
        raise _step_raised(run, step, path, value, exc) from None
    _step_succeeded(frame, path, value, output)
    if run._engine is not None and _others_in_flight(run, path):
        await persist(run)  # no next step will store this end soon: siblings still run
    return output


def _is_plain(step: Step[Any, Any], workflow: Graph) -> bool:
    """Whether `step` is called as it is: async, no schemas, no timeout, no retries."""
    return step.plain and not (
        step.retries if step.retries is not None else workflow.retry_config.attempts
    )


def _step_succeeded(frame: Frame, path: str, value: Any, output: Any) -> None:
    """Record that the step at `path` returned `output` for `value`."""
    run = frame.run
    if run._watchers.channels:
        _end(run, path, "success", output=output, payload=value)
    else:  # the common outcome, without `_end`'s keyword plumbing (the hot path)
        frame.exec_state.succeed(path, output, value)


def _step_raised(
    run: RunState, step: Step[Any, Any], path: str, value: Any, exc: Exception
) -> Outcome:
    """Record how the step at `path` ended when it raised `exc` for `value`; the
    outcome that ends the step loop."""
    if isinstance(exc, Suspend):
        try:
            payload = convert(
                exc.payload, step.suspend_schema, step_id=path, what="suspend payload"
            )
        except ValidationError as error:
            _end(run, path, "failed", error=error)
            return FailRun(error, path)
        _end(run, path, "suspended", suspend_payload=payload, payload=value)
        return SuspendRun([path])
    if isinstance(exc, Bail):
        _end(run, path, "success", output=exc.result, payload=value)
        return BailRun(exc.result)
    if isinstance(exc, AbortError) and (run.cancel_requested or exc is run._signal.reason):
        # ctx.abort(), or the run's own signal raised (throw_if_aborted): canceled.
        _end(run, path, "canceled", payload=value)
        run._request_cancel(None, cancel_scope=True)
        return StopRun()
    _end(run, path, "failed", error=exc, payload=value)
    return FailRun(exc, path)


def _others_in_flight(run: RunState, path: str) -> bool:
    """Whether steps other than those that hold `path` (its nested parents) are in
    flight: parallel branches. Their ends are stored when they come, not with the start
    of the next step, which waits for all of them."""
    return any(not path.startswith(other + ".") for other in run._state.in_flight)


async def persist(run: RunState) -> None:
    """Store the run's state now, if it is durable. (Failures, suspensions and the end
    are stored by the run's finalizer.)"""
    await store_before(run, None)


async def store_before(run: RunState, path: str | None) -> None:
    """Before user code runs (a step's body, a map, a condition): make every completed
    step durable, so that a recovered run never runs one again. The start of the step
    at `path`, about to run, goes in the same write; a write that would hold that start
    alone is not made (a commit per step that protects nothing: the start goes with
    the run's next write)."""
    if run._engine is not None:
        await run._engine._save(run, release=False, unless_only=path)
        if run._fault is not None and path is not None:
            # Some data of the run cannot be stored: it fails here, and the step that
            # was about to run never started.
            run._state.unbegin(path)
        run._raise_fault()  # some of the run's data could not be stored: it fails
        if run._lost:  # another process took the run: nothing more starts here
            raise StopRun


async def call_step(
    frame: Frame, step: Step[Any, Any], path: str, value: Any, resume_data: Any
) -> Any:
    """Execute `step` with its retries and timeout: its validated output, or the
    exception of the last attempt. Records nothing."""
    run = frame.run
    if step.input_schema is not None:  # a step pays for no schema it does not have
        value = convert(value, step.input_schema, step_id=path, what="input")
    config = frame.workflow.retry_config
    retries = step.retries if step.retries is not None else config.attempts
    attempt = 0
    trace = run._trace
    while True:
        try:
            with _NO_TRACE if trace is None else trace.step(path, attempt + 1):
                if step.timeout is None:
                    signal, in_thread = run._signal, not step.is_async
                    # A worker-thread step gets its own signal now: a thread must not
                    # register one on the run's.
                    own = signal._derive() if in_thread else None
                    ctx = StepContext(
                        frame, value, signal, resume_data, attempt, in_thread, step, own
                    )
                    try:
                        if step.is_async:
                            output = await step.execute(ctx)
                        else:
                            output = await run_in_thread(step.execute, ctx)
                    finally:
                        ctx._close()
                else:
                    output = await _call_with_timeout(
                        frame, step, path, value, resume_data, attempt
                    )
                if step.output_schema is not None:
                    output = convert(output, step.output_schema, step_id=path, what="output")
            return output
        except (Suspend, Bail, AbortError):
            raise
        except Exception as exc:
            if attempt >= retries or run.cancel_requested or not config.retries(exc):
                raise
        attempt += 1
        delay = config.delay_before(attempt)
        if trace is not None:
            trace.event("retry", **{STEP_ID: path, ATTEMPT: attempt + 1, "trioflow.delay": delay})
        if delay > 0:
            run._enter_waiting()  # a back-off is a wait: the run is 'waiting'
            try:
                # A cancel ends the back-off at once, even one with a grace period.
                with trio.move_on_after(delay):
                    await run._signal.wait()
            finally:
                run._leave_waiting()
        else:
            await trio.lowlevel.checkpoint()
        if run._timeout_error is not None:  # nor is one of a run past its deadline
            raise run._timeout_error
        if run.cancel_requested or run._lost:  # a canceled step is never retried
            raise AbortError("the run was canceled before this step could be retried")


# The steps of a run that is not traced enter this instead of a span.
_NO_TRACE = contextlib.nullcontext()


async def _call_with_timeout(
    frame: Frame, step: Step[Any, Any], path: str, value: Any, resume_data: Any, attempt: int
) -> Any:
    """Run `step` under its timeout: at the deadline the step's signal aborts with a
    `StepTimeoutError` (listeners clean up first), then its scope is cancelled."""
    assert step.timeout is not None
    own = AbortController()
    signal = AbortSignal.any([frame.run._signal, own.signal])
    # `signal` is already the step's own (`_signal`): the run's and the timeout's.
    ctx = _TimedStepContext(
        frame,
        value,
        signal,
        resume_data,
        attempt,
        not step.is_async,
        step,
        signal,
        _timed_out=own.signal,
    )
    error = StepTimeoutError(path, step.timeout)
    with trio.CancelScope() as scope:

        def time_out() -> None:
            own.abort(error)  # listeners clean up first...
            scope.cancel()  # ...then the step is interrupted

        timer = call_at(trio.current_time() + step.timeout, time_out)
        try:
            if step.is_async:
                output = await step.execute(ctx)
            else:
                output = await run_in_thread(step.execute, ctx)
        finally:
            timer.cancel()  # a step that ended in time leaves nothing in the timer heap
            ctx._close()
    if own.signal.aborted:
        raise error
    return output


class _TimedStepContext(StepContext[Any], kw_only=True):
    """The context of a step with a timeout. Once the timeout has fired, ``ctx.abort()``
    (the usual answer to an aborted signal) raises the `StepTimeoutError`: the step
    fails, and the run is not canceled."""

    _timed_out: AbortSignal  # aborted at the deadline, with the `StepTimeoutError`

    def abort(self, reason: object = None) -> NoReturn:
        if self._timed_out.aborted and not self._frame.run.cancel_requested:
            error = self._timed_out.reason
            assert isinstance(error, StepTimeoutError)
            raise error
        super().abort(reason)


async def _run_nested(frame: Frame, workflow: Graph, path: str, value: Any, key: Key) -> Any:
    run = frame.run
    child = Frame(run, workflow, path + ".", value)
    try:
        output = await execute_workflow(child, value, key)
    except BailRun as exc:
        output = exc.result  # a bail ends the nested workflow, not its parent
    except SuspendRun:
        _end(run, path, "suspended", payload=value)
        raise
    except FailRun as exc:
        _end(run, path, "failed", error=exc.error, payload=value)
        raise FailRun(exc.error, path) from None
    _end(run, path, "success", output=output, payload=value)
    if run._engine is not None and _others_in_flight(run, path):
        await persist(run)
    return output


# --- concurrency ------------------------------------------------------------------------


async def _run_parallel(
    frame: Frame, steps: Sequence[Step[Any, Any] | Graph], value: Any, key: Key
) -> dict[str, Any]:
    """Run `steps` at once; a failure cancels the siblings (recorded ``'canceled'``)."""
    outcomes: list[Any] = [None] * len(steps)
    failed = False

    async def branch(index: int, step: Step[Any, Any] | Graph, resume_data: Any) -> None:
        nonlocal failed
        try:
            outcomes[index] = await finish_step(
                frame, step, frame.prefix + step.id, value, (*key, index), resume_data
            )
        except Outcome as exc:
            outcomes[index] = exc
            if isinstance(exc, FailRun | StopRun) and not failed:
                failed = True
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        # Branches begin here, in declaration order, so their records and start events
        # do not depend on the order in which Trio first schedules their tasks.
        for index, step in enumerate(steps):
            try:
                started, extra = begin_step(frame, step, value, (*key, index))
            except Outcome as exc:
                outcomes[index] = exc
                continue
            if started:
                nursery.start_soon(branch, index, step, extra)
            else:
                outcomes[index] = extra
    if failed:
        frame.run._cancel_in_flight(key)
    return _gather(steps, outcomes)


def _gather(steps: Sequence[Step[Any, Any] | Graph], outcomes: list[Any]) -> dict[str, Any]:
    """The output of finished branches, or the control exception that wins, in
    declaration order: a failure, then a cancel, then a bail, then suspensions."""
    for kind in (FailRun, StopRun, BailRun):
        for outcome in outcomes:
            if isinstance(outcome, kind):
                raise outcome
    suspended = [p for o in outcomes if isinstance(o, SuspendRun) for p in o.paths]
    if suspended:
        raise SuspendRun(suspended)
    return {step.id: outcome for step, outcome in zip(steps, outcomes, strict=True)}


async def _run_branch(frame: Frame, node: BranchNode, value: Any, key: Key) -> dict[str, Any]:
    chosen = []
    await store_before(frame.run, None)  # conditions are user code
    for condition, step in node.branches:
        record = frame.exec_state.steps.get(frame.prefix + step.id)
        # On a replay a branch that ran before is taken again, whatever its condition says now.
        if record is not None or await _call_condition(
            condition, ConditionContext(frame, value), frame.prefix + step.id
        ):
            chosen.append(step)
    if not chosen:
        return {}
    return await _run_parallel(frame, chosen, value, key)


async def _run_loop(frame: Frame, node: LoopNode, value: Any, key: Key) -> Any:
    run = frame.run
    state = frame.exec_state
    path = frame.prefix + node.step.id
    iteration, done = 0, False
    progress = state.progress.get(path)
    if progress is not None:
        iteration, value, done = progress
    step, condition, until = node.step, node.condition, node.until
    nested = not isinstance(step, Step)
    # A plain step of a run in memory, untraced, is awaited here: the hot path of long
    # loops, without `finish_step`'s coroutine layer (nothing to store before or after).
    inline = (
        step
        if isinstance(step, Step)
        and _is_plain(step, frame.workflow)
        and run._engine is None
        and run._trace is None
        else None
    )
    while not done:
        record = _replayed(run, state, path, loop=True)  # begin_step, inline
        suspended = record is not None and record.status == "suspended"
        resume_data = record.resume_payload if suspended else None  # type: ignore[union-attr]
        state.begin_step(path, value, key, record)
        if run._watchers.channels:
            _emit_start(run, path, value)
        if inline is not None:
            ctx = StepContext(frame, value, run._signal, resume_data, 0, False, inline)
            try:
                try:
                    output = await inline.execute(ctx)
                finally:  # as in finish_step: the step's signal goes before its end is recorded
                    if ctx._signal is not None:
                        ctx._close()
            except Exception as exc:
                raise _step_raised(run, inline, path, value, exc) from None
            if run._watchers.channels:  # _step_succeeded, inline
                _end(run, path, "success", output=output, payload=value)
            else:
                state.succeed(path, output, value)
            value = output
        else:
            value = await finish_step(frame, step, path, value, key, resume_data)
        iteration += 1
        try:  # the condition inline: this is the hot path of long loops
            verdict = condition(ConditionContext(frame, value, iteration))
            if type(verdict) is not bool and inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception as exc:
            raise FailRun(exc, path) from None
        done = bool(verdict) if until else not verdict
        state.set_progress(path, (iteration, value, done))
        if nested and not done:
            state.forget_under(path + ".")  # the next iteration runs every child step again
        if run._engine is not None:
            await persist(run)
        else:
            # A loop of steps that never block would hold the scheduler: let other
            # tasks (a cancel() among them) in between iterations.
            await trio.lowlevel.checkpoint()
    return value


async def _call_condition(fn: Callable[[Any], Any], ctx: ConditionContext[Any], path: str) -> Any:
    """A condition's verdict; an exception in it fails the run (naming `path`)."""
    try:
        verdict = fn(ctx)
        if type(verdict) is not bool and inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception as exc:
        raise FailRun(exc, path) from None
    return verdict


async def _run_foreach(frame: Frame, node: ForeachNode, items: Any, key: Key) -> list[Any]:
    """Run the step on each item, at most `concurrency` at once; items start in input
    order, outputs keep it. Recorded as one step under the step's id."""
    run = frame.run
    state = frame.exec_state
    step = node.step
    path = frame.prefix + step.id
    record = _replayed(run, state, path)
    if record is not None and record.status == "success":
        return record.output  # type: ignore[no-any-return]
    if not isinstance(items, list | tuple):
        error = TypeError(
            f"foreach step {path!r} needs a list as input, got {type(items).__name__}"
        )
        _begin(run, state, path, items, key, record)
        _end(run, path, "failed", error=error, payload=items)
        raise FailRun(error, path)
    done = state.start_items(path)  # outputs of finished items by index
    _begin(run, state, path, items, key, record)
    await store_before(run, path)
    slots = trio.Semaphore(node.concurrency)
    failure: list[BaseException] = []
    bailed: list[Bail] = []

    async def item(index: int) -> None:
        try:
            item_key = (*key, index)
            if not isinstance(step, Step):  # a nested workflow
                child = Frame(run, step, f"{path}.{index}.", items[index])
                try:
                    output = await execute_workflow(child, items[index], item_key)
                except BailRun as exc:
                    output = exc.result  # a bail ends the nested workflow, not the run
            else:
                assert type(step) is Step
                output = await call_step(frame, step, path, items[index], None)
        except Bail as exc:
            # ctx.bail() in an item ends the run 'success' with its result, as anywhere.
            if not bailed and not failure:
                bailed.append(exc)
                nursery.cancel_scope.cancel()
        except (AbortError, StopRun):
            # ctx.abort() in an item (or its signal's AbortError): the run is canceled,
            # and the foreach is recorded 'canceled' with it, as finish_step does.
            run._request_cancel(None, cancel_scope=True)
        except (FailRun, Suspend, SuspendRun) as exc:
            failure.append(_foreach_error(path, exc))
            nursery.cancel_scope.cancel()
        except Exception as exc:
            failure.append(exc)
            nursery.cancel_scope.cancel()
        else:
            state.item_done(path, done, index, output)
            if run._watchers.channels:
                run._watchers.emit(
                    ev.WorkflowStepProgress(
                        run_id=run.run_id,
                        step_id=path,
                        status="success",
                        item_index=index,
                        completed=len(done),
                        total=len(items),
                    )
                )
            await persist(run)
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for index in range(len(items)):
            if index in done:
                continue
            await slots.acquire()
            if failure or bailed or run.cancel_requested or run._lost or run._timeout_error:
                slots.release()
                break
            nursery.start_soon(item, index)
    if failure or bailed:
        run._cancel_in_flight(key, keep=path)
    if failure:
        _end(run, path, "failed", error=failure[0], payload=items)
        raise FailRun(failure[0], path)
    if run.cancel_requested or run._lost or run._timeout_error is not None:
        raise StopRun
    if bailed:
        _end(run, path, "success", output=bailed[0].result, payload=items)
        raise BailRun(bailed[0].result)
    outputs = [done[index] for index in range(len(items))]
    _end(run, path, "success", output=outputs, payload=items)
    await persist(run)
    return outputs


def _foreach_error(path: str, exc: BaseException) -> BaseException:
    if isinstance(exc, FailRun):
        return exc.error
    return RuntimeError(  # a Suspend or SuspendRun
        f"a step of foreach {path!r} suspended; suspend is not supported in foreach"
    )


# --- data, time and events ---------------------------------------------------------------


async def _run_map(frame: Frame, node: MapNode, value: Any, key: Key) -> Any:
    run = frame.run
    path = frame.prefix + node.id
    record = _replayed(run, frame.exec_state, path)
    if record is not None and record.status == "success":
        return record.output
    _begin(run, frame.exec_state, path, value, key, record)
    await store_before(run, path)
    try:
        output = await call_maybe_async(node.fn, ConditionContext(frame, value))
    except Exception as exc:
        _end(run, path, "failed", error=exc, payload=value)
        raise FailRun(exc, path) from None
    _end(run, path, "success", output=output, payload=value)
    await persist(run)
    return output


async def _run_sleep(frame: Frame, node: SleepNode, value: Any, key: Key) -> Any:
    """``'waiting'`` until the deadline. Its wall-clock time is kept in the run's
    progress, so a recovered run sleeps only what is left."""
    run = frame.run
    state = frame.exec_state
    path = frame.prefix + node.id
    record = _replayed(run, state, path)
    if record is not None and record.status == "success":
        return record.output
    deadline: float | None = state.progress.get(path)
    if deadline is None:
        when = node.when
        if callable(when):
            await store_before(run, None)
            try:
                when = await call_maybe_async(when, ConditionContext(frame, value))
                deadline = _wall_deadline(path, when, node.until)
            except Exception as exc:  # the function failed or gave no valid time
                raise FailRun(exc, path) from None
        else:
            deadline = _wall_deadline(path, when, node.until)
        state.set_progress(path, deadline)
        wait = when if not node.until else deadline - wall_time()
    else:
        wait = deadline - wall_time()
    await _wait_step(run, path, value, key, trio.sleep, max(0.0, wait))
    _end(run, path, "success", output=value, payload=value)
    await persist(run)
    return value


def _wall_deadline(path: str, when: Any, until: bool) -> float:
    if until:
        if not isinstance(when, dt.datetime) or when.tzinfo is None:
            raise ValueError(
                f"sleep_until step {path!r} needs a timezone-aware datetime, got {when!r}"
            )
        return when.timestamp()
    if not isinstance(when, int | float) or when < 0:
        raise ValueError(f"sleep step {path!r} needs seconds >= 0, got {when!r}")
    return wall_time() + when


async def _wait_step(
    run: RunState, path: str, value: Any, key: Key, wait: Callable[[Any], Awaitable[Any]], arg: Any
) -> Any:
    """Record `path` ``'waiting'`` and the run ``'waiting'`` while ``wait(arg)`` runs."""
    run._state.wait_step(path, value, key)
    if run._watchers.channels:
        run._watchers.emit(ev.WorkflowStepWaiting(run_id=run.run_id, step_id=path))
    run._enter_waiting()
    try:
        await persist(run)
        return await wait(arg)
    finally:
        run._leave_waiting()


async def _run_wait_for_event(frame: Frame, node: WaitEventNode, value: Any, key: Key) -> Any:
    run = frame.run
    state = frame.exec_state
    path = frame.prefix + node.step.id
    record = _replayed(run, state, path)
    if record is not None and record.status == "success":
        return record.output
    data = state.progress.get(path, NO_EVENT)  # an event taken before a crash
    if data is NO_EVENT:
        data = state.take_event(node.name)
    if data is NO_EVENT:
        # The waiting step stays in flight (the step's own start keeps its key): a cancel
        # that comes before the step begins still records it 'canceled'.
        if node.timeout is None:
            data = await _wait_step(run, path, value, key, run._wait_event, node.name)
        else:
            data = await _wait_event_until(run, node, path, value, key)
    state.set_progress(path, data)
    await persist(run)
    return await run_step(frame, node.step, value, key, resume_data=data)


async def _wait_event_until(
    run: RunState, node: WaitEventNode, path: str, value: Any, key: Key
) -> Any:
    """`_wait_step` for an event, bounded by the node's timeout. Its wall-clock deadline
    is kept in the run's progress (beside the path, like a sleep's), so a recovered run
    waits only what is left of it."""
    assert node.timeout is not None
    marker = path + "@deadline"
    state = run._state
    deadline = state.progress.get(marker)
    if deadline is None:  # the first wait: exactly the timeout, as a sleep does
        state.set_progress(marker, wall_time() + node.timeout)
        wait = node.timeout
    else:
        wait = max(0.0, deadline - wall_time())
    with trio.move_on_after(wait) as waited:
        data = await _wait_step(run, path, value, key, run._wait_event, node.name)
    if not waited.cancelled_caught:
        return data
    error = EventTimeoutError(path, node.name, node.timeout)
    _end(run, path, "failed", error=error, payload=value)
    raise FailRun(error, path)
