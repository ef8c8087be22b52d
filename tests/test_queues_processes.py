"""Queue limits hold across processes: 4 worker processes on PostgreSQL (one SIGKILLed
midway) and 2 engine processes on one SQLite file. The steps record when they start
and end in a side table (tests/queue_app.py); from it, the largest number of a queue's
runs executing at once never exceeds its concurrency, nor its per-key limit per key;
the stored start times keep the rate limit in every rolling window; priorities order
the starts; every run ends exactly once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

import trioflow

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_server import PostgresServer, StorageFactory
from queue_app import QUEUES, SIDE_SCHEMA, intervals, most_at_once, read_marks, work

APP = Path(__file__).resolve().parent / "queue_app.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Proc:
    """A process of tests/queue_app.py: an engine serving the queues."""

    def __init__(self, url: str, side: Path, **options: Any) -> None:
        argv = [sys.executable, str(APP), "--storage", url]
        for name, value in options.items():
            argv += [f"--{name}", str(value)]
        env = {**os.environ, "QUEUE_APP_SIDE": str(side)}
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        self.owner = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def said(self, start: str) -> str:
        assert self.proc.stdout is not None
        with trio.fail_after(30):
            line = await trio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        assert line.startswith(start), f"engine said {line!r} (exit {self.proc.poll()})"
        return line

    async def ready(self) -> None:
        line = await self.said("ready ")
        self.owner = line.split()[1]

    def kill(self) -> float:
        self.proc.kill()
        self.proc.wait()
        return time.time()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


async def start_together(procs: list[Proc], n: int, url: str, side: Path, **options: Any) -> None:
    """Start `n` engine processes into `procs`; their engines open only once all have
    booted, since one that started while another still boots could take all the work
    (and the tests check that each process took some)."""
    go = side.with_name("go")
    procs += [Proc(url, side, go=go, **options) for _ in range(n)]
    for proc in procs:
        await proc.said("waiting")
    go.touch()
    for proc in procs:
        await proc.ready()


def _side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The side table's file. This process's engine records there too: it may recover
    a run of a killed worker and execute it here."""
    side = tmp_path / "side.db"
    monkeypatch.setenv("QUEUE_APP_SIDE", str(side))
    with sqlite3.connect(side) as conn:
        conn.execute(SIDE_SCHEMA)
    conn.close()
    return side


def _started_at(factory: StorageFactory, queue: str) -> list[float]:
    """The stored start times (claims) of a queue's runs: what its rate limit counts."""
    if factory.kind == "sqlite":
        with sqlite3.connect(factory.url.removeprefix("sqlite:")) as conn:
            rows = conn.execute(
                "SELECT started_at FROM trioflow_queued WHERE queue = ? ORDER BY started_at",
                (queue,),
            ).fetchall()
        conn.close()
    else:
        import psycopg

        with psycopg.connect(factory.url) as pg:
            rows = pg.execute(
                "SELECT started_at FROM trioflow_queued WHERE queue = %s ORDER BY started_at",
                (queue,),
            ).fetchall()
    return [at for (at,) in rows]


def _most_per_window(times: list[float], per: float) -> int:
    return max((sum(1 for t in times if first <= t < first + per) for first in times), default=0)


async def _wait_all_ended(engine: trioflow.Engine, runs: list[trioflow.Run]) -> list[str]:
    with trio.fail_after(90):
        return [(await run.result()).status for run in runs]


async def _enqueue_load(engine: trioflow.Engine) -> tuple[list[trioflow.Run], list[trioflow.Run]]:
    """18 runs of the limited queue (key 'a' first, so the per-key limit binds), and
    10 trivial runs of the rate-limited queue."""
    limited = [
        await engine.enqueue(work, {"key": key, "sleep": 0.15}, queue="limited", key=key)
        for key in ["a"] * 8 + ["b"] * 5 + ["c"] * 5
    ]
    rated = [await engine.enqueue(work, {"n": n}, queue="rated") for n in range(10)]
    return limited, rated


def _check_limits(side: Path, factory: StorageFactory, killed: dict[int, float]) -> None:
    spans = intervals(read_marks(side), killed=killed)
    limited_keys = {"a", "b", "c"}
    limited_spans = [span for span in spans if span[2] in limited_keys]
    assert 2 <= most_at_once(limited_spans) <= 3  # concurrency=3 (and it was used)
    assert all(most_at_once(limited_spans, key) <= 2 for key in limited_keys)  # per key 2
    assert _most_per_window(_started_at(factory, "rated"), 1.0) <= 4  # 4 per second


async def test_four_workers_on_postgres_keep_the_limits_with_one_killed_midway(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = StorageFactory("postgres", postgres_server.new_schema_dsn())
    side = _side(tmp_path, monkeypatch)
    procs: list[Proc] = []
    try:
        async with trioflow.open_engine(
            storage=factory(), workflows=[work], queues=QUEUES, lease_seconds=2.0
        ) as engine:
            limited, rated = await _enqueue_load(engine)
            await start_together(procs, 4, factory.url, side, workers=4, lease=1.0)
            victim = procs[0]
            # Kill the victim while it executes a run of the limited queue.
            with trio.fail_after(60):
                while True:
                    marks = read_marks(side)
                    mine = Counter(m[0] for m in marks if m[3] == victim.pid and m[2])
                    if mine["start"] > mine["end"]:
                        break
                    await trio.sleep(0.01)
            killed_at = victim.kill()
            statuses = await _wait_all_ended(engine, limited + rated)
        assert statuses == ["success"] * len(limited + rated)
        _check_limits(side, factory, {victim.pid: killed_at})
        ends = Counter(m[1] for m in read_marks(side) if m[0] == "end")
        assert set(ends) == {run.run_id for run in limited + rated}  # every run ended
        # Exactly once: only a run the victim was executing when it died started again.
        started = Counter(m[1] for m in read_marks(side) if m[0] == "start")
        again = {run_id for run_id, n in started.items() if n > 1}
        victims = {m[1] for m in read_marks(side) if m[3] == victim.pid}
        assert again <= victims
        assert all(n == 1 for n in ends.values())
    finally:
        for proc in procs:
            proc.stop()


async def test_priorities_order_the_starts_across_four_workers_on_postgres(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = StorageFactory("postgres", postgres_server.new_schema_dsn())
    side = _side(tmp_path, monkeypatch)
    procs: list[Proc] = []
    try:
        async with trioflow.open_engine(
            storage=factory(), workflows=[work], queues=QUEUES
        ) as engine:
            order = [(0, "p0-1"), (2, "p2-1"), (1, "p1-1"), (2, "p2-2"), (0, "p0-2"), (1, "p1-2")]
            runs = [
                await engine.enqueue(work, {}, queue="serial", priority=p, run_id=run_id)
                for p, run_id in order
            ]
            place = await engine.queue_place("p0-2")
            assert place is not None and (place.state, place.position) == ("waiting", 6)
            stats = {q.name: q for q in await engine.storage.queue_stats(time.time())}
            assert (stats["serial"].waiting, stats["serial"].executing) == (6, 0)
            assert stats["serial"].limits == trioflow.Queue("serial", concurrency=1).limits()
            procs = [Proc(factory.url, side, workers=2) for _ in range(4)]
            for proc in procs:
                await proc.ready()
            assert await _wait_all_ended(engine, runs) == ["success"] * 6
        starts = [m[1] for m in read_marks(side) if m[0] == "start"]
        assert starts == ["p2-1", "p2-2", "p1-1", "p1-2", "p0-1", "p0-2"]
        assert most_at_once(intervals(read_marks(side), killed={})) == 1
    finally:
        for proc in procs:
            proc.stop()


async def test_two_engine_processes_on_one_sqlite_file_keep_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = StorageFactory("sqlite", f"sqlite:{tmp_path / 'runs.db'}")
    side = _side(tmp_path, monkeypatch)
    procs: list[Proc] = []
    try:
        async with trioflow.open_engine(
            storage=factory(), workflows=[work], queues=QUEUES
        ) as engine:
            serial = [
                await engine.enqueue(work, {}, queue="serial", priority=p, run_id=f"s{i}")
                for i, p in enumerate([0, 3, 1, 3])
            ]
            limited, rated = await _enqueue_load(engine)
            await start_together(procs, 2, factory.url, side, workers=4)
            statuses = await _wait_all_ended(engine, serial + limited + rated)
        assert statuses == ["success"] * len(statuses)
        _check_limits(side, factory, {})
        marks = read_marks(side)
        assert [m[1] for m in marks if m[0] == "start" and m[1].startswith("s")] == [
            "s1",
            "s3",
            "s2",
            "s0",
        ]
        starts = Counter(m[1] for m in marks if m[0] == "start")
        assert all(n == 1 for n in starts.values())
        assert {m[3] for m in marks} == {proc.pid for proc in procs}  # both took runs (only)
    finally:
        for proc in procs:
            proc.stop()
