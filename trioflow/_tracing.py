"""OpenTelemetry traces and metrics of runs, through ``opentelemetry-api`` only.

Installed with ``trioflow[otel]``; the program configures the SDK (a tracer provider, a
meter provider, exporters) as for any other library. Each execution of a run (a start, a
resume, a recovery) is a span ``trioflow.run <workflow id>`` and each step attempt a child
span ``trioflow.step <step id>``; cancel, suspend, resume, retry and takeover are events
of the run's span. The W3C trace context of a run's first execution is kept with the run
(``Storage.store_trace_context``), and later executions, in any process, are its
children: one trace per run. Metrics: the counter ``trioflow.runs`` (executions by the
status they ended in) and the histogram ``trioflow.step.duration`` (seconds of Trio's
clock per step attempt).

Free when not in use: `instruments()` decides once per execution, and returns None
when the API is not installed or neither provider is configured (the API's proxy and
no-op providers); the executor's hooks then cost one ``is None`` test per step. Rejected:
always going through the API and letting its default provider make no-op spans, which
costs about 1 µs per span, some 10% of a trivial step.

Durations come from Trio's clock (so MockClock tests see exact figures); span
timestamps are the SDK's own.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable
from types import TracebackType
from typing import Any

import trio

from ._errors import AbortError, StorageError
from ._step import Bail, Suspend

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import _internal as metrics_globals
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # trioflow[otel] not installed: tracing is off
    otel_context = metrics = metrics_globals = trace = None  # type: ignore[assignment]

# `get_tracer_provider()` and `get_meter_provider()` cost about 1 µs each (an environment
# lookup), 3% of a 3-step run. So the usual answer, "the program set neither", is read from
# the API's own globals, where `set_tracer_provider()` and `set_meter_provider()` put
# them; the public calls decide the rest. Not when a provider comes from the environment
# (OTEL_PYTHON_*_PROVIDER: the API loads it on its first get), nor if a later API moves
# its globals.
_UNSET_READABLE = (
    trace is not None
    and hasattr(trace, "_TRACER_PROVIDER")
    and hasattr(metrics_globals, "_METER_PROVIDER")
    and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
    and "OTEL_PYTHON_METER_PROVIDER" not in os.environ
)

logger = logging.getLogger("trioflow")

RUN_ID = "trioflow.run_id"
WORKFLOW_ID = "trioflow.workflow_id"
WORKFLOW_VERSION = "trioflow.workflow_version"
STEP_ID = "trioflow.step_id"
ATTEMPT = "trioflow.attempt"  # 1 for a step's first attempt
RUN_STATUS = "trioflow.run.status"
CANCEL_REASON = "trioflow.cancel.reason"
SUSPENDED = "trioflow.suspended"  # the suspended steps' paths
STEP_STATUS = "trioflow.step.status"
ERROR_TYPE = "error.type"  # OpenTelemetry's semantic convention for a failure's class


class Instruments:
    """The tracer and metric instruments of the configured providers (either may be None)."""

    __slots__ = ("providers", "runs", "step_duration", "tracer")

    def __init__(self, tracer_provider: Any, meter_provider: Any) -> None:
        self.providers = (tracer_provider, meter_provider)
        try:  # the instrumentation scope: this library and its version
            version: str | None = importlib.metadata.version("trioflow")
        except importlib.metadata.PackageNotFoundError:
            version = None
        self.tracer = (
            None if tracer_provider is None else tracer_provider.get_tracer("trioflow", version)
        )
        self.runs: Any = None
        self.step_duration: Any = None
        if meter_provider is not None:
            meter = meter_provider.get_meter("trioflow", version)
            self.runs = meter.create_counter(
                "trioflow.runs", unit="{execution}", description="Executions of runs, by status"
            )
            self.step_duration = meter.create_histogram(
                "trioflow.step.duration", unit="s", description="Duration of step attempts"
            )


_cached: Instruments | None = None


def instruments() -> Instruments | None:
    """The instruments to use for one execution, or None when tracing is off."""
    global _cached
    if trace is None:
        return None
    if (
        _UNSET_READABLE
        and trace._TRACER_PROVIDER is None
        and metrics_globals._METER_PROVIDER is None
    ):
        return None
    tracer_provider: Any = trace.get_tracer_provider()
    if isinstance(tracer_provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        tracer_provider = None
    meter_provider: Any = metrics.get_meter_provider()
    # The API's stand-in before the program sets a provider is a private class.
    if isinstance(meter_provider, metrics.NoOpMeterProvider) or (
        type(meter_provider).__name__ == "_ProxyMeterProvider"
    ):
        meter_provider = None
    if tracer_provider is None and meter_provider is None:
        return None
    cached = _cached
    if cached is None or cached.providers != (tracer_provider, meter_provider):
        cached = _cached = Instruments(tracer_provider, meter_provider)
    return cached


def _carrier_of(span: Any) -> dict[str, str]:
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier


class Execution:
    """The trace of one execution of a run: its span (current while it runs) and the
    hooks the executor calls. Made by `open_execution`, ended by `end`."""

    __slots__ = (
        "_base",
        "_cancel_seen",
        "_instruments",
        "_metric_base",
        "_span",
        "_token",
        "carrier",
    )

    def __init__(
        self,
        instruments: Instruments,
        *,
        run_id: str,
        workflow_id: str,
        workflow_version: str | None,
        parent: dict[str, str] | None,
    ) -> None:
        self._instruments = instruments
        base: dict[str, Any] = {RUN_ID: run_id, WORKFLOW_ID: workflow_id}
        if workflow_version is not None:
            base[WORKFLOW_VERSION] = workflow_version
        self._base = base
        self._metric_base: dict[str, Any] = {WORKFLOW_ID: workflow_id}
        self._span: Any = None
        self._token: Any = None
        self._cancel_seen = False
        self.carrier = parent  # the trace context to keep with the run
        tracer = instruments.tracer
        if tracer is not None:
            # The first execution's parent is the caller's context (the current one);
            # later ones continue the first's trace, wherever it ran.
            context = None if parent is None else TraceContextTextMapPropagator().extract(parent)
            self._span = tracer.start_span(
                f"trioflow.run {workflow_id}", context=context, attributes=base
            )
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
            if parent is None:
                self.carrier = _carrier_of(self._span)

    def event(self, name: str, **attributes: Any) -> None:
        """Add an event (cancel, suspend, resume, retry, takeover) to the run's span."""
        self._cancel_seen = self._cancel_seen or name == "cancel"
        if self._span is not None:
            self._span.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    def step(self, step_id: str, attempt: int) -> StepSpan:
        """``with execution.step(path, attempt):`` around one attempt of a step."""
        return StepSpan(self, step_id, attempt)

    def end(
        self, status: str, error: BaseException | None, suspended: list[str], *, ended: bool
    ) -> None:
        """The execution is over: `ended` when it recorded `status` (else it was
        interrupted from outside and the run stays as last stored)."""
        span = self._span
        if span is not None:
            if self._token is not None:
                otel_context.detach(self._token)
                self._token = None
            if ended and status == "suspended":
                span.add_event("suspend", {SUSPENDED: list(suspended)})
            elif ended and status == "canceled" and not self._cancel_seen:
                span.add_event("cancel")  # asked before this execution began
            if ended:
                span.set_attribute(RUN_STATUS, status)
            if ended and status == "failed" and error is not None:
                kind = getattr(error, "type_name", None) or type(error).__qualname__
                span.set_attribute(ERROR_TYPE, kind)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{kind}: {error}"))
            span.end()
        counter = self._instruments.runs
        if counter is not None and ended:
            counter.add(1, {**self._metric_base, RUN_STATUS: status})


class StepSpan:
    """One step attempt: a child span of the run's (current within the step, so the
    step's own spans are its children), and its duration in the histogram."""

    __slots__ = ("_execution", "_span", "_started", "_step_id", "_token", "attempt")

    def __init__(self, execution: Execution, step_id: str, attempt: int) -> None:
        self._execution = execution
        self._step_id = step_id
        self.attempt = attempt
        self._span: Any = None
        self._token: Any = None
        self._started = 0.0

    def __enter__(self) -> StepSpan:
        execution = self._execution
        tracer = execution._instruments.tracer
        if tracer is not None:
            self._span = tracer.start_span(
                f"trioflow.step {self._step_id}",
                attributes={**execution._base, STEP_ID: self._step_id, ATTEMPT: self.attempt},
            )
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._started = trio.current_time()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Never swallows: trio.Cancelled and the rest go on as they came.
        status = _step_status(exc)
        execution = self._execution
        histogram = execution._instruments.step_duration
        if histogram is not None:
            attributes = {**execution._metric_base, STEP_ID: self._step_id, STEP_STATUS: status}
            if status == "failed":
                attributes[ERROR_TYPE] = type(exc).__qualname__
            histogram.record(trio.current_time() - self._started, attributes)
        span = self._span
        if span is None:
            return
        otel_context.detach(self._token)
        span.set_attribute(STEP_STATUS, status)
        if status == "failed":
            assert exc is not None
            span.record_exception(exc)
            span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
            span.set_status(
                trace.Status(trace.StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}")
            )
        elif status == "suspended":
            span.add_event("suspend")
        span.end()


def _step_status(exc: BaseException | None) -> str:
    if exc is None or isinstance(exc, Bail):
        return "success"
    if isinstance(exc, Suspend):
        return "suspended"
    if isinstance(exc, trio.Cancelled | AbortError):
        return "canceled"
    return "failed"


async def open_execution(
    instruments: Instruments,
    *,
    run_id: str,
    workflow: Any,
    carrier: dict[str, str] | None,
    load: Callable[[], Any] | None,
    store: Callable[[dict[str, str]], Any] | None,
) -> Execution:
    """Begin the trace of one execution. `carrier` is the run's trace context if this
    process knows it; else `load` (a durable run) looks for the stored one, and `store`
    keeps the context of a first execution. Storage trouble costs the trace its
    continuity, never the run its execution."""
    if carrier is None and load is not None:
        carrier = await _quietly(load)
    execution = Execution(
        instruments,
        run_id=run_id,
        workflow_id=workflow.id,
        workflow_version=workflow.version,
        parent=carrier,
    )
    if carrier is None and store is not None and execution.carrier is not None:
        try:
            # Shielded (storage bounds it in real time): once its span is current, the
            # execution's trace must reach the caller, which ends it.
            with trio.CancelScope(shield=True):
                await _quietly(lambda: store(execution.carrier))  # type: ignore[arg-type]
        except BaseException:
            execution.end("running", None, [], ended=False)  # a bug: no span left open
            raise
    return execution


async def _quietly(call: Callable[[], Any]) -> Any:
    try:
        return await call()
    except StorageError:
        logger.warning(
            "the trace context of a run could not be read or stored; its spans start a new trace",
            exc_info=True,
        )
        return None
