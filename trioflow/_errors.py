"""The exception hierarchy: one root, subclasses that carry what went wrong and build
a message that says how to fix it."""

from __future__ import annotations


class TrioflowError(Exception):
    """The root of every error trioflow raises on purpose."""


class AbortError(TrioflowError):
    """The default reason of an aborted :class:`AbortSignal`.

    A step that raises its signal's ``AbortError`` (or calls ``ctx.abort()``) is recorded
    ``'canceled'``. ``reason`` is the value the signal was aborted with when that value is
    not itself an exception (see ``AbortSignal.throw_if_aborted``).
    """

    def __init__(self, message: str = "The operation was aborted", *, reason: object = None):
        super().__init__(message)
        self.reason = reason


class ValidationError(TrioflowError):
    """Data crossing a step or workflow boundary does not match its schema."""

    def __init__(
        self,
        *,
        step_id: str | None,
        what: str,
        detail: str,
        path: str = "$",
        workflow_id: str | None = None,
    ) -> None:
        self.step_id = step_id
        self.workflow_id = workflow_id
        self.what = what
        self.detail = detail
        self.path = path
        if step_id is not None:
            where = f"step {step_id!r}"
        else:
            where = "workflow" if workflow_id is None else f"workflow {workflow_id!r}"
        super().__init__(
            f"invalid {what} for {where}: {detail}; pass data that matches the {what} schema"
        )


class StepTimeoutError(TrioflowError, TimeoutError):
    """A step ran longer than its ``timeout=``; the step is recorded ``'failed'``."""

    def __init__(self, step_id: str, timeout: float) -> None:
        self.step_id = step_id
        self.timeout = timeout
        super().__init__(
            f"step {step_id!r} did not finish within its timeout of {timeout:g}s; "
            "raise the timeout or make the step faster"
        )


class RunTimeoutError(TrioflowError, TimeoutError):
    """A run did not end within its timeout (``create_workflow(timeout=)``,
    ``start(timeout=)``): it is interrupted as by a cancel (its signal's reason is this
    error) and ends ``'failed'`` with it."""

    def __init__(self, run_id: str, timeout: float) -> None:
        self.run_id = run_id
        self.timeout = timeout
        super().__init__(
            f"run {run_id!r} did not end within its timeout of {timeout:g}s; raise the "
            "timeout (create_workflow(timeout=) or start(timeout=)) or make it faster"
        )


class EventTimeoutError(TrioflowError, TimeoutError):
    """No event came to a ``.wait_for_event(name, step, timeout=...)`` in time; the step
    is recorded ``'failed'`` with this error."""

    def __init__(self, step_id: str, name: str, timeout: float) -> None:
        self.step_id = step_id
        self.name = name
        self.timeout = timeout
        super().__init__(
            f"step {step_id!r} waited {timeout:g}s for event {name!r} and none came; send it "
            "sooner (run.send_event) or raise the timeout"
        )


class StepFailedError(TrioflowError):
    """A step failed with an exception whose object is no longer at hand, such as a run
    loaded from storage in another process; ``type_name`` names the original class."""

    def __init__(
        self,
        message: str,
        *,
        step_id: str | None = None,
        type_name: str = "",
        traceback: str | None = None,
    ) -> None:
        self.step_id = step_id
        self.type_name = type_name
        self.traceback = traceback  # the original's formatted traceback, as stored
        super().__init__(message)


class RunStateError(TrioflowError):
    """The run is not in a state that allows the operation (resume of a canceled run...)."""

    def __init__(self, run_id: str, status: str, message: str) -> None:
        self.run_id = run_id
        self.status = status
        super().__init__(message)


class RunNotFoundError(TrioflowError, LookupError):
    """No run with this id is stored."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}; list the stored runs with engine.list_runs()")


class SnapshotError(TrioflowError):
    """A stored snapshot cannot be read: corrupt, foreign, or from a newer trioflow."""

    def __init__(self, run_id: str, detail: str) -> None:
        self.run_id = run_id
        super().__init__(f"cannot read the snapshot of run {run_id!r}: {detail}")


class WorkflowVersionError(TrioflowError):
    """A stored run is on a version of its workflow that this engine was not given: the
    engine never executes it (`cancel()` still works: it is a change in storage)."""

    def __init__(
        self, workflow_id: str, version: str, known: list[str], *, run_id: str | None = None
    ) -> None:
        self.workflow_id = workflow_id
        self.version = version
        self.known = known
        self.run_id = run_id
        what = f"run {run_id!r} is on" if run_id is not None else "there is no"
        super().__init__(
            f"{what} version {version!r} of workflow {workflow_id!r}, which this engine does "
            f"not know (known: {', '.join(map(repr, known)) or 'none'}); pass that version's "
            "definition in open_engine(workflows=[...]) too"
        )


class UnstorableDataError(TrioflowError):
    """A durable run holds a value msgspec cannot encode, so it cannot be stored. The
    run is recorded ``'failed'`` with this error (the value itself is dropped); unlike
    `StorageError`, retrying would fail the same way."""

    def __init__(self, run_id: str, where: str, detail: str) -> None:
        self.run_id = run_id
        self.where = where
        super().__init__(
            f"run {run_id!r} cannot be stored: {where} is not msgspec-encodable ({detail}); "
            "durable runs store only msgspec-encodable data (Structs, dicts, lists, UTF-8 "
            "str, numbers...): return or pass such data, or declare a schema for it"
        )


class StorageError(TrioflowError):
    """The storage failed (locked, read-only, unreachable); ``__cause__`` has the detail."""
