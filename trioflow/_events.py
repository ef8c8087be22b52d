"""Typed watch events and their fan-out to watchers.

Events are a tagged union of frozen Structs: encoded with a ``type`` field, and readable
as ``event.type``. A run with no watcher builds no event at all.

Each watcher has a bounded buffer of its own, so a watcher that stops reading costs the
run neither time nor unbounded memory: events that find the buffer full are counted and
dropped for that watcher alone, and the count reaches it as one ``watch-overflow`` event
once it reads again. ``workflow-finish`` is always delivered, even past the bound, so
every ``watch()`` ends. (Rejected: a memory channel per watcher. An unbounded one grows
without limit behind a stalled reader; a bounded one makes ``emit`` choose between
blocking the run and raising, and cannot say how much was lost.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ClassVar

import msgspec
import trio


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    run_id: str
    type_name: ClassVar[str]

    @property
    def type(self) -> str:
        return self.type_name


class WorkflowStart(_Event, frozen=True, kw_only=True, tag="workflow-start"):
    type_name: ClassVar[str] = "workflow-start"
    workflow_id: str


class WorkflowStepStart(_Event, frozen=True, kw_only=True, tag="workflow-step-start"):
    type_name: ClassVar[str] = "workflow-step-start"
    step_id: str
    status: str = "running"
    payload: Any = None


class WorkflowStepResult(_Event, frozen=True, kw_only=True, tag="workflow-step-result"):
    type_name: ClassVar[str] = "workflow-step-result"
    step_id: str
    status: str
    output: Any = None
    error: str | None = None


class WorkflowStepSuspended(_Event, frozen=True, kw_only=True, tag="workflow-step-suspended"):
    type_name: ClassVar[str] = "workflow-step-suspended"
    step_id: str
    status: str = "suspended"
    payload: Any = None


class WorkflowStepWaiting(_Event, frozen=True, kw_only=True, tag="workflow-step-waiting"):
    type_name: ClassVar[str] = "workflow-step-waiting"
    step_id: str
    status: str = "waiting"


class WorkflowStepProgress(_Event, frozen=True, kw_only=True, tag="workflow-step-progress"):
    """One `foreach` item finished: ``completed`` of ``total`` are done."""

    type_name: ClassVar[str] = "workflow-step-progress"
    step_id: str
    status: str
    item_index: int
    completed: int
    total: int


class WorkflowStepOutput(_Event, frozen=True, kw_only=True, tag="workflow-step-output"):
    """What a step wrote with ``await ctx.write(data)`` while it runs."""

    type_name: ClassVar[str] = "workflow-step-output"
    step_id: str
    data: Any = None


class WatchOverflow(_Event, frozen=True, kw_only=True, tag="watch-overflow"):
    """This watcher's buffer was full: `lost` events were dropped for it (for it alone;
    the run and other watchers were not affected)."""

    type_name: ClassVar[str] = "watch-overflow"
    lost: int


class WorkflowCanceled(_Event, frozen=True, kw_only=True, tag="workflow-canceled"):
    type_name: ClassVar[str] = "workflow-canceled"
    reason: str | None = None


class WorkflowFinish(_Event, frozen=True, kw_only=True, tag="workflow-finish"):
    type_name: ClassVar[str] = "workflow-finish"
    status: str
    result: Any = None
    error: str | None = None


WorkflowEvent = (
    WorkflowStart
    | WorkflowStepStart
    | WorkflowStepResult
    | WorkflowStepSuspended
    | WorkflowStepWaiting
    | WorkflowStepProgress
    | WorkflowStepOutput
    | WatchOverflow
    | WorkflowCanceled
    | WorkflowFinish
)

_decoder: msgspec.json.Decoder[WorkflowEvent] = msgspec.json.Decoder(WorkflowEvent)


def encode_event(event: WorkflowEvent) -> bytes:
    """The event as JSON, with its ``type`` tag (outputs encoded as msgspec can, and
    anything else as its ``str``): what ``trioflow --json`` prints, one per line."""
    return msgspec.json.encode(event, enc_hook=str)


def decode_event(data: bytes | str) -> WorkflowEvent:
    """An event back from `encode_event`'s JSON, as its typed Struct (by its ``type``
    tag). Outputs come back as plain JSON data."""
    return _decoder.decode(data)


DEFAULT_BUFFER = 1000


class EventStream:
    """What `Run.watch()` gives: an async iterator that ends after a `workflow-finish`."""

    __slots__ = ("_finished", "_watcher")

    def __init__(self, watcher: Watcher) -> None:
        self._watcher = watcher
        self._finished = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> WorkflowEvent:
        if self._finished:
            raise StopAsyncIteration
        try:
            event = await self._watcher.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if type(event) is WorkflowFinish:
            self._finished = True
        return event


class Watcher:
    """One watcher's bounded buffer. The run's fan-out calls `send_nowait`, which never
    blocks; the watcher's task awaits `receive`.

    The buffer holds at most `limit` events, plus the pending ``watch-overflow`` and the
    ``workflow-finish``, which are let past the bound.
    """

    __slots__ = ("_buffer", "_closed", "_limit", "_lost", "_lot", "_run_id", "refill")

    def __init__(self, limit: int) -> None:
        self._buffer: deque[WorkflowEvent] = deque()
        self._limit = limit
        # Events dropped since the watcher last had room, not yet reported. Reported
        # after everything buffered before them, before anything that comes after.
        self._lost = 0
        self._run_id = ""
        self._closed = False
        self._lot = trio.lowlevel.ParkingLot()
        # Set for a watch fed by polling (a run executing in another process): awaited
        # by the reader instead of parking, it waits a while and sends what it found.
        self.refill: Callable[[], Awaitable[None]] | None = None

    def send_nowait(self, event: WorkflowEvent) -> None:
        if self._closed:
            return
        buffer = self._buffer
        if len(buffer) >= self._limit and type(event) is not WorkflowFinish:
            self._lost += 1
            self._run_id = event.run_id
            return
        if self._lost:
            buffer.append(self._overflow())
        buffer.append(event)
        if self._lot:
            self._lot.unpark_all()

    def close(self) -> None:
        """No more events: `receive` drains the buffer, then raises `trio.EndOfChannel`."""
        self._closed = True
        self._lot.unpark_all()

    async def receive(self) -> WorkflowEvent:
        while True:
            if self._buffer or self._lost:
                # A checkpoint, as `MemoryReceiveChannel.receive` makes: the reader's
                # own cancellation is seen before it takes an event, so none is lost.
                await trio.lowlevel.checkpoint()
                if self._buffer:
                    return self._buffer.popleft()
                if self._lost:  # the reader caught up with everything before the loss
                    return self._overflow()
            elif self._closed:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel
            elif self.refill is not None:
                await self.refill()
            else:
                await self._lot.park()

    def _overflow(self) -> WatchOverflow:
        lost, self._lost = self._lost, 0
        return WatchOverflow(run_id=self._run_id, lost=lost)


class Watchers:
    """The fan-out: `emit` is synchronous and in order, and each watcher's buffer is
    bounded (`Watcher`), so a slow watcher never slows the run.

    `channels` holds anything with ``send_nowait(event)`` and ``close()``: the watchers
    of `Run.watch()`, and `trioflow.testing`'s recorder.
    """

    __slots__ = ("channels",)

    def __init__(self) -> None:
        self.channels: list[Watcher] = []

    def emit(self, event: WorkflowEvent) -> None:
        for channel in self.channels:
            channel.send_nowait(event)

    def end_all(self) -> None:
        """End every current watch without a ``workflow-finish``: the execution was
        interrupted from outside and will not finish here."""
        for channel in self.channels:
            channel.close()

    def watch(
        self, buffer: int = DEFAULT_BUFFER, elsewhere: Elsewhere | None = None
    ) -> _WatchContext:
        """A watch of these watchers' events, or, when ``await elsewhere(watcher)``
        says True as it begins, of the events `elsewhere` feeds the watcher."""
        return _WatchContext(self, check_buffer(buffer), elsewhere)


Elsewhere = Callable[[Watcher], Awaitable[bool]]


def check_buffer(buffer: object) -> int:
    if isinstance(buffer, bool) or not isinstance(buffer, int):
        raise TypeError(
            f"watch(buffer=...) takes a whole number of events, got {buffer!r}; the default is 1000"
        )
    if buffer < 1:
        raise ValueError(f"watch(buffer=...) must be at least 1 event, got {buffer!r}")
    return buffer


class _WatchContext:
    __slots__ = ("_elsewhere", "_watcher", "_watchers")

    def __init__(self, watchers: Watchers, buffer: int, elsewhere: Elsewhere | None) -> None:
        self._watchers = watchers
        self._watcher = Watcher(buffer)
        self._elsewhere = elsewhere

    async def __aenter__(self) -> EventStream:
        # Registered first: an event emitted while `elsewhere` looks is not missed.
        self._watchers.channels.append(self._watcher)
        try:
            if self._elsewhere is not None and await self._elsewhere(self._watcher):
                self._watchers.channels.remove(self._watcher)
            else:
                await trio.lowlevel.checkpoint()
        except BaseException:
            if self._watcher in self._watchers.channels:
                self._watchers.channels.remove(self._watcher)
            raise
        return EventStream(self._watcher)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._watcher in self._watchers.channels:
            self._watchers.channels.remove(self._watcher)
        self._watcher.close()
