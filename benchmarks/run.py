"""trioflow benchmarks: each workload timed for trioflow and for the same work in bare Trio.

Run with ``nox -s bench`` or ``python benchmarks/run.py [--json] [--quick]``. Everything is
measured in this one process, with Trio's real clock and ``time.perf_counter``; each figure
is the median of several repeats after a warm-up, and trioflow and bare samples alternate so
that drift of the machine hits both alike. The figure that counts is the ratio to bare Trio.

What "the same work in bare Trio" means here (the fairness rules):

* **Checkpoints.** A checkpoint costs a pass through Trio's scheduler, which dwarfs the
  rest of a trivial step, so the bare code does exactly as many checkpoints as trioflow.
  The harness does not assume how many that is: it counts trioflow's schedule points with
  a Trio instrument (`count_yields`) -- a fixed part per run and a part per step -- and
  builds the bare code with the same numbers, then checks the bare count matches. Today
  trioflow yields in ``create_run()`` and ``start()`` only (2 per run, 0 per step); if a
  step or a loop iteration starts to checkpoint, the bare baseline follows.
* **Nursery.** ``Run._execute`` runs a linear workflow inline in the caller's task inside
  one ``trio.CancelScope``; it opens no nursery (only ``parallel``, ``branch`` and
  ``foreach`` do). So the bare run opens a CancelScope and no nursery. The cost of a
  nursery is printed as a note (``bare + nursery``) for reference only.
* **Runs in flight.** Both sides start each run/task with ``nursery.start_soon`` and block
  it in ``trio.sleep_forever()``; the bare task holds its own CancelScope (what a run
  owns). Memory per run is the ``tracemalloc`` growth (the counted figure) while all 10,000
  are blocked, divided by 10,000; the RSS growth is printed too, but pymalloc reuses freed
  arenas between rounds, so RSS is only indicative.
* **Cancel all.** trioflow: ``await run.cancel()`` for every run, one after the other
  (counted: the plain loop a user writes, and the faster way today) and all at once from
  a nursery of 10,000 canceller tasks (printed as a note); bare: ``scope.cancel()`` for
  every task. Both are timed until every ``start()`` / task has returned.
* **Cancel latency.** trioflow: from calling ``run.cancel()`` to ``start()`` returning in the
  run's task (a run blocked in a step); bare: from ``scope.cancel()`` to the blocked task
  returning. Median over 200.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

import trioflow

perf = time.perf_counter
AsyncFn = Callable[[], Awaitable[Any]]

LOOP_ITERATIONS = 10_000
IN_FLIGHT = 10_000
LATENCY_SAMPLES = 200


# --- measurement helpers -----------------------------------------------------------------


class _CountSteps(trio.abc.Instrument):
    """Counts how often one task is resumed: the schedule points it went through."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


async def count_yields(fn: AsyncFn) -> int:
    """How many times ``await fn()`` yields to Trio's scheduler."""
    instrument = _CountSteps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(instrument)
    try:
        await fn()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    return instrument.count


async def time_per_call(fn: AsyncFn, calls: int) -> float:
    """Seconds per ``await fn()``, over `calls` calls in a row."""
    gc.collect()
    start = perf()
    for _ in range(calls):
        await fn()
    return (perf() - start) / calls


async def paired_medians(
    a: AsyncFn, b: AsyncFn, *, calls: int, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median seconds per call of `a` and of `b`, their samples interleaved."""
    await time_per_call(a, warmup)
    await time_per_call(b, warmup)
    samples_a, samples_b = [], []
    for _ in range(repeats):
        samples_a.append(await time_per_call(a, calls))
        samples_b.append(await time_per_call(b, calls))
    return statistics.median(samples_a), statistics.median(samples_b)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def checkpoints(n: int) -> None:
    for _ in range(n):
        await trio.lowlevel.checkpoint()


# --- results -----------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    unit: str
    trioflow: float
    bare: float
    target: str
    max_ratio: float | None = None
    max_abs: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.trioflow / self.bare

    @property
    def misses(self) -> list[str]:
        missed = []
        if self.max_ratio is not None and self.ratio > self.max_ratio:
            missed.append("ratio")
        if self.max_abs is not None and self.trioflow > self.max_abs:
            missed.append("absolute")
        return missed

    @property
    def verdict(self) -> str:
        return "MISS (" + ", ".join(self.misses) + ")" if self.misses else "PASS"


# --- workload 1: a 3-step run of trivial steps -------------------------------------------


async def _trivial(ctx: trioflow.StepContext[Any]) -> Any:
    return ctx.input_data


def linear_workflow(n_steps: int) -> trioflow.Workflow:
    wf = trioflow.create_workflow(id=f"linear-{n_steps}")
    for i in range(n_steps):
        wf.then(trioflow.create_step(id=f"s{i}", execute=_trivial))
    return wf.commit()


def bare_linear(n_steps: int, fixed: int, per_step: int, nursery: bool = False) -> AsyncFn:
    """The bare Trio run: `fixed` checkpoints, a CancelScope, `n_steps` awaited functions."""

    async def step(x: Any) -> Any:
        for _ in range(per_step):
            await trio.lowlevel.checkpoint()
        return x

    async def run() -> Any:
        x: Any = 1
        for _ in range(fixed):
            await trio.lowlevel.checkpoint()
        with trio.CancelScope():
            if nursery:
                async with trio.open_nursery():
                    for _ in range(n_steps):
                        x = await step(x)
            else:
                for _ in range(n_steps):
                    x = await step(x)
        return x

    return run


def trioflow_run(wf: trioflow.Workflow) -> AsyncFn:
    async def run() -> Any:
        run = await wf.create_run()
        result = await run.start(1)
        assert result.status == "success", result
        return result

    return run


async def split_yields(make: Callable[[int], AsyncFn], small: int, large: int) -> tuple[int, int]:
    """(fixed, per step) schedule points, from runs of `small` and of `large` steps."""
    y_small = await count_yields(make(small))
    y_large = await count_yields(make(large))
    per_step, rest = divmod(y_large - y_small, large - small)
    assert rest == 0, (y_small, y_large)
    return y_small - per_step * small, per_step


async def bench_three_steps(quick: bool) -> Row:
    fixed, per_step = await split_yields(lambda n: trioflow_run(linear_workflow(n)), 1, 3)
    wf = linear_workflow(3)
    tf, bare = trioflow_run(wf), bare_linear(3, fixed, per_step)
    assert await count_yields(bare) == await count_yields(tf)
    calls, repeats = (500, 5) if quick else (2_000, 9)
    t_tf, t_bare = await paired_medians(tf, bare, calls=calls, repeats=repeats, warmup=calls)
    _, t_nursery = await paired_medians(
        tf, bare_linear(3, fixed, per_step, nursery=True), calls=calls, repeats=3, warmup=100
    )
    return Row(
        "3-step run of trivial steps",
        "µs/run",
        t_tf * 1e6,
        t_bare * 1e6,
        "≤ 3.5x bare",
        max_ratio=3.5,
        notes=[
            f"checkpoints per run: {fixed} + {per_step}/step (both sides)",
            f"bare + nursery: {t_nursery * 1e6:.1f} µs/run (reference, not counted)",
        ],
    )


# --- workload 2: a 10,000-iteration loop -------------------------------------------------


def loop_workflow(iterations: int) -> trioflow.Workflow:
    step = trioflow.create_step(id="tick", execute=_trivial)
    return (
        trioflow.create_workflow(id=f"loop-{iterations}")
        .dountil(step, lambda ctx: ctx.iteration_count >= iterations)
        .commit()
    )


def bare_loop(iterations: int, fixed: int, per_step: int) -> AsyncFn:
    """A loop awaiting a step function and calling a condition, in one CancelScope."""

    async def step(x: Any) -> Any:
        for _ in range(per_step):
            await trio.lowlevel.checkpoint()
        return x

    def condition(count: int) -> bool:
        return count >= iterations

    async def run() -> Any:
        x: Any = 1
        for _ in range(fixed):
            await trio.lowlevel.checkpoint()
        with trio.CancelScope():
            count = 0
            while True:
                x = await step(x)
                count += 1
                if condition(count):
                    break
        return x

    return run


async def bench_loop(quick: bool) -> Row:
    fixed, per_step = await split_yields(lambda n: trioflow_run(loop_workflow(n)), 10, 20)
    n = LOOP_ITERATIONS
    tf, bare = trioflow_run(loop_workflow(n)), bare_loop(n, fixed, per_step)
    assert await count_yields(bare) == await count_yields(tf)
    calls, repeats = (1, 3) if quick else (2, 7)
    t_tf, t_bare = await paired_medians(tf, bare, calls=calls, repeats=repeats, warmup=1)
    return Row(
        "per step, 10,000-iteration loop",
        "µs/step",
        t_tf / n * 1e6,
        t_bare / n * 1e6,
        "≤ 1.5x bare, ≤ 10 µs",
        max_ratio=1.5,
        max_abs=10.0,
        notes=[
            f"checkpoints per run: {fixed} + {per_step}/iteration (both sides; trioflow "
            "yields between iterations so a long loop never holds the scheduler)",
        ],
    )


# --- workload 2b: a step that leaves its abort listener behind -----------------------------

LISTENER_ITERATIONS = 100_000


def listener_loop(iterations: int, *, remove: bool, timeout: float | None) -> AsyncFn:
    """A loop whose step adds an abort listener on every iteration, and removes it
    (`remove`) or leaves it behind; with `timeout`, each step also has a timeout."""

    async def tick(ctx: trioflow.StepContext[Any]) -> Any:
        def listener() -> None:
            pass

        ctx.abort_signal.add_event_listener("abort", listener)
        if remove:
            ctx.abort_signal.remove_event_listener("abort", listener)
        return ctx.input_data

    step = trioflow.create_step(id="tick", execute=tick, timeout=timeout)
    wf = (
        trioflow.create_workflow(id="listeners")
        .dountil(step, lambda ctx: ctx.iteration_count >= iterations)
        .commit()
    )
    return trioflow_run(wf)


async def bench_listeners(quick: bool) -> Row:
    n = LISTENER_ITERATIONS // 10 if quick else LISTENER_ITERATIONS
    keep = listener_loop(n, remove=False, timeout=None)
    remove = listener_loop(n, remove=True, timeout=None)
    t_keep, t_remove = await paired_medians(keep, remove, calls=1, repeats=3, warmup=1)
    kept_timed = listener_loop(n, remove=False, timeout=60.0)
    gc.collect()
    before = rss_bytes()
    await kept_timed()
    grown = (rss_bytes() - before) / 2**20
    return Row(
        f"listener kept vs removed, {n:,} iterations",
        "µs/step",
        t_keep / n * 1e6,
        t_remove / n * 1e6,
        "≤ 1.2x removed",
        max_ratio=1.2,
        notes=[
            "'trioflow' = each step leaves its listener behind, 'bare' = each removes it; "
            "a step's listeners go with the step's own signal when it ends",
            f"the same loop with timeout=60 on the step: RSS grew {grown:.1f} MB",
        ],
    )


# --- workload 3: 10,000 runs in flight ---------------------------------------------------


class _Blocked:
    """Counts tasks that reached their block; `all_in` is set when `expected` did."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.all_in = trio.Event()

    def arrived(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.all_in.set()


@dataclass
class FlightSample:
    bytes_per_run: float
    rss_per_run: float
    cancel_s: float


async def flight_trioflow(n: int, *, traced: bool, concurrent: bool) -> FlightSample:
    blocked = _Blocked(n)

    async def block(ctx: trioflow.StepContext[Any]) -> Any:
        blocked.arrived()
        await trio.sleep_forever()

    wf = (
        trioflow.create_workflow(id="in-flight")
        .then(trioflow.create_step(id="block", execute=block))
        .commit()
    )
    runs: list[trioflow.Run] = []
    gc.collect()
    rss0, mem0 = rss_bytes(), tracemalloc.get_traced_memory()[0] if traced else 0
    async with trio.open_nursery() as nursery:
        for i in range(n):
            run = await wf.create_run()
            runs.append(run)
            nursery.start_soon(run.start, i)
        await blocked.all_in.wait()
        gc.collect()
        rss1, mem1 = rss_bytes(), tracemalloc.get_traced_memory()[0] if traced else 0
        start = perf()
        if concurrent:
            async with trio.open_nursery() as cancellers:
                for run in runs:
                    cancellers.start_soon(run.cancel)
        else:
            for run in runs:
                await run.cancel()
    elapsed = perf() - start
    assert all(run.status == "canceled" for run in runs)
    return FlightSample((mem1 - mem0) / n, (rss1 - rss0) / n, elapsed)


async def flight_bare(n: int, *, traced: bool) -> FlightSample:
    blocked = _Blocked(n)
    scopes: list[trio.CancelScope] = []

    async def task(x: int) -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            blocked.arrived()
            await trio.sleep_forever()

    gc.collect()
    rss0, mem0 = rss_bytes(), tracemalloc.get_traced_memory()[0] if traced else 0
    async with trio.open_nursery() as nursery:
        for i in range(n):
            await trio.lowlevel.checkpoint()  # as create_run() does, so both start alike
            nursery.start_soon(task, i)
        await blocked.all_in.wait()
        gc.collect()
        rss1, mem1 = rss_bytes(), tracemalloc.get_traced_memory()[0] if traced else 0
        start = perf()
        for scope in scopes:
            scope.cancel()
    elapsed = perf() - start
    return FlightSample((mem1 - mem0) / n, (rss1 - rss0) / n, elapsed)


async def bench_in_flight(quick: bool) -> list[Row]:
    n = IN_FLIGHT
    # Memory: one traced round each (tracemalloc slows allocation, so no timing here).
    tracemalloc.start()
    try:
        mem_bare = (await flight_bare(n, traced=True)).bytes_per_run
        mem_tf = (await flight_trioflow(n, traced=True, concurrent=False)).bytes_per_run
    finally:
        tracemalloc.stop()
    # Time to cancel all, interleaved rounds; the first untraced round also gives the RSS.
    rounds = 2 if quick else 3
    bare, seq, conc = [], [], []
    for _ in range(rounds):
        bare.append(await flight_bare(n, traced=False))
        seq.append(await flight_trioflow(n, traced=False, concurrent=False))
        conc.append(await flight_trioflow(n, traced=False, concurrent=True))
    t_bare = statistics.median(s.cancel_s for s in bare)
    t_conc = statistics.median(s.cancel_s for s in conc)
    t_seq = statistics.median(s.cancel_s for s in seq)
    memory = Row(
        "memory per run, 10,000 in flight",
        "KB/run",
        mem_tf / 1024,
        mem_bare / 1024,
        "≤ 8 KB",
        max_abs=8.0,
        notes=[
            "tracemalloc growth while all are blocked; "
            f"RSS growth (indicative): trioflow {seq[0].rss_per_run / 1024:.1f} KB, "
            f"bare {bare[0].rss_per_run / 1024:.1f} KB"
        ],
    )
    cancel_all = Row(
        "cancel all 10,000 in-flight runs",
        "s",
        t_seq,
        t_bare,
        "≤ 2x bare",
        max_ratio=2.0,
        notes=[
            "trioflow: `for run in runs: await run.cancel()`; all at once from a nursery "
            f"of cancellers it takes {t_conc:.3f} s ({t_conc / t_bare:.1f}x bare)"
        ],
    )
    return [memory, cancel_all]


# --- workload 4: latency from cancel() to start() returning ------------------------------


async def latency_trioflow(wf: trioflow.Workflow, entered: list[trio.Event]) -> float:
    run = await wf.create_run()
    entered[:] = [trio.Event()]
    returned_at = math.nan

    async def runner() -> None:
        nonlocal returned_at
        await run.start(None)
        returned_at = perf()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        await entered[0].wait()
        called_at = perf()
        await run.cancel()
    assert run.status == "canceled"
    return returned_at - called_at


async def latency_bare() -> float:
    entered = trio.Event()
    scopes: list[trio.CancelScope] = []
    returned_at = math.nan

    async def runner() -> None:
        nonlocal returned_at
        with trio.CancelScope() as scope:
            scopes.append(scope)
            entered.set()
            await trio.sleep_forever()
        returned_at = perf()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        await entered.wait()
        called_at = perf()
        scopes[0].cancel()
    return returned_at - called_at


async def bench_latency(quick: bool) -> Row:
    entered: list[trio.Event] = []

    async def block(ctx: trioflow.StepContext[Any]) -> Any:
        entered[0].set()
        await trio.sleep_forever()

    wf = (
        trioflow.create_workflow(id="latency")
        .then(trioflow.create_step(id="block", execute=block))
        .commit()
    )
    samples = 50 if quick else LATENCY_SAMPLES
    for _ in range(20):  # warm up
        await latency_trioflow(wf, entered)
        await latency_bare()
    gc.collect()
    tf, bare = [], []
    for _ in range(samples):
        tf.append(await latency_trioflow(wf, entered))
        bare.append(await latency_bare())
    return Row(
        "cancel() until start() returns",
        "µs",
        statistics.median(tf) * 1e6,
        statistics.median(bare) * 1e6,
        "≤ 25 µs",
        max_abs=25.0,
        notes=[
            f"median of {samples}; trioflow p90 {statistics.quantiles(tf, n=10)[-1] * 1e6:.1f} µs"
        ],
    )


# --- output ------------------------------------------------------------------------------


def _fmt(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def render(rows: list[Row], elapsed: float) -> str:
    head = ("workload", "unit", "trioflow", "bare Trio", "ratio", "target", "result")
    body = [
        (
            r.workload,
            r.unit,
            _fmt(r.trioflow),
            _fmt(r.bare),
            f"{r.ratio:.2f}x",
            r.target,
            r.verdict,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (head, *body)) for i in range(len(head))]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [
        f"trioflow {trioflow.__version__} · trio {trio.__version__} · "
        f"Python {sys.version.split()[0]} · {os.cpu_count()} CPUs",
        "",
        line(head),
        line(tuple("-" * w for w in widths)),
        *(line(b) for b in body),
        "",
        "notes:",
    ]
    for r in rows:
        out += [f"  {r.workload}: {note}" for note in r.notes]
    out.append(f"\nfinished in {elapsed:.1f} s")
    return "\n".join(out)


async def main(args: argparse.Namespace) -> list[Row]:
    rows = [await bench_three_steps(args.quick), await bench_loop(args.quick)]
    rows.append(await bench_listeners(args.quick))
    rows += await bench_in_flight(args.quick)
    rows.append(await bench_latency(args.quick))
    # Durable runs on SQLite (benchmarks/durable.py): there "bare" is bare sqlite3.
    import durable

    rows += [Row(**row) for row in await durable.bench(args.quick)]
    # Streaming from steps (benchmarks/streaming.py): against a bare memory channel.
    import streaming

    rows += [Row(**row) for row in await streaming.bench(args.quick)]
    return rows


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    args = parser.parse_args()
    start = perf()
    rows = trio.run(main, args)
    elapsed = perf() - start
    if args.json:
        doc = {
            "trioflow": trioflow.__version__,
            "trio": trio.__version__,
            "python": sys.version.split()[0],
            "elapsed_s": elapsed,
            "rows": [
                {**asdict(r), "ratio": r.ratio, "pass": not r.misses, "misses": r.misses}
                for r in rows
            ],
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        print(render(rows, elapsed))


if __name__ == "__main__":
    cli()
