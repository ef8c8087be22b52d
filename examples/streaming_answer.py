"""A step that streams a long answer word by word, as a language model streams tokens.

The step sends each word to the run's watchers with ``await ctx.write(word)`` while it
works: ``run.watch()`` receives them as ``workflow-step-output`` events, in order with
the step's start and result. ``ctx.write`` is a checkpoint, so a cancel (Ctrl-C in the
CLI) stops the stream at once, between two words.

Watch it live in the CLI, and press Ctrl-C half-way (the CLI exits 130)::

    trioflow run examples/streaming_answer.py:workflow --input '{"question": "Why Trio?"}'

or run ``python examples/streaming_answer.py``, which streams a short answer quickly.
"""

from __future__ import annotations

import msgspec
import trio

import trioflow

ANSWER = (
    "Trio makes concurrency structured: every task lives in a nursery, so no task "
    "outlives the code that started it, and an error never vanishes in a background "
    "task. Cancellation is a scope, not a flag: cancelling a scope interrupts every "
    "task inside it at its next checkpoint, and time-outs are scopes with deadlines. "
    "That is why a trioflow run can be cancelled exactly: the run owns a scope, each "
    "step runs inside it, and when cancel returns nothing of the run is executing. "
    "Streaming fits the same shape: each word a step writes is a checkpoint, so the "
    "stream stops the moment the run is cancelled, and a watcher that stops reading "
    "only loses events for itself, never slowing the run down."
)


class Question(msgspec.Struct):
    question: str
    words: int = 0  # how many words of the answer to stream (0: all of them)
    pause: float = 0.05  # seconds between two words, as a model's tokens come


class Answer(msgspec.Struct):
    question: str
    answer: str


@trioflow.step(id="answer", input_schema=Question, output_schema=Answer)
async def answer(ctx: trioflow.StepContext[Question]) -> Answer:
    words = ANSWER.split()
    if ctx.input_data.words:
        words = words[: ctx.input_data.words]
    for index, word in enumerate(words):
        await trio.sleep(ctx.input_data.pause)  # the model thinking
        await ctx.write(word if index == 0 else " " + word)
    return Answer(question=ctx.input_data.question, answer=" ".join(words))


workflow = (
    trioflow.create_workflow(id="streaming-answer", input_schema=Question, output_schema=Answer)
    .then(answer)
    .commit()
)


async def main() -> None:
    run = await workflow.create_run()
    async with trio.open_nursery() as nursery, run.watch() as events:
        nursery.start_soon(run.start, Question(question="Why Trio?", words=12, pause=0.001))
        async for event in events:
            if isinstance(event, trioflow.WorkflowStepOutput):
                print(event.data, end="", flush=True)
            elif isinstance(event, trioflow.WorkflowFinish):
                print(f"\nrun: {event.status}")


if __name__ == "__main__":
    trio.run(main)
