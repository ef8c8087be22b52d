"""Real processes (issue 5): a run killed with SIGKILL at several points and recovered,
cross-process cancel of a running, a suspended and a waiting run, engines racing to
recover one run, and a process shut down from outside.

The program under test is tests/durable_app.py (see its docstring for the kill points).
Its steps log every start with their process id, so each test counts which step ran how
many times and where. Engines use a 0.5 s lease, so a dead process's runs are taken
over within about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import durable_app
import pytest
import trio

import trioflow
from trioflow import _journal, _snapshot

pytestmark = pytest.mark.slow

APP = Path(__file__).with_name("durable_app.py")
CANCELED = trioflow.CancelResult(message="Workflow run canceled", status="canceled")


class App:
    """durable_app.py running in a subprocess."""

    def __init__(self, process: trio.Process, stderr: Path) -> None:
        self.process = process
        self.stderr_path = stderr
        self._buffer = b""

    @property
    def pid(self) -> int:
        return self.process.pid

    async def line(self) -> str:
        """The next line the program prints."""
        assert self.process.stdout is not None
        with trio.fail_after(10):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some()
                if not chunk:
                    raise EOFError(f"the app exited; stderr:\n{self.stderr()}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    async def finish(self) -> tuple[int, list[str]]:
        """Its exit status and what it printed from now on."""
        assert self.process.stdout is not None
        with trio.fail_after(10):
            while chunk := await self.process.stdout.receive_some():
                self._buffer += chunk
            code = await self.process.wait()
        return code, self._buffer.decode().splitlines()

    def stderr(self) -> str:
        return self.stderr_path.read_text()


class Place:
    """The database file and the execution log shared by the test and its apps."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.db = tmp_path / "runs.db"
        self.log = tmp_path / "steps.log"
        self.apps: list[App] = []

    async def spawn(self, *args: str) -> App:
        stderr = self.tmp_path / f"stderr-{len(self.apps)}.txt"
        with open(stderr, "wb") as err:  # noqa: ASYNC230 (a local file, at once)
            process = await trio.lowlevel.open_process(
                [sys.executable, str(APP), str(self.db), str(self.log), *args],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        app = App(process, stderr)
        self.apps.append(app)
        return app

    def lines(self) -> list[tuple[str, str, int]]:
        """(what, step, pid) for each line of the log."""
        if not self.log.exists():
            return []
        return [
            (what, step, int(pid))
            for what, step, pid in (line.split() for line in self.log.read_text().splitlines())
        ]

    def starts(self) -> Counter[str]:
        return Counter(step for what, step, _ in self.lines() if what == "start")

    def who(self, step: str) -> list[int]:
        """The processes that started `step`, in order."""
        return [pid for what, s, pid in self.lines() if what == "start" and s == step]

    async def wait_logged(self, what: str, step: str) -> None:
        with trio.fail_after(10):
            while not any(w == what and s == step for w, s, _ in self.lines()):  # noqa: ASYNC110
                await trio.sleep(0.005)

    async def wait_stored(self, step: str, status: str, run_id: str = "r1") -> None:
        """Poll the stored run (another process writes it) until `step` is `status`."""
        with trio.fail_after(10):
            while True:
                record = _journal.of_row(await self.row(run_id)).steps.get(step)
                if record is not None and record.status == status:
                    return
                await trio.sleep(0.005)

    def engine(self) -> Any:
        return durable_app.engine(str(self.db), durable_app.make_workflows(self.log))

    async def row(self, run_id: str = "r1") -> trioflow.storage.RunRow:
        async with trioflow.SQLiteStorage(self.db) as storage:
            return await storage.load(run_id)

    async def recover(self, run_id: str = "r1") -> trioflow.RunResult:
        """Open an engine here and wait for the run (taken over once its lease expired)."""
        async with self.engine() as eng:
            with trio.fail_after(10):
                return await (await eng.get_run(run_id)).result()


@pytest.fixture
def place(tmp_path: Path) -> Iterator[Place]:
    place = Place(tmp_path)
    yield place
    for app in place.apps:
        if app.process.returncode is None:
            app.process.kill()


async def killed(place: Place, *args: str) -> _snapshot.Snapshot:
    """Run the app until it kills itself; the run's snapshot as it was left."""
    app = await place.spawn(*args)
    code, out = await app.finish()
    assert code == -signal.SIGKILL, (code, out, app.stderr())
    assert not any(line.startswith("result") for line in out)
    row = await place.row()
    return _journal.of_row(row)


def recorded(snapshot: _snapshot.Snapshot) -> dict[str, _snapshot.StepRecord]:
    return {path: r for path, r in snapshot.steps.items() if r.status == "success"}


# -- SIGKILL, then recovery -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kill", "left", "runs"),
    [
        # inside s2: its completion was never recorded, so it runs again
        ("in-step:s2", ["s1"], {"s1": 1, "s2": 2, "s3": 1}),
        # between steps: right after the write with s1's end and s2's start (the 2nd,
        # after the start) or s2's end and s3's start (3rd)
        ("after-save:2", ["s1"], {"s1": 1, "s2": 1, "s3": 1}),
        ("after-save:3", ["s1", "s2"], {"s1": 1, "s2": 1, "s3": 1}),
        # during the write that records s2: it never commits, s2 runs again
        ("in-save:3", ["s1"], {"s1": 1, "s2": 2, "s3": 1}),
        # during the final write, which holds s3's end: s3 runs again, as s2 does above
        ("in-save:4", ["s1", "s2"], {"s1": 1, "s2": 1, "s3": 2}),
    ],
)
async def test_killed_then_recovered(
    place: Place, kill: str, left: list[str], runs: dict[str, int]
) -> None:
    snapshot = await killed(place, "start", "three", "r1", '"x"', "--kill", kill)
    assert snapshot.status == "running"
    before = recorded(snapshot)
    assert list(before) == left
    row = await place.row()
    assert row.owner is not None and row.lease_until is not None  # the dead process's lease
    dead = place.who("s1")

    result = await place.recover()
    assert (result.status, result.result) == ("success", "x+s1+s2+s3")
    assert place.starts() == runs
    # Nothing recorded is lost: the records from before the crash are kept as they were.
    after = _journal.of_row(await place.row())
    assert {path: after.steps[path] for path in before} == before
    assert place.who("s1") == dead  # completed before the crash: never again
    row = await place.row()
    assert (row.status, row.owner, row.lease_until) == ("success", None, None)


async def test_killed_before_its_first_write_stays_pending(place: Place) -> None:
    """Killed during the write that takes the run from 'pending' to 'running': its input
    was never stored, so no engine can recover it; it is still 'pending' (nothing ran)
    and starts normally once the dead process's lease has expired."""
    snapshot = await killed(place, "start", "three", "r1", '"x"', "--kill", "in-save:1")
    assert snapshot.status == "pending"
    assert place.starts() == {}
    async with place.engine() as eng:
        run = await eng.get_run("r1")
        await trio.sleep(durable_app.LEASE)
        result = await run.start("y")
    assert (result.status, result.result) == ("success", "y+s1+s2+s3")
    assert place.starts() == {"s1": 1, "s2": 1, "s3": 1}


async def test_killed_in_a_loop_iteration(place: Place) -> None:
    snapshot = await killed(place, "start", "loop", "r1", '{"n": 0}', "--kill", "in-step:tick:3")
    assert snapshot.progress["tick"] == [2, {"n": 2, "until": 5}, False]
    result = await place.recover()
    assert (result.status, result.result) == ("success", durable_app.Count(n=5))
    assert place.starts() == {"tick": 6}  # iterations 1, 2, 4, 5 once; 3 twice
    assert len(set(place.who("tick"))) == 2


async def test_killed_in_a_foreach_item(place: Place) -> None:
    snapshot = await killed(
        place, "start", "batch", "r1", "[1, 2, 3, 4]", "--kill", "in-step:item-3"
    )
    assert snapshot.progress["item"] == {"0": {"value": 1}, "1": {"value": 4}}
    result = await place.recover()
    assert (result.status, result.result) == ("success", 1 + 4 + 9 + 16)
    assert place.starts() == {"item-1": 1, "item-2": 1, "item-3": 2, "item-4": 1, "sum": 1}
    assert result.steps["item"].output == [durable_app.Square(value=v) for v in (1, 4, 9, 16)]


async def test_killed_while_sleeping(place: Place) -> None:
    """A run killed while it sleeps ('waiting') is recovered and sleeps what is left."""
    # Writes: 1 start, 2 after s1, 3 entering the sleep ('waiting').
    snapshot = await killed(
        place, "start", "sleepy", "r1", '{"nap": 2.0}', "--kill", "after-save:3"
    )
    assert snapshot.status == "waiting"
    assert snapshot.steps["nap"].status == "waiting"
    result = await place.recover()
    assert result.status == "success"
    assert place.starts() == {"s1": 1, "s2": 1}
    slept = result.steps["nap"].ended_at - result.steps["s1"].ended_at  # type: ignore[operator]
    assert 1.95 <= slept < 2.6  # not 2 s again after the recovery (which took ~0.6 s)


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05])
async def test_killed_at_an_arbitrary_moment(place: Place, delay: float) -> None:
    """Killed from outside at some moment of a loop of 1,000 iterations (a snapshot
    write each): the recovered run repeats at most the one iteration under way."""
    app = await place.spawn("start", "loop", "r1", '{"n": 0, "until": 1000}')
    assert await app.line() == "ready"
    await trio.sleep(delay)
    app.process.kill()
    code, _ = await app.finish()
    assert code == -signal.SIGKILL
    if (await place.row()).status == "pending":  # killed before its first write
        assert place.starts() == {}
        async with place.engine() as eng:
            run = await eng.get_run("r1")
            await trio.sleep(durable_app.LEASE)
            await run.start({"n": 0, "until": 1000})
    result = await place.recover()
    assert (result.status, result.result) == ("success", durable_app.Count(n=1000, until=1000))
    assert 1000 <= place.starts()["tick"] <= 1001


# -- cross-process cancel -------------------------------------------------------------------


async def test_cross_process_cancel_of_a_running_run(place: Place) -> None:
    app = await place.spawn("start", "blocking", "r1", '"x"', "--block")
    assert await app.line() == "ready"
    await place.wait_logged("start", "block")
    async with place.engine() as eng:
        run = await eng.get_run("r1")
        assert run.status == "running"
        with trio.fail_after(2):
            assert await run.cancel("stop it") == CANCELED
        # cancel() returned once the executing process had stored the run 'canceled'...
        assert (await place.row()).status == "canceled"
        # ... after the step's abort listener ran there.
        assert ("abort", "block", app.pid) in place.lines()
        steps = run.result_nowait().steps
        assert {p: r.status for p, r in steps.items()} == {"s1": "success", "block": "canceled"}
        assert await run.cancel() == CANCELED
    code, out = await app.finish()
    assert (code, out) == (0, ["result canceled null"])
    assert place.starts() == {"s1": 1, "block": 1}


async def test_cross_process_cancel_of_a_suspended_run(place: Place) -> None:
    app = await place.spawn("start", "approval", "r1", '"x"', "--then", "wait-canceled")
    assert await app.line() == "ready"
    assert await app.line() == "result suspended null"
    async with place.engine() as eng:
        run = await eng.get_run("r1")
        assert run.status == "suspended"
        with trio.fail_after(2):
            assert await run.cancel() == CANCELED
        with pytest.raises(trioflow.RunStateError, match="was canceled"):
            await run.resume(resume_data={"ok": True})
        steps = run.result_nowait().steps
        assert {p: r.status for p, r in steps.items()} == {"s1": "success", "approve": "canceled"}
    code, out = await app.finish()
    assert (code, out) == (0, ["saw canceled"])
    assert place.starts() == {"s1": 1, "approve": 1}


async def test_cross_process_cancel_of_a_waiting_run(place: Place) -> None:
    app = await place.spawn("start", "sleepy", "r1", '{"nap": 60}')
    assert await app.line() == "ready"
    with trio.fail_after(10):
        while (await place.row()).status != "waiting":  # noqa: ASYNC110
            await trio.sleep(0.01)
    async with place.engine() as eng:
        run = await eng.get_run("r1")
        with trio.fail_after(2):
            assert await run.cancel() == CANCELED
        steps = run.result_nowait().steps
        assert {p: r.status for p, r in steps.items()} == {"s1": "success", "nap": "canceled"}
    code, out = await app.finish()
    assert (code, out) == (0, ["result canceled null"])
    assert place.starts() == {"s1": 1}


async def test_cancel_of_a_run_whose_process_died(place: Place) -> None:
    """Nobody executes it any more: once the dead process's lease expires, the run is
    canceled (in storage, or by the engine that takes it over and sees the request
    first), and the interrupted step does not run again."""
    await killed(place, "start", "three", "r1", '"x"', "--kill", "in-step:s2")
    async with place.engine() as eng:
        run = await eng.get_run("r1")
        with trio.fail_after(5):
            assert await run.cancel() == CANCELED
        steps = run.result_nowait().steps
    assert steps["s1"].status == "success"
    assert steps.get("s2") is None or steps["s2"].status == "canceled"
    assert (await place.row()).status == "canceled"
    assert place.starts() == {"s1": 1, "s2": 1}


# -- racing recoveries, outside shutdowns ---------------------------------------------------


async def test_engines_racing_to_recover_a_run_execute_it_once(place: Place) -> None:
    await killed(place, "start", "three", "r1", '"x"', "--kill", "in-step:s2")
    (dead,) = place.who("s1")
    racers = [await place.spawn("recover", "r1") for _ in range(3)]
    for racer in racers:
        code, out = await racer.finish()
        assert (code, out) == (0, ['result success "x+s1+s2+s3"']), racer.stderr()
    assert place.starts() == {"s1": 1, "s2": 2, "s3": 1}
    first, second = place.who("s2")
    assert first == dead
    assert second in {racer.pid for racer in racers}
    assert place.who("s3") == [second]


@pytest.mark.parametrize("how", ["sigint", "cancel-scope"])
async def test_a_process_shut_down_from_outside_leaves_its_runs_recoverable(
    place: Place, how: str
) -> None:
    if how == "sigint":
        app = await place.spawn("start", "blocking", "r1", '"x"', "--block")
        await place.wait_logged("start", "block")
        app.process.send_signal(signal.SIGINT)  # trio raises KeyboardInterrupt in main
        expected = ["ready", "interrupted"]
    else:
        app = await place.spawn("start", "blocking", "r1", '"x"', "--block", "--then", "shutdown")
        expected = ["ready", "shut down"]
    code, out = await app.finish()
    assert (code, out) == (0, expected), app.stderr()
    row = await place.row()
    assert (row.status, row.owner, row.lease_until, row.cancel_requested) == (
        "running",
        None,
        None,
        False,
    )
    snapshot = _journal.of_row(row)
    assert snapshot.status == "running" and not snapshot.cancel_requested
    assert not any(what == "abort" for what, _, _ in place.lines())  # not a user's cancel
    result = await place.recover()
    assert (result.status, result.result) == ("success", "x+s1+block")
    assert place.starts() == {"s1": 1, "block": 2}


async def test_an_executor_stopped_past_its_lease_starts_no_further_step(place: Place) -> None:
    """A process is stopped (SIGSTOP) in the middle of a run for longer than its lease;
    another engine takes the run over and finishes it. When the first process goes on,
    its write loses the compare-and-set: it starts no further step, writes nothing more,
    and reports the outcome the other engine stored."""
    app = await place.spawn("start", "sleepy", "r1", '{"nap": 1.5}')
    assert await app.line() == "ready"
    await place.wait_logged("start", "s1")
    await place.wait_stored("s1", "success")  # so it is stopped in its nap
    os.kill(app.pid, signal.SIGSTOP)
    try:
        result = await place.recover()  # here, once the stopped process's lease expired
        finished = await place.row()
    finally:
        os.kill(app.pid, signal.SIGCONT)
    assert result.status == "success"
    code, out = await app.finish()
    assert (code, out) == (0, ["result success \"{'nap': 1.5}+s2\""]), app.stderr()
    assert "was ended or taken over by another process" in app.stderr()
    assert place.who("s1") == [app.pid]
    assert place.who("s2") == [os.getpid()]  # never in the process that lost the run
    assert (await place.row()).updated_at == finished.updated_at  # it wrote nothing more
