"""Tools for testing workflows and the steps in them, deterministically.

- pytest fixtures (registered through the ``pytest11`` entry point when trioflow is
  installed; they need pytest-trio): ``trioflow_clock``, ``trioflow_wall_clock``,
  ``trioflow_engine``, ``trioflow_engine_factory``, ``trioflow_workflows``,
  ``trioflow_events``;
- `tie_wall_clock` / `virtual_datetime` / `EPOCH`: wall time that follows Trio's clock;
- `record_events` / `Recording`: every event of a run, with its virtual time;
- `override_steps`: a copy of a workflow with some steps replaced by fakes;
- `drive` / `Driver`: run until a step starts, waits or suspends, then act there;
- `cancellation_sweep`: cancel a run at every point where it blocks and check your
  invariants each time.

See docs/testing.md. Importing this module does not import pytest.
"""

from ._testing._clock import EPOCH as EPOCH
from ._testing._clock import tie_wall_clock as tie_wall_clock
from ._testing._clock import virtual_datetime as virtual_datetime
from ._testing._driver import Driver as Driver
from ._testing._driver import drive as drive
from ._testing._fixtures import EngineFactory as EngineFactory
from ._testing._fixtures import EventRecorder as EventRecorder
from ._testing._overrides import override_steps as override_steps
from ._testing._recording import Recording as Recording
from ._testing._recording import record_events as record_events
from ._testing._sweep import CancellationSweepError as CancellationSweepError
from ._testing._sweep import SweepAttempt as SweepAttempt
from ._testing._sweep import SweepFailure as SweepFailure
from ._testing._sweep import SweepPoint as SweepPoint
from ._testing._sweep import SweepReport as SweepReport
from ._testing._sweep import cancel_invariants as cancel_invariants
from ._testing._sweep import cancellation_sweep as cancellation_sweep
from ._util import fixup_module_metadata as _fixup_module_metadata

__all__ = [
    "EPOCH",
    "CancellationSweepError",
    "Driver",
    "EngineFactory",
    "EventRecorder",
    "Recording",
    "SweepAttempt",
    "SweepFailure",
    "SweepPoint",
    "SweepReport",
    "cancel_invariants",
    "cancellation_sweep",
    "drive",
    "override_steps",
    "record_events",
    "tie_wall_clock",
    "virtual_datetime",
]

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
