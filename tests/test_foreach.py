""".foreach() (input order, bounded concurrency, progress, cancel) and .map()."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from composition_helpers import Log, of, sleeper, watched_start

import trioflow


def item_step(log: Log, running: list[int] | None = None, *, fail_on: Any = None) -> Any:
    """A step that sleeps ``input_data`` seconds and returns it times ten, counting how
    many items run at once in ``running[0]`` (the highest in ``running[1]``)."""

    async def execute(ctx: trioflow.StepContext[Any]) -> int:
        item = ctx.input_data
        log.append(("start", str(item), trio.current_time()))
        if running is not None:
            running[0] += 1
            running[1] = max(running[1], running[0])
        finished = False
        try:
            await trio.sleep(item)
            finished = True
        finally:
            if running is not None:
                running[0] -= 1
            log.append(("done" if finished else "interrupted", str(item), trio.current_time()))
        if item == fail_on:
            raise ValueError(f"item {item} is bad")
        return int(item) * 10

    return trioflow.create_step(id="work", execute=execute)


async def test_foreach_keeps_input_order_and_bounds_concurrency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    running = [0, 0]
    workflow = trioflow.create_workflow(id="batch").foreach(item_step(log, running), 2).commit()
    watched = await watched_start(await workflow.create_run(), [3, 1, 2, 5, 4])
    assert watched.result is not None
    assert watched.result.status == "success"
    assert watched.result.result == [30, 10, 20, 50, 40]
    assert running == [0, 2]
    # Items start in input order as slots free up: 3 and 1 at 0, 2 at 1, 5 and 4 at 3.
    assert of(log, "start") == [("3", 0), ("1", 0), ("2", 1), ("5", 3), ("4", 3)]
    assert watched.ended_at == 8
    record = watched.result.steps["work"]
    assert record.status == "success"
    assert record.output == [30, 10, 20, 50, 40]
    assert list(watched.result.steps) == ["work"]  # recorded once, under the step's id


@pytest.mark.parametrize(("concurrency", "ends_at"), [(1, 6), (2, 3), (4, 2), (10, 1)])
async def test_foreach_runs_at_most_n_items_at_once(
    autojump_clock: trio.testing.MockClock, concurrency: int, ends_at: float
) -> None:
    log: Log = []
    running = [0, 0]
    workflow = (
        trioflow.create_workflow(id="batch")
        .foreach(item_step(log, running), concurrency=concurrency)
        .commit()
    )
    result = await (await workflow.create_run()).start([1] * 6)
    assert result.result == [10] * 6
    assert running[1] == min(concurrency, 6)
    assert trio.current_time() == ends_at


async def test_foreach_emits_a_progress_event_per_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = trioflow.create_workflow(id="batch").foreach(item_step(log), 3).commit()
    run = await workflow.create_run()
    watched = await watched_start(run, [3, 1, 2, 4])
    progress = watched.of_type("workflow-step-progress")
    assert [(p.item_index, p.completed, p.total) for p in progress] == [
        (1, 1, 4),
        (2, 2, 4),
        (0, 3, 4),
        (3, 4, 4),
    ]
    assert {(p.step_id, p.status, p.run_id) for p in progress} == {("work", "success", run.run_id)}
    times = [t for t, e in watched.timeline if e.type == "workflow-step-progress"]
    assert times == [1, 2, 3, 5]
    assert watched.brief()[1] == ("workflow-step-start", "work", "running")
    assert watched.brief()[-2] == ("workflow-step-result", "work", "success")


async def test_cancel_interrupts_items_in_flight_and_starts_no_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="batch")
        .foreach(item_step(log), 2)
        .then(sleeper("after", 1, log))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), [2] * 6, cancel_at=3)
    assert watched.cancel_returned_at == 3
    assert [t for _, t in of(log, "start")] == [0, 0, 2, 2]  # items 4 and 5 never started
    assert [t for _, t in of(log, "done")] == [2, 2]
    assert [t for _, t in of(log, "interrupted")] == [3, 3]
    assert watched.statuses == {"work": "canceled"}
    assert watched.result is not None
    assert watched.result.steps["work"].output is None
    assert len(watched.of_type("workflow-step-progress")) == 2
    assert watched.brief()[-3:] == [
        ("workflow-step-result", "work", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


async def test_a_failing_item_stops_the_batch_and_fails_the_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = trioflow.create_workflow(id="batch").foreach(item_step(log, fail_on=1), 2).commit()
    watched = await watched_start(await workflow.create_run(), [3, 1, 2, 2])
    assert watched.result is not None
    assert watched.result.status == "failed"
    assert isinstance(watched.result.error, ValueError)
    assert watched.ended_at == 1
    assert of(log, "interrupted") == [("3", 1)]
    assert [item for item, _ in of(log, "start")] == ["3", "1"]
    assert watched.statuses == {"work": "failed"}


async def test_foreach_over_a_nested_workflow_records_each_item_under_its_index() -> None:
    async def double(ctx: trioflow.StepContext[Any]) -> int:
        return int(ctx.input_data) * 2

    child = (
        trioflow.create_workflow(id="per-item")
        .then(trioflow.create_step(id="double", execute=double))
        .commit()
    )
    workflow = trioflow.create_workflow(id="batch").foreach(child, 2).commit()
    result = await (await workflow.create_run()).start([1, 2, 3])
    assert result.result == [2, 4, 6]
    assert {path: r.output for path, r in result.steps.items()} == {
        "per-item": [2, 4, 6],
        "per-item.0.double": 2,
        "per-item.1.double": 4,
        "per-item.2.double": 6,
    }


async def test_foreach_fails_on_input_that_is_not_a_list() -> None:
    log: Log = []
    workflow = trioflow.create_workflow(id="batch").foreach(item_step(log)).commit()
    result = await (await workflow.create_run()).start({"not": "a list"})
    assert result.status == "failed"
    assert isinstance(result.error, TypeError)
    assert result.steps["work"].status == "failed"
    assert result.steps["work"].error is result.error
    assert log == []


def test_foreach_rejects_a_concurrency_below_one() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        trioflow.create_workflow(id="batch").foreach(sleeper("a", 1), concurrency=0)


# -- map ---------------------------------------------------------------------------------


async def test_map_reshapes_data_with_earlier_results_and_the_init_data() -> None:
    seen: list[Any] = []

    async def fetch(ctx: trioflow.StepContext[Any]) -> dict[str, int]:
        return {"count": len(ctx.input_data["name"])}

    def reshape(ctx: trioflow.ConditionContext[Any]) -> dict[str, Any]:
        return {
            "name": ctx.get_init_data()["name"],
            "count": ctx.get_step_result("fetch")["count"],
            "previous": ctx.input_data,
        }

    async def later(ctx: trioflow.ConditionContext[Any]) -> str:
        await trio.lowlevel.checkpoint()
        return f"{ctx.input_data['name']}={ctx.input_data['count']}"

    async def report(ctx: trioflow.StepContext[Any]) -> str:
        seen.append(ctx.input_data)
        return str(ctx.input_data)

    workflow = (
        trioflow.create_workflow(id="mapper")
        .then(trioflow.create_step(id="fetch", execute=fetch))
        .map(reshape)
        .map(later, id="as-text")
        .then(trioflow.create_step(id="report", execute=report))
        .commit()
    )
    run = await workflow.create_run()
    result = await run.start({"name": "trio"})
    assert result.status == "success"
    assert seen == ["trio=4"]
    assert result.steps["map-1"].output == {"name": "trio", "count": 4, "previous": {"count": 4}}
    assert result.steps["as-text"].output == "trio=4"
    assert list(result.steps) == ["fetch", "map-1", "as-text", "report"]


async def test_cancel_during_an_async_map_records_it_canceled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(ctx: trioflow.ConditionContext[Any]) -> Any:
        await trio.sleep(5)
        return ctx.input_data

    log: Log = []
    workflow = (
        trioflow.create_workflow(id="mapper")
        .then(sleeper("first", 1, log))
        .map(slow)
        .then(sleeper("after", 1, log))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), cancel_at=2)
    assert watched.cancel_returned_at == 2
    assert watched.statuses == {"first": "success", "map-1": "canceled"}
    assert [step_id for step_id, _ in of(log, "start")] == ["first"]


async def test_an_error_in_map_fails_the_run() -> None:
    workflow = trioflow.create_workflow(id="mapper").map(lambda ctx: 1 / 0).commit()
    result = await (await workflow.create_run()).start(None)
    assert result.status == "failed"
    assert isinstance(result.error, ZeroDivisionError)
    assert result.steps["map-0"].status == "failed"


async def test_during_a_cancel_grace_period_no_further_item_starts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = trioflow.create_workflow(id="batch").foreach(item_step(log), 2).commit()
    run = await workflow.create_run()
    cancels: list[tuple[float, trioflow.CancelResult]] = []

    async def cancel_with_grace() -> None:
        await trio.sleep(1)
        cancel_result = await run.cancel(grace_period=10)
        cancels.append((trio.current_time(), cancel_result))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_with_grace)
        result = await run.start([2] * 6)
    # The two items in flight finish within the grace period; no other item starts.
    assert of(log, "start") == [("2", 0), ("2", 0)]
    assert of(log, "done") == [("2", 2), ("2", 2)]
    assert trio.current_time() == 2
    assert cancels == [
        (2, trioflow.CancelResult(message="Workflow run canceled", status="canceled"))
    ]
    assert result.status == "canceled"
    assert result.steps["work"].status == "canceled"


@pytest.mark.parametrize("nested", [False, True])
async def test_abort_in_an_item_records_the_foreach_canceled(
    autojump_clock: trio.testing.MockClock, nested: bool
) -> None:
    started: list[int] = []

    async def quit_on_one(ctx: trioflow.StepContext[Any]) -> int:
        started.append(ctx.input_data)
        await trio.sleep(1)
        if ctx.input_data == 1:
            ctx.abort()
        return int(ctx.input_data)

    step = trioflow.create_step(id="work", execute=quit_on_one)
    runs: trioflow.Step[Any, Any] | trioflow.Workflow = step
    if nested:
        runs = trioflow.create_workflow(id="per-item").then(step).commit()
    workflow = trioflow.create_workflow(id="batch").foreach(runs).commit()
    run = await workflow.create_run()
    result = await run.start([0, 1])  # the aborting item is the last one: nothing else waits
    assert result.status == "canceled"
    assert started == [0, 1]
    assert trio.current_time() == 2
    expected = {"work": "canceled"}
    if nested:
        expected = {
            "per-item": "canceled",
            "per-item.0.work": "success",
            "per-item.1.work": "canceled",
        }
    assert {path: r.status for path, r in result.steps.items()} == expected
    assert all(r.error is None for r in result.steps.values())


@pytest.mark.parametrize("durable", [False, True])
async def test_bail_in_an_item_ends_the_run_with_its_result(
    autojump_clock: Any, durable: bool
) -> None:
    """ctx.bail() in a foreach item ends the run 'success' with the bail's result, as it
    does anywhere else; the other items in flight are interrupted, no new one starts."""
    started: list[int] = []

    async def item(ctx: trioflow.StepContext[int]) -> int:
        started.append(ctx.input_data)
        if ctx.input_data == 2:
            await trio.sleep(1)
            ctx.bail({"found": ctx.input_data})
        await trio.sleep(10)
        return ctx.input_data

    workflow = (
        trioflow.create_workflow(id="search")
        .foreach(trioflow.create_step(id="look", execute=item), concurrency=2)
        .commit()
    )
    if durable:
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=[workflow]
        ) as engine:
            run = await engine.create_run(workflow)
            result = await run.start(input_data=[1, 2, 3, 4])
    else:
        run = await workflow.create_run()
        result = await run.start(input_data=[1, 2, 3, 4])
    assert result.status == "success"
    assert result.result == {"found": 2}
    assert result.steps["look"].status == "success"
    assert started == [1, 2]
    assert trio.current_time() == 1
