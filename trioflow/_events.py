"""Typed watch events and their fan-out to watchers.

Events are a tagged union of frozen Structs: encoded with a ``type`` field, and readable
as ``event.type``. A run with no watcher builds no event at all.
"""

from __future__ import annotations

import math
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
    """The run began executing: its start, or a resume."""

    type_name: ClassVar[str] = "workflow-start"
    workflow_id: str


class WorkflowStepStart(_Event, frozen=True, kw_only=True, tag="workflow-step-start"):
    """A step (or a map, nested workflow, loop or foreach) started; ``payload`` is its
    input."""

    type_name: ClassVar[str] = "workflow-step-start"
    step_id: str
    status: str = "running"
    payload: Any = None


class WorkflowStepResult(_Event, frozen=True, kw_only=True, tag="workflow-step-result"):
    """A step ended: ``status`` is ``'success'`` (with ``output``), ``'failed'`` (with
    ``error``, the exception as text) or ``'canceled'``."""

    type_name: ClassVar[str] = "workflow-step-result"
    step_id: str
    status: str
    output: Any = None
    error: str | None = None


class WorkflowStepSuspended(_Event, frozen=True, kw_only=True, tag="workflow-step-suspended"):
    """A step called ``ctx.suspend(payload)``: the run suspends until resumed."""

    type_name: ClassVar[str] = "workflow-step-suspended"
    step_id: str
    status: str = "suspended"
    payload: Any = None


class WorkflowStepWaiting(_Event, frozen=True, kw_only=True, tag="workflow-step-waiting"):
    """A step began waiting: a ``.sleep``/``.sleep_until`` node, or a
    ``.wait_for_event`` step before its event came."""

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


class WorkflowCanceled(_Event, frozen=True, kw_only=True, tag="workflow-canceled"):
    """The run was canceled; ``reason`` is the cancel's reason as text. Comes once,
    after the records of the interrupted steps and before `WorkflowFinish`."""

    type_name: ClassVar[str] = "workflow-canceled"
    reason: str | None = None


class WorkflowFinish(_Event, frozen=True, kw_only=True, tag="workflow-finish"):
    """The run stopped executing: ``status`` is ``'success'`` (with ``result``),
    ``'failed'`` (with ``error``), ``'suspended'`` or ``'canceled'``. The last event
    of each execution (a start, or a resume)."""

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


class EventStream:
    """What `Run.watch()` gives: an async iterator that ends after a `workflow-finish`."""

    __slots__ = ("_finished", "_receive")

    def __init__(self, receive: trio.MemoryReceiveChannel[WorkflowEvent]) -> None:
        self._receive = receive
        self._finished = False

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> WorkflowEvent:
        if self._finished:
            raise StopAsyncIteration
        try:
            event = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        if type(event) is WorkflowFinish:
            self._finished = True
        return event


class Watchers:
    """The fan-out: each watcher has an unbounded channel, so a slow watcher never
    slows the run; `emit` is synchronous and in order."""

    __slots__ = ("channels",)

    def __init__(self) -> None:
        self.channels: list[trio.MemorySendChannel[WorkflowEvent]] = []

    def emit(self, event: WorkflowEvent) -> None:
        for channel in self.channels:
            try:
                channel.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the watcher left, or its stream was ended by `end_all`

    def end_all(self) -> None:
        """End every current watch without a ``workflow-finish``: the execution was
        interrupted from outside and will not finish here."""
        for channel in self.channels:
            channel.close()

    def watch(self) -> _WatchContext:
        return _WatchContext(self)


class _WatchContext:
    __slots__ = ("_receive", "_send", "_watchers")

    def __init__(self, watchers: Watchers) -> None:
        self._watchers = watchers
        self._send, self._receive = trio.open_memory_channel[WorkflowEvent](math.inf)

    async def __aenter__(self) -> EventStream:
        self._watchers.channels.append(self._send)
        try:
            await trio.lowlevel.checkpoint()
        except BaseException:
            self._watchers.channels.remove(self._send)
            raise
        return EventStream(self._receive)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._watchers.channels.remove(self._send)
        self._send.close()
        self._receive.close()
