"""Workflows served by the HTTP tests (``trioflow serve tests/web_app.py:quick ...``).

``quick`` greets after a short sleep (long enough for a browser to see it running);
``long`` waits on its abort signal, for cancels; ``approval`` suspends for a typed
resume; ``signal`` waits for an event; ``broken`` fails; ``writer`` streams outputs.
"""

from __future__ import annotations

import os

import msgspec
import trio

import trioflow

QUICK_SECONDS = float(os.environ.get("WEB_APP_QUICK_SECONDS", "0.05"))


class Name(msgspec.Struct):
    name: str


class Greeting(msgspec.Struct):
    text: str


class Approval(msgspec.Struct):
    approved: bool
    note: str = ""
    level: int = 1


class Decision(msgspec.Struct):
    approved: bool
    note: str


@trioflow.step(id="greet", input_schema=Name, output_schema=Greeting)
async def greet(ctx: trioflow.StepContext[Name]) -> Greeting:
    await trio.sleep(QUICK_SECONDS)
    return Greeting(text=f"hello {ctx.input_data.name}")


@trioflow.step(id="wait-for-cancel", output_schema=Greeting)
async def wait_for_cancel(ctx: trioflow.StepContext[object]) -> Greeting:
    with trio.move_on_after(300):
        await ctx.abort_signal.wait()
    ctx.abort()


@trioflow.step(id="approve", resume_schema=Approval, output_schema=Decision)
async def approve(ctx: trioflow.StepContext[object]) -> Decision:
    if ctx.resume_data is None:
        ctx.suspend({"question": "ship it?"})
    return Decision(approved=ctx.resume_data.approved, note=ctx.resume_data.note)


@trioflow.step(id="go", resume_schema=Approval, output_schema=Decision)
async def go(ctx: trioflow.StepContext[object]) -> Decision:
    return Decision(approved=ctx.resume_data.approved, note=ctx.resume_data.note)


@trioflow.step(id="tokens")
async def tokens(ctx: trioflow.StepContext[object]) -> str:
    await trio.sleep(2 * QUICK_SECONDS)  # time for a page to open its stream
    for token in ["Hel", "lo, ", "world"]:
        await ctx.write(token)
        await trio.sleep(0.2)
    await ctx.write({"done": True})
    return "Hello, world"


@trioflow.step(id="explode")
async def explode(ctx: trioflow.StepContext[object]) -> None:
    ctx.logger.info("checking the parts")
    ctx.logger.warning("a part is missing")
    raise RuntimeError("the step broke on purpose")


quick = trioflow.create_workflow(id="quick", input_schema=Name, output_schema=Greeting)
quick = quick.then(greet).commit()
long = trioflow.create_workflow(id="long").then(wait_for_cancel).commit()
approval = trioflow.create_workflow(id="approval").then(approve).commit()
signal = trioflow.create_workflow(id="signal").wait_for_event("go", go).commit()
broken = trioflow.create_workflow(id="broken").then(explode).commit()
writer = trioflow.create_workflow(id="writer").then(tokens).commit()

WORKFLOWS = [quick, long, approval, signal, broken, writer]
