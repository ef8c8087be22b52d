"""What the pytest fixtures hand out: engines and recorders that live in a nursery the
fixture owns, until the end of the test. Usable without pytest from any nursery."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import trio

from .._engine import Engine, open_engine
from ..storage import MemoryStorage, Storage
from ._recording import Recording

if TYPE_CHECKING:
    from .._run import Run
    from .._workflow import Workflow


class EngineFactory:
    """``engine = await factory([workflow, ...])`` opens an engine (on a fresh
    `MemoryStorage` unless `storage=` is given) that lives in the factory's nursery.

    The ``trioflow_engine_factory`` fixture gives one whose engines close at the end
    of the test: that nursery is cancelled, so runs still executing are interrupted from
    outside and left as stored (recoverable), as when an ``open_engine`` block is left
    by an exception.
    """

    __slots__ = ("_nursery", "engines")

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.engines: list[Engine] = []

    def __repr__(self) -> str:
        return f"<trioflow.testing.EngineFactory: {len(self.engines)} engines>"

    async def __call__(
        self,
        workflows: Iterable[Workflow] = (),
        *,
        storage: Storage | None = None,
        **options: Any,
    ) -> Engine:
        """An open engine of `workflows`; `options` go to `trioflow.open_engine`
        (``lease_seconds``, ``poll_interval``)."""
        engine: Engine = await self._nursery.start(
            _serve_engine,
            storage if storage is not None else MemoryStorage(),
            list(workflows),
            options,
        )
        self.engines.append(engine)
        return engine


async def _serve_engine(
    storage: Storage,
    workflows: list[Workflow],
    options: dict[str, Any],
    *,
    task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with open_engine(storage=storage, workflows=workflows, **options) as engine:
        task_status.started(engine)
        await trio.sleep_forever()


class EventRecorder:
    """``recording = recorder.record(run)`` records every event of `run` from now on,
    until `close` (the end of the test, for the ``trioflow_events`` fixture). Record
    before ``run.start()``: events emitted before are not replayed."""

    __slots__ = ("recordings",)

    def __init__(self) -> None:
        self.recordings: list[Recording] = []

    def __repr__(self) -> str:
        return f"<trioflow.testing.EventRecorder: {len(self.recordings)} runs>"

    def record(self, run: Run) -> Recording:
        """Start recording `run`; the `Recording` fills as the run emits its events."""
        recording = Recording(run)
        recording._attach()
        self.recordings.append(recording)
        return recording

    def close(self) -> None:
        """Stop every recording (what they recorded stays)."""
        for recording in self.recordings:
            recording._detach()
