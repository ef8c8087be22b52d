"""``trioflow schedules ...``, ``trioflow queues list``, ``worker --queue`` and the queue
line of ``runs show``, as a person at a terminal runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trioflow

sys.path.insert(0, str(Path(__file__).resolve().parent))

from queue_app import QUEUES, work

QUEUE_APP = Path(__file__).resolve().parent / "queue_app.py"
ENV = {**os.environ, "NO_COLOR": "1"}
SCHEDULE_APP = """
import trioflow

@trioflow.step(id="report")
async def report(ctx):
    return "done"

workflow = trioflow.create_workflow(id="report").then(report).commit()
nightly = trioflow.Schedule("nightly", workflow=workflow, cron="0 3 * * *",
                            timezone="Europe/Berlin", input_data=None)
"""


def trioflow_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", "--db", str(tmp_path / "runs.db"), *args],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
    )


async def _store_schedule(tmp_path: Path) -> None:
    app = tmp_path / "reports.py"
    app.write_text(SCHEDULE_APP)
    namespace: dict[str, object] = {}
    exec(compile(SCHEDULE_APP, str(app), "exec"), namespace)
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "runs.db"),
        workflows=[namespace["workflow"]],  # type: ignore[list-item]
        schedules=[namespace["nightly"]],  # type: ignore[list-item]
    ):
        pass


@pytest.mark.slow
async def test_schedules_list_pause_resume_and_trigger(tmp_path: Path) -> None:
    await _store_schedule(tmp_path)
    listed = trioflow_cli(tmp_path, "schedules", "list")
    assert listed.returncode == 0, listed.stderr
    assert "nightly" in listed.stdout and "0 3 * * *" in listed.stdout
    assert "Europe/Berlin" in listed.stdout and "active" in listed.stdout

    paused = trioflow_cli(tmp_path, "schedules", "pause", "nightly")
    assert paused.returncode == 0, paused.stderr
    assert "paused: no new runs" in paused.stdout and "runs cancel" in paused.stdout
    data = json.loads(trioflow_cli(tmp_path, "schedules", "list", "--json").stdout)
    assert data[0]["id"] == "nightly" and data[0]["paused"] is True
    assert data[0]["next_fire"] is None

    resumed = trioflow_cli(tmp_path, "schedules", "resume", "nightly")
    assert resumed.returncode == 0 and "resumed" in resumed.stdout
    data = json.loads(trioflow_cli(tmp_path, "schedules", "list", "--json").stdout)
    assert data[0]["paused"] is False and data[0]["next_fire"] > data[0]["handled_until"]

    unknown = trioflow_cli(tmp_path, "schedules", "pause", "weekly")
    assert unknown.returncode == 2
    assert "no schedule 'weekly'" in unknown.stderr and "known: ['nightly']" in unknown.stderr

    triggered = trioflow_cli(tmp_path, "schedules", "trigger", "nightly", "reports.py", "--json")
    assert triggered.returncode == 0, triggered.stderr
    run_id = json.loads(triggered.stdout)["run_id"]
    assert run_id.startswith("nightly@") and run_id.endswith("Z")
    shown = trioflow_cli(tmp_path, "runs", "show", run_id)
    assert "queue     default (priority 0): waiting, position 1; limits: no limits" in (
        shown.stdout
    )


@pytest.mark.slow
async def test_queues_list_and_runs_show_give_positions_and_limits(tmp_path: Path) -> None:
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "runs.db"), workflows=[work], queues=QUEUES
    ) as engine:
        for n in range(3):
            await engine.enqueue(work, {}, queue="limited", key="a", run_id=f"r{n}")
        await engine.enqueue(work, {}, queue="limited", key="b", priority=5, run_id="urgent")
    listed = trioflow_cli(tmp_path, "queues", "list")
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert lines["limited"].split()[1:3] == ["4", "0"]
    assert "concurrency 3, per key 2" in lines["limited"]
    assert "4 per 1s" in lines["rated"]
    assert "no limits" in lines["default"]
    shown = trioflow_cli(tmp_path, "runs", "show", "r1")
    assert (
        "queue     limited (priority 0, key a): waiting, position 3; "
        "limits: concurrency 3, per key 2" in shown.stdout
    )
    document = json.loads(trioflow_cli(tmp_path, "runs", "show", "urgent", "--json").stdout)
    assert document["queue"]["position"] == 1 and document["queue"]["priority"] == 5


def _start_worker(db: Path, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "trioflow", "worker", f"{QUEUE_APP}:work", "--db", str(db)]
    return subprocess.Popen([*argv, *args], env=ENV, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
async def test_worker_serves_only_the_queues_named_with_queue(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    bad = trioflow_cli(tmp_path, "worker", f"{QUEUE_APP}:work", "--queue", "nope")
    assert bad.returncode == 2
    assert "--queue nope: no trioflow.Queue('nope', ...)" in bad.stderr
    worker = _start_worker(db, "--queue", "serial")
    try:
        assert worker.stderr is not None
        ready = await trio.to_thread.run_sync(worker.stderr.readline)
        assert "from queues serial" in ready
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(db), workflows=[work], queues=QUEUES
        ) as engine:
            other = await engine.enqueue(work, {"n": 1}, queue="limited")
            mine = await engine.enqueue(work, {"n": 2}, queue="serial")
            with trio.fail_after(20):
                assert (await mine.result()).result == 2
            assert (await engine.get_run(other.run_id)).status == "pending"
        worker.send_signal(signal.SIGINT)
        assert await trio.to_thread.run_sync(worker.wait, 20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stderr is not None:
            worker.stderr.close()


def _start_app_worker(tmp_path: Path, app: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "trioflow", "worker", app, "--db", str(tmp_path / "runs.db")]
    return subprocess.Popen(argv, cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
async def test_worker_fires_the_schedules_its_app_defines(tmp_path: Path) -> None:
    (tmp_path / "reports.py").write_text(SCHEDULE_APP)
    worker = _start_app_worker(tmp_path, "reports.py:workflow")
    try:
        assert worker.stderr is not None
        ready = await trio.to_thread.run_sync(worker.stderr.readline)
        assert "firing schedules nightly" in ready
        listed = json.loads(trioflow_cli(tmp_path, "schedules", "list", "--json").stdout)
        assert [(s["id"], s["workflow_id"], s["paused"]) for s in listed] == [
            ("nightly", "report", False)
        ]
        worker.send_signal(signal.SIGINT)
        assert await trio.to_thread.run_sync(worker.wait, 20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stderr is not None:
            worker.stderr.close()
