"""Event recordings: every event of a run, with the virtual time it arrived at."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from .. import _events as ev

if TYPE_CHECKING:
    from .._run import Run

Brief = tuple[str, str | None, str | None]
TimedBrief = tuple[float, str, str | None, str | None]


def brief(event: ev.WorkflowEvent) -> Brief:
    """``(type, step_id, status)`` of an event (``None`` where it has no such field)."""
    return (event.type, getattr(event, "step_id", None), getattr(event, "status", None))


class Recording:
    """The events of one run, recorded from the moment recording began, across all of
    its executions (a `start`, then each `resume`), each with the virtual time
    (``trio.current_time()``) at which the run emitted it.

    Events are taken synchronously as the run emits them (no task, no buffering), so
    the recording is complete and in order the moment ``run.start()`` returns. Get one
    from `record_events` or the ``trioflow_events`` fixture.
    """

    __slots__ = ("_changed", "_sink", "_timeline", "run")

    def __init__(self, run: Run) -> None:
        self.run = run
        self._timeline: list[tuple[float, ev.WorkflowEvent]] = []
        self._changed = trio.Event()
        self._sink: _Sink | None = None

    def __repr__(self) -> str:
        return f"<trioflow.testing.Recording of run {self.run.run_id!r}: {len(self)} events>"

    def __len__(self) -> int:
        return len(self._timeline)

    @property
    def timeline(self) -> list[tuple[float, ev.WorkflowEvent]]:
        """``(virtual time, event)`` pairs, in the order the events were emitted."""
        return list(self._timeline)

    @property
    def events(self) -> list[ev.WorkflowEvent]:
        """The events, in the order they were emitted."""
        return [event for _, event in self._timeline]

    def brief(self) -> list[Brief]:
        """``(type, step_id, status)`` of each event: the shape most assertions want."""
        return [brief(event) for event in self.events]

    def timed(self) -> list[TimedBrief]:
        """``(virtual time, type, step_id, status)`` of each event."""
        return [(t, *brief(event)) for t, event in self._timeline]

    def of_type(self, event_type: str) -> list[Any]:
        """The events of one type, e.g. ``"workflow-step-start"``."""
        return [event for event in self.events if event.type == event_type]

    def times(self, event_type: str, step_id: str | None = None) -> list[float]:
        """The virtual times of the events of one type (and of one step, if given)."""
        return [
            t
            for t, event in self._timeline
            if event.type == event_type
            and (step_id is None or getattr(event, "step_id", None) == step_id)
        ]

    @property
    def finished(self) -> bool:
        """Whether the run's latest execution has emitted its ``workflow-finish``."""
        kinds = [event.type for event in self.events]
        return "workflow-finish" in kinds and kinds.count("workflow-finish") >= kinds.count(
            "workflow-start"
        )

    async def wait_finished(self) -> None:
        """Wait until the latest execution's ``workflow-finish`` is recorded."""
        await self.wait_for(lambda events: self.finished)

    async def wait_for(self, predicate: Callable[[list[ev.WorkflowEvent]], object]) -> None:
        """Wait until ``predicate(events)`` is true (checked after each new event)."""
        while not predicate(self.events):
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    # --- the recorder -------------------------------------------------------------------

    def _append(self, event: ev.WorkflowEvent) -> None:
        try:
            now = trio.current_time()
        except RuntimeError:  # emitted outside trio.run: no clock to read
            now = math.nan
        self._timeline.append((now, event))
        self._poke()

    def _poke(self) -> None:
        """Wake whoever waits for a change (a new event, or the end of an execution)."""
        self._changed.set()
        self._changed = trio.Event()

    def _attach(self) -> None:
        """Start recording: the run's fan-out calls our sink as it emits each event."""
        if self._sink is None:
            self._sink = _Sink(self)
            # The run's watchers take anything with `send_nowait`, like the channel of
            # `run.watch()`; ours records in the emitting task, at the emitting time.
            self.run._watchers.channels.append(self._sink)  # type: ignore[arg-type]

    def _detach(self) -> None:
        """Stop recording (what was recorded stays)."""
        sink, self._sink = self._sink, None
        if sink is not None:
            self.run._watchers.channels.remove(sink)  # type: ignore[arg-type]


class _Sink:
    """Takes the place of a watcher's send channel in the run's fan-out."""

    __slots__ = ("_recording",)

    def __init__(self, recording: Recording) -> None:
        self._recording = recording

    def send_nowait(self, event: ev.WorkflowEvent) -> None:
        self._recording._append(event)

    def close(self) -> None:
        pass


@asynccontextmanager
async def record_events(run: Run) -> AsyncIterator[Recording]:
    """``async with record_events(run) as recording:`` records every event of `run`
    (from now on, across each of its executions) until the block ends.

    Enter it before ``run.start()``: events emitted before are not replayed.
    """
    recording = Recording(run)
    recording._attach()
    try:
        await trio.lowlevel.checkpoint()
        yield recording
    finally:
        recording._detach()
