"""SQLite's small writes on the Trio thread (storage/_sqlite.py, `_call(inline=True)`):
they never wait there for another process's lock, other calls still do (in a worker
thread), and a run of many quick steps still gives the other tasks their turns."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import trio

import trioflow
from trioflow.storage._sqlite import TURN_EVERY


async def same(ctx: trioflow.StepContext[Any]) -> Any:
    return ctx.input_data


def chain(steps: int) -> trioflow.Workflow:
    wf = trioflow.create_workflow(id=f"chain-{steps}")
    for i in range(steps):
        wf.then(trioflow.create_step(id=f"s{i}", execute=same))
    return wf.commit()


async def test_a_write_that_finds_the_file_locked_waits_in_a_thread(tmp_path: Path) -> None:
    """Another process holds the write lock: the run's writes do not fail and do not
    block the Trio thread; they wait (up to the busy timeout) in a worker thread and go
    through once the lock is released."""
    path = tmp_path / "locked.db"
    wf = chain(3)
    ticks = 0
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[wf]) as engine:
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the write lock, as another process's write
            result: list[trioflow.RunResult] = []

            async def run_it() -> None:
                run = await engine.create_run(wf)
                result.append(await run.start(1))

            async def tick() -> None:
                nonlocal ticks
                while not result:
                    ticks += 1
                    await trio.sleep(0.01)

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_it)
                    nursery.start_soon(tick)
                    await trio.sleep(0.5)
                    assert not result  # still waiting for the lock...
                    assert ticks >= 10  # ...and not on the Trio thread
                    blocker.execute("COMMIT")
        finally:
            blocker.close()
    assert result[0].status == "success", result[0]
    assert result[0].result == 1


async def test_only_calls_in_a_worker_thread_wait_for_a_lock(tmp_path: Path) -> None:
    """The connection's standing busy timeout is 0 (an inline write never waits); a call
    in a worker thread sets the storage's timeout for its own duration."""
    storage = trioflow.SQLiteStorage(tmp_path / "timeout.db", timeout=3.0)
    async with storage:

        def busy_timeout(conn: sqlite3.Connection) -> int:
            (value,) = conn.execute("PRAGMA busy_timeout").fetchone()
            return int(value)

        assert await storage._call(busy_timeout) == 3000  # a worker thread's call
        assert storage._conn is not None
        assert busy_timeout(storage._conn) == 0  # set back after it
        assert await storage._call(busy_timeout, inline=True) == 0  # an inline write's


async def test_many_quick_durable_steps_give_other_tasks_turns(tmp_path: Path) -> None:
    """A chain of steps that never wait writes inline after each step without a pass
    through the scheduler each time, but every `TURN_EVERY` writes it gives one."""
    steps = 8 * TURN_EVERY
    wf = chain(steps)
    turns = 0
    done = False

    async def count_turns() -> None:
        nonlocal turns
        while not done:
            await trio.lowlevel.checkpoint()
            turns += 1

    storage = trioflow.SQLiteStorage(tmp_path / "turns.db")
    async with trioflow.open_engine(storage=storage, workflows=[wf]) as engine:
        run = await engine.create_run(wf)
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(count_turns)
                result = await run.start(0)
                done = True
    assert result.status == "success"
    assert turns >= steps // TURN_EVERY
