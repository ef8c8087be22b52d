"""Named queues in one process (engines sharing a storage), under MockClock: limits,
priorities, dedup ids, positions. The multi-process proofs are in
test_queues_processes.py."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow
from trioflow._clock import wall_time
from trioflow._queues import Candidate, QueueLimits, pick

# (event, run id, key, wall-clock time) of every step start and end, per test. The wall
# clock (tied to MockClock by trioflow_clock) is what rate limits are measured on.
marks: list[tuple[str, str, str | None, float]] = []


@trioflow.step(id="work")
async def _work(ctx: trioflow.StepContext[Any]) -> Any:
    data = ctx.input_data or {}
    marks.append(("start", ctx.run_id, data.get("key"), wall_time()))
    await trio.sleep(data.get("sleep", 0))
    marks.append(("end", ctx.run_id, data.get("key"), wall_time()))
    return data.get("n")


job = trioflow.create_workflow(id="job").then(_work).commit()


@pytest.fixture(autouse=True)
def _fresh_marks() -> None:
    marks.clear()


class Storages:
    """A storage per engine, all on the same runs: one MemoryStorage shared, or a
    SQLiteStorage each on one file."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.memory = trioflow.MemoryStorage()

    def __call__(self) -> trioflow.Storage:
        if self.kind == "memory":
            return self.memory
        return trioflow.SQLiteStorage(self.path)


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storages:
    return Storages(request.param, tmp_path / "runs.db")


def most_at_once(key: str | None = None) -> int:
    """The largest number of runs (of `key`, if given) executing at one virtual time;
    at equal times ends count before starts (a slot freed and taken again)."""
    events = sorted(
        (at, 0 if what == "end" else 1)
        for what, _, run_key, at in marks
        if key is None or run_key == key
    )
    now = peak = 0
    for _, start in events:
        now += 1 if start else -1
        peak = max(peak, now)
    return peak


def starts() -> list[str]:
    return [run_id for what, run_id, _, _ in marks if what == "start"]


async def test_higher_priority_first_and_first_in_first_out_within_a_priority(
    trioflow_clock: trio.testing.MockClock, storage: Storages
) -> None:
    serial = trioflow.Queue("serial", concurrency=1)
    async with trioflow.open_engine(storage=storage(), workflows=[job], queues=[serial]) as client:
        for run_id, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 1)]:
            await client.enqueue(job, {}, queue="serial", priority=priority, run_id=run_id)
        place = await client.queue_place("c")
        assert place is not None
        assert (place.queue, place.state, place.position, place.priority) == (
            "serial",
            "waiting",
            5,
            0,
        )
        assert place.limits == QueueLimits(name="serial", concurrency=1)
        async with trioflow.open_engine(
            storage=storage(), workflows=[job], queues=[serial], workers=4
        ):
            with trio.fail_after(10):
                for run_id in "abcde":
                    await (await client.get_run(run_id)).result()
        assert await client.queue_place("c") == trioflow._queues.QueuePlace(
            queue="serial",
            priority=0,
            key=None,
            dedup_id=None,
            state="done",
            position=None,
            limits=QueueLimits(name="serial", concurrency=1),
        )
    assert starts() == ["b", "d", "e", "a", "c"]


async def test_concurrency_and_per_key_concurrency_hold_across_two_workers(
    trioflow_clock: trio.testing.MockClock, storage: Storages
) -> None:
    limited = trioflow.Queue("limited", concurrency=3, per_key_concurrency=1)
    async with (
        trioflow.open_engine(
            storage=storage(), workflows=[job], queues=[limited], workers=5
        ) as one,
        trioflow.open_engine(storage=storage(), workflows=[job], queues=[limited], workers=5),
    ):
        runs = [
            await one.enqueue(job, {"key": key, "sleep": 1, "n": n}, queue="limited", key=key)
            for n in range(4)
            for key in "abcd"
        ]
        with trio.fail_after(60):
            results = [await run.result() for run in runs]
    assert [r.status for r in results] == ["success"] * 16
    assert most_at_once() == 3
    assert all(most_at_once(key) == 1 for key in "abcd")


async def test_a_rate_limit_holds_over_rolling_windows(
    trioflow_clock: trio.testing.MockClock, storage: Storages
) -> None:
    rated = trioflow.Queue("rated", rate_limit=trioflow.RateLimit(2, per=10.0))
    async with trioflow.open_engine(
        storage=storage(), workflows=[job], queues=[rated], workers=8
    ) as engine:
        runs = [await engine.enqueue(job, {"n": n}, queue="rated") for n in range(7)]
        with trio.fail_after(100):
            for run in runs:
                await run.result()
    times = sorted(at for what, _, _, at in marks if what == "start")
    assert len(times) == 7
    for first in times:  # every window of 10 s starting at a start holds at most 2
        assert sum(1 for at in times if first <= at < first + 10.0) <= 2
    # It does not wait longer than it must: 2 starts at 0 s (or one at the next poll),
    # 2 at 10 s, 2 at 20 s, 1 at 30 s.
    assert times[-1] - times[0] < 30.1


async def test_a_dedup_id_returns_the_queued_or_executing_run(
    trioflow_clock: trio.testing.MockClock, storage: Storages
) -> None:
    emails = trioflow.Queue("emails")
    async with trioflow.open_engine(storage=storage(), workflows=[job], queues=[emails]) as engine:
        first = await engine.enqueue(job, {"n": 1}, queue="emails", dedup_id="msg-9")
        again = await engine.enqueue(job, {"n": 2}, queue="emails", dedup_id="msg-9")
        assert again.run_id == first.run_id
        other_queue = await engine.enqueue(job, {"n": 3}, dedup_id="msg-9")
        assert other_queue.run_id != first.run_id
        async with trioflow.open_engine(
            storage=storage(), workflows=[job], queues=[emails], workers=2
        ):
            assert (await first.result()).result == 1
        # Ended: the dedup id makes a new run again.
        after = await engine.enqueue(job, {"n": 4}, queue="emails", dedup_id="msg-9")
        assert after.run_id != first.run_id
        place = await engine.queue_place(after.run_id)
        assert place is not None and place.dedup_id == "msg-9" and place.position == 1


async def test_a_run_id_is_stored_once_and_must_keep_its_workflow(
    storage: Storages,
) -> None:
    other = trioflow.create_workflow(id="other").then(_work).commit()
    async with trioflow.open_engine(storage=storage(), workflows=[job, other]) as engine:
        first = await engine.enqueue(job, {"n": 1}, run_id="x")
        assert (await engine.enqueue(job, {"n": 2}, run_id="x")).run_id == "x"
        assert first.run_id == "x"
        with pytest.raises(ValueError, match="of workflow 'job', not 'other'"):
            await engine.enqueue(other, {}, run_id="x")
        assert len(await engine.list_runs()) == 1


async def test_unknown_queues_and_bad_limits_are_refused_with_what_to_fix() -> None:
    async with trioflow.open_engine(storage=trioflow.MemoryStorage(), workflows=[job]) as engine:
        with pytest.raises(LookupError, match=r"does not know queue 'emails'; pass trioflow\."):
            await engine.enqueue(job, {}, queue="emails")
        with pytest.raises(TypeError, match="priority must be a whole number"):
            await engine.enqueue(job, {}, priority="high")  # type: ignore[arg-type]
    with pytest.raises(LookupError, match="cannot serve queue 'reports'"):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=[job], workers=1, serve_queues=["reports"]
        ):
            pass
    with pytest.raises(ValueError, match="two queues are named 'q'"):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(),
            workflows=[job],
            queues=[trioflow.Queue("q"), trioflow.Queue("q")],
        ):
            pass
    with pytest.raises(ValueError, match=r"concurrency=0\): give a whole number >= 1"):
        trioflow.Queue("q", concurrency=0)
    with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
        trioflow.RateLimit(0, per=1.0)
    with pytest.raises(ValueError, match="per must be a finite number of seconds > 0"):
        trioflow.RateLimit(1, per=0)


async def test_a_worker_serves_only_the_queues_it_is_told(
    trioflow_clock: trio.testing.MockClock, storage: Storages
) -> None:
    queues = [trioflow.Queue("emails"), trioflow.Queue("reports")]
    async with trioflow.open_engine(storage=storage(), workflows=[job], queues=queues) as client:
        email = await client.enqueue(job, {"n": 1}, queue="emails")
        report = await client.enqueue(job, {"n": 2}, queue="reports")
        plain = await client.enqueue(job, {"n": 3})
        async with trioflow.open_engine(
            storage=storage(), workflows=[job], queues=queues, workers=2, serve_queues=["emails"]
        ):
            await email.result()
            await trio.sleep(1)
        assert (await client.get_run(report.run_id)).status == "pending"
        assert (await client.get_run(plain.run_id)).status == "pending"
        stats = {s.name: (s.waiting, s.executing) for s in await client.storage.queue_stats(0)}
        assert stats == {"default": (1, 0), "emails": (0, 0), "reports": (1, 0)}


def test_pick_passes_over_full_keys_and_respects_every_limit() -> None:
    limits = QueueLimits(name="q", concurrency=3, per_key_concurrency=1, rate_limit=5, rate_per=1)
    waiting = [Candidate("1", "a"), Candidate("2", "a"), Candidate("3", "b"), Candidate("4", None)]
    assert pick(limits, waiting, active_keys=["b"], started_in_window=0, room=10) == ["1", "4"]
    assert pick(limits, waiting, active_keys=[], started_in_window=4, room=10) == ["1"]
    assert pick(limits, waiting, active_keys=[], started_in_window=0, room=1) == ["1"]
    assert pick(limits, waiting, active_keys=["x", "y", "z"], started_in_window=0, room=9) == []
    unlimited = QueueLimits(name="q")
    picked = pick(unlimited, waiting, active_keys=["a"] * 9, started_in_window=9, room=9)
    assert picked == ["1", "2", "3", "4"]
    assert Counter(c.key for c in waiting)["a"] == 2


async def test_a_run_taken_by_a_worker_that_died_before_starting_it_waits_again(
    trioflow_clock: trio.testing.MockClock, storage: Storages
) -> None:
    """The taken run counts against the limit while its taker's lease lasts; then it is
    back in line, and a live worker executes it, though nothing else waits in its queue."""
    serial = trioflow.Queue("serial", concurrency=1)
    async with trioflow.open_engine(storage=storage(), workflows=[job], queues=[serial]) as client:
        lost = await client.enqueue(job, {"n": 1}, queue="serial", run_id="lost")
        now = wall_time()
        taken = await client.storage.claim_from_queues(
            "ghost", ["job"], [serial.limits()], 5, now, now + 5.0
        )
        assert [row.run_id for row in taken] == ["lost"]
        place = await client.queue_place("lost")
        assert place is not None and place.state == "active"
        async with trioflow.open_engine(
            storage=storage(), workflows=[job], queues=[serial], workers=2
        ):
            with trio.fail_after(30):
                assert (await lost.result()).result == 1
    assert starts() == ["lost"]
    assert 5.0 <= marks[0][3] - now < 5.5  # not before the ghost's lease expired


@pytest.mark.slow
async def test_concurrent_enqueues_with_one_dedup_id_make_one_run_on_postgres(
    postgres_dsn: str,
) -> None:
    emails = trioflow.Queue("emails")
    ids: list[str] = []
    async with (
        trioflow.open_engine(
            storage=trioflow.PostgresStorage(postgres_dsn), workflows=[job], queues=[emails]
        ) as one,
        trioflow.open_engine(
            storage=trioflow.PostgresStorage(postgres_dsn), workflows=[job], queues=[emails]
        ) as two,
    ):

        async def enqueue(engine: trioflow.Engine) -> None:
            run = await engine.enqueue(job, {}, queue="emails", dedup_id="pg-msg")
            ids.append(run.run_id)

        async with trio.open_nursery() as nursery:
            for n in range(8):
                nursery.start_soon(enqueue, one if n % 2 else two)
        same_id = [await one.enqueue(job, {}, run_id="fixed") for _ in range(2)]
        stored = await one.list_runs(limit=100)
    assert len(set(ids)) == 1 and len(ids) == 8
    assert [run.run_id for run in same_id] == ["fixed", "fixed"]
    assert sorted(run.run_id for run in stored) == sorted({ids[0], "fixed"})


async def test_runs_queued_before_named_queues_wait_in_the_default_queue(
    tmp_path: Path,
) -> None:
    """A SQLite file of schema 2 (a queued column, no queue tables): its queued runs
    are moved to the default queue when it is opened, and a worker takes them."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE trioflow_runs (run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, "
            "status TEXT NOT NULL, snapshot BLOB NOT NULL, owner TEXT, lease_until REAL, "
            "cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_reason TEXT, "
            "queued INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, "
            "updated_at REAL NOT NULL); PRAGMA user_version = 2;"
        )
        conn.execute(
            "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, queued, "
            "created_at, updated_at) VALUES ('old', 'job', 'pending', ?, 1, 1, 1)",
            (b'{"run_id":"old","workflow_id":"job","status":"pending"}',),
        )
    conn.close()
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[job], workers=1
    ) as engine:
        with trio.fail_after(20):
            assert (await (await engine.get_run("old")).result()).status == "success"
        place = await engine.queue_place("old")
        assert place is not None and place.queue == "default"
