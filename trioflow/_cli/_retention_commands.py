"""``trioflow runs delete`` and ``trioflow runs prune``: removing finished runs.

Both act on the database directly (no engine, no workflow code needed), and only ever
remove runs that have ended: a run still executing or suspended is left alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re

from .._clock import wall_time
from .._errors import RunNotFoundError
from ._common import EXIT_FAILED, EXIT_SUCCESS, CliError, json_dumps, not_found, open_storage, place
from ._view import TextView

FINISHED = ("success", "failed", "canceled")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)(?P<unit>[smhdw])")


def parse_age(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` as a timedelta (for argparse)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age; write a number and a unit: 30d, 12h, 90m, 45s or 2w"
        )
    return dt.timedelta(**{_UNITS[match["unit"]]: float(match["amount"])})


def parse_when(text: str) -> float:
    """A moment, for argparse: an age (``2d``: two days ago) or an ISO 8601 date or
    datetime (without a timezone: local time); as wall-clock seconds."""
    if _DURATION.fullmatch(text.strip()):
        return wall_time() - parse_age(text).total_seconds()
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a moment; write a date (2026-12-01), a date and time "
            "(2026-12-01T08:00) or an age (2d, 12h)"
        ) from None
    return moment.astimezone().timestamp()


async def delete_command(args: argparse.Namespace) -> int:
    db = place(args)
    async with open_storage(args) as storage:
        try:
            status = await storage.delete(args.run_id)
        except RunNotFoundError as exc:
            raise not_found(args.run_id, db) from exc
    if status not in FINISHED:
        raise CliError(
            f"run {args.run_id} is {status!r}; only a finished run can be deleted "
            f"(cancel it first: trioflow runs cancel {args.run_id})",
            EXIT_FAILED,
        )
    if args.json:
        print(json_dumps({"deleted": args.run_id, "status": status}), flush=True)
    else:
        TextView().line(f"deleted run {args.run_id} ({status})")
    return EXIT_SUCCESS


async def prune_command(args: argparse.Namespace) -> int:
    statuses = FINISHED if args.status is None else (args.status,)
    before = wall_time() - args.older_than.total_seconds()
    async with open_storage(args) as storage:
        count = await storage.prune(before, statuses)
    if args.json:
        print(json_dumps({"deleted": count}), flush=True)
    else:
        which = "finished" if args.status is None else repr(args.status)
        TextView().line(f"deleted {count} {which} runs that ended over {args.older_than} ago")
    return EXIT_SUCCESS
