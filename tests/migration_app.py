"""The workflows of the storage-migration fixtures (tests/data/make_schema3_db.py,
tests/data/make_schema2_pg.py) and of tests/test_migration.py, which reopens them.

The fixtures hold a run of every stored status, written by the trioflow of the day
they were made; the test opens them with the trioflow of today. So these definitions
must keep their versions (fixed strings below) and the shape of their records: change
them and the fixtures no longer match.

Every step appends ``"<run id>:<step id>[:<detail>]"`` to `CALLS`, which is how the
test knows that a recorded step did not run again. `HOLD` is set only while a fixture
is made: the `foreach` item at index 2 then blocks, so that the run is stored
``'running'`` with items 0 and 1 done.
"""

from __future__ import annotations

from typing import Any

import trio

import trioflow

CALLS: list[str] = []
HOLD = False

# Run ids, one per stored status (and loop/foreach progress), and their workflows.
RUN_IDS = {
    "mig-success": "pair",
    "mig-failed": "fails",
    "mig-canceled": "pair",
    "mig-pending": "pair",
    "mig-suspended": "pair",
    "mig-waiting": "event",
    "mig-loop": "loop",
    "mig-foreach": "items",
}
VERSION = "m1"


def _note(ctx: trioflow.StepContext[Any], *detail: object) -> None:
    CALLS.append(":".join([ctx.run_id, *map(str, detail)]))


async def _first(ctx: trioflow.StepContext[Any]) -> dict[str, Any]:
    _note(ctx, "first")
    ctx.logger.info("first step of %s", ctx.run_id)
    return {"n": ctx.input_data, "doubled": 2 * ctx.input_data}


async def _second(ctx: trioflow.StepContext[Any]) -> dict[str, Any]:
    _note(ctx, "second")
    if ctx.input_data["n"] < 0 and ctx.resume_data is None:
        ctx.suspend({"question": "approve?", "n": ctx.input_data["n"]})
    who = ctx.resume_data["who"] if ctx.resume_data is not None else "nobody"
    return {"total": ctx.input_data["doubled"] + 1, "approved_by": who}


# pair: first -> second; a negative input suspends at the second step until resumed.
pair = (
    trioflow.create_workflow(id="pair", version=VERSION)
    .then(trioflow.create_step(id="first", execute=_first))
    .then(trioflow.create_step(id="second", execute=_second))
    .commit()
)


async def _explode(ctx: trioflow.StepContext[Any]) -> None:
    _note(ctx, "explode")
    raise ValueError(f"cannot handle {ctx.input_data!r}")


fails = (
    trioflow.create_workflow(id="fails", version=VERSION)
    .then(trioflow.create_step(id="first", execute=_first))
    .then(trioflow.create_step(id="explode", execute=_explode))
    .commit()
)


async def _receipt(ctx: trioflow.StepContext[Any]) -> str:
    _note(ctx, "receipt")
    return f"paid {ctx.resume_data['amount']}"


event = (
    trioflow.create_workflow(id="event", version=VERSION)
    .then(trioflow.create_step(id="first", execute=_first))
    .wait_for_event("paid", trioflow.create_step(id="receipt", execute=_receipt))
    .commit()
)


async def _tick(ctx: trioflow.StepContext[Any]) -> int:
    """The loop's body: input + 1. The pass from 2 suspends until resumed."""
    value: int = ctx.input_data
    _note(ctx, "tick", value)
    if value == 2 and ctx.resume_data is None:
        ctx.suspend({"at": value})
    return value + 1


def _until_five(ctx: trioflow.ConditionContext[Any]) -> bool:
    """The loop's condition; notes ``"loop-until:<iteration>:<value>"`` (there is one
    loop run), so that a test sees whether the iteration count went on or restarted."""
    CALLS.append(f"loop-until:{ctx.iteration_count}:{ctx.input_data}")
    return bool(ctx.input_data >= 5)


# loop: dountil the value reaches 5, from the input (0): ticks 0, 1, then 2 suspends.
loop = (
    trioflow.create_workflow(id="loop", version=VERSION)
    .dountil(trioflow.create_step(id="tick", execute=_tick), _until_five)
    .commit()
)


async def _square(ctx: trioflow.StepContext[Any]) -> int:
    value: int = ctx.input_data
    _note(ctx, "square", value)
    if HOLD and value == 2:
        await trio.sleep_forever()
    return value * value


items = (
    trioflow.create_workflow(id="items", version=VERSION)
    .foreach(trioflow.create_step(id="square", execute=_square))
    .commit()
)

WORKFLOWS = [pair, fails, event, loop, items]


class _Interrupted(Exception):
    """Leaves the second engine of `write_runs` by an exception: its runs stay
    recoverable, as after a shutdown of the host program."""


async def _stored(storage: trioflow.Storage, run_id: str, done: Any) -> None:
    """Wait until the stored row of `run_id` satisfies `done(row)`."""
    with trio.fail_after(20):
        while not done(await storage.load(run_id)):  # noqa: ASYNC110 - polls the storage
            await trio.sleep(0.01)


def _foreach_done(row: Any) -> bool:
    from trioflow import _snapshot

    progress = _snapshot.decode(row.run_id, row.snapshot).progress.get("square", {})
    return set(progress) >= {"0", "1"}


async def write_runs(storage: trioflow.Storage) -> None:
    """Store one run per id of `RUN_IDS` through an engine on `storage` (used only by
    the fixture scripts; the engine options are the defaults)."""
    global HOLD
    async with trioflow.open_engine(storage=storage, workflows=WORKFLOWS) as engine:
        run = await engine.create_run("pair", "mig-success")
        assert (await run.start(3)).status == "success"
        run = await engine.create_run("fails", "mig-failed")
        assert (await run.start(4)).status == "failed"
        run = await engine.create_run("pair", "mig-canceled")
        assert (await run.start(-1)).status == "suspended"
        assert (await run.cancel("no longer needed")).status == "canceled"
        await engine.create_run("pair", "mig-pending")
        run = await engine.create_run("pair", "mig-suspended")
        assert (await run.start(-5)).status == "suspended"
        run = await engine.create_run("loop", "mig-loop")
        assert (await run.start(0)).status == "suspended"
    HOLD = True
    try:
        async with trioflow.open_engine(storage=storage, workflows=WORKFLOWS) as engine:
            run = await engine.create_run("event", "mig-waiting")
            await run.start_soon(7)
            await _stored(storage, "mig-waiting", lambda row: row.status == "waiting")
            run = await engine.create_run("items", "mig-foreach")
            await run.start_soon([0, 1, 2, 3])
            await _stored(storage, "mig-foreach", _foreach_done)
            raise _Interrupted
    except _Interrupted:
        pass
    finally:
        HOLD = False
