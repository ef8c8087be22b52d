"""A run as JSON, and its live events as Server-Sent Events.

The stream (``GET /api/runs/{id}/events``) opens with the run as it stands (``event:
run``, a `RunDetail`), then sends each of the run's typed events as it is emitted
(``event: workflow-step-start`` ..., the data as `encode_event` writes it), each change
of the run again as ``run``, and ends with ``event: end`` once the run has ended.

Events come straight from ``run.watch()`` while the run executes in this process, so
they reach the client as they happen. A run that executes elsewhere (another process
sharing the storage) or not at all (pending, suspended) is read from storage every
`POLL_INTERVAL` and sent as ``run`` when it changed: the other process's events are
not stored, and a stored snapshot is what another process can see.

It is a plain ASGI endpoint rather than a streaming response over an async generator:
the watch and the poll each hold a cancel scope, which must not stay open across a
generator's ``yield``.
"""

from __future__ import annotations

from typing import Any

import trio
from starlette.types import Receive, Scope, Send

from .. import _journal, _snapshot
from .._engine import Engine
from .._events import WatchOverflow, WorkflowStepOutput, WorkflowStepProgress, encode_event
from .._results import TERMINAL
from .._run import Run
from ._errors import translate
from ._json import encode, error_text
from ._types import RunDetail, StepView

POLL_INTERVAL = 0.5
# Events that leave the run as it was: no `run` frame after them (a step may write
# thousands of outputs).
UNCHANGED_BY = (WorkflowStepProgress, WorkflowStepOutput, WatchOverflow)
KEEPALIVE = 15.0  # a comment line now and then keeps proxies from closing a quiet stream


async def cancel_reason(engine: Engine, run: Run) -> str | None:
    """Why the run was canceled: its signal's reason where it was canceled, else as
    stored (a run rebuilt from storage does not carry the reason on its signal)."""
    if not run.cancel_requested:
        return None
    reason = run.abort_signal.reason
    if reason is not None:
        return str(reason)
    row = await engine.storage.load(run.run_id)
    if row.cancel_reason is not None:
        return row.cancel_reason
    return _journal.of_row(row).cancel_reason


# How many of a run's last log records its page shows (`trioflow runs logs` has them all).
LOGS_SHOWN = 100


def traceback_text(error: BaseException) -> str | None:
    """The traceback kept for a step's error: its own, or the one stored with it."""
    stored = getattr(error, "traceback", None)  # StepFailedError, read back from storage
    return stored if isinstance(stored, str) else _snapshot.traceback_text(error)


async def run_detail(engine: Engine, run: Run) -> RunDetail:
    result = run.result_nowait()
    reason = await cancel_reason(engine, run)
    return RunDetail(
        run_id=run.run_id,
        workflow_id=run.workflow.id,
        status=run.status,
        cancel_requested=run.cancel_requested,
        cancel_reason=None if reason is None else str(reason),
        version=run._unknown_version or run.workflow.version,
        result=result.result,
        error=None if result.error is None else error_text(result.error),
        suspended=[".".join(path) for path in result.suspended],
        steps=[
            StepView(
                path=path,
                status=step.status,
                input=step.payload,
                output=step.output,
                error=None if step.error is None else error_text(step.error),
                traceback=None if step.error is None else traceback_text(step.error),
                suspend_payload=step.suspend_payload,
                resume_payload=step.resume_payload,
                started_at=step.started_at,
                ended_at=step.ended_at,
            )
            for path, step in result.steps.items()
        ],
        logs=(await engine.storage.read_logs(run.run_id))[-LOGS_SHOWN:],
    )


def frame(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class _Stream:
    """One client's stream: sends frames, and remembers what it last sent."""

    def __init__(self, engine: Engine, send: Send) -> None:
        self._engine = engine
        self._send = send
        self._last_detail = b""
        self._last_sent = trio.current_time()

    async def write(self, data: bytes) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self._last_sent = trio.current_time()

    async def detail(self, run: Run) -> None:
        data = encode(await run_detail(self._engine, run))
        if data != self._last_detail:
            self._last_detail = data
            await self.write(frame("run", data))

    async def keepalive_if_quiet(self) -> None:
        if trio.current_time() - self._last_sent >= KEEPALIVE:
            await self.write(b": keepalive\n\n")


class EventStreamEndpoint:
    """``GET /api/runs/{run_id}/events``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _executes_here(self, run: Run) -> bool:
        # The engine's live runs are the ones whose watchers see events in this process.
        return self.engine._live.get(run.run_id) is run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run_id: str = scope["path_params"]["run_id"]
        try:
            run = await self.engine.get_run(run_id)
        except Exception as exc:
            answer = translate(exc)
            if answer is None:
                raise
            await answer(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        disconnected = False
        async with trio.open_nursery() as nursery:

            async def until_disconnect() -> None:
                nonlocal disconnected
                while (await receive())["type"] != "http.disconnect":
                    pass
                disconnected = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_disconnect)
            await self._follow(run, _Stream(self.engine, send))
            nursery.cancel_scope.cancel()
        if not disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _follow(self, run: Run, stream: _Stream) -> None:
        while True:
            await stream.detail(run)
            if run.status in TERMINAL:
                await stream.write(frame("end", b"{}"))
                return
            if self._executes_here(run):
                await self._watch(run, stream)
            else:
                await trio.sleep(POLL_INTERVAL)
                await stream.keepalive_if_quiet()
            run = await self.engine.get_run(run.run_id)

    async def _watch(self, run: Run, stream: _Stream) -> None:
        async with run.watch() as events:
            # It may have stopped executing just before the watch began: then no
            # workflow-finish will come, and the stored run says how it ended.
            if not self._executes_here(run):
                return
            await stream.detail(run)  # what happened before the watch began
            while True:
                event: Any = None
                with trio.move_on_after(KEEPALIVE):
                    event = await _next(events)
                    if event is None:
                        return  # the execution ended (or was interrupted from outside)
                if event is None:
                    await stream.keepalive_if_quiet()
                    continue
                await stream.write(frame(event.type, encode_event(event)))
                if not isinstance(event, UNCHANGED_BY):
                    await stream.detail(run)


async def _next(events: Any) -> Any:
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None
