"""Streaming from steps: what ``await ctx.write(item)`` costs, and what a watcher that
never reads costs in memory.

Run with ``python benchmarks/streaming.py [--json] [--quick]``; ``benchmarks/run.py``
runs it too (its ``streaming`` rows). Real clock, ``time.perf_counter``, medians of
interleaved samples, as in ``run.py``.

What is compared (the fairness rules):

* **Per item, one watcher reading.** trioflow: one step doing ``await ctx.write(i)`` for
  100,000 small ints while one task reads ``run.watch()`` to its end; from
  ``create_run()`` to both being done, divided by 100,000. Bare: a producer doing
  ``await send.send(i)`` 100,000 times into ``trio.open_memory_channel(1000)`` (the
  watcher's default buffer) and a consumer reading it to its end, in one nursery. Both
  yield once per item (``ctx.write`` is a checkpoint, so is ``send``). Target: at most
  2 µs per item over bare.
* **Memory, a watcher that never reads.** trioflow: the same run with a watcher that
  enters ``run.watch()`` and never reads; the ``tracemalloc`` peak above the start.
  Bare (for reference): the same items into an unbounded memory channel nobody reads,
  which is what every watcher had before buffers were bounded. Target: under 10 MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
import tracemalloc
from typing import Any

import trio

import trioflow

ITEMS = 100_000
perf = time.perf_counter


def writing_workflow() -> trioflow.Workflow:
    """One step that writes ``range(input)``, one int at a time."""

    async def execute(ctx: trioflow.StepContext[int]) -> int:
        for i in range(ctx.input_data):
            await ctx.write(i)
        return ctx.input_data

    step = trioflow.create_step(id="write", execute=execute)
    return trioflow.create_workflow(id="streaming").then(step).commit()


async def trioflow_reading(workflow: trioflow.Workflow, items: int) -> float:
    """Seconds per item: the run writes, one watcher reads every event."""
    received: list[int] = [0, 0]  # outputs, overflows

    async def read(run: trioflow.Run, *, task_status: trio.TaskStatus[None]) -> None:
        async with run.watch() as events:
            task_status.started()
            async for event in events:
                if type(event) is trioflow.WorkflowStepOutput:
                    received[0] += 1
                elif type(event) is trioflow.WatchOverflow:
                    received[1] += 1

    gc.collect()
    start = perf()
    run = await workflow.create_run()
    async with trio.open_nursery() as nursery:
        await nursery.start(read, run)
        await run.start(items)
    elapsed = perf() - start
    assert received == [items, 0], f"the reader lost events: {received}"
    return elapsed / items


async def bare_reading(items: int) -> float:
    """Seconds per item: a memory channel, one producer, one consumer."""
    send, receive = trio.open_memory_channel[int](1000)

    async def produce() -> None:
        async with send:
            for i in range(items):
                await send.send(i)

    async def consume() -> None:
        async with receive:
            async for _ in receive:
                pass

    gc.collect()
    start = perf()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        nursery.start_soon(produce)
    return (perf() - start) / items


async def trioflow_stalled_peak(workflow: trioflow.Workflow, items: int) -> tuple[float, int]:
    """(tracemalloc peak in bytes above the start, events the watcher lost)."""
    run = await workflow.create_run()
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        async with run.watch() as events:  # never read while the run goes on
            await run.start(items)
            _, peak = tracemalloc.get_traced_memory()
            overflows = [e async for e in events if type(e) is trioflow.WatchOverflow]
            lost = sum(e.lost for e in overflows)
            assert len(overflows) == 1, overflows
    finally:
        tracemalloc.stop()
    return peak - base, lost


async def bare_stalled_peak(items: int) -> float:
    """The tracemalloc peak of the same items in an unbounded channel nobody reads."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        send, receive = trio.open_memory_channel[Any](float("inf"))
        for i in range(items):
            await send.send(("workflow-step-output", "run", "write", i))
        _, peak = tracemalloc.get_traced_memory()
        send.close()
        receive.close()
    finally:
        tracemalloc.stop()
    return peak - base


async def bench(quick: bool = False) -> list[dict[str, Any]]:
    items = ITEMS // 10 if quick else ITEMS
    repeats = 3 if quick else 5
    workflow = writing_workflow()
    await trioflow_reading(workflow, items // 10)  # warm-up
    await bare_reading(items // 10)
    tf, bare = [], []
    for _ in range(repeats):
        tf.append(await trioflow_reading(workflow, items))
        bare.append(await bare_reading(items))
    tf_us, bare_us = statistics.median(tf) * 1e6, statistics.median(bare) * 1e6

    peak, lost = await trioflow_stalled_peak(workflow, ITEMS)
    bare_peak = await bare_stalled_peak(ITEMS)
    return [
        {
            "workload": f"streaming: ctx.write, {items:,} items, 1 watcher reading",
            "unit": "µs/item",
            "trioflow": tf_us,
            "bare": bare_us,
            "target": "≤ bare + 2 µs",
            "max_abs": bare_us + 2.0,
            "notes": [
                f"{tf_us - bare_us:+.2f} µs per item over a bare memory channel send/receive "
                f"(median of {repeats}); no event lost"
            ],
        },
        {
            "workload": f"streaming: a watcher that never reads, {ITEMS:,} items",
            "unit": "MB peak",
            "trioflow": peak / 1e6,
            "bare": bare_peak / 1e6,
            "target": "< 10 MB",
            "max_abs": 10.0,
            "notes": [
                f"tracemalloc peak; the watcher got one watch-overflow (lost {lost:,}); "
                "bare: the same items in an unbounded channel nobody reads (the old watcher)"
            ],
        },
    ]


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer items and repeats")
    args = parser.parse_args()
    rows = trio.run(bench, args.quick)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        verdict = "PASS" if row["trioflow"] <= row["max_abs"] else "MISS"
        print(
            f"{row['workload']}: trioflow {row['trioflow']:.3f} {row['unit']}, "
            f"bare {row['bare']:.3f} {row['unit']} (target {row['target']}): {verdict}"
        )
        for note in row["notes"]:
            print(f"  {note}")


if __name__ == "__main__":
    cli()
