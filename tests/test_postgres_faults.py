"""PostgreSQL faults, injected into a real server of each test's own: a restart
(``pg_ctl restart -m fast``), every trioflow backend terminated, a 5-second stall (SIGSTOP
of the postmaster and its backends), a server down for longer than the storage retries,
and DSNs that can never work.

The promise checked after each fault: the engine keeps serving, the run that was
executing across the fault finishes, and a cancel sent afterwards from another engine
(which lost its connections too) reaches the step. A ``trioflow worker`` process
survives a restart and keeps executing queued runs. Wrong passwords and database names
fail at once, with a message saying what to fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pg_worker_app
import pytest
import trio
import trio.testing
from pg_server import PostgresServer, StorageFactory
from pg_server import own_postgres_server as own_postgres_server
from pg_worker_app import WORKFLOWS
from test_postgres import TERMINAL, query, wait_log, wait_status

import trioflow

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parent / "pg_worker_app.py"


@pytest.fixture
def step_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The steps of tests/pg_worker_app.py, executed in this process, log here."""
    path = tmp_path / "steps.log"
    with open(path, "a", buffering=1) as file:
        monkeypatch.setattr(pg_worker_app, "_log", file)
        yield path


def engine(dsn: str, **options: Any) -> Any:
    # A lease longer than any fault here: no engine takes over a run of another.
    return trioflow.open_engine(
        storage=trioflow.PostgresStorage(dsn), workflows=WORKFLOWS, lease_seconds=10, **options
    )


async def survives(server: PostgresServer, log: Path, fault: Callable[[], object]) -> None:
    """Two engines; one executes a blocked run and a run whose step spans the fault.
    After `fault()`: that run finishes, a cancel from the other engine reaches the
    blocked step, and the engine still executes new runs."""
    dsn = server.new_schema_dsn()
    with trio.fail_after(90):
        async with engine(dsn) as executor, engine(dsn) as canceller:
            blocked = await executor.create_run("blocker")
            await blocked.start_soon()
            spanning = await executor.create_run("three")
            await spanning.start_soon({"sleep": {"s2": 1.0}})
            await wait_log(log, "start", blocked.run_id, "block")
            await wait_log(log, "start", spanning.run_id, "s2")

            await trio.to_thread.run_sync(fault)

            finished = await wait_status(canceller, spanning.run_id, TERMINAL)
            assert finished.status == "success"
            assert finished.result["pids"] == [os.getpid()] * 3
            same = await canceller.get_run(blocked.run_id)
            assert (await same.cancel("after the fault")).status == "canceled"
            await wait_log(log, "cancelled", blocked.run_id, "block", within=10)
            row = await canceller.storage.load(blocked.run_id)
            assert row.status == "canceled"
            assert (row.cancel_reason, row.owner) == ("after the fault", None)
            fresh = await executor.create_run("three")
            assert (await fresh.start({"n": 1})).status == "success"


@pytest.mark.timeout(120)
async def test_engines_survive_a_server_restart(
    own_postgres_server: PostgresServer, step_log: Path
) -> None:
    await survives(own_postgres_server, step_log, own_postgres_server.restart)


@pytest.mark.timeout(120)
async def test_engines_survive_terminated_backends(
    own_postgres_server: PostgresServer, step_log: Path
) -> None:
    server = own_postgres_server
    terminated: list[Any] = []

    def terminate_all() -> None:
        import psycopg

        with psycopg.connect(server.dsn, autocommit=True) as conn:
            terminated.extend(
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                ).fetchall()
            )

    await survives(server, step_log, terminate_all)
    # Both engines' listeners and pooled connections at least.
    assert len(terminated) >= 4 and all(ok for (ok,) in terminated)


@pytest.mark.timeout(120)
async def test_engines_survive_a_five_second_server_stall(
    own_postgres_server: PostgresServer, step_log: Path
) -> None:
    server = own_postgres_server
    await survives(server, step_log, lambda: server.stall(5.0))


async def test_a_cancel_sent_while_the_listener_was_away_arrives_when_it_is_back(
    postgres_dsn: str,
) -> None:
    """The notification of a cancel sent while the executor's listening connection is
    lost is lost with it; once reconnected, the engine looks for requests it missed.
    (The backstop is 300 s: only that look can deliver the cancel in time.)"""
    storage = trioflow.PostgresStorage(postgres_dsn, notify_backstop=300)
    reconnect = threading.Event()
    listen = storage._listen

    def held_back_listen(attempt: Any = None) -> Any:
        if attempt is not None:  # a reconnection, not the first LISTEN at open()
            reconnect.wait(30)
        return listen(attempt)

    storage._listen = held_back_listen  # type: ignore[method-assign]
    factory = StorageFactory("postgres", postgres_dsn)
    with trio.fail_after(40):
        async with (
            trioflow.open_engine(storage=storage, workflows=WORKFLOWS) as executor,
            engine(postgres_dsn) as canceller,
        ):
            run = await executor.create_run("blocker")
            await run.start_soon()
            assert storage._listener is not None
            pid = storage._listener.info.backend_pid
            await query(factory, "SELECT pg_terminate_backend(%s)", pid)
            while True:  # until the executor notices the loss
                if storage._listener is None:
                    break
                await trio.sleep(0.01)
            canceled: list[str] = []
            async with trio.open_nursery() as nursery:

                async def cancel() -> None:
                    same = await canceller.get_run(run.run_id)
                    canceled.append((await same.cancel()).status)

                nursery.start_soon(cancel)
                while True:  # until the request is stored
                    if (await storage.load(run.run_id)).cancel_requested:
                        break
                    await trio.sleep(0.01)
                await trio.sleep(0.2)  # the request's notification is long gone
                assert run.status == "running"
                reconnect.set()
            assert canceled == ["canceled"]
            assert run.status == "canceled"


async def test_only_safe_calls_are_retried_on_a_new_connection(postgres_dsn: str) -> None:
    """A read (or an idempotent write) whose connection breaks runs again on a new one;
    a write might have committed, so it raises StorageError instead."""

    def dies_once(calls: list[int]) -> Callable[[Any], Any]:
        def work(conn: Any) -> Any:
            calls.append(conn.info.backend_pid)
            if len(calls) == 1:
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            return conn.execute("SELECT 42").fetchone()

        return work

    async with trioflow.PostgresStorage(postgres_dsn, max_connections=1) as storage:
        calls: list[int] = []
        assert await storage._call(dies_once(calls), idempotent=True) == (42,)
        assert len(calls) == 2 and calls[0] != calls[1]
        calls = []
        with pytest.raises(trioflow.StorageError, match="may or may not have been stored"):
            await storage._call(dies_once(calls))
        assert len(calls) == 1
        assert await storage.list_runs() == []  # and the storage goes on


@pytest.mark.timeout(120)
async def test_a_server_down_past_the_bound_is_a_storage_error_then_recovers(
    own_postgres_server: PostgresServer, autojump_clock: trio.testing.MockClock
) -> None:
    """The back-off is timed in real time: a MockClock that jumps whenever every task
    waits does not shorten it."""
    server = own_postgres_server
    dsn = server.new_schema_dsn()
    storage = trioflow.PostgresStorage(dsn, reconnect_timeout=1.0, connect_timeout=2)
    async with storage:
        await trio.to_thread.run_sync(server.shut_down)
        started = time.perf_counter()
        with pytest.raises(trioflow.StorageError, match=r"still failing after 1s"):
            await storage.list_runs()
        assert 1.0 <= time.perf_counter() - started < 10
        await trio.to_thread.run_sync(server.start_again)
        assert await storage.list_runs() == []


async def test_a_trio_cancel_interrupts_the_reconnection_back_off(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    storage = trioflow.PostgresStorage(server.new_schema_dsn(), reconnect_timeout=60)
    async with storage:
        await trio.to_thread.run_sync(server.shut_down)
        started = time.perf_counter()
        with trio.move_on_after(0.5) as scope:
            await storage.list_runs()
        assert scope.cancelled_caught
        assert time.perf_counter() - started < 5  # not the 60 s of reconnecting


async def test_a_canceller_is_notified_when_the_run_ends(postgres_dsn: str) -> None:
    """cancel() from another engine returns when the executor's final write notifies
    it: it reads the stored run once when woken (and once for the result), however
    long the step takes to clean up."""

    started = trio.Event()

    @trioflow.step(id="slow-to-stop")
    async def slow_to_stop(ctx: trioflow.StepContext[Any]) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1.5)

    stubborn = trioflow.create_workflow(id="stubborn").then(slow_to_stop).commit()
    options: dict[str, Any] = {"workflows": [stubborn], "lease_seconds": 60}
    executor_storage = trioflow.PostgresStorage(postgres_dsn)
    canceller_storage = trioflow.PostgresStorage(postgres_dsn)
    loads = 0
    real_load = canceller_storage.load

    async def counted_load(run_id: str) -> Any:
        nonlocal loads
        loads += 1
        return await real_load(run_id)

    async with (
        trioflow.open_engine(storage=executor_storage, **options) as executor,
        trioflow.open_engine(storage=canceller_storage, poll_interval=0.02, **options) as other,
    ):
        run = await executor.create_run(stubborn)
        await run.start_soon()
        with trio.fail_after(10):
            await started.wait()
        same = await other.get_run(run.run_id)
        canceller_storage.load = counted_load  # type: ignore[method-assign]
        started = time.perf_counter()
        with trio.fail_after(10):
            assert (await same.cancel()).status == "canceled"
        took = time.perf_counter() - started
    assert 1.5 <= took < 4.5
    # Polling every 20 ms for 1.5 s would have read it some 75 times.
    assert loads <= 3, loads


async def test_wrong_password_database_or_dsn_fail_at_once_and_say_what_to_fix(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    server.add_password_role("app", "right")
    base = f"host=127.0.0.1 port={server.port}"
    ok = trioflow.PostgresStorage(f"{base} user=app password=right dbname=trioflow")
    async with ok:  # the role works with its password: the failures below are the DSNs'
        pass
    cases = [
        (
            f"{base} user=app password=wrong dbname=trioflow",
            r'password authentication failed for user "app".*check the user and password',
        ),
        (
            f"{base} user=postgres dbname=missing",
            r'database "missing" does not exist.*check the database and user names',
        ),
        (f"{base} user=postgres dbname=trioflow nonsense=1", r"nonsense.*fix the DSN"),
    ]
    for dsn, message in cases:
        started = time.perf_counter()
        with pytest.raises(trioflow.StorageError, match=message):
            async with trioflow.open_engine(
                storage=trioflow.PostgresStorage(dsn), workflows=WORKFLOWS
            ):
                pass
        assert time.perf_counter() - started < 3, dsn  # no retrying


def start_worker(dsn: str) -> subprocess.Popen[str]:
    """``trioflow worker`` for the "three" workflow of tests/pg_worker_app.py."""
    argv = [sys.executable, "-m", "trioflow", "worker", f"{APP}:three", "--dsn", dsn]
    return subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(150)
async def test_a_worker_process_survives_a_server_restart(
    own_postgres_server: PostgresServer,
) -> None:
    server = own_postgres_server
    dsn = server.new_schema_dsn()
    worker = start_worker(dsn)
    try:
        assert worker.stderr is not None
        with trio.fail_after(30):
            ready = await trio.to_thread.run_sync(worker.stderr.readline, abandon_on_cancel=True)
        assert "executing queued runs of three" in ready, ready
        async with engine(dsn) as submitter:
            before = [await submitter.enqueue("three", {"i": i}) for i in range(3)]
            spanning = await submitter.enqueue("three", {"sleep": {"s2": 1.5}})
            for run in before:
                assert (await wait_status(submitter, run.run_id, TERMINAL)).status == "success"
            await wait_status(submitter, spanning.run_id, ("running",))
            await trio.to_thread.run_sync(server.restart)
            after = [await submitter.enqueue("three", {"i": i}) for i in range(3)]
            for run in [spanning, *after]:
                result = await wait_status(submitter, run.run_id, TERMINAL, within=60)
                assert result.status == "success", result
            assert worker.poll() is None, "the worker exited"
            rows = await query(
                StorageFactory("postgres", dsn), "SELECT count(*) FROM trioflow_runs"
            )
            assert rows == [(7,)]
        worker.send_signal(signal.SIGINT)
        assert await trio.to_thread.run_sync(worker.wait, 20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        assert worker.stderr is not None
        worker.stderr.close()
