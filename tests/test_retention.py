"""Removing finished runs: `Engine.delete_run`, `Engine.prune_runs`, `open_engine(retention=)`
and the CLI's `runs delete` / `runs prune`, on SQLite and PostgreSQL (and memory). Only
runs that have ended are ever removed."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from pg_server import StorageFactory

import trioflow
from trioflow import _clock
from trioflow._logs import NewLog

DAY = dt.timedelta(days=1)


def make_workflow() -> trioflow.Workflow:
    async def work(ctx: trioflow.StepContext[Any]) -> Any:
        if ctx.input_data == "fail":
            raise ValueError("asked to fail")
        if ctx.input_data == "wait":
            ctx.suspend()
        return ctx.input_data

    step = trioflow.create_step(id="work", execute=work)
    return trioflow.create_workflow(id="job").then(step).commit()


WORKFLOW = make_workflow()


async def finished(engine: trioflow.Engine, *inputs: str) -> list[str]:
    ids = []
    for value in inputs:
        run = await engine.create_run("job")
        await run.start(value)
        ids.append(run.run_id)
    return ids


async def test_delete_run_removes_a_finished_run_and_only_that(
    storage_factory: StorageFactory,
) -> None:
    async with trioflow.open_engine(storage=storage_factory(), workflows=[WORKFLOW]) as engine:
        done, failed, suspended = await finished(engine, "ok", "fail", "wait")
        await engine.delete_run(done)
        await engine.delete_run(failed)
        with pytest.raises(trioflow.RunNotFoundError):
            await engine.get_run(done)
        with pytest.raises(trioflow.RunStateError, match="is 'suspended'; only a finished run"):
            await engine.delete_run(suspended)
        with pytest.raises(trioflow.RunNotFoundError):
            await engine.delete_run("no-such-run")
        assert [s.run_id for s in await engine.list_runs()] == [suspended]
        await (await engine.get_run(suspended)).cancel()
        await engine.delete_run(suspended)  # canceled: finished now
        assert await engine.list_runs() == []


async def test_prune_runs_removes_finished_runs_older_than_the_age(
    storage_factory: StorageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_700_000_000.0]
    monkeypatch.setattr(_clock, "wall_clock", lambda: now[0])
    async with trioflow.open_engine(storage=storage_factory(), workflows=[WORKFLOW]) as engine:
        old_ok, old_failed, old_waiting = await finished(engine, "ok", "fail", "wait")
        now[0] += 10 * 86400
        (young,) = await finished(engine, "ok")
        assert await engine.prune_runs(dt.timedelta(days=5), status="failed") == 1
        assert await engine.prune_runs(dt.timedelta(days=5)) == 1
        left = {s.run_id for s in await engine.list_runs()}
        assert left == {old_waiting, young}  # the suspended run never goes
        assert old_ok not in left and old_failed not in left
        with pytest.raises(ValueError, match="only finished runs are pruned"):
            await engine.prune_runs(DAY, status="suspended")
        with pytest.raises(TypeError, match=r"older_than must be a datetime\.timedelta"):
            await engine.prune_runs(30)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="must not be negative"):
            await engine.prune_runs(-DAY)


async def test_removing_a_run_removes_its_logs_and_trace_context(
    storage_factory: StorageFactory,
) -> None:
    storage = storage_factory()
    async with trioflow.open_engine(storage=storage, workflows=[WORKFLOW]) as engine:
        deleted, pruned = await finished(engine, "ok", "fail")
        for run_id in (deleted, pruned):
            await storage.append_logs(run_id, [NewLog(1.0, "info", "hello", "work", 1)])
            await storage.store_trace_context(
                run_id, {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            )
        await engine.delete_run(deleted)
        assert await engine.prune_runs(dt.timedelta(0)) == 1
        for run_id in (deleted, pruned):
            assert await storage.read_logs(run_id) == []
            assert await storage.load_trace_context(run_id) is None


async def test_retention_prunes_in_the_background(trioflow_clock: Any) -> None:
    storage = trioflow.MemoryStorage()
    async with trioflow.open_engine(
        storage=storage, workflows=[WORKFLOW], retention=dt.timedelta(hours=1)
    ) as engine:
        (done,) = await finished(engine, "ok")
        (waiting,) = await finished(engine, "wait")
        await trio.sleep(3600 + 400)  # an hour, and the next pruning round
        assert [s.run_id for s in await engine.list_runs()] == [waiting]
        assert done  # it was there, and went
    with pytest.raises(TypeError, match=r"retention must be a datetime\.timedelta"):
        async with trioflow.open_engine(storage=storage, workflows=[WORKFLOW], retention=3600):  # type: ignore[arg-type]
            pass  # pragma: no cover


APP = """
import trioflow

async def work(ctx):
    if ctx.input_data == "wait":
        ctx.suspend()
    return ctx.input_data

workflow = trioflow.create_workflow(id="job").then(
    trioflow.create_step(id="work", execute=work)
).commit()
"""


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trioflow", "--db", str(tmp_path / "runs.db"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )


def test_runs_delete_and_prune_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    app = f"{tmp_path / 'app.py'}:workflow"
    assert cli(tmp_path, "run", app, "--input", '"ok"', "--run-id", "a").returncode == 0
    assert cli(tmp_path, "run", app, "--input", '"ok"', "--run-id", "b").returncode == 0
    assert cli(tmp_path, "run", app, "--input", '"wait"', "--run-id", "w").returncode == 3
    done = cli(tmp_path, "runs", "delete", "a")
    assert (done.returncode, done.stdout.strip()) == (0, "deleted run a (success)")
    refused = cli(tmp_path, "runs", "delete", "w")
    assert refused.returncode == 1
    assert "run w is 'suspended'; only a finished run can be deleted" in refused.stderr
    missing = cli(tmp_path, "runs", "delete", "nope")
    assert missing.returncode == 2 and "no run with id 'nope'" in missing.stderr
    young = cli(tmp_path, "runs", "prune", "--older-than", "30d", "--json")
    assert json.loads(young.stdout) == {"deleted": 0}
    pruned = cli(tmp_path, "runs", "prune", "--older-than", "0s")
    assert pruned.stdout.strip() == "deleted 1 finished runs that ended over 0:00:00 ago"
    listed = json.loads(cli(tmp_path, "runs", "list", "--json").stdout)
    assert [r["run_id"] for r in listed] == ["w"]
    bad = cli(tmp_path, "runs", "prune", "--older-than", "soon")
    assert bad.returncode == 2
    assert "'soon' is not an age; write a number and a unit: 30d, 12h" in bad.stderr


async def test_list_runs_filters_by_when_they_were_created(
    storage_factory: StorageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1_700_000_000.0]
    monkeypatch.setattr(_clock, "wall_clock", lambda: now[0])
    async with trioflow.open_engine(storage=storage_factory(), workflows=[WORKFLOW]) as engine:
        (old,) = await finished(engine, "ok")
        now[0] += 3 * 86400
        (new,) = await finished(engine, "ok")
        boundary = dt.datetime.fromtimestamp(now[0] - 86400, tz=dt.UTC)
        assert [s.run_id for s in await engine.list_runs(since=boundary)] == [new]
        assert [s.run_id for s in await engine.list_runs(until=boundary)] == [old]
        with pytest.raises(ValueError, match="since must be a timezone-aware datetime"):
            await engine.list_runs(since=dt.datetime(2026, 1, 1))


def test_runs_list_since_and_until_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    app = f"{tmp_path / 'app.py'}:workflow"
    assert cli(tmp_path, "run", app, "--input", '"ok"', "--run-id", "a").returncode == 0
    recent = json.loads(cli(tmp_path, "runs", "list", "--since", "1h", "--json").stdout)
    assert [r["run_id"] for r in recent] == ["a"]
    older = json.loads(cli(tmp_path, "runs", "list", "--until", "1h", "--json").stdout)
    assert older == []
    future = json.loads(cli(tmp_path, "runs", "list", "--since", "2999-01-01", "--json").stdout)
    assert future == []
    bad = cli(tmp_path, "runs", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "'yesterday' is not a moment" in bad.stderr
