"""A parallel fan-out with a deadline.

Three "fetch" steps run at once with different simulated latencies. A deadline task
cancels the run after DEADLINE seconds: the fetches that finished keep their result,
the one still running is interrupted (its abort listener cleans up) and recorded
'canceled', and the "combine" step after the fan-out never starts. A step can also
carry its own limit: `create_step(timeout=...)` fails just that step with a
`trioflow.StepTimeoutError`.

Run it with ``python examples/parallel_deadline.py``; it takes about 0.3 s.
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow

DEADLINE = 0.3  # seconds
LATENCIES = {"fetch-eu": 0.05, "fetch-us": 0.15, "fetch-asia": 2.0}


def fetcher(step_id: str, latency: float) -> trioflow.Step[Any, Any]:
    def close_connection() -> None:
        print(f"{step_id}: aborted, closing its connection")

    async def fetch(ctx: trioflow.StepContext[str]) -> str:
        # The signal is the run's: remove the listener once this step is done with it.
        ctx.abort_signal.add_event_listener("abort", close_connection)
        try:
            await trio.sleep(latency)  # a request that takes `latency` seconds
        finally:
            ctx.abort_signal.remove_event_listener("abort", close_connection)
        return f"{ctx.input_data} from {step_id.removeprefix('fetch-')}"

    return trioflow.create_step(id=step_id, execute=fetch)


async def combine(ctx: trioflow.StepContext[dict[str, str]]) -> list[str]:
    return sorted(ctx.input_data.values())


workflow = (
    trioflow.create_workflow(id="fan-out")
    .parallel([fetcher(step_id, latency) for step_id, latency in LATENCIES.items()])
    .then(trioflow.create_step(id="combine", execute=combine))
    .commit()
)


async def main() -> None:
    run = await workflow.create_run()

    async def deadline() -> None:
        await trio.sleep(DEADLINE)
        cancel = await run.cancel(reason="deadline passed")
        print(f"deadline: {cancel.message}")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(deadline)
        result = await run.start(input_data="prices")
        nursery.cancel_scope.cancel()  # the run ended before the deadline: no cancel

    print(f"run: {result.status}")
    for step_id in [*LATENCIES, "combine"]:
        record = result.steps.get(step_id)
        if record is None:
            print(f"{step_id}: never started")
        elif record.status == "success":
            print(f"{step_id}: success -> {record.output!r}")
        else:
            print(f"{step_id}: {record.status}")


if __name__ == "__main__":
    trio.run(main)
