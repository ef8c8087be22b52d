"""Cancelling a workflow run when starting it fails (Mastra's first `Run.cancel()` example).

The TypeScript original wraps ``run.start()`` in ``try``/``catch`` and cancels the run
in the ``catch``. In trioflow a step's failure is not an exception of ``start()``: it is
the run's result, ``'failed'``, and cancelling a finished run changes nothing. What does
make ``start()`` raise is the code *around* it, for example a deadline from
``trio.fail_after``. That is an outside cancellation, not a user's cancel: the run is
left as it was (so it could be recovered), and it is our ``cancel()`` in the
``except`` that ends it ``'canceled'``.

Run it with ``python examples/cancel_on_error.py``; it takes about 0.1 s.
"""

from __future__ import annotations

import msgspec
import trio

import trioflow

DEADLINE = 0.1  # seconds we are willing to wait for the run


class Query(msgspec.Struct):
    value: str


@trioflow.step(id="fetch", input_schema=Query)
async def fetch(ctx: trioflow.StepContext[Query]) -> str:
    await trio.sleep(10)  # a slow upstream service
    return f"fetched {ctx.input_data.value}"


@trioflow.step(id="download", input_schema=Query)
async def download(ctx: trioflow.StepContext[Query]) -> str:
    await trio.sleep(0.01)  # a quick request
    return "<html>not json</html>"


@trioflow.step(id="parse")
async def parse(ctx: trioflow.StepContext[str]) -> str:
    raise ValueError(f"cannot parse {ctx.input_data!r}")


slow = trioflow.create_workflow(id="slow", input_schema=Query).then(fetch).commit()
broken = (
    trioflow.create_workflow(id="broken", input_schema=Query).then(download).then(parse).commit()
)


async def main() -> None:
    # 1. start() raises: cancel the run in the `except`, as the original does.
    run = await slow.create_run()
    try:
        with trio.fail_after(DEADLINE):
            await run.start(input_data={"value": "initial data"})
    except trio.TooSlowError as error:
        print(f"start raised: {type(error).__name__}")
        print(f"run after the error: {run.status}")  # left as it was, not 'canceled'
        result = await run.cancel()
        print(f"cancel: {result.message}")
    print(f"run: {run.status}")
    print(f"fetch: {run.result_nowait().steps['fetch'].status}")

    # 2. A failing step does not raise: the result says 'failed'; cancel leaves it alone.
    run = await broken.create_run()
    outcome = await run.start(input_data=Query(value="initial data"))
    print(f"start returned: {outcome.status} ({type(outcome.error).__name__})")
    result = await run.cancel()
    print(f"cancel: {result.message}")
    print(f"run: {run.status}")


if __name__ == "__main__":
    trio.run(main)
