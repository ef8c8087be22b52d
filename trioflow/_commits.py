"""Group commit: the writes of one engine's concurrent runs share transactions.

A write made while no other is under way goes to the storage at once, alone: a lone run
waits for nothing. Writes made while one is under way queue up, and the first of them
leads the next batch: it writes every queued write in one transaction (one commit, one
fsync) and hands each its own outcome. A run still waits until its own transition is
durable before it goes on; a batch that fails fails its runs only, each with the error.

No task of its own: a writer task would add a pass through the scheduler to every
write, and need care to outlive the runs at shutdown. The callers are shielded (a
transition is never abandoned half-way), so a leader always finishes its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import outcome
import trio

from ._clock import wall_time
from ._errors import StorageError
from .storage import Storage, Write


class _Waiting:
    __slots__ = ("done", "result", "write")

    def __init__(self, write: Write) -> None:
        self.write = write
        self.done = trio.Event()
        # None until the batch that holds it is written; left None to make it lead.
        self.result: outcome.Outcome[bool] | None = None


class GroupCommit:
    def __init__(self, storage: Storage, owner: str) -> None:
        self._storage = storage
        self._owner = owner
        self._queue: list[_Waiting] = []
        self._busy = False

    async def save(self, write: Write) -> bool:
        """Store `write` (`Storage.save_many`); False if it lost its compare-and-set.
        Call it shielded."""
        me = _Waiting(write)
        self._queue.append(me)
        if self._busy:
            await me.done.wait()
            if me.result is not None:
                return me.result.unwrap()
        else:
            self._busy = True
        # Lead: write everything queued, this write included, as one batch.
        batch, self._queue = self._queue, []
        writes: Sequence[Write] = [waiting.write for waiting in batch]
        result = await outcome.acapture(self._storage.save_many, writes, self._owner, wall_time())
        for i, waiting in enumerate(batch):
            if isinstance(result, outcome.Value):
                waiting.result = outcome.Value(result.value[i])
            elif waiting is me:
                waiting.result = result
            else:  # an exception object is raised in one task only
                error = StorageError(f"a batch of writes failed: {result.error}")
                error.__cause__ = result.error
                waiting.result = outcome.Error(error)
            if waiting is not me:
                waiting.done.set()
        if self._queue:
            self._queue[0].done.set()  # leads the next batch
        else:
            self._busy = False
        return me.result.unwrap()  # type: ignore[union-attr]
