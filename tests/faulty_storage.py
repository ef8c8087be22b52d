"""A storage that fails on demand: every call goes to a real storage, except the ones a
test arranged to fail with `StorageError` (by method, optionally only for some calls)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trioflow
from trioflow.storage import Storage, Write

Match = Callable[..., bool]


class FaultyStorage(Storage):
    """Wraps `inner`; ``fail("save", times=1, when=lambda *a, **kw: ...)`` makes the next
    matching calls raise `StorageError` without reaching `inner` (a write that fails
    before it commits). ``times=None`` fails every matching call until `heal`."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.notifies_cancels = inner.notifies_cancels  # type: ignore[misc]
        self.faults: dict[str, list[tuple[int | None, Match]]] = {}
        self.failed: list[tuple[str, tuple[Any, ...]]] = []

    def fail(self, method: str, *, times: int | None = 1, when: Match | None = None) -> None:
        self.faults.setdefault(method, []).append((times, when or (lambda *a, **kw: True)))

    def heal(self) -> None:
        self.faults.clear()

    async def _pass(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._check(method, *args, **kwargs)
        return await getattr(self.inner, method)(*args, **kwargs)

    def _check(self, method: str, *args: Any, **kwargs: Any) -> None:
        rules = self.faults.get(method, [])
        for i, (times, when) in enumerate(rules):
            if when(*args, **kwargs):
                if times is not None:
                    rules[i] = (times - 1, when)
                    if times - 1 == 0:
                        del rules[i]
                self.failed.append((method, args))
                raise trioflow.StorageError(f"injected fault in {method}")

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def insert(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("insert", *args, **kwargs)

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("load", *args, **kwargs)

    async def save_many(self, writes: Sequence[Write], owner: str, now: float) -> list[bool]:
        # A batch fails whole: the rules of "save" see each write of it as
        # ``(run_id, status, owner, now, release=...)``.
        for write in writes:
            self._check("save", write.run_id, write.status, owner, now, release=write.release)
        return await self.inner.save_many(writes, owner, now)

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("claim", *args, **kwargs)

    async def append_logs(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("append_logs", *args, **kwargs)

    async def read_logs(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("read_logs", *args, **kwargs)

    async def store_trace_context(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("store_trace_context", *args, **kwargs)

    async def load_trace_context(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("load_trace_context", *args, **kwargs)

    async def claim_queued(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("claim_queued", *args, **kwargs)

    async def renew(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("renew", *args, **kwargs)

    async def release(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("release", *args, **kwargs)

    async def recoverable(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("recoverable", *args, **kwargs)

    async def request_cancel(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("request_cancel", *args, **kwargs)

    async def cancel_requests(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("cancel_requests", *args, **kwargs)

    async def put_event(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("put_event", *args, **kwargs)

    async def events_for(self, **kwargs: Any) -> Any:
        return await self._pass("events_for", **kwargs)

    async def delete(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("delete", *args, **kwargs)

    async def prune(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("prune", *args, **kwargs)

    async def data_version(self) -> int:
        result: int = await self._pass("data_version")
        return result

    async def list_runs(self, **kwargs: Any) -> Any:
        return await self._pass("list_runs", **kwargs)

    async def wait_cancel_requests(self) -> None:
        await self._pass("wait_cancel_requests")

    async def register_schedules(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("register_schedules", *args, **kwargs)

    async def load_schedule(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("load_schedule", *args, **kwargs)

    async def list_schedules(self) -> Any:
        return await self._pass("list_schedules")

    async def set_schedule_paused(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("set_schedule_paused", *args, **kwargs)

    async def advance_schedule(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("advance_schedule", *args, **kwargs)

    async def insert_queued(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("insert_queued", *args, **kwargs)

    async def register_queues(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("register_queues", *args, **kwargs)

    async def claim_from_queues(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("claim_from_queues", *args, **kwargs)

    async def queue_place(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("queue_place", *args, **kwargs)

    async def queue_stats(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("queue_stats", *args, **kwargs)
