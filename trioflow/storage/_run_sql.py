"""SQL on stored runs written once for both SQL backends (SQLite and PostgreSQL), through
the `_queue_sql.Query` adapter (``?`` placeholders): reading a run's stored events, and
deleting finished runs with what is kept beside them in tables of their own."""

from __future__ import annotations

from typing import cast

from .._errors import RunNotFoundError
from .._results import RunStatus
from ._base import TERMINAL_STATUSES, StoredEvent
from ._queue_sql import Query

# Tables keyed by run id beside the runs table: a run's rows there go with the run.
BESIDE_RUNS = (
    "trioflow_entries",
    "trioflow_events",
    "trioflow_queued",
    "trioflow_logs",
    "trioflow_traces",
)
_FINISHED = "status IN ('success', 'failed', 'canceled')"
# Run ids per statement (SQLite allows 32,766 parameters).
_CHUNK = 500


def events_for(q: Query, owner: str | None, run_id: str | None) -> list[StoredEvent]:
    """The stored events of the runs `owner` holds, or of one run, oldest first (runs
    that have ended take no more)."""
    where, params = ["r.status NOT IN ('success', 'failed', 'canceled')"], []
    for column, value in (("r.owner", owner), ("e.run_id", run_id)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    rows = q(
        "SELECT e.run_id, e.seq, e.name, e.data FROM trioflow_events e "
        f"JOIN trioflow_runs r ON r.run_id = e.run_id WHERE {' AND '.join(where)} "
        "ORDER BY e.seq",
        tuple(params),
    )
    return [StoredEvent(r[0], r[1], r[2], bytes(r[3])) for r in rows]


def delete(q: Query, run_id: str) -> RunStatus:
    """Delete the run if it has ended, with its rows beside it; its status either way."""
    found = q(
        f"DELETE FROM trioflow_runs WHERE run_id = ? AND {_FINISHED} RETURNING status",
        (run_id,),
    )
    if found:
        for table in BESIDE_RUNS:
            q(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
    else:
        found = q("SELECT status FROM trioflow_runs WHERE run_id = ?", (run_id,))
        if not found:
            raise RunNotFoundError(run_id)
    return cast(RunStatus, found[0][0])


def prune(q: Query, ended_before: float, statuses: tuple[str, ...]) -> int:
    """Delete the finished runs of `statuses` last changed before `ended_before`, with
    their rows beside them; how many."""
    statuses = tuple(s for s in statuses if s in TERMINAL_STATUSES)
    if not statuses:
        return 0
    marks = ", ".join("?" * len(statuses))
    deleted = q(
        f"DELETE FROM trioflow_runs WHERE status IN ({marks}) AND updated_at < ? RETURNING run_id",
        (*statuses, ended_before),
    )
    # The rows beside them by run id (indexed), not by a scan for rows without a run:
    # a journal table holds many rows per run.
    run_ids = [run_id for (run_id,) in deleted]
    for start in range(0, len(run_ids), _CHUNK):
        chunk = run_ids[start : start + _CHUNK]
        marks = ", ".join("?" * len(chunk))
        for table in BESIDE_RUNS:
            q(f"DELETE FROM {table} WHERE run_id IN ({marks})", tuple(chunk))
    return len(deleted)
