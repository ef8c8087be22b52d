"""``trioflow runs ...``: the stored runs.

``list``, ``show``, ``cancel`` and ``watch`` read and write the storage directly, so they
need no app: a run's snapshot says all they print, and a cancel goes through
``Storage.request_cancel`` (a run nobody executes is canceled in the database at once;
an executing one is flagged, and its process's engine cancels it). Only ``resume``
executes workflow code, so only it takes ``MODULE_OR_FILE:WORKFLOW``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import trio

from .. import _journal, _snapshot
from .._clock import wall_time
from .._engine import open_engine
from .._errors import RunNotFoundError, ValidationError
from .._events import WorkflowStepOutput, encode_event
from .._queues import QueuePlace
from .._run import _find_step
from .._schema import convert
from .._snapshot import Snapshot, StepRecord
from .._step import Step
from ..storage import RunRow, SQLiteStorage, Storage
from ._common import (
    EXIT_FAILED,
    EXIT_SUCCESS,
    CliError,
    existing_db,
    exit_code,
    json_dumps,
    load_workflow,
    not_found,
    open_storage,
    parse_json_arg,
    place,
)
from ._logs_command import log_line
from ._run_command import Live, resume_hint
from ._view import (
    STEP_WIDTH,
    TextView,
    bar,
    duration,
    local_time,
    seconds,
    short_json,
    summary_from_snapshot,
)

EXECUTING = ("pending", "running", "waiting")
ENDED = ("success", "failed", "canceled", "suspended")
CANCEL_REASON = "canceled by `trioflow runs cancel`"
CANCEL_POLL = 0.05


async def _load(storage: Storage, run_id: str, db: str) -> tuple[RunRow, Snapshot]:
    try:
        row = await storage.load(run_id)
    except RunNotFoundError as exc:
        raise not_found(run_id, db) from exc
    return row, _journal.of_row(row)


def orphaned(status: str, lease_until: float | None) -> bool:
    """Executing by its status, but nobody's lease holds it: its process died."""
    return status in ("running", "waiting") and (lease_until is None or lease_until < wall_time())


def _print_json(value: Any) -> None:
    print(json_dumps(value), flush=True)


# --- runs list ------------------------------------------------------------------------


async def list_command(args: argparse.Namespace) -> int:
    db = place(args)
    async with open_storage(args, read_only=True) as storage:
        runs = await storage.list_runs(
            status=args.status,
            workflow_id=args.workflow,
            limit=args.limit,
            offset=args.offset,
            version=args.version,
            since=args.since,
            until=args.until,
        )
    if args.json:
        _print_json(runs)
        return EXIT_SUCCESS
    view = TextView()
    if not runs:
        filters = [f"status {args.status!r}" if args.status else "", args.workflow or ""]
        if args.version:
            filters.append(f"version {args.version!r}")
        which = " of ".join(f for f in filters if f)
        view.line(f"no runs{' with ' + which if which else ''} in {db}")
        return EXIT_SUCCESS
    width = max(len("RUN ID"), *(len(r.run_id) for r in runs))
    wf_width = max(len("WORKFLOW"), *(len(r.workflow_id) for r in runs))
    v_width = max(len("VERSION"), *(len(r.version or "-") for r in runs))
    view.line(
        f"{'RUN ID':<{width}}  {'WORKFLOW':<{wf_width}}  {'VERSION':<{v_width}}  "
        f"{'STATUS':<10} CREATED{' ' * 14}UPDATED"
    )
    for r in runs:
        status = view.paint(f"{r.status:<10}", r.status)
        if orphaned(r.status, r.lease_until):
            status += " (orphaned)"
        view.line(
            f"{r.run_id:<{width}}  {r.workflow_id:<{wf_width}}  {r.version or '-':<{v_width}}  "
            f"{status} {local_time(r.created_at)}  {local_time(r.updated_at)}"
        )
    if len(runs) == args.limit:
        view.line(f"(first {args.limit}; see more with --offset {args.offset + args.limit})")
    return EXIT_SUCCESS


# --- runs show ------------------------------------------------------------------------


def _step_json(record: StepRecord) -> dict[str, Any]:
    return {
        "status": record.status,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "duration": duration(record.started_at, record.ended_at),
        "output": record.output,
        "error": None if record.error is None else _error_json(record.error),
        "suspend_payload": record.suspend_payload,
        "resume_payload": record.resume_payload,
    }


def _error_json(error: _snapshot.ErrorRecord) -> dict[str, Any]:
    return {
        "type": error.type,
        "message": error.message,
        "step_id": error.step_id,
        "traceback": error.traceback,
    }


# How many of a run's last log records `runs show` prints (`runs logs` prints them all).
SHOW_LOGS = 20


def _step_detail(path: str, record: StepRecord, snapshot: Snapshot) -> str:
    if record.status == "success":
        return f"output {short_json(record.output)}"
    if record.status == "failed" and record.error is not None:
        return f"error {record.error.type}: {record.error.message}"
    if record.status == "canceled":
        return "interrupted"
    if record.status == "suspended":
        return f"suspended with {short_json(record.suspend_payload)}"
    progress = snapshot.progress.get(path)
    if isinstance(progress, dict) and isinstance(record.payload, list):
        return bar(len(progress), len(record.payload))
    return ""


async def show_command(args: argparse.Namespace) -> int:
    db = place(args)
    async with open_storage(args, read_only=True) as storage:
        row, snapshot = await _load(storage, args.run_id, db)
        queued = await storage.queue_place(args.run_id, wall_time())
        logs = await storage.read_logs(args.run_id)
    summary = summary_from_snapshot(snapshot)
    if args.json:
        document = summary.to_json()
        del document["type"], document["elapsed"]
        document.update(
            version=row.workflow_version,
            forked_from=row.forked_from,
            lease_holder=row.owner,
            lease_until=row.lease_until,
            orphaned=orphaned(row.status, row.lease_until),
            created_at=row.created_at,
            updated_at=row.updated_at,
            input=snapshot.input,
            steps={path: _step_json(r) for path, r in snapshot.steps.items()},
            queue=queued,
            logs=logs,
        )
        if snapshot.error is not None and document.get("error") is not None:
            document["error"] = {**document["error"], "traceback": snapshot.error.traceback}
        _print_json(document)
        return EXIT_SUCCESS
    view = TextView()
    view.line(f"run       {snapshot.run_id}")
    view.line(f"workflow  {snapshot.workflow_id} (version {row.workflow_version or '-'})")
    stopped = f" (interrupted: {', '.join(summary.interrupted)})" if summary.interrupted else ""
    view.line(f"status    {view.paint(snapshot.status, snapshot.status)}{stopped}")
    if orphaned(row.status, row.lease_until):
        view.line(
            "          orphaned: its lease expired and no process executes it; an engine "
            "that knows its workflow version takes it over (e.g. `trioflow worker APP`)"
        )
    elif row.owner is not None and row.lease_until is not None:
        view.line(f"lease     held by {row.owner[:8]} until {local_time(row.lease_until)}")
    if row.forked_from:
        view.line(f"forked    from run {row.forked_from}")
    if summary.cancel_reason:
        view.line(f"reason    {summary.cancel_reason}")
    view.line(f"created   {local_time(row.created_at)}   updated {local_time(row.updated_at)}")
    view.line(f"input     {short_json(snapshot.input)}")
    if queued is not None:
        view.line(f"queue     {_describe_place(queued)}")
    if snapshot.status == "success":
        view.line(f"output    {short_json(snapshot.result)}")
    if summary.error is not None:
        where = f"step {summary.error.step_id!r}: " if summary.error.step_id else ""
        view.line(f"error     {where}{summary.error.type}: {summary.error.message}")
    view.line()
    if not snapshot.steps:
        view.line("no step has started")
        return EXIT_SUCCESS
    view.line(f"{'STEP':<{STEP_WIDTH}} {'STATUS':<10} {'STARTED':<12}  {'TOOK':>7}  DETAIL")
    for path, record in snapshot.steps.items():
        status = view.paint(f"{record.status:<10}", record.status)
        took = seconds(duration(record.started_at, record.ended_at))
        started = local_time(record.started_at, date=False)
        detail = _step_detail(path, record, snapshot)
        view.line(f"{path:<{STEP_WIDTH}} {status} {started:<12}  {took:>7}  {detail}".rstrip())
    for path, record in snapshot.steps.items():
        if record.status == "failed" and record.error is not None and record.error.traceback:
            view.line()
            view.line(f"traceback of step {path!r}:")
            for line in record.error.traceback.rstrip("\n").split("\n"):
                view.line("    " + line)
    if logs:
        view.line()
        shown = logs[-SHOW_LOGS:]
        more = len(logs) - len(shown)
        view.line(
            f"logs (the last {len(shown)}; `trioflow runs logs {args.run_id}` shows all):"
            if more
            else "logs:"
        )
        for entry in shown:
            view.line(log_line(entry))
    return EXIT_SUCCESS


def _describe_place(place: QueuePlace) -> str:
    """``emails (priority 5, key user-42): waiting, position 3; limits: concurrency 3``"""
    details = [f"priority {place.priority}"]
    if place.key is not None:
        details.append(f"key {place.key}")
    if place.dedup_id is not None:
        details.append(f"dedup id {place.dedup_id}")
    state = {"active": "taken by a worker", "done": "left the queue"}.get(place.state, "waiting")
    if place.position is not None:
        state += f", position {place.position}"
    limits = "no limits" if place.limits is None else place.limits.describe()
    return f"{place.queue} ({', '.join(details)}): {state}; limits: {limits}"


# --- runs cancel ----------------------------------------------------------------------


async def cancel_command(args: argparse.Namespace) -> int:
    db = place(args)
    async with open_storage(args) as storage:
        row, _ = await _load(storage, args.run_id, db)
        already = row.status in ("success", "failed", "canceled")
        status = row.status
        if not already:
            status = await storage.request_cancel(args.run_id, CANCEL_REASON, wall_time())
        told = False
        while status in EXECUTING or status == "suspended":
            if not told and not args.json:
                print(
                    f"cancel requested; waiting for the process executing run {args.run_id} "
                    "to stop it",
                    file=sys.stderr,
                    flush=True,
                )
                told = True
            await trio.sleep(CANCEL_POLL)
            row = await storage.load(args.run_id)
            status = row.status
            if status in ("running", "waiting") and (
                row.owner is None or (row.lease_until or 0.0) < wall_time()
            ):
                # Its executor died after the request: cancel it in storage ourselves.
                status = await storage.request_cancel(args.run_id, CANCEL_REASON, wall_time())
        row, snapshot = await _load(storage, args.run_id, db)
    summary = summary_from_snapshot(snapshot)
    message = (
        "Workflow run canceled"
        if row.status == "canceled" and not already
        else f"Workflow run already {row.status}"
    )
    if args.json:
        _print_json({**summary.to_json(), "type": "cancel-result", "message": message})
    else:
        view = TextView()
        if already:
            view.line(f"run {args.run_id} already ended {row.status!r}; nothing to cancel")
        else:
            view.summary(summary)
    return EXIT_SUCCESS if row.status == "canceled" else EXIT_FAILED


# --- runs resume ----------------------------------------------------------------------


async def resume_command(args: argparse.Namespace) -> int:
    app = args.app or args.app_option
    if app is None:
        raise CliError(
            "runs resume needs the workflow's code: pass MODULE_OR_FILE:WORKFLOW "
            "(as a last argument or with --app)"
        )
    workflow = load_workflow(app)
    data = parse_json_arg(args.data, "--data")
    db = existing_db(args.db)
    if args.grace < 0:
        raise CliError("--grace must be 0 or more seconds")
    with trio.CancelScope() as engine_scope:
        async with open_engine(storage=open_storage(args), workflows=[workflow]) as engine:
            row, _ = await _load(engine.storage, args.run_id, db)
            if row.workflow_id != workflow.id:
                raise CliError(
                    f"run {args.run_id} is a run of workflow {row.workflow_id!r}, but {app} is "
                    f"workflow {workflow.id!r}; pass the app that defines {row.workflow_id!r}"
                )
            run = await engine.get_run(args.run_id)
            if run.status != "suspended":
                hint = (
                    "a canceled run cannot be resumed"
                    if run.status == "canceled"
                    else "it is orphaned (its process died): an engine that knows its workflow "
                    "takes it over and it goes on by itself, e.g. `trioflow worker APP`"
                    if orphaned(row.status, row.lease_until)
                    else "only a suspended run can be resumed"
                )
                raise CliError(f"run {args.run_id} is {run.status!r}; {hint}", EXIT_FAILED)
            try:
                path = run._suspended_path(args.step)
            except ValueError as exc:
                raise CliError(str(exc).replace("step=", "--step")) from exc
            target = _find_step(workflow, path.split("."))
            schema = target.resume_schema if isinstance(target, Step) else None
            try:
                convert(data, schema, step_id=path, what="resume data")
            except ValidationError as exc:
                raise CliError(
                    f"invalid --data for step {path!r}: {exc.detail}; pass JSON that matches "
                    "its resume schema (the run stays suspended)"
                ) from exc
            live = Live(run, json=args.json, grace=args.grace)
            if live.view is not None:
                live.view.line(f"resuming run {run.run_id} of {workflow.id!r} at step {path!r}")
            result = await live.execute(lambda: run.resume(step=path, resume_data=data))
            engine_scope.cancel()
    return live.report(result, resume_hint=resume_hint(run.run_id, result, args.db, app))


# --- runs watch -----------------------------------------------------------------------


class _Lines:
    """Stands for the view while one update is worked out: keeps the lines, each with
    its time (the first argument of `step` and `output`), to print them sorted."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str, tuple[Any, ...]]] = []

    def step(self, *args: Any) -> None:
        self.lines.append((args[0], "step", args))

    def output(self, *args: Any) -> None:
        self.lines.append((args[0], "output", args))

    def progress(self, *args: Any) -> None:
        self.lines.append((args[0], "progress", args))


class SnapshotFollower:
    """Prints what changed between two snapshots of a run: step transitions,
    ``foreach`` progress and the output events stored by steps created with
    ``store_output_events=True`` (lines of text, or JSON lines)."""

    def __init__(self, json: bool) -> None:
        self.json = json
        self.view = None if json else TextView()
        self.steps: dict[str, tuple[str, float | None]] = {}
        self.progress: dict[str, int] = {}
        self.status: str | None = None
        self.base: float | None = None
        self.outputs_seen = -1  # the `seq` of the last stored output printed

    def elapsed(self, at: float | None) -> float:
        assert self.base is not None
        return max(0.0, (at if at is not None else wall_time()) - self.base)

    def update(self, snapshot: Snapshot, created_at: float) -> None:
        """Print what changed, in the order it happened: several steps may have moved
        between two looks, and their lines are sorted by their times."""
        view = self.view
        if view is None:
            self._update(snapshot, created_at)
            return
        lines = _Lines()
        self.view = lines  # type: ignore[assignment]
        try:
            self._update(snapshot, created_at)
        finally:
            self.view = view
        for _, method, args in sorted(lines.lines, key=lambda line: line[0]):
            getattr(view, method)(*args)

    def _update(self, snapshot: Snapshot, created_at: float) -> None:
        if self.base is None:
            starts = [r.started_at for r in snapshot.steps.values() if r.started_at is not None]
            self.base = min(starts) if starts else created_at
        if snapshot.status != self.status:
            self.status = snapshot.status
            if self.json:
                _print_json({"type": "run", "run_id": snapshot.run_id, "status": self.status})
        changed = []
        for path, record in snapshot.steps.items():
            key = (record.status, record.started_at)
            seen = self.steps.get(path)
            if seen != key:
                self.steps[path] = key
                if seen is None and self.view is not None and record.status in ENDED:
                    # Step starts are not stored: show the one this record implies.
                    self.view.step(self.elapsed(record.started_at), path, "running")
                changed.append((path, record))
        # What the steps wrote comes after their starts and before their ends.
        for path, record in changed:
            if record.status not in ENDED:
                self._step(snapshot.run_id, path, record)
        self._outputs(snapshot)
        for path, record in changed:
            if record.status in ENDED:
                self._step(snapshot.run_id, path, record)
        for path, record in snapshot.steps.items():
            self._progress(snapshot, path, record)

    def _outputs(self, snapshot: Snapshot) -> None:
        for output in snapshot.outputs:
            if output.seq <= self.outputs_seen:
                continue
            self.outputs_seen = output.seq
            if self.view is None:
                event = WorkflowStepOutput(
                    run_id=snapshot.run_id, step_id=output.step_id, data=output.data
                )
                print(encode_event(event).decode(), flush=True)
            else:
                if output.step_id not in self.steps:
                    # A running step is not stored yet: its first output shows its start.
                    self.steps[output.step_id] = ("running", None)
                    self.view.step(self.elapsed(output.at), output.step_id, "running")
                self.view.output(self.elapsed(output.at), output.step_id, output.data)

    def _step(self, run_id: str, path: str, record: StepRecord) -> None:
        if self.view is None:
            _print_json({"type": "step", "run_id": run_id, "step_id": path, **_step_json(record)})
            return
        if record.status in ("running", "waiting"):
            self.view.step(self.elapsed(record.started_at), path, record.status)
            return
        detail = seconds(duration(record.started_at, record.ended_at))
        if record.status == "failed" and record.error is not None:
            detail += f"  {record.error.type}: {record.error.message}"
        elif record.status == "canceled":
            detail += "  interrupted"
        elif record.status == "suspended" and record.suspend_payload is not None:
            detail += f"  {short_json(record.suspend_payload)}"
        self.view.step(self.elapsed(record.ended_at), path, record.status, detail)

    def _progress(self, snapshot: Snapshot, path: str, record: StepRecord) -> None:
        done = snapshot.progress.get(path)
        if record.status != "running" or not isinstance(done, dict):
            return
        if not isinstance(record.payload, list) or self.progress.get(path) == len(done):
            return
        completed, total = len(done), len(record.payload)
        self.progress[path] = completed
        if self.view is None:
            _print_json(
                {
                    "type": "progress",
                    "run_id": snapshot.run_id,
                    "step_id": path,
                    "completed": completed,
                    "total": total,
                }
            )
        else:
            self.view.progress(self.elapsed(None), path, completed, total)


def _span(snapshot: Snapshot) -> float | None:
    """From the first step's start to the last step's end, as stored."""
    starts = [r.started_at for r in snapshot.steps.values() if r.started_at is not None]
    ends = [r.ended_at for r in snapshot.steps.values() if r.ended_at is not None]
    return duration(min(starts), max(ends)) if starts and ends else None


async def watch_command(args: argparse.Namespace) -> int:
    db = existing_db(args.db)
    if args.interval <= 0:
        raise CliError("--interval must be a positive number of seconds")
    follower = SnapshotFollower(args.json)
    async with SQLiteStorage(db, read_only=True) as storage:
        row, snapshot = await _load(storage, args.run_id, db)
        if follower.view is not None:
            follower.view.line(
                f"watching run {args.run_id} of {row.workflow_id!r} (db: {db}; Ctrl-C stops "
                "watching, the run goes on)"
            )
        told = False
        while True:
            follower.update(snapshot, row.created_at)
            if row.status not in EXECUTING:
                break
            orphaned = row.status != "pending" and (
                row.owner is None or (row.lease_until or 0.0) < wall_time()
            )
            if orphaned and not told:
                told = True
                print(
                    f"run {args.run_id} is {row.status!r} but no process executes it (its "
                    f"process stopped); it goes on when an engine that knows workflow "
                    f"{row.workflow_id!r} opens on {db}",
                    file=sys.stderr,
                    flush=True,
                )
            await trio.sleep(args.interval)
            row, snapshot = await _load(storage, args.run_id, db)
    summary = summary_from_snapshot(snapshot, elapsed=_span(snapshot))
    if follower.view is None:
        _print_json(summary.to_json())
    else:
        follower.view.line()
        follower.view.summary(summary)
    return exit_code(row.status)
