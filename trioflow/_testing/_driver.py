"""Drivers: run a workflow up to a chosen point, then let the test act there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from .. import _events as ev
from .._results import RunResult
from ._recording import Recording, brief, record_events

if TYPE_CHECKING:
    from .._run import Run
    from .._step import Step
    from .._workflow import Workflow


class Driver:
    """Runs a run in a nursery that the ``async with drive(...)`` block owns, and stops
    the test (not the run) at chosen points: ``await driver.until_step_starts("x")``
    returns once step ``x`` has started *and* every task is blocked again, at the same
    virtual time, so the test can cancel, resume or send an event exactly there.

    Each ``until_*`` looks for the next matching event after the one the previous call
    returned, so calling ``until_step_starts("poll")`` twice finds two iterations. If
    the run stops executing before the point is reached, it raises ``AssertionError``
    with the events seen.
    """

    __slots__ = ("_cursor", "_error", "_executions", "_nursery", "_results", "recording", "run")

    def __init__(self, run: Run, recording: Recording, nursery: trio.Nursery) -> None:
        self.run = run
        self.recording = recording
        self._nursery = nursery
        self._cursor = 0
        self._executions = 0
        self._results: list[RunResult] = []
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<trioflow.testing.Driver of run {self.run.run_id!r}: {self.run.status}>"

    @property
    def events(self) -> list[ev.WorkflowEvent]:
        """Every event of the run since the driver started it."""
        return self.recording.events

    @property
    def executing(self) -> bool:
        """Whether an execution (the start, or a `resume_soon`) is still going on."""
        return self._executions > 0

    # --- waiting for a point --------------------------------------------------------------

    async def until_step_starts(self, step_id: str) -> ev.WorkflowStepStart:
        """Wait until step `step_id` (a path such as ``"child.step"``) starts."""
        event = await self.until_event("workflow-step-start", step_id)
        assert isinstance(event, ev.WorkflowStepStart)
        return event

    async def until_step_ends(self, step_id: str) -> ev.WorkflowStepResult:
        """Wait until step `step_id` records its result (success, failure or cancel)."""
        event = await self.until_event("workflow-step-result", step_id)
        assert isinstance(event, ev.WorkflowStepResult)
        return event

    async def until_waiting(self, step_id: str) -> ev.WorkflowStepWaiting:
        """Wait until `step_id` (a sleep, a ``sleep_until`` or an event wait) is waiting."""
        event = await self.until_event("workflow-step-waiting", step_id)
        assert isinstance(event, ev.WorkflowStepWaiting)
        return event

    async def until_suspended(self, step_id: str) -> ev.WorkflowStepSuspended:
        """Wait until `step_id` suspends and the run has stopped executing, so that
        ``run.resume()`` (or `resume_soon`) can take it on from there."""
        event = await self.until_event("workflow-step-suspended", step_id, settle=False)
        while self._executions:
            await self.recording._changed.wait()
        await trio.testing.wait_all_tasks_blocked()
        self._raise_error()
        assert isinstance(event, ev.WorkflowStepSuspended)
        return event

    async def until_event(
        self, event_type: str, step_id: str | None = None, *, settle: bool = True
    ) -> ev.WorkflowEvent:
        """Wait for the next event of `event_type` (of `step_id`, if given); then, with
        `settle`, until every task is blocked (``wait_all_tasks_blocked``)."""

        def match(event: ev.WorkflowEvent) -> bool:
            return event.type == event_type and (
                step_id is None or getattr(event, "step_id", None) == step_id
            )

        what = event_type if step_id is None else f"{event_type} of {step_id!r}"
        return await self._until(match, what, settle=settle)

    async def _until(
        self, match: Callable[[ev.WorkflowEvent], bool], what: str, *, settle: bool
    ) -> ev.WorkflowEvent:
        while True:
            self._raise_error()
            events = self.recording.events
            for index in range(self._cursor, len(events)):
                if match(events[index]):
                    self._cursor = index + 1
                    if settle:
                        await trio.testing.wait_all_tasks_blocked()
                        self._raise_error()
                    else:
                        await trio.lowlevel.checkpoint()
                    return events[index]
            if not self._executions:
                seen = [brief(event) for event in events]
                raise AssertionError(
                    f"run {self.run.run_id!r} stopped executing ({self.run.status!r}) "
                    f"without a {what} after the last point; its events: {seen}"
                )
            await self.recording._changed.wait()

    # --- acting there -------------------------------------------------------------------

    def resume_soon(
        self,
        step: str | Step[Any, Any] | Workflow | list[str] | None = None,
        resume_data: Any = None,
    ) -> None:
        """Start ``run.resume(step, resume_data)`` in the driver's nursery and return at
        once; follow it with more ``until_*`` calls or `result`."""
        self._launch(self.run.resume, step, resume_data)

    async def result(self) -> RunResult:
        """Wait until the run stops executing; the result of its latest execution.

        An exception raised by ``run.start()`` or ``run.resume()`` is raised here."""
        while self._executions:
            await self.recording._changed.wait()
        await trio.lowlevel.checkpoint()
        self._raise_error()
        return self._results[-1]

    # --- the executions -----------------------------------------------------------------

    def _launch(self, fn: Callable[..., Awaitable[RunResult]], *args: Any, **kwargs: Any) -> None:
        self._executions += 1
        self._nursery.start_soon(self._execute, fn, args, kwargs)

    async def _execute(
        self, fn: Callable[..., Awaitable[RunResult]], args: Any, kwargs: dict[str, Any]
    ) -> None:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._error = exc
        else:
            self._results.append(result)
        finally:
            self._executions -= 1
            self.recording._poke()

    def _raise_error(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error


@asynccontextmanager
async def drive(
    run: Run, input_data: Any = None, *, initial_state: Any = None
) -> AsyncIterator[Driver]:
    """``async with drive(run, input_data) as driver:`` starts ``run.start(input_data)``
    in a nursery this block owns, recording every event, and gives a `Driver`.

    Leaving the block normally waits, as a nursery does, until the run stops executing
    (ended or suspended): cancel it, or wait for it with ``await driver.result()``.
    Leaving it by an exception interrupts the run from outside (it is not marked
    ``'canceled'``) and re-raises the exception as it came.
    """
    body_error: BaseException | None = None
    async with record_events(run) as recording:
        async with trio.open_nursery() as nursery:
            driver = Driver(run, recording, nursery)
            driver._launch(run.start, input_data, initial_state=initial_state)
            try:
                yield driver
            except BaseException as exc:
                body_error = exc
                nursery.cancel_scope.cancel()
        if body_error is not None:
            raise body_error
        driver._raise_error()
