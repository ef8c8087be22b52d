"""The storage layout's targets (a header row plus a journal per run), each beside its floor.

Run with ``python benchmarks/journal.py [--quick] [--json] [--postgres/--no-postgres]``
(PostgreSQL rows by default when ``initdb`` and ``pg_ctl`` are found, as in
tests/pg_server.py). Everything in one process, real clock, ``time.perf_counter``;
medians, trioflow's samples and its floor's interleaved so that drift of the machine hits
both alike. Storage defaults throughout: ``SQLiteStorage(path)`` (WAL,
``synchronous=NORMAL``), ``PostgresStorage(dsn)``, engines with default options.

Rows, and their floors:

* **long chain**: per-step cost of a 1,000-step durable ``.then`` chain of trivial steps
  over that of a 10-step chain (``create_run`` + ``start``). Target <= 1.2x. Floor
  beside it: the same ratio for bare commits of one row each (11 vs 1,001 commits of
  rows the size of one step's record), which is what a write per step costs when a
  write does not grow with the run.
* **3-step run**: ``create_run`` + ``start`` of three trivial steps, against one commit
  per transition: 5 bare sqlite3 commits (create, start, 2 in between, end), each an
  INSERT of a row of the median size trioflow hands to the storage in such a run,
  through ``trio.to_thread.run_sync`` under a ``CapacityLimiter(1)`` as the storage
  does, on a file in the same folder with the same pragmas. Target <= 1.3x.
* **1,000 concurrent runs**: 1,000 durable 3-step runs created and started at once
  (``create_run`` + ``start_soon`` in one task each, in a nursery) on one engine; runs/s
  from the first ``create_run`` to the last ``result()``, on SQLite and on PostgreSQL at
  its default durability (fsync and synchronous_commit on; a throwaway server, as
  benchmarks/postgres.py starts). Target >= 2,000 runs/s. Floor beside it: one commit
  per run, i.e. 1,000 single-row commits one after the other (bare sqlite3 as above;
  psycopg on one autocommit connection), as runs/s, and trioflow's ratio to it. Each
  the median of 5 bursts (1 with --quick), trioflow's and the floor's interleaved; the
  bursts' rates are printed.
* **against a baseline** (``--baseline TREE``, a checkout of an earlier trioflow): the
  same 1,000 concurrent runs with this tree and with TREE, each burst in a process of its
  own (``benchmarks/burst.py``), medians of as many bursts, interleaved. For reference,
  no target: the ratio to the code of an earlier day, measured beside it on the same
  machine, which the absolute rows cannot give when the machine's speed drifts.
* **50 MB input**: a 50 MB string through 3 steps whose outputs are small (its length,
  then that +1, +2). Bytes the process wrote: ``wchar`` of ``/proc/self/io`` (every
  ``write``/``pwrite`` of the process, its threads included: WAL, checkpoints into the
  database file) before and after the run; the database + WAL sizes afterwards are
  printed too. Target < 60 MB. Peak traced memory (``tracemalloc``, the input itself
  excluded) is printed for information.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # tests/pg_server.py

from durable import paired_medians  # noqa: E402  (benchmarks/, this file's folder)
from pg_server import PostgresServer, find_binary  # noqa: E402

import trioflow  # noqa: E402

perf = time.perf_counter
MB = 1_000_000
# Storage calls that only read; every other call of a storage is counted as a write.
READS = frozenset(
    {"load", "list_runs", "read_logs", "events_for", "data_version", "recoverable",
     "cancel_requests", "queue_place", "queue_stats", "load_schedule", "list_schedules",
     "load_trace_context", "wait_cancel_requests", "wait_run_ended", "open", "aclose",
     "renew", "release"}
)  # fmt: skip


# --- workloads --------------------------------------------------------------------------


async def _same(ctx: trioflow.StepContext[Any]) -> Any:
    return ctx.input_data


async def _length(ctx: trioflow.StepContext[Any]) -> int:
    return len(ctx.input_data)


async def _plus_one(ctx: trioflow.StepContext[Any]) -> int:
    return int(ctx.input_data) + 1


def chain(steps: int, *executes: Any) -> trioflow.Workflow:
    """`steps` steps, the i-th running ``executes[i]`` if given, else passing its input on."""
    wf = trioflow.create_workflow(id=f"chain-{steps}-{len(executes)}")
    for i in range(steps):
        execute = executes[i] if i < len(executes) else _same
        wf.then(trioflow.create_step(id=f"s{i}", execute=execute))
    return wf.commit()


def counted(storage: trioflow.Storage) -> list[int]:
    """Wrap `storage`'s writing calls (any public coroutine method not in `READS`, so
    this keeps working whatever the storage's write methods are called); returns the
    list that gets, per call, the bytes of its bytes-like arguments (looked for in
    lists, tuples and msgspec Structs too)."""
    sizes: list[int] = []

    def size(value: Any, depth: int = 0) -> int:
        if isinstance(value, bytes | bytearray | memoryview):
            return len(value)
        if depth > 3:
            return 0
        if isinstance(value, list | tuple):
            return sum(size(v, depth + 1) for v in value)
        fields = getattr(value, "__struct_fields__", None)
        if fields:
            return sum(size(getattr(value, f), depth + 1) for f in fields)
        return 0

    def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            sizes.append(size(args) + size(tuple(kwargs.values())))
            return await method(*args, **kwargs)

        return call

    for name in dir(type(storage)):
        if name.startswith("_") or name in READS:
            continue
        attribute = getattr(storage, name)
        if inspect.iscoroutinefunction(attribute):
            setattr(storage, name, wrap(attribute))
    return sizes


class BareSQLite:
    """Bare sqlite3 commits of one row each (autocommit INSERTs), from a worker thread
    under a ``CapacityLimiter(1)``, WAL and the synchronous setting trioflow uses."""

    def __init__(self, path: Path, synchronous: str = "NORMAL") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("CREATE TABLE IF NOT EXISTS bare (n INTEGER PRIMARY KEY, data BLOB)")
        self.limiter = trio.CapacityLimiter(1)
        self.blobs: dict[int, bytes] = {}

    async def commit(self, size: int) -> None:
        blob = self.blobs.get(size)
        if blob is None:
            blob = self.blobs[size] = os.urandom(max(size, 1))
        await trio.to_thread.run_sync(
            self.conn.execute, "INSERT INTO bare (data) VALUES (?)", (blob,), limiter=self.limiter
        )

    def close(self) -> None:
        self.conn.close()


def row(
    workload: str,
    unit: str,
    value: float,
    floor: float,
    target: str,
    ok: bool | None,  # None: a row for reference, with no target of its own
    *notes: str,
) -> dict[str, Any]:
    return {
        "workload": workload,
        "unit": unit,
        "trioflow": value,
        "floor": floor,
        "target": target,
        "result": "-" if ok is None else "PASS" if ok else "MISS",
        "notes": list(notes),
    }


# --- rows -------------------------------------------------------------------------------


async def long_chain(folder: Path, repeats: int) -> dict[str, Any]:
    short, long_ = chain(10), chain(1000)
    storage = trioflow.SQLiteStorage(folder / "chain.db")
    sizes = counted(storage)
    bare = BareSQLite(folder / "chain-bare.db")
    try:
        async with trioflow.open_engine(storage=storage, workflows=[short, long_]) as engine:

            async def run(wf: trioflow.Workflow) -> None:
                result = await (await engine.create_run(wf)).start(1)
                assert result.status == "success", result

            await run(short)
            first = len(sizes)
            await run(short)
            short_sizes = sizes[first:]
            # One step's record: what a write per step would carry if it did not grow.
            step_size = max(1, (short_sizes[-1] - short_sizes[0]) // 10)

            async def commits(n: int) -> None:
                for _ in range(n):
                    await bare.commit(step_size)

            # Interleaved: a 10-step run, a 1,000-step run, 11 commits, 1,001 commits.
            samples: dict[str, list[float]] = {"short": [], "long": [], "b11": [], "b1001": []}
            work = {
                "short": (lambda: run(short), 10),
                "long": (lambda: run(long_), 1000),
                "b11": (lambda: commits(11), 11),
                "b1001": (lambda: commits(1001), 1001),
            }
            await commits(1001)  # warm-up (the runs had theirs above)
            first = len(sizes)
            for _ in range(repeats):
                for key, (fn, n) in work.items():
                    start = perf()
                    await fn()
                    samples[key].append((perf() - start) / n)
            written = sum(sizes[first:]) / repeats / MB
    finally:
        bare.close()
    per_short, per_long = statistics.median(samples["short"]), statistics.median(samples["long"])
    floor_short, floor_long = statistics.median(samples["b11"]), statistics.median(samples["b1001"])
    ratio = per_long / per_short
    floor = floor_long / floor_short
    return row(
        "long chain: 1,000-step vs 10-step per step",
        "x",
        ratio,
        floor,
        "<= 1.2x",
        ratio <= 1.2,
        f"{per_long * 1e6:.0f} µs/step at 1,000 steps, {per_short * 1e6:.0f} µs/step at 10; "
        f"floor {floor_long * 1e6:.0f} vs {floor_short * 1e6:.0f} µs/commit of {step_size} B rows",
        f"handed to the storage per 10 + 1,000-step pair: {written:.1f} MB",
    )


async def three_steps(folder: Path, repeats: int) -> dict[str, Any]:
    wf = chain(3)
    storage = trioflow.SQLiteStorage(folder / "three.db")
    sizes = counted(storage)
    bare = BareSQLite(folder / "three-bare.db")
    try:
        async with trioflow.open_engine(storage=storage, workflows=[wf]) as engine:

            async def run() -> None:
                result = await (await engine.create_run(wf)).start(1)
                assert result.status == "success", result

            await run()
            first = len(sizes)
            await run()
            per_run = sizes[first:]
            size = int(statistics.median([s for s in per_run if s]))

            async def floor() -> None:
                for _ in range(5):
                    await bare.commit(size)

            t_run, t_floor = await paired_medians(run, floor, repeats)
    finally:
        bare.close()
    ratio = t_run / t_floor
    return row(
        "3-step durable run (SQLite)",
        "µs",
        t_run * 1e6,
        t_floor * 1e6,
        "<= 1.3x floor",
        ratio <= 1.3,
        f"{ratio:.2f}x the floor of 5 bare commits of {size} B rows; trioflow made "
        f"{len(per_run)} storage writes per run, {sum(per_run)} B handed to the storage",
    )


async def concurrent_runs(storage: trioflow.Storage, runs: int) -> float:
    wf = chain(3)
    async with trioflow.open_engine(storage=storage, workflows=[wf]) as engine:
        handles: list[trioflow.Run] = []

        async def create_and_start(i: int) -> None:
            run = await engine.create_run(wf)
            await run.start_soon(i)
            handles.append(run)

        start = perf()
        async with trio.open_nursery() as nursery:
            for i in range(runs):
                nursery.start_soon(create_and_start, i)
        for run in handles:
            assert (await run.result()).status == "success"
        elapsed = perf() - start
    return runs / elapsed


async def sqlite_floor(path: Path, runs: int) -> float:
    bare = BareSQLite(path)
    try:
        await bare.commit(300)
        start = perf()
        for _ in range(runs):
            await bare.commit(300)
        return runs / (perf() - start)
    finally:
        bare.close()


def postgres_floor(dsn: str, runs: int) -> float:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bare (n BIGSERIAL PRIMARY KEY, data BYTEA)")
        blob = os.urandom(300)
        conn.execute("INSERT INTO bare (data) VALUES (%s)", (blob,))
        start = perf()
        for _ in range(runs):
            conn.execute("INSERT INTO bare (data) VALUES (%s)", (blob,))
        return runs / (perf() - start)


async def concurrent_row(
    backend: str,
    runs: int,
    bursts: int,
    trioflow_rate: Callable[[int], Awaitable[float]],
    floor_rate: Callable[[int], Awaitable[float]],
) -> dict[str, Any]:
    """Medians of `bursts` bursts of `runs` runs and of as many floors, interleaved."""
    rates, floors = await interleaved(bursts, trioflow_rate, floor_rate)
    rate, floor = statistics.median(rates), statistics.median(floors)
    return row(
        f"{runs:,} concurrent 3-step runs ({backend})",
        "runs/s",
        rate,
        floor,
        ">= 2,000 runs/s",
        rate >= 2000,
        f"{rate / floor:.2f}x the floor of one commit per run ({floor:,.0f} commits/s); "
        f"median of {bursts} bursts: {listed(rates)} runs/s",
    )


async def interleaved(
    bursts: int,
    first: Callable[[int], Awaitable[float]],
    second: Callable[[int], Awaitable[float]],
) -> tuple[list[float], list[float]]:
    """`bursts` rates of each, taken in turn so that drift of the machine hits both."""
    firsts, seconds = [], []
    for burst in range(bursts):
        firsts.append(await first(burst))
        seconds.append(await second(burst))
    return firsts, seconds


def listed(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)


async def concurrent(
    folder: Path, runs: int, bursts: int, postgres: bool, baseline: Path | None
) -> list[dict[str, Any]]:
    files = itertools.count()

    def new_file() -> str:
        return str(folder / f"vs-{next(files)}.db")

    async def sqlite_rate(burst: int) -> float:
        return await concurrent_runs(trioflow.SQLiteStorage(folder / f"many-{burst}.db"), runs)

    async def sqlite_bare(burst: int) -> float:
        return await sqlite_floor(folder / f"many-bare-{burst}.db", runs)

    rows = [await concurrent_row("SQLite", runs, bursts, sqlite_rate, sqlite_bare)]
    if baseline is not None:
        rows.append(await baseline_row("SQLite", "sqlite", new_file, runs, bursts, baseline))
    if postgres:
        server = PostgresServer(durable=True)
        await trio.to_thread.run_sync(server.start)

        async def postgres_rate(burst: int) -> float:
            return await concurrent_runs(trioflow.PostgresStorage(server.new_schema_dsn()), runs)

        async def postgres_bare(burst: int) -> float:
            return await trio.to_thread.run_sync(postgres_floor, server.new_schema_dsn(), runs)

        try:
            rows.append(
                await concurrent_row(
                    "PostgreSQL, fsync on", runs, bursts, postgres_rate, postgres_bare
                )
            )
            if baseline is not None:
                rows.append(
                    await baseline_row(
                        "PostgreSQL", "postgres", server.new_schema_dsn, runs, bursts, baseline
                    )
                )
        finally:
            await trio.to_thread.run_sync(server.stop)
    return rows


async def baseline_row(
    backend: str, kind: str, new_target: Callable[[], str], runs: int, bursts: int, baseline: Path
) -> dict[str, Any]:
    """This tree's concurrent runs against `baseline`'s (an earlier checkout), medians of
    `bursts` bursts, interleaved, each in a process of its own (`burst.py`)."""

    async def rate(tree: Path) -> float:
        command = [sys.executable, str(HERE / "burst.py"), str(tree), kind, new_target(), str(runs)]
        return float((await trio.run_process(command, capture_stdout=True)).stdout)

    async def this_tree(burst: int) -> float:
        return await rate(ROOT)

    async def earlier_tree(burst: int) -> float:
        return await rate(baseline)

    ours, theirs = await interleaved(bursts, this_tree, earlier_tree)
    mine, before = statistics.median(ours), statistics.median(theirs)
    return row(
        f"{runs:,} concurrent 3-step runs ({backend}) vs baseline",
        "runs/s",
        mine,
        before,
        "(reference)",
        None,
        f"{mine / before:.1f}x the baseline {baseline}, each burst in a process of its own; "
        f"bursts: {listed(ours)} against {listed(theirs)} runs/s",
    )


def written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


async def big_input(folder: Path) -> dict[str, Any]:
    wf = chain(3, _length, _plus_one, _plus_one)
    path = folder / "big.db"
    data = "0123456789abcdef" * (50 * MB // 16)  # 50 MB of JSON-able text
    first = written_bytes()
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[wf]) as engine:
        run = await engine.create_run(wf)
        tracemalloc.start()
        try:
            before = written_bytes()
            start = perf()
            result = await run.start(data)
            elapsed = perf() - start
            written = written_bytes() - before
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert (result.status, result.result) == ("success", len(data) + 2), result
    in_all = written_bytes() - first  # with the engine's opening and closing checkpoint
    bare = await trio.to_thread.run_sync(bare_big_write, folder / "big-bare.db", data)
    return row(
        "50 MB input through 3 steps: written",
        "MB",
        written / MB,
        len(data) / MB,
        "< 60 MB",
        written < 60 * MB,
        f"wchar of /proc/self/io over the run; floor: the input once; {elapsed:.2f} s",
        f"from opening the engine to closing it, WAL checkpoint included: {in_all / MB:.1f} "
        f"MB; a bare sqlite3 INSERT of the input in a WAL file, closed: {bare / MB:.1f} MB "
        "(SQLite writes a page to the WAL, then copies it into the database at a "
        f"checkpoint); peak traced memory during the run: {peak / MB:.1f} MB",
    )


def bare_big_write(path: Path, data: str) -> int:
    """Bytes the process writes to store `data` once with bare sqlite3 (WAL, NORMAL)."""
    before = written_bytes()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE bare (data TEXT)")
    conn.execute("INSERT INTO bare VALUES (?)", (data,))
    conn.close()
    return written_bytes() - before


# --- entry points -----------------------------------------------------------------------


async def bench(quick: bool, postgres: bool, baseline: Path | None) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="trioflow-journal-") as tmp:
        folder = Path(tmp)
        return [
            await long_chain(folder, 1 if quick else 3),
            await three_steps(folder, 30 if quick else 200),
            *await concurrent(folder, 1000, 1 if quick else 5, postgres, baseline),
            await big_input(folder),
        ]


def render(rows: list[dict[str, Any]]) -> str:
    out = [f"{'workload':<52} {'trioflow':>10} {'floor':>10} {'unit':<7} {'target':<16} result"]
    for r in rows:
        out.append(
            f"{r['workload']:<52} {r['trioflow']:>10,.2f} {r['floor']:>10,.2f} {r['unit']:<7} "
            f"{r['target']:<16} {r['result']}"
        )
    out.append("notes:")
    out += [f"  {r['workload']}: {note}" for r in rows for note in r["notes"]]
    return "\n".join(out)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    parser.add_argument(
        "--postgres",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the PostgreSQL row (default: on when initdb and pg_ctl are found)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="a source tree of an earlier trioflow (git worktree add TREE <commit>): "
        "adds rows of this tree's concurrent runs against its, side by side",
    )
    args = parser.parse_args()
    postgres = args.postgres
    if postgres is None:
        postgres = find_binary("initdb") is not None and find_binary("pg_ctl") is not None
    rows = trio.run(bench, args.quick, postgres, args.baseline)
    print(json.dumps(rows, indent=2, ensure_ascii=False) if args.json else render(rows))


if __name__ == "__main__":
    cli()
