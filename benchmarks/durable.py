"""Durable runs on SQLite: what a write per step costs, and how fast a cancel reaches a
run executing in another process.

Run with ``python benchmarks/durable.py [--json] [--quick]``; ``benchmarks/run.py`` runs
it too (its ``durable`` rows). Everything uses the real clock and ``time.perf_counter``;
each figure is a median of several samples, trioflow's and the baseline's interleaved so
that drift of the machine hits both alike.

What is compared (the fairness rules):

* **A durable step.** trioflow: a run of 200 trivial steps, and a ``dountil`` loop of
  1,000 iterations, each on an engine with ``SQLiteStorage`` (WAL, ``synchronous=NORMAL``,
  the defaults), from ``engine.create_run()`` to ``run.start()`` returning, divided by the
  number of steps. trioflow appends the entries of what changed once per step (per
  iteration in the loop), plus the run's creation and start. Baseline: the same number
  of bare ``sqlite3`` writes as steps, each ``await trio.to_thread.run_sync(conn.execute,
  INSERT ...)`` of one row under a ``CapacityLimiter(1)``, on a file in the same folder
  with the same pragmas, in the same process, the rows of the sizes trioflow's writes
  had in that workload, in the same order (measured, not guessed; see `BareWriter`).
  Target: at most 1.5 times the baseline.
* **Cross-process cancel latency.** A second process (this file with ``--serve``) runs
  an engine on the same file and executes runs whose step blocks; this process calls
  ``await run.cancel()`` through its own engine and times it until it returns, which is
  once the executing process has stopped the run and stored it ``'canceled'``. Both
  engines use the default ``poll_interval`` (20 ms): SQLite has no notifications. The
  baseline is the same round trip with bare ``sqlite3`` at the same poll interval: write
  a request row; the other process polls ``PRAGMA data_version``, sees it and writes an
  answer; this one polls until it reads the answer. Target: median under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

import trioflow

perf = time.perf_counter
POLL = 0.02  # the engine's default poll_interval
CANCELS = 30


# --- a durable step --------------------------------------------------------------------


async def _trivial(ctx: trioflow.StepContext[Any]) -> Any:
    return ctx.input_data


def linear_workflow(steps: int) -> trioflow.Workflow:
    wf = trioflow.create_workflow(id=f"linear-{steps}")
    for i in range(steps):
        wf.then(trioflow.create_step(id=f"s{i}", execute=_trivial))
    return wf.commit()


def loop_workflow(iterations: int) -> trioflow.Workflow:
    tick = trioflow.create_step(id="tick", execute=_trivial)
    return (
        trioflow.create_workflow(id=f"loop-{iterations}")
        .dountil(tick, lambda ctx: ctx.iteration_count >= iterations)
        .commit()
    )


class MeasuredStorage(trioflow.SQLiteStorage):
    """SQLiteStorage that records the bytes of journal entries of each write (sizing
    runs)."""

    sizes: list[int]

    async def save_many(self, writes: Any, owner: str, now: float) -> list[bool]:
        self.sizes += [sum(len(entry) for entry in write.entries) for write in writes]
        return await super().save_many(writes, owner, now)


class BareWriter:
    """Rows appended, as plainly as sqlite3 and Trio allow, each a BLOB of the size of
    the entries of one of trioflow's writes, in the same order (random bytes, so that no
    page is skipped as unchanged)."""

    def __init__(self, path: Path, sizes: list[int]) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, data BLOB NOT NULL)"
        )
        self.blobs = [os.urandom(size) for size in sizes]
        self.writes = 0
        self.limiter = trio.CapacityLimiter(1)

    async def write(self) -> None:
        blob = self.blobs[self.writes % len(self.blobs)]
        self.writes += 1
        await trio.to_thread.run_sync(
            self.conn.execute,
            "INSERT INTO bare (data) VALUES (?)",
            (blob,),
            limiter=self.limiter,
        )

    def close(self) -> None:
        self.conn.close()


async def paired_medians(
    a: Callable[[], Awaitable[Any]], b: Callable[[], Awaitable[Any]], repeats: int
) -> tuple[float, float]:
    """Median seconds of `a` and of `b`, their samples interleaved, after a warm-up."""
    await a()
    await b()
    samples_a, samples_b = [], []
    for _ in range(repeats):
        start = perf()
        await a()
        samples_a.append(perf() - start)
        start = perf()
        await b()
        samples_b.append(perf() - start)
    return statistics.median(samples_a), statistics.median(samples_b)


async def bench_step(
    folder: Path, name: str, wf: trioflow.Workflow, steps: int, repeats: int
) -> dict[str, Any]:
    db = folder / f"{wf.id}.db"
    storage = MeasuredStorage(db)
    storage.sizes = []
    async with trioflow.open_engine(storage=storage, workflows=[wf]) as engine:

        async def durable_run() -> None:
            run = await engine.create_run(wf)
            result = await run.start(1)
            assert result.status == "success", result

        await durable_run()  # sizing run
        sizes = storage.sizes[:]
        writes, mean_size = len(sizes), sum(sizes) // len(sizes)
        bare = BareWriter(folder / f"{wf.id}-bare.db", sizes)

        async def bare_writes() -> None:
            for _ in range(steps):
                await bare.write()

        try:
            t_durable, t_bare = await paired_medians(durable_run, bare_writes, repeats)
        finally:
            bare.close()
    return {
        "workload": name,
        "unit": "µs/step",
        "trioflow": t_durable / steps * 1e6,
        "bare": t_bare / steps * 1e6,
        "target": "≤ 1.5x bare sqlite3",
        "max_ratio": 1.5,
        "max_abs": None,
        "notes": [
            f"baseline: a bare sqlite3 INSERT of a BLOB from a worker thread, {min(sizes)} to "
            f"{max(sizes)} bytes like trioflow's writes",
            f"trioflow makes {writes} writes per run of {steps} steps after its start, "
            f"{mean_size} bytes of entries on average (WAL, synchronous=NORMAL)",
        ],
    }


# --- cross-process cancel latency -------------------------------------------------------


def blocking_workflow(entered: Callable[[], Any] = lambda: None) -> trioflow.Workflow:
    """A step that calls `entered` and blocks until it is canceled."""

    async def blocked(ctx: trioflow.StepContext[Any]) -> None:
        entered()
        await trio.sleep_forever()

    step = trioflow.create_step(id="block", execute=blocked)
    return trioflow.create_workflow(id="blocking").then(step).commit()


async def serve(db: str, runs: int) -> None:
    """The executing process: start `runs` runs one after another; print each run's id
    once its step is blocked, and wait until it has been canceled."""
    entered = trio.Event()

    def enter() -> None:
        entered.set()

    workflow = blocking_workflow(enter)
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(db), workflows=[workflow]
    ) as engine:
        for _ in range(runs):
            entered = trio.Event()
            run = await engine.create_run(workflow)
            await run.start_soon()
            await entered.wait()
            print(run.run_id, flush=True)
            result = await run.result()
            assert result.status == "canceled", result


def serve_bare(db: str, answers: int) -> None:
    """The bare round trip's other side: poll PRAGMA data_version every POLL seconds;
    when it changes, answer the pending request."""
    conn = sqlite3.connect(db, isolation_level=None)
    seen = conn.execute("PRAGMA data_version").fetchone()[0]
    print("ready", flush=True)
    while answers:
        time.sleep(POLL)
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != seen:
            seen = version
            rows = conn.execute("SELECT id FROM requests WHERE answered = 0").fetchall()
            for (request,) in rows:
                conn.execute("UPDATE requests SET answered = 1 WHERE id = ?", (request,))
                answers -= 1


class Lines:
    """Lines of a child process's standard output."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.buffer = b""

    async def next(self) -> str:
        assert self.process.stdout is not None
        with trio.fail_after(30):
            while b"\n" not in self.buffer:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise RuntimeError("the serving process exited")
                self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()


async def spawn(*args: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE
    )


async def cancel_latencies(db: Path, count: int) -> list[float]:
    process = await spawn("--serve", str(db), str(count))
    lines = Lines(process)
    samples = []
    try:
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(db), workflows=[blocking_workflow()]
        ) as engine:
            for _ in range(count):
                run = await engine.get_run(await lines.next())
                await trio.sleep(0.005)  # let both sides settle into their polling
                start = perf()
                result = await run.cancel()
                samples.append(perf() - start)
                assert result.status == "canceled", result
        with trio.fail_after(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    return samples


async def bare_latencies(db: Path, count: int) -> list[float]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, answered INTEGER)")
    process = await spawn("--serve-bare", str(db), str(count))
    samples = []
    try:
        assert await Lines(process).next() == "ready"
        for request in range(count):
            await trio.sleep(0.005)
            start = perf()
            conn.execute("INSERT INTO requests VALUES (?, 0)", (request,))
            while True:
                await trio.sleep(POLL)
                row = conn.execute(
                    "SELECT answered FROM requests WHERE id = ?", (request,)
                ).fetchone()
                if row[0]:
                    break
            samples.append(perf() - start)
        with trio.fail_after(30):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
        conn.close()
    return samples


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def bench_cancel(folder: Path, count: int) -> dict[str, Any]:
    durable = await cancel_latencies(folder / "cancel.db", count)
    bare = await bare_latencies(folder / "cancel-bare.db", count)
    return {
        "workload": "cross-process cancel latency",
        "unit": "ms",
        "trioflow": statistics.median(durable) * 1e3,
        "bare": statistics.median(bare) * 1e3,
        "target": "median < 100 ms",
        "max_ratio": None,
        "max_abs": 100.0,
        "notes": [
            f"median of {count}: trioflow p99 {p99(durable) * 1e3:.1f} ms, "
            f"max {max(durable) * 1e3:.1f} ms; bare sqlite3 poll round trip "
            f"p99 {p99(bare) * 1e3:.1f} ms (both poll every {POLL * 1e3:g} ms)",
        ],
    }


# --- entry points -----------------------------------------------------------------------


async def bench(quick: bool = False) -> list[dict[str, Any]]:
    """The durable rows, as dicts with the fields of benchmarks/run.py's ``Row``."""
    with tempfile.TemporaryDirectory(prefix="trioflow-bench-") as tmp:
        folder = Path(tmp)
        return [
            await bench_step(
                folder, "durable step: 200-step run", linear_workflow(200), 200, 3 if quick else 9
            ),
            await bench_step(
                folder,
                "durable step: 1,000-iteration loop",
                loop_workflow(1000),
                1000,
                2 if quick else 5,
            ),
            await bench_cancel(folder, 10 if quick else CANCELS),
        ]


def render(rows: list[dict[str, Any]]) -> str:
    out = []
    for row in rows:
        ratio = row["trioflow"] / row["bare"]
        missed = (row["max_ratio"] is not None and ratio > row["max_ratio"]) or (
            row["max_abs"] is not None and row["trioflow"] > row["max_abs"]
        )
        out.append(
            f"{row['workload']:<36} {row['trioflow']:>8.1f} {row['unit']:<8} "
            f"bare {row['bare']:>7.1f}  {ratio:5.2f}x  {row['target']:<20} "
            f"{'MISS' if missed else 'PASS'}"
        )
    out.append("notes:")
    out += [f"  {row['workload']}: {note}" for row in rows for note in row["notes"]]
    return "\n".join(out)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke test)")
    parser.add_argument("--serve", nargs=2, metavar=("DB", "RUNS"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", nargs=2, metavar=("DB", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.serve[0], int(args.serve[1]))
    elif args.serve_bare:
        serve_bare(args.serve_bare[0], int(args.serve_bare[1]))
    else:
        rows = trio.run(bench, args.quick)
        print(json.dumps(rows, indent=2, ensure_ascii=False) if args.json else render(rows))


if __name__ == "__main__":
    cli()
