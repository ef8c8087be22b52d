"""What tracing costs: the rows "3-step run" and "per step" of run.py, with OpenTelemetry
not installed, installed but not configured, and on (the SDK with its in-memory span
exporter and metric reader), beside the bare OpenTelemetry cost of one span.

    python benchmarks/observability.py                       # this tree
    python benchmarks/observability.py --baseline DIR        # and a tree without tracing

Each configuration runs in its own interpreter ("not installed" blocks the import of
``opentelemetry``), several rounds, alternating; a round measures trioflow and bare Trio
with run.py's own workloads and fairness rules, and what counts is the ratio to bare Trio
(the machine's drift hits both). With ``--baseline DIR`` (a checkout of the version
before tracing, e.g. ``git archive main | tar -x -C DIR``), the same rows run with that
tree's trioflow, and the table compares ratios: "within 3%" means the ratio to bare of
this tree is at most 1.03 times the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOOP = 2_000  # iterations of the per-step workload (spans of a traced run are kept in memory)


# --- one measurement, in a fresh interpreter ------------------------------------------------


def measure(config: str) -> dict[str, float]:
    if config == "missing":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import fails
    sys.path.insert(0, str(HERE))
    import run as bench  # benchmarks/run.py
    import trio

    exporter = None
    if config == "on":
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))

    async def paired(a: Any, b: Any, calls: int, repeats: int) -> tuple[float, float]:
        await bench.time_per_call(a, calls)
        await bench.time_per_call(b, calls)
        samples_a, samples_b = [], []
        for _ in range(repeats):
            if exporter is not None:
                exporter.clear()  # finished spans pile up in memory otherwise
            samples_a.append(await bench.time_per_call(a, calls))
            samples_b.append(await bench.time_per_call(b, calls))
        return statistics.median(samples_a), statistics.median(samples_b)

    async def main() -> dict[str, float]:
        fixed, per_step = await bench.split_yields(
            lambda n: bench.trioflow_run(bench.linear_workflow(n)), 1, 3
        )
        three = bench.trioflow_run(bench.linear_workflow(3))
        three_tf, three_bare = await paired(
            three, bench.bare_linear(3, fixed, per_step), calls=1_000, repeats=7
        )
        fixed, per_step = await bench.split_yields(
            lambda n: bench.trioflow_run(bench.loop_workflow(n)), 10, 20
        )
        loop = bench.trioflow_run(bench.loop_workflow(LOOP))
        loop_tf, loop_bare = await paired(
            loop, bench.bare_loop(LOOP, fixed, per_step), calls=2, repeats=9
        )
        return {
            "three_tf": three_tf * 1e6,
            "three_bare": three_bare * 1e6,
            "step_tf": loop_tf / LOOP * 1e6,
            "step_bare": loop_bare / LOOP * 1e6,
        }

    results = trio.run(main)
    if config == "on":
        results.update(bare_span_cost())
    return results


def bare_span_cost() -> dict[str, float]:
    """µs to create, make current and end one span with the attributes of a step span,
    and to record one histogram value: what OpenTelemetry itself costs per step."""
    from opentelemetry import context, metrics, trace

    tracer = trace.get_tracer("bench")
    histogram = metrics.get_meter("bench").create_histogram("bench.duration", unit="s")
    attributes = {
        "trioflow.run_id": "r",
        "trioflow.workflow_id": "w",
        "trioflow.step_id": "s",
        "trioflow.attempt": 1,
    }
    n = 20_000
    samples, hist = [], []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            span = tracer.start_span("trioflow.step s", attributes=attributes)
            token = context.attach(trace.set_span_in_context(span))
            context.detach(token)
            span.end()
        samples.append((time.perf_counter() - start) / n * 1e6)
        start = time.perf_counter()
        for _ in range(n):
            histogram.record(0.001, {"trioflow.workflow_id": "w", "trioflow.step_id": "s"})
        hist.append((time.perf_counter() - start) / n * 1e6)
    return {"span": statistics.median(samples), "histogram": statistics.median(hist)}


# --- the driver ------------------------------------------------------------------------------


def run_worker(config: str, tree: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, str(HERE / "observability.py"), "--measure", config],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--baseline", type=Path, help="a tree of trioflow without tracing")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration (3)")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    tree = HERE.parent
    configs = [("not installed", "missing", tree), ("not configured", "off", tree)]
    if args.baseline is not None:
        configs.insert(0, ("baseline (before tracing)", "missing", args.baseline.resolve()))
    configs.append(("on: SDK, in-memory exporter", "on", tree))
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in configs}
    for _ in range(args.rounds):
        for label, config, where in configs:
            samples[label].append(run_worker(config, where))

    def med(label: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[label])

    def ratio(label: str, kind: str) -> float:
        return statistics.median(s[f"{kind}_tf"] / s[f"{kind}_bare"] for s in samples[label])

    base = configs[0][0] if args.baseline is not None else None
    print(f"{'configuration':<30} {'3-step run':>22} {'per step':>22}")
    for label, _, _ in configs:
        cells = []
        for kind in ("three", "step"):
            cell = f"{med(label, kind + '_tf'):7.2f} µs ({ratio(label, kind):4.2f}x)"
            if base is not None and label != base:
                cell += f" {ratio(label, kind) / ratio(base, kind) - 1:+5.1%}"
            cells.append(cell)
        print(f"{label:<30} {cells[0]:>22} {cells[1]:>22}")
    on = "on: SDK, in-memory exporter"
    overhead = med(on, "step_tf") - med("not configured", "step_tf")
    print()
    print(f"tracing on, per step: +{overhead:.2f} µs over not configured")
    print(f"bare OpenTelemetry: one span (start, make current, end): {med(on, 'span'):.2f} µs")
    print(
        f"                    one histogram record:                 {med(on, 'histogram'):.2f} µs"
    )
    print("(ratios: trioflow / the same work in bare Trio; percentages: against the baseline)")


if __name__ == "__main__":
    main()
