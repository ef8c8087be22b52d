"""What the commands print: the live view of a run's steps, and run summaries.

Plain text, one line per step transition, so it reads the same in a terminal, a log
file or a pipe. On a terminal the statuses are coloured (unless ``NO_COLOR`` is set)
and a ``foreach`` progress bar is redrawn in place; elsewhere every progress event is
a line of its own. Text a step writes (``ctx.write("...")``) is printed as it comes, on
one line per stretch of writes of a step, as tokens of a language model would be; other
data a step writes is a line of JSON.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

import trio

from .. import _events as ev
from .._errors import StepFailedError
from .._results import RunResult
from .._snapshot import ErrorRecord, Snapshot
from ._common import json_dumps

_COLORS = {
    "success": "32",
    "failed": "31",
    "canceled": "33",
    "waiting": "36",
    "suspended": "35",
    "started": "1",
    "running": "1",
    "output": "2",
}
STEP_WIDTH = 18
BAR_WIDTH = 20
TEXT_LIMIT = 160


def short_json(value: Any, limit: int = TEXT_LIMIT) -> str:
    text = json_dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def block_json(value: Any) -> str:
    """Compact JSON when it is short, indented when it is not."""
    text = json_dumps(value)
    return text if len(text) <= 100 else json_dumps(value, indent=2)


def local_time(timestamp: float | None, *, date: bool = True) -> str:
    if timestamp is None:
        return "-"
    moment = dt.datetime.fromtimestamp(timestamp)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if date else moment.strftime("%H:%M:%S.%f")[:-3]


def duration(started: float | None, ended: float | None) -> float | None:
    if started is None or ended is None:
        return None
    return max(0.0, ended - started)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def error_text(error: BaseException) -> str:
    if isinstance(error, StepFailedError) and error.type_name:
        return f"{error.type_name}: {error}"
    return f"{type(error).__name__}: {error}"


def bar(completed: int, total: int) -> str:
    filled = BAR_WIDTH if total <= 0 else BAR_WIDTH * completed // total
    return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {completed}/{total}"


class TextView:
    """Lines for a person. Every line is flushed at once: a pipe reads it live."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.tty = self.out.isatty()
        self.color = self.tty and not os.environ.get("NO_COLOR")
        self._bar: tuple[str, str] | None = None  # (step path, text) drawn in place
        self._stream: str | None = None  # the step whose written text ends the last line

    def paint(self, text: str, status: str) -> str:
        code = _COLORS.get(status)
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code else text

    def line(self, text: str = "") -> None:
        self._end_stream()
        if self._bar is not None:
            self.out.write("\r\x1b[K")
        self.out.write(text + "\n")
        if self._bar is not None:
            self.out.write(self._bar[1])
        self.out.flush()

    def step(self, elapsed: float, path: str, status: str, detail: str = "") -> None:
        if self._bar is not None and self._bar[0] == path:
            self.out.write("\r\x1b[K")
            self._bar = None
        label = "started" if status == "running" else status
        word = self.paint(label, label) + " " * (10 - len(label))
        self.line(f"{elapsed:8.2f}s  {path:<{STEP_WIDTH}} {word} {detail}".rstrip())

    def output(self, elapsed: float, path: str, data: Any) -> None:
        """What a step wrote: text goes on as it comes; anything else is a line."""
        if not isinstance(data, str):
            word = self.paint("output", "output") + " " * 4
            self.line(f"{elapsed:8.2f}s  {path:<{STEP_WIDTH}} {word} {short_json(data)}")
            return
        if self._stream != path:
            self._end_stream()
            if self._bar is not None:  # drawn again by the next progress event
                self.out.write("\r\x1b[K")
                self._bar = None
            word = self.paint("output", "output") + " " * 4
            self.out.write(f"{elapsed:8.2f}s  {path:<{STEP_WIDTH}} {word} ")
            self._stream = path
        self.out.write(data)
        self.out.flush()

    def _end_stream(self) -> None:
        """A line of something else ends the stretch of text being written."""
        if self._stream is not None:
            self._stream = None
            self.out.write("\n")

    def progress(self, elapsed: float, path: str, completed: int, total: int) -> None:
        text = f"{elapsed:8.2f}s  {path:<{STEP_WIDTH}} {bar(completed, total)}"
        self._end_stream()
        if not self.tty:
            self.line(text)
            return
        self.out.write("\r\x1b[K" + text)
        if completed >= total:
            self.out.write("\n")
            self._bar = None
        else:
            self._bar = (path, text)
        self.out.flush()

    def summary(self, summary: Summary, *, resume_hint: str | None = None) -> None:
        s = summary
        took = "" if s.elapsed is None else f" in {s.elapsed:.2f}s"
        after = "" if s.elapsed is None else f" after {s.elapsed:.2f}s"
        head = self.paint(s.status, s.status)
        if s.status == "success":
            self.line(f"{head}: run {s.run_id} of {s.workflow_id!r} finished{took}")
            self.line(f"output: {block_json(s.output)}")
        elif s.status == "failed":
            self.line(f"{head}: run {s.run_id} of {s.workflow_id!r} failed{took}")
            if s.error is not None:
                where = f"step {s.error.step_id!r} raised " if s.error.step_id else ""
                self.line(f"error: {where}{s.error.type}: {s.error.message}")
        elif s.status == "canceled":
            self.line(f"{head}: run {s.run_id} of {s.workflow_id!r} was canceled{after}")
            if s.cancel_reason:
                self.line(f"reason: {s.cancel_reason}")
            if s.interrupted:
                self.line(f"interrupted: {', '.join(s.interrupted)}")
            else:
                self.line("interrupted: no step was running")
        elif s.status == "suspended":
            at = ", ".join(repr(p) for p in s.suspended)
            self.line(f"{head}: run {s.run_id} of {s.workflow_id!r} is suspended at {at}")
            for path, payload in s.suspended.items():
                if payload is not None:
                    self.line(f"{path}: {block_json(payload)}")
            if resume_hint:
                self.line("resume it with:")
                self.line(f"  {resume_hint}")
        else:
            self.line(f"{head}: run {s.run_id} of {s.workflow_id!r} is {s.status}")


# --- summaries ---------------------------------------------------------------------------


@dataclass
class ErrorInfo:
    type: str
    message: str
    step_id: str | None = None


@dataclass
class Summary:
    """How a run stands after a command: what the summary line and ``--json`` say."""

    run_id: str
    workflow_id: str
    status: str
    output: Any = None
    error: ErrorInfo | None = None
    interrupted: list[str] = field(default_factory=list)
    suspended: dict[str, Any] = field(default_factory=dict)
    elapsed: float | None = None
    cancel_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "run-summary",
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "status": self.status,
            "output": self.output,
            "error": None if self.error is None else vars(self.error),
            "interrupted": self.interrupted,
            "suspended": self.suspended,
            "elapsed": self.elapsed,
            "cancel_reason": self.cancel_reason,
        }


def _failed_step(statuses: dict[str, tuple[str, float | None]]) -> str | None:
    """The innermost, latest failed step: the one that made the run fail."""
    failed = [
        (p.count("."), ended or 0.0, p) for p, (s, ended) in statuses.items() if s == "failed"
    ]
    return max(failed)[2] if failed else None


def summary_from_result(
    result: RunResult, workflow_id: str, elapsed: float | None, cancel_reason: str | None
) -> Summary:
    steps = result.steps
    error = None
    if result.error is not None:
        failed = _failed_step({p: (r.status, r.ended_at) for p, r in steps.items()})
        text = error_text(result.error)
        kind, _, message = text.partition(": ")
        error = ErrorInfo(type=kind, message=message, step_id=failed)
    suspended = {".".join(p): None for p in result.suspended}
    for path in suspended:
        record = steps.get(path)
        suspended[path] = None if record is None else record.suspend_payload
    return Summary(
        run_id=result.run_id,
        workflow_id=workflow_id,
        status=result.status,
        output=result.result,
        error=error,
        interrupted=[p for p, r in steps.items() if r.status == "canceled"],
        suspended=suspended,
        elapsed=elapsed,
        cancel_reason=cancel_reason if result.status == "canceled" else None,
    )


def summary_from_snapshot(snapshot: Snapshot, elapsed: float | None = None) -> Summary:
    steps = snapshot.steps
    error = None
    if snapshot.error is not None:
        record: ErrorRecord = snapshot.error
        failed = _failed_step({p: (r.status, r.ended_at) for p, r in steps.items()})
        error = ErrorInfo(type=record.type, message=record.message, step_id=failed)
        if error.step_id is None:
            error.step_id = record.step_id
    return Summary(
        run_id=snapshot.run_id,
        workflow_id=snapshot.workflow_id,
        status=snapshot.status,
        output=snapshot.result,
        error=error,
        interrupted=[p for p, r in steps.items() if r.status == "canceled"],
        suspended={p: steps[p].suspend_payload if p in steps else None for p in snapshot.suspended},
        elapsed=elapsed,
        cancel_reason=snapshot.cancel_reason if snapshot.status == "canceled" else None,
    )


# --- the live view of a run executing here -----------------------------------------------


class EventRenderer:
    """Turns a run's watch events into lines of a `TextView`, timing each step."""

    def __init__(self, view: TextView) -> None:
        self.view = view
        self.t0 = trio.current_time()
        self._starts: dict[str, float] = {}
        self.cancel_reason: str | None = None

    def elapsed(self) -> float:
        return trio.current_time() - self.t0

    def handle(self, event: ev.WorkflowEvent) -> None:
        now = self.elapsed()
        view = self.view
        if isinstance(event, ev.WorkflowStepStart | ev.WorkflowStepWaiting):
            self._starts[event.step_id] = now
            view.step(now, event.step_id, event.status)
        elif isinstance(event, ev.WorkflowStepResult):
            took = now - self._starts.pop(event.step_id, now)
            detail = seconds(took)
            if event.status == "failed" and event.error:
                detail += f"  {event.error}"
            elif event.status == "canceled":
                detail += "  interrupted"
            view.step(now, event.step_id, event.status, detail)
        elif isinstance(event, ev.WorkflowStepSuspended):
            took = now - self._starts.pop(event.step_id, now)
            payload = "" if event.payload is None else f"  {short_json(event.payload)}"
            view.step(now, event.step_id, "suspended", seconds(took) + payload)
        elif isinstance(event, ev.WorkflowStepProgress):
            view.progress(now, event.step_id, event.completed, event.total)
        elif isinstance(event, ev.WorkflowStepOutput):
            view.output(now, event.step_id, event.data)
        elif isinstance(event, ev.WatchOverflow):
            view.line(f"({event.lost} events not shown: the view fell behind the run)")
        elif isinstance(event, ev.WorkflowCanceled):
            self.cancel_reason = event.reason
