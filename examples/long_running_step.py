"""A step that responds to cancellation (Mastra's second `Run.cancel()` example).

The TypeScript step starts a 10-second ``setTimeout``, clears it from an ``'abort'``
listener, and calls ``abort()`` when it sees the signal aborted. In Trio the timer is a
``trio.sleep`` in a ``trio.CancelScope``: the listener cancels it, the step wakes at once,
and ``ctx.abort()`` records the step, and the run, ``'canceled'``. ``main`` starts the
run in a nursery and cancels it after a moment, with a grace period in which the step
may finish its cleanup before the run's own cancel scope is cancelled.

Run it with ``python examples/long_running_step.py``; it takes about 0.1 s.
"""

from __future__ import annotations

import msgspec
import trio

import trioflow

WORK_SECONDS = 10  # what the step would take if left alone
CANCEL_AFTER = 0.1  # seconds
GRACE_PERIOD = 1.0  # seconds the step gets to wind down after the cancel


class Query(msgspec.Struct):
    value: str


class Answer(msgspec.Struct):
    result: str


@trioflow.step(id="long-running-step", input_schema=Query, output_schema=Answer)
async def long_running(ctx: trioflow.StepContext[Query]) -> Answer:
    with trio.CancelScope() as timer:

        def clear_timer() -> None:  # clearTimeout(timer); resolve("canceled")
            print("abort listener: clearing the timer")
            timer.cancel()

        ctx.abort_signal.add_event_listener("abort", clear_timer)
        try:
            await trio.sleep(WORK_SECONDS)  # setTimeout(() => resolve("done"), 10000)
        finally:
            ctx.abort_signal.remove_event_listener("abort", clear_timer)
    result = "canceled" if timer.cancelled_caught else "done"

    if ctx.abort_signal.aborted:  # check after the wait, as the original does
        print(f"step: aborted ({result}), cleaning up")
        await trio.sleep(0.01)  # within the grace period this is not interrupted
        return ctx.abort()  # raises: the step and the run end 'canceled'
    return Answer(result=f"{ctx.input_data.value}: {result}")


@trioflow.step(id="report")
async def report(ctx: trioflow.StepContext[Answer]) -> str:
    return f"report on {ctx.input_data.result}"


workflow = (
    trioflow.create_workflow(id="long-running", input_schema=Query)
    .then(long_running)
    .then(report)
    .commit()
)


async def main() -> None:
    run = await workflow.create_run()

    async def start() -> None:
        result = await run.start(input_data={"value": "initial data"})
        print(f"start returned: {result.status}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(start)
        await trio.sleep(CANCEL_AFTER)
        print("main: cancelling the run")
        outcome = await run.cancel(grace_period=GRACE_PERIOD)
        print(f"cancel: {outcome.message} (status {outcome.status!r})")

    steps = run.result_nowait().steps
    for step_id in ("long-running-step", "report"):
        record = steps.get(step_id)
        print(f"{step_id}: {'never started' if record is None else record.status}")


if __name__ == "__main__":
    trio.run(main)
