"""The cancellation sweep: cancel a run at each point where it blocks, check invariants.

A *point* is a moment at which every task is blocked (``wait_all_tasks_blocked``) and
no worker thread is running: the run is waiting for time to pass. Each attempt runs in
its own ``trio.run`` under a `MockClock` that the sweep moves by hand, from one deadline
to the next, so the first (uncancelled) run finds the points in order, and the k-th
cancelled run replays the same schedule up to point k and cancels there. Trio's
scheduler is seeded per attempt so that tasks woken together run in the same order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import inspect
import math
import random
import textwrap
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import msgspec
import trio
import trio.testing

from .. import _events as ev
from .._results import TERMINAL, CancelResult, RunResult
from .._workflow import Workflow
from ._clock import EPOCH, tie_wall_clock
from ._recording import Brief, brief, record_events

if TYPE_CHECKING:
    from .._run import Run

Timeline: TypeAlias = tuple[tuple[float, ev.WorkflowEvent], ...]
Check: TypeAlias = Callable[["SweepAttempt"], object]
Scenario: TypeAlias = Callable[["Run", Any], Awaitable[object]]
Subject: TypeAlias = Workflow | Callable[[], Any]

# While a worker thread runs, wait for it in real time, this long per look.
_THREAD_POLL = 0.001
# A deadline this close is the one just jumped to (floating-point rounding): not a point.
_EPSILON = 1e-9


class SweepPoint(msgspec.Struct, frozen=True, kw_only=True):
    """A point where the run blocks: the ``index``-th of the uncancelled run."""

    index: int
    #: Virtual time (``trio.current_time()``, 0 at the start of the attempt).
    time: float
    #: How many events the run had emitted: ``history`` is that many events long.
    event_count: int
    #: ``(virtual time, event)`` of each event before the point.
    history: Timeline
    #: Paths of the steps started (or waiting) and not yet ended there.
    in_flight: tuple[str, ...]
    #: ``run.status`` there.
    run_status: str

    def __str__(self) -> str:
        flight = ", ".join(self.in_flight) or "nothing"
        return (
            f"point {self.index} at t={self.time:g} after {self.event_count} events "
            f"(run {self.run_status}; in flight: {flight})"
        )

    def brief(self) -> list[Brief]:
        """``(type, step_id, status)`` of each event before the point."""
        return [brief(event) for _, event in self.history]


class SweepAttempt(msgspec.Struct, frozen=True, kw_only=True):
    """One run of the sweep, as a check sees it (after its ``trio.run`` has ended)."""

    #: Where it was cancelled; ``None`` for the first, uncancelled run.
    point: SweepPoint | None
    run: Any  # the trioflow.Run
    #: ``run.result_nowait()`` once the scenario returned.
    result: RunResult
    #: Every event of the run with its virtual time.
    timeline: Timeline
    #: What ``run.cancel()`` returned, and the virtual time it returned at.
    cancel_result: CancelResult | None = None
    cancel_returned_at: float | None = None
    #: What the workflow factory returned beside the workflow (a pool, a temp dir...).
    resources: Any = None
    #: An exception the scenario raised.
    error: BaseException | None = None
    #: True when the attempt stopped because nothing could ever wake the run again.
    hung: bool = False

    @property
    def events(self) -> list[ev.WorkflowEvent]:
        return [event for _, event in self.timeline]

    @property
    def events_after_cancel(self) -> list[ev.WorkflowEvent]:
        """The events emitted after the point where the cancel landed."""
        start = 0 if self.point is None else self.point.event_count
        return self.events[start:]

    def brief(self) -> list[Brief]:
        return [brief(event) for event in self.events]


class SweepFailure(msgspec.Struct, frozen=True, kw_only=True):
    """The errors of the checks (and of the sweep's own checks) at one point."""

    point: SweepPoint | None
    errors: tuple[BaseException, ...]
    attempt: SweepAttempt

    def __str__(self) -> str:
        where = "the uncancelled run" if self.point is None else str(self.point)
        lines = [f"{where}:"]
        lines += [textwrap.indent(f"{type(e).__name__}: {e}", "    ") for e in self.errors]
        if self.point is not None:
            lines.append("    events up to the cancel:")
            lines += [f"      {_line(t, event)}" for t, event in self.point.history]
        lines.append("    events after it:" if self.point is not None else "    events:")
        start = 0 if self.point is None else self.point.event_count
        lines += [f"      {_line(t, event)}" for t, event in self.attempt.timeline[start:]]
        return "\n".join(lines)


class SweepReport(msgspec.Struct, frozen=True, kw_only=True):
    """What `cancellation_sweep` found: every point, and the ones where a check failed."""

    workflow_id: str
    #: Every point of the uncancelled run, in order.
    points: tuple[SweepPoint, ...]
    #: The points where something failed (``point=None``: the uncancelled run).
    failures: tuple[SweepFailure, ...]
    #: The uncancelled run.
    baseline: SweepAttempt
    #: The run cancelled at each point, in the order of `points`.
    attempts: tuple[SweepAttempt, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failed_points(self) -> list[SweepPoint | None]:
        return [failure.point for failure in self.failures]

    def __str__(self) -> str:
        count = len(self.points)
        head = (
            f"cancellation sweep of workflow {self.workflow_id!r}: "
            f"{count} point{'' if count == 1 else 's'}, {len(self.failures)} failed"
        )
        return "\n".join([head, *(str(failure) for failure in self.failures)])


class CancellationSweepError(AssertionError):
    """Raised by `cancellation_sweep` when a check failed at some point; ``.report``
    is the `SweepReport`, and the message lists each failed point with its events."""

    def __init__(self, report: SweepReport) -> None:
        super().__init__(str(report))
        self.report = report


def _line(t: float, event: ev.WorkflowEvent) -> str:
    kind, step_id, status = brief(event)
    return " ".join(part for part in (f"t={t:g}", kind, step_id, status) if part is not None)


def cancel_invariants(attempt: SweepAttempt) -> None:
    """A check of what ``run.cancel()`` promises, for a run cancelled at a point (pass
    it among your checks):

    ``cancel()`` returned ``"Workflow run canceled"`` and the run ended ``'canceled'``;
    no step started, waited or suspended after the cancel; no step is left ``'running'``
    or ``'waiting'``; exactly one ``workflow-canceled``, followed by a
    ``workflow-finish`` with status ``'canceled'``. Nothing to check for the
    uncancelled run, or at a point where the run had already ended.
    """
    point = attempt.point
    if point is None or point.run_status in TERMINAL:
        return
    expected = CancelResult(message="Workflow run canceled", status="canceled")
    assert attempt.cancel_result == expected, f"cancel() returned {attempt.cancel_result!r}"
    assert attempt.result.status == "canceled", f"the run ended {attempt.result.status!r}"
    late = [
        brief(event)
        for event in attempt.events_after_cancel
        if event.type in ("workflow-step-start", "workflow-step-waiting", "workflow-step-suspended")
    ]
    assert not late, f"steps went on after the cancel: {late}"
    left = {path: r.status for path, r in attempt.result.steps.items()}
    left = {path: status for path, status in left.items() if status in ("running", "waiting")}
    assert not left, f"steps left unfinished: {left}"
    kinds = [event.type for event in attempt.events]
    assert kinds.count("workflow-canceled") == 1, f"{kinds.count('workflow-canceled')} cancels"
    after = attempt.events[kinds.index("workflow-canceled") + 1 :]
    assert after and isinstance(after[0], ev.WorkflowFinish) and after[0].status == "canceled", (
        "workflow-canceled is not followed by workflow-finish('canceled')"
    )


async def _start(run: Run, input_data: Any) -> RunResult:
    return await run.start(input_data)


def cancellation_sweep(
    workflow: Subject,
    input_data: Any = None,
    *,
    check: Check | Sequence[Check],
    scenario: Scenario | None = None,
    grace_period: float = 0,
    epoch: dt.datetime = EPOCH,
    max_points: int = 1000,
    raise_on_failure: bool = True,
) -> SweepReport:
    """Run `workflow` once to find every point where it blocks, then once per point,
    cancelling there with ``run.cancel(grace_period=grace_period)``; after each run call
    each of `check` with a `SweepAttempt`. Returns a `SweepReport`; raises
    `CancellationSweepError` (an ``AssertionError`` listing each failed point with the
    events up to it) if any check failed, unless ``raise_on_failure=False``.

    - `workflow`: a committed workflow, or a function (sync or async) called at the
      start of each attempt, inside its ``trio.run``, that returns a fresh workflow or
      ``(workflow, resources)``: `resources` (a pool, a temp dir...) reach the checks as
      ``attempt.resources``, so each attempt starts clean.
    - `check`: one function or a list; each takes the `SweepAttempt` and raises
      (``assert``) or returns ``False`` when an invariant is broken. Checks run after the
      attempt's ``trio.run`` has returned, so nothing of it is still executing. They run
      on the uncancelled run too (``attempt.point is None``). `cancel_invariants` checks
      what ``run.cancel()`` promises.
    - `scenario`: ``async def (run, input_data)`` that drives the run (default:
      ``await run.start(input_data)``), e.g. to send an event at some virtual time or
      resume a suspended step. The sweep's points are those reached while it runs.

    Every attempt runs in its own ``trio.run`` with a `MockClock` (time starts at 0) and
    trioflow's wall clock tied to it (`tie_wall_clock` with `epoch`). Call the sweep from
    a plain ``def test_...``, not from inside ``trio.run``. The run's id is ``"sweep"``.
    Steps that run in worker threads are waited for in real time; a point is never taken
    while one runs.
    """
    if _in_trio_run():
        raise RuntimeError(
            "cancellation_sweep() calls trio.run() once per attempt: call it from a plain "
            "'def test_...', not from an async test or inside trio.run()"
        )
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points!r}")
    checks = [check] if callable(check) else list(check)
    if not checks or not all(callable(c) for c in checks):
        raise TypeError("check= takes a function of the SweepAttempt, or a list of them")
    plan = _Plan(workflow, input_data, scenario or _start, grace_period, epoch, max_points)

    baseline, workflow_id, points = plan.attempt(None, ())
    if baseline.error is not None:
        raise RuntimeError(
            f"the uncancelled run of the sweep raised {baseline.error!r}; "
            "fix the workflow or the scenario first"
        ) from baseline.error
    if baseline.hung:
        last = points[-1] if points else None
        raise RuntimeError(
            f"the uncancelled run of workflow {workflow_id!r} blocks forever at {last}: "
            "nothing can wake it (an event never sent? pass scenario= to send it)"
        )
    if len(points) > max_points:
        raise ValueError(
            f"the run of workflow {workflow_id!r} blocks at more than {max_points} points "
            "(an endless loop?); raise max_points= if that is expected"
        )
    failures: list[SweepFailure] = []
    attempts: list[SweepAttempt] = []
    errors = _run_checks(checks, baseline)
    if errors:
        failures.append(SweepFailure(point=None, errors=tuple(errors), attempt=baseline))
    for point in points:
        attempt, _, _ = plan.attempt(point.index, points)
        attempts.append(attempt)
        errors = plan.problems(attempt, point) + _run_checks(checks, attempt)
        if errors:
            failures.append(SweepFailure(point=point, errors=tuple(errors), attempt=attempt))
    report = SweepReport(
        workflow_id=workflow_id,
        points=tuple(points),
        failures=tuple(failures),
        baseline=baseline,
        attempts=tuple(attempts),
    )
    if failures and raise_on_failure:
        raise CancellationSweepError(report)
    return report


def _run_checks(checks: list[Check], attempt: SweepAttempt) -> list[BaseException]:
    errors: list[BaseException] = []
    for check in checks:
        try:
            verdict = check(attempt)
        except Exception as exc:
            errors.append(exc)
        else:
            if verdict is False:
                name = getattr(check, "__name__", repr(check))
                errors.append(AssertionError(f"check {name} returned False"))
    return errors


def _in_trio_run() -> bool:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


@contextlib.contextmanager
def _seeded_scheduler(seed: int) -> Iterator[None]:
    """Seed Trio's scheduler (it shuffles each batch of woken tasks with a module-level
    ``random.Random``, as pytest-trio seeds it under Hypothesis), then restore it."""
    rng = getattr(importlib.import_module("trio._core._run"), "_r", None)
    if not isinstance(rng, random.Random):
        yield
        return
    state = rng.getstate()
    rng.seed(seed)
    try:
        yield
    finally:
        rng.setstate(state)


def _in_flight(history: Sequence[tuple[float, ev.WorkflowEvent]]) -> tuple[str, ...]:
    open_steps: dict[str, None] = {}
    for _, event in history:
        if event.type in ("workflow-step-start", "workflow-step-waiting"):
            open_steps[getattr(event, "step_id", "")] = None
        elif event.type in ("workflow-step-result", "workflow-step-suspended"):
            open_steps.pop(getattr(event, "step_id", ""), None)
    return tuple(open_steps)


class _Plan:
    """What every attempt shares, and one attempt's ``trio.run``."""

    def __init__(
        self,
        subject: Subject,
        input_data: Any,
        scenario: Scenario,
        grace_period: float,
        epoch: dt.datetime,
        max_points: int,
    ) -> None:
        self.subject = subject
        self.input_data = input_data
        self.scenario = scenario
        self.grace_period = grace_period
        self.epoch = epoch
        self.max_points = max_points

    def attempt(
        self, target: int | None, baseline: Sequence[SweepPoint]
    ) -> tuple[SweepAttempt, str, list[SweepPoint]]:
        clock = trio.testing.MockClock()  # moved by hand, deadline to deadline
        with tie_wall_clock(self.epoch), _seeded_scheduler(0):
            return trio.run(self._attempt, clock, target, baseline, clock=clock)

    async def _build(self) -> tuple[Workflow, Any]:
        built = self.subject() if not isinstance(self.subject, Workflow) else self.subject
        if inspect.isawaitable(built):
            built = await built
        workflow, resources = built if isinstance(built, tuple) else (built, None)
        if not isinstance(workflow, Workflow):
            raise TypeError(
                "cancellation_sweep() takes a committed workflow, or a function returning "
                f"one or (workflow, resources); got {workflow!r}"
            )
        return workflow, resources

    async def _attempt(
        self,
        clock: trio.testing.MockClock,
        target: int | None,
        baseline: Sequence[SweepPoint],
    ) -> tuple[SweepAttempt, str, list[SweepPoint]]:
        workflow, resources = await self._build()
        run = await workflow.create_run(run_id="sweep")
        points: list[SweepPoint] = []
        state: dict[str, Any] = {"hung": False, "error": None}
        limiter = trio.to_thread.current_default_thread_limiter()

        async def cancel_at(point: SweepPoint) -> None:
            with trio.CancelScope(shield=True):  # once asked, let the cancel finish
                state["cancel_result"] = await run.cancel(grace_period=self.grace_period)
                state["cancel_returned_at"] = trio.current_time()

        async def monitor(nursery: trio.Nursery) -> None:
            canceled = False
            while True:
                await trio.testing.wait_all_tasks_blocked()
                if limiter.borrowed_tokens:  # a worker thread runs: wait for it
                    await trio.testing.wait_all_tasks_blocked(_THREAD_POLL)
                    continue
                delay = trio.lowlevel.current_statistics().seconds_to_next_deadline
                if not canceled and not delay < _EPSILON:
                    history = tuple(recording.timeline)
                    point = SweepPoint(
                        index=len(points),
                        time=trio.current_time(),
                        event_count=len(history),
                        history=history,
                        in_flight=_in_flight(history),
                        run_status=run.status,
                    )
                    points.append(point)
                    if point.index == target:
                        canceled = True
                        nursery.start_soon(cancel_at, point)
                        continue
                    if len(points) > self.max_points:
                        nursery.cancel_scope.cancel()
                        return
                if math.isinf(delay):
                    state["hung"] = True
                    nursery.cancel_scope.cancel()
                    return
                clock.jump(max(0.0, delay))

        async with record_events(run) as recording:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(monitor, nursery)
                try:
                    await self.scenario(run, self.input_data)
                except Exception as exc:
                    state["error"] = exc
                nursery.cancel_scope.cancel()
            timeline = tuple(recording.timeline)
        attempt = SweepAttempt(
            point=None if target is None else baseline[target],
            run=run,
            result=run.result_nowait(),
            timeline=timeline,
            cancel_result=state.get("cancel_result"),
            cancel_returned_at=state.get("cancel_returned_at"),
            resources=resources,
            error=state["error"],
            hung=state["hung"],
        )
        return attempt, workflow.id, points

    def problems(self, attempt: SweepAttempt, point: SweepPoint) -> list[BaseException]:
        """What went wrong with the attempt itself, before any check."""
        problems: list[BaseException] = []
        if attempt.cancel_result is None:
            problems.append(
                AssertionError(
                    f"the cancelled run never reached {point} (the workflow does not run the "
                    "same way twice: does it read the real clock, or random numbers?)"
                )
            )
        else:
            seen = attempt.timeline[: point.event_count]
            if [brief(e) for _, e in seen] != point.brief() or len(seen) != point.event_count:
                problems.append(
                    AssertionError(
                        f"the cancelled run reached {point} with other events before it "
                        f"({[brief(e) for _, e in seen]}): the workflow is not deterministic"
                    )
                )
        if attempt.hung:
            problems.append(AssertionError("the run never ended after the cancel: it hangs"))
        if attempt.error is not None:
            problems.append(attempt.error)
        return problems
