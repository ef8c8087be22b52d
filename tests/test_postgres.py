"""PostgresStorage, queued runs and workers, cancel by notification.

The behaviour above the storage is the same on SQLite and PostgreSQL, so most tests take
``storage_factory`` (conftest.py: parametrized over both) and run once per backend. The
processes are real: workers are ``tests/pg_worker_app.py`` subprocesses, killed with
SIGKILL where a test says so. A trigger records every terminal status write in
``trioflow_ends`` so that "ends exactly once" is checked in the database itself.

Everything here waits on real time (storage calls run in threads), hence ``slow``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from pg_server import PostgresServer, StorageFactory
from pg_worker_app import WORKFLOWS

import trioflow
from trioflow.storage import _postgres, _sqlite

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parent / "pg_worker_app.py"
TERMINAL = ("success", "failed", "canceled")


# ---- helpers ---------------------------------------------------------------------------


def sql(factory: StorageFactory, query: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Run one statement on the store directly (blocking; call it in a thread)."""
    if factory.kind == "sqlite":
        with sqlite3.connect(factory.url.removeprefix("sqlite:"), timeout=10) as conn:
            return conn.execute(query.replace("%s", "?"), params).fetchall()
    import psycopg

    with psycopg.connect(factory.url, autocommit=True) as pg:
        cursor = pg.execute(query, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


async def query(factory: StorageFactory, text: str, *params: Any) -> list[Any]:
    return await trio.to_thread.run_sync(sql, factory, text, params)


async def record_ends(factory: StorageFactory) -> None:
    """Create the tables (by opening a storage), then a trigger that logs every write of
    a terminal status to trioflow_ends, with the owner that wrote it."""
    async with factory():
        pass
    if factory.kind == "sqlite":
        statements = [
            "CREATE TABLE trioflow_ends (run_id TEXT, status TEXT, owner TEXT)",
            "CREATE TRIGGER trioflow_end AFTER UPDATE OF status ON trioflow_runs "
            "WHEN NEW.status IN ('success', 'failed', 'canceled') "
            "BEGIN INSERT INTO trioflow_ends VALUES (NEW.run_id, NEW.status, OLD.owner); END",
        ]
    else:
        statements = [
            "CREATE TABLE trioflow_ends (run_id TEXT, status TEXT, owner TEXT)",
            "CREATE FUNCTION trioflow_record_end() RETURNS trigger AS $$ BEGIN "
            "INSERT INTO trioflow_ends VALUES (NEW.run_id, NEW.status, OLD.owner); "
            "RETURN NEW; END $$ "
            "LANGUAGE plpgsql",
            "CREATE TRIGGER trioflow_end AFTER UPDATE OF status ON trioflow_runs FOR EACH ROW "
            "WHEN (NEW.status IN ('success', 'failed', 'canceled')) "
            "EXECUTE FUNCTION trioflow_record_end()",
        ]
    for statement in statements:
        await query(factory, statement)


async def ends(factory: StorageFactory) -> Counter[str]:
    rows = await query(factory, "SELECT run_id FROM trioflow_ends")
    return Counter(run_id for (run_id,) in rows)


class LogLine(msgspec.Struct, frozen=True):
    what: str
    run_id: str
    step: str
    pid: int
    at: float


def read_log(path: Path) -> list[LogLine]:
    lines = []
    if not path.exists():
        return lines
    for text in path.read_text().splitlines():
        parts = text.split()
        if len(parts) == 5:  # a worker killed mid-write may leave a broken last line
            lines.append(LogLine(parts[0], parts[1], parts[2], int(parts[3]), float(parts[4])))
    return lines


async def wait_log(path: Path, what: str, run_id: str, step: str, within: float = 20) -> LogLine:
    with trio.fail_after(within):
        while True:
            for line in read_log(path):
                if (line.what, line.run_id, line.step) == (what, run_id, step):
                    return line
            await trio.sleep(0.01)


async def wait_status(
    engine: trioflow.Engine, run_id: str, statuses: tuple[str, ...], within: float = 30
) -> trioflow.RunResult:
    with trio.fail_after(within):
        while True:
            row = await engine.storage.load(run_id)
            if row.status in statuses:
                return (await engine.get_run(run_id)).result_nowait()
            await trio.sleep(0.02)


class Worker:
    """A worker subprocess (tests/pg_worker_app.py)."""

    def __init__(self, url: str, log: Path, **options: Any) -> None:
        argv = [sys.executable, str(APP), "--storage", url, "--log", str(log)]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.owner = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self) -> Worker:
        assert self.proc.stdout is not None
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        assert line.startswith("ready "), f"worker said {line!r} (exit {self.proc.poll()})"
        self.owner = line.split()[1]
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    started: list[Worker] = []

    def spawn_worker(url: str, **options: Any) -> Worker:
        worker = Worker(url, tmp_path / f"worker-{len(started)}.log", **options)
        started.append(worker)
        return worker

    yield spawn_worker
    for worker in started:
        worker.stop()


def engine_on(factory: StorageFactory, **options: Any) -> Any:
    """An engine of this test process. Its long lease keeps it from taking over (every
    lease/2) the runs of a killed worker subprocess: the tests want another worker to."""
    options.setdefault("lease_seconds", 600)
    return trioflow.open_engine(storage=factory(), workflows=WORKFLOWS, **options)


# ---- the storage on its own ------------------------------------------------------------


async def test_missing_psycopg_is_a_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'trioflow\[postgres\]'"):
        trioflow.PostgresStorage("host=localhost")


async def test_repr_hides_the_password() -> None:
    storage = trioflow.PostgresStorage("host=db port=5433 dbname=runs user=me password=secret")
    assert repr(storage) == "PostgresStorage('host=db port=5433 dbname=runs user=me')"


async def test_schema_version_is_stored_and_a_newer_one_refused(postgres_dsn: str) -> None:
    factory = StorageFactory("postgres", postgres_dsn)
    async with factory():
        pass
    rows = await query(factory, "SELECT value FROM trioflow_meta WHERE key = 'schema_version'")
    assert rows == [(str(_postgres.SCHEMA_VERSION),)]
    async with factory():  # opening again migrates nothing
        pass
    await query(factory, "UPDATE trioflow_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(trioflow.StorageError, match=r"newer trioflow.*99.*upgrade trioflow"):
        async with factory():
            pass


async def test_sqlite_schema_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the schema trioflow's first SQLite storage wrote
        conn.executescript(
            "CREATE TABLE trioflow_runs (run_id TEXT PRIMARY KEY, workflow_id TEXT NOT NULL, "
            "status TEXT NOT NULL, snapshot BLOB NOT NULL, owner TEXT, lease_until REAL, "
            "cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_reason TEXT, "
            "created_at REAL NOT NULL, updated_at REAL NOT NULL);"
            "PRAGMA user_version = 1;"
        )
        conn.execute(
            "INSERT INTO trioflow_runs (run_id, workflow_id, status, snapshot, created_at, "
            "updated_at) VALUES ('old', 'three', 'pending', ?, 1, 1)",
            (b'{"run_id":"old","workflow_id":"three","status":"pending"}',),
        )
    conn.close()
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=WORKFLOWS, workers=1
    ) as engine:
        assert (await engine.storage.load("old")).queued is False
        queued = await engine.enqueue("three", {"n": 1})
        result = await (await engine.get_run(queued.run_id)).result()
        assert result.status == "success"
        assert (await engine.get_run("old")).status == "pending"  # not queued: not taken
    with sqlite3.connect(path) as conn:
        # 2: queued; 3: workflow_version, forked_from, the queue tables
        assert conn.execute("PRAGMA user_version").fetchone() == (_sqlite.SCHEMA_VERSION,)
    conn.close()


async def test_trio_cancel_cancels_the_query_on_the_server(postgres_dsn: str) -> None:
    async with trioflow.PostgresStorage(postgres_dsn, max_connections=1) as storage:
        started = time.perf_counter()
        with trio.move_on_after(0.2) as scope:
            await storage._call(lambda conn: conn.execute("SELECT pg_sleep(30)"))
        assert scope.cancelled_caught
        assert time.perf_counter() - started < 5
        # The one connection is usable again, and the server runs no pg_sleep any more.
        assert await storage.list_runs() == []
        busy = await storage._call(
            lambda conn: conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%%' "
                "AND state = 'active'"
            ).fetchone()
        )
        assert busy == (0,)


async def test_a_completed_call_is_not_reported_cancelled(postgres_dsn: str) -> None:
    async with trioflow.PostgresStorage(postgres_dsn) as storage:
        with trio.CancelScope() as scope:
            scope.cancel()  # already cancelled: nothing starts
            await storage.list_runs()
        assert scope.cancelled_caught


async def test_storage_contract(storage: trioflow.Storage) -> None:
    """The compare-and-set rules every backend keeps (conftest's ``storage`` fixture)."""
    snapshot = b'{"run_id":"r","workflow_id":"three","status":"pending"}'
    async with storage:
        await storage.insert("r", "three", "pending", snapshot, 100.0)
        with pytest.raises(ValueError, match="already stored"):
            await storage.insert("r", "three", "pending", snapshot, 100.0)
        with pytest.raises(trioflow.RunNotFoundError):
            await storage.load("nope")
        row = await storage.load("r")
        assert (row.status, row.owner, row.queued, row.snapshot) == (
            "pending",
            None,
            False,
            snapshot,
        )
        assert not await storage.save("r", "running", "a", 101.0, release=False)
        now = time.time()
        assert await storage.claim("r", "a", ("pending",), now, now + 60) is not None
        assert await storage.claim("r", "b", ("pending",), now, now + 60) is None  # held
        assert await storage.save("r", "running", "a", now, release=False, entries=[b"1", b"2"])
        assert not await storage.save("r", "running", "b", now, release=False, entries=[b'"x"'])
        # A claim with a start applies it in the same transaction.
        assert await storage.claim("r", "c", ("running",), now, now + 60, start=None) is None
        assert await storage.recoverable(["three"], now, 10) == []
        assert await storage.recoverable(["three"], now + 120, 10) == ["r"]  # lease expired
        await storage.renew("a", ["r"], now + 300)
        assert await storage.recoverable(["three"], now + 120, 10) == []
        # Held: the cancel is a request for the executor.
        assert await storage.request_cancel("r", "why", now) == "running"
        assert await storage.cancel_requests("a") == [("r", "why")]
        assert await storage.cancel_requests("b") == []
        await storage.release("a")
        assert (await storage.load("r")).owner is None
        # Nobody holds it now: canceled in storage at once, and then it is over.
        assert await storage.request_cancel("r", "why", now) == "canceled"
        assert not await storage.save("r", "success", "a", now, release=True, first_seq=4)
        row = await storage.load("r")
        assert row.status == "canceled"
        # The storage's cancel is an entry after the run's own, in the journal.
        assert row.entries[:2] == (b"1", b"2") and len(row.entries) == 3
        assert json.loads(row.entries[2])["kind"] == "canceled-idle"
        assert [s.run_id for s in await storage.list_runs(status="canceled")] == ["r"]


async def test_claim_queued_takes_each_run_once(storage_factory: StorageFactory) -> None:
    async with engine_on(storage_factory) as engine:
        queued = {(await engine.enqueue("three", {"i": i})).run_id for i in range(40)}
        other = await engine.enqueue("blocker")
        plain = await engine.create_run("three")  # pending but not queued
    taken: list[str] = []

    async def claimer(name: str) -> None:
        async with storage_factory() as storage:
            while True:
                now = time.time()
                rows = await storage.claim_queued(name, ["three"], 3, now, now + 60)
                if not rows:
                    return
                assert all(row.owner == name and row.queued for row in rows)
                taken.extend(row.run_id for row in rows)

    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(claimer, f"owner-{n}")
    assert sorted(taken) == sorted(queued)
    async with storage_factory() as storage:
        now = time.time()
        assert await storage.claim_queued("late", ["three"], 10, now, now + 60) == []
        # A lease that expired makes the run claimable again (its worker died).
        row = (await storage.claim_queued("x", ["blocker"], 10, now, now - 1))[0]
        assert row.run_id == other.run_id
        again = await storage.claim_queued("y", ["blocker"], 10, now, now + 60)
        assert [r.run_id for r in again] == [other.run_id]
        assert (await storage.load(plain.run_id)).owner is None


async def test_claim_queued_in_memory() -> None:
    storage = trioflow.MemoryStorage()
    async with trioflow.open_engine(storage=storage, workflows=WORKFLOWS) as engine:
        first = await engine.enqueue("three", 1)
        second = await engine.enqueue("three", 2)
        await engine.create_run("three")
        rows = await storage.claim_queued("a", ["three"], 1, time.time(), time.time() + 60)
        assert [r.run_id for r in rows] == [first.run_id]
        rows = await storage.claim_queued("b", ["three"], 5, time.time(), time.time() + 60)
        assert [r.run_id for r in rows] == [second.run_id]


# ---- engines on both backends ----------------------------------------------------------


async def test_engine_basics(storage_factory: StorageFactory) -> None:
    async with engine_on(storage_factory) as engine:
        run = await engine.create_run("three", run_id="first")
        result = await run.start(input_data={"x": 1})
        assert result.status == "success"
        assert result.result == {"x": 1, "pids": [os.getpid()] * 3}
        again = await engine.create_run("three", run_id="first")  # idempotent: the same run
        assert (again.run_id, again.status) == ("first", "success")
        with pytest.raises(trioflow.RunNotFoundError):
            await engine.get_run("missing")
        for _ in range(5):
            await engine.create_run("three")
        page = await engine.list_runs(limit=4)
        rest = await engine.list_runs(limit=4, offset=4)
        assert len(page) == 4 and len(rest) == 2
        assert len({s.run_id for s in page + rest}) == 6
        assert len(await engine.list_runs(status="pending")) == 5
        assert await engine.list_runs(workflow_id="blocker") == []
        assert isinstance(await engine.storage.data_version(), int)
    async with engine_on(storage_factory) as other:
        same = await other.get_run("first")
        assert same.result_nowait().result == {"x": 1, "pids": [os.getpid()] * 3}
        assert same.result_nowait().steps["s2"].status == "success"


async def test_enqueue_checks_the_input_and_stores_nothing_bad(
    storage_factory: StorageFactory,
) -> None:
    class Numbers(msgspec.Struct):
        n: int

    @trioflow.step(id="double")
    async def double(ctx: trioflow.StepContext[Numbers]) -> int:
        return ctx.input_data.n * 2

    typed = trioflow.create_workflow(id="typed", input_schema=Numbers).then(double).commit()
    async with trioflow.open_engine(storage=storage_factory(), workflows=[typed]) as engine:
        with pytest.raises(trioflow.ValidationError):
            await engine.enqueue(typed, {"n": "not a number"})
        assert await engine.list_runs() == []
        run = await engine.enqueue(typed, {"n": 21}, run_id="typed-1")
        assert run.run_id == "typed-1" and run.status == "pending"
    async with trioflow.open_engine(
        storage=storage_factory(), workflows=[typed], workers=1
    ) as worker:
        result = await (await worker.get_run("typed-1")).result()
        assert (result.status, result.result) == ("success", 42)


async def test_a_worker_executes_at_most_n_queued_runs_at_once(
    storage_factory: StorageFactory,
) -> None:
    active = peak = 0

    @trioflow.step(id="count")
    async def count(ctx: trioflow.StepContext[int]) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.05)
        active -= 1
        return ctx.input_data

    counted = trioflow.create_workflow(id="counted").then(count).commit()
    async with trioflow.open_engine(storage=storage_factory(), workflows=[counted]) as producer:
        runs = [await producer.enqueue(counted, i) for i in range(8)]
    async with trioflow.open_engine(
        storage=storage_factory(), workflows=[counted], workers=2
    ) as worker:
        results = [await (await worker.get_run(r.run_id)).result() for r in runs]
    assert [r.result for r in results] == list(range(8))
    assert peak == 2


async def test_suspend_and_resume_across_engines(storage_factory: StorageFactory) -> None:
    async with engine_on(storage_factory) as first:
        run = await first.create_run("suspender")
        result = await run.start()
        assert result.status == "suspended"
        assert result.suspended == [["ask"]]
    async with engine_on(storage_factory) as second:
        same = await second.get_run(run.run_id)
        assert same.status == "suspended"
        result = await same.resume(step="ask", resume_data="yes")
        assert result.status == "success"
        assert result.result == {"answer": "yes", "pid": os.getpid()}


# ---- across processes ------------------------------------------------------------------


async def test_cancel_a_run_executing_in_another_process(
    storage_factory: StorageFactory, spawn: Any
) -> None:
    await record_ends(storage_factory)
    worker = await spawn(storage_factory.url, lease=5).ready()
    async with engine_on(storage_factory) as engine:
        run = await engine.enqueue("blocker")
        await wait_log(worker.log, "start", run.run_id, "block")
        asked = time.time()
        outcome = await run.cancel("enough")
        assert outcome.status == "canceled"
        seen = await wait_log(worker.log, "cancelled", run.run_id, "block", within=5)
        assert seen.pid == worker.pid
        assert seen.at - asked < 1.0  # notified (postgres) or polled (sqlite), not leased out
        result = (await engine.get_run(run.run_id)).result_nowait()
        assert result.status == "canceled"
        assert result.steps["block"].status == "canceled"
        row = await engine.storage.load(run.run_id)
        assert row.owner is None and row.cancel_reason == "enough"
    assert await ends(storage_factory) == {run.run_id: 1}


async def test_cancel_pending_and_suspended_runs_from_another_process(
    storage_factory: StorageFactory, spawn: Any
) -> None:
    await record_ends(storage_factory)
    async with engine_on(storage_factory) as engine:
        pending = await engine.enqueue("three", {"x": 1})
        outcome = await pending.cancel()  # no worker yet: canceled in storage at once
        assert outcome.status == "canceled"
        worker = await spawn(storage_factory.url, lease=5).ready()
        asking = await engine.enqueue("suspender")
        suspended = await wait_status(engine, asking.run_id, ("suspended",))
        assert suspended.suspended == [["ask"]]
        assert (await asking.cancel()).status == "canceled"
        result = (await engine.get_run(asking.run_id)).result_nowait()
        assert result.status == "canceled"
        assert result.steps["ask"].status == "canceled"
        with pytest.raises(trioflow.RunStateError, match="canceled"):
            await (await engine.get_run(asking.run_id)).resume(resume_data="late")
        # The worker is alive and busy with the queue, yet never ran the canceled run.
        later = await engine.enqueue("three", {"x": 2})
        assert (await wait_status(engine, later.run_id, TERMINAL)).status == "success"
        assert [line for line in read_log(worker.log) if line.run_id == pending.run_id] == []
        assert (await engine.get_run(pending.run_id)).status == "canceled"
    assert await ends(storage_factory) == {pending.run_id: 1, asking.run_id: 1, later.run_id: 1}


async def test_resume_a_run_suspended_in_another_process(
    storage_factory: StorageFactory, spawn: Any
) -> None:
    worker = await spawn(storage_factory.url, lease=5).ready()
    async with engine_on(storage_factory) as engine:
        asking = await engine.enqueue("suspender")
        await wait_status(engine, asking.run_id, ("suspended",))
        run = await engine.get_run(asking.run_id)
        result = await run.resume(resume_data="ok")
        assert result.result == {"answer": "ok", "pid": os.getpid()}
    assert [line.pid for line in read_log(worker.log)] == [worker.pid]


async def test_recovery_after_sigkill_resumes_from_the_last_completed_step(
    storage_factory: StorageFactory, spawn: Any
) -> None:
    await record_ends(storage_factory)
    doomed = await spawn(storage_factory.url, lease=1).ready()
    async with engine_on(storage_factory) as engine:
        run = await engine.enqueue("three", {"sleep": {"s2": 60}})
        await wait_log(doomed.log, "start", run.run_id, "s2")
        doomed.kill()
        rescuer = await spawn(storage_factory.url, lease=1, max_sleep=0).ready()
        result = await wait_status(engine, run.run_id, TERMINAL)
    assert result.status == "success"
    assert result.result["pids"] == [doomed.pid, rescuer.pid, rescuer.pid]
    before = [(line.what, line.step) for line in read_log(doomed.log)]
    after = [(line.what, line.step) for line in read_log(rescuer.log)]
    assert before == [("start", "s1"), ("done", "s1"), ("start", "s2")]
    assert after == [("start", "s2"), ("done", "s2"), ("start", "s3"), ("done", "s3")]
    assert await ends(storage_factory) == {run.run_id: 1}


async def test_cancel_racing_a_completion_ends_in_one_outcome(
    storage_factory: StorageFactory, spawn: Any
) -> None:
    await record_ends(storage_factory)
    worker = await spawn(storage_factory.url, lease=5).ready()
    delay = 0.3
    outcomes: dict[str, str] = {}
    async with engine_on(storage_factory) as engine:
        for offset in (-0.2, -0.05, -0.01, -0.003, 0.0, 0.003, 0.01, 0.05, 0.2, 0.4):
            run = await engine.enqueue("racer", {"delay": delay})
            started = await wait_log(worker.log, "start", run.run_id, "wait")
            await trio.sleep(max(0.0, started.at + delay + offset - time.time()))
            said = (await run.cancel("race")).status
            stored = await engine.storage.load(run.run_id)
            result = (await engine.get_run(run.run_id)).result_nowait()
            assert said == stored.status == result.status, (offset, said, stored.status)
            assert said in ("success", "canceled")
            if said == "success":
                assert result.result == "finished"
                assert result.steps["wait"].status == "success"
            outcomes[run.run_id] = said
    assert await ends(storage_factory) == Counter(outcomes.keys())
    # Far enough on either side, the outcome is certain.
    said = list(outcomes.values())
    assert (said[0], said[-1]) == ("canceled", "success")


# ---- PostgreSQL notifications ----------------------------------------------------------


async def test_cancel_notification_reaches_another_engine_fast(postgres_dsn: str) -> None:
    factory = StorageFactory("postgres", postgres_dsn)
    latencies = []
    async with engine_on(factory) as asker, engine_on(factory, workers=2) as worker:
        for _ in range(20):
            run = await asker.enqueue("blocker")
            with trio.fail_after(10):
                while True:
                    if run.run_id in worker._live and worker._live[run.run_id]._scope:
                        break
                    await trio.sleep(0.005)
            live = worker._live[run.run_id]
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.cancel)
                await live._done.wait()  # type: ignore[union-attr]
                latencies.append(trio.current_time() - started)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 0.05, latencies


async def test_the_listener_reconnects_after_losing_its_connection(postgres_dsn: str) -> None:
    factory = StorageFactory("postgres", postgres_dsn)
    # A backstop far longer than the test: only notifications can deliver the cancel.
    storage = trioflow.PostgresStorage(postgres_dsn, notify_backstop=300)
    async with (
        engine_on(factory) as asker,
        trioflow.open_engine(storage=storage, workflows=WORKFLOWS, workers=1) as worker,
    ):
        killed = await query(
            factory,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%%' AND datname = current_database()",
        )
        assert killed and all(ok for (ok,) in killed)
        run = await asker.enqueue("blocker")
        with trio.fail_after(10):
            while True:
                if run.run_id in worker._live:
                    break
                await trio.sleep(0.01)
        await trio.sleep(0.3)  # the listener has noticed the loss and reconnected
        with trio.fail_after(5):
            assert (await run.cancel()).status == "canceled"


# ---- the must-show test ----------------------------------------------------------------


async def test_four_workers_a_thousand_runs_one_killed(
    postgres_server: PostgresServer, spawn: Any
) -> None:
    """4 worker subprocesses, 1,000 queued runs of a 3-step workflow, one worker killed
    with SIGKILL in the middle: every run ends exactly once, none is lost, and the runs
    the dead worker held finish elsewhere."""
    factory = StorageFactory("postgres", postgres_server.new_schema_dsn())
    await record_ends(factory)
    total = 1000
    async with engine_on(factory) as engine:
        ids = [
            (await engine.enqueue("three", {"sleep": {"s2": 0.01}})).run_id for _ in range(total)
        ]
        workers = [spawn(factory.url, concurrency=8, lease=1.0) for _ in range(4)]
        for worker in workers:
            await worker.ready()
        victim = workers[0]

        async def ended() -> int:
            return int((await query(factory, "SELECT count(*) FROM trioflow_ends"))[0][0])

        async def victim_holds() -> set[str]:
            rows = await query(
                factory,
                "SELECT run_id FROM trioflow_runs WHERE owner = %s "
                "AND status NOT IN ('success', 'failed', 'canceled')",
                victim.owner,
            )
            return {run_id for (run_id,) in rows}

        # Killed a third of the way, at a moment it holds runs (a worker whose runs all
        # ended holds none until its next claim).
        with trio.fail_after(60):
            while True:
                if await ended() >= total // 3 and await victim_holds():
                    break
                await trio.sleep(0.005)
        victim.kill()
        # What the dead worker held (a commit it sent before dying lands at once).
        await trio.sleep(0.2)
        held = await victim_holds()
        with trio.fail_after(60):
            while True:
                if await ended() >= total:
                    break
                await trio.sleep(0.05)
        rows = await query(factory, "SELECT run_id, status FROM trioflow_runs")
    statuses = dict(rows)
    assert sorted(statuses) == sorted(ids)  # none lost, none invented
    assert Counter(statuses.values()) == {"success": total}
    assert await ends(factory) == Counter(ids)  # each ended exactly once
    assert held, "the victim held no run when it was killed"
    # The runs the victim held were ended by the survivors.
    enders = dict(await query(factory, "SELECT run_id, owner FROM trioflow_ends"))
    survivors = {worker.owner for worker in workers[1:]}
    assert {enders[run_id] for run_id in held} <= survivors
    logs = [line for worker in workers for line in read_log(worker.log)]
    # Every step finished; only a step the victim was inside when it died (finished,
    # maybe, but not yet recorded) may have run twice.
    done = Counter((line.run_id, line.step) for line in logs if line.what == "done")
    assert all(done[(run_id, step)] >= 1 for run_id in ids for step in ("s1", "s2", "s3"))
    assert {run_id for (run_id, _), n in done.items() if n > 1} <= held
