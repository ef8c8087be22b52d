"""``trioflow runs send-event RUN_ID NAME --data JSON``: an event from the command line.

The event is stored with the run; the process that executes the run takes it as soon as
it hears of it (as of a cancel request), and a run not executing now takes it when it
waits for it. The data is checked by the waiting step's resume schema where the run
executes (this command has no workflow code to check it with).
"""

from __future__ import annotations

import argparse

from .. import _snapshot
from .._clock import wall_time
from .._errors import RunNotFoundError
from ._common import (
    EXIT_FAILED,
    EXIT_SUCCESS,
    CliError,
    json_dumps,
    not_found,
    open_storage,
    parse_json_arg,
    place,
)
from ._view import TextView

FINISHED = ("success", "failed", "canceled")


async def send_event_command(args: argparse.Namespace) -> int:
    data = parse_json_arg(args.data, "--data")
    encoded = _snapshot.encode_value(args.run_id, f"the data of event {args.name!r}", data)
    db = place(args)
    async with open_storage(args) as storage:
        try:
            status = await storage.put_event(args.run_id, args.name, encoded, wall_time())
        except RunNotFoundError as exc:
            raise not_found(args.run_id, db) from exc
    if status in FINISHED:
        raise CliError(f"run {args.run_id} is {status}; it takes no events", EXIT_FAILED)
    if args.json:
        print(json_dumps({"run_id": args.run_id, "event": args.name, "status": status}))
    else:
        TextView().line(f"sent event {args.name!r} to run {args.run_id} ({status})")
    return EXIT_SUCCESS
