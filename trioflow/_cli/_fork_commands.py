"""``trioflow runs fork ID --from STEP`` and ``trioflow runs retry ID``.

A fork is a new run of the original's workflow version and input that keeps the records
of the steps that ended before STEP started. Given the workflow's code (APP), the new run
executes here with the live view, as ``runs resume`` does; without it, the new run is
queued, and a ``trioflow worker`` that knows the workflow executes it.
"""

from __future__ import annotations

import argparse
import uuid

import trio

from .. import _journal, _snapshot
from .._clock import wall_time
from .._engine import open_engine
from .._errors import RunNotFoundError
from .._queues import QueueEntry
from ._common import (
    EXIT_FAILED,
    EXIT_SUCCESS,
    CliError,
    json_dumps,
    load_workflow,
    open_storage,
    place,
)
from ._common import not_found as _not_found
from ._run_command import Live, resume_hint
from ._view import TextView


async def fork_command(args: argparse.Namespace) -> int:
    return await _fork(args, args.from_step)


async def retry_command(args: argparse.Namespace) -> int:
    return await _fork(args, None)


async def _fork(args: argparse.Namespace, from_step: str | None) -> int:
    db = place(args)
    app = args.app or args.app_option
    workflow = load_workflow(app) if app is not None else None
    new_id = args.new_run_id or str(uuid.uuid4())
    async with open_storage(args) as storage:
        try:
            row = await storage.load(args.run_id)
        except RunNotFoundError as exc:
            raise _not_found(args.run_id, db) from exc
        if workflow is not None and row.workflow_id != workflow.id:
            raise CliError(
                f"run {args.run_id} is a run of workflow {row.workflow_id!r}, but {app} is "
                f"workflow {workflow.id!r}; pass the app that defines {row.workflow_id!r}"
            )
        if row.status not in _snapshot.FORKABLE:
            raise CliError(
                f"run {args.run_id} is {row.status!r}; fork a run that ended or is suspended "
                f"(cancel it first: trioflow runs cancel {args.run_id})",
                EXIT_FAILED,
            )
        original = _journal.of_row(row)
        try:
            step = from_step if from_step is not None else _snapshot.first_to_retry(original)
            forked = _snapshot.fork(original, new_id, step)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_FAILED) from exc
        snapshot = _snapshot.encode(forked)
        if workflow is None:  # queued, in the default queue, for a worker
            found = await storage.insert_queued(
                new_id,
                row.workflow_id,
                snapshot,
                wall_time(),
                QueueEntry(),
                workflow_version=row.workflow_version,
                forked_from=args.run_id,
            )
            if found is not None:
                raise CliError(f"a run with id {new_id!r} is already stored (--new-run-id)")
        else:
            try:
                await storage.insert(
                    new_id,
                    row.workflow_id,
                    "pending",
                    snapshot,
                    wall_time(),
                    workflow_version=row.workflow_version,
                    forked_from=args.run_id,
                )
            except ValueError as exc:
                raise CliError(f"{exc} (--new-run-id)") from exc
    if workflow is None:
        if args.json:
            print(json_dumps({"run_id": new_id, "forked_from": args.run_id, "step": step}))
        else:
            TextView().line(
                f"forked run {new_id} from {args.run_id} at step {step!r}; it is queued: "
                "a `trioflow worker` that knows the workflow executes it (or pass "
                "MODULE_OR_FILE:WORKFLOW to execute it here)"
            )
        return EXIT_SUCCESS
    with trio.CancelScope() as engine_scope:
        async with open_engine(storage=open_storage(args), workflows=[workflow]) as engine:
            run = await engine.get_run(new_id)
            live = Live(run, json=args.json, grace=args.grace)
            if live.view is not None:
                live.view.line(f"run {new_id}: {args.run_id} again from step {step!r}")
            result = await live.execute(run.start)
            engine_scope.cancel()
    return live.report(result, resume_hint=resume_hint(run.run_id, result, args.db, app))
