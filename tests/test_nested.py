"""Nested workflows: "child.step" paths, cancel both ways, suspended children, resume."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from composition_helpers import Log, of, sleeper, watched_start

import trioflow


class Approval(msgspec.Struct):
    approved: bool


def approver(calls: list[Any]) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> str:
        calls.append(ctx.resume_data)
        if ctx.resume_data is None:
            ctx.suspend({"ask": "approve?"})
        return "approved" if ctx.resume_data.approved else "rejected"

    return trioflow.create_step(id="approve", execute=execute, resume_schema=Approval)


async def test_child_steps_appear_under_the_parent_step_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []

    async def plus_first(ctx: trioflow.StepContext[Any]) -> Any:
        seen.append((ctx.workflow_id, ctx.get_step_result("a"), ctx.get_init_data()))
        return f"{ctx.input_data}+{ctx.get_step_result('a')}"

    log: Log = []
    child = (
        trioflow.create_workflow(id="child")
        .then(sleeper("a", 1, log, output="A"))
        .then(trioflow.create_step(id="b", execute=plus_first))
        .commit()
    )
    workflow = (
        trioflow.create_workflow(id="parent")
        .then(sleeper("first", 1, log, output="F"))
        .then(child)
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), "in")
    assert watched.result is not None
    assert watched.result.status == "success"
    assert watched.result.result == "A+A"
    assert seen == [("child", "A", "F")]  # a child's context sees the child's own steps
    assert watched.statuses == {
        "first": "success",
        "child": "success",
        "child.a": "success",
        "child.b": "success",
    }
    assert watched.result.steps["child"].output == "A+A"
    assert watched.ended_at == 2
    assert watched.brief() == [
        ("workflow-start", None, None),
        ("workflow-step-start", "first", "running"),
        ("workflow-step-result", "first", "success"),
        ("workflow-step-start", "child", "running"),
        ("workflow-step-start", "child.a", "running"),
        ("workflow-step-result", "child.a", "success"),
        ("workflow-step-start", "child.b", "running"),
        ("workflow-step-result", "child.b", "success"),
        ("workflow-step-result", "child", "success"),
        ("workflow-finish", None, "success"),
    ]


async def test_cancelling_the_parent_cancels_the_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    grandchild = trioflow.create_workflow(id="grandchild").then(sleeper("deep", 5, log)).commit()
    child = (
        trioflow.create_workflow(id="child")
        .then(sleeper("a", 1, log))
        .parallel([sleeper("b", 5, log), grandchild])
        .commit()
    )
    workflow = (
        trioflow.create_workflow(id="parent").then(child).then(sleeper("after", 1, log)).commit()
    )
    watched = await watched_start(await workflow.create_run(), cancel_at=2)
    assert watched.cancel_returned_at == 2
    assert sorted(of(log, "interrupted")) == [("b", 2), ("deep", 2)]
    assert "after" not in [step_id for _, step_id, _ in log]
    assert watched.statuses == {
        "child": "canceled",
        "child.a": "success",
        "child.b": "canceled",
        "child.grandchild": "canceled",
        "child.grandchild.deep": "canceled",
    }
    # Children are recorded before the step that holds them, in declaration order.
    assert watched.brief()[-6:] == [
        ("workflow-step-result", "child.b", "canceled"),
        ("workflow-step-result", "child.grandchild.deep", "canceled"),
        ("workflow-step-result", "child.grandchild", "canceled"),
        ("workflow-step-result", "child", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


async def test_abort_in_the_child_cancels_the_parent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []

    async def quitter(ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep(1)
        ctx.abort("child gave up")

    child = (
        trioflow.create_workflow(id="child")
        .then(trioflow.create_step(id="quit", execute=quitter))
        .commit()
    )
    workflow = (
        trioflow.create_workflow(id="parent")
        .parallel([child, sleeper("sibling", 5, log)])
        .then(sleeper("after", 1, log))
        .commit()
    )
    run = await workflow.create_run()
    watched = await watched_start(run)
    assert watched.result is not None
    assert watched.result.status == "canceled"
    assert run.status == "canceled"
    assert run.cancel_requested
    assert watched.ended_at == 1
    assert of(log, "interrupted") == [("sibling", 1)]
    assert watched.statuses == {
        "child": "canceled",
        "child.quit": "canceled",
        "sibling": "canceled",
    }
    canceled = watched.of_type("workflow-canceled")
    assert len(canceled) == 1
    assert canceled[0].reason == "child gave up"
    assert await run.cancel() == trioflow.CancelResult(
        message="Workflow run canceled", status="canceled"
    )


async def test_a_suspended_child_is_canceled_with_its_parent() -> None:
    calls: list[Any] = []
    child = trioflow.create_workflow(id="child").then(approver(calls)).commit()
    workflow = trioflow.create_workflow(id="parent").then(child).commit()
    run = await workflow.create_run()
    result = await run.start(None)
    assert result.status == "suspended"
    assert result.suspended == [["child", "approve"]]
    assert result.steps["child.approve"].suspend_payload == {"ask": "approve?"}
    async with run.watch() as events:
        cancel_result = await run.cancel()
        seen = [(e.type, getattr(e, "status", None)) async for e in events]
    assert cancel_result == trioflow.CancelResult(
        message="Workflow run canceled", status="canceled"
    )
    assert seen == [("workflow-canceled", None), ("workflow-finish", "canceled")]
    after = run.result_nowait()
    assert after.status == "canceled"
    assert {p: r.status for p, r in after.steps.items()} == {
        "child": "canceled",
        "child.approve": "canceled",
    }
    with pytest.raises(trioflow.RunStateError, match="canceled"):
        await run.resume(step=["child", "approve"], resume_data={"approved": True})
    assert calls == [None]


async def test_resume_a_nested_suspended_step_by_its_path() -> None:
    calls: list[Any] = []
    before: list[Any] = []

    async def prepare(ctx: trioflow.StepContext[Any]) -> str:
        before.append(ctx.input_data)
        return "prepared"

    child = (
        trioflow.create_workflow(id="child")
        .then(trioflow.create_step(id="prepare", execute=prepare))
        .then(approver(calls))
        .commit()
    )
    workflow = trioflow.create_workflow(id="parent").then(child).commit()
    run = await workflow.create_run()
    assert (await run.start("go")).status == "suspended"
    with pytest.raises(trioflow.ValidationError):
        await run.resume(step=["child", "approve"], resume_data={"approved": "maybe"})
    assert run.status == "suspended"
    result = await run.resume(step=["child", "approve"], resume_data={"approved": True})
    assert result.status == "success"
    assert result.result == "approved"
    assert before == ["go"]  # the finished step was not run again
    assert calls == [None, Approval(approved=True)]
    assert result.steps["child.approve"].resume_payload == Approval(approved=True)
    assert {p: r.status for p, r in result.steps.items()} == {
        "child": "success",
        "child.prepare": "success",
        "child.approve": "success",
    }


async def test_a_failing_child_fails_the_parent() -> None:
    log: Log = []
    child = trioflow.create_workflow(id="child").then(sleeper("bad", 0, log, fail=True)).commit()
    workflow = (
        trioflow.create_workflow(id="parent").then(child).then(sleeper("after", 0, log)).commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "failed"
    assert str(result.error) == "bad failed"
    assert {p: r.status for p, r in result.steps.items()} == {
        "child": "failed",
        "child.bad": "failed",
    }
