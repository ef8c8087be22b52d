"""A storage that fails on demand: every call goes to a real storage, except the ones a
test arranged to fail with `StorageError` (by method, optionally only for some calls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trioflow
from trioflow.storage import Storage

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
        rules = self.faults.get(method, [])
        for i, (times, when) in enumerate(rules):
            if when(*args, **kwargs):
                if times is not None:
                    rules[i] = (times - 1, when)
                    if times - 1 == 0:
                        del rules[i]
                self.failed.append((method, args))
                raise trioflow.StorageError(f"injected fault in {method}")
        return await getattr(self.inner, method)(*args, **kwargs)

    async def open(self) -> None:
        await self.inner.open()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def insert(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("insert", *args, **kwargs)

    async def load(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("load", *args, **kwargs)

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        return await self._pass("save", *args, **kwargs)

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

    async def data_version(self) -> int:
        result: int = await self._pass("data_version")
        return result

    async def list_runs(self, **kwargs: Any) -> Any:
        return await self._pass("list_runs", **kwargs)

    async def wait_cancel_requests(self) -> None:
        await self._pass("wait_cancel_requests")
