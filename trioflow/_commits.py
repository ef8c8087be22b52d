"""Group commit: the writes of one engine's concurrent runs share transactions.

A call made while no other of its kind is under way goes to the storage at once, alone:
a lone run waits for nothing. Calls made while one is under way queue up, and the first
of them leads the next batch: it makes one storage call for all of them (one
transaction, one commit, one fsync; on PostgreSQL one round trip) and hands each its own
result. A run still waits until its own transition is durable before it goes on; a
batch that fails fails its callers only, each with the error.

The engine batches a run's creation (`Storage.insert_many`), its start
(`Storage.claim_many`) and its writes (`Storage.save_many`). No task of its own: a
writer task would add a pass through the scheduler to every call, and need care to
outlive the runs at shutdown. Callers are shielded, so a leader always finishes its
batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import outcome
import trio

from ._errors import StorageError

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Waiting(Generic[Item, Result]):
    __slots__ = ("done", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.done = trio.Event()
        # None until the batch that holds it is done; left None to make it lead.
        self.result: outcome.Outcome[Result] | None = None


class GroupCommit(Generic[Item, Result]):
    """Calls of ``call_many(items)`` (one result per item, in order), batched."""

    def __init__(self, call_many: Callable[[Sequence[Item]], Awaitable[list[Result]]]) -> None:
        self._call_many = call_many
        self._queue: list[_Waiting[Item, Result]] = []
        self._busy = False

    async def __call__(self, item: Item) -> Result:
        """The result of `item`, once the batch that holds it is done. Call it shielded."""
        if not self._busy:  # alone: no waiting, no batch to hand out
            self._busy = True
            try:
                return (await self._call_many([item]))[0]
            finally:
                self._next()
        me: _Waiting[Item, Result] = _Waiting(item)
        self._queue.append(me)
        await me.done.wait()
        if me.result is None:  # lead: everything queued, this one included
            batch, self._queue = self._queue, []
            try:
                results = await outcome.acapture(self._call_many, [w.item for w in batch])
            finally:
                self._next()
            for i, waiting in enumerate(batch):
                if isinstance(results, outcome.Value):
                    waiting.result = outcome.Value(results.value[i])
                elif waiting is me:
                    waiting.result = results
                else:  # an exception object is raised in one task only
                    error = StorageError(f"a batch of writes failed: {results.error}")
                    error.__cause__ = results.error
                    waiting.result = outcome.Error(error)
                if waiting is not me:
                    waiting.done.set()
        assert me.result is not None
        return me.result.unwrap()

    def _next(self) -> None:
        """The call under way is done: the first queued one leads the next batch."""
        if self._queue:
            self._queue[0].done.set()
        else:
            self._busy = False
