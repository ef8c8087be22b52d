"""A worker: a process (or a task) that executes queued runs from a shared storage.

Start as many as you like, on as many machines as share the database: each takes queued
runs with `Storage.claim_queued` (no run is taken twice), executes at most `concurrency`
at once under leases it renews, and takes over the runs of a worker that died once their
leases expire, each from its last completed step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

import trio

from ._engine import Engine, open_engine
from ._queues import Queue
from ._schedules import Schedule
from ._workflow import Workflow
from .storage import Storage


async def serve_worker(
    *,
    storage: Storage,
    workflows: Iterable[Workflow],
    concurrency: int = 4,
    lease_seconds: float = 10.0,
    poll_interval: float = 0.02,
    queues: Iterable[Queue] = (),
    schedules: Iterable[Schedule] = (),
    serve_queues: Iterable[str] | None = None,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Execute queued runs of `workflows` from `storage` until cancelled.

    Calls ``task_status.started(engine)`` once the engine is open and listening. When
    cancelled, the runs it executes are interrupted and left recoverable (their leases
    are dropped, so other workers take them over at once).

    `queues`, `schedules` and `serve_queues` are as for `open_engine`: the worker
    takes runs from the queues named in `serve_queues` (default: the default queue
    and every queue in `queues`), within limits that hold across all workers.
    """
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number >= 1, got {concurrency!r}")
    async with open_engine(
        storage=storage,
        workflows=workflows,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        workers=concurrency,
        queues=queues,
        schedules=schedules,
        serve_queues=serve_queues,
    ) as engine:
        task_status.started(engine)
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover
