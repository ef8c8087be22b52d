"""The HTTP API: how fast ``GET /api/runs`` pages through a large SQLite database, and
how soon a run's events reach a Server-Sent Events client.

Run with ``python benchmarks/http_api.py [--json] [--quick]`` (needs ``trioflow[web]``).
Everything goes through a real server (``trioflow.serve_http`` on 127.0.0.1, Hypercorn's
Trio worker) and a real HTTP client (httpx over TCP) in this process, on Trio's real
clock, timed with ``time.perf_counter``.

* **List runs.** A SQLite file of 100,000 runs (5 workflows; 70 % success, 15 % failed,
  10 % canceled, 5 % suspended; created one second apart), written with bare ``sqlite3``
  into the schema trioflow creates. Each figure is the median and p99 of 200 requests
  for a page of 50, from sending the request to having its JSON decoded. Target: under
  20 ms.
* **Event latency.** A run of a ``dountil`` loop of 1,000 iterations whose step sleeps
  1 ms, then notes ``perf_counter()`` as its last act before returning; its
  ``workflow-step-result`` event is emitted right after. The client reads the stream
  (``GET /api/runs/{id}/events``) and notes ``perf_counter()`` when the event's line has
  arrived and been decoded. The latency is the difference (it includes the event's
  emission, the server's encoding and write, TCP on loopback and the client's parsing);
  p50/p99/max over the 1,000 events. Target: p99 under 5 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

import trioflow

perf = time.perf_counter
RUNS = 100_000
WORKFLOWS = [f"wf-{n}" for n in range(5)]
STATUSES = ["success"] * 14 + ["failed"] * 3 + ["canceled"] * 2 + ["suspended"]
LIST_TARGET_MS = 20.0
LATENCY_TARGET_MS = 5.0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- list runs ----------------------------------------------------------------------------


noop = trioflow.create_step(id="noop", execute=lambda ctx: None)
placeholders = [trioflow.create_workflow(id=w).then(noop).commit() for w in WORKFLOWS]


async def fill(path: Path, runs: int) -> None:
    """`runs` stored runs; one real snapshot (they are not decoded by a listing)."""
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=placeholders
    ) as engine:
        await engine.create_run(WORKFLOWS[0], "template")
    conn = sqlite3.connect(path)
    (snapshot,) = conn.execute(
        "SELECT snapshot FROM trioflow_runs WHERE run_id = 'template'"
    ).fetchone()
    conn.execute("DELETE FROM trioflow_runs")
    rng = random.Random(42)
    start = time.time() - runs
    rows = (
        (f"run-{i:06d}", rng.choice(WORKFLOWS), rng.choice(STATUSES), snapshot, start + i)
        for i in range(runs)
    )
    with conn:
        conn.executemany(
            "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            ((r, w, s, b, t, t) for r, w, s, b, t in rows),
        )
    conn.execute("ANALYZE")
    conn.close()


async def bench_list(path: Path, requests: int) -> dict[str, Any]:
    queries = {
        "newest 50": "limit=50",
        "newest 50 with status=failed": "limit=50&status=failed",
        "newest 50 of one workflow": "limit=50&workflow=wf-3",
        "status=suspended of one workflow": "limit=50&status=suspended&workflow=wf-1",
        "page 2 (offset=50)": "limit=50&offset=50",
        "status=running (no such run)": "limit=50&status=running",
    }
    results: dict[str, Any] = {}
    storage = trioflow.SQLiteStorage(path)
    async with (
        trioflow.open_engine(storage=storage, workflows=placeholders) as engine,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(
            lambda task_status: trioflow.serve_http(
                engine, host="127.0.0.1", port=0, task_status=task_status
            )
        )
        async with httpx.AsyncClient(base_url=url) as client:
            for name, query in queries.items():
                samples = []
                for n in range(requests + 10):
                    began = perf()
                    response = await client.get(f"/api/runs?{query}")
                    page = response.json()
                    took = (perf() - began) * 1000
                    assert response.status_code == 200, page
                    assert len(page["runs"]) == (0 if "running" in query else 50), query
                    if n >= 10:  # warm-up
                        samples.append(took)
                results[name] = {
                    "median_ms": statistics.median(samples),
                    "p99_ms": percentile(samples, 0.99),
                }
        nursery.cancel_scope.cancel()
    return results


# --- event latency --------------------------------------------------------------------------


def latency_workflow(iterations: int, stamps: dict[int, float], ready: trio.Event) -> Any:
    async def tick(ctx: trioflow.StepContext[int]) -> int:
        if ctx.input_data == 0:
            await ready.wait()  # the client is watching the run live
        await trio.sleep(0.001)
        stamps[ctx.input_data + 1] = perf()
        return ctx.input_data + 1

    step = trioflow.create_step(id="tick", execute=tick)
    return (
        trioflow.create_workflow(id="ticks")
        .dountil(step, lambda ctx: ctx.input_data >= iterations)
        .commit()
    )


async def bench_latency(folder: Path, iterations: int) -> dict[str, Any]:
    stamps: dict[int, float] = {}
    arrived: dict[int, float] = {}
    ready = trio.Event()
    workflow = latency_workflow(iterations, stamps, ready)
    storage = trioflow.SQLiteStorage(folder / "latency.db")
    async with (
        trioflow.open_engine(storage=storage, workflows=[workflow]) as engine,
        trio.open_nursery() as nursery,
    ):
        url = await nursery.start(
            lambda task_status: trioflow.serve_http(
                engine, host="127.0.0.1", port=0, task_status=task_status
            )
        )
        run = await engine.create_run(workflow)
        await run.start_soon(0)
        async with (
            httpx.AsyncClient(base_url=url, timeout=60) as client,
            client.stream("GET", f"/api/runs/{run.run_id}/events") as stream,
        ):
            event = ""
            async for line in stream.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "workflow-step-result":
                        output = json.loads(line[6:])["output"]
                        arrived[output] = perf()
                    elif event == "run" and not ready.is_set():
                        if json.loads(line[6:])["status"] == "running":
                            ready.set()
                    elif event == "end":
                        break
        nursery.cancel_scope.cancel()
    latencies = [(arrived[i] - stamps[i]) * 1000 for i in stamps if i in arrived]
    return {
        "events": len(latencies),
        "missed": iterations - len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
    }


async def main(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "runs.db"
        began = perf()
        await fill(db, 10_000 if quick else RUNS)
        filled = perf() - began
        listing = await bench_list(db, 20 if quick else 200)
        latency = await bench_latency(Path(folder), 100 if quick else 1000)
    return {"runs": 10_000 if quick else RUNS, "fill_s": filled, "list": listing, "sse": latency}


def report(results: dict[str, Any]) -> None:
    print(f"GET /api/runs, a page of 50 from {results['runs']:,} runs on SQLite")
    for name, row in results["list"].items():
        verdict = "PASS" if row["median_ms"] < LIST_TARGET_MS else "MISS"
        print(
            f"  {name:<36} median {row['median_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
            f"(target < {LIST_TARGET_MS:g} ms: {verdict})"
        )
    sse = results["sse"]
    verdict = "PASS" if sse["p99_ms"] < LATENCY_TARGET_MS else "MISS"
    print(f"SSE: step-result event to client, {sse['events']} events ({sse['missed']} missed)")
    print(
        f"  p50 {sse['p50_ms']:.2f} ms  p99 {sse['p99_ms']:.2f} ms  max {sse['max_ms']:.2f} ms  "
        f"(target p99 < {LATENCY_TARGET_MS:g} ms: {verdict})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller and fewer: a smoke test")
    args = parser.parse_args()
    results = trio.run(main, args.quick)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        report(results)
