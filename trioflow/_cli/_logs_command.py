"""``trioflow runs logs RUN_ID [--follow]``: what a run's steps said through
``ctx.logger`` (records at INFO and above, the last 1000 per run), as stored.

``--follow`` reads the run's status before its logs, each time: the executing process
writes a run's logs before the transition they precede, so once a read status says the
run stopped executing, the logs read after it are complete.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from .._errors import RunNotFoundError
from .._logs import LogEntry
from ..storage import SQLiteStorage, Storage
from ._common import EXIT_SUCCESS, CliError, existing_db, json_dumps, not_found
from ._view import TextView, local_time

EXECUTING = ("pending", "running", "waiting")


def add_logs_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
    make: Any,
) -> None:
    logs = make(
        actions,
        "logs",
        "Show what a run's steps logged with ctx.logger (INFO and above, the last 1000).",
    )
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new records until the run stops executing",
    )
    logs.add_argument(
        "--interval",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="with --follow: how often to look for new records (0.2)",
    )
    logs.set_defaults(handler=logs_command)


def log_line(entry: LogEntry) -> str:
    """One record for a person: time, level, step (and attempt after the first), message;
    the lines of a multi-line message (a traceback) indented under it."""
    where = entry.step_id or "-"
    if entry.attempt is not None and entry.attempt > 1:
        where += f" (attempt {entry.attempt})"
    head, *rest = entry.message.split("\n")
    text = f"{local_time(entry.time, date=False)}  {entry.level:<8} {where}  {head}"
    return "\n".join([text, *("    " + line for line in rest)])


async def print_logs(storage: Storage, run_id: str, after: int, view: TextView | None) -> int:
    """Print the run's records after `after`; the seq of the last one printed."""
    for entry in await storage.read_logs(run_id, after=after):
        if view is None:
            print(json_dumps(entry), flush=True)
        else:
            view.line(log_line(entry))
        after = max(after, entry.seq)
    return after


async def logs_command(args: argparse.Namespace) -> int:
    db = existing_db(args.db)
    if args.interval <= 0:
        raise CliError("--interval must be a positive number of seconds")
    view = None if args.json else TextView()
    async with SQLiteStorage(db) as storage:
        after = -1
        while True:
            try:
                row = await storage.load(args.run_id)
            except RunNotFoundError as exc:
                raise not_found(args.run_id, db) from exc
            after = await print_logs(storage, args.run_id, after, view)
            if not args.follow or row.status not in EXECUTING:
                break
            await trio.sleep(args.interval)
    if after < 0 and view is not None:
        view.line(f"run {args.run_id} has no stored log records (ctx.logger, INFO and above)")
    return EXIT_SUCCESS
