"""A sweep: one workflow that uses every construct, cancelled at each point where it blocks.

A first, uncancelled run gives the virtual time of every event (and of every attempt of
a step, since a retry's back-off starts without an event). Every duration is a whole
number of seconds, so cancelling at each such time plus half a second lands inside each
distinct blocking point once: a parallel fan-out, a branch, both loops, a foreach, a
nested workflow and its sleep, a sleep, a sleep_until, an event wait, a retry and its
back-off, a step under a timeout. Each cancel is checked against SPEC §3, and run twice.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing
from composition_helpers import Log, Watched, at, sleeper, tied_wall_clock, watched_start

import trioflow

END = 19
EVENT_AT = 16  # the test sends the "go" event at this virtual time
# Every distinct time at which something starts or waits, plus 0.5 (see test_cancel_points).
CANCEL_POINTS = [
    0.5, 1.5,  # parallel (fetch-a and fetch-b, then fetch-b alone)
    2.5,  # branch (enrich)
    3.5, 4.5,  # dountil, iterations 1 and 2
    5.5, 6.5,  # dowhile, iterations 1 and 2
    7.5, 8.5, 9.5,  # foreach: items 0 and 1, items 1 and 2, item 1 alone
    10.5, 11.5,  # nested workflow: child.child-work, child.sleep-1
    12.5,  # sleep
    13.5,  # sleep_until (13 -> 15)
    15.5,  # wait_for_event (15 -> 16)
    16.5,  # the retry's back-off (16 -> 17)
    17.5,  # the retry's second attempt
    18.5,  # a step under a timeout
]  # fmt: skip


def build(log: Log) -> trioflow.Workflow:
    """The composite workflow; its steps log their starts and ends into `log`."""

    async def item(ctx: trioflow.StepContext[Any]) -> int:
        log.append(("start", f"item-{ctx.input_data}", trio.current_time()))
        await trio.sleep(ctx.input_data)
        return int(ctx.input_data) * 10

    async def on_go(ctx: trioflow.StepContext[Any]) -> Any:
        log.append(("start", "on-go", trio.current_time()))
        return ctx.resume_data

    async def flaky(ctx: trioflow.StepContext[Any]) -> str:
        log.append(("start", f"retry-{ctx.retry_count}", trio.current_time()))
        if ctx.retry_count == 0:
            raise ConnectionError("first attempt fails")
        await trio.sleep(1)
        return "retried"

    child = (
        trioflow.create_workflow(id="child").then(sleeper("child-work", 1, log)).sleep(1).commit()
    )
    return (
        trioflow.create_workflow(id="sweep", retry_config=trioflow.RetryConfig(delay=1))
        .map(lambda ctx: {"n": ctx.get_init_data()})  # map-0, at 0
        .parallel([sleeper("fetch-a", 1, log), sleeper("fetch-b", 2, log)])  # 0 -> 2
        .branch(
            [
                (lambda ctx: True, sleeper("enrich", 1, log)),  # 2 -> 3
                (lambda ctx: False, sleeper("skip", 1, log)),
            ]
        )
        .dountil(sleeper("poll", 1, log), lambda ctx: ctx.iteration_count >= 2)  # 3 -> 5
        .dowhile(sleeper("tick", 1, log), lambda ctx: ctx.iteration_count < 2)  # 5 -> 7
        .map(lambda ctx: [1, 3, 1], id="items")
        .foreach(trioflow.create_step(id="item", execute=item), concurrency=2)  # 7 -> 10
        .then(child)  # child.child-work 10 -> 11, child.sleep-1 11 -> 12
        .sleep(1)  # 12 -> 13
        .sleep_until(at(EVENT_AT - 1))  # 13 -> 15
        .wait_for_event("go", trioflow.create_step(id="on-go", execute=on_go))  # 15 -> 16
        .then(trioflow.create_step(id="flaky", execute=flaky, retries=2))  # 16 + 1 + 1 -> 18
        .then(sleeper("timed", 1, log, timeout=5))  # 18 -> 19
        .commit()
    )


async def sweep_run(cancel_at: float | None) -> tuple[Watched, Log, trioflow.Run]:
    log: Log = []
    run = await build(log).create_run()

    async def send_go() -> None:
        await trio.sleep_until(EVENT_AT)
        if run.status not in ("success", "failed", "canceled"):
            await run.send_event("go", {"by": "sweep"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_go)
        watched = await watched_start(run, 5, cancel_at=cancel_at)
        nursery.cancel_scope.cancel()
    return watched, log, run


def run_sweep(cancel_at: float | None) -> tuple[Watched, Log, trioflow.Run]:
    """One run in its own `trio.run` under an autojumping MockClock, so that every run,
    the uncancelled one and each cancelled one, starts at virtual time 0."""
    with tied_wall_clock():
        return trio.run(sweep_run, cancel_at, clock=trio.testing.MockClock(autojump_threshold=0))


@functools.cache
def baseline() -> tuple[Watched, Log]:
    watched, log, _ = run_sweep(None)
    return watched, log


def blocking_times(watched: Watched, log: Log) -> list[float]:
    """Each distinct virtual time, before the run's end, at which a step started, waited,
    ended or made an attempt: the start of each distinct blocking point."""
    assert watched.ended_at is not None
    times = {t for t, _ in watched.timeline} | {t for kind, _, t in log if kind == "start"}
    return sorted(t for t in times if t < watched.ended_at)


def expected_at(baseline: Watched, cancel_at: float) -> dict[str, tuple[str, Any]]:
    """``{path: (status, output)}`` a cancel at `cancel_at` must leave: the last event of
    each path before the cancel says whether it had finished (its outcome stays) or was
    in flight (it becomes 'canceled', with no output)."""
    expected: dict[str, tuple[str, Any]] = {}
    for t, event in baseline.timeline:
        if t >= cancel_at:
            break
        if event.type in ("workflow-step-start", "workflow-step-waiting"):
            expected[event.step_id] = ("canceled", None)
        elif event.type == "workflow-step-result":
            expected[event.step_id] = (event.status, event.output)
    return expected


def test_the_uncancelled_composite_run() -> None:
    watched, log = baseline()
    assert watched.result is not None
    assert watched.result.status == "success", watched.result.error
    assert watched.result.result == "timed"
    assert watched.ended_at == END
    assert watched.statuses == {
        "map-0": "success",
        "fetch-a": "success",
        "fetch-b": "success",
        "enrich": "success",
        "poll": "success",
        "tick": "success",
        "items": "success",
        "item": "success",
        "child": "success",
        "child.child-work": "success",
        "child.sleep-1": "success",
        "sleep-8": "success",
        "sleep-until-9": "success",
        "on-go": "success",
        "flaky": "success",
        "timed": "success",
    }
    assert watched.result.steps["item"].output == [10, 30, 10]
    assert watched.result.steps["on-go"].output == {"by": "sweep"}
    starts = {(step_id, t) for kind, step_id, t in log if kind == "start"}
    assert {("retry-0", 16), ("retry-1", 17), ("item-3", 7), ("timed", 18)} <= starts


def test_cancel_points_are_found_from_the_events() -> None:
    assert [t + 0.5 for t in blocking_times(*baseline())] == CANCEL_POINTS


@pytest.mark.parametrize("cancel_at", CANCEL_POINTS)
def test_cancel_at_each_blocking_point_keeps_the_invariants(cancel_at: float) -> None:
    expected = expected_at(baseline()[0], cancel_at)
    outcomes = []
    for _ in range(2):
        watched, log, run = run_sweep(cancel_at)
        check_invariants(watched, log, run, cancel_at)
        assert watched.result is not None
        recorded = {path: (r.status, r.output) for path, r in watched.result.steps.items()}
        # Finished steps keep their outcome; interrupted ones are 'canceled' with no
        # output; steps that never started have no record.
        assert recorded == expected
        outcomes.append((recorded, watched.brief()))
    assert outcomes[0] == outcomes[1]  # the same records and events on a second run


def check_invariants(watched: Watched, log: Log, run: trioflow.Run, cancel_at: float) -> None:
    """SPEC §3 for a run cancelled at `cancel_at`."""
    result = watched.result
    assert result is not None
    assert result.status == "canceled"
    assert run.status == "canceled"
    assert result.error is None
    assert watched.cancel_result == trioflow.CancelResult(
        message="Workflow run canceled", status="canceled"
    )
    # Nothing blocks the cancel: it returns, and the run ends, at once.
    assert watched.cancel_returned_at == cancel_at
    assert watched.ended_at == cancel_at
    # No step starts (or begins waiting, or retries) once the cancel was requested.
    assert [entry for entry in log if entry[0] == "start" and entry[2] >= cancel_at] == []
    late = [(e.type, getattr(e, "status", None)) for t, e in watched.timeline if t >= cancel_at]
    assert all(
        kind in ("workflow-canceled", "workflow-finish")
        or (kind == "workflow-step-result" and status == "canceled")
        for kind, status in late
    ), late
    # Exactly one workflow-canceled, then exactly one workflow-finish, last.
    kinds = [e.type for e in watched.events]
    assert kinds.count("workflow-canceled") == 1
    assert kinds.count("workflow-finish") == 1
    assert kinds[-2:] == ["workflow-canceled", "workflow-finish"]
    assert watched.events[-1] == trioflow.WorkflowFinish(run_id=run.run_id, status="canceled")
