"""The bodies of the HTTP API as msgspec Structs: requests are decoded with them (an
unknown field or a wrong type is a 422 naming it), responses encoded from them, and the
OpenAPI document's schemas generated from these same types."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .._logs import LogEntry
from .._results import RunStatus, StepStatus
from ..storage import RunSummary

# --- requests -------------------------------------------------------------------------


class StartRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Start a run: its input (validated by the workflow's input schema) and, optionally,
    its id (a run of this id that exists already is a 409)."""

    input_data: Any = None
    run_id: str | None = None
    #: the workflow version to run (default: the last one the engine was given)
    version: str | None = None


class ForkRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Run a run again from a step, as a new run that keeps the records of the steps
    that ended before it started (the original is not changed)."""

    from_step: str
    new_run_id: str | None = None


class CancelRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Cancel a run: why, and how many seconds its steps get to stop by themselves
    after its abort signal fires."""

    reason: str | None = None
    grace_period: float = msgspec.field(default=0.0)


class ResumeRun(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Resume a suspended run: which step (an id, a dotted path or a list of ids; may be
    left out when only one step is suspended) and its resume data."""

    step: str | list[str] | None = None
    resume_data: Any = None


class SendEvent(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The data of an event for a ``.wait_for_event(name, step)`` (validated by that
    step's resume schema)."""

    data: Any = None


# --- responses ------------------------------------------------------------------------


class ErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    message: str


class Error(msgspec.Struct, kw_only=True):
    error: ErrorDetail


class StepView(msgspec.Struct, kw_only=True):
    """One step's record; times are wall-clock seconds since the epoch."""

    path: str
    status: StepStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    #: the failed step's formatted traceback (its end), where there was one
    traceback: str | None = None
    suspend_payload: Any = None
    resume_payload: Any = None
    started_at: float | None = None
    ended_at: float | None = None


class RunDetail(msgspec.Struct, kw_only=True):
    """A run as it stands: its steps in the order they started."""

    run_id: str
    workflow_id: str
    status: RunStatus
    cancel_requested: bool
    cancel_reason: str | None = None
    #: the workflow version the run executes on
    version: str | None = None
    result: Any = None
    error: str | None = None
    suspended: list[str] = []
    steps: list[StepView] = []
    #: the run's last stored log records (``ctx.logger``, INFO and above), oldest first
    logs: list[LogEntry] = []


class RunPage(msgspec.Struct, kw_only=True):
    """A page of run summaries, newest first."""

    runs: list[RunSummary]
    limit: int
    offset: int


class CancelAnswer(msgspec.Struct, kw_only=True):
    message: str
    status: RunStatus


class Deleted(msgspec.Struct, kw_only=True):
    """A finished run, deleted."""

    deleted: str


NodeKind = Literal[
    "step",
    "parallel",
    "branch",
    "dowhile",
    "dountil",
    "foreach",
    "map",
    "sleep",
    "sleep_until",
    "wait_for_event",
]


class StepInfo(msgspec.Struct, kw_only=True):
    """A step (or a nested workflow, ``kind == "workflow"``) and its JSON Schemas
    (``null``: any JSON)."""

    id: str
    kind: Literal["step", "workflow"]
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    resume_schema: dict[str, Any] | None = None
    suspend_schema: dict[str, Any] | None = None


class NodeInfo(msgspec.Struct, kw_only=True):
    """A node of the graph, in order: what it records its results under (`ids`) and
    the steps it runs; `event` names a ``wait_for_event``."""

    kind: NodeKind
    ids: list[str]
    steps: list[StepInfo] = []
    event: str | None = None


class WorkflowInfo(msgspec.Struct, kw_only=True):
    id: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    nodes: list[NodeInfo] = []
    events: dict[str, dict[str, Any] | None] = {}


class WorkflowList(msgspec.Struct, kw_only=True):
    workflows: list[WorkflowInfo]
