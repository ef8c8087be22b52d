"""Named queues with limits that hold across every engine and worker sharing a storage.

A queue's limits are enforced where runs are taken, inside the storage's claim
transaction (SQLite: its write lock; PostgreSQL: a lock on the queue's row), from what
is stored: which runs of the queue execute now, with which keys, and when the last runs
started. Counting in each process's memory was rejected: four workers would then allow
four times the limit, which is the very problem named queues solve.

This module holds the public `Queue` and `RateLimit`, the plain data the storages
exchange (`QueueLimits`, `QueueEntry`, `QueuePlace`, `QueueStats`), and the one decision
every backend shares, `pick`: which waiting runs to take, given the stored state. The
backends do the I/O around it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import msgspec

#: The queue of runs enqueued without ``queue=`` (and of schedules' fires). It has no
#: limits, and every worker serves it unless told to serve only named queues.
DEFAULT_QUEUE = "default"


class RateLimit(msgspec.Struct, frozen=True):
    """At most `limit` runs of a queue start in any window of `per` seconds (a rolling
    window, measured on trioflow's wall clock across every process)."""

    limit: int
    per: float

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise ValueError(
                f"RateLimit(limit={self.limit!r}, ...): limit must be a whole number >= 1"
            )
        per = self.per
        if isinstance(per, bool) or not isinstance(per, int | float) or not 0 < per < math.inf:
            raise ValueError(
                f"RateLimit(..., per={per!r}): per must be a finite number of seconds > 0"
            )


class Queue(msgspec.Struct, frozen=True):
    """A named queue of runs and its limits, given to ``open_engine(queues=[...])`` by
    every process that enqueues to it or serves it.

    - `concurrency`: at most this many of its runs execute at once, across all workers.
    - `per_key_concurrency`: at most this many of its runs with the same ``key=``
      execute at once (runs without a key are not limited by it).
    - `rate_limit`: at most ``rate_limit.limit`` of its runs start per
      ``rate_limit.per`` seconds.

    ``None`` means no such limit. Higher ``priority=`` runs start first; runs of one
    priority start in the order they were enqueued.
    """

    name: str
    concurrency: int | None = None
    per_key_concurrency: int | None = None
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name != self.name.strip():
            raise ValueError(f"Queue({self.name!r}): the name must be a non-empty string")
        for field in ("concurrency", "per_key_concurrency"):
            value = getattr(self, field)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(
                    f"Queue({self.name!r}, {field}={value!r}): give a whole number >= 1, "
                    "or None for no limit"
                )
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise TypeError(
                f"Queue({self.name!r}, rate_limit={self.rate_limit!r}): give "
                "trioflow.RateLimit(n, per=seconds)"
            )

    def limits(self) -> QueueLimits:
        rate = self.rate_limit
        return QueueLimits(
            name=self.name,
            concurrency=self.concurrency,
            per_key_concurrency=self.per_key_concurrency,
            rate_limit=None if rate is None else rate.limit,
            rate_per=None if rate is None else float(rate.per),
        )


class QueueLimits(msgspec.Struct, frozen=True, kw_only=True):
    """A queue's limits as a storage sees them (and stores them, for ``queues list``)."""

    name: str
    concurrency: int | None = None
    per_key_concurrency: int | None = None
    rate_limit: int | None = None
    rate_per: float | None = None

    @property
    def limited(self) -> bool:
        """Whether taking a run needs the queue's lock (else: skip-locked is enough)."""
        return (
            self.concurrency is not None
            or self.per_key_concurrency is not None
            or self.rate_limit is not None
        )

    def describe(self) -> str:
        parts = []
        if self.concurrency is not None:
            parts.append(f"concurrency {self.concurrency}")
        if self.per_key_concurrency is not None:
            parts.append(f"per key {self.per_key_concurrency}")
        if self.rate_limit is not None and self.rate_per is not None:
            parts.append(f"{self.rate_limit} per {self.rate_per:g}s")
        return ", ".join(parts) or "no limits"


class QueueEntry(msgspec.Struct, frozen=True, kw_only=True):
    """Where `Engine.enqueue` puts a new run: its queue, priority, key and dedup id."""

    queue: str = DEFAULT_QUEUE
    priority: int = 0
    key: str | None = None
    dedup_id: str | None = None


class QueuePlace(msgspec.Struct, frozen=True, kw_only=True):
    """A queued run's place, for ``runs show``: `state` is ``'waiting'`` (then
    `position` counts from 1 for the next run to start), ``'active'`` (taken by a
    worker) or ``'done'``."""

    queue: str
    priority: int
    key: str | None
    dedup_id: str | None
    state: str
    position: int | None
    limits: QueueLimits | None


class QueueStats(msgspec.Struct, frozen=True, kw_only=True):
    """A queue as ``trioflow queues list`` shows it."""

    name: str
    waiting: int
    executing: int
    limits: QueueLimits | None


class Candidate(msgspec.Struct, frozen=True):
    """A waiting run, in the queue's order (priority, then first in)."""

    run_id: str
    key: str | None


def pick(
    limits: QueueLimits,
    candidates: Iterable[Candidate],
    *,
    active_keys: Sequence[str | None],
    started_in_window: int,
    room: int,
) -> list[str]:
    """The run ids to take from one queue, in order: at most `room` (the taker's free
    slots), within the queue's concurrency given the runs executing now (whose keys
    are `active_keys`), its per-key limit, and its rate limit given how many runs
    started in the current window. A candidate whose key is full is passed over, so
    runs of other keys behind it go first (a blocked key does not block the queue)."""
    free = room
    if limits.concurrency is not None:
        free = min(free, limits.concurrency - len(active_keys))
    if limits.rate_limit is not None:
        free = min(free, limits.rate_limit - started_in_window)
    taken: list[str] = []
    if free <= 0:
        return taken
    per_key = limits.per_key_concurrency
    executing = Counter(key for key in active_keys if key is not None)
    for candidate in candidates:
        if len(taken) >= free:
            break
        if per_key is not None and candidate.key is not None:
            if executing[candidate.key] >= per_key:
                continue
            executing[candidate.key] += 1
        taken.append(candidate.run_id)
    return taken


def check_queues(queues: Iterable[Queue]) -> dict[str, Queue]:
    """The queues by name; `ValueError` for two queues of one name."""
    known: dict[str, Queue] = {}
    for queue in queues:
        if not isinstance(queue, Queue):
            raise TypeError(f"open_engine(queues=...) takes trioflow.Queue objects, got {queue!r}")
        if queue.name in known:
            raise ValueError(f"two queues are named {queue.name!r}; give each queue its own name")
        known[queue.name] = queue
    return known


def entry(
    known: Mapping[str, Queue],
    queue: str | None,
    priority: int,
    key: str | None,
    dedup_id: str | None,
) -> QueueEntry:
    """The checked arguments of ``engine.enqueue``: `queue` must be one of the engine's
    queues (or the default one)."""
    name = DEFAULT_QUEUE if queue is None else queue
    if name != DEFAULT_QUEUE and name not in known:
        raise LookupError(
            f"this engine does not know queue {name!r}; pass trioflow.Queue({name!r}, ...) "
            f"in open_engine(queues=[...]) (known: {sorted(known)})"
        )
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be a whole number, got {priority!r}")
    for what, value in (("key", key), ("dedup_id", dedup_id)):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{what} must be a string or None, got {value!r}")
    return QueueEntry(queue=name, priority=priority, key=key, dedup_id=dedup_id)


def served(known: Mapping[str, Queue], names: Iterable[str] | None) -> list[QueueLimits]:
    """The limits of the queues a worker serves: `names` (default: the default queue
    and every queue in `known`); `LookupError` for a name that is not known."""
    if names is None:
        names = [DEFAULT_QUEUE, *(name for name in known if name != DEFAULT_QUEUE)]
    limits: list[QueueLimits] = []
    for name in dict.fromkeys(names):
        queue = known.get(name)
        if queue is not None:
            limits.append(queue.limits())
        elif name == DEFAULT_QUEUE:
            limits.append(QueueLimits(name=name))
        else:
            raise LookupError(
                f"cannot serve queue {name!r}: it is not in open_engine(queues=[...]) "
                f"(known: {sorted(known)}); define trioflow.Queue({name!r}, ...)"
            )
    return limits
