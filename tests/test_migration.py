"""A database written by an older trioflow is upgraded in place by the engine that opens it.

The fixtures were written by the trioflow of the day they were made (tests/data/make_*):
``schema3.db`` (SQLite schema 3) and ``schema2_pg.sql`` (a dump of PostgreSQL schema 2),
each with a run of every status of tests/migration_app.py. While the storage layout is
the one they were written with, these tests show that the fixtures hold what they claim;
once it changes, they show that the upgrade keeps every run: statuses, versions, results,
step outputs, logs, and runs that go on from where they were without running a recorded
step again.

The first engine knows only the workflows of the runs nobody executes (it must not take
over the waiting and running runs before they are listed); the second knows them all and
recovers those two; the third opens the upgraded store once more.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import migration_app
import pytest
import trio
from migration_app import CALLS, WORKFLOWS
from pg_server import PostgresServer

import trioflow
from trioflow.storage import _postgres, _sqlite

# Each test opens three engines on real time (storage calls run in threads): ~1 s.
pytestmark = pytest.mark.timeout(30)

DATA = Path(__file__).resolve().parent / "data"
OPTIONS: dict[str, Any] = {"lease_seconds": 2.0, "poll_interval": 0.02}

STORED = {
    "mig-success": "success",
    "mig-failed": "failed",
    "mig-canceled": "canceled",
    "mig-pending": "pending",
    "mig-suspended": "suspended",
    "mig-waiting": "waiting",
    "mig-loop": "suspended",
    "mig-foreach": "running",
}
ENDED = {
    **dict.fromkeys(STORED, "success"),
    "mig-failed": "failed",
    "mig-canceled": "canceled",
}


@pytest.fixture(autouse=True)
def calls() -> Iterator[list[str]]:
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def calls_of(run_id: str) -> list[str]:
    return [call.removeprefix(f"{run_id}:") for call in CALLS if call.startswith(f"{run_id}:")]


async def check_upgrade(new_storage: Callable[[], trioflow.Storage]) -> None:
    """Every check on a store loaded from a fixture; `new_storage()` opens it."""
    idle = [migration_app.pair, migration_app.fails, migration_app.loop]
    async with trioflow.open_engine(storage=new_storage(), workflows=idle, **OPTIONS) as engine:
        listed = {s.run_id: (s.status, s.version) for s in await engine.list_runs()}
        assert listed == {run_id: (status, "m1") for run_id, status in STORED.items()}

        done = await (await engine.get_run("mig-success")).result()
        assert done.status == "success"
        assert done.result == {"total": 7, "approved_by": "nobody"}
        assert done.steps["first"].output == {"n": 3, "doubled": 6}
        assert done.steps["second"].output == {"total": 7, "approved_by": "nobody"}
        (log,) = await engine.storage.read_logs("mig-success")
        assert (log.level, log.step_id, log.message) == (
            "INFO",
            "first",
            "first step of mig-success",
        )

        failed = await (await engine.get_run("mig-failed")).result()
        assert failed.status == "failed"
        assert "cannot handle {'n': 4, 'doubled': 8}" in str(failed.error)

        suspended = await engine.get_run("mig-suspended")
        assert suspended.status == "suspended"
        resumed = await suspended.resume("second", {"who": "ada"})
        assert (resumed.status, resumed.result) == ("success", {"total": -9, "approved_by": "ada"})
        assert calls_of("mig-suspended") == ["second"]  # the recorded first step is replayed

        looping = await engine.get_run("mig-loop")
        finished = await looping.resume("tick", {"go": True})
        assert (finished.status, finished.result) == ("success", 5)
        assert calls_of("mig-loop") == ["tick:2", "tick:3", "tick:4"]
        # Iterations 1 and 2 were stored: the count goes on at 3, it does not restart.
        assert [c for c in CALLS if c.startswith("loop-until")] == [
            "loop-until:3:3",
            "loop-until:4:4",
            "loop-until:5:5",
        ]

        pending = await engine.get_run("mig-pending")
        started = await pending.start(10)
        assert (started.status, started.result) == (
            "success",
            {"total": 21, "approved_by": "nobody"},
        )
        assert calls_of("mig-pending") == ["first", "second"]

        canceled = await engine.get_run("mig-canceled")
        with pytest.raises(trioflow.RunStateError, match="a canceled run cannot be resumed"):
            await canceled.resume("second", {"who": "ada"})

    CALLS.clear()
    async with trioflow.open_engine(
        storage=new_storage(), workflows=WORKFLOWS, **OPTIONS
    ) as engine:
        # The interrupted runs are taken over at once: their leases were dropped.
        waiting = await engine.get_run("mig-waiting")
        with trio.fail_after(10):
            while True:
                try:
                    await waiting.send_event("paid", {"amount": 12})
                    break
                except trioflow.RunStateError:  # not taken over by this engine yet
                    await trio.sleep(0.02)
                    waiting = await engine.get_run("mig-waiting")
            paid = await waiting.result()
            items = await (await engine.get_run("mig-foreach")).result()
        assert (paid.status, paid.result) == ("success", "paid 12")
        assert paid.steps["first"].output == {"n": 7, "doubled": 14}
        assert calls_of("mig-waiting") == ["receipt"]
        assert (items.status, items.result) == ("success", [0, 1, 4, 9])
        assert calls_of("mig-foreach") == ["square:2", "square:3"]  # 0 and 1 were done

    CALLS.clear()
    async with trioflow.open_engine(
        storage=new_storage(), workflows=WORKFLOWS, **OPTIONS
    ) as engine:
        listed = {s.run_id: (s.status, s.version) for s in await engine.list_runs()}
        assert listed == {run_id: (status, "m1") for run_id, status in ENDED.items()}
        done = await (await engine.get_run("mig-success")).result()
        assert done.steps["first"].output == {"n": 3, "doubled": 6}
    assert CALLS == []


# ---- SQLite --------------------------------------------------------------------------


def sqlite_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    finally:
        conn.close()
    return int(version)


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_a_schema_3_sqlite_database_is_upgraded_in_place_and_keeps_every_run(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    shutil.copyfile(DATA / "schema3.db", path)
    assert sqlite_version(path) == 3
    await check_upgrade(lambda: trioflow.SQLiteStorage(path))
    # Upgraded once, by the first engine; the next two found it current.
    assert sqlite_version(path) == _sqlite.SCHEMA_VERSION


async def test_a_sqlite_database_of_a_newer_schema_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.db"
    shutil.copyfile(DATA / "schema3.db", path)
    newer = _sqlite.SCHEMA_VERSION + 1
    conn = sqlite3.connect(path)
    try:
        conn.execute(f"PRAGMA user_version = {newer}")
        conn.commit()
    finally:
        conn.close()
    before = path.read_bytes()
    with pytest.raises(trioflow.StorageError) as caught:
        async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=WORKFLOWS):
            pass  # pragma: no cover
    message = str(caught.value)
    assert f"schema version {newer}" in message
    assert f"knows up to {_sqlite.SCHEMA_VERSION}" in message
    assert "upgrade trioflow" in message
    assert path.read_bytes() == before
    assert files(tmp_path) == ["runs.db"]  # no -wal, no -shm


# ---- PostgreSQL ----------------------------------------------------------------------


def load_dump(server: PostgresServer, dump: Path) -> str:
    """A new database of `server` holding `dump`; its DSN."""
    import psycopg

    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = f"host=127.0.0.1 port={server.port} user=postgres dbname={name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(dump.read_text())  # type: ignore[call-overload]
    return dsn


@pytest.mark.slow
async def test_a_schema_2_postgres_database_is_upgraded_in_place_and_keeps_every_run(
    postgres_server: PostgresServer,
) -> None:
    dsn = await trio.to_thread.run_sync(load_dump, postgres_server, DATA / "schema2_pg.sql")

    def schema_version() -> str:
        import psycopg

        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT value FROM trioflow_meta WHERE key = 'schema_version'"
            ).fetchone()
        assert row is not None
        return str(row[0])

    assert await trio.to_thread.run_sync(schema_version) == "2"
    await check_upgrade(lambda: trioflow.PostgresStorage(dsn))
    assert await trio.to_thread.run_sync(schema_version) == str(_postgres.SCHEMA_VERSION)
