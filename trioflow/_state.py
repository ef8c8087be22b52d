"""The execution state of one run: its step records and everything else replay reads.

One object per run (`Run._state`), handed to the executor (each `Frame` holds it), and
changed only through its methods: the executor never assigns into its tables. So the
rules of a record live in one place (a resumed step keeps its payloads, a step that
ends leaves the in-flight table, a foreach item is noted for the journal), and a
durable run's `Tracked` tables see every change, since nothing else makes one.

`Run` is the handle over it (start, resume, cancel, watch); the watchers' events stay
with the run and the executor, which know when a change is worth one. Rejected: a
`Run` holding the tables with the executor writing into them (the state before this
module): the invariants were spread over three modules.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from . import _clock, _snapshot
from ._journal import Journal, Tracked
from ._results import StepResult
from ._snapshot import OutputRecord
from ._transitions import cancel_order

# `take_event` when no event of that name is queued.
NO_EVENT: Any = object()
# The fields of a step record that hold user data (checked when a run cannot be stored).
_RECORD_DATA = ("output", "payload", "suspend_payload", "resume_payload")


class ExecutionState:
    """A run's records, progress, states, input, outcome, queued events and stored
    outputs; for a durable run, also what of them is stored (`journal`).

    Read the attributes freely; change them only through the methods (a durable run's
    tables are `Tracked`: a change made around them would never be stored)."""

    __slots__ = (
        "error",
        "in_flight",
        "input",
        "journal",
        "outputs",
        "pending_events",
        "progress",
        "result",
        "states",
        "steps",
        "suspended",
    )

    def __init__(self) -> None:
        self.steps: dict[str, StepResult] = {}
        # The steps in progress, under their key of declaration indices (cancel order).
        self.in_flight: dict[str, tuple[int, ...]] = {}
        # A loop's (iteration, output, done), a foreach's finished outputs by index, a
        # sleep's or event wait's wall-clock deadline, an event's data.
        self.progress: dict[str, Any] = {}
        self.states: dict[str, Any] = {}  # workflow prefix ("" for the run) -> its state
        self.input: Any = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.suspended: list[str] = []
        self.pending_events: dict[str, deque[Any]] = {}
        # Output events of steps created with store_output_events=True (bounded).
        self.outputs: list[OutputRecord] = []
        # What of a durable run is stored (None: a run in memory, or not stored yet).
        self.journal: Journal | None = None

    # --- steps ------------------------------------------------------------------------

    def begin_step(
        self, path: str, payload: Any, key: tuple[int, ...], previous: StepResult | None
    ) -> None:
        """Record `path` running (`previous`: its record from an earlier execution)."""
        if previous is not None and previous.status == "suspended":
            # A resumed step keeps what it suspended with and what it was resumed with.
            record = StepResult(
                status="running",
                payload=payload,
                started_at=_clock.wall_clock(),
                suspend_payload=previous.suspend_payload,
                resume_payload=previous.resume_payload,
            )
        else:
            record = StepResult(status="running", payload=payload, started_at=_clock.wall_clock())
        self.steps[path] = record
        self.in_flight[path] = key

    def wait_step(self, path: str, payload: Any, key: tuple[int, ...]) -> None:
        """Record `path` ``'waiting'`` (a sleep, an event wait): in flight."""
        self.steps[path] = StepResult(
            status="waiting", payload=payload, started_at=_clock.wall_clock()
        )
        self.in_flight[path] = key

    def succeed(self, path: str, output: Any, payload: Any) -> None:
        """`end_step` for the common outcome, without its keyword plumbing (the hot path)."""
        current = self.steps[path]
        if current.resume_payload is not None:
            self.end_step(path, "success", output=output, payload=payload)
            return
        del self.in_flight[path]
        self.steps[path] = StepResult(
            status="success",
            output=output,
            payload=payload,
            started_at=current.started_at,
            ended_at=_clock.wall_clock(),
        )

    def end_step(self, path: str, status: str, **fields: Any) -> None:
        """Record a step's outcome: it is no longer in flight."""
        del self.in_flight[path]
        current = self.steps[path]
        if current.resume_payload is not None and status != "suspended":
            fields.setdefault("resume_payload", current.resume_payload)
            fields.setdefault("suspend_payload", current.suspend_payload)
        self.steps[path] = StepResult(
            status=status,  # type: ignore[arg-type]
            started_at=current.started_at,
            ended_at=_clock.wall_clock(),
            **fields,
        )

    def unbegin(self, path: str) -> None:
        """Take back the start of the step at `path`, if it is in flight: it never ran
        (the write before it failed)."""
        if path in self.in_flight:
            del self.in_flight[path]
            del self.steps[path]

    def resume_step(self, path: str, data: Any) -> None:
        """The suspended step at `path` is resumed with `data`."""
        self.steps[path] = msgspec.structs.replace(self.steps[path], resume_payload=data)

    def cancel_in_flight(self, key: tuple[int, ...], keep: str | None = None) -> list[str]:
        """Record the steps in flight under `key` ``'canceled'``, in declaration order
        (`keep` aside); the paths so recorded."""
        now = _clock.wall_clock()
        canceled = []
        for path in cancel_order(self.in_flight, key):
            if path == keep:
                continue
            del self.in_flight[path]
            record = self.steps[path]
            self.steps[path] = StepResult(
                status="canceled",
                payload=record.payload,
                started_at=record.started_at,
                ended_at=now,
            )
            canceled.append(path)
        return canceled

    def fail_in_flight(self, error: BaseException) -> None:
        """Record every step in flight ``'failed'`` with `error`."""
        now = _clock.wall_clock()
        for path in list(self.in_flight):
            del self.in_flight[path]
            self.steps[path] = msgspec.structs.replace(
                self.steps[path], status="failed", error=error, ended_at=now
            )

    def cancel_idle(self) -> None:
        """The run is canceled while nothing executes it: its suspended, waiting or
        running steps become ``'canceled'``."""
        now = _clock.wall_clock()
        for path, record in self.steps.items():
            if record.status in ("suspended", "waiting", "running"):
                self.steps[path] = msgspec.structs.replace(record, status="canceled", ended_at=now)

    # --- progress, states, events, outputs ----------------------------------------------

    def set_progress(self, key: str, value: Any) -> None:
        self.progress[key] = value

    def start_items(self, path: str) -> dict[int, Any]:
        """The outputs of the finished items of the foreach at `path`, by index: kept in
        its progress, filled in by `item_done`."""
        # Keys come back as strings from a snapshot.
        done = {int(i): output for i, output in self.progress.get(path, {}).items()}
        self.progress[path] = done
        return done

    def item_done(self, path: str, done: dict[int, Any], index: int, output: Any) -> None:
        """Item `index` of the foreach at `path` finished: `done` is what `start_items`
        returned (one entry in the journal, not the whole table again)."""
        done[index] = output
        progress = self.progress
        if isinstance(progress, Tracked):
            progress.note_item(path, index)

    def forget_under(self, prefix: str) -> None:
        """Drop the records and progress of the steps under `prefix` (a finished
        iteration of a nested workflow), so that the next iteration does not replay them."""
        for table in (self.steps, self.progress):
            for stale in [path for path in table if path.startswith(prefix)]:
                del table[stale]

    def set_state(self, prefix: str, value: Any) -> None:
        """The state of the workflow at `prefix` ("" for the run) is now `value`."""
        self.states[prefix] = value

    def add_event(self, name: str, data: Any) -> None:
        self.pending_events.setdefault(name, deque()).append(data)

    def take_event(self, name: str) -> Any:
        """The oldest queued event `name`, or `NO_EVENT`."""
        queue = self.pending_events.get(name)
        if not queue:
            return NO_EVENT
        data = queue.popleft()
        if not queue:
            del self.pending_events[name]
        return data

    def add_output(self, path: str, data: Any) -> None:
        """One more stored output event of the step at `path`."""
        _snapshot.append_output(self.outputs, path, data, _clock.wall_clock())

    # --- the run's own fields -----------------------------------------------------------

    def set_input(self, value: Any) -> None:
        self.input = value
        if self.journal is not None:  # stored with the start
            self.journal.input_stored = False

    def set_result(self, value: Any) -> None:
        self.result = value

    def set_error(self, error: BaseException | None) -> None:
        self.error = error

    def set_suspended(self, paths: list[str]) -> None:
        self.suspended = paths

    def load(
        self,
        *,
        input_data: Any,
        result: Any,
        error: BaseException | None,
        steps: dict[str, StepResult],
        progress: dict[str, Any],
        states: dict[str, Any],
        suspended: list[str],
        pending_events: dict[str, deque[Any]],
        outputs: list[OutputRecord],
    ) -> None:
        """Take the state of a stored run (not tracked: `track` follows)."""
        self.input, self.result, self.error = input_data, result, error
        self.steps, self.progress, self.states = steps, progress, states
        self.suspended, self.pending_events, self.outputs = suspended, pending_events, outputs

    def track(self, *, entries: int = 0, input_stored: bool = True) -> Journal:
        """Make the run durable from here: note the changes to its tables from now on,
        for its journal (which holds `entries` entries so far)."""
        self.steps = Tracked(self.steps)
        self.progress = Tracked(self.progress)
        self.states = Tracked(self.states)
        outputs = self.outputs
        self.journal = Journal(
            entries,
            input_stored=input_stored,
            outputs_stored=outputs[-1].seq + 1 if outputs else 0,
        )
        return self.journal

    def drop_unencodable(self) -> list[tuple[str | None, str, Any]]:
        """Drop the data msgspec cannot encode; where each came from, as (step path or
        None, what it was, the value), in the order found."""
        found: list[tuple[str | None, str, Any]] = []
        for path, record in self.steps.items():
            bad = [name for name in _RECORD_DATA if not _snapshot.encodable(getattr(record, name))]
            for name in bad:
                what = "input" if name == "payload" else name.replace("_", " ")
                found.append((path, f"the {what} of step {path!r}", getattr(record, name)))
            if bad:
                self.steps[path] = msgspec.structs.replace(record, **dict.fromkeys(bad))
        for table, what in ((self.progress, "progress"), (self.states, "state")):
            for key, value in list(table.items()):
                if not _snapshot.encodable(value):
                    found.append((None, f"the {what} kept under {key or 'the run'!r}", value))
                    del table[key]
        for name, queue in list(self.pending_events.items()):
            for data in queue:
                if not _snapshot.encodable(data):
                    found.append((None, f"the data of event {name!r}", data))
                    del self.pending_events[name]
                    break
        if not _snapshot.encodable(self.input):
            found.append((None, "the run's input", self.input))
            self.input = None
        if not _snapshot.encodable(self.result):
            found.append((None, "the run's result", self.result))
            self.result = None
        return found

    def fail_step(self, path: str, error: BaseException) -> None:
        """Record the step at `path` ``'failed'`` with `error`, in flight or not."""
        self.steps[path] = msgspec.structs.replace(
            self.steps[path], status="failed", error=error, ended_at=_clock.wall_clock()
        )
        self.in_flight.pop(path, None)
