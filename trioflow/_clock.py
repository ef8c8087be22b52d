"""The one wall clock trioflow reads, for timestamps it stores and for `sleep_until`.

Waiting always goes through Trio's clock; this clock only says what time it is in the
world, so persisted timestamps mean something in another process. `trioflow.testing`
swaps it for one tied to `trio.current_time()` so that `MockClock` drives it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The current wall clock. Read it through this module (`_clock.wall_clock()`), never
# imported by name, so that a swap is seen; `wall_time()` does so. A step's records call
# it directly: two timestamps per step, and a Python call less for each.
wall_clock: Callable[[], float] = time.time  # noqa: TID251 - the sanctioned wall clock


def wall_time() -> float:
    """Seconds since the Unix epoch, from the current wall clock."""
    return wall_clock()


def set_wall_clock(clock: Callable[[], float] | None) -> Callable[[], float]:
    """Install `clock` (or the real one for ``None``); return the one it replaces."""
    global wall_clock
    previous = wall_clock
    wall_clock = time.time if clock is None else clock  # noqa: TID251
    return previous
