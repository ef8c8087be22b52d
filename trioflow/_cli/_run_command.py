"""``trioflow run``: execute a workflow in this process with a live view; Ctrl-C cancels.

The run is a durable run of an engine on the SQLite database, executed inline
(``await run.start()``) while a task follows its events (``run.watch()``) and another
holds SIGINT (``trio.open_signal_receiver``): the first Ctrl-C calls
``run.cancel(grace_period=--grace)`` (the abort listeners run, the run is stored
``'canceled'``), a second one during the grace period cancels the run's scope at once.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .. import _events as ev
from .._engine import open_engine
from .._errors import AbortError
from .._results import RunResult
from .._run import Run
from ._common import (
    DEFAULT_DB,
    CliError,
    check_input,
    exit_code,
    json_dumps,
    load_workflow,
    open_storage,
    parse_json_arg,
    place,
)
from ._view import EventRenderer, TextView, summary_from_result

CTRL_C_REASON = "canceled with Ctrl-C"


class Live:
    """One execution of a run here, shown live: the view, Ctrl-C, the outcome."""

    def __init__(self, run: Run, *, json: bool, grace: float) -> None:
        self.run = run
        self.json = json
        self.grace = grace
        self.view = None if json else TextView()
        self.renderer = None if self.view is None else EventRenderer(self.view)
        self.t0 = trio.current_time()
        self.presses = 0
        self.cancel_reason: str | None = None
        self._executing = trio.Event()

    def notice(self, text: str) -> None:
        """A message about the command itself (Ctrl-C...): stderr under ``--json``."""
        if self.view is not None:
            self.view.line(text)
        else:
            print(text, file=sys.stderr, flush=True)

    async def execute(self, action: Callable[[], Awaitable[RunResult]]) -> RunResult:
        """Await `action` (``run.start``/``run.resume``) while the view follows the
        run's events and Ctrl-C cancels it."""
        error: Exception | None = None
        result: RunResult | None = None
        async with trio.open_nursery() as nursery:
            await nursery.start(self._hold_sigint, nursery)
            async with self.run.watch() as events:
                followed = trio.Event()
                nursery.start_soon(self._follow, events, followed)
                try:
                    result = await action()
                except Exception as exc:  # reported by the caller, after the tasks end
                    error = exc
                else:
                    with trio.move_on_after(1.0):  # every event up to workflow-finish
                        await followed.wait()
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        assert result is not None
        return result

    def elapsed(self) -> float:
        return trio.current_time() - self.t0

    async def _follow(self, events: ev.EventStream, followed: trio.Event) -> None:
        async for event in events:
            if isinstance(event, ev.WorkflowStart):
                self._executing.set()
            elif isinstance(event, ev.WorkflowCanceled):
                self.cancel_reason = event.reason
            if self.renderer is not None:
                self.renderer.handle(event)
            else:
                sys.stdout.write(ev.encode_event(event).decode() + "\n")
                sys.stdout.flush()
        followed.set()

    async def _hold_sigint(
        self,
        nursery: trio.Nursery,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as presses:
            task_status.started()
            async for _ in presses:
                self.presses += 1
                run_id = self.run.run_id
                if self.presses == 1:
                    if self.grace > 0:
                        self.notice(
                            f"Ctrl-C: canceling run {run_id}; its steps have {self.grace:g}s "
                            "to stop (press Ctrl-C again to force)"
                        )
                    else:
                        self.notice(f"Ctrl-C: canceling run {run_id}")
                    nursery.start_soon(self._cancel, self.grace)
                else:
                    self.notice("Ctrl-C again: forcing the cancellation")
                    nursery.start_soon(self._cancel, 0.0)

    async def _cancel(self, grace: float) -> None:
        # Only once the run executes here: before, a cancel would go through storage.
        await self._executing.wait()
        await self.run.cancel(AbortError(CTRL_C_REASON), grace_period=grace)

    def report(self, result: RunResult, *, resume_hint: str | None) -> int:
        """Print the summary; the exit code of the run's status."""
        summary = summary_from_result(
            result, self.run.workflow.id, self.elapsed(), self.cancel_reason
        )
        if self.view is None:
            print(json_dumps(summary.to_json()), flush=True)
        else:
            self.view.line()
            self.view.summary(summary, resume_hint=resume_hint)
        return exit_code(result.status)


def resume_hint(run_id: str, result: RunResult, db: str, app: str) -> str | None:
    """The command that resumes a suspended run, for the summary."""
    if not result.suspended:
        return None
    step = ".".join(result.suspended[0])
    db_part = "" if db == DEFAULT_DB else f" --db {shlex.quote(db)}"
    return (
        f"trioflow runs resume {run_id} --step {shlex.quote(step)} --data JSON"
        f"{db_part} {shlex.quote(app)}"
    )


async def run_command(args: argparse.Namespace) -> int:
    if args.grace < 0:
        raise CliError("--grace must be 0 or more seconds")
    workflow = load_workflow(args.app)
    data: Any = parse_json_arg(args.input, "--input")
    check_input(workflow, data)  # before any run is created
    with trio.CancelScope() as engine_scope:
        storage = open_storage(args, must_exist=False)
        async with open_engine(storage=storage, workflows=[workflow]) as engine:
            try:
                run = await engine.create_run(workflow, run_id=args.run_id)
            except ValueError as exc:
                raise CliError(f"{exc} (--run-id)") from exc
            live = Live(run, json=args.json, grace=args.grace)
            if live.view is not None:
                live.view.line(f"run {run.run_id} of workflow {workflow.id!r} (db: {place(args)})")
            result = await live.execute(lambda: run.start(input_data=data))
            # Runs of this workflow the engine took over (their process died) are left
            # for the next engine: this command executes only its own run.
            engine_scope.cancel()
    return live.report(result, resume_hint=resume_hint(run.run_id, result, args.db, args.app))
