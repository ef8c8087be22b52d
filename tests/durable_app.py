"""A program with durable runs on a SQLite file, for test_recovery.py to kill, interrupt
and cancel from outside.

    python tests/durable_app.py DB LOG start WORKFLOW RUN_ID INPUT_JSON [options]
    python tests/durable_app.py DB LOG recover RUN_ID

``start`` opens an engine on DB, creates the run and starts it with ``start_soon``,
prints ``ready``, then ``result <status> <result as JSON>`` once the run stops
executing. ``recover`` opens an engine (which takes over runs whose lease expired) and
prints the result of RUN_ID once it has ended. Engines use ``lease_seconds=0.5`` and
``poll_interval=0.01``, so that a dead process's runs are taken over within a second.

Every step appends ``start <step> <pid>`` to LOG each time it starts, so the test counts
executions and sees which process ran what; an abort listener appends
``abort <step> <pid>``.

How the process dies (``--kill``; SIGKILL, sent by the process to itself):

* ``in-step:STEP[:N]``: inside STEP, after it logged its start (its N-th start in this
  process, default 1): the step was running, its completion is never recorded.
* ``after-save:N``: right after the N-th snapshot write of the run has committed (the
  1st is written when the run starts executing, then one after each completed step or
  loop iteration, and the last one records the end): "between steps".
* ``in-save:N``: during the N-th snapshot write: a SQLite progress handler (called
  by SQLite every few virtual-machine instructions, in the worker thread) kills the
  process while the UPDATE statement executes, before it commits. The run must
  recover from the snapshot before.

``--block`` makes the ``block`` step wait forever (until it is canceled) the first time
it runs in this process. ``--then wait-canceled`` keeps the engine open after the
result until the run is stored ``'canceled'`` (for a suspended run canceled from the
test process); ``--then shutdown`` cancels a scope around the engine once ``block``
has started (a host program shutting down).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections import Counter as Tally
from pathlib import Path
from typing import Any

import msgspec
import trio

import trioflow

LEASE = 0.5
POLL = 0.01


class Count(msgspec.Struct, frozen=True):
    n: int
    until: int = 5


class Square(msgspec.Struct, frozen=True):
    value: int


class Ask(msgspec.Struct, frozen=True):
    question: str


class Answer(msgspec.Struct, frozen=True):
    ok: bool


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def make_workflows(
    log: Path, *, kill: str | None = None, block: bool = False, blocked: trio.Event | None = None
) -> list[trioflow.Workflow]:
    """The app's workflows. The test process builds them too (without `kill` and
    `block`) to recover runs in-process."""
    starts: Tally[str] = Tally()
    kind, _, where = (kill or "").partition(":")
    kill_step, _, nth = where.partition(":")

    def log_line(what: str, step: str) -> None:
        with open(log, "a") as f:
            f.write(f"{what} {step} {os.getpid()}\n")

    def started(step: str) -> None:
        log_line("start", step)
        starts[step] += 1
        if kind == "in-step" and kill_step == step and starts[step] == int(nth or 1):
            die()

    def chain(step: str) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> Any:
            started(step)
            return f"{ctx.input_data}+{step}"

        return trioflow.create_step(id=step, execute=execute)

    three = trioflow.create_workflow(id="three")
    for step in ("s1", "s2", "s3"):
        three.then(chain(step))

    @trioflow.step(id="tick", output_schema=Count)
    async def tick(ctx: trioflow.StepContext[Count]) -> Count:
        started("tick")
        count = ctx.input_data  # a typed input, after a recovery too
        return Count(n=count.n + 1, until=count.until)

    loop = trioflow.create_workflow(id="loop", input_schema=Count, output_schema=Count)
    loop.dountil(tick, lambda ctx: ctx.input_data.n >= ctx.input_data.until)

    @trioflow.step(id="item", output_schema=Square)
    async def item(ctx: trioflow.StepContext[int]) -> Square:
        started(f"item-{ctx.input_data}")
        return Square(value=ctx.input_data * ctx.input_data)

    @trioflow.step(id="sum")
    async def total(ctx: trioflow.StepContext[list[Square]]) -> int:
        started("sum")
        return sum(square.value for square in ctx.input_data)

    batch = trioflow.create_workflow(id="batch").foreach(item).then(total)

    async def block_step(ctx: trioflow.StepContext[Any]) -> Any:
        started("block")
        ctx.abort_signal.add_event_listener("abort", lambda: log_line("abort", "block"))
        if block and starts["block"] == 1:
            if blocked is not None:
                blocked.set()
            await trio.sleep_forever()
        return f"{ctx.input_data}+block"

    blocking = (
        trioflow.create_workflow(id="blocking")
        .then(chain("s1"))
        .then(trioflow.create_step(id="block", execute=block_step))
    )

    async def pass_on(ctx: trioflow.StepContext[Any]) -> Any:
        started("s1")
        return ctx.input_data

    sleepy = (
        trioflow.create_workflow(id="sleepy")
        .then(trioflow.create_step(id="s1", execute=pass_on))
        .sleep(lambda ctx: ctx.input_data["nap"], id="nap")
        .then(chain("s2"))
    )

    @trioflow.step(id="approve", suspend_schema=Ask, resume_schema=Answer)
    async def approve(ctx: trioflow.StepContext[Any]) -> Any:
        started("approve")
        if ctx.resume_data is None:
            ctx.suspend({"question": "ok?"})
        return ctx.resume_data.ok

    approval = trioflow.create_workflow(id="approval").then(chain("s1")).then(approve)
    return [wf.commit() for wf in (three, loop, batch, blocking, sleepy, approval)]


class KillingStorage(trioflow.SQLiteStorage):
    """SQLiteStorage that kills its process after or during its N-th write (a run's
    start, the write before each next step, the final write), or (``in-batch:N``)
    during the first `save_many` call from its N-th on that holds several writes (a
    group commit of several runs), while the second write of it is applied: the first
    is in the transaction, nothing of it is committed. `save_many_calls` counts the
    calls, `batch_sizes` their sizes."""

    def __init__(self, path: str, kill: str | None) -> None:
        super().__init__(path)
        kind, _, nth = (kill or "").partition(":")
        self.kind = kind
        self.kill_at = int(nth) if kind in ("after-save", "in-save", "in-batch") else 0
        self.saves = 0
        self.save_many_calls = 0
        self.batch_sizes: list[int] = []

    async def save_many(self, writes: Any, *args: Any, **kwargs: Any) -> list[bool]:
        self.save_many_calls += 1
        self.batch_sizes.append(len(writes))
        if self.kind == "in-batch" and self.save_many_calls >= self.kill_at and len(writes) > 1:
            self.kind = "dying"  # a second batch may start before this one is applied
            print(f"dying in a batch of {len(writes)} writes", flush=True)
            self._die_in_second_write()
        return await self._write(super().save_many, writes, *args, **kwargs)  # type: ignore[no-any-return]

    def _die_in_second_write(self) -> None:
        """SIGKILL once the statement that applies the batch's second write runs."""
        assert self._conn is not None
        applying = 0

        def trace(statement: str) -> None:
            nonlocal applying
            # Only a write of `save_many` sets updated_at (claims, renewals and releases
            # set the owner or lease); this batch holds the connection until it is done.
            if statement.startswith(
                ("UPDATE trioflow_runs SET updated_at", "UPDATE trioflow_runs SET status = ?")
            ):
                applying += 1

        def progress() -> int:
            if applying >= 2:
                die()
            return 0

        self._conn.set_trace_callback(trace)
        self._conn.set_progress_handler(progress, 1)

    async def claim_many(self, claims: Any) -> Any:
        if all(claim.start is None for claim in claims):
            return await super().claim_many(claims)
        return await self._write(super().claim_many, claims)  # a run's start: a write

    async def _write(self, write: Any, *args: Any, **kwargs: Any) -> Any:
        self.saves += 1
        if self.kind == "in-save" and self.saves == self.kill_at:
            assert self._conn is not None
            steps = 0

            def progress() -> int:
                nonlocal steps
                steps += 1
                if steps == 2:  # the UPDATE is under way; it commits ~6 callbacks later
                    die()
                return 0

            self._conn.set_progress_handler(progress, 1)
        saved = await write(*args, **kwargs)
        if self.kind == "after-save" and self.saves == self.kill_at:
            die()
        return saved


def engine(db: str, workflows: list[trioflow.Workflow], kill: str | None = None) -> Any:
    return trioflow.open_engine(
        storage=KillingStorage(db, kill),
        workflows=workflows,
        lease_seconds=LEASE,
        poll_interval=POLL,
    )


def report(result: trioflow.RunResult) -> None:
    print("result", result.status, msgspec.json.encode(result.result).decode(), flush=True)


async def start(args: argparse.Namespace) -> None:
    blocked = trio.Event()
    workflows = make_workflows(Path(args.log), kill=args.kill, block=args.block, blocked=blocked)
    with trio.CancelScope() as outside:
        async with engine(args.db, workflows, args.kill) as eng:
            run = await eng.create_run(args.workflow, run_id=args.run_id)
            await run.start_soon(msgspec.json.decode(args.input))
            print("ready", flush=True)
            if args.then == "shutdown":
                await blocked.wait()
                outside.cancel()
            report(await run.result())
            if args.then == "wait-canceled":
                while (await eng.get_run(run.run_id)).status != "canceled":  # noqa: ASYNC110
                    await trio.sleep(POLL)
                print("saw canceled", flush=True)
    if outside.cancelled_caught:
        print("shut down", flush=True)


async def recover(args: argparse.Namespace) -> None:
    async with engine(args.db, make_workflows(Path(args.log))) as eng:
        report(await (await eng.get_run(args.run_id)).result())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("log")
    commands = parser.add_subparsers(dest="command", required=True)
    starting = commands.add_parser("start")
    starting.add_argument("workflow")
    starting.add_argument("run_id")
    starting.add_argument("input")
    starting.add_argument("--kill")
    starting.add_argument("--block", action="store_true")
    starting.add_argument("--then", choices=["wait-canceled", "shutdown"])
    recovering = commands.add_parser("recover")
    recovering.add_argument("run_id")
    args = parser.parse_args()
    try:
        trio.run(start if args.command == "start" else recover, args)
    except KeyboardInterrupt:
        print("interrupted", flush=True)  # SIGINT: trio raised it out of the engine's block
        sys.exit(0)


if __name__ == "__main__":
    main()
