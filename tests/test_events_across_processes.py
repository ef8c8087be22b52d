"""send_event from any process: a run waiting for an event in one process receives it
from another process (an engine on the same storage) and from `trioflow runs send-event`,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from pg_server import StorageFactory

import trioflow

APP = textwrap.dedent(
    """
    import sys
    import trio
    import trioflow
    from pg_server import make_storage

    async def shipped(ctx):
        return ctx.resume_data["by"]

    workflow = trioflow.create_workflow(id="waits").wait_for_event(
        "approved", trioflow.create_step(id="shipped", execute=shipped)
    ).commit()

    async def main(url, run_id):
        async with trioflow.open_engine(
            storage=make_storage(url), workflows=[workflow], poll_interval=0.01
        ) as engine:
            run = await engine.create_run(workflow, run_id=run_id)
            await run.start_soon()
            print("ready", flush=True)
            result = await run.result()
            print(result.status, result.result, flush=True)

    trio.run(main, sys.argv[1], sys.argv[2])
    """
)

WORKFLOW = (
    trioflow.create_workflow(id="waits")
    .wait_for_event(
        "approved", trioflow.create_step(id="shipped", execute=lambda ctx: ctx.resume_data)
    )
    .commit()
)


async def waiting_app(tmp_path: Path, url: str, run_id: str) -> trio.Process:
    (tmp_path / "waits.py").write_text(APP)
    process = await trio.lowlevel.open_process(
        [sys.executable, str(tmp_path / "waits.py"), url, run_id],
        stdout=subprocess.PIPE,
        env={"PYTHONPATH": str(Path(__file__).parent), "PATH": "/usr/bin:/bin"},
    )
    return process


async def read_line(process: trio.Process, buffer: bytearray) -> str:
    assert process.stdout is not None
    while b"\n" not in buffer:
        chunk = await process.stdout.receive_some()
        if not chunk:
            raise EOFError(bytes(buffer).decode())
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def wait_status(storage: trioflow.Storage, run_id: str, status: str) -> None:
    while (await storage.load(run_id)).status != status:  # noqa: ASYNC110 - another process
        await trio.sleep(0.01)


@pytest.mark.timeout(60)
async def test_a_waiting_run_in_another_process_receives_an_event(
    tmp_path: Path, storage_factory: StorageFactory
) -> None:
    process = await waiting_app(tmp_path, storage_factory.url, "w1")
    buffer = bytearray()
    try:
        with trio.fail_after(30):
            assert await read_line(process, buffer) == "ready"
            async with trioflow.open_engine(
                storage=storage_factory(), workflows=[WORKFLOW]
            ) as engine:
                await wait_status(engine.storage, "w1", "waiting")
                await (await engine.get_run("w1")).send_event("approved", {"by": "ada"})
            assert await read_line(process, buffer) == "success ada"
    finally:
        process.kill()
        await process.wait()


@pytest.mark.timeout(60)
async def test_trioflow_runs_send_event_reaches_a_waiting_run(
    tmp_path: Path, storage_factory: StorageFactory
) -> None:
    process = await waiting_app(tmp_path, storage_factory.url, "w2")
    buffer = bytearray()
    where = (
        ["--dsn", storage_factory.url]
        if storage_factory.kind == "postgres"
        else ["--db", storage_factory.url.removeprefix("sqlite:")]
    )
    try:
        with trio.fail_after(30):
            assert await read_line(process, buffer) == "ready"
            async with storage_factory() as storage:
                await wait_status(storage, "w2", "waiting")
            send = ["runs", "send-event", "w2", "approved", "--data", '{"by": "grace"}']
            sent = await trio.run_process(
                [sys.executable, "-m", "trioflow", *where, *send],
                capture_stdout=True,
                capture_stderr=True,
            )
            assert sent.stdout.decode().strip() == "sent event 'approved' to run w2 (waiting)"
            assert await read_line(process, buffer) == "success grace"
    finally:
        process.kill()
        await process.wait()
