"""Workflow versions: a run always executes on the definition it started with.

A workflow's version is the one it was given or one derived from its definition (graph,
ids, schemas; not function bodies). Every run stores it; resume and recovery use exactly
that version's definition, and an engine that does not know it never executes the run.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

import trioflow
from trioflow import _snapshot
from trioflow.storage import _sqlite

OPTIONS: dict[str, Any] = {"lease_seconds": 1.0, "poll_interval": 0.05}


class Words(msgspec.Struct):
    words: list[str]


def order_workflow(
    calls: list[str], *, version: str | None, extra_steps: tuple[str, ...] = ()
) -> trioflow.Workflow:
    """`extra_steps` run before `approve` (a v2 that added steps in front)."""

    def logged(step_id: str) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> Any:
            calls.append(f"{version}:{step_id}")
            return ctx.input_data

        return trioflow.create_step(id=step_id, execute=execute)

    async def approve(ctx: trioflow.StepContext[Any]) -> str:
        calls.append(f"{version}:approve")
        if ctx.resume_data is None:
            ctx.suspend({"question": "ship it?"})
        return f"approved by {ctx.resume_data['who']}"

    workflow = trioflow.create_workflow(id="order", version=version)
    for step_id in extra_steps:
        workflow.then(logged(step_id))
    return workflow.then(trioflow.create_step(id="approve", execute=approve)).commit()


def slow_workflow(calls: list[str], *, version: str) -> trioflow.Workflow:
    """a (10 s) -> b, each logged with the version that ran it."""

    async def a(ctx: trioflow.StepContext[Any]) -> str:
        calls.append(f"{version}:a")
        await trio.sleep(10)
        return "a"

    async def b(ctx: trioflow.StepContext[Any]) -> str:
        calls.append(f"{version}:b")
        return "b"

    return (
        trioflow.create_workflow(id="slow", version=version)
        .then(trioflow.create_step(id="a", execute=a))
        .then(trioflow.create_step(id="b", execute=b))
        .commit()
    )


class Interrupted(Exception):
    pass


async def interrupted_runs(path: Path, workflows: list[trioflow.Workflow], *versions: str) -> None:
    """Start a run of each version, then leave the engine by an exception while their
    first step runs: the runs stay recoverable."""
    with pytest.raises(Interrupted):
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(path), workflows=workflows, **OPTIONS
        ) as engine:
            for version in versions:
                run = await engine.create_run("slow", version=version)
                await run.start_soon()
            await trio.sleep(1)
            raise Interrupted


# -- the derived version -----------------------------------------------------------------


def shaped(*, step_id: str = "count", field: str = "words", body: int = 1, more: bool = False):  # type: ignore[no-untyped-def]
    schema = msgspec.defstruct("Out", [(field, list[str])])

    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        return body  # the body differs, the shape does not

    workflow = trioflow.create_workflow(id="shape").then(
        trioflow.create_step(id=step_id, execute=execute, output_schema=schema)
    )
    if more:
        workflow.sleep(1)
    return workflow.commit()


def test_a_derived_version_follows_the_shape_of_the_definition_not_its_code() -> None:
    base = shaped().version
    assert base.startswith("sha-") and len(base) == len("sha-") + 12
    assert shaped(body=2).version == base  # a function body does not count
    assert shaped(step_id="tally").version != base  # a step id does
    assert shaped(field="tokens").version != base  # a schema field does
    assert shaped(more=True).version != base  # the graph does
    assert (
        trioflow.create_workflow(id="x", version="7")
        .then(trioflow.create_step(id="a", execute=lambda ctx: 1))
        .commit()
        .version
        == "7"
    )


def test_a_derived_version_is_the_same_in_another_python_process(tmp_path: Path) -> None:
    program = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_versions import shaped
        print(shaped().version)
        """
    )
    tests = str(Path(__file__).parent)
    out = subprocess.run(
        [sys.executable, "-c", program, tests], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == shaped().version


def test_a_version_must_be_a_non_empty_string_and_needs_a_commit() -> None:
    with pytest.raises(ValueError, match="version must be a non-empty string"):
        trioflow.create_workflow(id="x", version="")
    draft = trioflow.create_workflow(id="x").then(trioflow.create_step(id="a", execute=id))
    with pytest.raises(RuntimeError, match="no version until it is committed"):
        draft.version  # noqa: B018


async def test_two_definitions_with_one_version_are_refused(tmp_path: Path) -> None:
    one, other = order_workflow([], version="1"), order_workflow([], version="1")
    with pytest.raises(ValueError, match="two definitions of workflow 'order' have version '1'"):
        async with trioflow.open_engine(storage=trioflow.MemoryStorage(), workflows=[one, other]):
            pass  # pragma: no cover


# -- runs store their version --------------------------------------------------------------


async def test_create_run_takes_the_last_version_given_or_the_one_named(
    trioflow_clock: Any, tmp_path: Path
) -> None:
    v1, v2 = order_workflow([], version="1"), order_workflow([], version="2")
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "runs.db"), workflows=[v1, v2]
    ) as engine:
        latest = await engine.create_run("order")
        old = await engine.create_run("order", version="1")
        by_object = await engine.create_run(v1)
        assert (latest.workflow, old.workflow, by_object.workflow) == (v2, v1, v1)
        with pytest.raises(trioflow.WorkflowVersionError, match=r"no version '3'.*'1', '2'"):
            await engine.create_run("order", version="3")
        summaries = {s.run_id: s.version for s in await engine.list_runs()}
        assert summaries == {latest.run_id: "2", old.run_id: "1", by_object.run_id: "1"}
        only_v1 = await engine.list_runs(version="1")
        assert {s.run_id for s in only_v1} == {old.run_id, by_object.run_id}


async def test_a_run_suspended_on_v1_resumes_on_v1_where_both_are_known(
    trioflow_clock: Any, tmp_path: Path
) -> None:
    calls: list[str] = []
    path = tmp_path / "runs.db"
    v1 = order_workflow(calls, version="1")
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[v1]) as engine:
        run = await engine.create_run("order", run_id="o1")
        assert (await run.start()).status == "suspended"
    # The next deployment has v2 (two new steps in front) and keeps v1 registered.
    v2 = order_workflow(calls, version="2", extra_steps=("check-stock", "reserve"))
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[v1, v2]
    ) as engine:
        run = await engine.get_run("o1")
        assert run.workflow is v1
        result = await run.resume(resume_data={"who": "ada"})
    assert (result.status, result.result) == ("success", "approved by ada")
    assert calls == ["1:approve", "1:approve"]  # v2's new steps never ran


async def test_an_engine_without_the_version_leaves_the_run_alone(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Only v2 known: a suspended v1 run cannot be resumed (the error names both
    versions), a recoverable v1 run is not taken over (said once in the log), and a
    cancel still works, since it is a change in storage."""
    calls: list[str] = []
    path = tmp_path / "runs.db"
    v1 = order_workflow(calls, version="1")
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[v1]) as engine:
        suspended = await engine.create_run("order", run_id="suspended")
        await suspended.start()
    slow_v1 = slow_workflow(calls, version="1")
    await interrupted_runs(path, [v1, slow_v1], "1")
    calls.clear()
    v2 = order_workflow(calls, version="2", extra_steps=("check-stock",))
    slow_v2 = slow_workflow(calls, version="2")
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[v2, slow_v2], **OPTIONS
    ) as engine:
        run = await engine.get_run("suspended")
        with pytest.raises(trioflow.WorkflowVersionError) as caught:
            await run.resume(resume_data={"who": "ada"})
        assert "run 'suspended' is on version '1'" in str(caught.value)
        assert "(known: '2')" in str(caught.value)
        await trio.sleep(5)  # several recovery passes
        (orphan,) = await engine.list_runs(workflow_id="slow")
        assert (orphan.status, orphan.version) == ("running", "1")
        assert (await run.cancel()).status == "canceled"
    assert calls == []
    assert caplog.text.count(f"run {orphan.run_id} is on version '1' of slow") == 1
    # An engine that has v1 again takes the orphan over and finishes it on v1.
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[slow_v1], **OPTIONS
    ) as engine:
        result = await (await engine.get_run(orphan.run_id)).result()
        assert result.status == "success"
    assert calls == ["1:a", "1:b"]


async def test_two_engines_with_different_versions_each_execute_only_their_own(
    trioflow_clock: Any, tmp_path: Path
) -> None:
    """Two deployments on one SQLite file, each with only its own version: each
    recovers only the runs of its version."""
    calls: list[str] = []
    path = tmp_path / "runs.db"
    v1, v2 = slow_workflow(calls, version="1"), slow_workflow(calls, version="2")
    await interrupted_runs(path, [v1, v2], "1", "2", "1", "2")
    calls.clear()
    async with (
        trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[v1], **OPTIONS),
        trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[v2], **OPTIONS),
    ):
        await trio.sleep(15)
    assert sorted(calls) == ["1:a", "1:a", "1:b", "1:b", "2:a", "2:a", "2:b", "2:b"]


# -- databases from before versions ----------------------------------------------------------

V2_SCHEMA = """
CREATE TABLE trioflow_runs (
    run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, status TEXT NOT NULL,
    snapshot BLOB NOT NULL, owner TEXT, lease_until REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_reason TEXT,
    queued INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, updated_at REAL NOT NULL
);
PRAGMA user_version = 2;
"""


async def test_a_run_stored_before_versions_takes_the_version_that_loads_it(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database of the schema before versions is upgraded in place; its suspended run
    takes the version of the definition that first loads it, with a warning."""
    calls: list[str] = []
    path = tmp_path / "old.db"
    snapshot = _snapshot.Snapshot(
        run_id="old",
        workflow_id="order",
        status="suspended",
        steps={"approve": _snapshot.StepRecord(status="suspended")},
        suspended=["approve"],
    )
    with sqlite3.connect(path) as conn:
        conn.executescript(V2_SCHEMA)
        conn.execute(
            "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, created_at, "
            "updated_at) VALUES ('old', 'order', 'suspended', ?, 1, 1)",
            (_snapshot.encode(snapshot),),
        )
    caplog.set_level(logging.WARNING, logger="trioflow")
    v3 = order_workflow(calls, version="3")
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[v3]) as engine:
        (summary,) = await engine.list_runs()
        assert summary.version is None
        run = await engine.get_run("old")
        result = await run.resume(resume_data={"who": "grace"})
        assert result.status == "success"
        (summary,) = await engine.list_runs()
        assert summary.version == "3"
    assert "run old was stored before workflow versions; it takes version '3'" in caplog.text
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (_sqlite.SCHEMA_VERSION,)


async def test_trioflow_testing_drives_a_run_across_two_versions(
    trioflow_clock: Any, trioflow_engine_factory: Any
) -> None:
    """A test registers two versions with the engine factory: a run created on v1 is
    resumed on v1 by an engine that also knows v2, while new runs take v2."""
    calls: list[str] = []
    storage = trioflow.MemoryStorage()
    v1 = order_workflow(calls, version="1")
    v2 = order_workflow(calls, version="2", extra_steps=("check-stock",))
    first = await trioflow_engine_factory([v1], storage=storage)
    run = await first.create_run("order")
    assert (await run.start()).status == "suspended"
    second = await trioflow_engine_factory([v1, v2], storage=storage)
    resumed = await (await second.get_run(run.run_id)).resume(resume_data={"who": "lin"})
    assert resumed.status == "success"
    fresh = await second.create_run("order")
    assert (await fresh.start()).status == "suspended"
    assert calls == ["1:approve", "1:approve", "2:check-stock", "2:approve"]
