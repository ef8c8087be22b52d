"""Cancellation (SPEC §3), one test (or a few) per clause, each deterministic under the
``autojump_clock`` fixture: the virtual time at which things happen is asserted exactly.

Clause map: §3.1 listeners · §3.2 the cancel scope and grace periods · §3.3 no further
step · §3.4 records, events, return · §3.5 idle runs · §3.6 finished runs and the one
terminal transition · then the paragraphs after the list (start of a canceled run,
ctx.abort(), nested workflows, outside cancellation, determinism, thread steps, status).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

import trioflow

CANCELED = trioflow.CancelResult(message="Workflow run canceled", status="canceled")

Log = list[tuple[str, str, float]]


def sleeper(
    step_id: str, seconds: float, log: Log | None = None, *, output: Any = None, **options: Any
) -> trioflow.Step[Any, Any]:
    """Sleeps `seconds`, returns `output` (default its id); logs start/done/interrupted."""

    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        if log is not None:
            log.append(("start", step_id, trio.current_time()))
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            if log is not None:
                log.append(("interrupted", step_id, trio.current_time()))
            raise
        if log is not None:
            log.append(("done", step_id, trio.current_time()))
        return step_id if output is None else output

    return trioflow.create_step(id=step_id, execute=execute, **options)


def linear(*steps: trioflow.Step[Any, Any], **options: Any) -> trioflow.Workflow:
    workflow = trioflow.create_workflow(id="wf", **options)
    for step in steps:
        workflow.then(step)
    return workflow.commit()


async def collect(run: trioflow.Run, into: list[Any], *, task_status: Any) -> None:
    async with run.watch() as events:
        task_status.started()
        async for event in events:
            into.append(event)


def shape(events: list[Any]) -> list[tuple[str, str | None, str | None]]:
    return [(e.type, getattr(e, "step_id", None), getattr(e, "status", None)) for e in events]


class Scenario:
    """Starts a run in a nursery with a watcher; `cancel_at(t)` cancels it at virtual
    time `t` (relative to the start) and keeps what `cancel()` returned and when."""

    def __init__(self, run: trioflow.Run) -> None:
        self.run = run
        self.events: list[Any] = []
        self.result: trioflow.RunResult | None = None
        self.cancel_result: trioflow.CancelResult | None = None
        self.canceled_at: float | None = None
        self.returned_at: float | None = None
        self.t0 = 0.0

    async def _start(self, input_data: Any) -> None:
        self.result = await self.run.start(input_data=input_data)

    async def play(
        self, *, cancel_at: float | None, input_data: Any = None, **cancel_args: Any
    ) -> None:
        self.t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, self.run, self.events)
            nursery.start_soon(self._start, input_data)
            if cancel_at is not None:
                await trio.sleep(cancel_at)
                self.canceled_at = trio.current_time() - self.t0
                self.cancel_result = await self.run.cancel(**cancel_args)
                self.returned_at = trio.current_time() - self.t0


async def play(
    workflow: trioflow.Workflow, cancel_at: float | None, **cancel_args: Any
) -> Scenario:
    scenario = Scenario(await workflow.create_run())
    await scenario.play(cancel_at=cancel_at, **cancel_args)
    return scenario


# == §3.1 the AbortSignal: listeners once, in order, synchronously ========================


async def test_listeners_and_onabort_run_once_in_registration_order(autojump_clock: Any) -> None:
    calls: list[tuple[str, float]] = []

    def listener(name: str) -> Callable[[], None]:
        return lambda: calls.append((name, trio.current_time()))

    @trioflow.step(id="first")
    async def first(ctx: trioflow.StepContext[Any]) -> None:
        # Dropped when the step ends: the step's own signal carries it.
        ctx.abort_signal.add_event_listener("abort", listener("ended-step"))

    @trioflow.step(id="second")
    async def second(ctx: trioflow.StepContext[Any]) -> None:
        ctx.abort_signal.add_event_listener("abort", listener("second-a"))
        ctx.abort_signal.onabort = listener("onabort")
        ctx.abort_signal.add_event_listener("abort", listener("second-b"))
        await trio.sleep(100)

    run = await linear(first, second).create_run()
    run.abort_signal.add_event_listener("abort", listener("outside"))
    scenario = Scenario(run)
    await scenario.play(cancel_at=5)
    assert calls == [
        ("outside", 5),
        ("second-a", 5),
        ("onabort", 5),
        ("second-b", 5),
    ]
    assert await run.cancel() == CANCELED
    assert len(calls) == 4  # never again


async def test_a_listener_a_step_never_removes_is_dropped_when_the_step_ends(
    autojump_clock: Any,
) -> None:
    """A loop whose step adds a listener on every iteration leaves none behind on the
    run's signal (nothing accumulates, nothing is called for an ended step)."""
    calls: list[int] = []

    @trioflow.step(id="tick")
    async def tick(ctx: trioflow.StepContext[int]) -> int:
        n = ctx.input_data
        ctx.abort_signal.add_event_listener("abort", lambda: calls.append(n))
        return n + 1

    @trioflow.step(id="timed", timeout=60)
    async def timed(ctx: trioflow.StepContext[int]) -> int:
        ctx.abort_signal.add_event_listener("abort", lambda: calls.append(-1))
        return ctx.input_data

    workflow = (
        trioflow.create_workflow(id="listener-loop")
        .dountil(tick, lambda c: c.input_data >= 200)
        .then(timed)
        .commit()
    )
    run = await workflow.create_run()
    assert (await run.start(input_data=0)).status == "success"
    dependents = run.abort_signal._dependents
    assert dependents is None or (not dependents.pinned and not list(dependents.weak))
    assert run.abort_signal._listeners is None
    await run.cancel()
    assert calls == []


async def test_listeners_have_run_when_cancel_from_inside_returns(autojump_clock: Any) -> None:
    """Dispatch is synchronous: by the time even a non-waiting cancel() returns, every
    listener has run."""
    seen: list[object] = []

    @trioflow.step(id="self-cancel")
    async def self_cancel(ctx: trioflow.StepContext[Any]) -> None:
        ctx.abort_signal.add_event_listener("abort", lambda: seen.append("listener"))
        run = RUNS[ctx.run_id]
        seen.append(await run.cancel())
        seen.append(ctx.abort_signal.aborted)

    run = await linear(self_cancel).create_run()
    RUNS[run.run_id] = run
    result = await run.start()
    assert seen == ["listener", CANCELED, True]
    assert result.status == "canceled"


RUNS: dict[str, trioflow.Run] = {}


async def test_a_raising_listener_is_logged_and_stops_nothing(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("listener bug")

    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None:
        ctx.abort_signal.add_event_listener("abort", broken)
        ctx.abort_signal.add_event_listener("abort", lambda: calls.append("after"))
        await trio.sleep(100)

    with caplog.at_level(logging.ERROR, logger="trioflow"):
        scenario = await play(linear(s), cancel_at=1)
    assert calls == ["broken", "after"]
    assert scenario.cancel_result == CANCELED
    assert scenario.run.status == "canceled"
    assert scenario.returned_at == 1
    errors = [r for r in caplog.records if r.name == "trioflow" and r.exc_info]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)


async def test_reason_reaches_the_signal_and_the_canceled_event(autojump_clock: Any) -> None:
    reasons: list[object] = []

    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None:
        try:
            await ctx.abort_signal.wait()
        finally:
            reasons.append(ctx.abort_signal.reason)

    scenario = await play(linear(s), cancel_at=1, reason="user pressed stop")
    assert reasons == ["user pressed stop"]
    assert scenario.run.abort_signal.reason == "user pressed stop"
    canceled = [e for e in scenario.events if e.type == "workflow-canceled"]
    assert len(canceled) == 1
    assert canceled[0].reason == "user pressed stop"


async def test_default_reason_is_an_abort_error(autojump_clock: Any) -> None:
    scenario = await play(linear(sleeper("s", 100)), cancel_at=1)
    reason = scenario.run.abort_signal.reason
    assert isinstance(reason, trioflow.AbortError)
    with pytest.raises(trioflow.AbortError):
        scenario.run.abort_signal.throw_if_aborted()


# == §3.2 the cancel scope: blocked steps are interrupted =================================


class Blockers:
    """Ways for a step to block at a Trio checkpoint; the lock is held and the event
    never set, for the whole test."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.never = trio.Event()

    async def sleep(self, ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep_forever()

    async def lock_(self, ctx: trioflow.StepContext[Any]) -> None:
        async with self.lock:
            pass

    async def event(self, ctx: trioflow.StepContext[Any]) -> None:
        await self.never.wait()

    async def io(self, ctx: trioflow.StepContext[Any]) -> None:
        left, right = trio.socket.socketpair()
        with left, right:
            await left.recv(1)

    async def abort_signal(self, ctx: trioflow.StepContext[Any]) -> None:
        await ctx.abort_signal.wait()
        await trio.sleep(1)  # the scope was cancelled right after the signal: interrupted here


@pytest.mark.parametrize("way", ["sleep", "lock_", "event", "io", "abort_signal"])
async def test_a_step_blocked_at_a_checkpoint_is_interrupted(autojump_clock: Any, way: str) -> None:
    exits: list[tuple[str, float]] = []
    blockers = Blockers()
    block = getattr(blockers, way)

    async def execute(ctx: trioflow.StepContext[Any]) -> None:
        try:
            await block(ctx)
        except trio.Cancelled:
            exits.append(("cancelled", trio.current_time()))
            raise
        exits.append(("returned", trio.current_time()))

    step = trioflow.create_step(id="blocked", execute=execute)
    async with blockers.lock:  # held for the whole test: the lock step can never get it
        scenario = await play(linear(step), cancel_at=3)
    t0 = scenario.t0
    assert exits == [("cancelled", t0 + 3)]
    assert scenario.returned_at == 3
    assert scenario.cancel_result == CANCELED
    assert scenario.result is not None
    assert scenario.result.status == "canceled"
    assert scenario.result.steps["blocked"].status == "canceled"


async def test_grace_period_run_that_ends_by_itself_is_still_canceled(
    autojump_clock: Any,
) -> None:
    """The signal aborts at once; the step notices, finishes its work in 2 s (within
    the 10 s of grace) and returns: it keeps its 'success', the run is 'canceled', and
    the next step never starts."""
    log: Log = []

    @trioflow.step(id="polite")
    async def polite(ctx: trioflow.StepContext[Any]) -> str:
        await ctx.abort_signal.wait()
        log.append(("noticed", "polite", trio.current_time()))
        await trio.sleep(2)  # wrap up: not interrupted, the scope has 10 s of grace
        return "partial"

    scenario = await play(linear(polite, sleeper("next", 1, log)), cancel_at=4, grace_period=10)
    t0 = scenario.t0
    assert log == [("noticed", "polite", t0 + 4)]
    assert scenario.returned_at == 6
    assert scenario.cancel_result == CANCELED
    result = scenario.result
    assert result is not None
    assert result.status == "canceled"
    assert result.steps["polite"].status == "success"
    assert result.steps["polite"].output == "partial"
    assert "next" not in result.steps
    assert result.result is None


async def test_grace_period_expires_at_exactly_grace_seconds(autojump_clock: Any) -> None:
    log: Log = []
    aborted_at: list[float] = []

    @trioflow.step(id="stubborn")
    async def stubborn(ctx: trioflow.StepContext[Any]) -> None:
        ctx.abort_signal.add_event_listener("abort", lambda: aborted_at.append(trio.current_time()))
        await sleeper("inner", 100, log).execute(ctx)

    scenario = await play(linear(stubborn), cancel_at=2, grace_period=3)
    t0 = scenario.t0
    assert aborted_at == [t0 + 2]  # the signal aborts at once
    assert log == [("start", "inner", t0), ("interrupted", "inner", t0 + 5)]
    assert scenario.returned_at == 5
    assert scenario.result is not None
    assert scenario.result.steps["stubborn"].status == "canceled"
    assert scenario.run.status == "canceled"


async def test_a_second_cancel_without_grace_cuts_the_grace_short(autojump_clock: Any) -> None:
    log: Log = []
    run = await linear(sleeper("s", 100, log)).create_run()
    results: list[tuple[float, trioflow.CancelResult]] = []

    async def cancel(grace: float) -> None:
        results.append((grace, await run.cancel(grace_period=grace)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(1)
        nursery.start_soon(cancel, 50)
        await trio.sleep(1)
        nursery.start_soon(cancel, 0)
    assert log == [("start", "s", 0), ("interrupted", "s", 2)]
    assert results == [(50, CANCELED), (0, CANCELED)] or results == [
        (0, CANCELED),
        (50, CANCELED),
    ]
    assert trio.current_time() == 2


# == §3.3 no further step; everything in flight is cancelled with the run ===============


async def test_no_step_starts_after_cancel(autojump_clock: Any) -> None:
    log: Log = []
    workflow = linear(sleeper("a", 1, log), sleeper("b", 10, log), sleeper("c", 1, log))
    scenario = await play(workflow, cancel_at=5)
    t0 = scenario.t0
    assert log == [
        ("start", "a", t0),
        ("done", "a", t0 + 1),
        ("start", "b", t0 + 1),
        ("interrupted", "b", t0 + 5),
    ]
    result = scenario.result
    assert result is not None
    assert list(result.steps) == ["a", "b"]
    assert not any(getattr(e, "step_id", None) == "c" for e in scenario.events)


async def test_cancel_requested_is_true_from_the_moment_cancel_is_called() -> None:
    """A step that finishes in the very tick cancel() is called must not lead to the
    next step starting: the request is made before cancel() first yields. Repeated,
    because Trio randomizes the order of tasks woken in the same tick."""

    for _ in range(20):
        go = trio.Event()
        log: Log = []

        async def finish_on(ctx: trioflow.StepContext[Any], go: trio.Event = go) -> str:
            await go.wait()
            return "first"

        first = trioflow.create_step(id="first", execute=finish_on)
        run = await linear(first, sleeper("second", 1, log)).create_run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.start)
            await trio.testing.wait_all_tasks_blocked()
            go.set()  # "first" can now finish, in the next tick
            assert await run.cancel() == CANCELED
        assert log == []
        assert "second" not in run.result_nowait().steps


async def test_parallel_branches_are_cancelled_in_declaration_order(autojump_clock: Any) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="wf")
        .parallel([sleeper("p3", 30, log), sleeper("p1", 1, log), sleeper("p2", 20, log)])
        .then(sleeper("after", 1, log))
        .commit()
    )
    scenario = await play(workflow, cancel_at=5)
    result = scenario.result
    assert result is not None
    assert result.status == "canceled"
    assert result.steps["p1"].status == "success"
    assert result.steps["p3"].status == "canceled"
    assert result.steps["p2"].status == "canceled"
    assert "after" not in result.steps
    canceled = [
        e.step_id
        for e in scenario.events
        if e.type == "workflow-step-result" and e.status == "canceled"
    ]
    assert canceled == ["p3", "p2"]
    assert sorted(entry for entry in log if entry[0] == "interrupted") == [
        ("interrupted", "p2", scenario.t0 + 5),
        ("interrupted", "p3", scenario.t0 + 5),
    ]


async def test_foreach_iterations_stop_with_the_run(autojump_clock: Any) -> None:
    log: Log = []

    @trioflow.step(id="item")
    async def item(ctx: trioflow.StepContext[int]) -> int:
        log.append(("start", str(ctx.input_data), trio.current_time()))
        await trio.sleep(2)
        return ctx.input_data

    workflow = (
        trioflow.create_workflow(id="wf")
        .then(sleeper("items", 0, output=[1, 2, 3, 4, 5, 6]))
        .foreach(item, concurrency=2)
        .commit()
    )
    scenario = await play(workflow, cancel_at=3)
    t0 = scenario.t0
    # Items 1, 2 at t0, items 3, 4 at t0 + 2; none after the cancel at t0 + 3.
    assert [(entry[1], entry[2] - t0) for entry in log] == [("1", 0), ("2", 0), ("3", 2), ("4", 2)]
    result = scenario.result
    assert result is not None
    assert result.steps["item"].status == "canceled"
    assert result.steps["item"].output is None
    assert scenario.returned_at == 3


async def test_retry_back_off_is_cancelled_and_a_cancelled_step_is_not_retried(
    autojump_clock: Any,
) -> None:
    attempts: list[float] = []

    @trioflow.step(id="flaky", retries=5)
    async def flaky(ctx: trioflow.StepContext[Any]) -> None:
        attempts.append(trio.current_time())
        raise RuntimeError("try again")

    retry = trioflow.RetryConfig(attempts=5, delay=10)
    run = (
        await trioflow.create_workflow(id="wf", retry_config=retry)
        .then(flaky)
        .commit()
        .create_run()
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(4)
        assert run.status == "waiting"  # in the back-off
        assert await run.cancel() == CANCELED
        assert trio.current_time() == 4
    assert attempts == [0]
    assert run.status == "canceled"
    assert run.result_nowait().steps["flaky"].status == "canceled"


async def test_a_back_off_ends_at_a_cancel_even_with_a_grace_period(autojump_clock: Any) -> None:
    """The grace period is for steps winding down, not for retrying them: a step in
    its back-off when the cancel comes is not tried again, and ends 'canceled' at once."""
    attempts: list[float] = []

    @trioflow.step(id="flaky", retries=3)
    async def flaky(ctx: trioflow.StepContext[Any]) -> None:
        attempts.append(trio.current_time())
        raise RuntimeError("try again")

    retry = trioflow.RetryConfig(delay=2)
    workflow = trioflow.create_workflow(id="wf", retry_config=retry).then(flaky).commit()
    scenario = await play(workflow, cancel_at=1, grace_period=10)
    assert attempts == [scenario.t0]
    assert scenario.returned_at == 1
    assert scenario.result is not None
    assert scenario.result.status == "canceled"
    assert scenario.result.steps["flaky"].status == "canceled"


async def test_a_step_failing_during_the_grace_period_is_not_retried(
    autojump_clock: Any,
) -> None:
    attempts: list[int] = []

    @trioflow.step(id="fragile", retries=3)
    async def fragile(ctx: trioflow.StepContext[Any]) -> None:
        attempts.append(ctx.retry_count)
        await ctx.abort_signal.wait()
        raise ConnectionError("the server went away")

    scenario = await play(linear(fragile), cancel_at=1, grace_period=10)
    assert attempts == [0]
    assert scenario.returned_at == 1
    result = scenario.result
    assert result is not None
    assert result.status == "canceled"  # a requested cancel wins over the failure
    assert result.steps["fragile"].status == "failed"  # it did finish: its real outcome
    assert isinstance(result.steps["fragile"].error, ConnectionError)


async def test_sleep_and_event_waits_are_cancelled(autojump_clock: Any) -> None:
    @trioflow.step(id="on-event")
    async def on_event(ctx: trioflow.StepContext[Any]) -> Any:
        return ctx.resume_data

    sleeping = trioflow.create_workflow(id="wf").sleep(100, id="nap").commit()
    scenario = await play(sleeping, cancel_at=3)
    assert scenario.returned_at == 3
    assert scenario.result is not None
    assert scenario.result.steps["nap"].status == "canceled"

    waiting = trioflow.create_workflow(id="wf").wait_for_event("go", on_event).commit()
    scenario = await play(waiting, cancel_at=3)
    assert scenario.returned_at == 3
    assert scenario.result is not None
    assert scenario.result.status == "canceled"
    assert scenario.result.steps["on-event"].status == "canceled"
    with pytest.raises(trioflow.RunStateError):
        await scenario.run.send_event("go", 1)


async def test_an_event_arriving_during_the_grace_period_starts_no_step(
    autojump_clock: Any,
) -> None:
    ran: list[str] = []

    @trioflow.step(id="on-event")
    async def on_event(ctx: trioflow.StepContext[Any]) -> Any:
        ran.append("on-event")

    run = (
        await trioflow.create_workflow(id="wf").wait_for_event("go", on_event).commit().create_run()
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(1)
        nursery.start_soon(lambda: run.cancel(grace_period=10))
        await trio.sleep(1)
        await run.send_event("go", "late")
    assert ran == []
    assert trio.current_time() == 2
    result = run.result_nowait()
    assert result.status == "canceled"
    # The step was waiting when the cancel came: it ends 'canceled', not left 'waiting'.
    assert result.steps["on-event"].status == "canceled"


async def test_a_running_nested_workflow_is_cancelled_with_its_parent(
    autojump_clock: Any,
) -> None:
    log: Log = []
    child = linear_named("child", sleeper("inner", 10, log), sleeper("inner-next", 1, log))
    workflow = trioflow.create_workflow(id="parent").then(child).then(sleeper("after", 1, log))
    scenario = await play(workflow.commit(), cancel_at=4)
    result = scenario.result
    assert result is not None
    assert result.status == "canceled"
    assert result.steps["child.inner"].status == "canceled"
    assert result.steps["child"].status == "canceled"
    assert "child.inner-next" not in result.steps and "after" not in result.steps
    assert log == [("start", "inner", scenario.t0), ("interrupted", "inner", scenario.t0 + 4)]
    # The child's step is recorded before the child itself (children first).
    canceled = [
        e.step_id
        for e in scenario.events
        if e.type == "workflow-step-result" and e.status == "canceled"
    ]
    assert canceled == ["child.inner", "child"]


def linear_named(workflow_id: str, *steps: trioflow.Step[Any, Any]) -> trioflow.Workflow:
    workflow = trioflow.create_workflow(id=workflow_id)
    for step in steps:
        workflow.then(step)
    return workflow.commit()


async def test_a_suspended_nested_workflow_is_cancelled_with_its_parent() -> None:
    @trioflow.step(id="gate")
    async def gate(ctx: trioflow.StepContext[Any]) -> None:
        ctx.suspend("approve?")

    child = linear_named("child", gate)
    run = await trioflow.create_workflow(id="parent").then(child).commit().create_run()
    assert (await run.start()).status == "suspended"
    assert await run.cancel() == CANCELED
    result = run.result_nowait()
    assert result.status == "canceled"
    assert result.suspended == []
    assert result.steps["child.gate"].status == "canceled"
    assert result.steps["child"].status == "canceled"


# == §3.4 records, the one workflow-canceled event, the return of cancel() ===============


async def test_records_interrupted_finished_and_never_started_steps(autojump_clock: Any) -> None:
    scenario = await play(
        linear(sleeper("done", 1), sleeper("interrupted", 10), sleeper("never", 1)), cancel_at=3
    )
    result = scenario.result
    assert result is not None
    assert result.steps["done"].status == "success"
    assert result.steps["done"].output == "done"
    interrupted = result.steps["interrupted"]
    assert interrupted.status == "canceled"
    assert interrupted.output is None
    assert interrupted.error is None
    assert interrupted.payload == "done"
    assert interrupted.started_at is not None and interrupted.ended_at is not None
    assert "never" not in result.steps


async def test_exactly_one_canceled_event_then_finish(autojump_clock: Any) -> None:
    scenario = await play(linear(sleeper("a", 1), sleeper("b", 10)), cancel_at=3)
    assert shape(scenario.events) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "a", "running"),
        ("workflow-step-result", "a", "success"),
        ("workflow-step-start", "b", "running"),
        ("workflow-step-result", "b", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]
    assert isinstance(scenario.events[-2], trioflow.WorkflowCanceled)
    assert all(e.run_id == scenario.run.run_id for e in scenario.events)


async def test_cancel_returns_only_after_the_runs_tasks_exited(autojump_clock: Any) -> None:
    """Shielded, bounded cleanup in a step delays cancel(); while it runs the run is
    not yet 'canceled' but cancel_requested says a cancel is under way."""
    seen: list[tuple[str, object, float]] = []
    holder: list[trioflow.Run] = []

    @trioflow.step(id="careful")
    async def careful(ctx: trioflow.StepContext[Any]) -> None:
        try:
            await trio.sleep(100)
        finally:
            with trio.move_on_after(2, shield=True):
                run = holder[0]
                seen.append(("cleanup", (run.status, run.cancel_requested), trio.current_time()))
                await trio.sleep(1.5)
                seen.append(("cleaned", None, trio.current_time()))

    run = await linear(careful).create_run()
    holder.append(run)
    scenario = Scenario(run)
    await scenario.play(cancel_at=3)
    t0 = scenario.t0
    assert seen == [("cleanup", ("running", True), t0 + 3), ("cleaned", None, t0 + 4.5)]
    assert scenario.returned_at == 4.5
    assert scenario.cancel_result == CANCELED
    assert run.status == "canceled"


async def test_status_is_canceled_when_cancel_returns() -> None:
    async def check(run: trioflow.Run) -> None:
        result = await run.cancel()
        assert result == CANCELED
        assert run.status == "canceled"
        assert run.result_nowait().status == "canceled"

    run = await linear(sleeper("s", 100)).create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.testing.wait_all_tasks_blocked()
        await check(run)


async def test_cancel_from_inside_a_step_returns_at_once(autojump_clock: Any) -> None:
    log: list[tuple[str, object, float]] = []
    holder: list[trioflow.Run] = []

    @trioflow.step(id="quitter")
    async def quitter(ctx: trioflow.StepContext[Any]) -> None:
        result = await holder[0].cancel()
        log.append(("returned", result, trio.current_time()))
        try:
            await trio.sleep(1)
        except trio.Cancelled:
            log.append(("interrupted", None, trio.current_time()))
            raise

    run = await linear(quitter, sleeper("after", 1)).create_run()
    holder.append(run)
    with trio.fail_after(1):  # no deadlock
        result = await run.start()
    assert log == [("returned", CANCELED, 0), ("interrupted", None, 0)]
    assert result.status == "canceled"
    assert result.steps["quitter"].status == "canceled"
    assert "after" not in result.steps


async def test_cancel_from_inside_a_thread_step_does_not_deadlock() -> None:
    holder: list[trioflow.Run] = []

    def quitter(ctx: trioflow.StepContext[Any]) -> str:
        result = trio.from_thread.run(holder[0].cancel)
        assert result == CANCELED
        assert ctx.abort_signal.aborted
        return "finished anyway"

    run = await linear(
        trioflow.create_step(id="t", execute=quitter), sleeper("after", 1)
    ).create_run()
    holder.append(run)
    with trio.fail_after(10):
        result = await run.start()
    assert result.status == "canceled"
    assert result.steps["t"].status == "success"
    assert result.steps["t"].output == "finished anyway"
    assert "after" not in result.steps


async def test_cancel_from_an_already_cancelled_task_requests_nothing(
    autojump_clock: Any,
) -> None:
    run = await linear(sleeper("s", 10)).create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(1)
        with trio.CancelScope() as scope:
            scope.cancel()
            await run.cancel()
        assert scope.cancelled_caught
        assert not run.cancel_requested
        assert not run.abort_signal.aborted
    assert run.status == "success"
    assert trio.current_time() == 10


async def test_cancel_result_values() -> None:
    result = trioflow.CancelResult(message="Workflow run canceled", status="canceled")
    assert (result.message, result.status) == ("Workflow run canceled", "canceled")
    run = await linear(sleeper("s", 1)).create_run()
    returned = await run.cancel()
    assert isinstance(returned, trioflow.CancelResult)
    assert returned == result


# == §3.5 a pending, suspended or waiting run ============================================


async def test_cancel_before_start() -> None:
    log: Log = []
    run = await linear(sleeper("s", 1, log)).create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        assert await run.cancel() == CANCELED
    assert run.status == "canceled"
    assert run.cancel_requested
    assert shape(events) == [
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]
    result = await run.start(input_data={"x": 1})  # never raises for a canceled run
    assert isinstance(result, trioflow.RunResult)
    assert result.status == "canceled"
    assert result.steps == {}
    assert log == []


async def test_cancel_a_suspended_run_then_resume_raises() -> None:
    @trioflow.step(id="gate")
    async def gate(ctx: trioflow.StepContext[Any]) -> None:
        ctx.suspend("approve?")

    run = await linear(gate).create_run()
    assert (await run.start()).status == "suspended"
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        assert await run.cancel() == CANCELED
    assert run.status == "canceled"
    assert run.result_nowait().steps["gate"].status == "canceled"
    assert shape(events) == [
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]
    with pytest.raises(trioflow.RunStateError, match="canceled") as info:
        await run.resume(step="gate", resume_data="yes")
    assert info.value.status == "canceled"
    assert info.value.run_id == run.run_id


async def test_cancel_a_sleeping_run(autojump_clock: Any) -> None:
    run = await trioflow.create_workflow(id="wf").sleep(60).commit().create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(10)
        assert run.status == "waiting"
        assert await run.cancel() == CANCELED
    assert run.status == "canceled"
    assert trio.current_time() == 10


# == §3.6 finished runs, cancel twice, and the one terminal transition ===================


@pytest.mark.parametrize("outcome", ["success", "failed"])
async def test_cancel_after_the_run_ended_changes_nothing(outcome: str) -> None:
    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> str:
        if outcome == "failed":
            raise ValueError("bad")
        return "ok"

    calls: list[str] = []
    run = await linear(s).create_run()
    run.abort_signal.add_event_listener("abort", lambda: calls.append("abort"))
    before = await run.start()
    assert before.status == outcome
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        for _ in range(2):
            returned = await run.cancel()
            assert returned == trioflow.CancelResult(
                message=f"Workflow run already {outcome}", status=outcome
            )
        nursery.cancel_scope.cancel()  # the watcher would wait for a finish that never comes
    assert events == []
    assert run.status == outcome
    assert run.result_nowait() == before
    assert calls == []
    assert not run.abort_signal.aborted


async def test_cancel_twice_returns_the_same_result(autojump_clock: Any) -> None:
    run = await linear(sleeper("s", 100)).create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        nursery.start_soon(run.start)
        await trio.sleep(1)
        first = await run.cancel()
    second = await run.cancel(reason="again")
    assert first == second == CANCELED
    assert [e.type for e in events].count("workflow-canceled") == 1
    assert isinstance(run.abort_signal.reason, trioflow.AbortError)  # the first reason stays


class Race:
    """One race: `step` ends at virtual time 5 while another task cancels at 5."""

    def __init__(self, step: trioflow.Step[Any, Any]) -> None:
        self.step = step

    async def once(self) -> tuple[str, float, float]:
        run = await linear(self.step).create_run()
        events: list[Any] = []
        returned: list[trioflow.CancelResult] = []
        results: list[trioflow.RunResult] = []
        times: list[float] = []

        async def canceller() -> None:
            await trio.sleep(5)
            times.append(trio.current_time() - t0)
            returned.append(await run.cancel())

        async def starter() -> None:
            results.append(await run.start())

        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, run, events)
            nursery.start_soon(starter)
            nursery.start_soon(canceller)
        finish = [e for e in events if e.type == "workflow-finish"]
        canceled = [e for e in events if e.type == "workflow-canceled"]
        status = results[0].status
        # One outcome, recorded, returned and emitted alike.
        assert returned[0].status == status == run.status == finish[0].status
        assert len(finish) == 1
        assert len(canceled) == (1 if status == "canceled" else 0)
        if status == "canceled":
            assert returned[0] == CANCELED
        else:
            assert returned[0].message == f"Workflow run already {status}"
        assert times == [5]
        return status, trio.current_time() - t0, len(events)


def _ends_at_5(how: str) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> str:
        await trio.sleep(5)
        if how == "fail":
            raise RuntimeError("failed at 5")
        if how == "abort":
            ctx.abort("the step gave up")
        return "done at 5"

    return trioflow.create_step(id="last", execute=execute)


@pytest.mark.parametrize(
    ("how", "possible"),
    [
        ("finish", {"success", "canceled"}),
        ("fail", {"failed", "canceled"}),
        ("abort", {"canceled"}),
    ],
    ids=["cancel-vs-last-step", "cancel-vs-failure", "cancel-vs-ctx-abort"],
)
async def test_race_in_one_tick_has_one_outcome(
    autojump_clock: Any, how: str, possible: set[str]
) -> None:
    race = Race(_ends_at_5(how))
    seen = set()
    for _ in range(12):  # Trio randomizes the order within a tick: try both orders
        status, ended_at, _n = await race.once()
        assert ended_at == 5  # both happened in the same tick
        seen.add(status)
    assert seen <= possible


async def test_cancel_wins_when_it_comes_first_in_the_tick() -> None:
    """Forced order: the step is woken, then cancel() is called before it runs again.
    The step finishes (its record keeps 'success') but the run is 'canceled'."""
    go = trio.Event()

    async def wait_then_return(ctx: trioflow.StepContext[Any]) -> str:
        await go.wait()
        return "finished"

    run = await linear(trioflow.create_step(id="last", execute=wait_then_return)).create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.testing.wait_all_tasks_blocked()
        go.set()
        returned = await run.cancel()
    result = run.result_nowait()
    assert returned == CANCELED
    assert result.status == run.status == "canceled"
    assert result.result is None


async def test_the_run_wins_when_it_ends_first_in_the_tick() -> None:
    """Forced order: the step wakes the canceller and ends the run in the same step
    of its task; the canceller then finds the run finished."""
    returned: list[trioflow.CancelResult] = []
    wake = trio.Event()

    async def finish_and_wake(ctx: trioflow.StepContext[Any]) -> str:
        wake.set()
        return "finished"

    run = await linear(trioflow.create_step(id="last", execute=finish_and_wake)).create_run()

    async def canceller() -> None:
        await wake.wait()
        returned.append(await run.cancel())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(canceller)
        await trio.testing.wait_all_tasks_blocked()
        result = await run.start()
    assert result.status == run.status == "success"
    assert returned == [
        trioflow.CancelResult(message="Workflow run already success", status="success")
    ]


# == after the list: start(), ctx.abort(), AbortError, nesting, outside cancellation ======


async def test_ctx_abort_ends_the_run_canceled(autojump_clock: Any) -> None:
    log: Log = []

    @trioflow.step(id="giver-up")
    async def giver_up(ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep(2)
        ctx.abort("nothing to do")

    scenario = await play(linear(giver_up, sleeper("after", 1, log)), cancel_at=None)
    result = scenario.result
    assert result is not None
    assert result.status == scenario.run.status == "canceled"
    assert scenario.run.cancel_requested
    assert scenario.run.abort_signal.reason == "nothing to do"
    assert result.steps["giver-up"].status == "canceled"
    assert log == []
    assert [e.type for e in scenario.events][-2:] == ["workflow-canceled", "workflow-finish"]
    assert await scenario.run.cancel() == CANCELED


async def test_raising_the_signals_abort_error_ends_the_run_canceled(autojump_clock: Any) -> None:
    @trioflow.step(id="checker")
    async def checker(ctx: trioflow.StepContext[Any]) -> None:
        with trio.move_on_after(100):
            await ctx.abort_signal.wait()
        ctx.abort_signal.throw_if_aborted()

    scenario = await play(linear(checker, sleeper("after", 1)), cancel_at=2, grace_period=5)
    assert scenario.returned_at == 2
    result = scenario.result
    assert result is not None
    assert result.status == "canceled"
    assert result.steps["checker"].status == "canceled"
    assert "after" not in result.steps


async def test_an_abort_error_that_is_not_the_signals_fails_the_step() -> None:
    """Only the run's own AbortError (ctx.abort(), the signal's reason) means
    'canceled'; an AbortError from some other signal is an ordinary failure."""
    other = trioflow.AbortController()
    other.abort()

    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None:
        other.signal.throw_if_aborted()

    run = await linear(s, sleeper("after", 1)).create_run()
    result = await run.start()
    assert result.status == "failed"
    assert result.steps["s"].status == "failed"
    assert isinstance(result.error, trioflow.AbortError)
    assert not run.cancel_requested
    assert not run.abort_signal.aborted


async def test_ctx_abort_in_a_child_cancels_the_parent(autojump_clock: Any) -> None:
    @trioflow.step(id="inner")
    async def inner(ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep(1)
        ctx.abort()

    child = linear_named("child", inner)
    workflow = (
        trioflow.create_workflow(id="parent")
        .parallel([child, sleeper("sibling", 10)])
        .then(sleeper("after", 1))
        .commit()
    )
    scenario = await play(workflow, cancel_at=None)
    result = scenario.result
    assert result is not None
    assert result.status == "canceled"
    assert result.steps["child.inner"].status == "canceled"
    assert result.steps["sibling"].status == "canceled"
    assert "after" not in result.steps
    assert trio.current_time() - scenario.t0 == 1


async def test_outside_cancellation_propagates_and_does_not_mark_the_run(
    autojump_clock: Any,
) -> None:
    log: Log = []
    run = await linear(sleeper("a", 1, log), sleeper("b", 10, log)).create_run()
    with trio.move_on_after(3) as scope:
        await run.start()
        pytest.fail("start() must let trio.Cancelled through")
    assert scope.cancelled_caught
    assert trio.current_time() == 3
    assert run.status != "canceled"
    assert not run.cancel_requested
    assert not run.abort_signal.aborted
    steps = run.result_nowait().steps
    assert steps["a"].status == "success"
    assert steps["b"].status == "running"  # as at its last recorded transition
    # A user's cancel afterwards does mark it, like a cancel of any idle run.
    assert await run.cancel() == CANCELED
    assert run.status == "canceled"
    assert run.result_nowait().steps["b"].status == "canceled"
    assert run.result_nowait().steps["a"].status == "success"


async def test_outside_cancellation_through_a_nursery(autojump_clock: Any) -> None:
    raised: list[type[BaseException]] = []
    run = await linear(sleeper("a", 10)).create_run()

    async def starter() -> None:
        try:
            await run.start()
        except BaseException as exc:
            raised.append(type(exc))
            raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(starter)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert raised == [trio.Cancelled]
    assert run.status == "running"
    assert run.result_nowait().status != "canceled"


async def test_a_thread_step_runs_to_its_end_and_keeps_its_outcome() -> None:
    entered = threading.Event()
    release = threading.Event()
    seen: list[bool] = []
    log: Log = []

    def blocking(ctx: trioflow.StepContext[Any]) -> str:
        entered.set()
        release.wait(10)
        seen.append(ctx.abort_signal.aborted)  # readable from the worker thread
        return "thread output"

    workflow = linear(trioflow.create_step(id="thread", execute=blocking), sleeper("after", 1, log))
    run = await workflow.create_run()
    returned: list[trioflow.CancelResult] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.to_thread.run_sync(entered.wait)

        async def canceller() -> None:
            returned.append(await run.cancel())

        nursery.start_soon(canceller)
        await trio.testing.wait_all_tasks_blocked()
        assert returned == []  # cancel() waits for the thread
        assert run.cancel_requested and run.status == "running"
        release.set()
    assert returned == [CANCELED]
    assert seen == [True]
    result = run.result_nowait()
    assert result.status == "canceled"
    assert result.steps["thread"].status == "success"
    assert result.steps["thread"].output == "thread output"
    assert "after" not in result.steps
    assert log == []


async def test_ctx_abort_from_a_thread_step() -> None:
    def quitter(ctx: trioflow.StepContext[Any]) -> None:
        ctx.abort("from the thread")

    workflow = linear(trioflow.create_step(id="t", execute=quitter), sleeper("after", 1))
    run = await workflow.create_run()
    result = await run.start()
    assert result.status == run.status == "canceled"
    assert result.steps["t"].status == "canceled"
    assert "after" not in result.steps
    assert run.abort_signal.reason == "from the thread"


# == determinism ==========================================================================


def _rich_workflow() -> trioflow.Workflow:
    @trioflow.step(id="each")
    async def each(ctx: trioflow.StepContext[int]) -> int:
        await trio.sleep(ctx.input_data)
        return ctx.input_data

    child = linear_named("child", sleeper("c1", 1), sleeper("c2", 50))
    return (
        trioflow.create_workflow(id="rich")
        .then(sleeper("first", 1, output=[1, 2, 3]))
        .foreach(each, concurrency=2)
        .parallel([sleeper("p-long", 40), child, sleeper("p-short", 2), sleeper("p-mid", 30)])
        .then(sleeper("never", 1))
        .commit()
    )


def test_the_same_cancel_scenario_gives_the_same_events_every_time() -> None:
    """Foreach items, parallel branches and a nested workflow, cancelled at t=12 while
    three branches and a nested step are in flight: five fresh runs under a fresh
    MockClock each give the same (type, step_id, status) sequence."""

    def one() -> list[tuple[str, str | None, str | None]]:
        async def main() -> Scenario:
            scenario = Scenario(await _rich_workflow().create_run())
            await scenario.play(cancel_at=12)
            return scenario

        scenario = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        return shape(scenario.events)

    shapes = [one() for _ in range(5)]
    assert all(s == shapes[0] for s in shapes)
    # In flight at t=12: p-long, child (in c2) and p-mid; canceled in declaration order,
    # a nested step before its workflow.
    canceled = [
        s for t, s, status in shapes[0] if t == "workflow-step-result" and status == "canceled"
    ]
    assert canceled == ["p-long", "child.c2", "child", "p-mid"]
    assert shapes[0][-2:] == [
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]
    assert not any(step_id == "never" for _, step_id, _ in shapes[0])
