"""Steps: typed units of work, and the context each execution receives.

A step describes; the executor runs it. A context reaches the execution only through
`StepFrame` and `StepRun` below, the few things of a frame and a run it uses, written
down here where they are needed (STYLE.md #3): the executor and the run import this
module, so it imports neither. They cost nothing at run time: a context holds the
executor's `Frame` itself, and a protocol is only read by the type checker.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Generic, NoReturn, Protocol, TypeVar, overload

import msgspec
import trio

from . import _events as ev
from ._abort import AbortSignal
from ._errors import AbortError
from ._logs import PendingLogs, StepLogger
from ._retry import check_count, check_timeout
from ._state import ExecutionState

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")

Execute = Callable[["StepContext[Any]"], Awaitable[Any]] | Callable[["StepContext[Any]"], Any]


class Suspend(Exception):
    """Raised by `StepContext.suspend`; the executor records the step ``'suspended'``."""

    def __init__(self, payload: Any) -> None:
        self.payload = payload


class Bail(Exception):
    """Raised by `StepContext.bail`; the run ends ``'success'`` with ``result``."""

    def __init__(self, result: Any) -> None:
        self.result = result


def check_id(kind: str, id: object) -> str:
    if not isinstance(id, str) or not id:
        raise TypeError(f"a {kind} id must be a non-empty string, got {id!r}")
    if "." in id:
        raise ValueError(
            f"{kind} id {id!r} contains '.', which separates nested step paths; "
            "use '-' or '_' instead"
        )
    return id


class Step(Generic[InputT, OutputT]):
    """A unit of work with typed input and output. Build one with `create_step`."""

    __slots__ = (
        "description",
        "execute",
        "id",
        "input_schema",
        "is_async",
        "output_schema",
        "plain",
        "resume_schema",
        "retries",
        "store_output_events",
        "suspend_schema",
        "timeout",
    )

    def __init__(
        self,
        *,
        id: str,
        execute: Execute,
        input_schema: Any = None,
        output_schema: Any = None,
        resume_schema: Any = None,
        suspend_schema: Any = None,
        retries: int | None = None,
        timeout: float | None = None,
        description: str | None = None,
        store_output_events: bool = False,
    ) -> None:
        self.id = check_id("step", id)
        if not callable(execute):
            raise TypeError(f"step {id!r}: execute must be a function of the context")
        if retries is not None:
            check_count(f"step {id!r}", "retries", retries)
        timeout = check_timeout(f"step {id!r}", timeout)
        if not isinstance(store_output_events, bool):
            raise TypeError(
                f"step {id!r}: store_output_events must be True or False, "
                f"got {store_output_events!r}"
            )
        self.store_output_events = store_output_events
        self.execute = execute
        self.is_async = inspect.iscoroutinefunction(execute)
        self.input_schema = input_schema
        self.output_schema = output_schema
        self.resume_schema = resume_schema
        self.suspend_schema = suspend_schema
        self.retries = retries
        self.timeout = timeout
        self.description = description
        # An async step without schemas or a timeout: the executor calls it directly.
        self.plain = (
            self.is_async and input_schema is None and output_schema is None and timeout is None
        )

    def __repr__(self) -> str:
        return f"<trioflow.Step {self.id!r}>"


def create_step(
    *,
    id: str,
    execute: Execute,
    input_schema: Any = None,
    output_schema: Any = None,
    resume_schema: Any = None,
    suspend_schema: Any = None,
    retries: int | None = None,
    timeout: float | None = None,
    description: str | None = None,
    store_output_events: bool = False,
) -> Step[Any, Any]:
    """A step. `execute` is ``async def (ctx) -> output``; a plain ``def`` runs in a
    worker thread. ``retries=None`` takes the workflow's `RetryConfig`.
    ``store_output_events=True`` stores what it writes with ``ctx.write`` with the
    run (the newest 1000), so watchers in other processes see it too."""
    return Step(
        id=id,
        execute=execute,
        input_schema=input_schema,
        output_schema=output_schema,
        resume_schema=resume_schema,
        suspend_schema=suspend_schema,
        retries=retries,
        timeout=timeout,
        description=description,
        store_output_events=store_output_events,
    )


def step(
    *,
    id: str,
    input_schema: Any = None,
    output_schema: Any = None,
    resume_schema: Any = None,
    suspend_schema: Any = None,
    retries: int | None = None,
    timeout: float | None = None,
    description: str | None = None,
    store_output_events: bool = False,
) -> Callable[[Execute], Step[Any, Any]]:
    """`create_step` as a decorator: the decorated function is `execute`."""

    def decorate(execute: Execute) -> Step[Any, Any]:
        return create_step(
            id=id,
            execute=execute,
            input_schema=input_schema,
            output_schema=output_schema,
            resume_schema=resume_schema,
            suspend_schema=suspend_schema,
            retries=retries,
            timeout=timeout,
            description=description or inspect.getdoc(execute),
            store_output_events=store_output_events,
        )

    return decorate


class Saver(Protocol):
    """What a run's steps need of the engine that stores the run (`_engine.Engine`).
    `run` is the `_run.Run`, which this module cannot name."""

    async def _save(self, run: Any, *, release: bool, unless_only: str | None = None) -> None: ...


class StepRun(Protocol):
    """What a context reads and writes of its run (`_run.Run`)."""

    run_id: str
    cancel_requested: bool
    _state: ExecutionState
    _watchers: ev.Watchers
    _logs: PendingLogs | None

    @property
    def _engine(self) -> Saver | None: ...
    def _request_cancel(self, reason: object, *, cancel_scope: bool) -> bool: ...


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


class StepFrame(Protocol):
    """What a context reads of the frame it is made in (`_executor.Frame`): one workflow
    level of an execution."""

    @property
    def run(self) -> StepRun: ...
    @property
    def workflow(self) -> _Identified: ...
    @property
    def prefix(self) -> str: ...
    @property
    def init_data(self) -> Any: ...
    @property
    def state(self) -> Any: ...
    def set_state(self, value: Any) -> None: ...
    def get_step_result(self, step: Step[Any, Any] | str) -> Any: ...


class StepContext(msgspec.Struct, Generic[InputT], eq=False):
    """What a step's `execute` receives.

    A `msgspec.Struct` for its speed alone: one is made for every step execution (every
    iteration of a loop), and a Struct is made by C code, in about half the time of an
    `__init__` in Python. It compares by identity, like any context."""

    _frame: StepFrame
    input_data: InputT
    _parent_signal: AbortSignal  # the run's: the step's own `_signal` derives from it
    resume_data: Any
    retry_count: int
    _in_thread: bool
    _step: Step[Any, Any]  # what `write` needs, looked up only when a step writes
    # The step's own signal, made on first use (most steps never look at it). A
    # worker-thread step is given it when made: a thread must not register it on the run's.
    _signal: AbortSignal | None = None

    @property
    def abort_signal(self) -> AbortSignal:
        """This step's signal: aborted with the run's (`Run.cancel`) or, for a step with
        a timeout, at its deadline. Listeners added to it are dropped when the step
        ends, so a step that never removes its listener leaves nothing behind."""
        signal = self._signal
        if signal is None:
            signal = self._signal = self._parent_signal._derive()
        return signal

    def _close(self) -> None:
        """The step has ended: its signal stops following the run's."""
        if self._signal is not None:
            self._signal._release()

    async def write(self, data: Any) -> None:
        """Send `data` to the run's watchers now, as a ``workflow-step-output`` event,
        in order with the run's other events: tokens of a language model, progress
        lines, partial results.

        A checkpoint: a cancellation interrupts it, and then nothing is sent. It never
        waits for a watcher (each has a bounded buffer). A step created with
        ``store_output_events=True`` also stores `data` with the run (it must then be
        data msgspec can encode); a durable run writes it to storage before this
        returns. From a worker-thread step: ``trio.from_thread.run(ctx.write, data)``.
        """
        await trio.lowlevel.checkpoint()
        run = self._frame.run
        path = self._frame.prefix + self._step.id
        store = self._step.store_output_events
        if store:
            try:  # as JSON and back: what is stored is what another process reads
                stored = msgspec.json.decode(msgspec.json.encode(data))
            except (TypeError, UnicodeEncodeError, msgspec.EncodeError) as exc:
                raise TypeError(
                    f"step {path!r} stores its output events "
                    f"(store_output_events=True), so ctx.write() takes data msgspec can "
                    f"encode (Structs, dicts, lists, str, numbers...): {exc}"
                ) from exc
            run._state.add_output(path, stored)
        watchers = run._watchers
        if watchers.channels:
            watchers.emit(ev.WorkflowStepOutput(run_id=run.run_id, step_id=path, data=data))
        if store and run._engine is not None:
            # Shielded and bounded like every snapshot write: once emitted, stored.
            await run._engine._save(run, release=False)

    @property
    def logger(self) -> StepLogger:
        """A `logging.Logger`-like object (a `logging.LoggerAdapter` of the
        ``trioflow.steps`` logger) whose records carry ``run_id``, ``step_id`` and
        ``attempt`` (1 for the first). A durable run also stores its records at INFO and
        above, the last 1000 per run: ``trioflow runs logs RUN_ID`` shows them."""
        run = self._frame.run
        pending = run._logs
        if pending is None and run._engine is not None:
            pending = run._logs = PendingLogs()
        return StepLogger(
            run.run_id, self._frame.prefix + self._step.id, self.retry_count + 1, pending
        )

    @property
    def run_id(self) -> str:
        return self._frame.run.run_id

    @property
    def workflow_id(self) -> str:
        return self._frame.workflow.id

    @property
    def state(self) -> Any:
        return self._frame.state

    def set_state(self, value: Any) -> None:
        self._frame.set_state(value)

    def get_step_result(self, step: Step[Any, Any] | str) -> Any:
        """The output of an earlier step of this workflow, or ``None`` if it has none."""
        return self._frame.get_step_result(step)

    def get_init_data(self) -> Any:
        """The input this workflow started with."""
        return self._frame.init_data

    def abort(self, reason: object = None) -> NoReturn:
        """End the run ``'canceled'``: abort its signal, cancel its scope, and raise."""
        run = self._frame.run
        if self._in_thread:
            trio.from_thread.run_sync(partial(run._request_cancel, reason, cancel_scope=True))
        else:
            run._request_cancel(reason, cancel_scope=True)
        raise AbortError(reason=reason)

    def suspend(self, payload: Any = None) -> NoReturn:
        """Pause the run here; `Run.resume` runs this step again with ``resume_data``."""
        raise Suspend(payload)

    def bail(self, result: Any) -> NoReturn:
        """End the run ``'success'`` now, with `result` as its output."""
        raise Bail(result)


class ConditionContext(msgspec.Struct, Generic[InputT], eq=False):
    """What a condition (`branch`, `dowhile`, `dountil`) or a `map` function receives.
    (A `msgspec.Struct`, as `StepContext` is: one is made for every loop iteration.)"""

    _frame: StepFrame
    input_data: InputT
    iteration_count: int = 0

    @property
    def state(self) -> Any:
        return self._frame.state

    def get_step_result(self, step: Step[Any, Any] | str) -> Any:
        return self._frame.get_step_result(step)

    def get_init_data(self) -> Any:
        return self._frame.init_data


@overload
async def call_maybe_async(fn: Callable[[Any], Awaitable[OutputT]], arg: Any) -> OutputT: ...
@overload
async def call_maybe_async(fn: Callable[[Any], OutputT], arg: Any) -> OutputT: ...
async def call_maybe_async(fn: Callable[[Any], Any], arg: Any) -> Any:
    """Call a condition or map function, sync or async."""
    value = fn(arg)
    if type(value) is bool:  # the usual verdict: never awaitable, skip the slow ABC check
        return value
    if inspect.isawaitable(value):
        return await value
    return value
