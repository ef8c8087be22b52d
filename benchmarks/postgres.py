"""PostgreSQL workers: throughput with 1, 2 and 4 worker processes, and cancel latency.

Run with ``python benchmarks/postgres.py [--dsn DSN] [--runs 1000] [--cancels 200]``
(``--runs 0`` measures only the cancels). Without ``--dsn`` it starts a throwaway server
on loopback (initdb + pg_ctl, as the tests do) at PostgreSQL's default durability: fsync
and synchronous_commit on, so every commit waits for its WAL flush, as in production.
The settings in force are printed first. Workers are ``tests/pg_worker_app.py``
subprocesses.

* **Throughput**: `--runs` runs of a 3-step workflow (steps do no work: this measures
  trioflow + PostgreSQL, five writes per run and a share of a batched claim) queued up
  front in a fresh schema, then executed by N workers of `--concurrency` runs each. Runs
  per second over the window from the first step's start to the last run's end, as the
  snapshots record them (so the workers' start-up is not counted).
* **Cancel latency**: a run blocked in a step in a worker process; an engine in this
  process calls ``run.cancel()``; the latency is from that call to the step's
  ``finally`` running in the worker (wall clocks of one machine), and to ``cancel()``
  returning (the run recorded ``'canceled'``: the worker's final write notifies this
  process, which does not poll). p50 and p99 over ``--cancels`` runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from pg_server import PostgresServer  # noqa: E402
from pg_worker_app import WORKFLOWS  # noqa: E402

import trioflow  # noqa: E402

APP = ROOT / "tests" / "pg_worker_app.py"


def spawn(dsn: str, log: Path, concurrency: int) -> subprocess.Popen[str]:
    argv = [sys.executable, str(APP), "--storage", dsn, "--log", str(log)]
    argv += ["--concurrency", str(concurrency), "--lease", "10"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


async def ready(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = await trio.to_thread.run_sync(proc.stdout.readline)
    if not line.startswith("ready "):
        raise RuntimeError(f"worker failed to start: {line!r}")
    return line.split()[1]


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


async def throughput(dsn: str, workers: int, runs: int, concurrency: int, tmp: Path) -> float:
    storage = trioflow.PostgresStorage(dsn)
    async with trioflow.open_engine(
        storage=storage, workflows=WORKFLOWS, lease_seconds=600
    ) as engine:
        ids = [(await engine.enqueue("three", {})).run_id for _ in range(runs)]
        procs = [spawn(dsn, tmp / f"tp-{workers}-{n}.log", concurrency) for n in range(workers)]
        try:
            for proc in procs:
                await ready(proc)
            while True:
                done = await engine.list_runs(status="success", limit=runs + 1)
                if len(done) >= runs:
                    break
                await trio.sleep(0.05)
            first_start = float("inf")
            last_end = 0.0
            for run_id in ids:
                row = await storage.load(run_id)
                started = trioflow._journal.of_row(row).steps["s1"].started_at
                assert started is not None
                first_start = min(first_start, started)
                last_end = max(last_end, row.updated_at)
        finally:
            stop(procs)
    return runs / (last_end - first_start)


async def cancel_latency(dsn: str, count: int, tmp: Path) -> tuple[list[float], list[float]]:
    log = tmp / "cancel.log"
    proc = spawn(dsn, log, 4)
    arrived: list[float] = []
    returned: list[float] = []
    try:
        await ready(proc)
        async with trioflow.open_engine(
            storage=trioflow.PostgresStorage(dsn), workflows=WORKFLOWS, lease_seconds=600
        ) as engine:
            for _ in range(count):
                run = await engine.enqueue("blocker")
                while True:
                    if f"start {run.run_id} " in log.read_text():
                        break
                    await trio.sleep(0.002)
                await trio.sleep(0.01)  # the step is blocked in the worker
                asked = time.time()
                outcome = await run.cancel()
                returned.append(time.time() - asked)
                assert outcome.status == "canceled", outcome
                while True:
                    lines = [
                        line
                        for line in log.read_text().splitlines()
                        if line.startswith(f"cancelled {run.run_id} ")
                    ]
                    if lines:
                        arrived.append(float(lines[0].split()[4]) - asked)
                        break
                    await trio.sleep(0.002)
    finally:
        stop([proc])
    return arrived, returned


def settings(dsn: str) -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return [
            (name, conn.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes")
        ]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main(args: argparse.Namespace, tmp: Path) -> None:
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
        dsn = fresh_dsn()
        print("server:", ", ".join(f"{name}={value}" for name, value in settings(dsn)))
        if args.runs:
            print(f"PostgreSQL throughput: {args.runs} runs of a 3-step workflow, ", end="")
            print(f"{args.concurrency} runs at once per worker")
            print(f"{'workers':>8} {'runs/s':>10} {'per worker':>11}")
            for workers in (1, 2, 4):
                rate = await throughput(fresh_dsn(), workers, args.runs, args.concurrency, tmp)
                print(f"{workers:>8} {rate:>10.0f} {rate / workers:>11.0f}", flush=True)
            print()
        arrived, returned = await cancel_latency(dsn, args.cancels, tmp)
        print(f"Cancel across processes ({args.cancels} runs), milliseconds:")
        print(f"{'':<34} {'p50':>7} {'p99':>7} {'max':>7}")
        for name, values in (
            ("cancel() -> step interrupted there", arrived),
            ("cancel() returned (recorded)", returned),
        ):
            ms = [v * 1000 for v in values]
            print(
                f"{name:<34} {statistics.median(ms):>7.2f} {percentile(ms, 99):>7.2f} "
                f"{max(ms):>7.2f}"
            )
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an existing database (default: a throwaway server)")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cancels", type=int, default=200)
    options = parser.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        trio.run(main, options, Path(directory))
