"""Virtual wall time: trioflow's wall clock tied to Trio's clock, so `MockClock` drives
`sleep_until` deadlines and the timestamps trioflow stores."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator

import trio

from .._clock import set_wall_clock

#: The wall-clock time that virtual time 0 stands for while the wall clock is tied.
EPOCH = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@contextlib.contextmanager
def tie_wall_clock(epoch: dt.datetime = EPOCH) -> Iterator[dt.datetime]:
    """Make trioflow's wall clock read ``epoch + trio.current_time()``, then restore the
    clock it replaced. Yields `epoch`.

    Under ``MockClock`` (whose time starts at 0) a ``.sleep_until(epoch + 5 s)`` then
    waits exactly 5 virtual seconds, and a step that starts at virtual time 2 is stored
    with ``started_at == epoch.timestamp() + 2``. The clock is read only inside
    ``trio.run``; tie it around the run (a sync fixture, or around ``trio.run``).
    """
    if epoch.tzinfo is None:
        raise ValueError(f"tie_wall_clock({epoch!r}) needs a timezone-aware datetime")
    base = epoch.timestamp()
    previous = set_wall_clock(lambda: base + trio.current_time())
    try:
        yield epoch
    finally:
        set_wall_clock(previous)


def virtual_datetime(seconds: float, epoch: dt.datetime = EPOCH) -> dt.datetime:
    """The timezone-aware datetime that virtual time `seconds` stands for under
    `tie_wall_clock` (for ``.sleep_until()`` and for comparing stored timestamps)."""
    return epoch + dt.timedelta(seconds=seconds)
