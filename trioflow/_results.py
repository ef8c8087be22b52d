"""What a run reports: step results, run results and the answer of `cancel()`."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

RunStatus = Literal["pending", "running", "waiting", "suspended", "success", "failed", "canceled"]
StepStatus = Literal["running", "waiting", "success", "failed", "suspended", "canceled"]
TERMINAL: frozenset[str] = frozenset({"success", "failed", "canceled"})


class StepResult(msgspec.Struct, frozen=True, kw_only=True):
    """One step's record. Timestamps are wall-clock seconds since the epoch."""

    status: StepStatus
    output: Any = None
    payload: Any = None
    error: BaseException | None = None
    suspend_payload: Any = None
    resume_payload: Any = None
    started_at: float | None = None
    ended_at: float | None = None


class RunResult(msgspec.Struct, frozen=True, kw_only=True):
    """How an execution of a run (a `start` or a `resume`) ended."""

    run_id: str
    status: RunStatus
    result: Any = None
    error: BaseException | None = None
    steps: dict[str, StepResult] = {}
    suspended: list[list[str]] = []


class CancelResult(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of `Run.cancel()`."""

    message: str
    status: RunStatus
