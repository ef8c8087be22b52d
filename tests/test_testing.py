"""trioflow.testing: the fixtures, the event recorder, drivers, step overrides and the
cancellation sweep. (The plugin under pytester, with and without trio_mode, and the
example test file are in test_testing_plugin.py.)"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trioflow
from trioflow._clock import wall_time
from trioflow.testing import (
    EPOCH,
    CancellationSweepError,
    SweepAttempt,
    cancel_invariants,
    cancellation_sweep,
    drive,
    override_steps,
    record_events,
    tie_wall_clock,
    virtual_datetime,
)

T0 = EPOCH.timestamp()


def sleeper(
    step_id: str, seconds: float, output: Any = None, **options: Any
) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        await trio.sleep(seconds)
        return step_id if output is None else output

    return trioflow.create_step(id=step_id, execute=execute, **options)


def two_steps(workflow_id: str = "two") -> trioflow.Workflow:
    return (
        trioflow.create_workflow(id=workflow_id)
        .then(sleeper("a", 1))
        .then(sleeper("b", 2))
        .commit()
    )


# -- the clock fixtures ----------------------------------------------------------------------


async def test_trioflow_clock_starts_at_0_and_ties_the_wall_clock(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    assert trio.current_time() == 0
    assert wall_time() == T0
    await trio.sleep(5)
    assert trio.current_time() == 5
    assert wall_time() == T0 + 5
    assert virtual_datetime(5) == dt.datetime(2030, 1, 1, 0, 0, 5, tzinfo=dt.UTC)


async def test_sleep_until_and_stored_timestamps_follow_virtual_time(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    workflow = (
        trioflow.create_workflow(id="timed")
        .then(sleeper("a", 1))
        .sleep_until(virtual_datetime(10))
        .then(sleeper("b", 2))
        .commit()
    )
    run = await workflow.create_run()
    result = await run.start()
    assert result.status == "success"
    assert trio.current_time() == 12
    steps = result.steps
    assert (steps["a"].started_at, steps["a"].ended_at) == (T0, T0 + 1)
    assert (steps["sleep-until-1"].started_at, steps["sleep-until-1"].ended_at) == (T0 + 1, T0 + 10)
    assert (steps["b"].started_at, steps["b"].ended_at) == (T0 + 10, T0 + 12)


async def test_trioflow_wall_clock_alone_works_with_autojump_clock(
    trioflow_wall_clock: dt.datetime, autojump_clock: trio.testing.MockClock
) -> None:
    assert trioflow_wall_clock == EPOCH
    await trio.sleep(3)
    assert wall_time() == T0 + 3


def test_tie_wall_clock_restores_the_clock_it_replaced() -> None:
    before = wall_time()
    epoch = dt.datetime(2040, 6, 1, tzinfo=dt.UTC)

    async def main() -> float:
        with tie_wall_clock(epoch):
            await trio.sleep(2)
            return wall_time()

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == (
        epoch.timestamp() + 2
    )
    assert abs(wall_time() - before) < 60  # the real clock again
    with pytest.raises(ValueError, match="timezone-aware"), tie_wall_clock(dt.datetime(2030, 1, 1)):
        pass  # pragma: no cover


# -- the event recorder ------------------------------------------------------------------------


async def test_trioflow_events_records_each_event_at_its_virtual_time(
    trioflow_clock: trio.testing.MockClock, trioflow_events: trioflow.testing.EventRecorder
) -> None:
    run = await two_steps().create_run()
    recording = trioflow_events.record(run)
    await run.start()
    assert recording.timed() == [
        (0, "workflow-start", None, None),
        (0, "workflow-step-start", "a", "running"),
        (1, "workflow-step-result", "a", "success"),
        (1, "workflow-step-start", "b", "running"),
        (3, "workflow-step-result", "b", "success"),
        (3, "workflow-finish", None, "success"),
    ]
    assert recording.brief()[1] == ("workflow-step-start", "a", "running")
    assert recording.times("workflow-step-result") == [1, 3]
    assert recording.times("workflow-step-start", "b") == [1]
    assert [e.step_id for e in recording.of_type("workflow-step-result")] == ["a", "b"]
    assert recording.finished
    assert trioflow_events.recordings == [recording]


async def test_a_recording_follows_a_run_across_suspend_and_resume(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    async def approve(ctx: trioflow.StepContext[Any]) -> Any:
        if ctx.resume_data is None:
            ctx.suspend({"ask": "ok?"})
        await trio.sleep(1)
        return ctx.resume_data

    workflow = (
        trioflow.create_workflow(id="approval")
        .then(sleeper("a", 1))
        .then(trioflow.create_step(id="approve", execute=approve))
        .commit()
    )
    run = await workflow.create_run()
    async with record_events(run) as recording:
        assert (await run.start()).status == "suspended"
        await trio.sleep(4)
        result = await run.resume(step="approve", resume_data={"ok": True})
        await recording.wait_finished()
    assert result.status == "success"
    assert recording.timed() == [
        (0, "workflow-start", None, None),
        (0, "workflow-step-start", "a", "running"),
        (1, "workflow-step-result", "a", "success"),
        (1, "workflow-step-start", "approve", "running"),
        (1, "workflow-step-suspended", "approve", "suspended"),
        (1, "workflow-finish", None, "suspended"),
        (5, "workflow-start", None, None),
        (5, "workflow-step-start", "approve", "running"),
        (6, "workflow-step-result", "approve", "success"),
        (6, "workflow-finish", None, "success"),
    ]


async def test_record_events_reraises_the_body_error_unwrapped(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    run = await two_steps().create_run()
    with pytest.raises(KeyError):
        async with record_events(run):
            raise KeyError("boom")


# -- the engine fixtures -----------------------------------------------------------------------

DURABLE = (
    trioflow.create_workflow(id="durable")
    .then(sleeper("a", 1))
    .sleep(5)
    .then(sleeper("b", 2))
    .commit()
)


@pytest.fixture
def trioflow_workflows() -> list[trioflow.Workflow]:
    return [DURABLE]


async def test_trioflow_engine_runs_durable_runs_in_virtual_time(
    trioflow_clock: trio.testing.MockClock, trioflow_engine: trioflow.Engine
) -> None:
    assert isinstance(trioflow_engine.storage, trioflow.MemoryStorage)
    run = await trioflow_engine.create_run("durable", run_id="r1")
    await run.start_soon()
    result = await run.result()
    assert result.status == "success"
    assert trio.current_time() == 8
    assert result.steps["b"].ended_at == T0 + 8
    [summary] = await trioflow_engine.list_runs(status="success")
    assert summary.run_id == "r1"


async def test_trioflow_engine_factory_opens_engines_sharing_a_storage(
    trioflow_clock: trio.testing.MockClock,
    trioflow_engine_factory: trioflow.testing.EngineFactory,
) -> None:
    storage = trioflow.MemoryStorage()
    first = await trioflow_engine_factory([DURABLE], storage=storage)
    second = await trioflow_engine_factory([DURABLE], storage=storage, lease_seconds=3)
    assert first.storage is second.storage is storage
    assert trioflow_engine_factory.engines == [first, second]
    run = await first.create_run(DURABLE)
    await run.start_soon()
    await trio.sleep(2)
    seen = await second.get_run(run.run_id)
    assert seen is not run
    assert seen.status == "waiting"
    assert (await seen.result()).status == "success"
    assert trio.current_time() == pytest.approx(8, abs=0.1)  # polled every 0.02 s


async def test_the_engine_factory_closes_runs_left_executing(
    trioflow_clock: trio.testing.MockClock,
    trioflow_engine_factory: trioflow.testing.EngineFactory,
) -> None:
    engine = await trioflow_engine_factory([DURABLE])
    run = await engine.create_run(DURABLE)
    await run.start_soon()
    await trio.sleep(2)
    assert run.status == "waiting"
    # The test ends with the run still executing: teardown interrupts it, no hang.


# -- drivers -----------------------------------------------------------------------------------


async def test_a_driver_stops_where_a_step_starts_and_the_test_cancels_there(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    workflow = (
        trioflow.create_workflow(id="three")
        .then(sleeper("a", 1))
        .then(sleeper("b", 2))
        .then(sleeper("c", 3))
        .commit()
    )
    run = await workflow.create_run()
    async with drive(run, {"x": 1}) as driver:
        event = await driver.until_step_starts("b")
        assert (event.step_id, event.payload) == ("b", "a")
        assert trio.current_time() == 1
        assert run.status == "running"
        cancel = await run.cancel()
        assert cancel.status == "canceled"
        result = await driver.result()
    assert trio.current_time() == 1
    assert result.status == "canceled"
    assert {path: r.status for path, r in result.steps.items()} == {
        "a": "success",
        "b": "canceled",
    }
    assert driver.recording.timed()[-3:] == [
        (1, "workflow-step-result", "b", "canceled"),
        (1, "workflow-canceled", None, None),
        (1, "workflow-finish", None, "canceled"),
    ]


async def test_until_waiting_then_send_event(trioflow_clock: trio.testing.MockClock) -> None:
    async def on_go(ctx: trioflow.StepContext[Any]) -> Any:
        return {"got": ctx.resume_data, "at": trio.current_time()}

    workflow = (
        trioflow.create_workflow(id="waits")
        .then(sleeper("a", 1))
        .sleep(2)
        .wait_for_event("go", trioflow.create_step(id="on-go", execute=on_go))
        .commit()
    )
    run = await workflow.create_run()
    async with drive(run) as driver:
        await driver.until_waiting("sleep-1")
        assert (trio.current_time(), run.status) == (1, "waiting")
        await driver.until_waiting("on-go")
        assert (trio.current_time(), run.status) == (3, "waiting")
        await trio.sleep(7)
        await run.send_event("go", "now")
        result = await driver.result()
    assert result.result == {"got": "now", "at": 10}
    assert driver.recording.times("workflow-step-start", "on-go") == [10]


async def test_until_suspended_then_resume_in_the_driver(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    class Decision(msgspec.Struct):
        ok: bool

    async def approve(ctx: trioflow.StepContext[Any]) -> Any:
        if ctx.resume_data is None:
            await trio.sleep(1)
            ctx.suspend("ask")
        await trio.sleep(2)
        return ctx.resume_data.ok

    workflow = (
        trioflow.create_workflow(id="approval")
        .then(trioflow.create_step(id="approve", execute=approve, resume_schema=Decision))
        .then(sleeper("after", 1))
        .commit()
    )
    run = await workflow.create_run()
    async with drive(run) as driver:
        event = await driver.until_suspended("approve")
        assert event.payload == "ask"
        assert (trio.current_time(), run.status, driver.executing) == (1, "suspended", False)
        with pytest.raises(trioflow.ValidationError):
            await run.resume("approve", {"ok": "maybe"})  # the run stays suspended
        driver.resume_soon("approve", {"ok": True})
        await driver.until_step_starts("after")
        assert trio.current_time() == 3
        result = await driver.result()
    assert (result.status, result.result, trio.current_time()) == ("success", "after", 4)


async def test_until_finds_each_iteration_of_a_loop_in_turn(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    workflow = (
        trioflow.create_workflow(id="loop")
        .dowhile(sleeper("poll", 1), lambda ctx: ctx.iteration_count < 3)
        .commit()
    )
    run = await workflow.create_run()
    async with drive(run) as driver:
        starts = []
        for _ in range(3):
            await driver.until_step_starts("poll")
            starts.append(trio.current_time())
        with pytest.raises(AssertionError, match=r"stopped executing \('success'\) without"):
            await driver.until_step_starts("poll")
    assert starts == [0, 1, 2]


async def test_leaving_a_driver_by_an_exception_interrupts_the_run_from_outside(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    run = await two_steps().create_run()
    with pytest.raises(LookupError, match="the test gave up"):
        async with drive(run) as driver:
            await driver.until_step_starts("b")
            raise LookupError("the test gave up")
    # Not a user's cancel: the run is not marked 'canceled' (SPEC §3).
    assert not run.cancel_requested
    assert run.status == "running"


async def test_a_driver_reraises_errors_of_the_run(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    run = await two_steps().create_run()
    await run.start()
    with pytest.raises(trioflow.RunStateError, match="already started"):
        async with drive(run):
            pass


# -- step overrides ----------------------------------------------------------------------------


class Item(msgspec.Struct):
    name: str
    price: float


def shop() -> trioflow.Workflow:
    async def fetch(ctx: trioflow.StepContext[Any]) -> Item:
        await trio.sleep(10)  # the real call is slow
        return Item(name=ctx.input_data, price=9.5)

    child = (
        trioflow.create_workflow(id="child", output_schema=Item)
        .then(trioflow.create_step(id="fetch", execute=fetch, output_schema=Item))
        .commit()
    )
    return (
        trioflow.create_workflow(id="shop")
        .then(sleeper("warm-up", 1, output="book"))
        .then(child)
        .map(lambda ctx: ctx.input_data.price)
        .then(sleeper("charge", 1, output="charged"))
        .commit()
    )


async def test_override_a_nested_step_by_path(trioflow_clock: trio.testing.MockClock) -> None:
    original = shop()

    async def fake_fetch(ctx: trioflow.StepContext[Any]) -> dict[str, Any]:
        return {"name": ctx.input_data, "price": 1.0}

    faked = override_steps(original, {"child.fetch": fake_fetch, "charge": lambda ctx: "free"})
    assert faked is not original and faked.committed and faked.id == "shop"
    result = await (await faked.create_run()).start()
    assert result.status == "success", result.error
    assert trio.current_time() == 1  # only warm-up's sleep is left
    assert result.result == "free"
    # The fake's output goes through the original step's schema.
    assert result.steps["child.fetch"].output == Item(name="book", price=1.0)
    assert result.steps["map-2"].output == 1.0
    # The original is untouched.
    result = await (await original.create_run()).start()
    assert (result.result, trio.current_time()) == ("charged", 1 + 1 + 10 + 1)


async def test_override_a_whole_nested_workflow_or_a_map_or_with_a_step(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    @trioflow.step(id="whatever-id", retries=2)
    async def flaky(ctx: trioflow.StepContext[Any]) -> Any:
        if ctx.retry_count < 2:
            raise ConnectionError("try again")
        return {"name": "flaky", "price": 2.0}

    faked = override_steps(shop(), {"child": flaky, "map-2": lambda ctx: ctx.input_data.name})
    run = await faked.create_run()
    result = await run.start()
    assert result.status == "success", result.error
    # The child's output schema applies to its fake; the fake's own retries=2 are used.
    assert result.steps["child"].output == Item(name="flaky", price=2.0)
    assert result.steps["map-2"].output == "flaky"
    assert "whatever-id" not in result.steps


async def test_overrides_reach_every_construct(trioflow_clock: trio.testing.MockClock) -> None:
    def fake(tag: str) -> Any:
        async def execute(ctx: trioflow.StepContext[Any]) -> str:
            return f"{tag}({ctx.input_data})"

        return execute

    workflow = (
        trioflow.create_workflow(id="all")
        .parallel([sleeper("p1", 5), sleeper("p2", 5)])
        .branch([(lambda ctx: True, sleeper("yes", 5)), (lambda ctx: False, sleeper("no", 5))])
        .dountil(sleeper("loop", 5), lambda ctx: True)
        .map(lambda ctx: [1, 2])
        .foreach(sleeper("each", 5))
        .wait_for_event("go", sleeper("on-go", 5))
        .commit()
    )
    faked = override_steps(
        workflow,
        {key: fake(key) for key in ("p2", "yes", "loop", "each", "on-go")},
    )
    run = await faked.create_run()
    await run.send_event("go")
    result = await run.start()
    assert result.status == "success", result.error
    assert trio.current_time() == 5  # only p1 still sleeps
    outputs = {path: r.output for path, r in result.steps.items()}
    assert outputs["p2"] == "p2(None)"
    assert outputs["yes"] == "yes({'p1': 'p1', 'p2': 'p2(None)'})"
    assert outputs["loop"].startswith("loop(")
    assert outputs["each"] == ["each(1)", "each(2)"]
    assert outputs["on-go"] == "on-go([" + "'each(1)', 'each(2)'])"


async def test_a_fake_whose_output_breaks_the_schema_fails_the_run(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    faked = override_steps(shop(), {"child.fetch": lambda ctx: {"name": "book"}})
    result = await (await faked.create_run()).start()
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.ValidationError)
    assert "child.fetch" in str(result.error)
    assert "price" in str(result.error)


def test_override_errors_name_what_exists() -> None:
    workflow = shop()
    with pytest.raises(KeyError) as info:
        override_steps(workflow, {"child.nope": lambda ctx: 1})
    message = str(info.value)
    assert "'child.nope'" in message
    for known in ("warm-up", "child", "child.fetch", "map-2", "charge"):
        assert repr(known) in message
    with pytest.raises(KeyError, match="'fetch'"):
        override_steps(workflow, {"fetch": lambda ctx: 1})  # nested: give the path
    sleepy = trioflow.create_workflow(id="s").then(sleeper("a", 1)).sleep(3).commit()
    with pytest.raises(ValueError, match="sleep"):
        override_steps(sleepy, {"sleep-1": lambda ctx: 1})
    with pytest.raises(ValueError, match=r"both 'child' and 'child\.fetch'"):
        override_steps(workflow, {"child": lambda ctx: 1, "child.fetch": lambda ctx: 1})
    with pytest.raises(TypeError, match="must be a Step or a function"):
        override_steps(workflow, {"charge": "free"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"\.map\(\) node"):
        override_steps(workflow, {"map-2": sleeper("x", 1)})
    with pytest.raises(RuntimeError, match="not committed"):
        override_steps(trioflow.create_workflow(id="w").then(sleeper("a", 1)), {})


# -- the cancellation sweep --------------------------------------------------------------------


class Pool:
    """A pool of one connection: acquiring waits while it is taken."""

    def __init__(self) -> None:
        self.in_use = 0
        self._free = trio.Semaphore(1)

    async def acquire(self) -> str:
        await self._free.acquire()
        self.in_use += 1
        return "connection"

    def release(self, connection: str) -> None:
        self.in_use -= 1
        self._free.release()


def pool_workflow(*, safe: bool) -> tuple[trioflow.Workflow, Pool]:
    """prepare (0 -> 1), query (holds a connection 1 -> 3, then works alone 3 -> 4),
    report (4 -> 5). The unsafe query releases its connection only on the normal path."""
    pool = Pool()

    async def query(ctx: trioflow.StepContext[Any]) -> str:
        connection = await pool.acquire()
        if safe:
            try:
                await trio.sleep(2)  # the query
            finally:
                pool.release(connection)
        else:
            await trio.sleep(2)  # the query: a cancel here leaks the connection
            pool.release(connection)
        await trio.sleep(1)  # work on the rows, no connection held
        return "rows"

    workflow = (
        trioflow.create_workflow(id="pooled")
        .then(sleeper("prepare", 1))
        .then(trioflow.create_step(id="query", execute=query))
        .then(sleeper("report", 1))
        .commit()
    )
    return workflow, pool


def no_connection_leaked(attempt: SweepAttempt) -> None:
    pool = attempt.resources
    assert pool.in_use == 0, f"{pool.in_use} connection(s) leaked"


def test_the_sweep_finds_the_one_point_where_a_step_leaks() -> None:
    with pytest.raises(CancellationSweepError) as info:
        cancellation_sweep(
            lambda: pool_workflow(safe=False),
            {"q": 1},
            check=[cancel_invariants, no_connection_leaked],
        )
    report = info.value.report
    assert [(p.time, p.in_flight) for p in report.points] == [
        (0, ("prepare",)),
        (1, ("query",)),  # holding the connection
        (3, ("query",)),  # connection released, still working
        (4, ("report",)),
    ]
    [failure] = report.failures
    assert failure.point == report.points[1]
    assert [str(error).splitlines()[0] for error in failure.errors] == ["1 connection(s) leaked"]
    assert failure.point.brief() == [
        ("workflow-start", None, None),
        ("workflow-step-start", "prepare", "running"),
        ("workflow-step-result", "prepare", "success"),
        ("workflow-step-start", "query", "running"),
    ]
    assert failure.attempt.result.status == "canceled"
    message = str(info.value)
    assert "1 failed" in message
    assert "point 1 at t=1 after 4 events (run running; in flight: query)" in message
    assert "AssertionError: 1 connection(s) leaked" in message
    assert "t=1 workflow-step-start query running" in message
    assert "t=1 workflow-step-result query canceled" in message


def test_the_fixed_step_passes_the_sweep() -> None:
    report = cancellation_sweep(
        lambda: pool_workflow(safe=True), {"q": 1}, check=[cancel_invariants, no_connection_leaked]
    )
    assert report.ok and report.failures == ()
    assert [p.time for p in report.points] == [0, 1, 3, 4]
    assert report.baseline.result.status == "success"
    assert report.baseline.point is None
    assert report.baseline.timeline[-1][0] == 5
    assert str(report) == "cancellation sweep of workflow 'pooled': 4 points, 0 failed"


def test_the_sweep_is_deterministic() -> None:
    def briefs() -> list[Any]:
        report = cancellation_sweep(lambda: pool_workflow(safe=True), None, check=cancel_invariants)
        return [(p.time, p.brief()) for p in report.points]

    assert briefs() == briefs()


def test_the_sweep_of_the_composite_workflow_finds_the_composition_tests_points() -> None:
    """tests/test_sweep.py cancels its composite workflow at hand-listed times; the
    sweep finds the same points by itself and SPEC §3 holds at each."""
    from composition_helpers import EPOCH as COMPOSITE_EPOCH
    from test_sweep import CANCEL_POINTS, EVENT_AT, build

    async def scenario(run: trioflow.Run, input_data: Any) -> None:
        async def send_go() -> None:
            await trio.sleep_until(EVENT_AT)
            if run.status not in ("success", "failed", "canceled"):
                await run.send_event("go", {"by": "sweep"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_go)
            await run.start(input_data)
            nursery.cancel_scope.cancel()

    report = cancellation_sweep(
        lambda: build([]),
        5,
        check=cancel_invariants,
        scenario=scenario,
        epoch=dt.datetime.fromtimestamp(COMPOSITE_EPOCH, tz=dt.UTC),
    )
    assert report.baseline.result.result == "timed"
    assert [p.time + 0.5 for p in report.points] == CANCEL_POINTS


def test_checks_run_on_the_uncancelled_run_and_may_return_false() -> None:
    seen: list[float | None] = []

    def record(attempt: SweepAttempt) -> bool:
        seen.append(None if attempt.point is None else attempt.point.time)
        return attempt.point is None or attempt.point.time != 1

    report = cancellation_sweep(two_steps(), None, check=record, raise_on_failure=False)
    assert seen == [None, 0, 1]
    assert report.failed_points == [report.points[1]]
    assert "check record returned False" in str(report)


def test_a_worker_thread_step_is_waited_for_not_taken_as_a_point() -> None:
    def crunch(ctx: trioflow.StepContext[Any]) -> int:
        time.sleep(0.01)  # real work in a worker thread
        return 42

    workflow = (
        trioflow.create_workflow(id="threads")
        .then(sleeper("a", 1))
        .then(trioflow.create_step(id="crunch", execute=crunch))
        .then(sleeper("b", 1))
        .commit()
    )
    report = cancellation_sweep(workflow, None, check=cancel_invariants)
    assert [(p.time, p.in_flight) for p in report.points] == [(0, ("a",)), (1, ("b",))]
    assert report.points[1].brief()[-3:] == [
        ("workflow-step-start", "crunch", "running"),
        ("workflow-step-result", "crunch", "success"),
        ("workflow-step-start", "b", "running"),
    ]


def test_an_async_factory_and_a_grace_period() -> None:
    cleaned: list[float] = []

    async def make() -> trioflow.Workflow:
        await trio.lowlevel.checkpoint()

        async def graceful(ctx: trioflow.StepContext[Any]) -> str:
            with trio.move_on_after(10):
                await ctx.abort_signal.wait()
            if ctx.abort_signal.aborted:
                await trio.sleep(1)  # wind down: the grace period allows it
                cleaned.append(trio.current_time())
                ctx.abort()
            return "done"

        return (
            trioflow.create_workflow(id="graceful")
            .then(trioflow.create_step(id="graceful", execute=graceful))
            .commit()
        )

    report = cancellation_sweep(
        make, None, check=cancel_invariants, grace_period=2, raise_on_failure=False
    )
    assert report.ok, str(report)
    assert [p.time for p in report.points] == [0]
    assert report.baseline.result.result == "done"
    assert cleaned == [1]
    [attempt] = report.attempts
    assert attempt.point == report.points[0]
    assert attempt.cancel_returned_at == 1
    assert attempt.result.steps["graceful"].status == "canceled"


def test_a_run_that_blocks_forever_is_reported() -> None:
    workflow = (
        trioflow.create_workflow(id="stuck").wait_for_event("never", sleeper("after", 1)).commit()
    )
    with pytest.raises(RuntimeError, match="blocks forever at point 0 at t=0"):
        cancellation_sweep(workflow, None, check=cancel_invariants)


def test_an_endless_loop_is_stopped_at_max_points() -> None:
    workflow = (
        trioflow.create_workflow(id="endless")
        .dowhile(sleeper("tick", 1), lambda ctx: True)
        .commit()
    )
    with pytest.raises(ValueError, match="more than 20 points"):
        cancellation_sweep(workflow, None, check=cancel_invariants, max_points=20)


async def test_the_sweep_refuses_to_run_inside_trio() -> None:
    with pytest.raises(RuntimeError, match="plain 'def test_"):
        cancellation_sweep(two_steps(), None, check=cancel_invariants)


def test_sweep_argument_errors() -> None:
    with pytest.raises(TypeError, match="check="):
        cancellation_sweep(two_steps(), None, check=[])
    with pytest.raises(TypeError, match="committed workflow"):
        cancellation_sweep(lambda: "not a workflow", None, check=cancel_invariants)
