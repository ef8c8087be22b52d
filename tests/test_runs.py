"""Runs (SPEC §2): create_run, start, RunResult/StepResult, live status, watch() and
its typed events, send_event; a run nobody watches builds no events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trioflow
from trioflow import _clock, _events, _executor, _run

EPOCH = 1_700_000_000.0


@pytest.fixture
def wall_clock() -> Iterator[None]:
    """Tie trioflow's wall clock to Trio's, so timestamps are exact virtual times."""
    previous = _clock.set_wall_clock(lambda: EPOCH + trio.current_time())
    try:
        yield
    finally:
        _clock.set_wall_clock(previous)


class Query(msgspec.Struct):
    value: str


class Answer(msgspec.Struct):
    result: str


def sleeper(step_id: str, seconds: float, output: Any = None) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        await trio.sleep(seconds)
        return output if output is not None else step_id

    return trioflow.create_step(id=step_id, execute=execute)


async def collect(run: trioflow.Run, into: list[Any], *, task_status: Any) -> None:
    """Watch `run` and append every event to `into` until the stream ends."""
    async with run.watch() as events:
        task_status.started()
        async for event in events:
            into.append(event)


def shape(events: list[Any]) -> list[tuple[str, str | None, str | None]]:
    return [(e.type, getattr(e, "step_id", None), getattr(e, "status", None)) for e in events]


# -- create_run / start / results ---------------------------------------------------------


async def test_create_run_ids() -> None:
    workflow = trioflow.create_workflow(id="wf").then(sleeper("a", 0)).commit()
    first = await workflow.create_run()
    second = await workflow.create_run()
    assert isinstance(first, trioflow.Run)
    assert first.run_id != second.run_id
    # Random UUID4s in canonical form (made by hand, faster than str(uuid.uuid4())).
    from trioflow._util import random_run_id

    ids = [first.run_id, second.run_id, *(random_run_id() for _ in range(5000))]
    assert len(set(ids)) == len(ids)
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert (str(parsed), parsed.version, parsed.variant) == (run_id, 4, uuid.RFC_4122)
    named = await workflow.create_run(run_id="my-run")
    assert named.run_id == "my-run"
    assert named.status == "pending"
    assert named.cancel_requested is False
    assert named.workflow is workflow


async def test_start_with_dict_or_struct() -> None:
    @trioflow.step(id="echo", input_schema=Query, output_schema=Answer)
    async def echo(ctx: trioflow.StepContext[Query]) -> Answer:
        assert isinstance(ctx.input_data, Query)
        return Answer(result=ctx.input_data.value)

    workflow = trioflow.create_workflow(id="wf", input_schema=Query).then(echo).commit()
    for data in ({"value": "v"}, Query(value="v")):
        run = await workflow.create_run()
        result = await run.start(input_data=data)
        assert result.status == "success"
        assert result.result == Answer(result="v")
        assert result.steps["echo"].payload == Query(value="v")


async def test_run_result_and_step_result_fields(autojump_clock: Any, wall_clock: None) -> None:
    workflow = trioflow.create_workflow(id="wf").then(sleeper("a", 2)).then(sleeper("b", 3))
    run = await workflow.commit().create_run(run_id="r1")
    t0 = trio.current_time()
    result = await run.start(input_data={"x": 1})
    assert trio.current_time() - t0 == 5
    assert isinstance(result, trioflow.RunResult)
    assert result.run_id == "r1"
    assert result.status == "success"
    assert result.result == "b"
    assert result.error is None
    assert result.suspended == []
    assert list(result.steps) == ["a", "b"]
    a, b = result.steps["a"], result.steps["b"]
    assert isinstance(a, trioflow.StepResult)
    assert (a.status, a.output, a.payload, a.error) == ("success", "a", {"x": 1}, None)
    assert (b.status, b.output, b.payload) == ("success", "b", "a")
    assert a.suspend_payload is None and a.resume_payload is None
    assert a.started_at == EPOCH + t0
    assert a.ended_at == EPOCH + t0 + 2
    assert b.started_at == EPOCH + t0 + 2
    assert b.ended_at == EPOCH + t0 + 5
    with pytest.raises(AttributeError):
        result.status = "failed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.output = "changed"  # type: ignore[misc]
    assert run.result_nowait() == result


async def test_failed_run_result_carries_the_error() -> None:
    @trioflow.step(id="bad")
    async def bad(ctx: trioflow.StepContext[Any]) -> None:
        raise LookupError("gone")

    run = await trioflow.create_workflow(id="wf").then(bad).commit().create_run()
    result = await run.start()
    assert result.status == "failed"
    assert isinstance(result.error, LookupError)
    assert result.result is None
    assert result.steps["bad"].status == "failed"
    assert result.steps["bad"].error is result.error
    assert result.steps["bad"].output is None


async def test_start_twice_raises_run_state_error() -> None:
    run = await trioflow.create_workflow(id="wf").then(sleeper("a", 0)).commit().create_run()
    await run.start()
    with pytest.raises(trioflow.RunStateError, match="already started"):
        await run.start()


async def test_live_status_transitions(autojump_clock: Any) -> None:
    seen: list[str] = []
    run: trioflow.Run | None = None

    @trioflow.step(id="look")
    async def look(ctx: trioflow.StepContext[Any]) -> None:
        assert run is not None
        seen.append(run.status)
        await trio.sleep(1)

    workflow = trioflow.create_workflow(id="wf").then(look).sleep(5).then(look_again()).commit()
    run = await workflow.create_run()
    assert run.status == "pending"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(0.5)  # inside "look"
        seen.append(run.status)
        await trio.sleep(2)  # inside the .sleep(5)
        seen.append(run.status)
        await trio.sleep(4)  # inside "look-again"
        seen.append(run.status)
    seen.append(run.status)
    assert seen == ["running", "running", "waiting", "running", "success"]


def look_again() -> trioflow.Step[Any, Any]:
    @trioflow.step(id="look-again")
    async def look_again(ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep(1)

    return look_again


async def test_live_status_of_failed_suspended_and_canceled_runs() -> None:
    @trioflow.step(id="fail")
    async def fail(ctx: trioflow.StepContext[Any]) -> None:
        raise ValueError

    @trioflow.step(id="wait")
    async def wait(ctx: trioflow.StepContext[Any]) -> None:
        ctx.suspend()

    failing = await trioflow.create_workflow(id="f").then(fail).commit().create_run()
    await failing.start()
    assert failing.status == "failed"
    suspending = await trioflow.create_workflow(id="s").then(wait).commit().create_run()
    await suspending.start()
    assert suspending.status == "suspended"
    await suspending.cancel()
    assert suspending.status == "canceled"


# -- watch() ------------------------------------------------------------------------------


async def test_watch_yields_typed_events_in_order(autojump_clock: Any) -> None:
    workflow = trioflow.create_workflow(id="wf").then(sleeper("a", 1)).sleep(2, id="nap")
    run = await workflow.then(sleeper("b", 1)).commit().create_run(run_id="rid")
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        await run.start()
    assert shape(events) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "a", "running"),
        ("workflow-step-result", "a", "success"),
        ("workflow-step-waiting", "nap", "waiting"),
        ("workflow-step-result", "nap", "success"),
        ("workflow-step-start", "b", "running"),
        ("workflow-step-result", "b", "success"),
        ("workflow-finish", None, "success"),
    ]
    assert all(event.run_id == "rid" for event in events)
    assert isinstance(events[0], trioflow.WorkflowStart)
    assert isinstance(events[1], trioflow.WorkflowStepStart)
    assert isinstance(events[2], trioflow.WorkflowStepResult)
    assert isinstance(events[3], trioflow.WorkflowStepWaiting)
    assert isinstance(events[-1], trioflow.WorkflowFinish)
    assert events[2].output == "a"
    assert events[-1].result == "b"
    # Encoded with the `type` tag; decoded back by the tagged union.
    encoded = msgspec.json.encode(events[1])
    assert msgspec.json.decode(encoded)["type"] == "workflow-step-start"
    assert msgspec.json.decode(encoded, type=trioflow.WorkflowEvent) == events[1]


async def test_failed_step_event_and_finish_status() -> None:
    @trioflow.step(id="bad")
    async def bad(ctx: trioflow.StepContext[Any]) -> None:
        raise ValueError("nope")

    run = await trioflow.create_workflow(id="wf").then(bad).commit().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        await run.start()
    assert shape(events) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "bad", "running"),
        ("workflow-step-result", "bad", "failed"),
        ("workflow-finish", None, "failed"),
    ]
    assert "nope" in events[2].error
    assert "nope" in events[3].error


async def test_several_watchers_get_the_same_events_in_the_same_order(
    autojump_clock: Any,
) -> None:
    workflow = (
        trioflow.create_workflow(id="wf")
        .parallel([sleeper("p1", 1), sleeper("p2", 2), sleeper("p3", 3)])
        .then(sleeper("last", 1))
        .commit()
    )
    run = await workflow.create_run()
    streams: list[list[Any]] = [[], [], []]
    async with trio.open_nursery() as nursery:
        for into in streams:
            await nursery.start(collect, run, into)
        await run.start()
    assert len(streams[0]) == 1 + 2 * 4 + 1
    assert streams[0] == streams[1] == streams[2]
    assert shape(streams[0])[:4] == [
        ("workflow-start", None, None),
        ("workflow-step-start", "p1", "running"),
        ("workflow-step-start", "p2", "running"),
        ("workflow-step-start", "p3", "running"),
    ]


async def test_watch_ends_after_workflow_finish_and_each_execution_has_one() -> None:
    @trioflow.step(id="gate")
    async def gate(ctx: trioflow.StepContext[Any]) -> str:
        if ctx.resume_data is None:
            ctx.suspend("waiting for a human")
        return str(ctx.resume_data)

    run = await trioflow.create_workflow(id="wf").then(gate).commit().create_run()
    first: list[Any] = []
    second: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, first)
        await run.start()
    # The stream ended by itself after the first execution's finish.
    assert shape(first) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "gate", "running"),
        ("workflow-step-suspended", "gate", "suspended"),
        ("workflow-finish", None, "suspended"),
    ]
    assert isinstance(first[2], trioflow.WorkflowStepSuspended)
    assert first[2].payload == "waiting for a human"
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, second)
        await run.resume(step="gate", resume_data="ok")
    assert shape(second) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "gate", "running"),
        ("workflow-step-result", "gate", "success"),
        ("workflow-finish", None, "success"),
    ]


async def test_watch_does_not_replay_earlier_events(autojump_clock: Any) -> None:
    workflow = trioflow.create_workflow(id="wf").then(sleeper("a", 1)).then(sleeper("b", 1))
    run = await workflow.commit().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(1.5)  # "a" is done, "b" is running
        await nursery.start(collect, run, events)
    assert shape(events) == [
        ("workflow-step-result", "b", "success"),
        ("workflow-finish", None, "success"),
    ]


async def test_nested_workflow_steps_appear_under_their_path() -> None:
    child = trioflow.create_workflow(id="child").then(sleeper("inner", 0)).commit()
    run = await trioflow.create_workflow(id="parent").then(child).commit().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        result = await run.start()
    assert shape(events) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "child", "running"),
        ("workflow-step-start", "child.inner", "running"),
        ("workflow-step-result", "child.inner", "success"),
        ("workflow-step-result", "child", "success"),
        ("workflow-finish", None, "success"),
    ]
    assert result.steps["child.inner"].output == "inner"


# -- send_event ---------------------------------------------------------------------------


async def test_send_event_is_kept_until_waited_for(autojump_clock: Any) -> None:
    class Approval(msgspec.Struct):
        by: str

    seen: list[tuple[Any, Any]] = []

    @trioflow.step(id="approved", resume_schema=Approval)
    async def approved(ctx: trioflow.StepContext[Any]) -> str:
        seen.append((ctx.input_data, ctx.resume_data))
        return str(ctx.resume_data.by)

    workflow = (
        trioflow.create_workflow(id="wf")
        .then(sleeper("slow", 10, output="prev"))
        .wait_for_event("approval", approved)
        .commit()
    )
    run = await workflow.create_run()
    with pytest.raises(trioflow.ValidationError):
        await run.send_event("approval", {"by": 3})
    with pytest.raises(ValueError, match=r"no \.wait_for_event"):
        await run.send_event("unknown", {})
    await run.send_event("approval", {"by": "ann"})  # before the run even starts
    result = await run.start()
    assert result.status == "success"
    assert result.result == "ann"
    assert seen == [("prev", Approval(by="ann"))]
    assert trio.current_time() == 10  # it never waited for the event


async def test_wait_for_event_waits_and_reports_waiting(autojump_clock: Any) -> None:
    @trioflow.step(id="go")
    async def go(ctx: trioflow.StepContext[Any]) -> Any:
        return ctx.resume_data

    run = await trioflow.create_workflow(id="wf").wait_for_event("go", go).commit().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        nursery.start_soon(run.start)
        await trio.sleep(7)
        assert run.status == "waiting"
        assert run.result_nowait().steps["go"].status == "waiting"
        await run.send_event("go", 42)
    assert run.status == "success"
    assert run.result_nowait().result == 42
    assert ("workflow-step-waiting", "go", "waiting") in shape(events)


# -- a run nobody watches -----------------------------------------------------------------


EVENT_NAMES = [
    "WorkflowStart",
    "WorkflowStepStart",
    "WorkflowStepResult",
    "WorkflowStepSuspended",
    "WorkflowStepWaiting",
    "WorkflowStepProgress",
    "WorkflowCanceled",
    "WorkflowFinish",
]


class _CountingEvents:
    """Stands in for the `_events` module where the engine builds events: the same
    names, but every event class counts its constructions."""

    def __init__(self, built: list[str]) -> None:
        self._built = built

    def __getattr__(self, name: str) -> Any:
        real = getattr(_events, name)
        if name not in EVENT_NAMES:
            return real

        def build(**fields: Any) -> Any:
            self._built.append(name)
            return real(**fields)

        return build


@pytest.fixture
def built_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count every event the engine constructs (`_run` and `_executor` build them
    through their `ev` module reference)."""
    built: list[str] = []
    engine_modules = [_executor, _run]
    for module in engine_modules:
        assert module.ev is _events
        monkeypatch.setattr(module, "ev", _CountingEvents(built))
    return built


def busy_workflow() -> trioflow.Workflow:
    @trioflow.step(id="each")
    async def each(ctx: trioflow.StepContext[int]) -> int:
        return ctx.input_data

    @trioflow.step(id="gate")
    async def gate(ctx: trioflow.StepContext[Any]) -> Any:
        if ctx.resume_data is None:
            ctx.suspend()
        return ctx.input_data

    return (
        trioflow.create_workflow(id="busy")
        .then(sleeper("a", 1, output=[1, 2, 3]))
        .foreach(each, concurrency=2)
        .parallel([sleeper("p", 1), sleeper("q", 1)])
        .sleep(1)
        .then(gate)
        .commit()
    )


async def test_a_run_nobody_watches_builds_no_events(
    autojump_clock: Any, built_events: list[str]
) -> None:
    run = await busy_workflow().create_run()
    assert (await run.start()).status == "suspended"
    assert (await run.resume(step="gate", resume_data=1)).status == "success"
    canceled = await busy_workflow().create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(canceled.start)
        await trio.sleep(0.5)
        await canceled.cancel()
    assert built_events == []

    # The same work watched does build them, so the counter above is live.
    watched = await busy_workflow().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, watched, events)
        await watched.start()
    assert len(built_events) == len(events) > 10
    assert "WorkflowStepProgress" in built_events
