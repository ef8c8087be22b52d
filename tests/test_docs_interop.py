"""The claims of docs/interop.md: how steps call asyncio code, and which anyio backend
trioflow runs under.

trio-asyncio patches asyncio's event loop policy for the whole process when imported,
so its test runs in a subprocess and this module never imports it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
import trio
import trio.testing

import trioflow


async def fetch_report(name: str, seconds: float = 0.01) -> str:
    """Stands for asyncio-only code: it needs a running asyncio loop."""
    await asyncio.sleep(seconds)
    return f"report {name}"


def one_step(workflow_id: str, execute: object) -> trioflow.Workflow:
    step = trioflow.create_step(id="step", execute=execute)  # type: ignore[call-overload]
    return trioflow.create_workflow(id=workflow_id).then(step).commit()


async def test_awaiting_asyncio_code_in_a_step_fails_with_no_running_event_loop() -> None:
    async def direct(ctx: trioflow.StepContext[str]) -> str:
        return await fetch_report(ctx.input_data)

    result = await (await one_step("direct", direct).create_run()).start("june")
    assert result.status == "failed"
    assert isinstance(result.error, RuntimeError)
    assert str(result.error) == "no running event loop"


async def test_a_plain_def_step_runs_asyncio_code_with_asyncio_run() -> None:
    def in_a_thread(ctx: trioflow.StepContext[str]) -> str:
        return asyncio.run(fetch_report(ctx.input_data))

    result = await (await one_step("threaded", in_a_thread).create_run()).start("june")
    assert (result.status, result.result) == ("success", "report june")


async def test_a_thread_step_polling_the_signal_stops_its_asyncio_task_on_cancel() -> None:
    def cancellable(ctx: trioflow.StepContext[str]) -> str:
        async def main() -> str:
            work = asyncio.ensure_future(fetch_report(ctx.input_data, seconds=60))
            while not work.done():
                if ctx.abort_signal.aborted:
                    work.cancel()
                await asyncio.wait([work], timeout=0.05)
            return work.result()

        try:
            return asyncio.run(main())
        except asyncio.CancelledError:
            ctx.abort()
            raise

    run = await one_step("stoppable", cancellable).create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start, "june")
        await trio.sleep(0.2)  # real time: the thread is running its asyncio loop
        with trio.fail_after(5):  # the 60 s asyncio sleep is cancelled, not waited for
            cancel = await run.cancel()
    assert cancel.status == "canceled"
    assert run.result_nowait().steps["step"].status == "canceled"


def test_anyio_trio_backend_runs_a_workflow() -> None:
    async def anyio_step(ctx: trioflow.StepContext[int]) -> int:
        await anyio.sleep(0.01)
        return ctx.input_data * 2

    workflow = one_step("doubling", anyio_step)

    async def main() -> trioflow.RunResult:
        return await (await workflow.create_run()).start(21)

    result = anyio.run(main, backend="trio")
    assert (result.status, result.result) == ("success", 42)


def test_anyio_asyncio_backend_cannot_run_a_workflow() -> None:
    workflow = one_step("doubling", lambda ctx: ctx.input_data * 2)

    async def main() -> trioflow.RunResult:
        return await (await workflow.create_run()).start(21)

    with pytest.raises(RuntimeError, match="Task got bad yield"):
        anyio.run(main, backend="asyncio")


TRIO_ASYNCIO_PROGRAM = """
import asyncio, trio, trio.testing, trio_asyncio, trioflow

async def slow_report(name):
    await asyncio.sleep(60)
    return f"report {name}"

async def quick_report(name):
    await asyncio.sleep(2)
    return f"report {name}"

async def bridged(ctx):
    report = quick_report if ctx.input_data == "quick" else slow_report
    return await trio_asyncio.aio_as_trio(report)(ctx.input_data)

workflow = trioflow.create_workflow(id="bridged").then(
    trioflow.create_step(id="bridged", execute=bridged)
).commit()

async def main():
    async with trio_asyncio.open_loop():
        result = await (await workflow.create_run()).start("quick")
        print(result.status, result.result, trio.current_time())
        run = await workflow.create_run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.start, "june")
            await trio.sleep(1)
            print((await run.cancel()).status, trio.current_time())
        print(run.result_nowait().steps["bridged"].status)

trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
"""


@pytest.mark.slow
def test_trio_asyncio_runs_asyncio_code_in_a_step_and_cancels_it(tmp_path: Path) -> None:
    program = tmp_path / "bridged.py"
    program.write_text(textwrap.dedent(TRIO_ASYNCIO_PROGRAM), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-W", "error", str(program)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # asyncio's sleeps run on Trio's (mock) clock: exact virtual times.
    assert done.stdout.splitlines() == [
        "success report quick 2.0",
        "canceled 3.0",
        "canceled",
    ]
