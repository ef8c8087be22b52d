"""The ``trioflow`` command, run as a real subprocess (``python -m trioflow``).

Each test works in its own folder with its own SQLite database. Ctrl-C is a real
SIGINT sent once the live view has printed that the step started; a cancel from a
second process is a second ``trioflow`` process on the same database.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from trioflow import SQLiteStorage

ROOT = Path(__file__).resolve().parent.parent
ORDER_APP = f"{ROOT / 'examples' / 'order_pipeline.py'}:workflow"
APPROVAL_APP = f"{ROOT / 'examples' / 'approval_flow.py'}:workflow"
ORDER = {"order_id": "A-1001", "sku": "trio-mug", "quantity": 2}
REQUEST = {"request_id": "PO-7", "amount": 1250.0, "requester": "ada"}
TIMEOUT = 20.0  # seconds any one command may take before the test fails

# A step that ignores its abort signal for a long time (so only the scope's cancel
# stops it), with an abort listener that says when it ran.
STUBBORN_APP = """
import trio
import trioflow


@trioflow.step(id="stubborn")
async def stubborn(ctx):
    ctx.abort_signal.add_event_listener("abort", lambda: print("abort listener ran", flush=True))
    await trio.sleep(60)
    return "done"


workflow = trioflow.create_workflow(id="stubborn-flow").then(stubborn).commit()
"""

ENV = {**os.environ, "NO_COLOR": "1", "TRIOFLOW_DB": ""}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trioflow", *args]


def trioflow(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``trioflow --db tmp_path/runs.db ARGS`` to its end."""
    return subprocess.run(
        command("--db", str(tmp_path / "runs.db"), *args),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


class Live:
    """A ``trioflow`` process whose output is read line by line while it runs."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            command("--db", str(tmp_path / "runs.db"), *args),
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.seen: list[str] = []
        self._watchdog = threading.Timer(TIMEOUT, self.proc.kill)
        self._watchdog.start()

    def wait_for(self, *words: str) -> str:
        """The first line (from now) that holds all of `words`."""
        assert self.proc.stdout is not None
        while line := self.proc.stdout.readline():
            self.seen.append(line)
            if all(word in line for word in words):
                return line
        raise AssertionError(f"the output ended without a line with {words}: {self.seen}")

    def finish(self) -> tuple[int, str, str]:
        """(exit code, all of stdout, stderr) once the process has ended."""
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            self._watchdog.cancel()
        return self.proc.returncode, "".join(self.seen) + out, err

    def kill(self) -> None:
        self._watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def stubborn_app(tmp_path: Path) -> str:
    (tmp_path / "stubborn_app.py").write_text(STUBBORN_APP)
    return "stubborn_app.py:workflow"


async def create_db(path: Path) -> None:
    async with SQLiteStorage(path):
        pass


def step_statuses(tmp_path: Path, run_id: str) -> dict[str, str]:
    shown = trioflow(tmp_path, "runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    return {path: step["status"] for path, step in json.loads(shown.stdout)["steps"].items()}


# --- help and exit codes ------------------------------------------------------------------


def test_help_documents_the_exit_codes(tmp_path: Path) -> None:
    shown = trioflow(tmp_path, "--help")
    assert shown.returncode == 0
    for line in ("0    success", "1    the run failed", "2    usage error", "3    the run is"):
        assert line in shown.stdout
    assert "130  the run was canceled" in shown.stdout


# --- trioflow run -------------------------------------------------------------------------


def test_run_to_success_with_the_live_view_and_summary(tmp_path: Path) -> None:
    done = trioflow(tmp_path, "run", ORDER_APP, "--input", json.dumps(ORDER), "--run-id", "o-1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"run o-1 of workflow 'order-pipeline' (db: {tmp_path / 'runs.db'})"
    events = [line.split()[1:3] for line in lines[1:9]]
    assert events[0] == ["validate", "started"]
    assert events[1] == ["validate", "success"]
    assert events[2:4] == [["reserve-stock", "started"], ["charge-payment", "started"]]
    assert sorted(map(tuple, events[4:6])) == [
        ("charge-payment", "success"),
        ("reserve-stock", "success"),
    ]
    assert events[6:] == [["ship", "started"], ["ship", "success"]]
    assert "success: run o-1 of 'order-pipeline' finished in" in done.stdout
    assert '"tracking": "TRK-A-1001"' in done.stdout
    assert done.stderr == ""

    listed = trioflow(tmp_path, "runs", "list")
    assert listed.returncode == 0
    version = order_version()
    assert ["o-1", "order-pipeline", version, "success"] == listed.stdout.splitlines()[1].split()[
        :4
    ]
    shown = trioflow(tmp_path, "runs", "show", "o-1")
    assert shown.returncode == 0
    assert "status    success" in shown.stdout
    for step in ("validate", "reserve-stock", "charge-payment", "ship"):
        assert any(line.split()[:2] == [step, "success"] for line in shown.stdout.splitlines())


def order_version() -> str:
    version: str = runpy.run_path(ORDER_APP.rsplit(":", 1)[0])["workflow"].version
    return version


def test_runs_list_and_show_name_the_workflow_version(tmp_path: Path) -> None:
    done = trioflow(tmp_path, "run", ORDER_APP, "--input", json.dumps(ORDER), "--run-id", "v-1")
    assert done.returncode == 0, done.stderr
    version = order_version()
    assert version.startswith("sha-")
    listed = trioflow(tmp_path, "runs", "list", "--version", version)
    assert listed.stdout.splitlines()[1].split()[:3] == ["v-1", "order-pipeline", version]
    other = trioflow(tmp_path, "runs", "list", "--version", "1")
    assert other.stdout.strip() == f"no runs with version '1' in {tmp_path / 'runs.db'}"
    assert (
        f"workflow  order-pipeline (version {version})"
        in trioflow(tmp_path, "runs", "show", "v-1").stdout
    )
    shown = json.loads(trioflow(tmp_path, "--json", "runs", "show", "v-1").stdout)
    assert shown["version"] == version
    (summary,) = json.loads(trioflow(tmp_path, "runs", "list", "--json").stdout)
    assert summary["version"] == version


def test_a_failed_run_names_the_failing_step(tmp_path: Path) -> None:
    order = {**ORDER, "sku": "teapot"}
    done = trioflow(tmp_path, "run", ORDER_APP, "--input", json.dumps(order), "--run-id", "bad")
    assert done.returncode == 1
    assert "failed: run bad of 'order-pipeline' failed in" in done.stdout
    assert "error: step 'validate' raised ValueError: unknown sku 'teapot'" in done.stdout
    assert "reserve-stock" not in done.stdout


def test_json_output_parses(tmp_path: Path) -> None:
    order = json.dumps(ORDER)
    done = trioflow(tmp_path, "run", ORDER_APP, "--input", order, "--run-id", "j-1", "--json")
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    types = [line["type"] for line in lines]
    assert types[0] == "workflow-start"
    assert types[-2:] == ["workflow-finish", "run-summary"]
    assert types.count("workflow-step-start") == 4
    summary = lines[-1]
    assert summary["status"] == "success"
    assert summary["output"]["tracking"] == "TRK-A-1001"

    listed = json.loads(trioflow(tmp_path, "runs", "list", "--json").stdout)
    assert [(r["run_id"], r["status"]) for r in listed] == [("j-1", "success")]
    shown = json.loads(trioflow(tmp_path, "--json", "runs", "show", "j-1").stdout)
    assert shown["status"] == "success"
    assert shown["steps"]["ship"]["output"]["tracking"] == "TRK-A-1001"
    assert shown["input"] == ORDER
    canceled = trioflow(tmp_path, "runs", "cancel", "j-1", "--json")
    assert canceled.returncode == 1  # it had already ended
    assert json.loads(canceled.stdout)["message"] == "Workflow run already success"
    watched = trioflow(tmp_path, "runs", "watch", "j-1", "--json")
    assert watched.returncode == 0
    assert json_lines(watched.stdout)[-1]["status"] == "success"


# --- Ctrl-C ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_cancels_the_run_and_the_interrupted_steps_are_stored(tmp_path: Path) -> None:
    slow_order = json.dumps({**ORDER, "latency": 25})  # 2 s of payment: time for Ctrl-C
    live = Live(tmp_path, "run", ORDER_APP, "--input", slow_order, "--run-id", "c-1")
    try:
        live.wait_for("charge-payment", "started")
        live.proc.send_signal(signal.SIGINT)
        code, out, err = live.finish()
    finally:
        live.kill()
    assert code == 130, err
    assert "Ctrl-C: canceling run c-1" in out
    assert "canceled: run c-1 of 'order-pipeline' was canceled after" in out
    assert "reason: canceled with Ctrl-C" in out
    assert "interrupted: reserve-stock, charge-payment" in out
    assert "ship" not in out
    assert err == ""

    shown = trioflow(tmp_path, "runs", "show", "c-1")
    assert "status    canceled (interrupted: reserve-stock, charge-payment)" in shown.stdout
    assert "reason    canceled with Ctrl-C" in shown.stdout
    assert step_statuses(tmp_path, "c-1") == {
        "validate": "success",
        "reserve-stock": "canceled",
        "charge-payment": "canceled",
    }


@pytest.mark.slow
def test_a_second_ctrl_c_forces_the_cancel_during_the_grace_period(
    tmp_path: Path, stubborn_app: str
) -> None:
    live = Live(tmp_path, "run", stubborn_app, "--grace", "60", "--run-id", "g-1")
    try:
        live.wait_for("stubborn", "started")
        live.proc.send_signal(signal.SIGINT)
        live.wait_for("its steps have 60s to stop (press Ctrl-C again to force)")
        live.wait_for("abort listener ran")  # the step's listener ran; the step goes on
        live.proc.send_signal(signal.SIGINT)
        code, out, _ = live.finish()  # long before the 60 s grace period ends
    finally:
        live.kill()
    assert code == 130
    assert "Ctrl-C again: forcing the cancellation" in out
    assert "interrupted: stubborn" in out
    assert step_statuses(tmp_path, "g-1") == {"stubborn": "canceled"}


# --- runs cancel / runs watch ----------------------------------------------------------------


@pytest.mark.slow
def test_runs_cancel_from_a_second_process_stops_the_run(tmp_path: Path, stubborn_app: str) -> None:
    runner = Live(tmp_path, "run", stubborn_app, "--run-id", "x-1")
    watcher: Live | None = None
    try:
        runner.wait_for("stubborn", "started")
        watcher = Live(tmp_path, "runs", "watch", "x-1", "--json")
        watcher.wait_for('"type":"run"', '"status":"running"')
        canceled = trioflow(tmp_path, "runs", "cancel", "x-1")
        assert canceled.returncode == 0, canceled.stderr
        assert "canceled: run x-1 of 'stubborn-flow' was canceled" in canceled.stdout
        assert "interrupted: stubborn" in canceled.stdout
        code, out, _ = runner.finish()
        watched_code, watched, _ = watcher.finish()
    finally:
        runner.kill()
        if watcher is not None:
            watcher.kill()
    assert code == 130
    assert "abort listener ran" in out
    assert "reason: canceled by `trioflow runs cancel`" in out
    assert watched_code == 130
    lines = json_lines(watched)
    assert {"type": "step", "step_id": "stubborn", "status": "canceled"}.items() <= {
        k: v for k, v in lines[-2].items() if k in ("type", "step_id", "status")
    }.items()
    assert lines[-1]["type"] == "run-summary"
    assert lines[-1]["status"] == "canceled"
    assert lines[-1]["interrupted"] == ["stubborn"]
    assert step_statuses(tmp_path, "x-1") == {"stubborn": "canceled"}


# --- suspend and resume ---------------------------------------------------------------------


def test_suspend_then_runs_resume(tmp_path: Path) -> None:
    request = json.dumps({"request_id": "PO-7", "amount": 1250.0, "requester": "ada"})
    first = trioflow(tmp_path, "run", APPROVAL_APP, "--input", request, "--run-id", "po-7")
    assert first.returncode == 3, first.stderr
    assert "suspended: run po-7 of 'approval' is suspended at 'approve'" in first.stdout
    assert "ada asks for 1250.00 EUR (PO-7)" in first.stdout
    assert "trioflow runs resume po-7 --step approve --data JSON" in first.stdout

    refused = trioflow(
        tmp_path, "runs", "resume", "po-7", "--step", "approve", "--data", '{"approved": "yes"}',
        APPROVAL_APP,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr == (
        "trioflow: error: invalid --data for step 'approve': Expected `bool`, got `str` at "
        "`$.approved`; pass JSON that matches its resume schema (the run stays suspended)\n"
    )
    assert step_statuses(tmp_path, "po-7")["approve"] == "suspended"

    decision = json.dumps({"approved": True, "approver": "grace"})
    resumed = trioflow(
        tmp_path, "runs", "resume", "po-7", "--step", "approve", "--data", decision,
        "--app", APPROVAL_APP,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run po-7 of 'approval' at step 'approve'" in resumed.stdout
    assert "success: run po-7 of 'approval' finished" in resumed.stdout
    assert '"approver":"grace"' in resumed.stdout
    assert step_statuses(tmp_path, "po-7") == {
        "prepare": "success",
        "approve": "success",
        "notify": "success",
    }

    again = trioflow(tmp_path, "runs", "resume", "po-7", "--data", decision, APPROVAL_APP)
    assert again.returncode == 1
    assert "run po-7 is 'success'; only a suspended run can be resumed" in again.stderr


# --- errors a person can act on ----------------------------------------------------------------

BOOM = "import trioflow\n\nCONFIG = {}\nraise RuntimeError('no config found')\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "no_such_module_xyz:workflow"],
            "cannot import module 'no_such_module_xyz': there is no such module",
        ),
        (["run", "missing.py:workflow"], "cannot load missing.py: no such file"),
        (
            ["run", "boom.py:workflow"],
            "cannot import boom.py: importing it raised RuntimeError: no config found at "
            "boom.py:4; fix the module",
        ),
        (
            ["run", f"{ORDER_APP[:-9]}:validate"],
            "order_pipeline.py:validate is a step, not a workflow",
        ),
        (
            ["run", f"{ORDER_APP[:-9]}:nope"],
            "has no workflow named 'nope'; its workflows: workflow (id 'order-pipeline')",
        ),
        (
            ["run", ORDER_APP, "--input", json.dumps({**ORDER, "quantity": "two"})],
            "invalid input for workflow 'order-pipeline': Expected `int`, got `str` at "
            "`$.quantity`",
        ),
        (
            ["run", ORDER_APP, "--input", '{"order_id": "A-1"}'],
            "invalid input for workflow 'order-pipeline': Object missing required field `sku`",
        ),
        (
            ["run", ORDER_APP],
            "Expected `object`, got `null` at `$`; pass it with --input JSON",
        ),
        (["run", ORDER_APP, "--input", "{order_id: 1}"], "--input is not valid JSON"),
        (["runs", "show", "nope"], "no run with id 'nope' in"),
        (["runs", "cancel", "nope"], "no run with id 'nope' in"),
        (["runs", "watch", "nope"], "no run with id 'nope' in"),
    ],
)
def test_errors_are_one_line_that_says_what_to_do(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "boom.py").write_text(BOOM)
    if args[0] == "runs":  # the database exists; the run does not
        trio.run(create_db, tmp_path / "runs.db")
    done = trioflow(tmp_path, *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("trioflow: error: ")
    assert done.stderr.count("\n") == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    if args[0] == "run":  # refused before any run (or database) was created
        assert not (tmp_path / "runs.db").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text(BOOM)
    done = trioflow(tmp_path, "--debug", "run", "boom.py:workflow")
    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert "RuntimeError: no config found" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("trioflow: error: cannot import boom.py")


def test_a_command_that_reads_runs_never_creates_a_database(tmp_path: Path) -> None:
    done = trioflow(tmp_path, "runs", "list")
    assert done.returncode == 2
    assert "no trioflow database at" in done.stderr
    assert not (tmp_path / "runs.db").exists()


# --- read-only commands ---------------------------------------------------------------------


def test_reading_commands_refuse_a_file_that_is_not_a_trioflow_database(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
    conn.close()
    before = other.read_bytes()
    for args in (["runs", "list"], ["runs", "show", "x"], ["runs", "watch", "x"]):
        done = subprocess.run(
            command("--db", str(other), *args),
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "it is not a trioflow database (it has no trioflow_runs table)" in done.stderr
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal, no -shm


def test_a_folder_given_as_the_database_says_so(tmp_path: Path) -> None:
    done = trioflow(tmp_path, "--db", str(tmp_path), "runs", "list")
    assert done.returncode == 2
    assert f"{tmp_path} is a folder; pass --db the path of a trioflow database file" in done.stderr


# Root ignores file permissions: without these capabilities it obeys them, as any user.
NO_DAC = "-dac_override,-dac_read_search"
AS_A_USER = ["setpriv", "--bounding-set", NO_DAC, "--inh-caps", NO_DAC] if os.geteuid() == 0 else []


def test_list_and_show_work_on_a_database_in_a_read_only_folder(tmp_path: Path) -> None:
    done = trioflow(tmp_path, "run", ORDER_APP, "--input", json.dumps(ORDER), "--run-id", "ro")
    assert done.returncode == 0, done.stderr
    db = tmp_path / "runs.db"
    files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for path in tmp_path.iterdir():
        path.chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        for args in (["runs", "list"], ["runs", "show", "ro"]):
            seen = subprocess.run(
                [*AS_A_USER, *command("--db", str(db), *args)],
                cwd="/",
                env=ENV,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            assert seen.returncode == 0, (args, seen.stderr)
            assert "ro" in seen.stdout and "success" in seen.stdout
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == files
        # ...and nothing could have been written: the same user may not create a file.
        denied = subprocess.run(
            [*AS_A_USER, "touch", str(tmp_path / "probe")], capture_output=True, timeout=10
        )
        assert denied.returncode != 0
    finally:
        tmp_path.chmod(0o755)


def test_bad_arguments_name_the_option_and_create_no_run(tmp_path: Path) -> None:
    undecodable = os.fsdecode(b'{"order_id": "\xff"}')  # as argv gives bytes it cannot decode
    done = subprocess.run(
        command("--db", str(tmp_path / "runs.db"), "run", ORDER_APP, "--input", undecodable),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "--input is not UTF-8 text (an undecodable byte at position 14)" in done.stderr
    assert not (tmp_path / "runs.db").exists()  # no orphan 'pending' run
    limit = trioflow(tmp_path, "runs", "list", "--limit", "-1")
    assert limit.returncode == 2 and "'-1' is not a whole number >= 1" in limit.stderr
    data = trioflow(tmp_path, "runs", "resume", "x", APPROVAL_APP, "--data", "{bad")
    assert data.returncode == 2
    assert """quote it for the shell, e.g. --data '{"key": "value"}'""" in data.stderr


def test_the_exit_code_table_is_in_trioflow_help_only(tmp_path: Path) -> None:
    for args in (["run", "--help"], ["runs", "show", "--help"], ["worker", "--help"]):
        shown = trioflow(tmp_path, *args).stdout
        assert "130" not in shown
        assert shown.rstrip().endswith("Exit codes: see `trioflow --help`.")


def test_a_run_whose_process_died_is_shown_orphaned(tmp_path: Path) -> None:
    done = trioflow(tmp_path, "run", APPROVAL_APP, "--input", json.dumps(REQUEST), "--run-id", "o")
    assert done.returncode == 3, done.stderr
    with sqlite3.connect(tmp_path / "runs.db") as conn:  # as if killed while it ran
        conn.execute("UPDATE trioflow_runs SET status = 'running', owner = 'dead', lease_until = 1")
    conn.close()
    shown = trioflow(tmp_path, "runs", "show", "o")
    assert "orphaned: its lease expired and no process executes it" in shown.stdout
    assert "o" in trioflow(tmp_path, "runs", "list").stdout.split("(orphaned)")[0]
    document = json.loads(trioflow(tmp_path, "--json", "runs", "show", "o").stdout)
    assert (document["orphaned"], document["lease_holder"]) == (True, "dead")


def test_runs_watch_prints_what_happened_between_two_looks_in_time_order(
    tmp_path: Path,
) -> None:
    """The order pipeline ran before `runs watch` looked: its lines are in time order,
    the parallel steps' ends included."""
    done = trioflow(tmp_path, "run", ORDER_APP, "--input", json.dumps(ORDER), "--run-id", "t")
    assert done.returncode == 0, done.stderr
    watched = trioflow(tmp_path, "runs", "watch", "t")
    times = [
        float(line.split()[0].rstrip("s"))
        for line in watched.stdout.splitlines()
        if line.strip() and line.split()[0].rstrip("s").replace(".", "").isdigit()
    ]
    assert len(times) >= 8
    assert times == sorted(times)
