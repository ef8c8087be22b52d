"""``trioflow worker``: execute queued runs from a shared storage until stopped."""

from __future__ import annotations

import argparse
import functools
import signal
import sys

import trio

from .._queues import DEFAULT_QUEUE
from .._worker import serve_worker
from ._common import CliError, app_objects, load_workflow, open_storage, place


async def worker_command(args: argparse.Namespace) -> int:
    workflows = [load_workflow(spec) for spec in args.apps]
    # The app's modules declare the queues (with their limits) and the schedules.
    queues, schedules = app_objects(args.apps)
    ids = {workflow.id for workflow in workflows}
    schedules = [s for s in schedules if s.workflow_id in ids]
    known = {queue.name for queue in queues} | {DEFAULT_QUEUE}
    for name in args.queues or ():
        if name not in known:
            raise CliError(
                f"--queue {name}: no trioflow.Queue({name!r}, ...) at module level in "
                f"{', '.join(args.apps)} (found: {sorted(known)}); define it there"
            )
    storage = open_storage(args, must_exist=False)
    where = place(args)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            start = functools.partial(
                serve_worker,
                storage=storage,
                workflows=workflows,
                concurrency=args.concurrency,
                lease_seconds=args.lease,
                queues=queues,
                schedules=schedules,
                serve_queues=args.queues,
            )
            engine = await nursery.start(start)
            names = ", ".join(w.id for w in workflows)
            served = ", ".join(args.queues or [DEFAULT_QUEUE, *(q.name for q in queues)])
            fires = f"; firing schedules {', '.join(s.id for s in schedules)}" if schedules else ""
            print(
                f"worker {engine.owner_id[:8]} on {where}: executing queued runs of {names}, "
                f"{args.concurrency} at once, from queues {served}{fires}; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            async for _ in signals:
                # Stopping a worker is a shutdown, not a cancel: its runs stay recoverable
                # and other workers take them over.
                print("worker stopping; its runs are left for other workers", file=sys.stderr)
                nursery.cancel_scope.cancel()
                break
    return 0


def add_worker_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    epilog: str,
) -> None:
    text = "Execute queued runs (engine.enqueue) from the database until Ctrl-C."
    worker = commands.add_parser(
        "worker",
        help=text,
        description=text,
        parents=[common],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    worker.add_argument(
        "apps",
        nargs="+",
        metavar="MODULE_OR_FILE:WORKFLOW",
        help="the workflows this worker executes",
    )
    worker.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="serve this queue (repeat for more; default: the default queue and every "
        "trioflow.Queue defined in the app's modules, whose limits hold across workers)",
    )
    worker.add_argument("--concurrency", type=int, default=4, metavar="N", help="runs at once (4)")
    worker.add_argument(
        "--lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a silent worker keeps its runs before others take them (10)",
    )
    worker.set_defaults(handler=worker_command)
