"""The SQL of schedules and queues, shared by the SQLite and PostgreSQL backends.

Each function runs inside a transaction its backend opened (SQLite: ``BEGIN
IMMEDIATE``, the database's write lock; PostgreSQL: a transaction holding the queue's
row lock) through `Query`: a statement with ``?`` placeholders and its parameters, and
the rows it returned. Writing these statements twice, once per backend, was rejected:
the two would drift, and the limits must mean the same on both.

The tables: ``trioflow_queued`` (one entry per queued run: its queue, priority, key,
dedup id, a state ``'waiting'``/``'active'``/``'done'``, and when a worker last took it,
which the rate limit counts), ``trioflow_queues`` (the limits engines declared) and
``trioflow_schedules``. Of ``trioflow_runs`` they read status, owner and lease, and a
new queued run is inserted there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .._queues import (
    DEFAULT_QUEUE,
    Candidate,
    QueueEntry,
    QueueLimits,
    QueuePlace,
    QueueStats,
    pick,
)
from ._base import (
    SQL_COLUMNS,
    RunRow,
    ScheduleState,
    row_from_sql,
    workflow_key,
    workflow_keys,
)

#: Run a statement (``?`` placeholders) and return the rows it gave ([] for none).
Query = Callable[[str, Sequence[Any]], list[Any]]

RUN_COLUMNS = ", ".join(f"r.{column}" for column in SQL_COLUMNS.split(", "))
#: How many waiting runs one claim looks at, at least: enough to pass over runs whose
#: key is at its per-key limit, and runs other workers have just taken.
SCAN_AT_LEAST = 100

_QUEUE_COLUMNS = "name, concurrency, per_key_concurrency, rate_limit, rate_per"
_SCHEDULE_COLUMNS = (
    "schedule_id, workflow_id, cron, timezone, catch_up, paused, handled_until, updated_at"
)


def insert_queued(
    q: Query,
    run_id: str,
    workflow_id: str,
    snapshot: bytes,
    now: float,
    entry: QueueEntry,
    workflow_version: str | None = None,
    forked_from: str | None = None,
) -> RunRow | None:
    found = q(f"SELECT {SQL_COLUMNS} FROM trioflow_runs WHERE run_id = ?", (run_id,))
    if found:
        return row_from_sql(found[0])
    if entry.dedup_id is not None:
        found = q(
            f"SELECT {RUN_COLUMNS} FROM trioflow_queued e JOIN trioflow_runs r "
            "ON r.run_id = e.run_id WHERE e.queue = ? AND e.dedup_id = ? "
            "AND r.status IN ('pending', 'running', 'waiting') LIMIT 1",
            (entry.queue, entry.dedup_id),
        )
        if found:
            return row_from_sql(found[0])
    q(
        "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, queued, "
        "created_at, updated_at, workflow_version, forked_from) "
        "VALUES (?, ?, 'pending', ?, TRUE, ?, ?, ?, ?)",
        (run_id, workflow_id, snapshot, now, now, workflow_version, forked_from),
    )
    q(
        "INSERT INTO trioflow_queued (run_id, queue, priority, queue_key, dedup_id, state, "
        "enqueued_at) VALUES (?, ?, ?, ?, ?, 'waiting', ?)",
        (run_id, entry.queue, entry.priority, entry.key, entry.dedup_id, now),
    )
    return None


def any_waiting(q: Query, queues: list[str], workflow_ids: list[str], now: float) -> bool:
    """Whether any of `queues` has a run a claim could take: a read, so an idle worker's
    poll takes no lock. An 'active' entry whose run is pending and free again (its
    worker died before starting it) counts: the claim puts it back in line."""
    found = q(
        "SELECT 1 FROM trioflow_queued e JOIN trioflow_runs r ON r.run_id = e.run_id "
        f"WHERE e.queue IN ({_marks(queues)}) AND e.state IN ('waiting', 'active') "
        f"AND r.workflow_id IN ({_marks(workflow_ids)}) AND r.status = 'pending' "
        "AND (r.owner IS NULL OR r.lease_until < ?) LIMIT 1",
        (*queues, *workflow_ids, now),
    )
    return bool(found)


def claim_from_queue(
    q: Query,
    owner: str,
    workflow_ids: list[str],
    limits: QueueLimits,
    room: int,
    now: float,
    lease_until: float,
    *,
    lock_rows: str = "",
    versions: Mapping[str, Iterable[str]] | None = None,
) -> list[RunRow]:
    """Take up to `room` runs from one queue, within its limits (see `_queues.pick`).

    A queue with limits is taken from under its lock (the caller's): first its active
    entries are brought up to date from their runs — ended or suspended ones are done;
    one taken by a worker that died before starting it (still ``'pending'``, lease
    expired) waits again. A run that executes, or is taken and under a live lease,
    counts against the limits, also when its worker died (until its lease expires and
    another engine recovers it, it still holds its place).

    A queue without limits needs no count, so no lock: its takers pass over each
    other's rows (`lock_rows`, PostgreSQL's ``FOR UPDATE OF e SKIP LOCKED``), and its
    entries stay ``'waiting'`` until their run is seen not pending any more."""
    name = limits.name
    active_keys: list[str | None] = []
    started = 0
    if limits.limited:
        done: list[str] = []
        back: list[str] = []
        for run_id, key, status, run_owner, lease in q(
            "SELECT e.run_id, e.queue_key, r.status, r.owner, r.lease_until "
            "FROM trioflow_queued e JOIN trioflow_runs r ON r.run_id = e.run_id "
            "WHERE e.queue = ? AND e.state = 'active'",
            (name,),
        ):
            if status in ("running", "waiting"):
                active_keys.append(key)
            elif status == "pending" and run_owner is not None and (lease or 0) >= now:
                active_keys.append(key)
            elif status == "pending":
                back.append(run_id)
            else:
                done.append(run_id)
        _set_state(q, done, "done")
        _set_state(q, back, "waiting")
        if limits.rate_limit is not None and limits.rate_per is not None:
            ((started,),) = q(
                "SELECT COUNT(*) FROM trioflow_queued WHERE queue = ? AND started_at > ?",
                (name, now - limits.rate_per),
            )
        free = room
        if limits.concurrency is not None:
            free = min(free, limits.concurrency - len(active_keys))
        if limits.rate_limit is not None:
            free = min(free, limits.rate_limit - started)
        if free <= 0:  # full: no need to look at the waiting runs
            return []
        lock_rows = ""  # the queue's lock covers its rows
    candidates: list[Candidate] = []
    ended: list[str] = []
    scan = max(SCAN_AT_LEAST, room * 10)
    known = None if versions is None else set(workflow_keys(versions))
    for run_id, key, status, run_owner, lease, workflow_id, version in q(
        "SELECT e.run_id, e.queue_key, r.status, r.owner, r.lease_until, r.workflow_id, "
        "r.workflow_version FROM trioflow_queued e JOIN trioflow_runs r "
        "ON r.run_id = e.run_id WHERE e.queue = ? AND e.state = 'waiting' "
        f"ORDER BY e.priority DESC, e.seq LIMIT ? {lock_rows}",
        (name, scan),
    ):
        if known is not None and workflow_key(workflow_id, version) not in known:
            continue  # a version this taker does not know: left to one that does
        if status != "pending":
            ended.append(run_id)  # started, or canceled while queued
        elif workflow_id in workflow_ids and (run_owner is None or (lease or 0) < now):
            candidates.append(Candidate(run_id, key))
    _set_state(q, ended, "done")
    picked = pick(limits, candidates, active_keys=active_keys, started_in_window=started, room=room)
    if not picked:
        return []
    # One statement for all the runs taken, rather than a round trip each.
    rows = q(
        "UPDATE trioflow_runs SET owner = ?, lease_until = ? "
        f"WHERE run_id IN ({_marks(picked)}) "
        "AND status = 'pending' AND (owner IS NULL OR lease_until < ?) "
        f"RETURNING {SQL_COLUMNS}",
        (owner, lease_until, *picked, now),
    )
    order = {run_id: index for index, run_id in enumerate(picked)}
    taken = sorted((row_from_sql(values) for values in rows), key=lambda r: order[r.run_id])
    if taken:
        state = "active" if limits.limited else "waiting"
        q(
            f"UPDATE trioflow_queued SET state = ?, started_at = ? "
            f"WHERE run_id IN ({_marks(taken)})",
            (state, now, *(row.run_id for row in taken)),
        )
    return taken


def _set_state(q: Query, run_ids: list[str], state: str) -> None:
    if run_ids:
        q(
            f"UPDATE trioflow_queued SET state = ? WHERE run_id IN ({_marks(run_ids)})",
            (state, *run_ids),
        )


def register_queues(q: Query, queues: list[QueueLimits], now: float, *, upsert: str) -> None:
    """`upsert`: the backend's ``ON CONFLICT`` clause spelling is the same on both."""
    for limits in queues:
        q(
            f"INSERT INTO trioflow_queues ({_QUEUE_COLUMNS}, updated_at) "
            f"VALUES (?, ?, ?, ?, ?, ?) {upsert}",
            (
                limits.name,
                limits.concurrency,
                limits.per_key_concurrency,
                limits.rate_limit,
                limits.rate_per,
                now,
            ),
        )


UPSERT_QUEUE = (
    "ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency, "
    "per_key_concurrency = excluded.per_key_concurrency, rate_limit = excluded.rate_limit, "
    "rate_per = excluded.rate_per, updated_at = excluded.updated_at"
)


def _limits(q: Query, name: str) -> QueueLimits | None:
    found = q(f"SELECT {_QUEUE_COLUMNS} FROM trioflow_queues WHERE name = ?", (name,))
    return _limits_from(found[0]) if found else None


def _limits_from(values: Any) -> QueueLimits:
    return QueueLimits(
        name=values[0],
        concurrency=values[1],
        per_key_concurrency=values[2],
        rate_limit=values[3],
        rate_per=values[4],
    )


def queue_place(q: Query, run_id: str, now: float) -> QueuePlace | None:
    found = q(
        "SELECT e.queue, e.priority, e.queue_key, e.dedup_id, e.state, e.seq, r.status, "
        "r.owner, r.lease_until "
        "FROM trioflow_queued e JOIN trioflow_runs r ON r.run_id = e.run_id "
        "WHERE e.run_id = ?",
        (run_id,),
    )
    if not found:
        return None
    queue, priority, key, dedup_id, _, seq, status, run_owner, lease = found[0]
    state = _state(status, run_owner, lease, now)
    position = None
    if state == "waiting":
        ((ahead,),) = q(
            "SELECT COUNT(*) FROM trioflow_queued e JOIN trioflow_runs r "
            "ON r.run_id = e.run_id WHERE e.queue = ? AND e.state = 'waiting' "
            "AND (e.priority > ? OR (e.priority = ? AND e.seq < ?)) AND r.status = 'pending' "
            "AND (r.owner IS NULL OR r.lease_until < ?)",
            (queue, priority, priority, seq, now),
        )
        position = ahead + 1
    return QueuePlace(
        queue=queue,
        priority=priority,
        key=key,
        dedup_id=dedup_id,
        state=state,
        position=position,
        limits=_limits(q, queue),
    )


def _state(status: str, owner: str | None, lease: float | None, now: float) -> str:
    """A queued run's state, from its run: the entry's own state may lag behind."""
    if status in ("running", "waiting"):
        return "active"
    if status != "pending":
        return "done"
    return "active" if owner is not None and (lease or 0) >= now else "waiting"


def queue_stats(q: Query, now: float) -> list[QueueStats]:
    counts: dict[str, list[int]] = {}
    for queue, status, run_owner, lease, number in q(
        "SELECT e.queue, r.status, r.owner IS NOT NULL, r.lease_until >= ?, COUNT(*) "
        "FROM trioflow_queued e JOIN trioflow_runs r ON r.run_id = e.run_id "
        "WHERE e.state IN ('waiting', 'active') "
        "AND r.status IN ('pending', 'running', 'waiting') GROUP BY 1, 2, 3, 4",
        (now,),
    ):
        waiting_executing = counts.setdefault(queue, [0, 0])
        taken = status != "pending" or (run_owner and lease)
        waiting_executing[1 if taken else 0] += number
    limits = {
        values[0]: _limits_from(values)
        for values in q(f"SELECT {_QUEUE_COLUMNS} FROM trioflow_queues", ())
    }
    names = sorted(set(counts) | set(limits) | {DEFAULT_QUEUE})
    return [
        QueueStats(
            name=name,
            waiting=counts.get(name, [0, 0])[0],
            executing=counts.get(name, [0, 0])[1],
            limits=limits.get(name),
        )
        for name in names
    ]


# --- schedules ---------------------------------------------------------------------------


def _schedule_from(values: Any) -> ScheduleState:
    return ScheduleState(
        schedule_id=values[0],
        workflow_id=values[1],
        cron=values[2],
        timezone=values[3],
        catch_up=values[4],
        paused=bool(values[5]),
        handled_until=values[6],
        updated_at=values[7],
    )


def register_schedules(
    q: Query, states: list[ScheduleState], now: float
) -> dict[str, ScheduleState]:
    stored: dict[str, ScheduleState] = {}
    for state in states:
        q(
            f"INSERT INTO trioflow_schedules ({_SCHEDULE_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, 0, ?, ?) ON CONFLICT (schedule_id) DO UPDATE SET "
            "workflow_id = excluded.workflow_id, cron = excluded.cron, "
            "timezone = excluded.timezone, catch_up = excluded.catch_up, "
            "updated_at = excluded.updated_at",
            (
                state.schedule_id,
                state.workflow_id,
                state.cron,
                state.timezone,
                state.catch_up,
                state.handled_until,
                now,
            ),
        )
        found = load_schedule(q, state.schedule_id)
        assert found is not None
        stored[state.schedule_id] = found
    return stored


def load_schedule(q: Query, schedule_id: str) -> ScheduleState | None:
    found = q(
        f"SELECT {_SCHEDULE_COLUMNS} FROM trioflow_schedules WHERE schedule_id = ?",
        (schedule_id,),
    )
    return _schedule_from(found[0]) if found else None


def list_schedules(q: Query) -> list[ScheduleState]:
    rows = q(f"SELECT {_SCHEDULE_COLUMNS} FROM trioflow_schedules ORDER BY schedule_id", ())
    return [_schedule_from(values) for values in rows]


def set_schedule_paused(
    q: Query, schedule_id: str, paused: bool, now: float
) -> ScheduleState | None:
    if paused:
        q(
            "UPDATE trioflow_schedules SET paused = 1, updated_at = ? WHERE schedule_id = ?",
            (now, schedule_id),
        )
    else:
        q(
            "UPDATE trioflow_schedules SET paused = 0, updated_at = ?, handled_until = "
            "CASE WHEN handled_until < ? THEN ? ELSE handled_until END WHERE schedule_id = ?",
            (now, now, now, schedule_id),
        )
    return load_schedule(q, schedule_id)


def advance_schedule(q: Query, schedule_id: str, until: float) -> None:
    q(
        "UPDATE trioflow_schedules SET handled_until = ? "
        "WHERE schedule_id = ? AND handled_until < ?",
        (until, schedule_id, until),
    )


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))
