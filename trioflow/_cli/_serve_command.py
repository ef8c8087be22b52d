"""``trioflow serve``: the HTTP API and the dashboard over the runs of a database."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from .._engine import open_engine
from .._web_entry import DEFAULT_HOST, DEFAULT_PORT, serve_http
from ._common import CliError, load_workflow, open_storage, place


async def serve_command(args: argparse.Namespace) -> int:
    try:
        from .._web._serve import check_exposure
    except ImportError as exc:
        raise CliError(
            f"`trioflow serve` needs the web extra ({exc.name} is not installed); "
            "install it with: pip install 'trioflow[web]'"
        ) from exc
    try:
        check_exposure(args.host, args.token)
    except ValueError as exc:
        raise CliError(str(exc).replace("token=...", "--token")) from exc
    workflows = [load_workflow(spec) for spec in args.apps]
    storage = open_storage(args, must_exist=False)
    where = place(args)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # Stopping the server is a shutdown, not a cancel: leaving the engine by a
        # cancellation interrupts the runs executing here and leaves them recoverable.
        with trio.CancelScope() as everything:
            async with (
                open_engine(storage=storage, workflows=workflows) as engine,
                trio.open_nursery() as nursery,
            ):
                url = await nursery.start(
                    lambda task_status: serve_http(
                        engine,
                        host=args.host,
                        port=args.port,
                        token=args.token,
                        task_status=task_status,
                    )
                )
                ids = ", ".join(w.id for w in workflows)
                print(
                    f"serving {ids} from {where}: dashboard at {url}/ ; Ctrl-C stops",
                    file=sys.stderr,
                    flush=True,
                )
                async for _ in signals:
                    print("server stopping", file=sys.stderr, flush=True)
                    everything.cancel()
                    break
    return 0


def add_serve_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    epilog: str,
) -> None:
    text = "Serve the HTTP API and the live dashboard of the runs (needs trioflow[web])."
    serve = commands.add_parser(
        "serve",
        help=text,
        description=text,
        parents=[common],
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "apps",
        nargs="+",
        metavar="MODULE_OR_FILE:WORKFLOW",
        help="the workflows the server can start, resume and show",
    )
    serve.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"the address to listen on ({DEFAULT_HOST}); any other needs --token",
    )
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"the port ({DEFAULT_PORT}; 0: any free)"
    )
    serve.add_argument(
        "--token",
        metavar="T",
        help="require `Authorization: Bearer T` on every API call (the dashboard asks for it)",
    )
    serve.set_defaults(handler=serve_command)
