"""The workflows of the multi-process tests and benchmarks, and a worker process for them.

``python tests/pg_worker_app.py --storage URL [--concurrency N] [--lease S] [--log PATH]
[--max-sleep S]``
runs `trioflow.serve_worker` on the storage `URL` names (a PostgreSQL DSN or
``sqlite:PATH``) until SIGINT/SIGTERM, after printing ``ready <owner id>`` on stdout.
Steps append ``<what> <run id> <step> <pid> <wall time>`` lines to the log file, so a
test can count how often each step ran and where.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_server import make_storage

import trioflow

_log: TextIO | None = None
_max_sleep = float("inf")  # --max-sleep: a process that takes a run over need not wait


def log(what: str, ctx: trioflow.StepContext[Any], step_id: str) -> None:
    if _log is not None:
        _log.write(f"{what} {ctx.run_id} {step_id} {os.getpid()} {time.time():.6f}\n")
        _log.flush()


def _pass_on(step_id: str) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        log("start", ctx, step_id)
        data = dict(ctx.input_data or {})
        delay = min((data.get("sleep") or {}).get(step_id, 0), _max_sleep)
        if delay:
            await trio.sleep(delay)
        log("done", ctx, step_id)
        data["pids"] = [*data.get("pids", []), os.getpid()]
        return data

    return trioflow.create_step(id=step_id, execute=execute)


# Three steps; input {"sleep": {"s2": 5}} makes a step sleep that long.
three = (
    trioflow.create_workflow(id="three")
    .then(_pass_on("s1"))
    .then(_pass_on("s2"))
    .then(_pass_on("s3"))
    .commit()
)


@trioflow.step(id="block")
async def _block(ctx: trioflow.StepContext[Any]) -> None:
    log("start", ctx, "block")
    try:
        await trio.sleep_forever()
    finally:
        log("cancelled", ctx, "block")


# One step that waits until cancelled: its "cancelled" line times the cancel's arrival.
blocker = trioflow.create_workflow(id="blocker").then(_block).commit()


@trioflow.step(id="ask")
async def _ask(ctx: trioflow.StepContext[Any]) -> Any:
    log("start", ctx, "ask")
    if ctx.resume_data is None:
        ctx.suspend({"question": "approve?"})
    return {"answer": ctx.resume_data, "pid": os.getpid()}


# Suspends at "ask"; a resume with data finishes it.
suspender = trioflow.create_workflow(id="suspender").then(_ask).commit()


@trioflow.step(id="wait")
async def _wait(ctx: trioflow.StepContext[Any]) -> str:
    log("start", ctx, "wait")
    await trio.sleep(ctx.input_data["delay"])
    log("done", ctx, "wait")
    return "finished"


# Completes after input["delay"] seconds: to race a cancel against.
racer = trioflow.create_workflow(id="racer").then(_wait).commit()

WORKFLOWS = [three, blocker, suspender, racer]


async def _serve(args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:
        engine = await nursery.start(
            lambda task_status: trioflow.serve_worker(
                storage=make_storage(args.storage),
                workflows=WORKFLOWS,
                concurrency=args.concurrency,
                lease_seconds=args.lease,
                poll_interval=args.poll,
                task_status=task_status,
            )
        )
        print(f"ready {engine.owner_id}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def main() -> None:
    global _log, _max_sleep
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--storage", required=True, help="a PostgreSQL DSN or sqlite:PATH")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease", type=float, default=10.0)
    parser.add_argument("--poll", type=float, default=0.02)
    parser.add_argument("--log", help="append step lines to this file")
    parser.add_argument("--max-sleep", type=float, default=float("inf"), help="cap step sleeps")
    args = parser.parse_args()
    _max_sleep = args.max_sleep
    if args.log:
        _log = open(args.log, "a", buffering=1)
    trio.run(_serve, args)


if __name__ == "__main__":
    main()
