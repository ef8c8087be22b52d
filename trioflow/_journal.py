"""A durable run as stored: a header written once, and a journal of entries after it.

The header is the snapshot the run was created with (its input, when it was enqueued or
forked; everything, for a run an older trioflow stored whole). Each later change is an
entry appended once and never rewritten: a step began or ended, a loop's or a foreach's
progress, a state, an output written by a step, the run's own fields. Replay folds the
entries over the header in order (`fold`).

Before the journal a run was rewritten whole after every step, so a run's writes grew
with its length: a 1,000-step chain wrote 64 MB, a 50 MB input through 3 steps 1.2 GB.
Now each value is written once. A step's input is nearly always the run's input or the
output of the step before it, and a pass-through step's output is its input: its entry
then names where the value already is (``payload_ref``, ``output_is_payload``) instead of
holding it again.

The executor does not know about entries. A durable run's tables are `Tracked` dicts
that note which keys changed; `Journal.take` turns the changes since the last write
into entries, so several changes between two writes cost one write.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from . import _snapshot
from ._errors import SnapshotError
from ._results import RunStatus, StepResult, StepStatus
from ._snapshot import ErrorRecord, OutputRecord, Snapshot, StepRecord


class StoredRun(Protocol):
    """A stored run as the storage reads it (`storage.RunRow`, below which this is)."""

    @property
    def run_id(self) -> str: ...
    @property
    def snapshot(self) -> bytes: ...
    @property
    def entries(self) -> tuple[bytes, ...]: ...


class State(Protocol):
    """What the journal reads of a run's execution state (`_state.ExecutionState`,
    which imports this module)."""

    steps: dict[str, StepResult]
    progress: dict[str, Any]
    states: dict[str, Any]
    input: Any
    result: Any
    outputs: list[OutputRecord]


class Run(Protocol):
    """What the journal reads of a durable run (`_run.Run`, which imports this module)."""

    run_id: str

    @property
    def _state(self) -> State: ...
    def _run_fields(self) -> RunSet: ...


# Values of ``payload_ref``: the payload is the run's input, the payload the step's last
# record held, or the output of the step at that path (``OUTPUT`` + path), as folded up
# to this entry.
INPUT = "input"
SAME = "same"
OUTPUT = "output:"


class _Entry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="kind"):
    pass


class StepSet(_Entry, frozen=True, kw_only=True, tag="step"):
    """The step at `path` now has this record (it began, ended, suspended...)."""

    path: str
    status: StepStatus
    output: Any = None
    payload: Any = None
    error: ErrorRecord | None = None
    suspend_payload: Any = None
    resume_payload: Any = None
    started_at: float | None = None
    ended_at: float | None = None
    payload_ref: str | None = None  # where the payload is, when it is not held here
    output_is_payload: bool = False


class Removed(_Entry, frozen=True, kw_only=True, tag="removed"):
    """These keys of a table are gone (a nested workflow's finished loop iteration)."""

    table: Literal["steps", "progress", "states"]
    keys: list[str]


class TableSet(_Entry, frozen=True, kw_only=True, tag="set"):
    """The progress (of a loop, foreach, sleep or event wait) or the state kept at `key`."""

    table: Literal["progress", "states"]
    key: str
    value: Any = None


class ItemDone(_Entry, frozen=True, kw_only=True, tag="item"):
    """Item `index` of the foreach at `path` finished with `output`."""

    path: str
    index: int
    output: Any = None


class InputSet(_Entry, frozen=True, kw_only=True, tag="input"):
    value: Any = None


class OutputAdded(_Entry, frozen=True, kw_only=True, tag="output"):
    """One more stored ``workflow-step-output``."""

    record: OutputRecord


class RunSet(_Entry, frozen=True, kw_only=True, tag="run"):
    """The run's own fields, all of them, as they are now."""

    status: RunStatus
    result: Any = None
    result_ref: str | None = None  # OUTPUT + path: the result is that step's output
    error: ErrorRecord | None = None
    suspended: list[str] = []
    pending_events: dict[str, list[Any]] = {}
    cancel_requested: bool = False
    cancel_reason: str | None = None
    events_taken: int = 0
    timeout: float | None = None
    deadline: float | None = None


class CanceledIdle(_Entry, frozen=True, kw_only=True, tag="canceled-idle"):
    """A run that no process executed was canceled by its storage, in its own
    transaction: its unfinished steps became ``'canceled'`` at `at`."""

    reason: str | None = None
    at: float


Entry = StepSet | Removed | TableSet | ItemDone | InputSet | OutputAdded | RunSet | CanceledIdle

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Entry)
_RUN_FIELDS = tuple(f for f in RunSet.__struct_fields__ if f not in ("result", "result_ref"))

V = TypeVar("V")


def canceled_idle(reason: str | None, now: float) -> bytes:
    """The entry a storage appends when it cancels a run that nobody executes."""
    return _encoder.encode(CanceledIdle(reason=reason, at=now))


_NOTHING_TAKEN: tuple[dict[str, None], dict[str, None], list[tuple[str, int]]] = ({}, {}, [])


class Tracked(dict[str, V]):
    """A table of a durable run that notes which keys were set or deleted since the run
    was last stored. Only item assignment and ``del`` are noted: the executor changes
    these tables in no other way (and a foreach's finished item with `note_item`)."""

    __slots__ = ("changed", "done_items", "removed")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.changed: dict[str, None] = {}  # an ordered set
        self.removed: dict[str, None] = {}
        self.done_items: list[tuple[str, int]] = []  # (foreach path, index) finished

    def __setitem__(self, key: str, value: V) -> None:
        dict.__setitem__(self, key, value)
        self.changed[key] = None

    def __delitem__(self, key: str) -> None:
        dict.__delitem__(self, key)
        self.changed.pop(key, None)
        self.removed[key] = None

    def note_item(self, path: str, index: int) -> None:
        """Item `index` of the foreach progress at `path` was set in place."""
        self.done_items.append((path, index))

    def take(self) -> tuple[dict[str, None], dict[str, None], list[tuple[str, int]]]:
        """What changed since the last take (read only), noted anew from here."""
        if not (self.changed or self.removed or self.done_items):
            return _NOTHING_TAKEN  # the usual case of most tables: nothing to allocate
        taken = (self.changed, self.removed, self.done_items)
        self.changed, self.removed, self.done_items = {}, {}, []
        return taken

    def give_back(
        self, taken: tuple[dict[str, None], dict[str, None], list[tuple[str, int]]]
    ) -> None:
        """Note again what `take` returned and was not stored after all."""
        changed, removed, items = taken
        self.changed = {**changed, **self.changed}
        self.removed = {**removed, **self.removed}
        self.done_items = [*items, *self.done_items]


class Journal:
    """What of a durable run is stored: the number of its last entry, and enough of
    what was written to refer to it instead of writing it again. One per durable run,
    held by the run; `take` and then `stored` or `not_stored` around each write."""

    __slots__ = (
        "_by_output",
        "_pending",
        "_run_fields",
        "_stored_steps",
        "input_stored",
        "outputs_stored",
        "result",
        "seq",
    )

    def __init__(self, seq: int, *, input_stored: bool, outputs_stored: int) -> None:
        self.seq = seq  # the number of the last stored entry
        self.input_stored = input_stored
        self.outputs_stored = outputs_stored  # the seq of the next output to store
        self.result: Any = None  # the result object last stored
        self._run_fields: bytes = b""  # the run's own fields as last stored
        self._stored_steps: dict[str, StepResult] = {}
        self._by_output: dict[int, str] = {}  # id of a stored step output -> its path
        self._pending: Any = None

    def loaded(self, run: Run) -> None:
        """`run` was just loaded from the storage: its own fields are stored as they are."""
        self._run_fields = _encoder.encode(run._run_fields())
        self.result = run._state.result

    def nothing_new(self, run: Run, unless_only: str | None) -> bool:
        """Whether nothing of `run` changed since it was stored, but maybe the record of
        the step at `unless_only`."""
        state = run._state
        steps, progress, states = state.steps, state.progress, state.states
        assert isinstance(steps, Tracked) and isinstance(progress, Tracked)
        assert isinstance(states, Tracked)
        changed = steps.changed
        outputs = run._state.outputs
        return (
            self.input_stored
            and (not changed or (len(changed) == 1 and unless_only in changed))
            and not (steps.removed or progress.changed or progress.removed or progress.done_items)
            and not (states.changed or states.removed)
            and not (outputs and outputs[-1].seq >= self.outputs_stored)
            and run._state.result is self.result
            and _encoder.encode(run._run_fields()) == self._run_fields
        )

    def take(self, run: Run) -> list[bytes]:
        """The entries of what changed in `run` since it was last stored (the first of
        them numbered ``seq + 1``). Raises `UnstorableDataError` for data msgspec cannot
        encode, with nothing taken."""
        state = run._state
        steps, progress, states = state.steps, state.progress, state.states
        assert isinstance(steps, Tracked) and isinstance(progress, Tracked)
        assert isinstance(states, Tracked)
        taken = (steps.take(), progress.take(), states.take())
        entries: list[bytes] = []
        written: dict[str, StepResult] = {}
        try:
            run_id = run.run_id

            def encode(entry: Entry, where: str) -> bytes:
                return _snapshot.encode_value(run_id, where or "some of its data", entry)

            if not self.input_stored:
                entries.append(encode(InputSet(value=run._state.input), "the run's input"))
            changed, removed, _ = taken[0]
            if removed:
                entries.append(encode(Removed(table="steps", keys=list(removed)), ""))
            for path in changed:
                record = steps.get(path)
                if record is None:  # set, then removed: its removal is noted
                    continue
                entries.append(encode(self._step_entry(run, path, record, written), path))
                written[path] = record
            tables: tuple[tuple[Literal["progress", "states"], Any, Tracked[Any]], ...] = (
                ("progress", taken[1], progress),
                ("states", taken[2], states),
            )
            for table_name, (changed, removed, items), table in tables:
                if not (changed or removed or items):
                    continue
                if removed:
                    entries.append(encode(Removed(table=table_name, keys=list(removed)), ""))
                for key in changed:
                    if key in table:
                        entry = TableSet(table=table_name, key=key, value=table[key])
                        entries.append(encode(entry, key))
                for path, index in items:
                    if path in table and path not in changed:
                        output = table[path][index]
                        entries.append(
                            encode(ItemDone(path=path, index=index, output=output), path)
                        )
            outputs = run._state.outputs
            if outputs and outputs[-1].seq >= self.outputs_stored:
                for record in outputs:
                    if record.seq >= self.outputs_stored:
                        entries.append(encode(OutputAdded(record=record), record.step_id))
            fields = run._run_fields()
            encoded = encode(fields, "")
            run_fields = None
            if encoded != self._run_fields or run._state.result is not self.result:
                entries.append(self._run_entry(run, fields, written))
                run_fields = encoded
        except BaseException:
            for table, table_taken in zip((steps, progress, states), taken, strict=True):
                table.give_back(table_taken)
            raise
        outputs_next = outputs[-1].seq + 1 if outputs else 0
        self._pending = (taken, written, outputs_next, run._state.result, run_fields)
        return entries

    def stored(self, count: int) -> None:
        """The entries `take` gave were written."""
        taken, written, outputs_next, result, run_fields = self._pending
        self._pending = None
        self.seq += count
        self.input_stored = True
        self.outputs_stored = outputs_next
        self.result = result
        stored_steps, by_output = self._stored_steps, self._by_output
        for path in taken[0][1]:  # removed steps
            stored_steps.pop(path, None)
        for path, record in written.items():
            old = stored_steps.get(path)
            if old is not None and old.output is not None and by_output.get(id(old.output)) == path:
                del by_output[id(old.output)]
            stored_steps[path] = record
            if record.output is not None:
                by_output[id(record.output)] = path
        if run_fields is not None:
            self._run_fields = run_fields

    def not_stored(self, run: Run) -> None:
        """The entries `take` gave were not written: note their changes again."""
        taken = self._pending[0]
        self._pending = None
        for table, table_taken in zip(
            (run._state.steps, run._state.progress, run._state.states), taken, strict=True
        ):
            assert isinstance(table, Tracked)
            table.give_back(table_taken)

    def _step_entry(
        self, run: Run, path: str, record: StepResult, written: dict[str, StepResult]
    ) -> StepSet:
        payload = record.payload
        ref = None
        if payload is not None:
            previous = written.get(path) or self._stored_steps.get(path)
            if payload is run._state.input:
                ref = INPUT
            elif previous is not None and previous.payload is payload:
                ref = SAME
            else:
                ref = self._output_ref(payload, written)
        output_is_payload = record.output is payload and payload is not None
        return StepSet(
            path=path,
            status=record.status,
            output=None if output_is_payload else record.output,
            payload=payload if ref is None else None,
            error=_snapshot.error_record(record.error, path),
            suspend_payload=record.suspend_payload,
            resume_payload=record.resume_payload,
            started_at=record.started_at,
            ended_at=record.ended_at,
            payload_ref=ref,
            output_is_payload=output_is_payload,
        )

    def _output_ref(self, value: Any, written: dict[str, StepResult]) -> str | None:
        """``OUTPUT + path`` if `value` is the output of the step at `path` as stored
        (or as written by the entries being made), else None. By identity: a value
        equal but built anew is not known to be stored."""
        source = self._by_output.get(id(value))
        for path, record in written.items():
            if record.output is value:
                source = path
        if source is None:
            return None
        stored = written.get(source) or self._stored_steps.get(source)
        return OUTPUT + source if stored is not None and stored.output is value else None

    def _run_entry(self, run: Run, fields: RunSet, written: dict[str, StepResult]) -> bytes:
        """The run's fields, and its result or where it is stored already (a run's
        result is nearly always its last step's output)."""
        result = run._state.result
        result_ref = None if result is None else self._output_ref(result, written)
        entry = msgspec.structs.replace(
            fields, result=None if result_ref else result, result_ref=result_ref
        )
        return _snapshot.encode_value(run.run_id, "the run's result", entry)


def of_row(row: StoredRun) -> Snapshot:
    """The stored run as one snapshot."""
    return fold(row.run_id, row.snapshot, row.entries)


def fold(run_id: str, header: bytes, entries: Iterable[bytes]) -> Snapshot:
    """The run as stored: its header with its entries applied in order. Anything
    unreadable raises `SnapshotError` naming the run."""
    snapshot = _snapshot.decode(run_id, header)
    entries = list(entries)
    if not entries:
        return snapshot
    steps = dict(snapshot.steps)
    tables: dict[str, dict[str, Any]] = {
        "steps": steps,
        "progress": dict(snapshot.progress),
        "states": dict(snapshot.states),
    }
    outputs = list(snapshot.outputs)
    run_input = snapshot.input
    fields: dict[str, Any] = {}
    for seq, data in enumerate(entries, 1):
        try:
            entry = _decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotError(
                run_id, f"its journal entry {seq} is corrupt or not a trioflow entry ({exc})"
            ) from exc
        if isinstance(entry, StepSet):
            steps[entry.path] = _step_record(run_id, seq, entry, steps, run_input)
        elif isinstance(entry, TableSet):
            tables[entry.table][entry.key] = entry.value
        elif isinstance(entry, RunSet):
            fields = {name: getattr(entry, name) for name in _RUN_FIELDS}
            fields["result"] = entry.result
            if entry.result_ref is not None:
                fields["result"] = _referred(run_id, seq, entry.result_ref, steps).output
        elif isinstance(entry, ItemDone):
            done = tables["progress"].get(entry.path)
            if not isinstance(done, dict):
                done = tables["progress"][entry.path] = {}
            done[str(entry.index)] = entry.output
        elif isinstance(entry, Removed):
            table = tables[entry.table]
            for key in entry.keys:
                table.pop(key, None)
        elif isinstance(entry, InputSet):
            run_input = entry.value
        elif isinstance(entry, OutputAdded):
            outputs.append(entry.record)
            if len(outputs) > _snapshot.STORED_OUTPUTS:
                del outputs[: len(outputs) - _snapshot.STORED_OUTPUTS]
        else:
            fields = _cancel_idle(snapshot, fields, steps, entry)
    return msgspec.structs.replace(
        snapshot,
        input=run_input,
        steps=steps,
        progress=tables["progress"],
        states=tables["states"],
        outputs=outputs,
        **fields,
    )


def _referred(run_id: str, seq: int, ref: str, steps: dict[str, StepRecord]) -> StepRecord:
    record = steps.get(ref.removeprefix(OUTPUT)) if ref.startswith(OUTPUT) else None
    if record is None:
        raise SnapshotError(
            run_id, f"its journal entry {seq} refers to {ref!r}, which is not stored"
        )
    return record


def _step_record(
    run_id: str, seq: int, entry: StepSet, steps: dict[str, StepRecord], run_input: Any
) -> StepRecord:
    payload, ref = entry.payload, entry.payload_ref
    if ref == INPUT:
        payload = run_input
    elif ref == SAME:
        previous = steps.get(entry.path)
        if previous is None:
            raise SnapshotError(
                run_id, f"its journal entry {seq} refers to a record of {entry.path!r} it lacks"
            )
        payload = previous.payload
    elif ref is not None:
        payload = _referred(run_id, seq, ref, steps).output
    return StepRecord(
        status=entry.status,
        output=payload if entry.output_is_payload else entry.output,
        payload=payload,
        error=entry.error,
        suspend_payload=entry.suspend_payload,
        resume_payload=entry.resume_payload,
        started_at=entry.started_at,
        ended_at=entry.ended_at,
    )


def _cancel_idle(
    snapshot: Snapshot, fields: dict[str, Any], steps: dict[str, StepRecord], entry: CanceledIdle
) -> dict[str, Any]:
    """What a storage's cancel of an idle run means: its unfinished steps ``'canceled'``."""
    for path, record in steps.items():
        if record.status in ("running", "waiting", "suspended"):
            steps[path] = msgspec.structs.replace(record, status="canceled", ended_at=entry.at)
    fields = fields or {name: getattr(snapshot, name) for name in (*_RUN_FIELDS, "result")}
    return {
        **fields,
        "status": "canceled",
        "suspended": [],
        "cancel_requested": True,
        "cancel_reason": entry.reason,
    }
