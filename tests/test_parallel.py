""".parallel() and .branch(): branches at once, outputs by step id, failure and cancel."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from composition_helpers import Log, of, sleeper, statuses, watched_start

import trioflow


def receiver(step_id: str, seen: list[Any]) -> trioflow.Step[Any, Any]:
    """A step that records its input and returns it."""

    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        seen.append(ctx.input_data)
        return ctx.input_data

    return trioflow.create_step(id=step_id, execute=execute)


# -- parallel ----------------------------------------------------------------------------


async def test_parallel_runs_branches_at_once_and_outputs_by_step_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    seen: list[Any] = []
    workflow = (
        trioflow.create_workflow(id="fan-out")
        .parallel(
            [
                sleeper("a", 1, log, output="A"),
                sleeper("b", 3, log, output="B"),
                sleeper("c", 2, log, output="C"),
            ]
        )
        .then(receiver("after", seen))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), "in")
    result = watched.result
    assert result is not None
    assert result.status == "success"
    assert result.result == {"a": "A", "b": "B", "c": "C"}
    assert seen == [{"a": "A", "b": "B", "c": "C"}]
    assert sorted(of(log, "start")) == [("a", 0), ("b", 0), ("c", 0)]
    assert of(log, "done") == [("a", 1), ("c", 2), ("b", 3)]
    assert watched.ended_at == 3
    assert watched.statuses == {
        "a": "success",
        "b": "success",
        "c": "success",
        "after": "success",
    }
    assert result.steps["b"].output == "B"
    assert result.steps["b"].payload == "in"
    # Starts come in declaration order, results as the branches finish.
    assert watched.brief()[:4] == [
        ("workflow-start", None, None),
        ("workflow-step-start", "a", "running"),
        ("workflow-step-start", "b", "running"),
        ("workflow-step-start", "c", "running"),
    ]
    results = [(e.step_id, t) for t, e in watched.timeline if e.type == "workflow-step-result"]
    assert results == [("a", 1), ("c", 2), ("b", 3), ("after", 3)]


async def test_a_failing_branch_cancels_its_siblings_in_declaration_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="fan-out")
        .parallel(
            [
                sleeper("a", 5, log),
                sleeper("b", 1, log, fail=True),
                sleeper("c", 5, log),
                sleeper("d", 5, log),
            ]
        )
        .then(sleeper("after", 1, log))
        .commit()
    )
    watched = await watched_start(await workflow.create_run())
    result = watched.result
    assert result is not None
    assert result.status == "failed"
    assert isinstance(result.error, RuntimeError)
    assert str(result.error) == "b failed"
    assert watched.ended_at == 1
    # Every sibling was interrupted at t=1, and "after" never started.
    assert sorted(of(log, "interrupted")) == [("a", 1), ("c", 1), ("d", 1)]
    assert of(log, "done") == [("b", 1)]
    assert "after" not in {step_id for _, step_id, _ in log}
    assert watched.statuses == {"a": "canceled", "b": "failed", "c": "canceled", "d": "canceled"}
    for step_id in ("a", "c", "d"):
        assert result.steps[step_id].output is None
        assert result.steps[step_id].error is None
    assert watched.brief()[5:] == [
        ("workflow-step-result", "b", "failed"),
        ("workflow-step-result", "a", "canceled"),
        ("workflow-step-result", "c", "canceled"),
        ("workflow-step-result", "d", "canceled"),
        ("workflow-finish", None, "failed"),
    ]
    assert watched.of_type("workflow-canceled") == []


async def test_cancel_interrupts_every_branch_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="fan-out")
        .parallel(
            [
                sleeper("a", 1, log),
                sleeper("b", 5, log),
                sleeper("c", 6, log),
                sleeper("d", 7, log),
            ]
        )
        .then(sleeper("after", 1, log))
        .commit()
    )
    run = await workflow.create_run()
    watched = await watched_start(run, cancel_at=2)
    assert watched.cancel_result == trioflow.CancelResult(
        message="Workflow run canceled", status="canceled"
    )
    assert watched.cancel_returned_at == 2
    assert watched.ended_at == 2
    assert sorted(of(log, "interrupted")) == [("b", 2), ("c", 2), ("d", 2)]
    assert of(log, "done") == [("a", 1)]
    assert "after" not in {step_id for _, step_id, _ in log}
    assert watched.result is not None
    assert watched.result.status == "canceled"
    assert run.status == "canceled"
    # A branch that finished keeps its outcome; the interrupted ones have no output.
    assert watched.statuses == {"a": "success", "b": "canceled", "c": "canceled", "d": "canceled"}
    assert watched.result.steps["a"].output == "a"
    assert [watched.result.steps[s].output for s in "bcd"] == [None, None, None]
    assert watched.brief()[6:] == [
        ("workflow-step-result", "b", "canceled"),
        ("workflow-step-result", "c", "canceled"),
        ("workflow-step-result", "d", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


async def test_abort_in_a_branch_cancels_the_run_and_its_siblings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []

    async def quitter(ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep(1)
        ctx.abort()

    workflow = (
        trioflow.create_workflow(id="fan-out")
        .parallel(
            [
                sleeper("a", 5, log),
                trioflow.create_step(id="quit", execute=quitter),
                sleeper("c", 5, log),
            ]
        )
        .commit()
    )
    watched = await watched_start(await workflow.create_run())
    assert watched.result is not None
    assert watched.result.status == "canceled"
    assert watched.ended_at == 1
    assert sorted(of(log, "interrupted")) == [("a", 1), ("c", 1)]
    assert watched.statuses == {"a": "canceled", "quit": "canceled", "c": "canceled"}
    assert watched.brief()[-5:] == [
        ("workflow-step-result", "quit", "canceled"),
        ("workflow-step-result", "a", "canceled"),
        ("workflow-step-result", "c", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


# -- branch ------------------------------------------------------------------------------


async def test_branch_runs_the_step_of_every_true_condition(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    seen: list[Any] = []
    checked: list[tuple[str, Any]] = []

    def sync_true(ctx: trioflow.ConditionContext[Any]) -> bool:
        checked.append(("sync_true", ctx.input_data))
        return bool(ctx.input_data > 5)

    async def async_true(ctx: trioflow.ConditionContext[Any]) -> bool:
        await trio.lowlevel.checkpoint()
        checked.append(("async_true", ctx.input_data))
        return bool(ctx.input_data % 2 == 0)

    async def async_false(ctx: trioflow.ConditionContext[Any]) -> bool:
        checked.append(("async_false", ctx.input_data))
        return False

    workflow = (
        trioflow.create_workflow(id="router")
        .branch(
            [
                (sync_true, sleeper("big", 2, log, output="BIG")),
                (async_false, sleeper("never", 1, log)),
                (async_true, sleeper("even", 1, log, output="EVEN")),
            ]
        )
        .then(receiver("after", seen))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), 10)
    assert watched.result is not None
    assert watched.result.status == "success"
    assert watched.result.result == {"big": "BIG", "even": "EVEN"}
    assert seen == [{"big": "BIG", "even": "EVEN"}]
    assert checked == [("sync_true", 10), ("async_false", 10), ("async_true", 10)]
    assert sorted(of(log, "start")) == [("big", 0), ("even", 0)]
    assert [e.step_id for e in watched.of_type("workflow-step-start")] == ["big", "even", "after"]
    assert watched.ended_at == 2
    assert watched.statuses == {"big": "success", "even": "success", "after": "success"}


async def test_branch_conditions_see_earlier_results_and_the_init_data() -> None:
    seen: list[Any] = []

    def first_output(ctx: trioflow.ConditionContext[Any]) -> bool:
        seen.append((ctx.get_step_result("first"), ctx.get_init_data(), ctx.input_data))
        return True

    async def double(ctx: trioflow.StepContext[Any]) -> int:
        return int(ctx.input_data) * 2

    workflow = (
        trioflow.create_workflow(id="router")
        .then(trioflow.create_step(id="first", execute=double))
        .branch([(first_output, trioflow.create_step(id="second", execute=double))])
        .commit()
    )
    result = await (await workflow.create_run()).start(3)
    assert result.result == {"second": 12}
    assert seen == [(6, 3, 6)]


async def test_branch_with_no_true_condition_outputs_an_empty_dict() -> None:
    seen: list[Any] = []
    workflow = (
        trioflow.create_workflow(id="router")
        .branch([(lambda ctx: False, sleeper("a", 1)), (lambda ctx: False, sleeper("b", 1))])
        .then(receiver("after", seen))
        .commit()
    )
    result = await (await workflow.create_run()).start(1)
    assert result.status == "success"
    assert result.result == {}
    assert seen == [{}]
    assert statuses(result) == {"after": "success"}  # the skipped branches have no record


async def test_cancel_interrupts_the_chosen_branches_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="router")
        .branch(
            [
                (lambda ctx: True, sleeper("a", 5, log)),
                (lambda ctx: False, sleeper("skipped", 5, log)),
                (lambda ctx: True, sleeper("b", 4, log)),
            ]
        )
        .then(sleeper("after", 1, log))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), cancel_at=1.5)
    assert watched.cancel_returned_at == 1.5
    assert sorted(of(log, "interrupted")) == [("a", 1.5), ("b", 1.5)]
    assert watched.statuses == {"a": "canceled", "b": "canceled"}
    assert watched.brief()[-4:] == [
        ("workflow-step-result", "a", "canceled"),
        ("workflow-step-result", "b", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


@pytest.mark.parametrize("is_async", [False, True])
async def test_an_error_in_a_branch_condition_fails_the_run(is_async: bool) -> None:
    def broken(ctx: trioflow.ConditionContext[Any]) -> bool:
        raise KeyError("missing")

    async def broken_async(ctx: trioflow.ConditionContext[Any]) -> bool:
        raise KeyError("missing")

    log: Log = []
    workflow = (
        trioflow.create_workflow(id="router")
        .branch([(broken_async if is_async else broken, sleeper("a", 1, log))])
        .commit()
    )
    run = await workflow.create_run()
    result = await run.start(1)
    assert result.status == "failed"
    assert run.status == "failed"
    assert isinstance(result.error, KeyError)
    assert log == []
