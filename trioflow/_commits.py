"""Group commit: the writes of one engine's concurrent runs share transactions.

A call made while the storage has room for one more batch leads a batch: it makes one
storage call for itself and every call queued meanwhile (one transaction, one commit,
one fsync; on PostgreSQL one round trip) and hands each its own result. Calls made while
every batch slot is taken queue up; when a batch ends, the first queued call leads the
next. A run still waits until its own transition is durable before it goes on; a batch
that fails fails its callers only, each with the error.

Two batches are in flight at most, each of at most `MOST` calls: while the storage
commits one, the runs of the other (just answered) execute their next steps and queue
their next writes, so the storage and the engine's thread work at the same time instead
of in turn. A leader that starts while another batch is under way first lets the tasks
that are ready to run go (passes of the scheduler, while calls keep joining): the runs
a batch just answered go on together and each soon writes again, and they join its
batch instead of each waiting for a batch of its own. A lone run waits for nothing.

The engine batches a run's creation (`Storage.insert_many`), its start
(`Storage.claim_many`) and its writes (`Storage.save_many`). No task of its own: a
writer task would add a pass through the scheduler to every call, and need care to
outlive the runs at shutdown. A call cannot be cancelled: its write goes ahead either
way, and its caller must learn how it went (a cancellation is delivered at the caller's
next checkpoint). Waiting without a cancel scope of its own costs nothing, where a
shielded `trio.CancelScope` per call would cost a run more than its steps do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import outcome
import trio

from ._errors import StorageError

Item = TypeVar("Item")
Result = TypeVar("Result")

# Batches in flight at once, and calls in one batch (see the module's docstring).
IN_FLIGHT = 2
MOST = 250
# Passes through the scheduler a leader lets go by before it takes its batch.
_GATHER_PASSES = 3
# What a queued call is woken with when it is to lead the next batch.
_LEAD: Any = object()


def _cannot_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class _Waiting(Generic[Item]):
    __slots__ = ("item", "task")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.task = trio.lowlevel.current_task()


class GroupCommit(Generic[Item, Result]):
    """Calls of ``call_many(items)`` (one result per item, in order), batched."""

    def __init__(self, call_many: Callable[[Sequence[Item]], Awaitable[list[Result]]]) -> None:
        self._call_many = call_many
        # Calls not yet in a batch. Never left without a leader: while it holds any,
        # a leader is gathering or every slot is taken (and a batch's end wakes one).
        self._queue: list[_Waiting[Item]] = []
        self._free = IN_FLIGHT  # batch slots not taken
        self._gathering = False  # a leader is letting the ready tasks go before its batch

    async def __call__(self, item: Item) -> Result:
        """The result of `item`, once the batch that holds it is done; not cancellable."""
        me = _Waiting(item)
        self._queue.append(me)
        if self._gathering or not self._free:
            result = await trio.lowlevel.wait_task_rescheduled(_cannot_abort)
            if result is not _LEAD:
                return result  # type: ignore[no-any-return]
        else:
            self._take_slot()
        return await self._lead(me)

    def _take_slot(self) -> None:
        self._free -= 1
        self._gathering = True

    async def _lead(self, me: _Waiting[Item]) -> Result:
        """Gather, then make the storage call for the queue's first `MOST` calls (`me`,
        the first of them, included) and answer them."""
        try:
            if self._free < IN_FLIGHT - 1:  # others write too: let them join this batch
                for _ in range(_GATHER_PASSES):
                    queued = len(self._queue)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if len(self._queue) == queued or len(self._queue) >= MOST:
                        break
        finally:
            self._gathering = False
        batch, self._queue = self._queue[:MOST], self._queue[MOST:]
        assert batch[0] is me
        self._wake_leader()  # the rest, if a slot is free
        try:
            with trio.CancelScope(shield=True):  # a batch once begun is finished
                results = await outcome.acapture(self._call_many, [w.item for w in batch])
        finally:
            self._free += 1
            self._wake_leader()
        if isinstance(results, outcome.Error):
            for waiting in batch[1:]:  # an exception object is raised in one task only
                error = StorageError(f"a batch of writes failed: {results.error}")
                error.__cause__ = results.error
                trio.lowlevel.reschedule(waiting.task, outcome.Error(error))
            return results.unwrap()
        values = results.value
        for i in range(1, len(batch)):
            trio.lowlevel.reschedule(batch[i].task, outcome.Value(values[i]))
        return values[0]

    def _wake_leader(self) -> None:
        """Hand a free slot to the first queued call, if any."""
        if self._queue and self._free and not self._gathering:
            self._take_slot()
            trio.lowlevel.reschedule(self._queue[0].task, outcome.Value(_LEAD))
