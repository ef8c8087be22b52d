"""Schedules: a run per fire time, once across every engine sharing the storage, at the
times cron gives in the schedule's timezone, on trioflow's wall clock (tied to MockClock
here, so a test jumps a week and sees every fire at its exact virtual time)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

import trioflow
from trioflow._schedules import CATCH_UP_LIMIT, fire_run_id
from trioflow.testing import tie_wall_clock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faulty_storage import FaultyStorage

EPOCH = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # virtual time 0 under trioflow_clock
T0 = EPOCH.timestamp()

# (run id, virtual time) of every step execution, per test.
started: list[tuple[str, float]] = []


@trioflow.step(id="tick")
async def _tick(ctx: trioflow.StepContext[Any]) -> Any:
    started.append((ctx.run_id, trio.current_time()))
    return ctx.input_data


tick = trioflow.create_workflow(id="tick").then(_tick).commit()


# The engine's maintenance ticks every poll interval of virtual time: a week of the
# default 0.02 s would be 30 million ticks. Schedules do not depend on it.
SLOW_TICKS: dict[str, Any] = {"poll_interval": 10.0, "lease_seconds": 60.0}


@pytest.fixture(autouse=True)
def _fresh_log() -> None:
    started.clear()


def iso(seconds_after_epoch: float, epoch: dt.datetime = EPOCH) -> str:
    at = epoch + dt.timedelta(seconds=seconds_after_epoch)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_week_of_every_five_minutes_fires_at_exactly_the_expected_virtual_times(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    schedule = trioflow.Schedule("five", workflow=tick, cron="*/5 * * * *", input_data={"n": 1})
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[tick], schedules=[schedule], **SLOW_TICKS
    ) as engine:
        await trio.sleep(7 * 24 * 3600 + 1)
        runs = await engine.list_runs(limit=10_000)
    expected = [300 * k for k in range(1, 7 * 24 * 12 + 1)]
    assert [at for _, at in started] == expected
    assert [run_id for run_id, _ in started] == [f"five@{iso(t)}" for t in expected]
    assert started[0][0] == "five@2030-01-01T00:05:00Z"
    assert len(runs) == len(expected)
    assert {run.status for run in runs} == {"success"}
    assert {run.created_at - T0 for run in runs} == set(expected)


async def test_fire_times_follow_daylight_saving_changes_in_berlin(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Hourly across the autumn change: local 02:00 happens twice (two runs, an hour
    apart in UTC), while a daily 02:30 fires once. Daily at 02:30 across the spring
    change, when 02:30 does not exist: cron's rule, the run starts at 03:00 local time
    (01:00 UTC)."""
    epoch = dt.datetime(2030, 10, 26, 22, 0, tzinfo=dt.UTC)  # 00:00 CEST on 27 October
    hourly = trioflow.Schedule("hourly", workflow=tick, cron="0 * * * *", timezone="Europe/Berlin")
    fixed = trioflow.Schedule("fixed", workflow=tick, cron="30 2 * * *", timezone="Europe/Berlin")
    with tie_wall_clock(epoch):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(),
            workflows=[tick],
            schedules=[hourly, fixed],
            **SLOW_TICKS,
        ):
            await trio.sleep(5 * 3600 + 1)
    # A fixed time in the repeated hour fires once (at its first 02:30, CEST).
    assert [run_id for run_id, _ in started if run_id.startswith("fixed")] == [
        "fixed@2030-10-27T00:30:00Z"
    ]
    started[:] = [(run_id, at) for run_id, at in started if run_id.startswith("hourly")]
    assert [run_id for run_id, _ in started] == [
        "hourly@2030-10-26T23:00:00Z",  # 01:00 CEST
        "hourly@2030-10-27T00:00:00Z",  # 02:00 CEST
        "hourly@2030-10-27T01:00:00Z",  # 02:00 CET (clocks went back)
        "hourly@2030-10-27T02:00:00Z",  # 03:00 CET
        "hourly@2030-10-27T03:00:00Z",  # 04:00 CET
    ]
    assert [at for _, at in started] == [3600 * k for k in range(1, 6)]

    started.clear()
    # 00:00 CET on 30 March, now (virtual time went on above).
    epoch = dt.datetime(2030, 3, 29, 23, 0, tzinfo=dt.UTC) - dt.timedelta(
        seconds=trio.current_time()
    )
    nightly = trioflow.Schedule(
        "nightly", workflow=tick, cron="30 2 * * *", timezone="Europe/Berlin"
    )
    with tie_wall_clock(epoch):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=[tick], schedules=[nightly], **SLOW_TICKS
        ):
            await trio.sleep(3 * 24 * 3600)
    assert [run_id for run_id, _ in started] == [
        "nightly@2030-03-30T01:30:00Z",  # 02:30 CET
        "nightly@2030-03-31T01:00:00Z",  # 02:30 CEST does not exist: 03:00 CEST
        "nightly@2030-04-01T00:30:00Z",  # 02:30 CEST
    ]


@pytest.mark.parametrize(
    ("catch_up", "made_up"),
    [("none", []), ("latest", [6]), ("all", [2, 3, 4, 5, 6])],
)
async def test_catch_up_after_the_engine_was_closed(
    trioflow_clock: trio.testing.MockClock, tmp_path: Path, catch_up: str, made_up: list[int]
) -> None:
    path = tmp_path / "runs.db"

    def hourly() -> trioflow.Schedule:
        return trioflow.Schedule("hourly", workflow=tick, cron="0 * * * *", catch_up=catch_up)  # type: ignore[arg-type]

    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[tick], schedules=[hourly()], **SLOW_TICKS
    ):
        await trio.sleep(1.5 * 3600)  # fires at 01:00
    await trio.sleep(5 * 3600)  # closed from 01:30 to 06:30: 02:00 ... 06:00 missed
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[tick], schedules=[hourly()], **SLOW_TICKS
    ):
        await trio.sleep(1)
        reopened = [run_id for run_id, _ in started[1:]]
        assert reopened == [f"hourly@{iso(h * 3600)}" for h in made_up]
        assert all(at == 6.5 * 3600 for _, at in started[1:])  # made up at once
        await trio.sleep(3600)  # then on time again
    assert started[0] == (f"hourly@{iso(3600)}", 3600)
    assert started[-1] == (f"hourly@{iso(7 * 3600)}", 7 * 3600)
    assert len(started) == 1 + len(made_up) + 1


async def test_catch_up_all_is_bounded(trioflow_clock: trio.testing.MockClock) -> None:
    storage = trioflow.MemoryStorage()
    every_minute = trioflow.Schedule("m", workflow=tick, cron="* * * * *", catch_up="all")
    async with trioflow.open_engine(
        storage=storage, workflows=[tick], schedules=[every_minute], **SLOW_TICKS
    ):
        pass
    await trio.sleep(24 * 3600)  # a day of minutes missed
    async with trioflow.open_engine(
        storage=storage, workflows=[tick], schedules=[every_minute], **SLOW_TICKS
    ):
        await trio.lowlevel.checkpoint()
    # The latest CATCH_UP_LIMIT minutes (they run at once, in no particular order).
    latest = {f"m@{iso(24 * 3600 - 60 * i)}" for i in range(CATCH_UP_LIMIT)}
    assert len(started) == CATCH_UP_LIMIT
    assert {run_id for run_id, _ in started} == latest


async def test_pause_stops_fires_everywhere_and_resume_does_not_make_them_up(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    storage = trioflow.MemoryStorage()
    schedule = trioflow.Schedule("q", workflow=tick, cron="*/15 * * * *")
    async with (
        trioflow.open_engine(
            storage=storage, workflows=[tick], schedules=[schedule], **SLOW_TICKS
        ) as one,
        trioflow.open_engine(storage=storage, workflows=[tick], schedules=[schedule], **SLOW_TICKS),
    ):
        await trio.sleep(15 * 60 + 1)  # 00:15 fires (once, for two engines)
        state = await one.pause_schedule("q")
        assert state.paused
        await trio.sleep(60 * 60)  # 00:30 ... 01:15 do not fire
        await one.resume_schedule("q")
        await trio.sleep(15 * 60)  # 01:30 fires
    assert started == [(f"q@{iso(900)}", 900), (f"q@{iso(5400)}", 5400)]


async def test_trigger_fires_now_and_pausing_never_cancels_a_run(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    @trioflow.step(id="slow")
    async def slow(ctx: trioflow.StepContext[Any]) -> str:
        await release.wait()
        return "done"

    slow_wf = trioflow.create_workflow(id="slow").then(slow).commit()
    schedule = trioflow.Schedule("daily", workflow=slow_wf, cron="0 0 * * *")
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=[slow_wf], schedules=[schedule], **SLOW_TICKS
    ) as engine:
        await trio.sleep(10)
        run = await engine.trigger_schedule("daily")
        assert run.run_id == f"daily@{iso(10)}"
        await trio.sleep(1)
        await engine.pause_schedule("daily")
        await trio.sleep(1)
        assert (await engine.get_run(run.run_id)).status == "running"
        release.set()
        assert (await run.result()).status == "success"
        with pytest.raises(LookupError, match="no schedule 'nope' is stored"):
            await engine.pause_schedule("nope")
        with pytest.raises(LookupError, match="this engine has no schedule 'nope'"):
            await engine.trigger_schedule("nope")


def test_bad_schedules_are_refused_with_what_to_fix() -> None:
    with pytest.raises(ValueError, match=r"not a cron expression .*e\.g\. '\*/5"):
        trioflow.Schedule("x", workflow=tick, cron="61 * * * *")
    with pytest.raises(ValueError, match="not a known IANA timezone"):
        trioflow.Schedule("x", workflow=tick, cron="* * * * *", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="give 'none', 'latest' or 'all'"):
        trioflow.Schedule("x", workflow=tick, cron="* * * * *", catch_up="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="without '@'"):
        trioflow.Schedule("a@b", workflow=tick, cron="* * * * *")


async def test_a_schedule_of_an_unknown_workflow_or_twice_the_same_id_is_refused() -> None:
    other = trioflow.create_workflow(id="other").then(_tick).commit()
    schedule = trioflow.Schedule("s", workflow=other, cron="* * * * *")
    with pytest.raises(LookupError, match="starts workflow 'other', which is not in"):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=[tick], schedules=[schedule]
        ):
            pass
    with pytest.raises(ValueError, match="two schedules have the id 's'"):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=[other], schedules=[schedule, schedule]
        ):
            pass


def test_fire_run_ids_are_iso_8601_utc() -> None:
    at = dt.datetime(2030, 3, 31, 1, 0, tzinfo=dt.UTC).timestamp()
    assert fire_run_id("nightly", at) == "nightly@2030-03-31T01:00:00Z"
    assert fire_run_id("fast", at + 0.5) == "fast@2030-03-31T01:00:00.500000Z"


ENGINE_APP = """
import sys, time, trio, trioflow

@trioflow.step(id="note")
async def note(ctx):
    with open(sys.argv[2], "a") as log:
        log.write(ctx.run_id + "\\n")
    return None

wf = trioflow.create_workflow(id="note").then(note).commit()
every_second = trioflow.Schedule("sec", workflow=wf, cron="* * * * * *")

async def main():
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(sys.argv[1]), workflows=[wf], schedules=[every_second]
    ):
        print("ready", flush=True)
        await trio.sleep(float(sys.argv[3]))

trio.run(main)
"""


def _start_engine(app: Path, db: Path, log: Path, *, seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(app), str(db), str(log), str(seconds)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().split()


@pytest.mark.slow
@pytest.mark.timeout(60)
async def test_two_engine_processes_on_one_file_fire_each_time_once(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(ENGINE_APP)
    db, log = tmp_path / "runs.db", tmp_path / "log.txt"
    # Create the schema first, so the two processes do not both create it.
    async with trioflow.SQLiteStorage(db):
        pass
    began = time.time()
    procs = [_start_engine(app, db, log, seconds=4) for _ in range(2)]
    try:
        for proc in procs:
            assert await trio.to_thread.run_sync(proc.wait, 50) == 0
    finally:
        for proc in procs:
            proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
    ended = time.time()
    executed = Counter(_lines(log))
    assert executed, "no fire at all"
    assert set(executed.values()) == {1}, f"fired twice: {executed}"
    # Every second between the first and the last fire fired (none skipped).
    seconds = sorted(
        dt.datetime.strptime(run_id.split("@")[1], "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=dt.UTC)
        .timestamp()
        for run_id in executed
    )
    assert seconds == [seconds[0] + k for k in range(len(seconds))]
    assert began - 1 <= seconds[0] and seconds[-1] <= ended
    assert len(seconds) >= 2


@pytest.mark.slow
async def test_two_engines_on_postgres_fire_each_time_once(postgres_dsn: str) -> None:
    """Real time, every second for about 3 s, two engines with their own connections:
    each fire time makes one run, none is skipped; pausing is seen by both."""
    every_second = trioflow.Schedule("sec", workflow=tick, cron="* * * * * *")
    began = time.time()
    async with (
        trioflow.open_engine(
            storage=trioflow.PostgresStorage(postgres_dsn),
            workflows=[tick],
            schedules=[every_second],
        ) as one,
        trioflow.open_engine(
            storage=trioflow.PostgresStorage(postgres_dsn),
            workflows=[tick],
            schedules=[every_second],
        ),
    ):
        await trio.sleep(3.2)
        await one.pause_schedule("sec")
        paused_at = time.time()
        await trio.sleep(1.5)
        states = await one.storage.list_schedules()
    executed = Counter(run_id for run_id, _ in started)
    assert set(executed.values()) == {1}, f"fired twice: {executed}"
    seconds = sorted(
        dt.datetime.strptime(run_id.split("@")[1], "%Y-%m-%dT%H:%M:%SZ")
        .replace(tzinfo=dt.UTC)
        .timestamp()
        for run_id in executed
    )
    assert len(seconds) >= 2
    assert seconds == [seconds[0] + k for k in range(len(seconds))]
    assert began - 1 <= seconds[0] and seconds[-1] <= paused_at + 0.5
    assert [(s.schedule_id, s.paused) for s in states] == [("sec", True)]


async def test_a_worker_engine_takes_its_fires_from_the_default_queue(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    every_minute = trioflow.Schedule("m", workflow=tick, cron="* * * * *", input_data=7)
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(),
        workflows=[tick],
        schedules=[every_minute],
        workers=2,
        poll_interval=0.5,
    ) as engine:
        await trio.sleep(3 * 60 + 1)
        place = await engine.queue_place(f"m@{iso(60)}")
        result = await (await engine.get_run(f"m@{iso(120)}")).result()
    assert [run_id for run_id, _ in started] == [f"m@{iso(60 * k)}" for k in (1, 2, 3)]
    # Taken at the worker's next poll after the fire time.
    assert all(60 * k <= at <= 60 * k + 0.5 for k, (_, at) in enumerate(started, 1))
    assert place is not None and (place.queue, place.state) == ("default", "done")
    assert result.result == 7


async def test_input_data_that_does_not_fit_the_workflow_is_refused_at_open() -> None:
    typed = trioflow.create_workflow(id="typed", input_schema=int).then(_tick).commit()
    bad = trioflow.Schedule("bad", workflow=typed, cron="* * * * *", input_data="seven")
    with pytest.raises(trioflow.ValidationError, match="input_data of schedule 'bad'"):
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=[typed], schedules=[bad]
        ):
            pass


async def test_a_fire_that_fails_is_logged_and_the_next_fires_go_on(
    trioflow_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FaultyStorage(trioflow.MemoryStorage())
    every_minute = trioflow.Schedule("m", workflow=tick, cron="* * * * *")
    async with trioflow.open_engine(
        storage=storage, workflows=[tick], schedules=[every_minute], poll_interval=1.0
    ):
        storage.fail("insert_queued", times=3)  # the first fire, tried 3 times
        await trio.sleep(3 * 60 + 1)
    assert [run_id for run_id, _ in started] == [f"m@{iso(120)}", f"m@{iso(180)}"]
    assert f"gave up firing m@{iso(60)}; it is lost" in caplog.text
