""".dowhile() and .dountil(): conditions on each iteration's output, and cancel inside."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from composition_helpers import Log, of, sleeper, watched_start

import trioflow


def counter(step_id: str = "count", seconds: float = 1, log: Log | None = None) -> Any:
    """A step that sleeps `seconds`, then returns its input plus one."""

    async def execute(ctx: trioflow.StepContext[Any]) -> int:
        if log is not None:
            log.append(("start", step_id, trio.current_time()))
        finished = False
        try:
            await trio.sleep(seconds)
            finished = True
        finally:
            if log is not None:
                log.append(("done" if finished else "interrupted", step_id, trio.current_time()))
        return int(ctx.input_data) + 1

    return trioflow.create_step(id=step_id, execute=execute)


async def test_dowhile_repeats_while_the_condition_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checks: list[tuple[Any, int]] = []

    def below_three(ctx: trioflow.ConditionContext[Any]) -> bool:
        checks.append((ctx.input_data, ctx.iteration_count))
        return bool(ctx.input_data < 3)

    workflow = trioflow.create_workflow(id="loop").dowhile(counter(), below_three).commit()
    watched = await watched_start(await workflow.create_run(), 0)
    assert watched.result is not None
    assert watched.result.status == "success"
    assert watched.result.result == 3
    # The condition sees each iteration's output; iteration_count starts at 1.
    assert checks == [(1, 1), (2, 2), (3, 3)]
    assert watched.ended_at == 3
    assert watched.result.steps["count"].output == 3
    iteration = [
        ("workflow-step-start", "count", "running"),
        ("workflow-step-result", "count", "success"),
    ]
    assert watched.brief()[1:7] == iteration * 3


async def test_dountil_repeats_until_an_async_condition_holds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    checks: list[tuple[Any, int]] = []

    async def reached_four(ctx: trioflow.ConditionContext[Any]) -> bool:
        await trio.sleep(0.5)  # an async condition takes Trio time like anything else
        checks.append((ctx.input_data, ctx.iteration_count))
        return bool(ctx.input_data >= 4)

    workflow = trioflow.create_workflow(id="loop").dountil(counter(), reached_four).commit()
    watched = await watched_start(await workflow.create_run(), 1)
    assert watched.result is not None
    assert watched.result.result == 4
    assert checks == [(2, 1), (3, 2), (4, 3)]
    assert watched.ended_at == 4.5


async def test_a_loop_runs_its_step_once_when_the_condition_ends_it_at_once() -> None:
    calls: list[int] = []

    def never(ctx: trioflow.ConditionContext[Any]) -> bool:
        calls.append(ctx.iteration_count)
        return False

    def always(ctx: trioflow.ConditionContext[Any]) -> bool:
        calls.append(ctx.iteration_count)
        return True

    for workflow in (
        trioflow.create_workflow(id="w").dowhile(counter(seconds=0), never).commit(),
        trioflow.create_workflow(id="u").dountil(counter(seconds=0), always).commit(),
    ):
        result = await (await workflow.create_run()).start(0)
        assert result.result == 1
    assert calls == [1, 1]


async def test_cancel_interrupts_the_iteration_in_flight_and_starts_no_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    checks: list[int] = []

    def forever(ctx: trioflow.ConditionContext[Any]) -> bool:
        checks.append(ctx.iteration_count)
        return True

    workflow = (
        trioflow.create_workflow(id="loop")
        .dowhile(counter(log=log), forever)
        .then(sleeper("after", 1, log))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), 0, cancel_at=1.5)
    assert watched.cancel_returned_at == 1.5
    assert of(log, "start") == [("count", 0), ("count", 1)]
    assert of(log, "interrupted") == [("count", 1.5)]
    assert checks == [1]
    assert watched.statuses == {"count": "canceled"}
    assert watched.result is not None
    assert watched.result.steps["count"].output is None
    assert watched.brief()[1:] == [
        ("workflow-step-start", "count", "running"),
        ("workflow-step-result", "count", "success"),
        ("workflow-step-start", "count", "running"),
        ("workflow-step-result", "count", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


async def test_cancel_during_an_async_condition_starts_no_further_iteration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []

    async def slow_check(ctx: trioflow.ConditionContext[Any]) -> bool:
        await trio.sleep(1)
        return True

    workflow = trioflow.create_workflow(id="loop").dowhile(counter(log=log), slow_check).commit()
    watched = await watched_start(await workflow.create_run(), 0, cancel_at=1.5)
    assert watched.cancel_returned_at == 1.5
    assert of(log, "start") == [("count", 0)]
    # The iteration that finished keeps its outcome.
    assert watched.statuses == {"count": "success"}
    assert watched.result is not None
    assert watched.result.status == "canceled"
    assert watched.result.steps["count"].output == 1


async def test_abort_in_an_iteration_ends_the_loop_canceled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[int] = []

    async def step(ctx: trioflow.StepContext[Any]) -> int:
        calls.append(ctx.input_data)
        await trio.sleep(1)
        if ctx.input_data == 2:
            ctx.abort()
        return int(ctx.input_data) + 1

    workflow = (
        trioflow.create_workflow(id="loop")
        .dountil(trioflow.create_step(id="step", execute=step), lambda ctx: False)
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), 0)
    assert watched.result is not None
    assert watched.result.status == "canceled"
    assert calls == [0, 1, 2]
    assert watched.ended_at == 3
    assert watched.statuses == {"step": "canceled"}


async def test_a_nested_workflow_runs_all_its_steps_on_every_iteration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    child = (
        trioflow.create_workflow(id="child")
        .then(counter("inc", 1, log))
        .sleep(1)
        .then(counter("inc-again", 0, log))
        .commit()
    )
    workflow = (
        trioflow.create_workflow(id="loop")
        .dountil(child, lambda ctx: ctx.iteration_count >= 3)
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), 0)
    assert watched.result is not None
    assert watched.result.status == "success"
    assert watched.result.result == 6
    assert of(log, "start") == [
        ("inc", 0),
        ("inc-again", 2),
        ("inc", 2),
        ("inc-again", 4),
        ("inc", 4),
        ("inc-again", 6),
    ]
    assert watched.ended_at == 6
    assert [e.step_id for e in watched.of_type("workflow-step-waiting")] == ["child.sleep-1"] * 3


async def test_an_error_in_a_loop_condition_fails_the_run() -> None:
    def broken(ctx: trioflow.ConditionContext[Any]) -> bool:
        raise ZeroDivisionError("bad condition")

    workflow = trioflow.create_workflow(id="loop").dowhile(counter(seconds=0), broken).commit()
    run = await workflow.create_run()
    result = await run.start(0)
    assert result.status == "failed"
    assert run.status == "failed"
    assert isinstance(result.error, ZeroDivisionError)


async def test_during_a_cancel_grace_period_no_further_iteration_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="loop").dowhile(counter(log=log), lambda ctx: True).commit()
    )
    run = await workflow.create_run()

    async def cancel_with_grace() -> None:
        await trio.sleep(0.5)
        await run.cancel(grace_period=10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_with_grace)
        result = await run.start(0)
    assert of(log, "start") == [("count", 0)]
    assert of(log, "done") == [("count", 1)]
    assert trio.current_time() == 1
    assert result.status == "canceled"
    assert result.steps["count"].status == "success"


@pytest.mark.parametrize("retries", [None, 1], ids=["plain", "with-retries"])
@pytest.mark.parametrize("watched", [False, True], ids=["unwatched", "watched"])
async def test_each_way_an_iteration_ends_is_recorded_alike_on_both_paths(
    retries: int | None, watched: bool
) -> None:
    """The loop of a run in memory awaits a plain step itself; a step with retries goes
    through `finish_step`. A failure, a suspension, a bail and an abort in an iteration
    end the run and the step's record the same way on both paths, watched or not."""

    async def step(ctx: trioflow.StepContext[Any]) -> Any:
        how, value = ctx.input_data
        if value == 2 and ctx.resume_data is None:
            if how == "fail":
                raise ValueError("two")
            if how == "suspend":
                ctx.suspend({"at": value})
            if how == "bail":
                ctx.bail("early")
            if how == "abort":
                ctx.abort()
        return how, value + (ctx.resume_data or 1)

    workflow = (
        trioflow.create_workflow(id="loop")
        .dountil(
            trioflow.create_step(id="step", execute=step, retries=retries),
            lambda ctx: ctx.iteration_count >= 5,
        )
        .commit()
    )

    async def start(how: str) -> tuple[trioflow.Run, trioflow.RunResult]:
        run = await workflow.create_run()
        if not watched:
            return run, await run.start((how, 0))
        seen = await watched_start(run, (how, 0))
        assert seen.result is not None
        ended = {"fail": "failed", "suspend": "suspended", "bail": "success", "abort": "canceled"}
        ends = [
            status or "suspended"  # a suspension's event has no status
            for kind, _, status in seen.brief()
            if kind in ("workflow-step-result", "workflow-step-suspended")
        ]
        assert ends == ["success", "success", ended[how]]
        return run, seen.result

    with trio.fail_after(10):
        _, failed = await start("fail")
        assert failed.status == "failed"
        assert isinstance(failed.error, ValueError)
        record = failed.steps["step"]
        assert (record.status, record.payload, record.error) == (
            "failed",
            ("fail", 2),
            failed.error,
        )

        run, suspended = await start("suspend")
        assert suspended.status == "suspended"
        record = suspended.steps["step"]
        assert (record.status, record.suspend_payload) == ("suspended", {"at": 2})
        resumed = await run.resume(step="step", resume_data=10)
        # 2 + 10, then two more iterations: the resumed one took the resume data
        assert (resumed.status, resumed.result) == ("success", ("suspend", 14))

        _, bailed = await start("bail")
        assert (bailed.status, bailed.result) == ("success", "early")
        assert (bailed.steps["step"].status, bailed.steps["step"].output) == ("success", "early")

        _, aborted = await start("abort")
        assert aborted.status == "canceled"
        assert aborted.steps["step"].status == "canceled"
