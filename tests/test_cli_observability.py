"""``trioflow runs logs`` and what ``runs show`` says of logs and tracebacks, run as real
subprocesses on a database written by a real ``trioflow run``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import ORDER, ORDER_APP, Live, json_lines, trioflow

APP = """
import pathlib

import trio
import trioflow


def check(value):
    raise ValueError(f"bad value {value}")


@trioflow.step(id="fetch")
async def fetch(ctx):
    ctx.logger.debug("not stored")
    ctx.logger.info("fetching %s", ctx.input_data)
    ctx.logger.warning("slow server\\nsecond line")
    return ctx.input_data


@trioflow.step(id="check")
async def check_step(ctx):
    ctx.logger.error("about to fail")
    check(ctx.input_data)


workflow = trioflow.create_workflow(id="logging-flow").then(fetch).then(check_step).commit()


@trioflow.step(id="wait")
async def wait_for_file(ctx):
    ctx.logger.info("waiting for the file")
    while not pathlib.Path(ctx.input_data).exists():
        await trio.sleep(0.02)
    ctx.logger.info("saw it")
    return "done"


waiting = trioflow.create_workflow(id="waiting").then(wait_for_file).commit()
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    path = tmp_path / "log_app.py"
    path.write_text(APP)
    return path


@pytest.fixture
def failed_run(tmp_path: Path, app: Path) -> str:
    ran = trioflow(tmp_path, "run", f"{app}:workflow", "--input", '"x"', "--run-id", "L-1")
    assert ran.returncode == 1, ran.stderr
    return "L-1"


def test_runs_logs_prints_what_the_steps_logged(tmp_path: Path, failed_run: str) -> None:
    shown = trioflow(tmp_path, "runs", "logs", failed_run)
    assert shown.returncode == 0, shown.stderr
    lines = [line.split("  ", 1)[1] for line in shown.stdout.splitlines()]  # no time
    assert lines == [
        "INFO     fetch  fetching x",
        "WARNING  fetch  slow server",
        "  second line",  # a message's further lines, indented
        "ERROR    check  about to fail",
    ]
    as_json = json_lines(trioflow(tmp_path, "runs", "logs", failed_run, "--json").stdout)
    assert [(r["seq"], r["level"], r["step_id"], r["attempt"]) for r in as_json] == [
        (0, "INFO", "fetch", 1),
        (1, "WARNING", "fetch", 1),
        (2, "ERROR", "check", 1),
    ]


def test_runs_logs_of_a_run_without_logs_or_of_no_run(tmp_path: Path) -> None:
    ran = trioflow(tmp_path, "run", ORDER_APP, "--input", json.dumps(ORDER), "--run-id", "o")
    assert ran.returncode == 0, ran.stderr
    shown = trioflow(tmp_path, "runs", "logs", "o")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "run o has no stored log records (ctx.logger, INFO and above)\n"
    assert trioflow(tmp_path, "runs", "logs", "o", "--json").stdout == ""
    missing = trioflow(tmp_path, "runs", "logs", "nope")
    assert missing.returncode == 2
    assert "no run with id 'nope'" in missing.stderr


def test_runs_show_prints_the_traceback_and_the_logs(tmp_path: Path, failed_run: str) -> None:
    shown = trioflow(tmp_path, "runs", "show", failed_run)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "traceback of step 'check':" in text
    traceback = text.split("traceback of step 'check':\n", 1)[1]
    assert traceback.startswith("    Traceback (most recent call last):")
    assert ", in check\n" in traceback
    assert "    ValueError: bad value x\n" in traceback
    logs = text.split("\nlogs:\n", 1)[1]
    assert "INFO     fetch  fetching x" in logs and "ERROR    check  about to fail" in logs

    document = json.loads(trioflow(tmp_path, "runs", "show", failed_run, "--json").stdout)
    step_traceback = document["steps"]["check"]["error"]["traceback"]
    assert step_traceback.startswith("Traceback (most recent call last):")
    assert step_traceback.rstrip().endswith("ValueError: bad value x")
    assert document["error"]["traceback"] == step_traceback
    assert [entry["message"] for entry in document["logs"]] == [
        "fetching x",
        "slow server\nsecond line",
        "about to fail",
    ]


@pytest.mark.slow
def test_runs_logs_follow_prints_records_while_the_step_runs(tmp_path: Path, app: Path) -> None:
    """A step that is still running has its records written within about half a
    second; the follower ends when the run does, with every record."""
    flag = tmp_path / "go"
    run = Live(tmp_path, "run", f"{app}:waiting", "--input", json.dumps(str(flag)), "--run-id", "F")
    follower: Live | None = None
    try:
        run.wait_for("wait", "started")
        follower = Live(tmp_path, "runs", "logs", "F", "--follow", "--interval", "0.05")
        assert "INFO     wait  waiting for the file" in follower.wait_for("waiting for")
        flag.touch()
        assert "INFO     wait  saw it" in follower.wait_for("saw it")
        code, _, err = follower.finish()
        assert code == 0, err
        assert run.finish()[0] == 0
    finally:
        run.kill()
        if follower is not None:
            follower.kill()
