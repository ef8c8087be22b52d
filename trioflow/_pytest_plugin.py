"""trioflow's pytest plugin (entry point ``pytest11: trioflow``): fixtures for testing
workflows under pytest-trio, with ``trio_mode = true`` or with ``@pytest.mark.trio``.

Loaded by every pytest run once trioflow is installed, so it stays cheap: at import it
defines fixtures and nothing else; trioflow.testing is imported by the fixtures that use
it. The async fixtures need pytest-trio (they run in the test's ``trio.run``); disable
the plugin with ``-p no:trioflow``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import trio.testing

    from trioflow import Engine, Workflow
    from trioflow.testing import EngineFactory, EventRecorder


@pytest.fixture
def trioflow_wall_clock() -> Iterator[dt.datetime]:
    """Tie trioflow's wall clock to Trio's clock for the test: virtual time 0 is
    `trioflow.testing.EPOCH` (2030-01-01 UTC), so ``.sleep_until()`` and stored
    timestamps follow the test's clock. Yields the epoch."""
    from trioflow.testing import tie_wall_clock

    with tie_wall_clock() as epoch:
        yield epoch


@pytest.fixture
def trioflow_clock(trioflow_wall_clock: dt.datetime) -> trio.testing.MockClock:
    """A ``MockClock(autojump_threshold=0)`` for the test's ``trio.run`` (use it instead
    of pytest-trio's ``autojump_clock``), with the wall clock tied to it: time starts at
    0 and jumps to the next deadline whenever every task is blocked."""
    import trio.testing

    return trio.testing.MockClock(autojump_threshold=0)


@pytest.fixture
def trioflow_workflows() -> list[Workflow]:
    """The workflows ``trioflow_engine`` knows: none, unless a test module or conftest
    overrides this fixture (``return [my_workflow]``)."""
    return []


@pytest.fixture
async def trioflow_engine_factory() -> AsyncIterator[EngineFactory]:
    """``engine = await trioflow_engine_factory([workflow])``: in-memory engines (or on
    ``storage=``) that close at the end of the test; see `trioflow.testing.EngineFactory`."""
    import trio

    from trioflow.testing import EngineFactory

    async with trio.open_nursery() as nursery:
        yield EngineFactory(nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def trioflow_engine(
    trioflow_engine_factory: EngineFactory, trioflow_workflows: list[Workflow]
) -> Engine:
    """An open engine on a fresh `MemoryStorage`, knowing ``trioflow_workflows``."""
    return await trioflow_engine_factory(trioflow_workflows)


@pytest.fixture
def trioflow_events() -> Iterator[EventRecorder]:
    """``recording = trioflow_events.record(run)`` (before starting the run) records each
    of its events with its virtual time; see `trioflow.testing.Recording`."""
    from trioflow.testing import EventRecorder

    recorder = EventRecorder()
    try:
        yield recorder
    finally:
        recorder.close()
