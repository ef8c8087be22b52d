"""What tracing costs: run.py's workloads "3-step run" and "per step" (a loop of trivial
steps), this trioflow against a baseline trioflow (a tree of the version before tracing),
in one process, their samples interleaved; and with tracing on, the cost per step beside
the bare OpenTelemetry cost of one span.

    git archive <commit before tracing> | tar -x -C /tmp/before
    python benchmarks/observability.py --baseline /tmp/before [--rounds 5]

Each configuration runs in fresh interpreters (``--rounds`` of them): "not installed"
blocks the import of ``opentelemetry``; "not configured" has it installed with no
provider set; "on" sets the SDK's providers, with its in-memory span exporter and metric
reader. The baseline's package is imported under another name (it uses relative imports
only), so both versions run in the same process under the same load: on a busy machine
only such a paired ratio means anything. Figures are medians.

``--instructions`` counts instead of timing (valgrind's callgrind, ``PYTHONHASHSEED=0``):
the instructions a 3-step run and a loop step execute, this tree against the baseline,
from interpreters that run the workload N times and none (their difference over N). A
count does not depend on what else the machine runs, so small differences show.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
CALLGRIND = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
LOOP = 2_000  # iterations of the per-step workload (a traced run's spans are kept in memory)


def import_baseline(tree: Path) -> ModuleType:
    """The baseline's ``trioflow`` package, imported as ``trioflow_baseline``."""
    folder = Path(tempfile.mkdtemp(prefix="trioflow-baseline-"))
    shutil.copytree(tree / "trioflow", folder / "trioflow_baseline")
    sys.path.insert(0, str(folder))
    return importlib.import_module("trioflow_baseline")


def workloads(flow: ModuleType) -> tuple[Any, Any]:
    """(a 3-step run, a LOOP-iteration loop run) of `flow`, as in run.py."""

    async def trivial(ctx: Any) -> Any:
        return ctx.input_data

    three = flow.create_workflow(id="linear-3")
    for i in range(3):
        three.then(flow.create_step(id=f"s{i}", execute=trivial))
    three = three.commit()
    loop = (
        flow.create_workflow(id="loop")
        .dountil(
            flow.create_step(id="tick", execute=trivial),
            lambda ctx: ctx.iteration_count >= LOOP,
        )
        .commit()
    )

    def runner(wf: Any) -> Any:
        async def run() -> None:
            result = await (await wf.create_run()).start(1)
            assert result.status == "success", result

        return run

    return runner(three), runner(loop)


def set_up_sdk() -> Any:
    """The SDK's providers, with the in-memory span exporter (returned) and metric reader."""
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
    return exporter


def bare_otel_step(tracer: Any, histogram: Any) -> None:
    """What OpenTelemetry itself does for a traced step: start a span with a step span's
    attributes, make it current, end it, and record one histogram value."""
    from opentelemetry import context, trace

    span = tracer.start_span(
        "trioflow.step s",
        attributes={
            "trioflow.run_id": "r",
            "trioflow.workflow_id": "w",
            "trioflow.step_id": "s",
            "trioflow.attempt": 1,
        },
    )
    token = context.attach(trace.set_span_in_context(span))
    context.detach(token)
    span.end()
    histogram.record(0.001, {"trioflow.workflow_id": "w", "trioflow.step_id": "s"})


def measure(config: str, baseline: Path) -> dict[str, float]:
    if config == "missing":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import fails
    import trio

    import trioflow

    before = import_baseline(baseline)
    exporter = set_up_sdk() if config == "on" else None

    async def per_call(fn: Any, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        return (time.perf_counter() - start) / calls

    async def paired(a: Any, b: Any, calls: int, repeats: int) -> tuple[float, float, float]:
        """Medians of `a` and `b` (seconds per call), and of the ratios of samples taken
        one right after the other: short samples, so that a pair shares the load."""
        await per_call(a, calls * 5)
        await per_call(b, calls * 5)
        samples_a, samples_b = [], []
        for i in range(repeats):
            if exporter is not None:
                exporter.clear()  # finished spans pile up in memory otherwise
            if i % 2:  # which goes first alternates too
                samples_b.append(await per_call(b, calls))
                samples_a.append(await per_call(a, calls))
            else:
                samples_a.append(await per_call(a, calls))
                samples_b.append(await per_call(b, calls))
        ratios = [x / y for x, y in zip(samples_a, samples_b, strict=True)]
        return statistics.median(samples_a), statistics.median(samples_b), statistics.median(ratios)

    async def main() -> dict[str, float]:
        (three, loop), (three_before, loop_before) = workloads(trioflow), workloads(before)
        three_now, three_then, three_ratio = await paired(three, three_before, 200, 61)
        loop_now, loop_then, loop_ratio = await paired(loop, loop_before, 1, 61)
        return {
            "three": three_now * 1e6,
            "three_before": three_then * 1e6,
            "three_ratio": three_ratio,
            "step": loop_now / LOOP * 1e6,
            "step_before": loop_then / LOOP * 1e6,
            "step_ratio": loop_ratio,
        }

    results = trio.run(main)
    if config == "on":
        results.update(bare_otel_cost())
    return results


def bare_otel_cost() -> dict[str, float]:
    """µs to start a span with a step span's attributes, make it current and end it; and
    to record one histogram value: what OpenTelemetry itself costs per step."""
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
    spans, records = [], []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(n):
            span = tracer.start_span("trioflow.step s", attributes=attributes)
            token = context.attach(trace.set_span_in_context(span))
            context.detach(token)
            span.end()
        spans.append((time.perf_counter() - start) / n * 1e6)
        start = time.perf_counter()
        for _ in range(n):
            histogram.record(0.001, {"trioflow.workflow_id": "w", "trioflow.step_id": "s"})
        records.append((time.perf_counter() - start) / n * 1e6)
    return {"span": statistics.median(spans), "histogram": statistics.median(records)}


def run_counted(which: str, config: str, kind: str, times: int, baseline: Path) -> None:
    """The workload to count: `kind` ("three" or "loop") `times` times, after one warm-up."""
    if config == "missing":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import fails
    import trio

    import trioflow

    before = import_baseline(baseline)
    if config == "on":
        set_up_sdk()
    three, loop = workloads(trioflow if which == "new" else before)
    work = three if kind == "three" else loop
    if kind == "span":
        from opentelemetry import metrics, trace

        tracer = trace.get_tracer("bench")
        histogram = metrics.get_meter("bench").create_histogram("bench.duration", unit="s")
        for _ in range(times + 1):
            bare_otel_step(tracer, histogram)
        return

    async def main() -> None:
        await three()
        await loop()
        for _ in range(times):
            await work()

    trio.run(main)


def count_instructions(baseline: Path) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "PYTHONHASHSEED": "0"}

    def count(*args: str) -> int:
        done = subprocess.run(
            [*CALLGRIND, sys.executable, __file__, "--baseline", str(baseline), "--count", *args],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        (line,) = [x for x in done.stderr.splitlines() if "Collected :" in x]
        return int(line.rsplit(":", 1)[1])

    print(f"{'tracing':<16} {'workload':<12} {'this tree':>12} {'baseline':>12} {'change':>8}")
    for config, label in (("missing", "not installed"), ("off", "not configured")):
        for kind, times, per in (("three", 2_000, 2_000), ("loop", 5, 5 * LOOP)):
            per_unit = {
                which: (count(which, config, kind, str(times)) - count(which, config, kind, "0"))
                / per
                for which in ("new", "base")
            }
            name = "3-step run" if kind == "three" else "per step"
            print(
                f"{label:<16} {name:<12} {per_unit['new']:12,.0f} {per_unit['base']:12,.0f} "
                f"{per_unit['new'] / per_unit['base'] - 1:+8.2%}"
            )
    on_step = (count("new", "on", "loop", "5") - count("new", "on", "loop", "0")) / (5 * LOOP)
    off_step = (count("new", "off", "loop", "5") - count("new", "off", "loop", "0")) / (5 * LOOP)
    bare = (count("new", "on", "span", str(LOOP)) - count("new", "on", "span", "0")) / LOOP
    print(f"{'on':<16} {'per step':<12} {on_step:12,.0f}   (+{on_step - off_step:,.0f} over off)")
    print(f"bare OpenTelemetry, a span and a histogram record: {bare:,.0f}")
    print("(instructions per run or per loop step, counted by callgrind)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--count", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions with valgrind instead"
    )
    parser.add_argument(
        "--baseline", type=Path, required=True, help="a tree of trioflow before tracing"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interpreters per configuration")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.baseline)))
        return
    if args.count:
        which, config, kind, times = args.count
        run_counted(which, config, kind, int(times), args.baseline)
        return
    if args.instructions:
        count_instructions(args.baseline)
        return
    configs = [
        ("not installed", "missing"),
        ("not configured", "off"),
        ("on: SDK, in-memory exporter", "on"),
    ]
    samples: dict[str, list[dict[str, float]]] = {label: [] for label, _ in configs}
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    for _ in range(args.rounds):
        for label, config in configs:
            done = subprocess.run(
                [sys.executable, __file__, "--measure", config, "--baseline", str(args.baseline)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            samples[label].append(json.loads(done.stdout))

    def med(label: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[label])

    def change(label: str, kind: str) -> float:
        return statistics.median(s[f"{kind}_ratio"] for s in samples[label]) - 1

    print(f"{'tracing':<30} {'3-step run, µs/run':>28} {'per step, µs/step':>28}")
    for label, _ in configs:
        cells = [
            f"{med(label, kind):7.2f} vs {med(label, kind + '_before'):6.2f} "
            f"{change(label, kind):+7.1%}"
            for kind in ("three", "step")
        ]
        print(f"{label:<30} {cells[0]:>28} {cells[1]:>28}")
    on = configs[2][0]
    print()
    print(
        f"tracing on, per step: +{med(on, 'step') - med(on, 'step_before'):.2f} µs "
        f"(a span, made current, and a histogram record)"
    )
    print(f"bare OpenTelemetry, one span (start, make current, end): {med(on, 'span'):.2f} µs")
    print(f"bare OpenTelemetry, one histogram record:                {med(on, 'histogram'):.2f} µs")
    print(f"(this tree vs the baseline, in the same processes; medians of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
