"""Queue limits across workers: what a shared concurrency limit costs on PostgreSQL.

Run with ``python benchmarks/queues.py [--dsn DSN] [--runs 2000] [--repeats 3]``.
Without ``--dsn`` it starts a throwaway server on loopback (initdb + pg_ctl, as the tests
do) at PostgreSQL's default durability (fsync and synchronous_commit on).

Two drains of `--runs` queued runs of a one-step workflow whose step does nothing
(workers are ``tests/queue_app.py`` subprocesses), each in a fresh schema:

* **limited, 4 workers**: the runs wait in queue ``bench`` (``concurrency=3``); four
  worker processes serve it, each able to execute 3 runs at once, so the queue's limit,
  counted by the storage under the queue's row lock, is what holds them to 3 in all.
* **3 on 1 worker**: the runs wait in the default queue (no limits); one worker process
  executes at most 3 at once (``workers=3``): the same limit, kept in one process's
  memory, with no coordination.

The time of a drain runs from the first claim (the earliest ``started_at`` of the
queue's entries) to the last run's final write. Target (issue 16): the limited drain
within 1.5x the single worker's. Medians over `--repeats`, the two cases alternating.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg_server import PostgresServer  # noqa: E402
from queue_app import QUEUES, work  # noqa: E402

import trioflow  # noqa: E402

APP = ROOT / "tests" / "queue_app.py"
TARGET = 1.5


def spawn(dsn: str, workers: int, queue: str) -> subprocess.Popen[str]:
    argv = [sys.executable, str(APP), "--storage", dsn, "--workers", str(workers)]
    argv += ["--queue", queue, "--lease", "30"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


async def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = await trio.to_thread.run_sync(proc.stdout.readline)
    if not line.startswith("ready "):
        raise RuntimeError(f"worker failed to start: {line!r}")


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def drain(dsn: str, runs: int, *, processes: int, queue: str) -> float:
    """Seconds from the first claim to the last run's end."""
    storage = trioflow.PostgresStorage(dsn)
    async with trioflow.open_engine(
        storage=storage, workflows=[work], queues=QUEUES, lease_seconds=600
    ) as engine:
        for _ in range(runs):
            await engine.enqueue(work, {}, queue=queue)
        procs = [spawn(dsn, 3, queue) for _ in range(processes)]
        try:
            for proc in procs:
                await ready(proc)
            while True:
                stats = {s.name: s for s in await storage.queue_stats(time.time())}
                if stats[queue].waiting == 0 and stats[queue].executing == 0:
                    break
                await trio.sleep(0.05)
        finally:
            stop(procs)
        ((first, last),) = await storage._call(
            lambda conn: conn.execute(
                "SELECT min(e.started_at), max(r.updated_at) FROM trioflow_queued e "
                "JOIN trioflow_runs r ON r.run_id = e.run_id WHERE e.queue = %s",
                (queue,),
            ).fetchall()
        )
        (done,) = await storage._call(
            lambda conn: conn.execute(
                "SELECT count(*) FROM trioflow_runs WHERE status = 'success'"
            ).fetchone()
        )
        assert done == runs, f"{done} of {runs} runs succeeded"
    return float(last - first)


async def main(args: argparse.Namespace) -> None:
    server: PostgresServer | None = None
    if args.dsn is None:
        server = PostgresServer(durable=True)
        server.start()

    def fresh_dsn() -> str:
        if server is not None:
            return server.new_schema_dsn()
        import psycopg

        schema = f"bench_{int(time.time() * 1000)}"
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        return f"{args.dsn} options='-c search_path={schema}'"

    try:
        limited: list[float] = []
        single: list[float] = []
        for repeat in range(args.repeats):
            limited.append(await drain(fresh_dsn(), args.runs, processes=4, queue="bench"))
            single.append(await drain(fresh_dsn(), args.runs, processes=1, queue="default"))
            print(
                f"repeat {repeat + 1}: limited, 4 workers {limited[-1]:.2f} s; "
                f"3 on 1 worker {single[-1]:.2f} s",
                flush=True,
            )
        a, b = statistics.median(limited), statistics.median(single)
        ratio = a / b
        verdict = "PASS" if ratio <= TARGET else "MISS"
        print(f"\n{args.runs} trivial runs, medians of {args.repeats}:")
        print(f"  queue concurrency=3, 4 worker processes: {a:.2f} s ({args.runs / a:.0f} runs/s)")
        print(f"  workers=3, 1 worker process:            {b:.2f} s ({args.runs / b:.0f} runs/s)")
        print(f"  ratio {ratio:.2f}x (target <= {TARGET}x): {verdict}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing database (default: a throwaway server)")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory():
        trio.run(main, options)
