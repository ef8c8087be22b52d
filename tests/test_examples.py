"""Every program in examples/ runs to its end (each in a fresh interpreter, on the real
clock) and prints what it promises: each example has a test of its key lines.

New examples are picked up automatically: each ``examples/*.py`` must exit 0 within
the timeout and write nothing to stderr, and `test_every_example_has_a_test_of_its_output`
fails until the new one has its own test here.
"""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30  # seconds; every example is meant to take well under one


@functools.cache  # each example runs once per session, however many tests read it
def run_example(path: Path) -> tuple[str, ...]:
    done = subprocess.run(
        [sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{path.name} exited {done.returncode}:\n{done.stderr}"
    assert done.stderr == "", done.stderr
    return tuple(done.stdout.splitlines())


def test_the_examples_are_found() -> None:
    names = {path.name for path in EXAMPLES.glob("*.py")}
    assert {"cancel_on_error.py", "long_running_step.py"} <= names


def test_every_example_has_a_test_of_its_output() -> None:
    tested = {
        name.removeprefix("test_") + ".py"
        for name, value in globals().items()
        if name.startswith("test_") and callable(value)
    }
    untested = sorted(path.name for path in EXAMPLES.glob("*.py") if path.name not in tested)
    assert untested == [], "add a test named after each example, checking what it prints"


@pytest.mark.slow
@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_every_example_runs(path: Path) -> None:
    run_example(path)  # exits 0 and writes nothing to stderr


@pytest.mark.slow
def test_cancel_on_error() -> None:
    assert run_example(EXAMPLES / "cancel_on_error.py") == (
        "start raised: TooSlowError",
        "run after the error: running",
        "cancel: Workflow run canceled",
        "run: canceled",
        "fetch: canceled",
        "start returned: failed (ValueError)",
        "cancel: Workflow run already failed",
        "run: failed",
    )


@pytest.mark.slow
def test_long_running_step() -> None:
    assert run_example(EXAMPLES / "long_running_step.py") == (
        "main: cancelling the run",
        "abort listener: clearing the timer",
        "step: aborted (canceled), cleaning up",
        "start returned: canceled",
        "cancel: Workflow run canceled (status 'canceled')",
        "long-running-step: canceled",
        "report: never started",
    )


@pytest.mark.slow
def test_approval_flow() -> None:
    assert run_example(EXAMPLES / "approval_flow.py") == (
        "suspended at [['approve']]: "
        "Question(request_id='PO-7', summary='ada asks for 1250.00 EUR (PO-7)')",
        "success: Outcome(request_id='PO-7', approved=True, approver='grace', "
        "comment='within budget')",
    )


@pytest.mark.slow
def test_foreach_batch() -> None:
    lines = run_example(EXAMPLES / "foreach_batch.py")
    images = [f"{letter}.png" for letter in "abcdefgh"]
    progress = [re.fullmatch(r"progress: (\S+) done \((\d)/8\)", line) for line in lines[:8]]
    assert all(progress), lines
    # Items finish in whatever order their latency gives; the count goes up one by one.
    assert sorted(match[1] for match in progress if match) == images
    assert [int(match[2]) for match in progress if match] == list(range(1, 9))
    assert lines[8:] == (
        "finish: success",
        f"output: {[image.replace('.png', '-small.png') for image in images]}",
        "at most 3 at once (concurrency=3)",
    )


@pytest.mark.slow
def test_order_pipeline() -> None:
    assert run_example(EXAMPLES / "order_pipeline.py") == (
        "success: Shipment(order_id='A-1001', tracking='TRK-A-1001', amount=25.0, "
        "reservation_id='R-A-1001', payment_id='P-A-1001')",
        "  validate: success",
        "  reserve-stock: success",
        "  charge-payment: success",
        "  ship: success",
    )


@pytest.mark.slow
def test_parallel_deadline() -> None:
    assert run_example(EXAMPLES / "parallel_deadline.py") == (
        "fetch-asia: aborted, closing its connection",
        "deadline: Workflow run canceled",
        "run: canceled",
        "fetch-eu: success -> 'prices from eu'",
        "fetch-us: success -> 'prices from us'",
        "fetch-asia: canceled",
        "combine: never started",
    )


@pytest.mark.slow
def test_test_my_workflow() -> None:
    lines = run_example(EXAMPLES / "test_my_workflow.py")
    assert re.fullmatch(r"\.{5} +\[100%\]", lines[0]), lines
    assert re.fullmatch(r"5 passed in [\d.]+s", lines[-1]), lines


@pytest.mark.slow
def test_streaming_answer() -> None:
    # The first 12 words of the answer, streamed one write at a time on one line.
    words = "Trio makes concurrency structured: every task lives in a nursery, so no"
    assert run_example(EXAMPLES / "streaming_answer.py") == (words, "run: success")
