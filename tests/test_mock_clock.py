"""Durable runs under Trio's MockClock are deterministic: the same events at the same
virtual times every time, with no spurious timeout, on MemoryStorage and SQLiteStorage,
with pytest-trio's plain ``autojump_clock`` as with trioflow's ``trioflow_clock``.

Storage calls take no virtual time (they run inline under a MockClock), worker-thread
steps stop virtual time while they run (autojump is paused), and a step's timer is gone
once the step ends, so it never moves virtual time.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow

ROUNDS = 50
CANCEL_AT = 20.0


def five_step_workflow(attempts: dict[str, int]) -> trioflow.Workflow:
    """prepare -> parallel(async sleep, worker thread) -> sleep 5 -> a step that fails
    once and is retried after 1 s -> a long step that the test cancels."""

    async def prepare(ctx: trioflow.StepContext[Any]) -> int:
        await trio.sleep(0.5)
        return 1

    async def fetch(ctx: trioflow.StepContext[int]) -> int:
        await trio.sleep(1)
        return ctx.input_data + 1

    def crunch(ctx: trioflow.StepContext[int]) -> int:  # a worker-thread step
        time.sleep(0.002)
        return ctx.input_data * 10

    async def flaky(ctx: trioflow.StepContext[Any]) -> str:
        attempts[ctx.run_id] = attempts.get(ctx.run_id, 0) + 1
        if ctx.retry_count == 0:
            raise RuntimeError("first attempt fails")
        return "ok"

    async def long(ctx: trioflow.StepContext[Any]) -> str:
        await trio.sleep(1000)
        return "never"

    return (
        trioflow.create_workflow(
            id="five", retry_config=trioflow.RetryConfig(attempts=2, delay=1.0)
        )
        .then(trioflow.create_step(id="prepare", execute=prepare))
        .parallel(
            [
                trioflow.create_step(id="fetch", execute=fetch, timeout=30),
                trioflow.create_step(id="crunch", execute=crunch, timeout=60),
            ]
        )
        .sleep(5)
        .then(trioflow.create_step(id="flaky", execute=flaky))
        .then(trioflow.create_step(id="long", execute=long))
        .commit()
    )


def make_storage(kind: str, path: Path) -> trioflow.storage.Storage:
    if kind == "sqlite":
        return trioflow.SQLiteStorage(path / "runs.db")
    return trioflow.MemoryStorage()


async def one_round(engine: trioflow.Engine) -> Any:
    """Start a run, cancel it at CANCEL_AT, and return its events with their virtual
    times (relative to the start) and how it ended."""
    events: list[tuple[float, str, str | None, str | None]] = []
    t0 = trio.current_time()
    run = await engine.create_run("five")
    async with trio.open_nursery() as nursery:

        async def watch(task_status: trio.TaskStatus[None]) -> None:
            async with run.watch() as stream:
                task_status.started()
                async for event in stream:
                    events.append(
                        (
                            trio.current_time() - t0,
                            event.type,
                            getattr(event, "step_id", None),
                            getattr(event, "status", None),
                        )
                    )

        await nursery.start(watch)
        await run.start_soon(input_data=None)
        await trio.sleep_until(t0 + CANCEL_AT)
        canceled = await run.cancel("test")
    result = await run.result()
    stored = await engine.get_run(run.run_id)
    return events, canceled.status, result.status, stored.status, trio.current_time() - t0


@pytest.fixture(params=["autojump_clock", "trioflow_clock"])
def either_clock(request: pytest.FixtureRequest) -> trio.testing.MockClock:
    """pytest-trio's plain autojump clock, or trioflow's (the wall clock tied to it)."""
    clock: trio.testing.MockClock = request.getfixturevalue(request.param)
    return clock


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_durable_run_gives_the_same_events_at_the_same_virtual_times(
    kind: str, either_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    attempts: dict[str, int] = {}
    workflow = five_step_workflow(attempts)
    rounds = []
    storage = make_storage(kind, tmp_path)
    async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
        for _ in range(ROUNDS):
            rounds.append(await one_round(engine))
    events, canceled, result, stored, elapsed = rounds[0]
    assert all(r == rounds[0] for r in rounds[1:])
    assert (canceled, result, stored) == ("canceled", "canceled", "canceled")
    assert elapsed == CANCEL_AT
    assert list(attempts.values()) == [2] * ROUNDS
    assert events == [
        (0.0, "workflow-start", None, None),
        (0.0, "workflow-step-start", "prepare", "running"),
        (0.5, "workflow-step-result", "prepare", "success"),
        (0.5, "workflow-step-start", "fetch", "running"),
        (0.5, "workflow-step-start", "crunch", "running"),
        # The worker thread took real time, and no virtual time: it ends at 0.5.
        (0.5, "workflow-step-result", "crunch", "success"),
        (1.5, "workflow-step-result", "fetch", "success"),
        (1.5, "workflow-step-waiting", "sleep-2", "waiting"),
        (6.5, "workflow-step-result", "sleep-2", "success"),
        (6.5, "workflow-step-start", "flaky", "running"),
        (7.5, "workflow-step-result", "flaky", "success"),  # retried after 1 s
        (7.5, "workflow-step-start", "long", "running"),
        (20.0, "workflow-step-result", "long", "canceled"),
        (20.0, "workflow-canceled", None, None),
        (20.0, "workflow-finish", None, "canceled"),
    ]


async def test_a_finished_steps_timeout_never_moves_virtual_time(autojump_clock: Any) -> None:
    """A step with timeout=30 that ends at t=0.1, then a worker-thread step: the run ends
    at t=0.1, not at t=30 (the timer went with the step)."""

    async def quick(ctx: trioflow.StepContext[Any]) -> str:
        await trio.sleep(0.1)
        return "quick"

    def in_thread(ctx: trioflow.StepContext[Any]) -> str:
        time.sleep(0.01)
        return "thread"

    workflow = (
        trioflow.create_workflow(id="timers")
        .then(trioflow.create_step(id="quick", execute=quick, timeout=30))
        .then(trioflow.create_step(id="in-thread", execute=in_thread))
        .commit()
    )
    run = await workflow.create_run()
    result = await run.start()
    assert result.status == "success"
    assert trio.current_time() == 0.1


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_a_worker_thread_step_does_not_time_out_under_the_mock_clock(
    autojump_clock: Any, kind: str, tmp_path: Path
) -> None:
    """A 50 ms worker-thread step with timeout=60 succeeds: virtual time stands still
    while the thread works, so its timeout cannot fire."""

    def slow_in_thread(ctx: trioflow.StepContext[Any]) -> str:
        time.sleep(0.05)
        return "done"

    workflow = (
        trioflow.create_workflow(id="thread-timeout")
        .then(trioflow.create_step(id="slow", execute=slow_in_thread, timeout=60))
        .commit()
    )
    async with trioflow.open_engine(
        storage=make_storage(kind, tmp_path), workflows=[workflow]
    ) as engine:
        run = await engine.create_run(workflow)
        result = await run.start()
    assert result.status == "success"
    assert result.result == "done"
    assert trio.current_time() == 0.0


async def test_leases_are_renewed_on_the_clock_they_expire_on(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under the tied clock (wall time follows virtual time) a step that runs for ten
    leases keeps its lease: the engine never takes its own run over."""
    calls: list[float] = []

    async def long(ctx: trioflow.StepContext[Any]) -> str:
        calls.append(trio.current_time())
        await trio.sleep(100)
        return "done"

    workflow = (
        trioflow.create_workflow(id="leased")
        .then(trioflow.create_step(id="long", execute=long))
        .commit()
    )
    caplog.set_level(logging.INFO, logger="trioflow")
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "runs.db"),
        workflows=[workflow],
        lease_seconds=10,
        poll_interval=1,
    ) as engine:
        run = await engine.create_run(workflow)
        await run.start_soon()
        result = await run.result()
    assert result.status == "success"
    assert calls == [0.0]
    assert "recovering run" not in caplog.text
