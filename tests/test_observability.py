"""Observability: OpenTelemetry spans and metrics of runs (with the SDK's in-memory
span exporter and metric reader), ``ctx.logger`` records kept with their run, and the
tracebacks of failed steps.

The SDK's providers are installed for one test at a time (the `otel` fixture puts them
where ``trace.get_tracer_provider()`` and ``metrics.get_meter_provider()`` look, and
puts the API's defaults back after), so every other test runs untraced.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import trioflow
from trioflow import _journal, _logs, _snapshot, _tracing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))
from check_snippets import parse_page
from faulty_storage import FaultyStorage


@dataclass
class Otel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer: trace.Tracer

    def spans(self, prefix: str = "trioflow.") -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name.startswith(prefix)]

    def span(self, name: str) -> ReadableSpan:
        (found,) = [s for s in self.spans() if s.name == name]
        return found

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    # What trace.set_tracer_provider() sets, but undone after the test (the API lets a
    # program set its providers once; opentelemetry-test-utils resets them the same way).
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", tracer_provider)
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", meter_provider)
    yield Otel(exporter, reader, tracer_provider.get_tracer("tests"))
    meter_provider.shutdown()
    tracer_provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]


async def echo(ctx: trioflow.StepContext[Any]) -> Any:
    await trio.sleep(1)
    return ctx.input_data


def make_step(id: str, execute: Any = echo, **kwargs: Any) -> trioflow.Step[Any, Any]:
    return trioflow.create_step(id=id, execute=execute, **kwargs)


# --- not configured -------------------------------------------------------------------


async def test_without_configured_providers_nothing_is_traced() -> None:
    """The API's default providers are stand-ins: tracing stays off, per execution."""
    assert _tracing.instruments() is None
    seen: list[object] = []

    async def look(ctx: trioflow.StepContext[Any]) -> None:
        seen.append(ctx._frame.run._trace)

    wf = trioflow.create_workflow(id="plain").then(make_step("look", look)).commit()
    result = await (await wf.create_run()).start()
    assert result.status == "success"
    assert seen == [None]


# --- spans ----------------------------------------------------------------------------


async def test_span_tree_of_a_run_with_parallel_steps(otel: Otel, autojump_clock: Any) -> None:
    """One run span, child of the caller's span; one child span per step, the parallel
    ones included, each with the run's attributes and its own step id and attempt."""
    wf = (
        trioflow.create_workflow(id="fan-out")
        .then(make_step("first"))
        .parallel([make_step("left"), make_step("right")])
        .then(make_step("last", lambda ctx: ctx.input_data["left"]))
        .commit()
    )
    run = await wf.create_run(run_id="run-1")
    with otel.tracer.start_as_current_span("caller") as caller:
        result = await run.start(input_data=5)
    assert result.status == "success" and result.result == 5
    run_span = otel.span("trioflow.run fan-out")
    assert run_span.parent is not None
    assert run_span.parent.span_id == caller.get_span_context().span_id
    assert run_span.context.trace_id == caller.get_span_context().trace_id
    assert attrs(run_span) == {
        "trioflow.run_id": "run-1",
        "trioflow.workflow_id": "fan-out",
        "trioflow.workflow_version": wf.version,
        "trioflow.run.status": "success",
    }
    steps = {s.name: s for s in otel.spans("trioflow.step ")}
    assert sorted(steps) == [
        "trioflow.step first",
        "trioflow.step last",
        "trioflow.step left",
        "trioflow.step right",
    ]
    for name, span in steps.items():
        assert span.parent is not None and span.parent.span_id == run_span.context.span_id
        assert attrs(span) == {
            "trioflow.run_id": "run-1",
            "trioflow.workflow_id": "fan-out",
            "trioflow.workflow_version": wf.version,
            "trioflow.step_id": name.removeprefix("trioflow.step "),
            "trioflow.attempt": 1,
            "trioflow.step.status": "success",
        }
    # The parallel steps overlap: both started before either ended.
    left, right = steps["trioflow.step left"], steps["trioflow.step right"]
    assert left.start_time is not None and right.start_time is not None
    assert left.end_time is not None and right.end_time is not None
    assert max(left.start_time, right.start_time) < min(left.end_time, right.end_time)


async def test_a_step_span_is_the_parent_of_spans_made_inside_the_step(otel: Otel) -> None:
    async def inner(ctx: trioflow.StepContext[Any]) -> None:
        with otel.tracer.start_as_current_span("work inside"):
            await trio.lowlevel.checkpoint()

    def in_thread(ctx: trioflow.StepContext[Any]) -> None:
        with otel.tracer.start_as_current_span("work in a thread"):
            pass

    wf = (
        trioflow.create_workflow(id="inner")
        .then(make_step("async-step", inner))
        .then(make_step("thread-step", in_thread))
        .commit()
    )
    assert (await (await wf.create_run()).start()).status == "success"
    for work, step in (("work inside", "async-step"), ("work in a thread", "thread-step")):
        (span,) = [s for s in otel.exporter.get_finished_spans() if s.name == work]
        assert span.parent is not None
        assert span.parent.span_id == otel.span(f"trioflow.step {step}").context.span_id


async def test_a_retried_step_has_one_span_per_attempt(otel: Otel, autojump_clock: Any) -> None:
    calls = 0

    async def flaky(ctx: trioflow.StepContext[Any]) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError(f"attempt {calls} failed")
        return "ok"

    wf = (
        trioflow.create_workflow(id="retrying", retry_config=trioflow.RetryConfig(delay=2.0))
        .then(make_step("flaky", flaky, retries=2))
        .commit()
    )
    assert (await (await wf.create_run()).start()).status == "success"
    spans = sorted(otel.spans("trioflow.step "), key=lambda s: attrs(s)["trioflow.attempt"])
    assert [attrs(s)["trioflow.attempt"] for s in spans] == [1, 2, 3]
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [attrs(s)["trioflow.step.status"] for s in spans] == ["failed", "failed", "success"]
    assert attrs(spans[0])["error.type"] == "ConnectionError"
    assert spans[0].status.description == "ConnectionError: attempt 1 failed"
    assert "exception" in events(spans[0])
    run_span = otel.span("trioflow.run retrying")
    retries = [e for e in run_span.events if e.name == "retry"]
    assert [dict(e.attributes or {}) for e in retries] == [
        {"trioflow.step_id": "flaky", "trioflow.attempt": 2, "trioflow.delay": 2.0},
        {"trioflow.step_id": "flaky", "trioflow.attempt": 3, "trioflow.delay": 2.0},
    ]


async def test_a_canceled_run_has_the_cancel_event_and_its_interrupted_step_span_ended(
    otel: Otel, autojump_clock: Any
) -> None:
    started = trio.Event()

    async def blocked(ctx: trioflow.StepContext[Any]) -> None:
        started.set()
        await trio.sleep_forever()

    wf = (
        trioflow.create_workflow(id="stopping")
        .then(make_step("blocked", blocked))
        .then(make_step("never"))
        .commit()
    )
    run = await wf.create_run()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await started.wait()
        assert otel.spans() == []  # nothing has ended yet
        await run.cancel("enough")
    run_span = otel.span("trioflow.run stopping")
    (cancel,) = [e for e in run_span.events if e.name == "cancel"]
    assert dict(cancel.attributes or {}) == {"trioflow.cancel.reason": "enough"}
    assert attrs(run_span)["trioflow.run.status"] == "canceled"
    assert run_span.status.status_code == StatusCode.UNSET  # a cancel is not an error
    (step,) = otel.spans("trioflow.step ")  # the step that never started has no span
    assert step.name == "trioflow.step blocked"
    assert step.end_time is not None
    assert attrs(step)["trioflow.step.status"] == "canceled"


async def test_a_failed_run_has_the_error_status(otel: Otel) -> None:
    async def broken(ctx: trioflow.StepContext[Any]) -> None:
        raise ValueError("bad input")

    wf = trioflow.create_workflow(id="failing").then(make_step("broken", broken)).commit()
    result = await (await wf.create_run()).start()
    assert result.status == "failed"
    run_span = otel.span("trioflow.run failing")
    assert run_span.status.status_code == StatusCode.ERROR
    assert run_span.status.description == "ValueError: bad input"
    assert attrs(run_span)["error.type"] == "ValueError"
    assert attrs(run_span)["trioflow.run.status"] == "failed"
    step = otel.span("trioflow.step broken")
    assert step.status.status_code == StatusCode.ERROR
    (exception,) = [e for e in step.events if e.name == "exception"]
    assert dict(exception.attributes or {})["exception.type"] == "ValueError"


class Approval(msgspec.Struct):
    approved: bool


async def ask(ctx: trioflow.StepContext[Any]) -> Any:
    if ctx.resume_data is None:
        ctx.suspend({"question": "ok?"})
    return ctx.resume_data.approved


approval = (
    trioflow.create_workflow(id="approval")
    .then(make_step("prepare"))
    .then(make_step("ask", ask, resume_schema=Approval))
    .commit()
)


async def test_a_run_suspended_in_one_engine_and_resumed_by_another_is_one_trace(
    otel: Otel, storage_factory: Any
) -> None:
    """The trace context of the first execution is stored with the run: the engine that
    resumes it (another storage instance, as another process would have) continues it."""
    with otel.tracer.start_as_current_span("caller") as caller:
        async with trioflow.open_engine(storage=storage_factory(), workflows=[approval]) as first:
            run = await first.create_run("approval", run_id="r-1")
            assert (await run.start(input_data=1)).status == "suspended"
    async with trioflow.open_engine(storage=storage_factory(), workflows=[approval]) as second:
        again = await second.get_run("r-1")
        result = await again.resume(step="ask", resume_data={"approved": True})
    assert result.status == "success" and result.result is True
    one, two = sorted(otel.spans("trioflow.run "), key=lambda s: s.start_time or 0)
    trace_id = caller.get_span_context().trace_id
    assert {one.context.trace_id, two.context.trace_id} == {trace_id}
    assert one.parent is not None and one.parent.span_id == caller.get_span_context().span_id
    assert two.parent is not None and two.parent.span_id == one.context.span_id
    (suspend,) = [e for e in one.events if e.name == "suspend"]
    assert dict(suspend.attributes or {}) == {"trioflow.suspended": ("ask",)}
    assert attrs(one)["trioflow.run.status"] == "suspended"
    (resume,) = [e for e in two.events if e.name == "resume"]
    assert dict(resume.attributes or {}) == {"trioflow.step_id": "ask"}
    assert attrs(two)["trioflow.run.status"] == "success"
    asks = [s for s in otel.spans("trioflow.step ask")]
    assert [attrs(s)["trioflow.step.status"] for s in asks] == ["suspended", "success"]
    assert all(s.context.trace_id == trace_id for s in otel.spans())


async def test_a_recovered_run_continues_its_trace_with_a_takeover_event(
    otel: Otel, tmp_path: Any, autojump_clock: Any
) -> None:
    started = trio.Event()

    async def slow(ctx: trioflow.StepContext[Any]) -> str:
        started.set()
        await trio.sleep(5)
        return "done"

    wf = trioflow.create_workflow(id="recovering").then(make_step("slow", slow)).commit()
    path = tmp_path / "runs.db"
    with trio.CancelScope() as scope:  # the process "dies": the run stays as stored
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(path),
            workflows=[wf],
            lease_seconds=2.0,
            poll_interval=0.5,
        ) as first:
            run = await first.create_run("recovering", run_id="r-2")
            await run.start_soon()
            await started.wait()
            scope.cancel()
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[wf], lease_seconds=2.0, poll_interval=0.5
    ) as second:
        result = await (await second.get_run("r-2")).result()
    assert result.status == "success"
    one, two = sorted(otel.spans("trioflow.run "), key=lambda s: s.start_time or 0)
    assert "trioflow.run.status" not in attrs(one)  # interrupted from outside: no outcome
    assert two.context.trace_id == one.context.trace_id
    assert two.parent is not None and two.parent.span_id == one.context.span_id
    assert "takeover" in events(two)


# --- metrics --------------------------------------------------------------------------


async def test_metrics_count_runs_by_status_and_time_step_attempts(
    otel: Otel, autojump_clock: Any
) -> None:
    async def broken(ctx: trioflow.StepContext[Any]) -> None:
        await trio.sleep(0.5)
        raise KeyError("x")

    good = trioflow.create_workflow(id="good").then(make_step("a")).then(make_step("b")).commit()
    bad = trioflow.create_workflow(id="bad").then(make_step("broken", broken)).commit()
    for wf in (good, good, bad):
        await (await wf.create_run()).start()
    runs = {
        (p.attributes["trioflow.workflow_id"], p.attributes["trioflow.run.status"]): p.value
        for p in otel.metric_points("trioflow.runs")
    }
    assert runs == {("good", "success"): 2, ("bad", "failed"): 1}
    durations = {
        (p.attributes["trioflow.step_id"], p.attributes["trioflow.step.status"]): (p.count, p.sum)
        for p in otel.metric_points("trioflow.step.duration")
    }
    assert durations == {
        ("a", "success"): (2, 2.0),  # seconds of Trio's clock
        ("b", "success"): (2, 2.0),
        ("broken", "failed"): (1, 0.5),
    }
    (failed,) = [
        p for p in otel.metric_points("trioflow.step.duration") if "error.type" in p.attributes
    ]
    assert failed.attributes["error.type"] == "KeyError"


# --- ctx.logger -----------------------------------------------------------------------


async def test_ctx_logger_records_carry_the_run_step_and_attempt(
    caplog: pytest.LogCaptureFixture, tmp_path: Any
) -> None:
    calls = 0

    async def chatty(ctx: trioflow.StepContext[Any]) -> str:
        nonlocal calls
        calls += 1
        ctx.logger.debug("not kept: below INFO")
        ctx.logger.info("working on %s", ctx.input_data, extra={"mine": 1})
        if calls == 1:
            ctx.logger.warning("trying again")
            raise ConnectionError("flaky")
        return "ok"

    wf = trioflow.create_workflow(id="chatty").then(make_step("talk", chatty, retries=1)).commit()
    caplog.set_level(logging.DEBUG, logger="trioflow.steps")
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "r.db"), workflows=[wf]
    ) as e:
        run = await e.create_run(wf, run_id="c-1")
        assert (await run.start(input_data="x")).status == "success"
        stored = await e.storage.read_logs("c-1")
    records = [r for r in caplog.records if r.name == "trioflow.steps"]
    assert [(r.levelname, r.getMessage(), r.attempt) for r in records] == [  # type: ignore[attr-defined]
        ("DEBUG", "not kept: below INFO", 1),
        ("INFO", "working on x", 1),
        ("WARNING", "trying again", 1),
        ("DEBUG", "not kept: below INFO", 2),
        ("INFO", "working on x", 2),
    ]
    assert {(r.run_id, r.step_id) for r in records} == {("c-1", "talk")}  # type: ignore[attr-defined]
    assert records[1].mine == 1  # type: ignore[attr-defined]
    assert records[1].filename == "test_observability.py"  # the caller, not the adapter
    assert [(e.seq, e.level, e.message, e.step_id, e.attempt) for e in stored] == [
        (0, "INFO", "working on x", "talk", 1),
        (1, "WARNING", "trying again", "talk", 1),
        (2, "INFO", "working on x", "talk", 2),
    ]


async def test_stored_logs_are_bounded_with_a_marker_saying_how_many_were_dropped(
    tmp_path: Any,
) -> None:
    async def flood(ctx: trioflow.StepContext[Any]) -> int:
        for i in range(ctx.input_data):
            ctx.logger.info("line %d", i)
        return ctx.input_data

    wf = (
        trioflow.create_workflow(id="flood")
        .then(make_step("one", flood))
        .then(make_step("two", flood))
        .commit()
    )
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "r.db"), workflows=[wf]
    ) as e:
        run = await e.create_run(wf, run_id="f-1")
        assert (await run.start(input_data=700)).status == "success"
        stored = await e.storage.read_logs("f-1")
        later = await e.storage.read_logs("f-1", after=1300)
    assert len(stored) == 1 + _logs.STORED_LOGS
    marker, first, *_, last = stored
    assert marker.message == "400 earlier log records were dropped (a run keeps its last 1000)"
    assert marker.level == "WARNING"
    assert (first.seq, first.step_id, first.message) == (400, "one", "line 400")
    assert (last.seq, last.step_id, last.message) == (1399, "two", "line 699")
    assert [e.seq for e in later] == list(range(1301, 1400))  # nothing dropped after 1300


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
async def test_storages_number_keep_and_drop_log_records_alike(
    kind: str, tmp_path: Any, request: pytest.FixtureRequest
) -> None:
    if kind == "memory":
        storage: trioflow.Storage = trioflow.MemoryStorage()
    elif kind == "sqlite":
        storage = trioflow.SQLiteStorage(tmp_path / "r.db")
    else:
        storage = trioflow.PostgresStorage(request.getfixturevalue("postgres_dsn"))

    def logs(n: int, start: int = 0) -> list[_logs.NewLog]:
        return [_logs.NewLog(float(i), "INFO", f"m{i}", "s", 1) for i in range(start, start + n)]

    async with storage:
        assert await storage.read_logs("none") == []
        await storage.append_logs("r", logs(3))
        await storage.append_logs("r", logs(2, 3), skipped=5)  # 5 lost before storing
        entries = await storage.read_logs("r")
        assert [(e.seq, e.message) for e in entries] == [
            (0, "m0"),
            (1, "m1"),
            (2, "m2"),
            (8, "m3"),
            (9, "m4"),
        ]
        await storage.append_logs("r", logs(_logs.STORED_LOGS))
        entries = await storage.read_logs("r")
        assert entries[0].message.startswith("10 earlier log records were dropped")
        assert [e.seq for e in entries[1:]] == list(range(10, 1010))
        assert [e.seq for e in await storage.read_logs("r", after=1007)] == [1008, 1009]
        # The trace context: the first one kept stays.
        assert await storage.load_trace_context("r") is None
        await storage.store_trace_context("r", {"traceparent": "00-a-b-01"})
        await storage.store_trace_context("r", {"traceparent": "00-c-d-01", "tracestate": "x=1"})
        assert await storage.load_trace_context("r") == {"traceparent": "00-a-b-01"}


# --- tracebacks -----------------------------------------------------------------------


def fail_deep(value: int) -> None:
    raise ValueError(f"value {value} is not allowed")


async def test_a_failed_step_stores_its_traceback_bounded(tmp_path: Any) -> None:
    async def deep(ctx: trioflow.StepContext[Any]) -> None:
        fail_deep(ctx.input_data)

    wf = trioflow.create_workflow(id="tb").then(make_step("deep", deep)).commit()
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "r.db"), workflows=[wf]
    ) as e:
        run = await e.create_run(wf, run_id="t-1")
        assert (await run.start(input_data=7)).status == "failed"
        row = await e.storage.load("t-1")
        loaded = await e.get_run("t-1")
    snapshot = _journal.of_row(row)
    error = snapshot.steps["deep"].error
    assert error is not None and error.traceback is not None
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "in fail_deep" in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: value 7 is not allowed")
    assert snapshot.error is not None and snapshot.error.traceback == error.traceback
    # A run loaded elsewhere keeps it (and stores it again unchanged).
    step_error = loaded.result_nowait().steps["deep"].error
    assert getattr(step_error, "traceback", None) == error.traceback

    huge = ValueError("x" * 20_000)
    try:
        raise huge
    except ValueError:
        pass
    text = _snapshot.traceback_text(huge)
    assert text is not None and len(text) < _snapshot.TRACEBACK_LIMIT + 100
    assert text.startswith("[") and text.endswith("x\n")
    assert _snapshot.traceback_text(ValueError("never raised")) is None


def test_a_snapshot_of_an_older_trioflow_without_tracebacks_is_read() -> None:
    old = (
        b'{"version":1,"run_id":"o","workflow_id":"w","status":"failed",'
        b'"error":{"type":"ValueError","message":"m","step_id":"s"},'
        b'"steps":{"s":{"status":"failed","error":{"type":"ValueError","message":"m"}}}}'
    )
    snapshot = _snapshot.decode("o", old)
    assert snapshot.error is not None and snapshot.error.traceback is None


# --- the documented program -----------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "observability.md"

# Stand-ins for opentelemetry-exporter-otlp-proto-http (not a test dependency): the same
# module paths and constructor, recording what the SDK hands them in a JSON-lines file.
STUB_TRACE_EXPORTER = """
import json, os
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

class OTLPSpanExporter(SpanExporter):
    def __init__(self, endpoint=None, **kwargs):
        self.endpoint = endpoint

    def export(self, spans):
        with open(os.environ["STUB_OUT"], "a") as out:
            for span in spans:
                parent = span.parent.span_id if span.parent else None
                out.write(json.dumps({"endpoint": self.endpoint, "span": span.name,
                                      "trace": span.context.trace_id, "id": span.context.span_id,
                                      "parent": parent, "events": [e.name for e in span.events],
                                      "status": span.status.status_code.name}) + "\\n")
        return SpanExportResult.SUCCESS
"""
STUB_METRIC_EXPORTER = """
import json, os
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult

class OTLPMetricExporter(MetricExporter):
    def __init__(self, endpoint=None, **kwargs):
        super().__init__()
        self.endpoint = endpoint

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        with open(os.environ["STUB_OUT"], "a") as out:
            for resource in metrics_data.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        out.write(json.dumps({"endpoint": self.endpoint,
                                              "metric": metric.name}) + "\\n")
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass
"""


@pytest.mark.slow
def test_the_documented_otlp_program_exports_the_run_trace(tmp_path: Path) -> None:
    (block,) = [b.code for b in parse_page(DOCS.read_text()) if "OTLPSpanExporter" in b.code]
    (tmp_path / "traced_orders.py").write_text(block)
    stubs = tmp_path / "stubs" / "opentelemetry" / "exporter" / "otlp" / "proto" / "http"
    stubs.mkdir(parents=True)
    (stubs / "__init__.py").write_text("")
    (stubs / "trace_exporter.py").write_text(STUB_TRACE_EXPORTER)
    (stubs / "metric_exporter.py").write_text(STUB_METRIC_EXPORTER)
    out = tmp_path / "exported.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "stubs"), os.environ.get("PYTHONPATH", "")]),
        "STUB_OUT": str(out),
        "OTLP_ENDPOINT": "http://collector:4318",
    }
    done = subprocess.run(
        [sys.executable, "traced_orders.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("run ") and ": success; trace " in done.stdout
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    spans = {e["span"]: e for e in exported if "span" in e}
    by_name = [e["span"] for e in exported if "span" in e]
    assert by_name.count("trioflow.step reserve-stock") == 2
    assert {"trioflow.run orders", "trioflow.step charge", "trioflow.step notify"} <= set(spans)
    request, run = spans["handle order request"], spans["trioflow.run orders"]
    assert run["parent"] == request["id"] and run["trace"] == request["trace"]
    assert done.stdout.rstrip().endswith(format(request["trace"], "032x"))
    assert "retry" in run["events"]
    assert {e["endpoint"] for e in exported if "span" in e} == {"http://collector:4318/v1/traces"}
    metric_names = {e["metric"] for e in exported if "metric" in e}
    assert {"trioflow.runs", "trioflow.step.duration"} <= metric_names
    assert {e["endpoint"] for e in exported if "metric" in e} == {
        "http://collector:4318/v1/metrics"
    }


async def test_the_workflow_version_is_an_attribute(otel: Otel, autojump_clock: Any) -> None:
    wf = trioflow.create_workflow(id="orders", version="2").then(make_step("a")).commit()
    run = await wf.create_run()
    assert (await run.start(input_data=1)).status == "success"
    spans = otel.spans()
    assert spans
    for span in spans:
        assert attrs(span)["trioflow.workflow_version"] == "2"


def test_pending_logs_are_bounded_before_they_are_stored() -> None:
    pending = _logs.PendingLogs()
    assert not pending
    for i in range(_logs.STORED_LOGS + 5):
        pending.add(_logs.NewLog(0.0, "INFO", f"m{i}", "s", 1))
    entries, skipped = pending.take()
    assert (len(entries), skipped, entries[0].message) == (_logs.STORED_LOGS, 5, "m5")
    assert not pending
    pending.add(_logs.NewLog(0.0, "INFO", "newer", "s", 1))
    pending.put_back(entries[-2:], 3)  # a failed write: kept, before the newer record
    entries, skipped = pending.take()
    assert [e.message for e in entries] == [f"m{_logs.STORED_LOGS + 3}", "m1004", "newer"]
    assert skipped == 3


def test_a_reader_is_told_only_of_the_dropped_records_it_had_not_seen() -> None:
    entries = [_logs.LogEntry(seq=s, time=0.0, level="INFO", message="m") for s in (10, 11)]
    (marker, *_) = _logs.with_drop_marker(entries, after=5)
    assert marker.seq == 9 and marker.message.startswith("4 earlier log records were dropped")
    assert _logs.with_drop_marker(entries, after=9) == entries
    assert _logs.bounded("abcdef", 4) == "[2 characters dropped]\ncdef"


async def test_a_trace_context_that_cannot_be_stored_costs_only_the_continuity(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FaultyStorage(trioflow.MemoryStorage())
    storage.fail("store_trace_context", times=None)
    async with trioflow.open_engine(storage=storage, workflows=[approval]) as engine:
        run = await engine.create_run("approval", run_id="s-1")
        assert (await run.start(input_data=1)).status == "suspended"
    assert "the trace context of a run could not be read or stored" in caplog.text
    assert otel.span("trioflow.run approval").end_time is not None
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing left current here


async def test_a_broken_trace_store_leaves_no_span_open_or_current(otel: Otel) -> None:
    class Broken(trioflow.MemoryStorage):
        async def store_trace_context(self, run_id: str, carrier: dict[str, str]) -> None:
            raise RuntimeError("a bug in a storage")

    async with trioflow.open_engine(storage=Broken(), workflows=[approval]) as engine:
        run = await engine.create_run("approval", run_id="b-1")
        with pytest.raises(RuntimeError, match="a bug in a storage"):
            await run.start(input_data=1)
        assert trace.get_current_span() is trace.INVALID_SPAN
    assert otel.span("trioflow.run approval").end_time is not None
