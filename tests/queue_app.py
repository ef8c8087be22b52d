"""The workflow and queues of the multi-process queue tests and benchmark, and a worker
process for them.

``python tests/queue_app.py --storage URL [--workers N] [--lease S] [--queue NAME ...] [--go PATH]``
opens an engine with ``workers=N`` on the storage `URL` names (a PostgreSQL DSN or
``sqlite:PATH``) until SIGINT/SIGTERM, after printing ``ready <owner id> <pid>``.

With ``$QUEUE_APP_SIDE`` set to a file, each step records its start and end in the
side table ``marks(what, run_id, key, pid, at)`` of that SQLite file (wall-clock
seconds), so a test can count how many runs executed at once, and where.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_server import make_storage

import trioflow

SIDE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS marks (what TEXT, run_id TEXT, key TEXT, pid INT, at REAL)"
)


def mark(what: str, run_id: str, key: str | None) -> None:
    side = os.environ.get("QUEUE_APP_SIDE")
    if not side:
        return
    with sqlite3.connect(side, timeout=30) as conn:
        conn.execute(
            "INSERT INTO marks VALUES (?, ?, ?, ?, ?)",
            (what, run_id, key, os.getpid(), time.time()),
        )
    conn.close()


@trioflow.step(id="work")
async def _work(ctx: trioflow.StepContext[Any]) -> Any:
    data = ctx.input_data or {}
    mark("start", ctx.run_id, data.get("key"))
    if data.get("sleep"):
        await trio.sleep(data["sleep"])
    mark("end", ctx.run_id, data.get("key"))
    return data.get("n")


work = trioflow.create_workflow(id="work").then(_work).commit()

limited = trioflow.Queue("limited", concurrency=3, per_key_concurrency=2)
rated = trioflow.Queue("rated", rate_limit=trioflow.RateLimit(4, per=1.0))
serial = trioflow.Queue("serial", concurrency=1)
bench = trioflow.Queue("bench", concurrency=3)
QUEUES = [limited, rated, serial, bench]


def read_marks(side: Path) -> list[tuple[str, str, str | None, int, float]]:
    with sqlite3.connect(side, timeout=30) as conn:
        rows = conn.execute("SELECT what, run_id, key, pid, at FROM marks ORDER BY at").fetchall()
    conn.close()
    return rows


def intervals(
    marks: list[tuple[str, str, str | None, int, float]], *, killed: dict[int, float]
) -> list[tuple[float, float, str | None]]:
    """(start, end, key) of each step execution: a start and the end in the same process;
    a step in a process killed (pid -> when) before its end ends at the kill."""
    opened: dict[tuple[str, int], tuple[float, str | None]] = {}
    spans: list[tuple[float, float, str | None]] = []
    for what, run_id, key, pid, at in marks:
        if what == "start":
            opened[(run_id, pid)] = (at, key)
        else:
            start, key = opened.pop((run_id, pid))
            spans.append((start, at, key))
    for (run_id, pid), (start, key) in opened.items():
        assert pid in killed, f"run {run_id} started in {pid} and never ended there"
        spans.append((start, killed[pid], key))
    return spans


def most_at_once(spans: list[tuple[float, float, str | None]], key: str | None = None) -> int:
    events = sorted(
        (at, change)
        for start, end, span_key in spans
        if key is None or span_key == key
        for at, change in ((start, 1), (end, -1))
    )
    now = peak = 0
    for _, change in events:  # at equal times an end (-1) sorts before a start
        now += change
        peak = max(peak, now)
    return peak


async def _serve(args: argparse.Namespace) -> None:
    async with trioflow.open_engine(
        storage=make_storage(args.storage),
        workflows=[work],
        queues=QUEUES,
        workers=args.workers,
        serve_queues=args.queue,
        lease_seconds=args.lease,
        poll_interval=args.poll,
    ) as engine:
        print(f"ready {engine.owner_id} {os.getpid()}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                raise SystemExit(0)  # leaves the engine: its runs stay recoverable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True, help="a PostgreSQL DSN or sqlite:PATH")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--queue", action="append", help="serve only these queues")
    parser.add_argument("--go", help="print 'waiting', then wait until this file exists")
    args = parser.parse_args()
    if os.environ.get("QUEUE_APP_SIDE"):
        with sqlite3.connect(os.environ["QUEUE_APP_SIDE"], timeout=30) as conn:
            conn.execute(SIDE_SCHEMA)
        conn.close()
    if args.go:  # lets a test start its processes together, once all have booted
        print("waiting", flush=True)
        while not os.path.exists(args.go):
            time.sleep(0.01)
    try:
        trio.run(_serve, args)
    except SystemExit:
        pass


if __name__ == "__main__":
    main()
