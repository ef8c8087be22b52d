"""Every program in examples/ runs to its end (each in a fresh interpreter, on the real
clock), and the cancellation examples print what they promise.

New examples are picked up automatically: each ``examples/*.py`` must exit 0 within
the timeout and write nothing to stderr.
"""

from __future__ import annotations

import functools
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
