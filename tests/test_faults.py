"""Faults stay with their run: each test injects one fault that used to break a promise
(a storage call that fails, a value msgspec cannot encode, a lost lease, a start racing a
cancel) and checks what the user sees: nothing lost, no step of a canceled run runs
again, the other runs finish, and the engine still serves afterwards.

Most tests run under ``trioflow_clock`` (wall time tied to virtual time), so leases
expire in virtual time and a recovery takes no real time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from faulty_storage import FaultyStorage

import trioflow


def ledger_workflow(calls: list[str]) -> trioflow.Workflow:
    """debit (waits 10 s, checkpointing) -> send_money: the step that must never run
    once the run is canceled."""

    async def debit(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("debit")
        await trio.sleep(10)
        return "debited"

    async def send_money(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("send_money")
        return "sent"

    return (
        trioflow.create_workflow(id="ledger")
        .then(trioflow.create_step(id="debit", execute=debit))
        .then(trioflow.create_step(id="send_money", execute=send_money))
        .commit()
    )


def final_write(run_id: str, status: str = "canceled") -> Any:
    return lambda rid, st, *a, release, **kw: rid == run_id and st == status and release


async def stored(path: Path, run_id: str) -> trioflow.storage.RunRow:
    async with trioflow.SQLiteStorage(path) as storage:
        return await storage.load(run_id)


OPTIONS: dict[str, Any] = {"lease_seconds": 1.0, "poll_interval": 0.05}


# -- a cancel is durable before it is reported ------------------------------------------


async def test_a_cancel_whose_final_write_fails_once_is_still_stored(
    trioflow_clock: Any, tmp_path: Path
) -> None:
    calls: list[str] = []
    path = tmp_path / "runs.db"
    storage = FaultyStorage(trioflow.SQLiteStorage(path))
    async with trioflow.open_engine(
        storage=storage, workflows=[ledger_workflow(calls)], **OPTIONS
    ) as engine:
        run = await engine.create_run("ledger", run_id="r1")
        storage.fail("save", when=final_write("r1"))
        await run.start_soon()
        await trio.sleep(1)
        assert await run.cancel("user clicked stop") == trioflow.CancelResult(
            message="Workflow run canceled", status="canceled"
        )
        assert [m for m, _ in storage.failed] == ["save"]
    row = await stored(path, "r1")
    assert (row.status, row.cancel_requested, row.cancel_reason) == (
        "canceled",
        True,
        "user clicked stop",
    )
    assert calls == ["debit"]


async def test_a_cancel_that_cannot_be_stored_raises_and_the_stored_request_wins(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The final write keeps failing: cancel() raises StorageError instead of saying
    'canceled'; the request it stored first still wins: the next engine finishes the run
    'canceled' and send_money never runs."""
    calls: list[str] = []
    path = tmp_path / "runs.db"
    workflow = ledger_workflow(calls)
    storage = FaultyStorage(trioflow.SQLiteStorage(path))
    async with trioflow.open_engine(storage=storage, workflows=[workflow], **OPTIONS) as engine:
        run = await engine.create_run("ledger", run_id="r1")
        storage.fail("save", times=None, when=final_write("r1"))
        await run.start_soon()
        await trio.sleep(1)
        with pytest.raises(trioflow.StorageError, match="'canceled' could not be stored"):
            await run.cancel("stop")
        assert run.status == "canceled"  # as far as this process knows
    row = await stored(path, "r1")
    assert (row.status, row.cancel_requested, row.cancel_reason) == ("running", True, "stop")
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[workflow], **OPTIONS
    ) as engine:
        recovered = await engine.get_run("r1")
        result = await recovered.result()
        assert result.status == "canceled"
        assert recovered.abort_signal.reason == "stop"
    assert calls == ["debit"]
    assert (await stored(path, "r1")).status == "canceled"


async def test_a_loaded_run_reads_the_stored_cancel_reason(
    trioflow_clock: Any, tmp_path: Path
) -> None:
    calls: list[str] = []
    workflow = ledger_workflow(calls)
    path = tmp_path / "runs.db"
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[workflow], **OPTIONS
    ) as engine:
        named = await engine.create_run("ledger")
        await named.cancel("budget exceeded")
        plain = await engine.create_run("ledger")
        await plain.cancel()
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[workflow], **OPTIONS
    ) as engine:
        assert (await engine.get_run(named.run_id)).abort_signal.reason == "budget exceeded"
        default = (await engine.get_run(plain.run_id)).abort_signal.reason
        assert isinstance(default, trioflow.AbortError)
    assert calls == []


# -- one run's fault is that run's alone -------------------------------------------------


@pytest.mark.parametrize(
    "bad_output",
    [object(), os.fsdecode(b"report-\xff.csv")],
    ids=["object", "non-utf8-file-name"],
)
async def test_data_msgspec_cannot_encode_fails_only_its_run(
    trioflow_clock: Any, tmp_path: Path, bad_output: Any
) -> None:
    path = tmp_path / "runs.db"

    async def produce(ctx: trioflow.StepContext[Any]) -> Any:
        return bad_output

    async def after(ctx: trioflow.StepContext[Any]) -> str:
        raise AssertionError("a step after the bad one must not run")

    async def slow(ctx: trioflow.StepContext[Any]) -> str:
        await trio.sleep(5)
        return "slow done"

    bad = (
        trioflow.create_workflow(id="bad")
        .then(trioflow.create_step(id="produce", execute=produce))
        .then(trioflow.create_step(id="after", execute=after))
        .commit()
    )
    good = trioflow.create_workflow(id="good").then(trioflow.create_step(id="slow", execute=slow))
    good = good.commit()
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[bad, good], **OPTIONS
    ) as engine:
        other = await engine.create_run("good")
        await other.start_soon()
        run = await engine.create_run("bad", run_id="bad-run")
        await run.start_soon()
        result = await run.result()
        assert result.status == "failed"
        assert isinstance(result.error, trioflow.UnstorableDataError)
        message = str(result.error)
        assert "the output of step 'produce'" in message
        assert type(bad_output).__name__ in message
        assert result.steps["produce"].status == "failed"
        assert "after" not in result.steps
        assert (await other.result()).status == "success"
        # Still serving: a new run after the fault.
        again = await engine.create_run("good")
        assert (await again.start()).status == "success"
    row = await stored(path, "bad-run")
    assert row.status == "failed"
    # The next engine does not pick the failed run up again.
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[bad, good], **OPTIONS
    ) as engine:
        loaded = await engine.get_run("bad-run")
        assert loaded.status == "failed"
        assert "the output of step 'produce'" in str(loaded.result_nowait().error)


async def test_a_storage_error_in_a_parallel_branch_parks_only_that_run(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The write after one parallel branch fails (the error reaches the engine inside an
    exception group): that run is parked and recovered once its lease expires; the
    completed branch does not run again; the other run is not disturbed."""
    calls: list[str] = []

    def branch(name: str, seconds: float) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> str:
            calls.append(name)
            await trio.sleep(seconds)
            return name

        return trioflow.create_step(id=name, execute=execute)

    forked = trioflow.create_workflow(id="forked")
    forked = forked.parallel([branch("a", 1), branch("b", 2), branch("c", 3)]).commit()
    steady = trioflow.create_workflow(id="steady").then(branch("steady", 3)).commit()
    storage = FaultyStorage(trioflow.SQLiteStorage(tmp_path / "runs.db"))
    caplog.set_level(logging.INFO, logger="trioflow")
    async with trioflow.open_engine(
        storage=storage, workflows=[forked, steady], **OPTIONS
    ) as engine:
        other = await engine.create_run("steady")
        await other.start_soon()
        run = await engine.create_run("forked", run_id="f1")
        # The write after b ends fails (a's was stored; c is still running).
        storage.fail("save", when=lambda rid, *a, **kw: rid == "f1" and trio.current_time() >= 2)
        await run.start_soon()
        result = await run.result()
        assert result.status == "success"
        assert result.result == {"a": "a", "b": "b", "c": "c"}
        assert (await other.result()).status == "success"
    # b's end was not stored and c was interrupted: both run again; a's end was stored.
    assert sorted(calls) == ["a", "b", "b", "c", "c", "steady"]
    assert "run f1 stopped (StorageError: injected fault in save)" in caplog.text
    assert "recovering run f1" in caplog.text


async def test_a_run_that_breaks_down_three_times_in_a_row_is_recorded_failed(
    trioflow_clock: Any, tmp_path: Path
) -> None:
    calls: list[str] = []
    path = tmp_path / "runs.db"

    def step(name: str) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> str:
            calls.append(name)
            return "done"

        return trioflow.create_step(id=name, execute=execute)

    workflow = (
        trioflow.create_workflow(id="doomed").then(step("first")).then(step("second")).commit()
    )
    storage = FaultyStorage(trioflow.SQLiteStorage(path))
    # Every write of the run while it runs fails (the first: the one before "second",
    # with the end of "first"); its final write would work.
    storage.fail("save", times=None, when=lambda rid, st, *a, release, **kw: not release)
    async with trioflow.open_engine(storage=storage, workflows=[workflow], **OPTIONS) as engine:
        run = await engine.create_run(workflow, run_id="d1")
        await run.start_soon()
        with trio.fail_after(60):
            result = await run.result()
    assert result.status == "failed"
    assert "injected fault in save" in str(result.error)
    assert calls == ["first"] * 3  # its end was never stored; "second" never started
    assert (await stored(path, "d1")).status == "failed"


async def test_an_unreadable_run_is_logged_once_and_left_as_stored(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "runs.db"
    workflow = ledger_workflow([])
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[workflow], **OPTIONS
    ) as engine:
        await engine.create_run("ledger", run_id="corrupt")
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE trioflow_runs SET status = 'running', snapshot = x'7b7b7b' "
            "WHERE run_id = 'corrupt'"
        )
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[workflow], **OPTIONS
    ) as engine:
        await trio.sleep(10)  # ten leases: many recovery passes
        run = await engine.create_run("ledger")
        await run.cancel()  # still serving
    assert caplog.text.count("cannot recover run corrupt") == 1
    with sqlite3.connect(path) as conn:
        (data,) = conn.execute("SELECT snapshot FROM trioflow_runs WHERE run_id = 'corrupt'")
        assert data == (b"{{{",)


async def test_an_error_releasing_leases_does_not_replace_the_bodys_error(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FaultyStorage(trioflow.SQLiteStorage(tmp_path / "runs.db"))
    storage.fail("release")
    with pytest.raises(ValueError, match="the body's own"):
        async with trioflow.open_engine(storage=storage, workflows=[ledger_workflow([])]):
            raise ValueError("the body's own error")
    assert "could not release the leases of this engine" in caplog.text


# -- a lost lease ---------------------------------------------------------------------


async def test_an_executor_that_lost_its_lease_starts_no_further_step(
    trioflow_clock: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process takes the run over while a step runs (its owner changes): the
    step's write loses its compare-and-set, no further step starts — not even one with
    no checkpoint — and this executor writes nothing more."""
    path = tmp_path / "runs.db"
    calls: list[str] = []

    async def first(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("first")
        with sqlite3.connect(path) as conn:  # "another process" takes the run over
            conn.execute("UPDATE trioflow_runs SET owner = 'other', lease_until = 9e18")
        await trio.sleep(1)
        return "first"

    async def second(ctx: trioflow.StepContext[Any]) -> str:  # no checkpoint at all
        calls.append("second")
        return "second"

    workflow = (
        trioflow.create_workflow(id="taken")
        .then(trioflow.create_step(id="first", execute=first))
        .then(trioflow.create_step(id="second", execute=second))
        .commit()
    )
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[workflow], **OPTIONS
    ) as engine:
        run = await engine.create_run(workflow, run_id="t1")
        await run.start_soon()
        await trio.sleep(2)
        before = (await stored(path, "t1")).updated_at
        # The other process finishes the run; result() reports its outcome.
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE trioflow_runs SET status = 'canceled', owner = NULL")
            conn.execute(
                "INSERT INTO trioflow_entries SELECT run_id, MAX(seq) + 1, "
                """CAST('{"kind":"run","status":"canceled"}' AS BLOB) FROM trioflow_entries"""
            )
        result = await run.result()
        assert result.status == "canceled"
    assert calls == ["first"]
    assert (await stored(path, "t1")).updated_at == before  # nothing more written
    assert "was ended or taken over by another process" in caplog.text


# -- start() racing cancel() ------------------------------------------------------------


async def start_into(outcome: dict[str, Any], run: trioflow.Run) -> None:
    outcome["start"] = (await run.start()).status


async def cancel_into(outcome: dict[str, Any], run: trioflow.Run, checkpoints: int) -> None:
    for _ in range(checkpoints):
        await trio.lowlevel.checkpoint()
    outcome["cancel"] = (await run.cancel()).status


@pytest.mark.parametrize("same_handle", [True, False])
async def test_start_racing_cancel_has_one_outcome_and_no_false_error(
    tmp_path: Path, same_handle: bool
) -> None:
    calls: list[str] = []
    workflow = ledger_workflow(calls)
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(tmp_path / "runs.db"),
        workflows=[workflow],
        poll_interval=0.005,
    ) as engine:
        for delay in range(12):
            run = await engine.create_run("ledger")
            canceler = run if same_handle else await engine.get_run(run.run_id)
            outcome: dict[str, Any] = {}
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(start_into, outcome, run)
                    nursery.start_soon(cancel_into, outcome, canceler, delay)
            assert outcome == {"start": "canceled", "cancel": "canceled"}
            assert (await engine.get_run(run.run_id)).status == "canceled"
    assert "send_money" not in calls


# -- bad arguments, raised before anything changes ----------------------------------------


async def test_cancel_checks_its_grace_period_before_anything_changes() -> None:
    workflow = ledger_workflow([])
    run = await workflow.create_run()
    for bad, error in ((-1, ValueError), (float("nan"), ValueError), ("1", TypeError)):
        with pytest.raises(error, match="grace_period"):
            await run.cancel(grace_period=bad)
    assert not run.cancel_requested
    assert run.status == "pending"


async def test_a_listener_raising_keyboardinterrupt_still_interrupts_the_run(
    autojump_clock: Any,
) -> None:
    calls: list[str] = []
    run = await ledger_workflow(calls).create_run()

    def interrupt() -> None:
        raise KeyboardInterrupt

    run.abort_signal.add_event_listener("abort", interrupt)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run.start)
        await trio.sleep(1)
        with pytest.raises(KeyboardInterrupt):
            await run.cancel()
    assert run.status == "canceled"
    assert trio.current_time() == 1
    assert calls == ["debit"]
