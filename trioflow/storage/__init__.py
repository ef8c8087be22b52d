"""Where durable runs live: the `Storage` interface and its backends."""

from ._base import Claim as Claim
from ._base import NewRun as NewRun
from ._base import RunRow as RunRow
from ._base import RunSummary as RunSummary
from ._base import ScheduleState as ScheduleState
from ._base import Storage as Storage
from ._base import StoredEvent as StoredEvent
from ._base import Write as Write
from ._memory import MemoryStorage as MemoryStorage
from ._postgres import PostgresStorage as PostgresStorage
from ._sqlite import SQLiteStorage as SQLiteStorage

__all__ = [
    "Claim",
    "MemoryStorage",
    "NewRun",
    "PostgresStorage",
    "RunRow",
    "RunSummary",
    "StoredEvent",
    "SQLiteStorage",
    "ScheduleState",
    "Storage",
    "Write",
]
