"""Waiting on the outside world without moving Trio's clock.

Trio's clock times what a run itself waits for (sleeps, timeouts, retry delays). Storage
calls and worker-thread steps wait on the outside world, and under
``trio.testing.MockClock(autojump_threshold=0)`` that is a trap: a task waiting for a
worker thread counts as blocked (python-trio/trio#456), so autojump moves virtual time
to the next deadline while the thread works. A durable run then saw spurious timeouts,
and its events came at different virtual times on every try.

- Storage calls run inline on the Trio thread under a MockClock (`run_io`): they take
  no virtual time and happen at a fixed point of the schedule, so a run on SQLite gives
  the same events at the same virtual times every time. Rejected: pausing autojump for
  them too, which keeps them in threads but lets real thread timing decide the order of
  events within one virtual instant.
- A worker-thread step is user code that may block or call back into Trio, so it cannot
  run inline: autojump is paused while it runs (`run_in_thread`), and virtual time stands
  still until it returns. A step that waits in its thread for virtual time to pass (a
  ``trio.from_thread.run(trio.sleep, ...)``) would then wait for ever: docs/testing.md
  says so.

Outside a MockClock both are plain ``trio.to_thread.run_sync`` calls.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import trio

if TYPE_CHECKING:
    import trio.testing

T = TypeVar("T")


def _mock_clock() -> trio.testing.MockClock | None:
    # trio.testing is not imported here: it pulls in pytest (a tenth of a second at
    # every start of the CLI). A program that made a MockClock has imported it.
    testing = sys.modules.get("trio.testing")
    if testing is None:
        return None
    clock = trio.lowlevel.current_clock()
    return clock if isinstance(clock, testing.MockClock) else None


async def run_io(fn: Callable[[], T], *, limiter: trio.CapacityLimiter) -> T:
    """Run the blocking storage call `fn` in a worker thread, or inline under a MockClock.
    Not abandoned on cancel: a transaction half-way must finish or roll back first."""
    if _mock_clock() is None:
        return await trio.to_thread.run_sync(fn, limiter=limiter)
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        return fn()
    finally:
        await trio.lowlevel.cancel_shielded_checkpoint()


class _Pause:
    """How many worker-thread steps are running, and the threshold they paused."""

    __slots__ = ("count", "threshold")

    def __init__(self, threshold: float) -> None:
        self.count = 0
        self.threshold = threshold


_PAUSE: trio.lowlevel.RunVar[_Pause | None] = trio.lowlevel.RunVar("trioflow_pause", default=None)


async def run_in_thread(fn: Callable[..., T], *args: object) -> T:
    """``trio.to_thread.run_sync(fn, *args)``, with MockClock's autojump paused meanwhile."""
    clock = _mock_clock()
    pause = _PAUSE.get()
    paused = pause is not None and pause.count > 0
    if clock is None or (not paused and clock.autojump_threshold == math.inf):
        return await trio.to_thread.run_sync(fn, *args)
    if pause is None:
        pause = _Pause(clock.autojump_threshold)
        _PAUSE.set(pause)
    if pause.count == 0:
        pause.threshold = clock.autojump_threshold
        clock.autojump_threshold = math.inf
    pause.count += 1
    try:
        return await trio.to_thread.run_sync(fn, *args)
    finally:
        pause.count -= 1
        if pause.count == 0:
            clock.autojump_threshold = pause.threshold
