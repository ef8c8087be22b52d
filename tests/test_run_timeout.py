"""Run timeouts: `create_workflow(timeout=)` or `start(timeout=)` bound a whole run from
its first start, suspended and waiting time included; when the deadline passes, the run
is interrupted as by `cancel()` (listeners see a `RunTimeoutError`) and ends 'failed'
with it. The deadline is stored: a recovered run keeps it."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import trioflow


def slow_workflow(calls: list[str], *, timeout: float | None = None) -> trioflow.Workflow:
    async def first(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("first")
        await trio.sleep(2)
        return "first"

    async def second(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("second")
        ctx.abort_signal.add_event_listener(
            "abort", lambda: calls.append(f"abort: {type(ctx.abort_signal.reason).__name__}")
        )
        await trio.sleep(10)
        return "second"

    async def third(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("third")
        return "third"

    return (
        trioflow.create_workflow(id="slow", timeout=timeout)
        .then(trioflow.create_step(id="first", execute=first))
        .then(trioflow.create_step(id="second", execute=second))
        .then(trioflow.create_step(id="third", execute=third))
        .commit()
    )


@pytest.mark.parametrize("where", ["workflow", "start"])
async def test_a_run_past_its_timeout_is_interrupted_and_fails(
    autojump_clock: Any, where: str
) -> None:
    calls: list[str] = []
    workflow = slow_workflow(calls, timeout=5 if where == "workflow" else None)
    run = await workflow.create_run()
    result = await (run.start() if where == "workflow" else run.start(timeout=5))
    assert trio.current_time() == 5
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.RunTimeoutError)
    assert "did not end within its timeout of 5s" in str(result.error)
    assert result.steps["first"].status == "success"
    assert result.steps["second"].status == "canceled"  # interrupted, as by a cancel
    assert "third" not in result.steps
    assert calls == ["first", "second", "abort: RunTimeoutError"]
    assert run.status == "failed"


async def test_a_run_that_ends_in_time_is_not_touched(autojump_clock: Any) -> None:
    calls: list[str] = []
    run = await slow_workflow(calls).create_run()
    result = await run.start(timeout=60)
    assert (result.status, trio.current_time()) == ("success", 12)


async def test_the_deadline_counts_suspended_time_and_survives_recovery(
    trioflow_clock: Any,
) -> None:
    """Started at t=0 with timeout=30, suspended until t=40: the resume fails at once."""
    calls: list[str] = []

    async def ask(ctx: trioflow.StepContext[Any]) -> Any:
        calls.append("ask")
        if ctx.resume_data is None:
            ctx.suspend()
        return ctx.resume_data

    workflow = (
        trioflow.create_workflow(id="asking", timeout=30)
        .then(trioflow.create_step(id="ask", execute=ask))
        .commit()
    )
    storage = trioflow.MemoryStorage()
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
        run = await engine.create_run(workflow, run_id="a")
        assert (await run.start()).status == "suspended"
    await trio.sleep(40)
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
        result = await (await engine.get_run("a")).resume(resume_data="late")
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.RunTimeoutError)
    assert calls == ["ask"]  # the resumed step never ran again


async def test_a_cancel_before_the_deadline_wins(autojump_clock: Any) -> None:
    calls: list[str] = []
    run = await slow_workflow(calls).create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run.start(timeout=5))
        await trio.sleep(3)
        assert (await run.cancel()).status == "canceled"
    await trio.sleep(10)
    assert run.status == "canceled"


async def test_a_timeout_must_be_a_positive_number() -> None:
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        trioflow.create_workflow(id="w", timeout=0)
    run = await slow_workflow([]).create_run()
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        await run.start(timeout=-1)
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        await run.start(timeout="5")  # type: ignore[arg-type]
    assert run.status == "pending"
