"""The ``trioflow`` command: run a workflow with a live view, Ctrl-C to cancel it, and
look after the runs stored in a SQLite database. ``main(argv)`` returns the exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

import trio

from .. import __version__
from .._errors import SnapshotError, StorageError
from ._common import DEFAULT_DB, EXIT_CANCELED, EXIT_FAILED, EXIT_USAGE, CliError
from ._event_command import send_event_command
from ._fork_commands import fork_command, retry_command
from ._logs_command import add_logs_parser
from ._retention_commands import delete_command, parse_age, parse_when, prune_command
from ._run_command import run_command
from ._runs_commands import (
    cancel_command,
    list_command,
    resume_command,
    show_command,
    watch_command,
)
from ._schedule_commands import add_schedule_parsers
from ._serve_command import add_serve_parser
from ._worker_command import add_worker_parser

__all__ = ["build_parser", "main"]

EXIT_CODES_HELP = """\
exit codes:
  0    success (for `run`, `runs resume`, `runs watch`: the run succeeded)
  1    the run failed, or the command could not do its job (storage error,
       a run that is not in a state for it)
  2    usage error: bad arguments, a module that does not import, a name that
       is not a workflow, input that fails validation, an unknown run id
  3    the run is suspended (resume it with `trioflow runs resume`)
  130  the run was canceled (Ctrl-C, or `trioflow runs cancel`)

Add --json to any command for one JSON document (or JSON lines while a run is
followed); add --debug to see the traceback behind an error."""

# Each command's --help points to the table instead of repeating it.
SEE_EXIT_CODES = "Exit codes: see `trioflow --help`."

STATUSES = ("pending", "running", "waiting", "suspended", "success", "failed", "canceled")


def _common_options() -> argparse.ArgumentParser:
    """--db, --json and --debug, accepted before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--db",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"the SQLite database of runs (default: $TRIOFLOW_DB or {DEFAULT_DB} in the "
        "current folder)",
    )
    group.add_argument(
        "--dsn",
        metavar="DSN",
        default=argparse.SUPPRESS,
        help="a PostgreSQL connection string: the runs are there, not in --db "
        "(default: $TRIOFLOW_DSN)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON for scripts: one document, or JSON lines while following a run",
    )
    group.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback behind an error",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    formatter = argparse.RawDescriptionHelpFormatter

    def sub(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
    ) -> argparse.ArgumentParser:
        return parent.add_parser(
            name,
            help=text,
            description=text,
            parents=[common],
            epilog=SEE_EXIT_CODES,
            formatter_class=formatter,
        )

    parser = argparse.ArgumentParser(
        prog="trioflow",
        description="Run trioflow workflows and look after their stored runs.",
        parents=[common],
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"trioflow {__version__}", help="show it and exit"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub(
        commands,
        "run",
        "Execute a workflow in this process with a live view; Ctrl-C cancels the run.",
    )
    run.add_argument(
        "app",
        metavar="MODULE_OR_FILE:WORKFLOW",
        help="where the workflow is: a module or .py file, and the name of a committed "
        "workflow in it (default name: workflow), e.g. examples/order_pipeline.py:workflow",
    )
    run.add_argument(
        "--input",
        metavar="JSON",
        help="the run's input: JSON text, @file.json, or @- for standard input",
    )
    run.add_argument("--run-id", metavar="ID", help="the new run's id (default: a UUID4)")
    _grace_option(run)
    run.set_defaults(handler=run_command)

    runs = commands.add_parser(
        "runs",
        help="List, show, cancel, resume, watch, fork, retry and delete stored runs; read logs.",
        description="Look after the runs stored in the database, and read their logs.",
        parents=[common],
        epilog=SEE_EXIT_CODES,
        formatter_class=formatter,
    )
    actions = runs.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = sub(actions, "list", "List stored runs, newest first.")
    listing.add_argument("--status", choices=STATUSES, help="only runs with this status")
    listing.add_argument("--workflow", metavar="ID", help="only runs of this workflow id")
    listing.add_argument("--version", metavar="V", help="only runs on this workflow version")
    listing.add_argument(
        "--since", type=parse_when, metavar="WHEN", help="created at or after: 2026-12-01, 2d"
    )
    listing.add_argument(
        "--until", type=parse_when, metavar="WHEN", help="created before: 2026-12-01T08:00, 1h"
    )
    listing.add_argument("--limit", type=_count(1), default=50, metavar="N", help="at most N (50)")
    listing.add_argument(
        "--offset", type=_count(0), default=0, metavar="N", help="skip the first N"
    )
    listing.set_defaults(handler=list_command)

    for name, about in (
        ("fork", "Run a run again from a step, as a new run (it keeps what ended before)."),
        ("retry", "Run a run again from its first failed or canceled step, as a new run."),
    ):
        forking = sub(actions, name, about)
        forking.add_argument("run_id", metavar="RUN_ID")
        if name == "fork":
            forking.add_argument("--from", dest="from_step", required=True, metavar="STEP")
        forking.add_argument(
            "app",
            nargs="?",
            metavar="MODULE_OR_FILE:WORKFLOW",
            help="execute the new run here with this code (else it is queued for a worker)",
        )
        forking.add_argument("--app", dest="app_option", metavar="MODULE_OR_FILE:WORKFLOW")
        forking.add_argument("--new-run-id", metavar="ID", help="the new run's id (a UUID4)")
        _grace_option(forking)
        forking.set_defaults(handler=fork_command if name == "fork" else retry_command)

    send = sub(actions, "send-event", "Send an event to a run's .wait_for_event(NAME, ...).")
    send.add_argument("run_id", metavar="RUN_ID")
    send.add_argument("name", metavar="NAME")
    send.add_argument("--data", metavar="JSON", help="the event's data: JSON text or @file.json")
    send.set_defaults(handler=send_event_command)

    delete = sub(actions, "delete", "Delete a finished run (cancel one that is not first).")
    delete.add_argument("run_id", metavar="RUN_ID")
    delete.set_defaults(handler=delete_command)

    prune = sub(actions, "prune", "Delete the finished runs that ended longer ago than an age.")
    prune.add_argument(
        "--older-than",
        required=True,
        type=parse_age,
        metavar="AGE",
        help="how long ago they ended: 30d, 12h, 90m, 45s or 2w",
    )
    prune.add_argument(
        "--status", choices=("success", "failed", "canceled"), help="only runs with this status"
    )
    prune.set_defaults(handler=prune_command)

    show = sub(actions, "show", "Show a run and its steps: status, timing, output or error.")
    show.add_argument("run_id", metavar="RUN_ID")
    show.set_defaults(handler=show_command)

    cancel = sub(
        actions,
        "cancel",
        "Cancel a run wherever it executes; returns once it is stored 'canceled'.",
    )
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.set_defaults(handler=cancel_command)

    resume = sub(
        actions,
        "resume",
        "Resume a suspended run in this process, with the live view.",
    )
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument(
        "app",
        nargs="?",
        metavar="MODULE_OR_FILE:WORKFLOW",
        help="the workflow's code, as for `trioflow run` (or --app)",
    )
    resume.add_argument("--app", dest="app_option", metavar="MODULE_OR_FILE:WORKFLOW")
    resume.add_argument(
        "--step", metavar="STEP", help="the suspended step (optional if only one is)"
    )
    resume.add_argument(
        "--data",
        metavar="JSON",
        help="the resume data (the step's ctx.resume_data): JSON text or @file.json",
    )
    _grace_option(resume)
    resume.set_defaults(handler=resume_command)

    watch = sub(
        actions,
        "watch",
        "Follow a run executing elsewhere until it ends (or suspends).",
    )
    watch.add_argument("run_id", metavar="RUN_ID")
    watch.add_argument(
        "--interval",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="how often to read the stored run (0.1)",
    )
    watch.set_defaults(handler=watch_command)
    add_logs_parser(actions, sub)
    add_worker_parser(commands, common, SEE_EXIT_CODES)
    add_serve_parser(commands, common, SEE_EXIT_CODES)
    add_schedule_parsers(commands, common, SEE_EXIT_CODES)
    return parser


def _count(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {least}")
        return value

    return parse


def _grace_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grace",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="on Ctrl-C, give the steps this long to stop by themselves after their abort "
        "signal fires, before they are interrupted (default 0; a second Ctrl-C forces)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trioflow`` command with `argv` (default: ``sys.argv[1:]``); the exit code."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            _take_app(parser, args, extras)
    except SystemExit as exc:  # --help, or a usage error argparse has printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    args.db = getattr(args, "db", None) or os.environ.get("TRIOFLOW_DB") or DEFAULT_DB
    args.dsn = getattr(args, "dsn", None) or os.environ.get("TRIOFLOW_DSN") or None
    args.json = getattr(args, "json", False)
    args.debug = getattr(args, "debug", False)
    try:
        code: int = trio.run(args.handler, args)
    except BaseException as exc:
        return _report(exc, debug=args.debug)
    return code


def _take_app(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """`runs resume RUN_ID --step S --data D APP`: argparse matches the optional APP
    positional (as missing) together with RUN_ID, and leaves APP over; take it."""
    takes_app = getattr(args, "handler", None) is resume_command and args.app is None
    if takes_app and len(extras) == 1 and not extras[0].startswith("-"):
        args.app = extras[0]
        return
    parser.error(f"unrecognized arguments: {' '.join(extras)}")


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _report(exc: BaseException, *, debug: bool) -> int:
    """One line a person can act on (and the traceback with --debug); the exit code."""
    leaves = _leaves(exc)
    wanted = (KeyboardInterrupt, CliError)
    leaf = next((e for kind in wanted for e in leaves if isinstance(e, kind)), leaves[0])
    if not isinstance(leaf, Exception | KeyboardInterrupt):
        raise exc  # SystemExit and the like are not ours to report
    if debug:
        traceback.print_exception(exc)
    if isinstance(leaf, KeyboardInterrupt):
        print("trioflow: interrupted", file=sys.stderr)
        return EXIT_CANCELED
    if isinstance(leaf, BrokenPipeError):
        # The reader of our output left (`| head`): nothing more to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    if isinstance(leaf, CliError):
        message, code = str(leaf), leaf.code
    elif isinstance(leaf, StorageError | SnapshotError):
        message, code = str(leaf), EXIT_FAILED
    else:
        message = f"unexpected {type(leaf).__name__}: {leaf}; rerun with --debug for the traceback"
        code = EXIT_FAILED
    print(f"trioflow: error: {message}", file=sys.stderr)
    return code
