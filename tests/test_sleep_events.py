""".sleep(), .sleep_until() and .wait_for_event(): 'waiting', Trio's clock, and cancel."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from composition_helpers import Log, at, of, sleeper, tied_wall_clock, watched_start

import trioflow


@pytest.fixture
def wall_clock() -> Iterator[None]:
    with tied_wall_clock():
        yield


async def probe_status(
    run: trioflow.Run, times: list[float], seen: list[tuple[float, str]]
) -> None:
    """Record `run.status` at each of the virtual `times`."""
    for when in times:
        await trio.sleep_until(when)
        seen.append((when, run.status))


# -- sleep -------------------------------------------------------------------------------


async def test_sleep_waits_on_trios_clock_and_passes_its_input_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    seen: list[Any] = []

    async def after(ctx: trioflow.StepContext[Any]) -> Any:
        seen.append(ctx.input_data)
        return ctx.input_data

    workflow = (
        trioflow.create_workflow(id="sleepy")
        .then(sleeper("first", 1, log, output={"n": 1}))
        .sleep(3)
        .then(trioflow.create_step(id="after", execute=after))
        .commit()
    )
    run = await workflow.create_run()
    changes: list[tuple[float, str]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe_status, run, [0.5, 1.5, 3.5], changes)
        watched = await watched_start(run)
    assert watched.ended_at == 4
    assert seen == [{"n": 1}]
    assert changes == [(0.5, "running"), (1.5, "waiting"), (3.5, "waiting")]
    assert run.status == "success"
    assert watched.statuses == {"first": "success", "sleep-1": "success", "after": "success"}
    assert watched.result is not None
    assert watched.result.steps["sleep-1"].output == {"n": 1}
    waiting = [(t, e) for t, e in watched.timeline if e.type == "workflow-step-waiting"]
    assert [(t, e.step_id, e.status) for t, e in waiting] == [(1, "sleep-1", "waiting")]
    results = [(t, e.step_id) for t, e in watched.timeline if e.type == "workflow-step-result"]
    assert results == [(1, "first"), (4, "sleep-1"), (4, "after")]


async def test_sleep_takes_a_function_of_the_context_and_an_id(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def seconds(ctx: trioflow.ConditionContext[Any]) -> float:
        return float(ctx.input_data["delay"])

    workflow = (
        trioflow.create_workflow(id="sleepy")
        .sleep(seconds, id="back-off")
        .sleep(lambda ctx: 0.5)
        .commit()
    )
    result = await (await workflow.create_run()).start({"delay": 2.5})
    assert result.status == "success"
    assert trio.current_time() == 3
    assert list(result.steps) == ["back-off", "sleep-1"]


async def test_cancel_ends_a_sleep_at_once(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="sleepy").sleep(100).then(sleeper("after", 1, log)).commit()
    )
    run = await workflow.create_run()
    watched = await watched_start(run, cancel_at=2)
    assert watched.cancel_returned_at == 2
    assert watched.ended_at == 2
    assert log == []
    assert watched.statuses == {"sleep-0": "canceled"}
    assert run.status == "canceled"
    assert watched.brief() == [
        ("workflow-start", None, None),
        ("workflow-step-waiting", "sleep-0", "waiting"),
        ("workflow-step-result", "sleep-0", "canceled"),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, "canceled"),
    ]


def test_sleep_rejects_negative_seconds() -> None:
    with pytest.raises(ValueError, match="seconds"):
        trioflow.create_workflow(id="sleepy").sleep(-1)


# -- sleep_until -------------------------------------------------------------------------


async def test_sleep_until_a_datetime_runs_on_trios_clock(
    autojump_clock: trio.testing.MockClock, wall_clock: None
) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="alarm")
        .then(sleeper("first", 2, log))
        .sleep_until(at(10))
        .then(sleeper("after", 1, log))
        .commit()
    )
    run = await workflow.create_run()
    watched = await watched_start(run)
    assert of(log, "start") == [("first", 0), ("after", 10)]
    assert watched.ended_at == 11
    assert watched.statuses == {"first": "success", "sleep-until-1": "success", "after": "success"}
    waiting = [(t, e.step_id) for t, e in watched.timeline if e.type == "workflow-step-waiting"]
    assert waiting == [(2, "sleep-until-1")]


async def test_sleep_until_takes_a_function_and_a_past_time_does_not_wait(
    autojump_clock: trio.testing.MockClock, wall_clock: None
) -> None:
    async def deadline(ctx: trioflow.ConditionContext[Any]) -> dt.datetime:
        return at(ctx.input_data)

    workflow = (
        trioflow.create_workflow(id="alarm")
        .sleep_until(deadline, id="wake")
        .sleep_until(at(-100))  # in the past: no wait at all
        .commit()
    )
    result = await (await workflow.create_run()).start(7)
    assert result.status == "success"
    assert trio.current_time() == 7
    assert list(result.steps) == ["wake", "sleep-until-1"]


def test_sleep_until_rejects_a_naive_datetime_when_the_workflow_is_built() -> None:
    builder = trioflow.create_workflow(id="alarm")
    with pytest.raises(ValueError, match="timezone-aware"):
        builder.sleep_until(dt.datetime(2030, 1, 1))


async def test_a_naive_datetime_from_a_function_fails_the_run(wall_clock: None) -> None:
    workflow = (
        trioflow.create_workflow(id="alarm")
        .sleep_until(lambda ctx: dt.datetime(2030, 1, 1))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "failed"
    assert isinstance(result.error, ValueError)


async def test_cancel_ends_a_sleep_until_at_once(
    autojump_clock: trio.testing.MockClock, wall_clock: None
) -> None:
    workflow = trioflow.create_workflow(id="alarm").sleep_until(at(1000)).commit()
    watched = await watched_start(await workflow.create_run(), cancel_at=5)
    assert watched.cancel_returned_at == 5
    assert watched.statuses == {"sleep-until-0": "canceled"}


# -- wait_for_event ----------------------------------------------------------------------


class Go(msgspec.Struct):
    by: str


def receiver(seen: list[Any]) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> str:
        seen.append((ctx.input_data, ctx.resume_data))
        return f"{ctx.input_data} by {ctx.resume_data.by}"

    return trioflow.create_step(id="on-go", execute=execute, resume_schema=Go)


async def test_wait_for_event_waits_and_hands_the_data_to_the_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="gate")
        .then(sleeper("first", 1, log, output="ready"))
        .wait_for_event("go", receiver(seen))
        .commit()
    )
    run = await workflow.create_run()
    changes: list[tuple[float, str]] = []

    async def send_later() -> None:
        await trio.sleep(3)
        await run.send_event("go", {"by": "alice"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe_status, run, [0.5, 1.5, 2.5], changes)
        nursery.start_soon(send_later)
        watched = await watched_start(run)
    assert watched.result is not None
    assert watched.result.status == "success"
    assert watched.result.result == "ready by alice"
    assert seen == [("ready", Go(by="alice"))]
    assert watched.ended_at == 3
    assert changes == [(0.5, "running"), (1.5, "waiting"), (2.5, "waiting")]
    assert run.status == "success"
    assert watched.result.steps["on-go"].status == "success"
    timed = [(t, e.type, getattr(e, "step_id", None)) for t, e in watched.timeline]
    assert timed[3:6] == [
        (1, "workflow-step-waiting", "on-go"),
        (3, "workflow-step-start", "on-go"),
        (3, "workflow-step-result", "on-go"),
    ]


async def test_invalid_event_data_raises_at_send_event_and_the_run_keeps_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    workflow = trioflow.create_workflow(id="gate").wait_for_event("go", receiver(seen)).commit()
    run = await workflow.create_run()
    errors: list[trioflow.ValidationError] = []

    async def send_later() -> None:
        await trio.sleep(1)
        with pytest.raises(trioflow.ValidationError) as info:
            await run.send_event("go", {"by": 42})
        errors.append(info.value)
        assert run.status == "waiting"
        with pytest.raises(ValueError, match=r"no \.wait_for_event"):
            await run.send_event("unknown", {})
        await trio.sleep(1)
        await run.send_event("go", Go(by="bob"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        result = await run.start("x")
    assert result.status == "success"
    assert trio.current_time() == 2
    assert seen == [("x", Go(by="bob"))]
    assert errors[0].step_id == "on-go"
    assert "by" in str(errors[0])


async def test_an_event_sent_before_the_wait_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="gate")
        .then(sleeper("first", 2, log, output="early"))
        .wait_for_event("go", receiver(seen))
        .commit()
    )
    run = await workflow.create_run()
    await run.send_event("go", {"by": "before-start"})  # the run is still 'pending'
    watched = await watched_start(run)
    assert seen == [("early", Go(by="before-start"))]
    assert watched.ended_at == 2
    assert watched.of_type("workflow-step-waiting") == []  # nothing to wait for


async def test_cancel_ends_an_event_wait(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    workflow = trioflow.create_workflow(id="gate").wait_for_event("go", receiver(seen)).commit()
    run = await workflow.create_run()
    watched = await watched_start(run, cancel_at=4)
    assert watched.cancel_returned_at == 4
    assert watched.statuses == {"on-go": "canceled"}
    assert run.status == "canceled"
    assert seen == []
    with pytest.raises(trioflow.RunStateError):
        await run.send_event("go", {"by": "too late"})


def _approval_with_timeout(calls: list[str]) -> trioflow.Workflow:
    async def approve(ctx: trioflow.StepContext[Any]) -> Any:
        calls.append(f"approve {ctx.resume_data}")
        return ctx.resume_data

    async def after(ctx: trioflow.StepContext[Any]) -> Any:
        calls.append("after")
        return ctx.input_data

    return (
        trioflow.create_workflow(id="timed-wait")
        .wait_for_event("approved", trioflow.create_step(id="approve", execute=approve), timeout=5)
        .then(trioflow.create_step(id="after", execute=after))
        .commit()
    )


async def test_an_event_that_never_comes_fails_the_step_at_its_timeout(
    autojump_clock: Any,
) -> None:
    calls: list[str] = []
    run = await _approval_with_timeout(calls).create_run()
    result = await run.start()
    assert trio.current_time() == 5
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.EventTimeoutError)
    assert str(result.error).startswith("step 'approve' waited 5s for event 'approved'")
    assert result.steps["approve"].status == "failed"
    assert calls == []


async def test_an_event_in_time_is_taken_and_the_timeout_never_fires(
    autojump_clock: Any,
) -> None:
    calls: list[str] = []
    run = await _approval_with_timeout(calls).create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(3)
        await run.send_event("approved", "yes")
    assert run.status == "success"
    assert trio.current_time() == 3
    assert calls == ["approve yes", "after"]


async def test_a_recovered_wait_keeps_its_deadline(trioflow_clock: Any) -> None:
    calls: list[str] = []
    workflow = _approval_with_timeout(calls)
    storage = trioflow.MemoryStorage()

    class Leave(Exception):
        pass

    with pytest.raises(Leave):
        async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
            run = await engine.create_run(workflow, run_id="w")
            await run.start_soon()
            await trio.sleep(4)
            raise Leave  # the process stops; the run stays recoverable
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
        result = await (await engine.get_run("w")).result()
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.EventTimeoutError)
    assert trio.current_time() == 5  # not 4 + 5


def test_an_event_timeout_must_be_a_positive_number() -> None:
    step = trioflow.create_step(id="s", execute=lambda ctx: None)
    with pytest.raises(ValueError, match="timeout must be a number of seconds > 0"):
        trioflow.create_workflow(id="w").wait_for_event("e", step, timeout=0)
