"""The journal's promises (commit 9377ff9): a run is a header and entries each written
once, a durable N-step chain costs N+1 writes, a step's start is visible to other
processes while it runs, the writes of concurrent runs share transactions (a failed or
lost one hurting only its own runs), and a SIGKILL during such a shared transaction
loses nothing that was acknowledged.

Writes are counted as the storage sees them: each `Write` of a `save_many` batch, and
each claim that stores a run's start (``claim(start=...)``). Sizes are read from the
SQLite tables themselves.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import journal_app
import pytest
import trio
from faulty_storage import FaultyStorage
from pg_server import StorageFactory

import trioflow
from trioflow import _journal
from trioflow.storage import Claim, Storage, Write

MB = 1_000_000


class Writes:
    """What a storage was asked to write: the batches of `save_many` (their sizes and
    writes) and the claims that stored a run's start."""

    def __init__(self) -> None:
        self.batches: list[list[Write]] = []
        self.starts: list[str] = []

    @property
    def items(self) -> int:
        """Writes of runs: each write of a batch, and each start stored by a claim."""
        return sum(len(batch) for batch in self.batches) + len(self.starts)

    def of(self, run_id: str) -> int:
        return sum(w.run_id == run_id for batch in self.batches for w in batch) + (
            self.starts.count(run_id)
        )


def count_writes(
    storage: Storage, before: Callable[[Sequence[Write]], None] | None = None
) -> Writes:
    """Note every write `storage` is asked for (`before` sees a batch before it goes)."""
    seen = Writes()
    save_many, claim_many = storage.save_many, storage.claim_many

    async def counting_save_many(writes: Sequence[Write], owner: str, now: float) -> list[bool]:
        seen.batches.append(list(writes))
        if before is not None:
            before(writes)
        return await save_many(writes, owner, now)

    async def counting_claim_many(claims: Sequence[Claim]) -> list[Any]:
        rows = await claim_many(claims)
        for claim, row in zip(claims, rows, strict=True):
            if row is not None and claim.start is not None:
                seen.starts.append(claim.run_id)
        return rows

    storage.save_many = counting_save_many  # type: ignore[method-assign]
    storage.claim_many = counting_claim_many  # type: ignore[method-assign]
    return seen


def suffix_step(step_id: str) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        return f"{ctx.input_data}+{step_id}"

    return trioflow.create_step(id=step_id, execute=execute)


def chain(workflow_id: str, steps: Sequence[trioflow.Step[Any, Any]]) -> trioflow.Workflow:
    workflow = trioflow.create_workflow(id=workflow_id)
    for step in steps:
        workflow.then(step)
    return workflow.commit()


def stored_bytes(db: Path, run_id: str) -> int:
    """The bytes stored for the run: its header and all its journal entries."""
    with sqlite3.connect(db) as conn:
        (header,) = conn.execute(
            "SELECT length(CAST(snapshot AS BLOB)) FROM trioflow_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        (entries,) = conn.execute(
            "SELECT COALESCE(SUM(length(CAST(data AS BLOB))), 0) FROM trioflow_entries "
            "WHERE run_id = ?",
            (run_id,),
        ).fetchone()
    conn.close()
    return int(header) + int(entries)


# -- N+1 writes ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 10])
async def test_an_n_step_chain_makes_n_plus_1_writes(
    storage_factory: StorageFactory, n: int
) -> None:
    """After `create_run`: the start (claimed with its input), one write before each
    next step (the previous step's end and this step's start), and the final write."""
    storage = storage_factory()
    steps = [suffix_step(f"s{i}") for i in range(1, n + 1)]
    async with trioflow.open_engine(storage=storage, workflows=[chain("chain", steps)]) as engine:
        run = await engine.create_run("chain", run_id="r1")
        writes = count_writes(storage)
        with trio.fail_after(20):
            result = await run.start("x")
    assert (result.status, result.result) == (
        "success",
        "x" + "".join(f"+s{i}" for i in range(1, n + 1)),
    )
    assert writes.starts == ["r1"]
    assert writes.items == n + 1
    assert writes.of("r1") == n + 1


# -- each value written once ----------------------------------------------------------------


def size_step(step_id: str) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        return f"{step_id}:{len(ctx.input_data)}"

    return trioflow.create_step(id=step_id, execute=execute)


def pass_step(step_id: str) -> trioflow.Step[Any, Any]:
    async def execute(ctx: trioflow.StepContext[Any]) -> Any:
        return ctx.input_data

    return trioflow.create_step(id=step_id, execute=execute)


SHRINKING = chain("shrinking", [size_step("s1"), size_step("s2"), size_step("s3")])
PASSING = chain("passing", [pass_step(f"p{i}") for i in range(1, 6)])


async def run_to_end(db: Path, workflow_id: str, data: Any) -> trioflow.RunResult:
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(db), workflows=[SHRINKING, PASSING]
    ) as engine:
        run = await engine.create_run(workflow_id, run_id="r1")
        with trio.fail_after(20):
            return await run.start(data)


async def as_stored(db: Path) -> trioflow.RunResult:
    """The run as a new engine on the file reads it."""
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(db), workflows=[SHRINKING, PASSING]
    ) as engine:
        return (await engine.get_run("r1")).result_nowait()


def steps_seen(result: trioflow.RunResult) -> dict[str, tuple[str, Any, Any]]:
    return {path: (r.status, r.payload, r.output) for path, r in result.steps.items()}


async def test_a_big_input_is_written_once_when_steps_return_small_values(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    big = "x" * MB
    result = await run_to_end(db, "shrinking", big)
    assert (result.status, result.result) == ("success", "s3:5")
    assert stored_bytes(db, "r1") < 1.1 * MB
    # The payload of s1 is stored as a reference to the input, and read back as it.
    stored = await as_stored(db)
    assert (stored.status, stored.result) == ("success", "s3:5")
    assert steps_seen(stored) == {
        "s1": ("success", big, f"s1:{MB}"),
        "s2": ("success", f"s1:{MB}", "s2:10"),
        "s3": ("success", "s2:10", "s3:5"),
    }
    assert steps_seen(stored) == steps_seen(result)


async def test_a_big_input_passed_through_five_steps_is_written_once(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    big = "y" * MB
    result = await run_to_end(db, "passing", big)
    assert (result.status, result.result) == ("success", big)
    # Each step's payload and output, and the result, are all the same 1 MB value.
    assert stored_bytes(db, "r1") < 1.1 * MB
    stored = await as_stored(db)
    assert (stored.status, stored.result) == ("success", big)
    assert steps_seen(stored) == {f"p{i}": ("success", big, big) for i in range(1, 6)}


# -- a step's start is visible from another process -------------------------------------------


@pytest.mark.slow
async def test_a_running_step_is_seen_running_by_another_engine_and_runs_watch(
    tmp_path: Path,
) -> None:
    db = tmp_path / "runs.db"
    release = trio.Event()
    blocked = trio.Event()

    async def wait(ctx: trioflow.StepContext[Any]) -> Any:
        blocked.set()
        await release.wait()
        return f"{ctx.input_data}+s2"

    workflow = chain(
        "blocking",
        [suffix_step("s1"), trioflow.create_step(id="s2", execute=wait), suffix_step("s3")],
    )
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(db), workflows=[workflow]
    ) as engine:
        run = await engine.create_run("blocking", run_id="r1")
        await run.start_soon("x")
        with trio.fail_after(20):
            await blocked.wait()
            # Another engine with its own connection, as another process would.
            async with trioflow.open_engine(
                storage=trioflow.SQLiteStorage(db), workflows=[workflow]
            ) as other:
                seen = (await other.get_run("r1")).result_nowait()
            assert seen.status == "running"
            assert {path: r.status for path, r in seen.steps.items()} == {
                "s1": "success",
                "s2": "running",
            }
            assert seen.steps["s2"].payload == "x+s1"
            assert seen.steps["s2"].started_at is not None

            # And `trioflow runs watch` in another process shows it, then the end.
            watcher = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "trioflow",
                    "--db",
                    str(db),
                    "runs",
                    "watch",
                    "r1",
                    "--json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            try:
                assert watcher.stdout is not None
                out = b""
                # One look at the run shows both (the running one first, then the end).
                while b'"step_id":"s2"' not in out or b'"step_id":"s1"' not in out:
                    chunk = await watcher.stdout.receive_some()
                    assert chunk, out
                    out += chunk
                lines = [json.loads(line) for line in out.decode().splitlines() if line]
                statuses = {
                    line["step_id"]: line["status"] for line in lines if line["type"] == "step"
                }
                assert statuses == {"s1": "success", "s2": "running"}
                release.set()
                result = await run.result()
                while chunk := await watcher.stdout.receive_some():
                    out += chunk
                assert await watcher.wait() == 0
            finally:
                if watcher.returncode is None:
                    watcher.kill()
    assert (result.status, result.result) == ("success", "x+s1+s2+s3")
    last = json.loads(out.decode().splitlines()[-1])
    assert (last["type"], last["status"]) == ("run-summary", "success")


# -- group commit ---------------------------------------------------------------------------


def counted_chain(workflow_id: str, calls: Counter[tuple[str, str]]) -> trioflow.Workflow:
    """Three steps that count their executions by (run id, step)."""

    def counted(step_id: str) -> trioflow.Step[Any, Any]:
        async def execute(ctx: trioflow.StepContext[Any]) -> Any:
            calls[ctx.run_id, step_id] += 1
            await trio.lowlevel.checkpoint()
            return f"{ctx.input_data}+{step_id}"

        return trioflow.create_step(id=step_id, execute=execute)

    return chain(workflow_id, [counted("s1"), counted("s2"), counted("s3")])


def ended_in(write: Write) -> list[str]:
    """The steps whose success a write records."""
    entries = [json.loads(data) for data in write.entries]
    return [e["path"] for e in entries if e["kind"] == "step" and e["status"] == "success"]


RUNS = [f"r{i:02}" for i in range(50)]


async def test_concurrent_runs_share_transactions(tmp_path: Path) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    storage = trioflow.SQLiteStorage(tmp_path / "runs.db")
    async with trioflow.open_engine(
        storage=storage, workflows=[counted_chain("three", calls)]
    ) as engine:
        runs = [await engine.create_run("three", run_id=run_id) for run_id in RUNS]
        writes = count_writes(storage)
        async with trio.open_nursery() as starting:  # at once: their claims overlap too
            for run in runs:
                starting.start_soon(run.start_soon, run.run_id)
        with trio.fail_after(20):
            results = [await run.result() for run in runs]
    assert [(r.status, r.result) for r in results] == [
        ("success", f"{run_id}+s1+s2+s3") for run_id in RUNS
    ]
    assert calls == {(run_id, step): 1 for run_id in RUNS for step in ("s1", "s2", "s3")}
    in_batches = sum(len(batch) for batch in writes.batches)
    assert in_batches == 3 * len(RUNS)  # s1's end, s2's end, the final write
    assert len(writes.batches) < 0.8 * in_batches, [len(batch) for batch in writes.batches]


@pytest.mark.slow
async def test_a_failed_batch_fails_only_its_runs_and_they_recover(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: Counter[tuple[str, str]] = Counter()
    storage = FaultyStorage(trioflow.SQLiteStorage(tmp_path / "runs.db"))
    failed: list[Write] = []

    def choose(batch: Sequence[Write]) -> None:
        """Fail, once, the 20th batch or the first after it that holds several writes:
        the rule matches one write of it (of the chosen run), so the whole batch fails."""
        if not failed and len(writes.batches) >= 20 and len(batch) > 1:
            failed.extend(batch)
            chosen = batch[len(batch) // 2].run_id
            storage.fail("save", times=1, when=lambda run_id, *args, **kw: run_id == chosen)

    async with trioflow.open_engine(
        storage=storage,
        workflows=[counted_chain("three", calls)],
        lease_seconds=1,
        poll_interval=0.05,
    ) as engine:
        runs = [await engine.create_run("three", run_id=run_id) for run_id in RUNS]
        writes = count_writes(storage, before=choose)
        with caplog.at_level(logging.ERROR, logger="trioflow"):
            for run in runs:  # one after the other: the batches are small
                await run.start_soon(run.run_id)
            with trio.fail_after(20):
                results = [await (await engine.get_run(run_id)).result() for run_id in RUNS]
    assert [(r.status, r.result) for r in results] == [
        ("success", f"{run_id}+s1+s2+s3") for run_id in RUNS
    ]
    assert len(storage.failed) == 1
    assert 1 < len(failed) < len(RUNS) / 2, failed
    lost = {w.run_id: ended_in(w) for w in failed}
    assert all(len(steps) == 1 for steps in lost.values()), lost
    # Only the runs of the failed batch stopped (and were parked for recovery).
    messages = [r.getMessage() for r in caplog.records]
    stopped = {m.split()[1] for m in messages if "stays as last stored" in m}
    assert stopped == set(lost)
    # Each step ran once, but the one whose end was in the failed write: it ran again.
    assert calls == {
        (run_id, step): 2 if step in lost.get(run_id, ()) else 1
        for run_id in RUNS
        for step in ("s1", "s2", "s3")
    }


def batch_victim(batch: Sequence[Write]) -> str:
    """A run of `batch` whose write in it is not its last (the middle one of those)."""
    between_steps = [write for write in batch if not write.release]
    return between_steps[len(between_steps) // 2].run_id


def steps_ended_in(write: Write) -> list[str]:
    entries = [_journal._decoder.decode(data) for data in write.entries]
    return [e.path for e in entries if isinstance(e, _journal.StepSet) and e.status == "success"]


async def test_a_run_taken_over_during_a_batch_stops_and_the_others_finish(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "runs.db"
    calls: Counter[tuple[str, str]] = Counter()
    storage = trioflow.SQLiteStorage(db)
    run_ids = [f"r{i}" for i in range(10)]
    taken: list[Write] = []

    def take_over(batch: Sequence[Write]) -> None:
        """Before the first batch of several writes goes, another process takes one of
        its runs (as after our lease expired): that write loses its compare-and-set."""
        if not taken and len(batch) > 1 and not all(write.release for write in batch):
            taken.extend(batch)
            with sqlite3.connect(db) as conn:
                conn.execute(
                    "UPDATE trioflow_runs SET owner = 'another process' WHERE run_id = ?",
                    (batch_victim(batch),),
                )
            conn.close()

    with caplog.at_level(logging.WARNING, logger="trioflow"), trio.fail_after(20):
        async with trioflow.open_engine(
            storage=storage, workflows=[counted_chain("three", calls)]
        ) as engine:
            runs = [await engine.create_run("three", run_id=run_id) for run_id in run_ids]
            writes = count_writes(storage, before=take_over)
            async with trio.open_nursery() as starting:
                for run in runs:
                    starting.start_soon(run.start_soon, run.run_id)
            while not taken:  # noqa: ASYNC110
                await trio.sleep(0.01)
            victim = batch_victim(taken)
            others = [await run.result() for run in runs if run.run_id != victim]
        # Leaving the block waited for every run this engine executes: the victim's
        # execution stopped by itself.
    assert len(taken) > 1
    assert [(r.status, r.result) for r in others] == [
        ("success", f"{run_id}+s1+s2+s3") for run_id in run_ids if run_id != victim
    ]
    # The victim ran each step up to the one whose end the lost write held (and whose
    # next step's start), once, and none after; it wrote nothing after that write.
    (lost,) = [write for write in taken if write.run_id == victim]
    last_ended = steps_ended_in(lost)[-1]
    ran = ["s1", "s2", "s3"][: int(last_ended[1:])]
    assert last_ended != "s3"
    assert {key: n for key, n in calls.items() if key[0] == victim} == {
        (victim, step): 1 for step in ran
    }
    after = writes.batches[writes.batches.index(taken) + 1 :]
    assert not any(w.run_id == victim for batch in after for w in batch)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [f"run {victim} was ended or taken over by another process; stopping here"]
    async with trioflow.SQLiteStorage(db) as reader:
        row = await reader.load(victim)
    assert (row.status, row.owner) == ("running", "another process")
    # As the other process found it: the steps before the lost write's recorded, no more.
    stored = {path: r.status for path, r in _journal.of_row(row).steps.items()}
    assert stored == {step: "success" for step in ran[:-1]} | (
        {ran[-1]: "running"} if len(ran) > 1 else {}
    )


# -- SIGKILL during a group commit ------------------------------------------------------------

APP = Path(__file__).with_name("journal_app.py")


@pytest.mark.slow
async def test_a_kill_during_a_batch_commit_loses_no_acknowledged_step(tmp_path: Path) -> None:
    """20 runs started at once in a process that SIGKILLs itself while a batch of
    several writes is being applied (before its commit). A new engine recovers them:
    each ends 'success'; a step whose end was committed before the kill never runs
    again, and its stored record is kept as it was."""
    db, side = tmp_path / "runs.db", tmp_path / "side.db"
    killed = await trio.run_process(
        [sys.executable, str(APP), str(db), str(side), "20", "--kill", "in-batch:4"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = killed.stdout.decode()
    assert killed.returncode == -signal.SIGKILL, (out, killed.stderr.decode())
    assert "result" not in out
    [dying] = [line for line in out.splitlines() if line.startswith("dying")]
    batch = int(dying.split()[-2])
    assert batch > 1

    run_ids = journal_app.run_ids(20)
    async with trioflow.SQLiteStorage(db) as reader:
        before = {run_id: _journal.of_row(await reader.load(run_id)) for run_id in run_ids}
    acknowledged = {
        (run_id, path): record
        for run_id, snapshot in before.items()
        for path, record in snapshot.steps.items()
        if record.status == "success"
    }
    ran_before = Counter(journal_app.executions(side))
    # The kill came after some steps' ends were committed and before others were.
    assert acknowledged
    assert set(acknowledged) < set(ran_before)

    with trio.fail_after(20):
        async with journal_app.engine(db, side) as engine:
            results = [await (await engine.get_run(run_id)).result() for run_id in run_ids]
    assert [(r.status, r.result) for r in results] == [
        ("success", f"{run_id}+s1+s2+s3") for run_id in run_ids
    ]
    ran = Counter(journal_app.executions(side))
    assert set(ran) == {(run_id, step) for run_id in run_ids for step in journal_app.STEPS}
    # An acknowledged step never ran again; one that ran but whose end was not
    # committed (in the killed batch, or waiting for the next) ran once more.
    assert {key: ran[key] for key in acknowledged} == dict.fromkeys(acknowledged, 1)
    again = {key for key, n in ran.items() if n > 1}
    assert again == set(ran_before) - set(acknowledged)
    assert len(again) >= batch
    assert max(ran.values()) == 2
    # No acknowledged transition is lost: each stored record is still as it was.
    async with trioflow.SQLiteStorage(db) as reader:
        after = {run_id: _journal.of_row(await reader.load(run_id)) for run_id in run_ids}
    assert {key: after[key[0]].steps[key[1]] for key in acknowledged} == acknowledged


# -- a write that failed, then more changes ---------------------------------------------------


class _TableState:
    """The little of a run's execution state `Journal.take` reads."""

    def __init__(self) -> None:
        self.steps: _journal.Tracked[Any] = _journal.Tracked()
        self.progress: _journal.Tracked[Any] = _journal.Tracked()
        self.states: _journal.Tracked[Any] = _journal.Tracked()
        self.input: Any = "in"
        self.result: Any = None
        self.outputs: list[Any] = []


class _TableRun:
    def __init__(self) -> None:
        self.run_id = "t1"
        self._state = _TableState()

    def _run_fields(self) -> _journal.RunSet:
        return _journal.RunSet(status="running")


def test_changes_given_back_by_a_failed_write_are_stored_by_the_next() -> None:
    run = _TableRun()
    journal = _journal.Journal(0, input_stored=False, outputs_stored=0)
    run._state.steps["a"] = trioflow.StepResult(status="success", output=1, payload="in")
    run._state.progress["loop"] = (1, "x", False)
    journal.take(run)
    del run._state.progress["loop"]  # changed again while that write was under way,
    run._state.steps["b"] = trioflow.StepResult(status="running", payload=1)
    journal.not_stored(run)  # and the write failed: its changes are noted again
    entries = journal.take(run)
    journal.stored(len(entries))
    header = trioflow._snapshot.encode(
        trioflow._snapshot.Snapshot(run_id="t1", workflow_id="w", status="pending")
    )
    folded = _journal.fold("t1", header, entries)
    assert folded.input == "in"
    assert {path: r.status for path, r in folded.steps.items()} == {
        "a": "success",
        "b": "running",
    }
    assert folded.steps["b"].payload == 1  # the output of "a", referred to
    assert folded.progress == {}
    assert journal.seq == len(entries)
