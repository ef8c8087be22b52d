"""Streaming from steps (``ctx.write``), bounded watchers, and ``nursery.start(run.start)``.

Invariants: output events arrive in order with the run's other events; a watcher never
slows a run (a watcher that never reads leaves every virtual time unchanged) and loses
events only for itself, counted in exactly one ``watch-overflow``; ``workflow-finish``
always arrives; ``nursery.start(run.start, ...)`` returns once the run is running, and
cancelling that nursery is a cancellation from outside the run.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow
import trioflow.testing
from trioflow import _journal, _snapshot
from trioflow._cli._view import TextView


def shape(events: list[Any]) -> list[tuple[str, Any, Any]]:
    return [
        (e.type, getattr(e, "step_id", None), getattr(e, "data", getattr(e, "lost", None)))
        for e in events
    ]


def writer(step_id: str, items: list[Any], *, pause: float = 0.0, **options: Any) -> Any:
    """A step that writes each of `items` (sleeping `pause` before each) and returns
    how many it wrote."""

    async def execute(ctx: trioflow.StepContext[Any]) -> int:
        for item in items:
            if pause:
                await trio.sleep(pause)
            await ctx.write(item)
        return len(items)

    return trioflow.create_step(id=step_id, execute=execute, **options)


async def collect(
    run: trioflow.Run,
    into: list[Any],
    *,
    buffer: int = 1000,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with run.watch(buffer=buffer) as events:
        task_status.started()
        async for event in events:
            into.append(event)


async def test_output_events_arrive_in_order_among_step_events() -> None:
    workflow = (
        trioflow.create_workflow(id="wf")
        .then(writer("first", ["a", "b"]))
        .then(writer("second", [{"n": 1}]))
        .commit()
    )
    run = await workflow.create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        result = await run.start()
    assert result.status == "success"
    assert [(type(e).__name__, *s) for e, s in zip(events, shape(events), strict=True)] == [
        ("WorkflowStart", "workflow-start", None, None),
        ("WorkflowStepStart", "workflow-step-start", "first", None),
        ("WorkflowStepOutput", "workflow-step-output", "first", "a"),
        ("WorkflowStepOutput", "workflow-step-output", "first", "b"),
        ("WorkflowStepResult", "workflow-step-result", "first", None),
        ("WorkflowStepStart", "workflow-step-start", "second", None),
        ("WorkflowStepOutput", "workflow-step-output", "second", {"n": 1}),
        ("WorkflowStepResult", "workflow-step-result", "second", None),
        ("WorkflowFinish", "workflow-finish", None, None),
    ]
    assert all(e.run_id == run.run_id for e in events)


async def test_a_nested_steps_output_is_under_its_path_and_parallel_writes_interleave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    child = trioflow.create_workflow(id="child").then(writer("inner", ["x"])).commit()
    workflow = (
        trioflow.create_workflow(id="wf")
        .then(child)
        .parallel([writer("p1", [1, 2], pause=1.0), writer("p2", [10, 20], pause=1.5)])
        .commit()
    )
    run = await workflow.create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        await run.start()
    outputs = [(e.step_id, e.data) for e in events if e.type == "workflow-step-output"]
    # p1 writes at t=1 and 2, p2 at t=1.5 and 3: the order of the virtual times.
    assert outputs == [("child.inner", "x"), ("p1", 1), ("p2", 10), ("p1", 2), ("p2", 20)]


async def test_write_is_a_checkpoint_and_a_cancel_stops_the_stream_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A step that only writes (never sleeps) is still interrupted by a cancel: the
    write it was in sends nothing, and no later write happens."""
    written: list[int] = []

    @trioflow.step(id="chatty")
    async def chatty(ctx: trioflow.StepContext[Any]) -> None:
        for i in range(1_000_000):
            await ctx.write(i)
            written.append(i)

    run = await trioflow.create_workflow(id="wf").then(chatty).commit().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        nursery.start_soon(run.start)
        while len(written) < 50:
            await trio.lowlevel.checkpoint()
        await run.cancel()
        stopped_at = len(written)
    assert run.status == "canceled"
    assert len(written) == stopped_at  # nothing was written after cancel() returned
    outputs = [e.data for e in events if e.type == "workflow-step-output"]
    assert outputs == written  # every output sent was a completed write, in order
    assert [e.type for e in events[-3:]] == [
        "workflow-step-result",
        "workflow-canceled",
        "workflow-finish",
    ]


async def test_write_without_watchers_costs_no_event_and_the_step_succeeds() -> None:
    run = await trioflow.create_workflow(id="wf").then(writer("w", [1, 2, 3])).commit().create_run()
    result = await run.start()
    assert result.status == "success" and result.result == 3


async def test_a_worker_thread_step_writes_through_from_thread() -> None:
    def execute(ctx: trioflow.StepContext[Any]) -> str:
        for word in ("from", "a", "thread"):
            trio.from_thread.run(ctx.write, word)
        return "done"

    step = trioflow.create_step(id="threaded", execute=execute)
    run = await trioflow.create_workflow(id="wf").then(step).commit().create_run()
    events: list[Any] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(collect, run, events)
        await run.start()
    assert [e.data for e in events if e.type == "workflow-step-output"] == ["from", "a", "thread"]


# --- bounded watchers ---------------------------------------------------------------------


def timed_workflow(times: list[tuple[str, float]]) -> trioflow.Workflow:
    async def execute(ctx: trioflow.StepContext[Any]) -> int:
        for i in range(30):
            await trio.sleep(0.5)
            await ctx.write(i)
            times.append(("write", trio.current_time()))
        return 30

    async def after(ctx: trioflow.StepContext[Any]) -> str:
        await trio.sleep(2)
        times.append(("after", trio.current_time()))
        return "ok"

    return (
        trioflow.create_workflow(id="wf")
        .then(trioflow.create_step(id="stream", execute=execute))
        .then(trioflow.create_step(id="after", execute=after))
        .commit()
    )


async def test_a_watcher_that_never_reads_does_not_slow_the_run_and_gets_one_overflow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alone: list[tuple[str, float]] = []
    t0 = trio.current_time()
    await (await timed_workflow(alone).create_run()).start()
    alone = [(what, t - t0) for what, t in alone]

    watched: list[tuple[str, float]] = []
    t0 = trio.current_time()
    run = await timed_workflow(watched).create_run()
    async with run.watch(buffer=10) as stalled:
        reader: list[Any] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(collect, run, reader)  # a second watcher that reads all
            result = await run.start()
        assert result.status == "success"
        # The same virtual times, with or without the watcher.
        assert [(what, t - t0) for what, t in watched] == alone
        late = [event async for event in stalled]  # it reads only now, after the end
    # 1 start + 2 steps x (start, result) + 30 outputs = 35 events before the finish.
    assert len(reader) == 36 and reader[-1].type == "workflow-finish"
    assert shape(late) == [*shape(reader[:10]), ("watch-overflow", None, 25), shape(reader)[-1]]
    assert late[10] == trioflow.WatchOverflow(run_id=run.run_id, lost=25)


async def test_an_overflow_comes_when_the_watcher_has_room_again_before_newer_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A watcher that falls behind and catches up: it gets what its buffer held, then
    one overflow counting exactly the dropped events, then what came later."""
    gate = trio.Event()

    @trioflow.step(id="s")
    async def s(ctx: trioflow.StepContext[Any]) -> None:
        for i in range(8):
            await ctx.write(i)
        await gate.wait()
        await ctx.write("late")

    run = await trioflow.create_workflow(id="wf").then(s).commit().create_run()
    async with run.watch(buffer=3) as events, trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(1)  # the step wrote 8 and waits: the buffer holds 3
        got = [await events.__anext__() for _ in range(4)]
        gate.set()
        got += [event async for event in events]
    # buffered: start, step-start, output 0; dropped: outputs 1..7.
    assert shape(got) == [
        ("workflow-start", None, None),
        ("workflow-step-start", "s", None),
        ("workflow-step-output", "s", 0),
        ("watch-overflow", None, 7),
        ("workflow-step-output", "s", "late"),
        ("workflow-step-result", "s", None),
        ("workflow-finish", None, None),
    ]


async def test_workflow_finish_arrives_even_when_the_buffer_is_full() -> None:
    run = (
        await trioflow.create_workflow(id="wf")
        .then(writer("w", list(range(5))))
        .commit()
        .create_run()
    )
    async with run.watch(buffer=1) as events:
        await run.start()
        got = [event async for event in events]
    assert shape(got) == [
        ("workflow-start", None, None),
        ("watch-overflow", None, 7),  # step-start, 5 outputs, step-result
        ("workflow-finish", None, None),
    ]


@pytest.mark.parametrize(
    ("buffer", "error"), [(0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)]
)
async def test_a_bad_buffer_size_is_a_clear_error(buffer: Any, error: type[Exception]) -> None:
    run = await trioflow.create_workflow(id="wf").then(writer("w", [])).commit().create_run()
    with pytest.raises(error, match=r"watch\(buffer="):
        run.watch(buffer=buffer)


# --- stored output events -----------------------------------------------------------------


async def test_stored_output_events_are_kept_with_the_run_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_snapshot, "STORED_OUTPUTS", 4)
    workflow = (
        trioflow.create_workflow(id="wf")
        .then(writer("kept", list(range(6)), store_output_events=True))
        .then(writer("not-kept", ["x"]))
        .commit()
    )
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow]
    ) as engine:
        run = await engine.create_run(workflow)
        assert (await run.start()).status == "success"
        row = await engine.storage.load(run.run_id)
    stored = _journal.of_row(row).outputs
    assert [(o.seq, o.step_id, o.data) for o in stored] == [
        (2, "kept", 2),
        (3, "kept", 3),
        (4, "kept", 4),
        (5, "kept", 5),
    ]


async def test_a_stored_write_is_in_storage_before_write_returns() -> None:
    seen: list[list[Any]] = []

    async def execute(ctx: trioflow.StepContext[Any]) -> None:
        for word in ("one", "two"):
            await ctx.write({"word": word})
            row = await engine.storage.load(ctx.run_id)
            seen.append([o.data for o in _journal.of_row(row).outputs])

    step = trioflow.create_step(id="s", execute=execute, store_output_events=True)
    workflow = trioflow.create_workflow(id="wf").then(step).commit()
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow]
    ) as engine:
        run = await engine.create_run(workflow)
        await run.start()
    assert seen == [[{"word": "one"}], [{"word": "one"}, {"word": "two"}]]


@pytest.mark.parametrize("data", [object(), "lone \ud800 surrogate", {1j: 2}])
async def test_storing_data_msgspec_cannot_encode_fails_the_step_clearly(data: Any) -> None:
    workflow = (
        trioflow.create_workflow(id="wf")
        .then(writer("w", [data], store_output_events=True))
        .commit()
    )
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow]
    ) as engine:
        run = await engine.create_run(workflow)
        result = await run.start()
        stored = await engine.storage.load(run.run_id)
    assert stored.status == "failed"  # the run is stored, without the data
    assert result.status == "failed"
    assert isinstance(result.error, TypeError)
    assert "step 'w' stores its output events" in str(result.error)


def test_store_output_events_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="store_output_events must be True or False"):
        writer("w", [], store_output_events="yes")


# --- nursery.start(run.start, ...) --------------------------------------------------------


async def test_nursery_start_returns_once_the_run_is_running(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    @trioflow.step(id="slow")
    async def slow(ctx: trioflow.StepContext[Any]) -> str:
        log.append("step began")
        await trio.sleep(5)
        return "done"

    run = await trioflow.create_workflow(id="wf").then(slow).commit().create_run()
    async with trio.open_nursery() as nursery:
        returned = await nursery.start(run.start, {"x": 1})
        assert returned is None
        assert run.status == "running"
        assert trio.current_time() == 0
        await trio.sleep(6)
        assert run.status == "success"
    assert run.result_nowait().result == "done" and log == ["step began"]


async def test_cancelling_the_nursery_of_a_started_run_is_an_outside_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = trioflow.create_workflow(id="wf").then(writer("w", [1, 2, 3], pause=10)).commit()
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow]
    ) as engine:
        run = await engine.create_run(workflow)
        with trio.move_on_after(15):
            async with trio.open_nursery() as nursery:
                await nursery.start(run.start)
                stored = await engine.storage.load(run.run_id)
                assert stored.status == "running"  # claimed and stored before start returned
                await trio.sleep_forever()
        assert not run.cancel_requested
        assert run.status != "canceled"
        row = await engine.storage.load(run.run_id)
        snapshot = _journal.of_row(row)
        assert row.status == "running" and not snapshot.cancel_requested  # recoverable
        assert snapshot.steps == {}  # as last stored: no step had ended


async def test_nursery_start_of_a_run_canceled_before_it_started_returns() -> None:
    run = await trioflow.create_workflow(id="wf").then(writer("w", [1])).commit().create_run()
    await run.cancel()
    async with trio.open_nursery() as nursery:
        await nursery.start(run.start)
    assert run.status == "canceled"


async def test_nursery_start_of_resume_returns_once_running_or_raises_the_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @trioflow.step(id="gate", resume_schema=int)
    async def gate(ctx: trioflow.StepContext[Any]) -> int:
        if ctx.resume_data is None:
            ctx.suspend()
        await trio.sleep(5)
        return int(ctx.resume_data)

    run = await trioflow.create_workflow(id="wf").then(gate).commit().create_run()
    assert (await run.start()).status == "suspended"
    async with trio.open_nursery() as nursery:
        with pytest.raises(trioflow.ValidationError):
            await nursery.start(functools.partial(run.resume, "gate", "not a number"))
        assert run.status == "suspended"
        await nursery.start(functools.partial(run.resume, "gate", 7))
        assert run.status == "running" and trio.current_time() == 0
    assert run.result_nowait().result == 7 and trio.current_time() == 5
    async with trio.open_nursery() as nursery:
        with pytest.raises(trioflow.RunStateError):
            await nursery.start(run.resume)


# --- watch() of a run that executes in another engine -------------------------------------


def story_workflow(
    gate: trio.Event, upon: trio.Event | None = None, pause: float = 1.0
) -> trioflow.Workflow:
    """A step that writes four words (stored), setting `upon` and waiting for `gate`
    after the second; then a step whose output is not stored."""

    async def tell(ctx: trioflow.StepContext[Any]) -> str:
        for word in ("once", "upon", "a", "time"):
            await trio.sleep(pause)
            await ctx.write(word)
            if word == "upon":
                if upon is not None:
                    upon.set()  # "once" and "upon" are stored: write() has returned
                await gate.wait()
        return "the end"

    async def quiet(ctx: trioflow.StepContext[Any]) -> int:
        await ctx.write("not stored")
        return 1

    return (
        trioflow.create_workflow(id="story")
        .then(trioflow.create_step(id="tell", execute=tell, store_output_events=True))
        .then(trioflow.create_step(id="quiet", execute=quiet))
        .commit()
    )


async def watch_from_another_engine(
    storage: Callable[[], trioflow.Storage], pause: float
) -> list[Any]:
    """Start a run in one engine; once two words are stored, watch it from another
    engine on the same storage, let it go on, and return what that watch got."""
    gate, upon = trio.Event(), trio.Event()
    workflow = story_workflow(gate, upon, pause)
    async with trioflow.open_engine(storage=storage(), workflows=[workflow]) as here:
        run = await here.create_run(workflow, run_id="r")
        await run.start_soon()
        await upon.wait()
        async with trioflow.open_engine(storage=storage(), workflows=[workflow]) as there:
            remote = await there.get_run("r")
            assert remote is not run
            async with remote.watch() as events:
                gate.set()
                with trio.fail_after(10):
                    return [event async for event in events]


WATCHED_FROM_ELSEWHERE = [
    # "tell" started before the watch began: its start is not replayed.
    ("workflow-step-output", "tell", "once"),
    ("workflow-step-output", "tell", "upon"),
    ("workflow-step-output", "tell", "a"),
    ("workflow-step-output", "tell", "time"),
    ("workflow-step-result", "tell", None),
    ("workflow-step-start", "quiet", None),
    ("workflow-step-result", "quiet", None),  # its output was not stored
    ("workflow-finish", None, None),
]


async def test_watch_in_another_engine_replays_stored_outputs_then_follows_the_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    memory = trioflow.MemoryStorage()
    got = await watch_from_another_engine(lambda: memory, pause=1.0)
    assert shape(got) == WATCHED_FROM_ELSEWHERE
    assert got[4].output == "the end" and got[-1].status == "success"
    assert got[-1].result == 1


async def test_watch_in_another_engine_on_sqlite(tmp_path: Path) -> None:
    """The same through a SQLite file that each engine opens itself (real clock: two
    connections to one file in one process must not block the Trio thread)."""
    got = await watch_from_another_engine(
        lambda: trioflow.SQLiteStorage(tmp_path / "runs.db"), pause=0.01
    )
    assert shape(got) == WATCHED_FROM_ELSEWHERE


async def test_watch_of_a_run_that_ended_elsewhere_replays_and_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    gate.set()
    workflow = story_workflow(gate)
    storage = trioflow.MemoryStorage()
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as here:
        run = await here.create_run(workflow, run_id="r")
        assert (await run.start()).status == "success"
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as there:
        async with (await there.get_run("r")).watch() as events:
            got = [event async for event in events]
    assert shape(got) == [
        ("workflow-step-output", "tell", "once"),
        ("workflow-step-output", "tell", "upon"),
        ("workflow-step-output", "tell", "a"),
        ("workflow-step-output", "tell", "time"),
        ("workflow-finish", None, None),
    ]


async def test_watch_of_a_run_canceled_elsewhere_ends_with_canceled_and_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()  # never set: the step waits after "upon"
    workflow = story_workflow(gate)
    storage = trioflow.MemoryStorage()
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as here:
        run = await here.create_run(workflow, run_id="r")
        await run.start_soon()
        await trio.sleep(2.5)
        async with trioflow.open_engine(storage=storage, workflows=[workflow]) as there:
            remote = await there.get_run("r")
            async with remote.watch() as events, trio.open_nursery() as nursery:
                nursery.start_soon(remote.cancel, "stop")
                got = [event async for event in events]
    assert shape(got)[-4:] == [
        ("workflow-step-output", "tell", "upon"),
        ("workflow-step-result", "tell", None),
        ("workflow-canceled", None, None),
        ("workflow-finish", None, None),
    ]
    assert got[-3].status == "canceled" and got[-2].reason == "stop"


async def test_a_recording_holds_every_output_at_its_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    workflow = trioflow.create_workflow(id="wf").then(writer("w", list(range(3)), pause=1)).commit()
    run = await workflow.create_run()
    async with trioflow.testing.record_events(run) as recording:
        await run.start()
    outputs = recording.of_type("workflow-step-output")
    assert [e.data for e in outputs] == [0, 1, 2]
    assert recording.times("workflow-step-output", step_id="w") == [1, 2, 3]


# --- the CLI's live view ------------------------------------------------------------------


def test_the_live_view_prints_text_as_it_comes_and_other_data_as_lines() -> None:
    out = io.StringIO()
    view = TextView(out)
    view.step(0.0, "answer", "running")
    view.output(0.1, "answer", "Trio")
    view.output(0.2, "answer", " makes")
    assert out.getvalue().endswith("output     Trio makes")  # no newline yet: live
    view.output(0.3, "other", {"n": 1})
    view.output(0.4, "answer", " it")
    view.step(0.5, "answer", "success", "0.50s")
    view.line("(3 events not shown: the view fell behind the run)")
    assert out.getvalue().splitlines() == [
        "    0.00s  answer             started",
        "    0.10s  answer             output     Trio makes",
        '    0.30s  other              output     {"n":1}',
        "    0.40s  answer             output      it",  # the text as written
        "    0.50s  answer             success    0.50s",
        "(3 events not shown: the view fell behind the run)",
    ]
