"""Per-run logs: what steps say through ``ctx.logger``, kept with their run.

``ctx.logger`` is a `logging.LoggerAdapter` over the ``trioflow.steps`` logger whose
records carry ``run_id``, ``step_id`` and ``attempt`` (as `extra`), so the program's own
logging configuration sees them as usual. Independently of that configuration, records
at INFO and above are also kept for the run: the executing process gathers them here
(`PendingLogs`) and its engine writes them with the run's next stored transition, in
a table of their own (``Storage.append_logs``), before the transition itself, so a
reader that sees a run ended also sees all it logged.

Not in the run's journal: logs are not its state (a run is never replayed from them),
and their own table keeps only the last `STORED_LOGS`. The storage numbers the records of a run
(``seq`` from 0) and keeps the last `STORED_LOGS`; the dropped ones leave a gap at the
front that `with_drop_marker` turns into one marker record saying how many were dropped.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import MutableMapping, Sequence
from typing import Any, NamedTuple

import msgspec

from ._clock import wall_time

# How many records a run keeps (the newest), and how long one message may be.
STORED_LOGS = 1000
MESSAGE_LIMIT = 8192

step_logger = logging.getLogger("trioflow.steps")


class LogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One stored log record of a run. `seq` counts the run's records from 0 and keeps
    counting when old ones are dropped; `attempt` is 1 for a step's first attempt."""

    seq: int
    time: float
    level: str
    message: str
    step_id: str | None = None
    attempt: int | None = None


class NewLog(NamedTuple):
    """A record not stored yet: the storage gives it its `seq`."""

    time: float
    level: str
    message: str
    step_id: str | None
    attempt: int | None


class PendingLogs:
    """The records a run logged since its engine last wrote them, bounded like the
    stored ones. Appended to from worker-thread steps too, hence the lock."""

    __slots__ = ("_entries", "_lock", "_skipped")

    def __init__(self) -> None:
        self._entries: deque[NewLog] = deque()
        self._skipped = 0  # records dropped here, before they were ever stored
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._entries) or self._skipped > 0

    def add(self, entry: NewLog) -> None:
        with self._lock:
            self._entries.append(entry)
            if len(self._entries) > STORED_LOGS:
                self._entries.popleft()
                self._skipped += 1

    def take(self) -> tuple[list[NewLog], int]:
        """The records to store and how many were dropped before them; empties this."""
        with self._lock:
            entries, skipped = list(self._entries), self._skipped
            self._entries.clear()
            self._skipped = 0
        return entries, skipped

    def put_back(self, entries: list[NewLog], skipped: int) -> None:
        """Records whose write failed: kept for the next write, before newer ones."""
        with self._lock:
            self._entries.extendleft(reversed(entries))
            self._skipped += skipped
            while len(self._entries) > STORED_LOGS:
                self._entries.popleft()
                self._skipped += 1


class StepLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.logger``: a `logging.Logger`-like object for one step attempt."""

    def __init__(
        self, run_id: str, step_id: str, attempt: int, pending: PendingLogs | None
    ) -> None:
        super().__init__(step_logger, {"run_id": run_id, "step_id": step_id, "attempt": attempt})
        self._step_id = step_id
        self._attempt = attempt
        self._pending = pending

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        # The caller's own `extra` is kept; ours wins on the three names we set.
        kwargs["extra"] = {**kwargs.get("extra", {}), **(self.extra or {})}
        return msg, kwargs

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= logging.INFO and self._pending is not None:
            self._keep(level, msg, args, kwargs.get("exc_info"))
        # One frame of ours between the caller and `logging`: the record names the caller.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
        super().log(level, msg, *args, **kwargs)

    def _keep(self, level: int, msg: object, args: Sequence[object], exc_info: Any) -> None:
        assert self._pending is not None
        try:
            message = str(msg) % tuple(args) if args else str(msg)
        except (TypeError, ValueError):  # as logging would report it, but keep the record
            message = f"{msg} {args!r}"
        if exc_info:
            record = logging.LogRecord("", level, "", 0, "", None, _exc_info(exc_info))
            message += "\n" + logging.Formatter().formatException(record.exc_info)  # type: ignore[arg-type]
        self._pending.add(
            NewLog(
                time=wall_time(),
                level=logging.getLevelName(level),
                message=bounded(message, MESSAGE_LIMIT),
                step_id=self._step_id,
                attempt=self._attempt,
            )
        )


def _exc_info(exc_info: Any) -> Any:
    if isinstance(exc_info, BaseException):
        return (type(exc_info), exc_info, exc_info.__traceback__)
    if not isinstance(exc_info, tuple):  # exc_info=True: the exception being handled
        return sys.exc_info()
    return exc_info


def bounded(text: str, limit: int) -> str:
    """`text`, or its last `limit` characters after a line saying how many were cut
    (the end of a message or a traceback is what says what happened)."""
    if len(text) <= limit:
        return text
    return f"[{len(text) - limit} characters dropped]\n" + text[-limit:]


def with_drop_marker(entries: list[LogEntry], after: int) -> list[LogEntry]:
    """The stored `entries` (seq > `after`, in order), preceded by a marker record when
    records the reader has not seen were dropped before the first of them."""
    if not entries:
        return entries
    first = entries[0].seq
    dropped = first - max(after + 1, 0)
    if dropped <= 0:
        return entries
    marker = LogEntry(
        seq=first - 1,
        time=entries[0].time,
        level="WARNING",
        message=f"{dropped} earlier log records were dropped (a run keeps its last {STORED_LOGS})",
    )
    return [marker, *entries]
