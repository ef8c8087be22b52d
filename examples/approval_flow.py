"""An approval flow: a purchase request waits, suspended, for a person's decision.

The "approve" step suspends the run with what the approver needs to know; the run is
stored 'suspended' and no process holds it. Anyone with the database resumes it later,
from any process, with the decision as resume data:

    trioflow run examples/approval_flow.py:workflow \\
        --input '{"request_id": "PO-7", "amount": 1250.0, "requester": "ada"}'
    # ... suspended: resume it with:
    trioflow runs resume RUN_ID --step approve \\
        --data '{"approved": true, "approver": "grace"}' examples/approval_flow.py:workflow

The decision is validated by the step's resume schema (a bad one is refused and the
run stays suspended). As a program, ``python examples/approval_flow.py`` does both
halves on a temporary SQLite database and prints the outcome (well under a second).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import trio

import trioflow


class Request(msgspec.Struct):
    request_id: str
    amount: float
    requester: str


class Question(msgspec.Struct):
    request_id: str
    summary: str


class Decision(msgspec.Struct):
    approved: bool
    approver: str
    comment: str = ""


class Outcome(msgspec.Struct):
    request_id: str
    approved: bool
    approver: str
    comment: str


@trioflow.step(id="prepare", input_schema=Request, output_schema=Question)
async def prepare(ctx: trioflow.StepContext[Request]) -> Question:
    request = ctx.input_data
    await trio.sleep(0.02)  # look up the budget
    return Question(
        request_id=request.request_id,
        summary=f"{request.requester} asks for {request.amount:.2f} EUR ({request.request_id})",
    )


@trioflow.step(
    id="approve",
    input_schema=Question,
    suspend_schema=Question,
    resume_schema=Decision,
    output_schema=Outcome,
)
async def approve(ctx: trioflow.StepContext[Question]) -> Outcome:
    decision = ctx.resume_data
    if decision is None:
        ctx.suspend(ctx.input_data)  # stored 'suspended' until someone decides
    return Outcome(
        request_id=ctx.input_data.request_id,
        approved=decision.approved,
        approver=decision.approver,
        comment=decision.comment,
    )


@trioflow.step(id="notify", input_schema=Outcome, output_schema=Outcome)
async def notify(ctx: trioflow.StepContext[Outcome]) -> Outcome:
    await trio.sleep(0.02)  # e-mail the requester
    return ctx.input_data


workflow = (
    trioflow.create_workflow(id="approval", input_schema=Request, output_schema=Outcome)
    .then(prepare)
    .then(approve)
    .then(notify)
    .commit()
)


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        storage = trioflow.SQLiteStorage(Path(folder) / "runs.db")
        async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
            run = await engine.create_run(workflow)
            request = {"request_id": "PO-7", "amount": 1250.0, "requester": "ada"}
            first = await run.start(input_data=request)
            print(f"{first.status} at {first.suspended}: {first.steps['approve'].suspend_payload}")

            # Later, maybe in another process: the same run, from the database.
            same = await engine.get_run(run.run_id)
            decision = {"approved": True, "approver": "grace", "comment": "within budget"}
            final = await same.resume(step="approve", resume_data=decision)
            print(f"{final.status}: {final.result}")


if __name__ == "__main__":
    trio.run(main)
