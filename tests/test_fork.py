"""Fork and retry: a new run of the same version and input that keeps the original's
records of the steps that ended before the chosen step started, and runs that step and
everything after it again. The original is never changed."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from pg_server import StorageFactory

import trioflow


def pipeline(calls: list[str], failing: set[str]) -> trioflow.Workflow:
    """fetch -> nested(clean -> check) -> publish; a step in `failing` raises."""

    def step(step_id: str) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> Any:
            calls.append(step_id)
            await trio.sleep(1)
            if step_id in failing:
                raise RuntimeError(f"{step_id} broke")
            return f"{ctx.input_data}>{step_id}"

        return trioflow.create_step(id=step_id, execute=execute)

    nested = trioflow.create_workflow(id="prepare").then(step("clean")).then(step("check"))
    return (
        trioflow.create_workflow(id="pipeline")
        .then(step("fetch"))
        .then(nested.commit())
        .then(step("publish"))
        .commit()
    )


async def test_retry_runs_the_failed_step_again_and_keeps_what_succeeded_before_it(
    trioflow_clock: Any, storage_factory: StorageFactory
) -> None:
    calls: list[str] = []
    failing = {"check"}
    workflow = pipeline(calls, failing)
    async with trioflow.open_engine(storage=storage_factory(), workflows=[workflow]) as engine:
        original = await engine.create_run("pipeline", run_id="first")
        failed = await original.start("in")
        assert failed.status == "failed"
        assert calls == ["fetch", "clean", "check"]
        failing.clear()  # the bug is fixed
        retry = await engine.retry_run("first", new_run_id="second")
        assert retry.status == "pending"
        result = await retry.start()  # no input: it has the original's
        assert (result.status, result.result) == ("success", "in>fetch>clean>check>publish")
        # fetch and prepare.clean ended before prepare.check started: kept, not run again.
        assert calls == ["fetch", "clean", "check", "check", "publish"]
        summaries = {s.run_id: s for s in await engine.list_runs()}
        assert summaries["second"].forked_from == "first"
        assert summaries["first"].forked_from is None
        assert (await engine.get_run("first")).status == "failed"  # untouched


async def test_fork_from_a_step_runs_it_and_everything_after_it_again(
    trioflow_clock: Any,
) -> None:
    calls: list[str] = []
    workflow = pipeline(calls, set())
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow]
    ) as engine:
        original = await engine.create_run("pipeline", run_id="done")
        assert (await original.start("in")).status == "success"
        calls.clear()
        forked = await engine.fork_run("done", "prepare")
        await forked.start_soon()
        assert (await forked.result()).status == "success"
        assert calls == ["clean", "check", "publish"]
        calls.clear()
        again = await engine.fork_run("done", ["prepare", "check"])
        assert (await again.start()).status == "success"
        assert calls == ["check", "publish"]


async def test_fork_of_a_canceled_and_of_a_suspended_run(trioflow_clock: Any) -> None:
    calls: list[str] = []

    async def ask(ctx: trioflow.StepContext[Any]) -> Any:
        calls.append("ask")
        if ctx.resume_data is None:
            ctx.suspend()
        return ctx.resume_data

    workflow = pipeline(calls, set())
    asking = (
        trioflow.create_workflow(id="asking")
        .then(trioflow.create_step(id="ask", execute=ask))
        .commit()
    )
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow, asking]
    ) as engine:
        canceled = await engine.create_run("pipeline")
        await canceled.start_soon("in")
        await trio.sleep(1.5)  # fetch ended, prepare.clean is running
        await canceled.cancel()
        calls.clear()
        retry = await engine.retry_run(canceled.run_id)  # from the interrupted clean
        assert (await retry.start()).status == "success"
        assert calls == ["clean", "check", "publish"]
        suspended = await engine.create_run("asking")
        assert (await suspended.start()).status == "suspended"
        forked = await engine.fork_run(suspended.run_id, "ask")
        assert (await forked.start()).status == "suspended"
        assert (await suspended.resume(resume_data="yes")).result == "yes"


async def test_fork_and_retry_refuse_what_they_cannot_do(trioflow_clock: Any) -> None:
    calls: list[str] = []
    workflow = pipeline(calls, set())
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[workflow]
    ) as engine:
        done = await engine.create_run("pipeline")
        await done.start("in")
        with pytest.raises(ValueError, match=r"has no step 'nope' that started \(started: "):
            await engine.fork_run(done.run_id, "nope")
        with pytest.raises(ValueError, match="has no failed or canceled step to retry from"):
            await engine.retry_run(done.run_id)
        forked = await engine.fork_run(done.run_id, "publish")
        with pytest.raises(ValueError, match="starts with its input and state"):
            await forked.start("other input")
        running = await engine.create_run("pipeline")
        await running.start_soon("in")
        await trio.sleep(0.5)
        with pytest.raises(trioflow.RunStateError, match="is 'running'; fork a run that ended"):
            await engine.fork_run(running.run_id, "fetch")
        with pytest.raises(trioflow.RunNotFoundError):
            await engine.fork_run("no-such-run", "fetch")


FLAKY_APP = """
import os
import trioflow

async def fetch(ctx):
    return f"{ctx.input_data}>fetch"

async def publish(ctx):
    if os.path.exists("broken"):
        raise RuntimeError("publish broke")
    return f"{ctx.input_data}>publish"

workflow = (
    trioflow.create_workflow(id="flaky")
    .then(trioflow.create_step(id="fetch", execute=fetch))
    .then(trioflow.create_step(id="publish", execute=publish))
    .commit()
)
"""


def cli(tmp_path: Any, *args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "trioflow", "--db", str(tmp_path / "runs.db"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"NO_COLOR": "1", "PATH": "/usr/bin:/bin"},
    )


def test_runs_retry_and_fork_from_the_command_line(tmp_path: Any) -> None:
    import json

    (tmp_path / "app.py").write_text(FLAKY_APP)
    app = f"{tmp_path / 'app.py'}:workflow"
    (tmp_path / "broken").touch()
    failed = cli(tmp_path, "run", app, "--input", '"in"', "--run-id", "r1")
    assert failed.returncode == 1
    (tmp_path / "broken").unlink()
    retried = cli(tmp_path, "runs", "retry", "r1", app, "--new-run-id", "r2")
    assert retried.returncode == 0, retried.stderr
    assert "run r2: r1 again from step 'publish'" in retried.stdout
    steps = [line.split()[1] for line in retried.stdout.splitlines() if "started" in line]
    assert steps == ["publish"]  # fetch is kept, not run again
    assert '"in>fetch>publish"' in retried.stdout
    queued = cli(tmp_path, "runs", "fork", "r2", "--from", "fetch", "--new-run-id", "r3")
    assert queued.returncode == 0, queued.stderr
    assert "forked run r3 from r2 at step 'fetch'; it is queued" in queued.stdout
    listed = {r["run_id"]: r for r in json.loads(cli(tmp_path, "runs", "list", "--json").stdout)}
    assert (listed["r2"]["forked_from"], listed["r3"]["forked_from"]) == ("r1", "r2")
    assert listed["r3"]["status"] == "pending"
    nothing = cli(tmp_path, "runs", "retry", "r2")
    assert nothing.returncode == 1
    assert "has no failed or canceled step to retry from" in nothing.stderr
