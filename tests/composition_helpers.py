"""Helpers shared by the composition tests (parallel, loops, foreach, nested, waits, retries).

`watched_start` runs a run to its end while recording every event with the virtual time
it arrived at (under ``autojump_clock`` an event arrives in the tick it was emitted:
the clock only jumps once every task is blocked), and optionally cancels the run at a
given virtual time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import trio

import trioflow
from trioflow._clock import set_wall_clock

# The wall-clock second that virtual time 0 stands for, under the `wall_clock` fixture.
EPOCH = 1_700_000_000.0


def at(seconds: float) -> dt.datetime:
    """The timezone-aware datetime of virtual time `seconds` under `wall_clock`."""
    return dt.datetime.fromtimestamp(EPOCH + seconds, tz=dt.UTC)


@contextlib.contextmanager
def tied_wall_clock() -> Iterator[None]:
    """Tie trioflow's wall clock to Trio's (so MockClock drives `sleep_until`), then
    restore it. Test modules wrap it in a ``wall_clock`` fixture."""
    previous = set_wall_clock(lambda: EPOCH + trio.current_time())
    try:
        yield
    finally:
        set_wall_clock(previous)


Log = list[tuple[str, str, float]]


def sleeper(
    step_id: str,
    seconds: float,
    log: Log | None = None,
    *,
    output: Any = None,
    fail: bool = False,
    **options: Any,
) -> trioflow.Step[Any, Any]:
    """A step that sleeps `seconds` of Trio's clock, then returns `output` (default: its
    id) or raises ``RuntimeError`` (``fail=True``). It logs ``("start", id, t)`` and, on
    the way out, ``("done", id, t)`` or ``("interrupted", id, t)``."""

    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        if log is not None:
            log.append(("start", step_id, trio.current_time()))
        finished = False
        try:
            await trio.sleep(seconds)
            finished = True
        finally:
            if log is not None:
                log.append(("done" if finished else "interrupted", step_id, trio.current_time()))
        if fail:
            raise RuntimeError(f"{step_id} failed")
        return step_id if output is None else output

    return trioflow.create_step(id=step_id, execute=execute, **options)


def of(log: Log, kind: str) -> list[tuple[str, float]]:
    """The ``(step id, time)`` entries of `log` of one kind."""
    return [(step_id, t) for k, step_id, t in log if k == kind]


class Watched:
    """What `watched_start` saw: the result, the timed events and the cancel's answer."""

    def __init__(self) -> None:
        self.result: trioflow.RunResult | None = None
        self.timeline: list[tuple[float, trioflow.WorkflowEvent]] = []
        self.cancel_result: trioflow.CancelResult | None = None
        self.cancel_returned_at: float | None = None
        self.ended_at: float | None = None

    @property
    def events(self) -> list[trioflow.WorkflowEvent]:
        return [event for _, event in self.timeline]

    def brief(self) -> list[tuple[str, str | None, str | None]]:
        """``(type, step_id, status)`` of each event, in order."""
        return [
            (event.type, getattr(event, "step_id", None), getattr(event, "status", None))
            for event in self.events
        ]

    def of_type(self, kind: str) -> list[Any]:
        return [event for event in self.events if event.type == kind]

    @property
    def statuses(self) -> dict[str, str]:
        assert self.result is not None
        return statuses(self.result)


def statuses(result: trioflow.RunResult) -> dict[str, str]:
    return {path: record.status for path, record in result.steps.items()}


async def watched_start(
    run: trioflow.Run,
    input_data: Any = None,
    *,
    cancel_at: float | None = None,
    **start_options: Any,
) -> Watched:
    """Start `run`, record its events with their virtual times, cancel it at `cancel_at`."""
    seen = Watched()
    finished = trio.Event()

    async def collect(events: trioflow.EventStream) -> None:
        async for event in events:
            seen.timeline.append((trio.current_time(), event))
        finished.set()

    async def cancel_later(when: float) -> None:
        await trio.sleep_until(when)
        with trio.CancelScope(shield=True):  # once asked, let the cancel finish
            seen.cancel_result = await run.cancel()
            seen.cancel_returned_at = trio.current_time()

    async with run.watch() as events, trio.open_nursery() as nursery:
        nursery.start_soon(collect, events)
        canceller = trio.CancelScope()
        if cancel_at is not None:

            async def cancel_task() -> None:
                with canceller:
                    await cancel_later(cancel_at)

            nursery.start_soon(cancel_task)
        seen.result = await run.start(input_data, **start_options)
        seen.ended_at = trio.current_time()
        canceller.cancel()  # a cancel not asked for yet is never asked for
        with trio.fail_after(1000):  # the finish event is already queued: no time passes
            await finished.wait()
    return seen
