"""The output of examples/parallel_deadline.py and examples/foreach_batch.py.

Both are real programs on the real clock (each run in a fresh interpreter), so only
what does not depend on the machine's speed is checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


@pytest.mark.slow
def test_parallel_deadline_prints_what_finished_before_the_deadline() -> None:
    assert run_example("parallel_deadline.py") == [
        "fetch-asia: aborted, closing its connection",
        "deadline: Workflow run canceled",
        "run: canceled",
        "fetch-eu: success -> 'prices from eu'",
        "fetch-us: success -> 'prices from us'",
        "fetch-asia: canceled",
        "combine: never started",
    ]


@pytest.mark.slow
def test_foreach_batch_prints_one_progress_line_per_item() -> None:
    lines = run_example("foreach_batch.py")
    images = [f"{letter}.png" for letter in "abcdefgh"]
    progress = [re.fullmatch(r"progress: (\S+) done \((\d)/8\)", line) for line in lines[:8]]
    assert all(progress), lines
    # Every item once; completed counts up; items finish out of input order.
    assert sorted(match[1] for match in progress if match) == images
    assert [int(match[2]) for match in progress if match] == list(range(1, 9))
    assert progress[0] is not None and progress[0][1] == "b.png"  # 0.02 s, a.png takes 0.2 s
    assert lines[8:] == [
        "finish: success",
        "output: " + repr([image.replace(".png", "-small.png") for image in images]),
        "at most 3 at once (concurrency=3)",
    ]
