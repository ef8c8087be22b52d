"""The stored form of a run: a versioned msgspec snapshot, never pickle.

A snapshot is the truth of a run; a run rebuilt from it in another process behaves as the
original would. Records follow msgspec's schema-evolution rules: new fields get defaults,
field types never change, unknown fields are ignored (a newer trioflow may add some).
"""

from __future__ import annotations

import traceback
from typing import Any

import msgspec

from ._errors import AbortError, SnapshotError, StepFailedError, UnstorableDataError
from ._logs import bounded
from ._results import RunStatus, StepResult, StepStatus

SNAPSHOT_VERSION = 1


class ErrorRecord(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    message: str
    step_id: str | None = None
    # The formatted traceback (its last TRACEBACK_LIMIT characters), where there was one.
    traceback: str | None = None


TRACEBACK_LIMIT = 8192


class StepRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    status: StepStatus
    output: Any = None
    payload: Any = None
    error: ErrorRecord | None = None
    suspend_payload: Any = None
    resume_payload: Any = None
    started_at: float | None = None
    ended_at: float | None = None


class OutputRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A stored ``workflow-step-output`` (``create_step(..., store_output_events=True)``).
    `seq` counts the run's stored outputs from 0 and keeps counting when old ones are
    dropped, so a follower knows which it has already shown."""

    seq: int
    step_id: str
    data: Any = None
    at: float | None = None  # wall-clock time of the write


# The stored outputs of a run are bounded: the newest ones are kept. (Each is written
# once, but a loaded run holds them all, and a chatty step writes without end.)
STORED_OUTPUTS = 1000


def append_output(outputs: list[OutputRecord], step_id: str, data: Any, at: float) -> None:
    """Store one more output event, dropping the oldest beyond `STORED_OUTPUTS`."""
    seq = outputs[-1].seq + 1 if outputs else 0
    outputs.append(OutputRecord(seq=seq, step_id=step_id, data=data, at=at))
    if len(outputs) > STORED_OUTPUTS:
        del outputs[: len(outputs) - STORED_OUTPUTS]


class Snapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    version: int = SNAPSHOT_VERSION
    run_id: str
    workflow_id: str
    status: RunStatus
    input: Any = None
    result: Any = None
    error: ErrorRecord | None = None
    steps: dict[str, StepRecord] = {}
    progress: dict[str, Any] = {}
    states: dict[str, Any] = {}
    suspended: list[str] = []
    pending_events: dict[str, list[Any]] = {}
    cancel_requested: bool = False
    cancel_reason: str | None = None
    events_taken: int = 0  # the number of the last event taken from the storage
    timeout: float | None = None  # the run's timeout in seconds
    deadline: float | None = None  # wall-clock, set when the run first executed
    outputs: list[OutputRecord] = []


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Snapshot)


def error_record(error: BaseException | None, step_id: str | None = None) -> ErrorRecord | None:
    if error is None:
        return None
    message = storable_text(str(error))
    if isinstance(error, StepFailedError):
        return ErrorRecord(
            type=error.type_name,
            message=message,
            step_id=error.step_id,
            traceback=error.traceback,
        )
    step_id = getattr(error, "step_id", step_id)
    if not isinstance(step_id, str | None):
        step_id = None
    return ErrorRecord(
        type=type(error).__qualname__,
        message=message,
        step_id=step_id,
        traceback=traceback_text(error),
    )


def traceback_text(error: BaseException) -> str | None:
    """`error`'s formatted traceback, bounded (the end says most), or None for an
    error that was never raised."""
    if error.__traceback__ is None:
        return None
    text = "".join(traceback.format_exception(error))
    return storable_text(bounded(text, TRACEBACK_LIMIT))


_DEFAULT_ABORT_ARGS = AbortError().args


def reason_text(reason: object) -> str | None:
    """A cancel reason as stored (``trioflow runs show`` prints it); None for no reason
    given (the default `AbortError`), which a loaded run gets back as such."""
    if reason is None or (type(reason) is AbortError and reason.args == _DEFAULT_ABORT_ARGS):
        return None
    return storable_text(str(reason))


def storable_text(text: str) -> str:
    """`text`, with what UTF-8 cannot hold (lone surrogates) escaped: an error message
    that names a non-UTF-8 file is still stored."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def error_from_record(record: ErrorRecord | None) -> BaseException | None:
    if record is None:
        return None
    return StepFailedError(
        record.message, step_id=record.step_id, type_name=record.type, traceback=record.traceback
    )


def step_record(result: StepResult, step_id: str) -> StepRecord:
    return StepRecord(
        status=result.status,
        output=result.output,
        payload=result.payload,
        error=error_record(result.error, step_id),
        suspend_payload=result.suspend_payload,
        resume_payload=result.resume_payload,
        started_at=result.started_at,
        ended_at=result.ended_at,
    )


def step_result(record: StepRecord, output: Any) -> StepResult:
    return StepResult(
        status=record.status,
        output=output,
        payload=record.payload,
        error=error_from_record(record.error),
        suspend_payload=record.suspend_payload,
        resume_payload=record.resume_payload,
        started_at=record.started_at,
        ended_at=record.ended_at,
    )


def encode(snapshot: Snapshot) -> bytes:
    """The snapshot as JSON; data that msgspec cannot encode is a clear error."""
    return _encode(snapshot.run_id, snapshot)


def _encode(run_id: str, value: Any) -> bytes:
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        # ValueError: UnicodeEncodeError, a str with lone surrogates (os.fsdecode of a
        # non-UTF-8 file name) that JSON cannot hold.
        raise UnstorableDataError(run_id, "some of its data", _describe(exc)) from exc


def encode_value(run_id: str, where: str, value: Any) -> bytes:
    """`value` as JSON; `UnstorableDataError` naming `where` if msgspec cannot encode it."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise UnstorableDataError(run_id, where, _describe(exc)) from exc


def encodable(value: Any) -> bool:
    """Whether `value` can be stored in a snapshot."""
    try:
        _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError):
        return False
    return True


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).encode('utf-8', 'backslashreplace').decode()}"


def unstorable_detail(value: Any) -> str:
    """Why msgspec cannot encode `value`, for an error message."""
    try:
        _encoder.encode(value)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        return f"a value of type {type(value).__name__}: {_describe(exc)}"
    return f"a value of type {type(value).__name__}"


def decode(run_id: str, data: bytes) -> Snapshot:
    """A stored snapshot; anything unreadable raises `SnapshotError` naming the run."""
    try:
        snapshot = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(run_id, f"it is corrupt or not a trioflow snapshot ({exc})") from exc
    if snapshot.version > SNAPSHOT_VERSION:
        raise SnapshotError(
            run_id,
            f"it was written by a newer trioflow (snapshot version {snapshot.version}, "
            f"this one reads up to {SNAPSHOT_VERSION}); upgrade trioflow",
        )
    if snapshot.run_id != run_id:
        raise SnapshotError(run_id, f"it belongs to run {snapshot.run_id!r}")
    return snapshot


FORKABLE = ("success", "failed", "canceled", "suspended")


def fork(snapshot: Snapshot, new_run_id: str, from_step: str) -> Snapshot:
    """A new pending run of the same input that keeps `snapshot`'s records of the steps
    that ended before `from_step` started, and so runs `from_step` and everything after
    it again (a replay takes the kept records' outputs). Pure; `ValueError` for a step
    that never started. The state is the original's last state: trioflow does not keep
    one per step."""
    start = snapshot.steps.get(from_step)
    if start is None or start.started_at is None:
        started = ", ".join(repr(p) for p, r in snapshot.steps.items() if r.started_at) or "none"
        raise ValueError(
            f"run {snapshot.run_id!r} has no step {from_step!r} that started (started: "
            f"{started}); fork from one of those"
        )
    kept = {
        path: record
        for path, record in snapshot.steps.items()
        if record.status == "success"
        and record.ended_at is not None
        and record.ended_at <= start.started_at
        and path != from_step
        and not path.startswith(from_step + ".")
    }
    return Snapshot(
        run_id=new_run_id,
        workflow_id=snapshot.workflow_id,
        status="pending",
        input=snapshot.input,
        steps=kept,
        progress={path: value for path, value in snapshot.progress.items() if path in kept},
        states=snapshot.states,
    )


def first_to_retry(snapshot: Snapshot) -> str:
    """The step a retry forks from: the earliest-started failed or canceled step that
    holds no failed or canceled step of its own (a nested workflow's failing step, not
    the nested workflow), so that what succeeded before it is kept."""
    ended_badly = [
        (record.started_at or 0.0, path)
        for path, record in snapshot.steps.items()
        if record.status in ("failed", "canceled")
    ]
    leaves = [
        (started, path)
        for started, path in ended_badly
        if not any(other.startswith(path + ".") for _, other in ended_badly)
    ]
    if not leaves:
        raise ValueError(
            f"run {snapshot.run_id!r} has no failed or canceled step to retry from; "
            "fork it from a step of your choice with fork_run(run_id, from_step)"
        )
    return min(leaves)[1]
