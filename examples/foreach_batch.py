"""A foreach batch with bounded concurrency, followed with `run.watch()`.

Eight thumbnails are rendered by one step run on each item, at most CONCURRENCY at
once. The watcher prints a `workflow-step-progress` event as each item finishes (in
the order they finish); the output keeps the input order.

Run it with ``python examples/foreach_batch.py``; it takes about 0.3 s.
"""

from __future__ import annotations

import trio

import trioflow

CONCURRENCY = 3
IMAGES = ["a.png", "b.png", "c.png", "d.png", "e.png", "f.png", "g.png", "h.png"]
LATENCY = {"a.png": 0.2, "b.png": 0.02, "c.png": 0.08}  # the others take 0.06 s

running = 0
most_at_once = 0


@trioflow.step(id="thumbnail")
async def thumbnail(ctx: trioflow.StepContext[str]) -> str:
    global running, most_at_once
    running += 1
    most_at_once = max(most_at_once, running)
    try:
        await trio.sleep(LATENCY.get(ctx.input_data, 0.06))
    finally:
        running -= 1
    return ctx.input_data.replace(".png", "-small.png")


workflow = trioflow.create_workflow(id="thumbnails").foreach(thumbnail, CONCURRENCY).commit()


async def main() -> None:
    run = await workflow.create_run()
    async with run.watch() as events, trio.open_nursery() as nursery:

        async def report() -> None:
            async for event in events:
                if isinstance(event, trioflow.WorkflowStepProgress):
                    image = IMAGES[event.item_index]
                    print(f"progress: {image} done ({event.completed}/{event.total})")
                elif isinstance(event, trioflow.WorkflowFinish):
                    print(f"finish: {event.status}")

        nursery.start_soon(report)
        result = await run.start(input_data=IMAGES)

    print(f"output: {result.result}")
    print(f"at most {most_at_once} at once (concurrency={CONCURRENCY})")


if __name__ == "__main__":
    trio.run(main)
