"""trioflow: durable, cancellable workflow runs for Trio."""

from ._abort import AbortController as AbortController
from ._abort import AbortEvent as AbortEvent
from ._abort import AbortSignal as AbortSignal
from ._engine import Engine as Engine
from ._engine import open_engine as open_engine
from ._errors import AbortError as AbortError
from ._errors import EventTimeoutError as EventTimeoutError
from ._errors import RunNotFoundError as RunNotFoundError
from ._errors import RunStateError as RunStateError
from ._errors import RunTimeoutError as RunTimeoutError
from ._errors import SnapshotError as SnapshotError
from ._errors import StepFailedError as StepFailedError
from ._errors import StepTimeoutError as StepTimeoutError
from ._errors import StorageError as StorageError
from ._errors import TrioflowError as TrioflowError
from ._errors import UnstorableDataError as UnstorableDataError
from ._errors import ValidationError as ValidationError
from ._errors import WorkflowVersionError as WorkflowVersionError
from ._events import EventStream as EventStream
from ._events import WatchOverflow as WatchOverflow
from ._events import WorkflowCanceled as WorkflowCanceled
from ._events import WorkflowEvent as WorkflowEvent
from ._events import WorkflowFinish as WorkflowFinish
from ._events import WorkflowStart as WorkflowStart
from ._events import WorkflowStepOutput as WorkflowStepOutput
from ._events import WorkflowStepProgress as WorkflowStepProgress
from ._events import WorkflowStepResult as WorkflowStepResult
from ._events import WorkflowStepStart as WorkflowStepStart
from ._events import WorkflowStepSuspended as WorkflowStepSuspended
from ._events import WorkflowStepWaiting as WorkflowStepWaiting
from ._events import decode_event as decode_event
from ._events import encode_event as encode_event
from ._queues import Queue as Queue
from ._queues import RateLimit as RateLimit
from ._results import CancelResult as CancelResult
from ._results import RunResult as RunResult
from ._results import StepResult as StepResult
from ._retry import RetryConfig as RetryConfig
from ._run import Run as Run
from ._schedules import Schedule as Schedule
from ._step import ConditionContext as ConditionContext
from ._step import Step as Step
from ._step import StepContext as StepContext
from ._step import create_step as create_step
from ._step import step as step
from ._util import fixup_module_metadata as _fixup_module_metadata
from ._web_entry import http_app as http_app
from ._web_entry import serve_http as serve_http
from ._worker import serve_worker as serve_worker
from ._workflow import Workflow as Workflow
from ._workflow import create_workflow as create_workflow
from .storage import MemoryStorage as MemoryStorage
from .storage import PostgresStorage as PostgresStorage
from .storage import RunSummary as RunSummary
from .storage import SQLiteStorage as SQLiteStorage
from .storage import Storage as Storage

__version__ = "0.1.0"

__all__ = [
    "AbortController",
    "AbortError",
    "AbortEvent",
    "AbortSignal",
    "CancelResult",
    "ConditionContext",
    "Engine",
    "EventStream",
    "MemoryStorage",
    "PostgresStorage",
    "Queue",
    "RateLimit",
    "RetryConfig",
    "Run",
    "EventTimeoutError",
    "RunNotFoundError",
    "RunResult",
    "RunStateError",
    "RunTimeoutError",
    "RunSummary",
    "SQLiteStorage",
    "Schedule",
    "SnapshotError",
    "Step",
    "StepContext",
    "StepFailedError",
    "StepResult",
    "StepTimeoutError",
    "Storage",
    "StorageError",
    "TrioflowError",
    "UnstorableDataError",
    "WorkflowVersionError",
    "ValidationError",
    "WatchOverflow",
    "Workflow",
    "WorkflowCanceled",
    "WorkflowEvent",
    "WorkflowFinish",
    "WorkflowStart",
    "WorkflowStepOutput",
    "WorkflowStepProgress",
    "WorkflowStepResult",
    "WorkflowStepStart",
    "WorkflowStepSuspended",
    "WorkflowStepWaiting",
    "create_step",
    "create_workflow",
    "decode_event",
    "encode_event",
    "http_app",
    "open_engine",
    "serve_http",
    "serve_worker",
    "step",
]

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
