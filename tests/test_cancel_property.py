"""A property test of cancellation (SPEC §3): randomly built workflows of sleeping
steps (linear, parallel, loops), cancelled at a random virtual time, perhaps with a
grace period. Whatever the shape and the moment:

- no step starts (or begins waiting) after the cancel is requested;
- the run's abort listeners ran exactly once if the run was canceled, else never;
- exactly one ``workflow-finish`` is emitted, last, and at most one ``workflow-canceled``;
- the final status is ``'canceled'`` unless the run had already finished: a cancel
  before the run's end time gives ``'canceled'``, after it ``'already success'``, and in
  the same tick either, as long as cancel(), the result, the status and the events agree.

Each example runs its own ``trio.run`` under ``MockClock(autojump_threshold=0)``.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import trio
import trio.testing
from hypothesis import event, given, settings
from hypothesis import strategies as st

import trioflow
from trioflow import _events

CANCEL = "CANCEL"  # the marker the abort listener puts into the emission log

durations = st.integers(min_value=0, max_value=3)
nodes = st.one_of(
    st.tuples(st.just("step"), durations),
    st.tuples(st.just("parallel"), st.lists(durations, min_size=2, max_size=3)),
    st.tuples(st.just("loop"), durations, st.integers(min_value=1, max_value=3)),
)
shapes = st.lists(nodes, min_size=1, max_size=4)
cancel_times = st.integers(min_value=0, max_value=24).map(lambda half: half / 2)
grace_periods = st.sampled_from([0, 0, 1.5])


def sleeper(step_id: str, seconds: float) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> str:
        await trio.sleep(seconds)
        return step_id

    return trioflow.create_step(id=step_id, execute=execute)


def build(shape: list[tuple[Any, ...]]) -> tuple[trioflow.Workflow, float]:
    """The workflow of `shape`, and the virtual time it takes when left alone."""
    workflow = trioflow.create_workflow(id="random")
    total = 0.0
    counter = 0

    def new_id() -> str:
        nonlocal counter
        counter += 1
        return f"s{counter}"

    for node in shape:
        if node[0] == "step":
            workflow.then(sleeper(new_id(), node[1]))
            total += node[1]
        elif node[0] == "parallel":
            workflow.parallel([sleeper(new_id(), seconds) for seconds in node[1]])
            total += max(node[1])
        else:
            _, seconds, times = node

            def enough(ctx: trioflow.ConditionContext[Any], times: int = times) -> bool:
                return ctx.iteration_count >= times

            workflow.dountil(sleeper(new_id(), seconds), enough)
            total += seconds * times
    return workflow.commit(), total


class Observed:
    def __init__(self) -> None:
        self.emitted: list[Any] = []  # events in emission order, with the CANCEL marker
        self.watched: list[Any] = []  # what a watcher received
        self.listener_calls = 0
        self.result: trioflow.RunResult | None = None
        self.cancel_result: trioflow.CancelResult | None = None
        self.ended_at: float | None = None
        self.returned_at: float | None = None


async def scenario(
    workflow: trioflow.Workflow, cancel_at: float, grace: float, seen: Observed
) -> trioflow.Run:
    run = await workflow.create_run()

    def on_abort() -> None:
        seen.listener_calls += 1
        seen.emitted.append(CANCEL)

    run.abort_signal.add_event_listener("abort", on_abort)

    async def watcher(*, task_status: Any) -> None:
        async with run.watch() as events:
            task_status.started()
            async for event in events:
                seen.watched.append(event)

    async def starter() -> None:
        seen.result = await run.start()
        seen.ended_at = trio.current_time()

    async with trio.open_nursery() as nursery:
        await nursery.start(watcher)
        nursery.start_soon(starter)
        await trio.sleep(cancel_at)
        seen.cancel_result = await run.cancel(grace_period=grace)
        seen.returned_at = trio.current_time()
    return run


@settings(max_examples=50)
@given(shape=shapes, cancel_at=cancel_times, grace=grace_periods)
def test_cancel_at_a_random_moment_keeps_the_invariants(
    shape: list[tuple[Any, ...]], cancel_at: float, grace: float
) -> None:
    workflow, total = build(shape)
    seen = Observed()
    real_emit = _events.Watchers.emit

    def emit(self: _events.Watchers, event: Any) -> None:
        seen.emitted.append(event)
        real_emit(self, event)

    async def main() -> trioflow.Run:
        return await scenario(workflow, cancel_at, grace, seen)

    with mock.patch.object(_events.Watchers, "emit", emit):
        run = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    result, returned = seen.result, seen.cancel_result
    assert result is not None and returned is not None
    status = result.status

    # One outcome: recorded, returned and emitted alike.
    events = [e for e in seen.emitted if e != CANCEL]
    assert events == seen.watched
    finishes = [e for e in events if e.type == "workflow-finish"]
    canceled_events = [e for e in events if e.type == "workflow-canceled"]
    assert len(finishes) == 1 and events[-1] is finishes[0]
    assert finishes[0].status == status == run.status == returned.status
    assert len(canceled_events) == (1 if status == "canceled" else 0)

    event(f"status={status}")
    event("cancel in the run's last tick" if cancel_at == total else "cancel at another tick")
    # The final status: canceled unless the run had already finished.
    if cancel_at < total:
        assert status == "canceled"
    elif cancel_at > total:
        assert status == "success"
    assert status in ("success", "canceled")
    if status == "canceled":
        assert returned == trioflow.CancelResult(message="Workflow run canceled", status="canceled")
        assert seen.listener_calls == 1
        assert seen.emitted.count(CANCEL) == 1
        # No step starts (nor begins to wait) once the cancel is requested.
        after = seen.emitted[seen.emitted.index(CANCEL) + 1 :]
        assert not [e for e in after if e.type in ("workflow-step-start", "workflow-step-waiting")]
        # cancel() returned when the run's tasks had exited, within the grace period.
        assert seen.returned_at == seen.ended_at
        assert seen.returned_at is not None
        assert seen.returned_at <= cancel_at + grace
        assert result.result is None
    else:
        assert returned.message == "Workflow run already success"
        assert seen.listener_calls == 0
        assert CANCEL not in seen.emitted
        assert not run.abort_signal.aborted

    # Records: finished steps keep their outputs, interrupted ones have none, and
    # nothing is left running.
    for step_id, record in result.steps.items():
        assert record.status in ("success", "canceled"), (step_id, record)
        if record.status == "success":
            assert record.output == step_id
        else:
            assert record.output is None
