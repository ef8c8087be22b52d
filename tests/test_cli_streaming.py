"""What steps write (``ctx.write``) in the ``trioflow`` command, as a real subprocess:
printed live by ``trioflow run``, stopped at once by a real Ctrl-C (exit 130), and
replayed by ``runs watch`` when the step stores its output events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from test_cli import ENV, ROOT, TIMEOUT, Live, command, json_lines, trioflow

STREAM_APP = f"{ROOT / 'examples' / 'streaming_answer.py'}:workflow"

# A step that stores what it writes with the run.
STORED_APP = """
import trioflow


@trioflow.step(id="count", store_output_events=True)
async def count(ctx):
    for n in range(3):
        await ctx.write({"n": n})
    await ctx.write("done")
    return 3


workflow = trioflow.create_workflow(id="counting").then(count).commit()
"""


def read_until(proc: subprocess.Popen[bytes], seen: bytearray, done: bytes, words: int) -> None:
    """Read `proc`'s stdout as it comes (the streamed text has no newline yet) until
    `done` is followed by at least `words` words."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while True:
        _, found, after = bytes(seen).partition(done)
        if found and len(after.split()) >= words:
            return
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"the output ended early: {bytes(seen)!r}")
        seen += chunk


@pytest.mark.slow
def test_ctrl_c_stops_a_streaming_step_at_once_and_exits_130(tmp_path: Path) -> None:
    question = json.dumps({"question": "Why Trio?", "pause": 0.1})
    proc = subprocess.Popen(
        command("--db", str(tmp_path / "runs.db"), "run", STREAM_APP, "--input", question),
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    seen = bytearray()
    try:
        read_until(proc, seen, b"answer             output", 5)  # mid-stream
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = (bytes(seen) + out).decode()
    assert proc.returncode == 130, err
    assert err == b""
    streamed, notice, rest = text.partition("\nCtrl-C: canceling run ")
    assert notice, text
    words = streamed.split(" output ", 1)[1].split()
    full = (ROOT / "examples" / "streaming_answer.py").read_text()
    assert 5 <= len(words) < 40  # the answer has 122 words: it stopped half-way
    assert " ".join(words) in " ".join(full.split())  # what was streamed, in order
    # No word came after the cancel: a later write would start a new "output" line.
    assert " output " not in rest
    assert "answer             canceled" in rest
    assert "interrupted: answer" in rest


@pytest.mark.slow
def test_run_json_prints_output_events_and_runs_watch_replays_stored_ones(
    tmp_path: Path,
) -> None:
    (tmp_path / "stored_app.py").write_text(STORED_APP)
    ran = trioflow(tmp_path, "run", "stored_app.py:workflow", "--run-id", "s-1", "--json")
    assert ran.returncode == 0, ran.stderr
    events = json_lines(ran.stdout)
    outputs = [(e["step_id"], e["data"]) for e in events if e["type"] == "workflow-step-output"]
    assert outputs == [
        ("count", {"n": 0}),
        ("count", {"n": 1}),
        ("count", {"n": 2}),
        ("count", "done"),
    ]

    # Another process, after the run: the stored output events are replayed.
    watched = trioflow(tmp_path, "runs", "watch", "s-1", "--json")
    assert watched.returncode == 0, watched.stderr
    lines = json_lines(watched.stdout)
    assert [line["type"] for line in lines] == [
        "run",
        "workflow-step-output",
        "workflow-step-output",
        "workflow-step-output",
        "workflow-step-output",
        "step",
        "run-summary",
    ]
    assert [line["data"] for line in lines[1:5]] == [{"n": 0}, {"n": 1}, {"n": 2}, "done"]

    shown = trioflow(tmp_path, "runs", "watch", "s-1")
    assert shown.returncode == 0, shown.stderr
    body = shown.stdout.splitlines()
    assert [line.split()[1:3] for line in body[1:5]] == [
        ["count", "started"],
        ["count", "output"],
        ["count", "output"],
        ["count", "output"],
    ]
    assert body[2].endswith('{"n":0}')
    assert body[5].split()[1:] == ["count", "output", "done"]
    assert body[6].split()[1:3] == ["count", "success"]


# A step that stores two outputs, then works for a long time.
STORED_SLOW_APP = """
import trio
import trioflow


@trioflow.step(id="think", store_output_events=True)
async def think(ctx):
    await ctx.write("first thought")
    await ctx.write({"progress": 0.5})
    await trio.sleep(60)
    return "done"


workflow = trioflow.create_workflow(id="thinking").then(think).commit()
"""


@pytest.mark.slow
def test_runs_watch_shows_stored_outputs_of_a_step_while_it_runs(tmp_path: Path) -> None:
    (tmp_path / "slow_app.py").write_text(STORED_SLOW_APP)
    runner = Live(tmp_path, "run", "slow_app.py:workflow", "--run-id", "t-1")
    watcher: Live | None = None
    try:
        runner.wait_for("think", "output", "first thought")
        watcher = Live(tmp_path, "runs", "watch", "t-1")
        watcher.wait_for("think", "output", '{"progress":0.5}')
        canceled = trioflow(tmp_path, "runs", "cancel", "t-1")
        assert canceled.returncode == 0, canceled.stderr
        code, out, _ = watcher.finish()
        runner.finish()
    finally:
        runner.kill()
        if watcher is not None:
            watcher.kill()
    assert code == 130
    lines = [line.split(None, 3)[1:] for line in out.splitlines()[1:4]]
    # The step is not stored while it runs: its first output shows its start.
    assert lines == [
        ["think", "started"],
        ["think", "output", "first thought"],
        ["think", "output", '{"progress":0.5}'],
    ]
    assert out.splitlines()[4].split()[1:3] == ["think", "canceled"]
