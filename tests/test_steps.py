"""Steps and workflows (SPEC §1): create_step/@step, async and thread steps, every
StepContext field, validation at step boundaries and workflow edges, builder misuse."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trioflow


class Query(msgspec.Struct):
    value: str


class Answer(msgspec.Struct):
    result: str


class Nested(msgspec.Struct):
    inner: Query


class Counter(msgspec.Struct):
    count: int = 0
    seen: list[str] = []


async def run_workflow(workflow: trioflow.Workflow, input_data: Any = None) -> trioflow.RunResult:
    run = await workflow.create_run()
    return await run.start(input_data=input_data)


# -- create_step / @step ------------------------------------------------------------------


async def test_create_step_and_decorator_build_equivalent_steps() -> None:
    async def execute(ctx: trioflow.StepContext[Query]) -> Answer:
        return Answer(result=ctx.input_data.value.upper())

    made = trioflow.create_step(
        id="upper", execute=execute, input_schema=Query, output_schema=Answer, retries=2
    )

    @trioflow.step(id="upper2", input_schema=Query, output_schema=Answer, timeout=5)
    async def decorated(ctx: trioflow.StepContext[Query]) -> Answer:
        """Make it loud."""
        return Answer(result=ctx.input_data.value.upper())

    assert isinstance(made, trioflow.Step)
    assert isinstance(decorated, trioflow.Step)
    assert made.id == "upper" and decorated.id == "upper2"
    assert made.input_schema is Query and made.output_schema is Answer
    assert made.retries == 2 and decorated.timeout == 5
    assert decorated.description == "Make it loud."
    for step in (made, decorated):
        workflow = trioflow.create_workflow(id="wf", input_schema=Query).then(step).commit()
        result = await run_workflow(workflow, {"value": "hi"})
        assert result.status == "success"
        assert result.result == Answer(result="HI")


async def test_async_step_runs_in_the_trio_thread() -> None:
    where: list[bool] = []

    @trioflow.step(id="a")
    async def a(ctx: trioflow.StepContext[Any]) -> int:
        where.append(threading.current_thread() is threading.main_thread())
        return 1

    result = await run_workflow(trioflow.create_workflow(id="wf").then(a).commit())
    assert result.status == "success"
    assert where == [True]


async def test_plain_def_step_runs_in_a_worker_thread() -> None:
    where: list[bool] = []

    def blocking(ctx: trioflow.StepContext[int]) -> int:
        where.append(threading.current_thread() is threading.main_thread())
        assert ctx.abort_signal.aborted is False  # readable from the thread
        return ctx.input_data * 2

    step = trioflow.create_step(id="double", execute=blocking)
    workflow = trioflow.create_workflow(id="wf").then(step).then(step_plus_one()).commit()
    result = await run_workflow(workflow, 20)
    assert result.status == "success"
    assert result.result == 41
    assert where == [False]
    assert result.steps["double"].output == 40


def step_plus_one() -> trioflow.Step[Any, Any]:
    @trioflow.step(id="plus-one")
    async def plus_one(ctx: trioflow.StepContext[int]) -> int:
        return ctx.input_data + 1

    return plus_one


async def test_thread_step_exception_fails_the_run() -> None:
    def broken(ctx: trioflow.StepContext[Any]) -> None:
        raise KeyError("missing")

    workflow = (
        trioflow.create_workflow(id="wf")
        .then(trioflow.create_step(id="broken", execute=broken))
        .commit()
    )
    result = await run_workflow(workflow)
    assert result.status == "failed"
    assert isinstance(result.error, KeyError)
    assert result.steps["broken"].status == "failed"
    assert isinstance(result.steps["broken"].error, KeyError)


# -- StepContext fields -------------------------------------------------------------------


async def test_input_data_is_the_validated_struct_and_chains_outputs() -> None:
    seen: list[object] = []

    @trioflow.step(id="first", input_schema=Query, output_schema=Answer)
    async def first(ctx: trioflow.StepContext[Query]) -> dict[str, str]:
        seen.append(ctx.input_data)
        return {"result": ctx.input_data.value + "!"}  # a dict converts to the Struct

    @trioflow.step(id="second", input_schema=Answer)
    async def second(ctx: trioflow.StepContext[Answer]) -> str:
        seen.append(ctx.input_data)
        return ctx.input_data.result * 2

    workflow = trioflow.create_workflow(id="wf", input_schema=Query).then(first).then(second)
    result = await run_workflow(workflow.commit(), {"value": "x"})
    assert result.status == "success"
    assert seen == [Query(value="x"), Answer(result="x!")]
    assert result.result == "x!x!"
    assert result.steps["first"].output == Answer(result="x!")


async def test_run_id_workflow_id_and_retry_count() -> None:
    seen: list[tuple[str, str, int]] = []

    @trioflow.step(id="flaky", retries=2)
    async def flaky(ctx: trioflow.StepContext[Any]) -> int:
        seen.append((ctx.run_id, ctx.workflow_id, ctx.retry_count))
        if ctx.retry_count < 2:
            raise RuntimeError("not yet")
        return ctx.retry_count

    workflow = trioflow.create_workflow(id="ids").then(flaky).commit()
    run = await workflow.create_run(run_id="run-42")
    result = await run.start()
    assert result.status == "success"
    assert result.result == 2
    assert seen == [("run-42", "ids", 0), ("run-42", "ids", 1), ("run-42", "ids", 2)]


async def test_a_steps_abort_signal_follows_the_runs_signal() -> None:
    """Each step gets its own signal, aborted with the run's and with the same reason."""
    signals: list[trioflow.AbortSignal] = []

    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None:
        signals.append(ctx.abort_signal)
        assert ctx.abort_signal is signals[0]  # one signal for the whole step
        await trio.sleep_forever()

    run = await trioflow.create_workflow(id="wf").then(s).commit().create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.testing.wait_all_tasks_blocked()
        assert len(signals) == 1
        assert isinstance(signals[0], trioflow.AbortSignal)
        assert signals[0] is not run.abort_signal
        assert signals[0].aborted is False
        await run.cancel("stop")
    assert signals[0].aborted is True
    assert signals[0].reason == "stop" == run.abort_signal.reason


async def test_get_step_result_and_get_init_data() -> None:
    seen: list[object] = []

    @trioflow.step(id="one")
    async def one(ctx: trioflow.StepContext[Any]) -> str:
        return "out-1"

    @trioflow.step(id="two")
    async def two(ctx: trioflow.StepContext[Any]) -> str:
        return "out-2"

    @trioflow.step(id="three")
    async def three(ctx: trioflow.StepContext[Any]) -> None:
        seen.append(ctx.get_step_result(one))  # by Step
        seen.append(ctx.get_step_result("two"))  # by id
        seen.append(ctx.get_step_result("nope"))  # unknown: None
        seen.append(ctx.get_init_data())

    workflow = trioflow.create_workflow(id="wf").then(one).then(two).then(three).commit()
    result = await run_workflow(workflow, {"start": 1})
    assert result.status == "success"
    assert seen == ["out-1", "out-2", None, {"start": 1}]


async def test_state_and_set_state_with_state_schema() -> None:
    seen: list[Counter] = []

    @trioflow.step(id="bump")
    async def bump(ctx: trioflow.StepContext[Any]) -> None:
        state = ctx.state
        seen.append(state)
        ctx.set_state({"count": state.count + 1, "seen": [*state.seen, "bump"]})

    @trioflow.step(id="look")
    async def look(ctx: trioflow.StepContext[Any]) -> int:
        seen.append(ctx.state)
        return int(ctx.state.count)

    workflow = (
        trioflow.create_workflow(id="wf", state_schema=Counter).then(bump).then(look).commit()
    )
    result = await run_workflow(workflow)
    assert result.status == "success"
    assert seen == [Counter(), Counter(count=1, seen=["bump"])]
    assert result.result == 1

    run = await workflow.create_run()
    result = await run.start(initial_state={"count": 10})
    assert result.result == 11


async def test_set_state_with_a_bad_value_fails_the_step() -> None:
    @trioflow.step(id="bad-state")
    async def bad_state(ctx: trioflow.StepContext[Any]) -> None:
        ctx.set_state({"count": "many"})

    workflow = trioflow.create_workflow(id="wf", state_schema=Counter).then(bad_state).commit()
    result = await run_workflow(workflow)
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.ValidationError)
    assert result.error.path == "$.count"
    assert "int" in str(result.error)


async def test_bail_ends_the_run_successfully_with_its_result() -> None:
    ran: list[str] = []

    @trioflow.step(id="bailer")
    async def bailer(ctx: trioflow.StepContext[Any]) -> None:
        ran.append("bailer")
        ctx.bail({"early": True})

    @trioflow.step(id="after")
    async def after(ctx: trioflow.StepContext[Any]) -> None:
        ran.append("after")

    result = await run_workflow(trioflow.create_workflow(id="wf").then(bailer).then(after).commit())
    assert result.status == "success"
    assert result.result == {"early": True}
    assert ran == ["bailer"]
    assert result.steps["bailer"].status == "success"
    assert result.steps["bailer"].output == {"early": True}
    assert "after" not in result.steps


async def test_ctx_abort_and_return_ctx_abort_both_end_the_run_canceled() -> None:
    @trioflow.step(id="bare")
    async def bare(ctx: trioflow.StepContext[Any]) -> None:
        ctx.abort()

    @trioflow.step(id="returned")
    async def returned(ctx: trioflow.StepContext[Any]) -> str:
        return ctx.abort("stop")

    for step in (bare, returned):
        result = await run_workflow(trioflow.create_workflow(id="wf").then(step).commit())
        assert result.status == "canceled"
        assert result.steps[step.id].status == "canceled"
        assert result.steps[step.id].output is None


async def test_suspend_and_resume_data() -> None:
    class Approval(msgspec.Struct):
        ok: bool

    seen: list[object] = []

    @trioflow.step(id="approve", resume_schema=Approval, suspend_schema=Query)
    async def approve(ctx: trioflow.StepContext[Any]) -> str:
        seen.append(ctx.resume_data)
        if ctx.resume_data is None:
            ctx.suspend({"value": "please"})
        return "approved" if ctx.resume_data.ok else "rejected"

    workflow = trioflow.create_workflow(id="wf").then(approve).commit()
    run = await workflow.create_run()
    result = await run.start(input_data=1)
    assert result.status == "suspended"
    assert run.status == "suspended"
    assert result.suspended == [["approve"]]
    assert result.steps["approve"].status == "suspended"
    assert result.steps["approve"].suspend_payload == Query(value="please")

    with pytest.raises(trioflow.ValidationError):
        await run.resume(step="approve", resume_data={"ok": "maybe"})
    assert run.status == "suspended"

    result = await run.resume(step="approve", resume_data={"ok": True})
    assert result.status == "success"
    assert result.result == "approved"
    assert seen == [None, Approval(ok=True)]
    assert result.steps["approve"].resume_payload == Approval(ok=True)


# -- validation ---------------------------------------------------------------------------


async def test_bad_step_output_fails_the_run_naming_step_path_and_type() -> None:
    @trioflow.step(id="liar", output_schema=Answer)
    async def liar(ctx: trioflow.StepContext[Any]) -> dict[str, int]:
        return {"result": 5}

    result = await run_workflow(trioflow.create_workflow(id="wf").then(liar).commit())
    assert result.status == "failed"
    error = result.error
    assert isinstance(error, trioflow.ValidationError)
    assert error.step_id == "liar"
    assert error.path == "$.result"
    assert "'liar'" in str(error) and "$.result" in str(error) and "`str`" in str(error)
    assert result.steps["liar"].status == "failed"
    assert result.steps["liar"].error is error


async def test_bad_step_input_names_the_nested_field_path() -> None:
    @trioflow.step(id="consumer", input_schema=Nested)
    async def consumer(ctx: trioflow.StepContext[Nested]) -> None:
        raise AssertionError("never runs")

    @trioflow.step(id="producer")
    async def producer(ctx: trioflow.StepContext[Any]) -> dict[str, Any]:
        return {"inner": {"value": 3}}

    workflow = trioflow.create_workflow(id="wf").then(producer).then(consumer).commit()
    result = await run_workflow(workflow)
    assert result.status == "failed"
    error = result.error
    assert isinstance(error, trioflow.ValidationError)
    assert error.step_id == "consumer"
    assert error.what == "input"
    assert error.path == "$.inner.value"
    assert "`str`" in str(error)
    assert result.steps["producer"].status == "success"
    assert result.steps["consumer"].status == "failed"


async def test_bad_workflow_input_fails_the_run_before_any_step() -> None:
    ran: list[str] = []

    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None:
        ran.append("s")

    workflow = trioflow.create_workflow(id="wf", input_schema=Query).then(s).commit()
    run = await workflow.create_run()
    result = await run.start(input_data={"value": 1})
    assert result.status == "failed"
    assert run.status == "failed"
    assert isinstance(result.error, trioflow.ValidationError)
    assert result.error.what == "input"
    assert result.error.path == "$.value"
    assert "`str`" in str(result.error)
    assert ran == []
    assert result.steps == {}


async def test_bad_workflow_output_fails_the_run() -> None:
    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> dict[str, Any]:
        return {"result": None}

    workflow = trioflow.create_workflow(id="wf", output_schema=Answer).then(s).commit()
    result = await run_workflow(workflow)
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.ValidationError)
    assert result.error.what == "output"
    assert result.error.path == "$.result"
    assert result.steps["s"].status == "success"  # the step itself was fine


async def test_start_accepts_a_struct_or_a_dict() -> None:
    @trioflow.step(id="echo", input_schema=Query, output_schema=Answer)
    async def echo(ctx: trioflow.StepContext[Query]) -> Answer:
        return Answer(result=ctx.input_data.value)

    workflow = (
        trioflow.create_workflow(id="wf", input_schema=Query, output_schema=Answer)
        .then(echo)
        .commit()
    )
    assert (await run_workflow(workflow, Query(value="s"))).result == Answer(result="s")
    assert (await run_workflow(workflow, {"value": "d"})).result == Answer(result="d")


# -- builder misuse -----------------------------------------------------------------------


async def test_create_run_of_an_uncommitted_workflow_raises() -> None:
    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None: ...

    workflow = trioflow.create_workflow(id="wf").then(s)
    with pytest.raises(RuntimeError, match="commit"):
        await workflow.create_run()


def test_uncommitted_workflow_cannot_be_a_step() -> None:
    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None: ...

    child = trioflow.create_workflow(id="child").then(s)
    with pytest.raises(RuntimeError, match="commit"):
        trioflow.create_workflow(id="parent").then(child)


def test_committed_workflow_cannot_grow() -> None:
    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None: ...

    workflow = trioflow.create_workflow(id="wf").then(s).commit()
    with pytest.raises(RuntimeError, match="committed"):
        workflow.then(s)


def test_duplicate_step_ids_are_rejected_at_commit() -> None:
    async def execute(ctx: trioflow.StepContext[Any]) -> None: ...

    a = trioflow.create_step(id="same", execute=execute)
    b = trioflow.create_step(id="same", execute=execute)
    with pytest.raises(ValueError, match="'same' twice"):
        trioflow.create_workflow(id="wf").then(a).then(b).commit()
    with pytest.raises(ValueError, match="'same' twice"):
        trioflow.create_workflow(id="wf").parallel([a, b]).commit()


def test_dots_in_ids_are_rejected() -> None:
    async def execute(ctx: trioflow.StepContext[Any]) -> None: ...

    with pytest.raises(ValueError, match=r"'\.'"):
        trioflow.create_step(id="a.b", execute=execute)
    with pytest.raises(ValueError, match=r"'\.'"):
        trioflow.create_workflow(id="w.f")


def test_empty_workflow_cannot_commit() -> None:
    with pytest.raises(ValueError, match="no steps"):
        trioflow.create_workflow(id="wf").commit()


def test_naive_datetime_in_sleep_until_raises_at_build_time() -> None:
    builder = trioflow.create_workflow(id="wf")
    with pytest.raises(ValueError, match="naive"):
        builder.sleep_until(dt.datetime(2030, 1, 1))
    aware = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert builder.sleep_until(aware) is builder


async def test_nothing_crashes_when_a_step_raises() -> None:
    @trioflow.step(id="boom")
    async def boom(ctx: trioflow.StepContext[Any]) -> None:
        await trio.lowlevel.checkpoint()
        raise ZeroDivisionError("boom")

    run = await trioflow.create_workflow(id="wf").then(boom).commit().create_run()
    result = await run.start()
    assert result.status == "failed"
    assert run.status == "failed"
    assert isinstance(result.error, ZeroDivisionError)
    assert result.steps["boom"].status == "failed"
