"""A program for test_journal.py to kill during a group commit.

    python tests/journal_app.py DB SIDE_DB RUNS --kill in-batch:N

Opens an engine on DB (a `durable_app.KillingStorage`, 0.5 s lease), creates RUNS runs
of the three-step workflow ``side`` (``r00``, ``r01``...) and starts them all at once,
prints ``ready``, then ``result <run id> <status> <result as JSON>`` for each. With
``--kill in-batch:N`` it prints ``dying in a batch of K writes`` and SIGKILLs itself
in the middle of a batch of several writes (see `KillingStorage`).

Each step inserts (run id, step) into the table ``executions`` of SIDE_DB in its own
committed transaction (its own connection) before it returns, so the test counts
every execution that happened, whatever became of the process.
"""

from __future__ import annotations

import argparse
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio
from durable_app import LEASE, POLL, KillingStorage

import trioflow

STEPS = ("s1", "s2", "s3")


def record(side_db: str | Path, run_id: str, step: str) -> None:
    with sqlite3.connect(side_db, timeout=10) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS executions (run_id TEXT, step TEXT)")
        conn.execute("INSERT INTO executions VALUES (?, ?)", (run_id, step))
    conn.close()


def executions(side_db: str | Path) -> list[tuple[str, str]]:
    if not Path(side_db).exists():
        return []
    with sqlite3.connect(side_db) as conn:
        rows = conn.execute("SELECT run_id, step FROM executions").fetchall()
    conn.close()
    return [(run_id, step) for run_id, step in rows]


def make_workflow(side_db: str | Path) -> trioflow.Workflow:
    def side_step(step: str) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> Any:
            await trio.lowlevel.checkpoint()
            record(side_db, ctx.run_id, step)
            return f"{ctx.input_data}+{step}"

        return trioflow.create_step(id=step, execute=execute)

    workflow = trioflow.create_workflow(id="side")
    for step in STEPS:
        workflow.then(side_step(step))
    return workflow.commit()


def run_ids(count: int) -> list[str]:
    return [f"r{i:02}" for i in range(count)]


def engine(db: str | Path, side_db: str | Path, kill: str | None = None) -> Any:
    return trioflow.open_engine(
        storage=KillingStorage(str(db), kill),
        workflows=[make_workflow(side_db)],
        lease_seconds=LEASE,
        poll_interval=POLL,
    )


async def main(db: str, side_db: str, count: int, kill: str | None) -> None:
    async with engine(db, side_db, kill) as eng:
        runs: Sequence[trioflow.Run] = [
            await eng.create_run("side", run_id=run_id) for run_id in run_ids(count)
        ]
        async with trio.open_nursery() as starting:
            for run in runs:
                starting.start_soon(run.start_soon, run.run_id)
        print("ready", flush=True)
        for run in runs:
            result = await run.result()
            encoded = msgspec.json.encode(result.result).decode()
            print("result", run.run_id, result.status, encoded, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("side_db")
    parser.add_argument("runs", type=int)
    parser.add_argument("--kill")
    args = parser.parse_args()
    trio.run(main, args.db, args.side_db, args.runs, args.kill)
