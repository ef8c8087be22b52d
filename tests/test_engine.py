"""Durable runs in one process (SPEC §5, issue 5): open_engine, create_run, get_run,
list_runs, start_soon and result(), suspend and resume across engines, bad input and bad
state, and what leaving the engine's block does to the runs it executes.

Tests that make sense on both storages take the `new_storage` fixture: a function that
returns a storage on the same place each time (one shared `MemoryStorage`, or a new
`SQLiteStorage` on one file), so a second engine sees what the first one stored.
Crashes of real processes are in test_recovery.py.
"""

from __future__ import annotations

import pickle
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trioflow
from trioflow import _clock
from trioflow.storage import Storage

NewStorage = Callable[[], Storage]
EPOCH = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
def new_storage(request: pytest.FixtureRequest, tmp_path: Path) -> NewStorage:
    if request.param == "memory":
        shared = trioflow.MemoryStorage()
        return lambda: shared
    path = tmp_path / "runs.db"
    return lambda: trioflow.SQLiteStorage(path)


@pytest.fixture
def ticking_clock() -> Iterator[None]:
    """A wall clock that moves 1 ms per reading: creation order is time order."""
    now = EPOCH

    def tick() -> float:
        nonlocal now
        now += 0.001
        return now

    previous = _clock.set_wall_clock(tick)
    try:
        yield
    finally:
        _clock.set_wall_clock(previous)


@pytest.fixture
def wall_clock() -> Iterator[None]:
    """Tie trioflow's wall clock (leases, timestamps) to Trio's virtual clock."""
    previous = _clock.set_wall_clock(lambda: EPOCH + trio.current_time())
    try:
        yield
    finally:
        _clock.set_wall_clock(previous)


def engine(new_storage: NewStorage, *workflows: trioflow.Workflow, **options: Any) -> Any:
    return trioflow.open_engine(storage=new_storage(), workflows=workflows, **options)


class Item(msgspec.Struct, frozen=True):
    name: str
    count: int


class Total(msgspec.Struct, frozen=True):
    name: str
    total: int


class Ask(msgspec.Struct, frozen=True):
    question: str


class Answer(msgspec.Struct, frozen=True):
    ok: bool


class Tally(msgspec.Struct):
    seen: int = 0


def typed_workflow(calls: list[str], wf_id: str = "typed") -> trioflow.Workflow:
    """double (Item -> Item) then total (Item -> Total), counting into a Tally state."""

    @trioflow.step(id="double", input_schema=Item, output_schema=Item)
    async def double(ctx: trioflow.StepContext[Item]) -> Item:
        calls.append("double")
        ctx.set_state(Tally(seen=ctx.state.seen + 1))
        return Item(name=ctx.input_data.name, count=ctx.input_data.count * 2)

    @trioflow.step(id="total", output_schema=Total)
    async def total(ctx: trioflow.StepContext[Item]) -> Total:
        calls.append("total")
        ctx.set_state(Tally(seen=ctx.state.seen + 1))
        return Total(name=ctx.input_data.name, total=ctx.input_data.count + ctx.state.seen)

    return (
        trioflow.create_workflow(
            id=wf_id, input_schema=Item, output_schema=Total, state_schema=Tally
        )
        .then(double)
        .then(total)
        .commit()
    )


def approval_workflow(calls: list[str], wf_id: str = "approval") -> trioflow.Workflow:
    """prepare, then approve (suspends with an Ask until resumed with an Answer), then
    publish, which reads the typed state and the typed output of approve."""

    @trioflow.step(id="prepare", output_schema=Item)
    async def prepare(ctx: trioflow.StepContext[Any]) -> Item:
        calls.append("prepare")
        ctx.set_state(Tally(seen=1))
        return Item(name="doc", count=1)

    @trioflow.step(id="approve", suspend_schema=Ask, resume_schema=Answer, output_schema=Answer)
    async def approve(ctx: trioflow.StepContext[Item]) -> Answer:
        calls.append("approve")
        if ctx.resume_data is None:
            ctx.suspend({"question": f"publish {ctx.input_data.name}?"})
        assert isinstance(ctx.resume_data, Answer)
        return ctx.resume_data

    @trioflow.step(id="publish")
    async def publish(ctx: trioflow.StepContext[Answer]) -> str:
        calls.append("publish")
        assert isinstance(ctx.state, Tally)
        prepared = ctx.get_step_result("prepare")
        assert isinstance(prepared, Item)
        return f"{prepared.name}: {'published' if ctx.input_data.ok else 'dropped'}"

    return (
        trioflow.create_workflow(id=wf_id, state_schema=Tally)
        .then(prepare)
        .then(approve)
        .then(publish)
        .commit()
    )


def blocking_workflow(
    calls: list[str], entered: trio.Event | None = None, wf_id: str = "blocking"
) -> trioflow.Workflow:
    """quick, then slow: slow blocks until canceled the first time it runs (setting
    `entered`), and returns at once when it runs again (after a recovery)."""

    async def quick(ctx: trioflow.StepContext[Any]) -> Any:
        calls.append("quick")
        return ctx.input_data

    async def slow(ctx: trioflow.StepContext[Any]) -> Any:
        calls.append("slow")
        if calls.count("slow") == 1:
            ctx.abort_signal.add_event_listener("abort", lambda: calls.append("abort listener"))
            if entered is not None:
                entered.set()
            await trio.sleep_forever()
        return "slow done"

    return (
        trioflow.create_workflow(id=wf_id)
        .then(trioflow.create_step(id="quick", execute=quick))
        .then(trioflow.create_step(id="slow", execute=slow))
        .commit()
    )


def same_but_payloads(a: trioflow.RunResult, b: trioflow.RunResult) -> bool:
    """Equal results, except that a step's payload (its input) comes back from storage
    as plain data (its type is the previous step's, which is not recorded)."""
    plain = msgspec.json.decode(msgspec.json.encode({p: r.payload for p, r in b.steps.items()}))
    return (
        msgspec.structs.replace(a, steps={p: replace_payload(r) for p, r in a.steps.items()})
        == msgspec.structs.replace(b, steps={p: replace_payload(r) for p, r in b.steps.items()})
        and {p: r.payload for p, r in a.steps.items()} == plain
    )


def replace_payload(record: trioflow.StepResult) -> trioflow.StepResult:
    return msgspec.structs.replace(record, payload=None)


async def stored(new_storage: NewStorage, run_id: str) -> Any:
    """The stored row of a run, read through a fresh storage on the same place."""
    storage = new_storage()
    async with storage:
        return await storage.load(run_id)


# -- open_engine, create_run, get_run, list_runs ------------------------------------------


async def test_open_engine_checks_its_arguments(new_storage: NewStorage) -> None:
    wf = typed_workflow([])
    bad_values: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"lease_seconds": 0}, ValueError, "lease_seconds must be a finite number"),
        ({"lease_seconds": float("inf")}, ValueError, "lease_seconds must be a finite"),
        ({"lease_seconds": float("nan")}, ValueError, "lease_seconds must be a finite"),
        ({"poll_interval": -1}, ValueError, "poll_interval must be a finite number"),
        ({"poll_interval": float("inf")}, ValueError, "poll_interval must be a finite"),
        ({"poll_interval": "1"}, TypeError, "poll_interval must be a number"),
        ({"poll_interval": 5.0}, ValueError, r"poll_interval \(5s\) must be less than half"),
        ({"lease_seconds": 1.0, "poll_interval": 0.5}, ValueError, "less than half"),
    ]
    for bad, error, message in bad_values:
        with pytest.raises(error, match=message):
            async with engine(new_storage, wf, **bad):
                pass  # pragma: no cover
    draft = trioflow.create_workflow(id="draft").then(trioflow.create_step(id="a", execute=id))
    with pytest.raises(RuntimeError, match=r"'draft' is not committed; call \.commit\(\)"):
        async with engine(new_storage, draft):
            pass  # pragma: no cover


async def test_create_run_with_a_taken_id_returns_that_run_and_never_runs_it_twice(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []
    wf = typed_workflow(calls)
    other = trioflow.create_workflow(id="other").then(
        trioflow.create_step(id="s", execute=lambda ctx: None)
    )
    other = other.commit()
    async with engine(new_storage, wf, other) as eng:
        first = await eng.create_run(wf, run_id="order-7")
        result = await first.start(Item(name="mug", count=2))
        assert result.status == "success"
        again = await eng.create_run(wf, run_id="order-7")
        assert again.status == "success"
        with pytest.raises(trioflow.RunStateError, match="was already started"):
            await again.start(Item(name="mug", count=2))
        with pytest.raises(ValueError, match="'order-7' is stored already, of workflow 'typed'"):
            await eng.create_run(other, run_id="order-7")
    assert calls == ["double", "total"]


async def test_create_run_stores_a_pending_run(new_storage: NewStorage) -> None:
    wf = typed_workflow([])
    async with engine(new_storage, wf) as eng:
        by_id = await eng.create_run("typed")
        by_object = await eng.create_run(wf, run_id="mine")
        assert isinstance(by_id, trioflow.Run)
        assert by_id.status == by_object.status == "pending"
        assert by_object.run_id == "mine"
        assert by_id.workflow is wf
        again_created = await eng.create_run(wf, run_id="mine")  # idempotent: the same run
        assert (again_created.run_id, again_created.status) == ("mine", "pending")
        with pytest.raises(LookupError, match=r"does not know workflow 'nope'.*\['typed'\]"):
            await eng.create_run("nope")
        listed = await eng.list_runs()
        assert sorted(s.run_id for s in listed) == sorted([by_id.run_id, "mine"])
        assert {s.status for s in listed} == {"pending"}
        assert {s.workflow_id for s in listed} == {"typed"}
        again = await eng.get_run("mine")
        assert again.status == "pending"
    row = await stored(new_storage, "mine")
    assert (row.status, row.owner, row.lease_until) == ("pending", None, None)


async def test_list_runs_by_status_and_workflow_paged(
    new_storage: NewStorage, ticking_clock: None
) -> None:
    wf_a = typed_workflow([], "a")
    wf_b = typed_workflow([], "b")
    async with engine(new_storage, wf_a, wf_b) as eng:
        ids_a = [(await eng.create_run(wf_a)).run_id for _ in range(5)]
        ids_b = [(await eng.create_run("b")).run_id for _ in range(3)]
        for run_id in ids_a[:2]:
            result = await (await eng.get_run(run_id)).start(Item(name="x", count=1))
            assert result.status == "success"
        assert (await (await eng.get_run(ids_b[0])).cancel()).status == "canceled"

        newest_first = list(reversed(ids_a + ids_b))
        everything = await eng.list_runs()
        assert [s.run_id for s in everything] == newest_first
        assert all(isinstance(s, trioflow.RunSummary) for s in everything)
        assert all(s.updated_at >= s.created_at for s in everything)
        by_id = {s.run_id: s for s in everything}
        assert by_id[ids_a[0]].updated_at > by_id[ids_a[0]].created_at

        async def ids(**query: Any) -> list[str]:
            return [s.run_id for s in await eng.list_runs(**query)]

        assert await ids(status="success") == [ids_a[1], ids_a[0]]
        assert await ids(status="canceled") == [ids_b[0]]
        assert await ids(status="pending", workflow_id="a") == list(reversed(ids_a[2:]))
        assert await ids(workflow_id="b") == list(reversed(ids_b))
        assert await ids(status="suspended") == []
        assert await ids(workflow_id="nope") == []
        pages = [await ids(limit=3, offset=offset) for offset in (0, 3, 6, 9)]
        assert pages == [newest_first[0:3], newest_first[3:6], newest_first[6:8], []]
        assert await ids(workflow_id="a", limit=2, offset=1) == newest_first[4:6]


async def test_unknown_run_id(new_storage: NewStorage) -> None:
    async with engine(new_storage, typed_workflow([])) as eng:
        with pytest.raises(trioflow.RunNotFoundError) as caught:
            await eng.get_run("no-such-run")
    error = caught.value
    assert isinstance(error, trioflow.TrioflowError) and isinstance(error, LookupError)
    assert error.run_id == "no-such-run"
    assert str(error) == (
        "no run with id 'no-such-run'; list the stored runs with engine.list_runs()"
    )


# -- start_soon, result(), inline start -----------------------------------------------------


async def test_start_soon_returns_at_once_and_result_waits(new_storage: NewStorage) -> None:
    calls: list[str] = []
    async with engine(new_storage, typed_workflow(calls)) as eng:
        run = await eng.create_run("typed", run_id="r")
        assert await run.start_soon(Item(name="n", count=2)) is None
        assert calls == []  # it runs in the engine's nursery, later
        result = await run.result()
        assert calls == ["double", "total"]
        assert result.status == run.status == "success"
        assert result.result == Total(name="n", total=6)
        assert result.steps["double"].output == Item(name="n", count=4)
        assert await run.result() == result  # again: at once, the same
        with pytest.raises(trioflow.RunStateError, match="already started"):
            await run.start_soon(Item(name="n", count=2))
    row = await stored(new_storage, "r")
    assert (row.status, row.owner, row.lease_until) == ("success", None, None)


async def test_start_soon_needs_an_engine_run() -> None:
    run = await typed_workflow([]).create_run()
    with pytest.raises(RuntimeError, match=r"engine\.create_run\(\)"):
        await run.start_soon(Item(name="n", count=1))


async def test_cancelling_a_wait_on_result_does_not_cancel_the_run(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []

    async def slow(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("slow")
        await trio.sleep(0.5)
        return "done"

    wf = trioflow.create_workflow(id="slow").then(trioflow.create_step(id="s", execute=slow))
    wf.commit()
    async with engine(new_storage, wf) as eng, engine(new_storage, wf) as other:
        run = await eng.create_run(wf)
        await run.start_soon()
        with trio.move_on_after(0.05) as waited:
            await run.result()
        assert waited.cancelled_caught
        elsewhere = await other.get_run(run.run_id)  # polls the storage
        assert elsewhere is not run
        with trio.move_on_after(0.05) as waited:
            await elsewhere.result()
        assert waited.cancelled_caught
        assert run.status == "running" and not run.cancel_requested
        assert (await run.result()).result == "done"
        assert (await elsewhere.result()).result == "done"
        assert elsewhere.status == "success"
    assert calls == ["slow"]


async def test_inline_start_on_an_engine_run(new_storage: NewStorage) -> None:
    calls: list[str] = []
    wf = typed_workflow(calls)
    async with engine(new_storage, wf) as eng, engine(new_storage, wf) as other:
        run = await eng.create_run(wf, run_id="inline")
        result = await run.start(Item(name="i", count=1))
        assert result.status == "success"
        assert result.result == Total(name="i", total=4)
        row = await stored(new_storage, "inline")
        assert (row.status, row.owner, row.lease_until) == ("success", None, None)
        # Started in one engine: another one cannot start it again.
        with pytest.raises(trioflow.RunStateError, match="already started"):
            await (await other.get_run("inline")).start(Item(name="i", count=1))
        # A pending run created in one engine starts inline in another.
        pending = await eng.create_run(wf, run_id="elsewhere")
        result = await (await other.get_run("elsewhere")).start(Item(name="e", count=2))
        assert result.result == Total(name="e", total=6)
        with pytest.raises(trioflow.RunStateError, match="already started"):
            await pending.start(Item(name="e", count=2))
    assert calls == ["double", "total"] * 2


async def test_a_run_rebuilt_in_another_engine_behaves_the_same(new_storage: NewStorage) -> None:
    calls: list[str] = []
    wf = typed_workflow(calls)
    async with engine(new_storage, wf) as eng:
        run = await eng.create_run(wf)
        original = await run.start({"name": "t", "count": 3})
    async with engine(new_storage, wf) as reopened:
        rebuilt = await reopened.get_run(run.run_id)
        again = rebuilt.result_nowait()
        assert rebuilt is not run
        assert rebuilt.status == "success"
        assert same_but_payloads(again, original)
        assert type(again.result) is Total
        assert type(again.steps["double"].output) is Item
        assert type(again.steps["total"].output) is Total
        assert again.result == Total(name="t", total=8)
        assert same_but_payloads(await rebuilt.result(), original)
        with pytest.raises(trioflow.RunStateError):
            await rebuilt.start({"name": "t", "count": 3})
    assert calls == ["double", "total"]


# -- suspend and resume ---------------------------------------------------------------------


async def test_suspend_is_validated_by_suspend_schema(new_storage: NewStorage) -> None:
    @trioflow.step(id="ask", suspend_schema=Ask)
    async def ask(ctx: trioflow.StepContext[Any]) -> Any:
        ctx.suspend(ctx.input_data)

    wf = trioflow.create_workflow(id="ask").then(ask).commit()
    async with engine(new_storage, wf) as eng:
        bad = await eng.create_run(wf, run_id="bad")
        result = await bad.start({"question": 42})
        assert result.status == "failed"
        assert result.suspended == []
        assert isinstance(result.error, trioflow.ValidationError)
        assert result.error.what == "suspend payload"
        assert result.steps["ask"].status == "failed"

        good = await eng.create_run(wf, run_id="good")
        result = await good.start({"question": "why?"})
        assert result.status == good.status == "suspended"
        assert result.suspended == [["ask"]]
        assert result.steps["ask"].status == "suspended"
        assert result.steps["ask"].suspend_payload == Ask(question="why?")
        assert await good.result() == result  # result() returns once the run suspends
        assert [s.run_id for s in await eng.list_runs(status="suspended")] == ["good"]
        assert [s.run_id for s in await eng.list_runs(status="failed")] == ["bad"]
    row = await stored(new_storage, "good")
    assert (row.status, row.owner, row.lease_until) == ("suspended", None, None)


async def test_resume_in_another_engine_and_after_reopening(new_storage: NewStorage) -> None:
    calls: list[str] = []
    wf = approval_workflow(calls)
    async with engine(new_storage, wf) as eng:
        first = await eng.create_run(wf, run_id="one")
        second = await eng.create_run(wf, run_id="two")
        for run in (first, second):
            assert (await run.start()).suspended == [["approve"]]
        # Another engine open at the same time resumes the first run.
        async with engine(new_storage, wf) as other:
            elsewhere = await other.get_run("one")
            assert elsewhere.status == "suspended"
            suspended = elsewhere.result_nowait()
            assert suspended.suspended == [["approve"]]
            assert suspended.steps["approve"].suspend_payload == Ask(question="publish doc?")
            result = await elsewhere.resume(step="approve", resume_data={"ok": True})
            assert result.status == "success"
            assert result.result == "doc: published"
            assert result.steps["approve"].resume_payload == Answer(ok=True)
        assert (await eng.get_run("one")).status == "success"
        # The engine's own stale object sees it ended: it cannot be resumed again.
        with pytest.raises(trioflow.RunStateError, match="'success', not 'suspended'"):
            await first.resume(resume_data={"ok": True})
    # After reopening the file, the second run resumes (step=None: its one suspended step).
    async with engine(new_storage, wf) as reopened:
        run = await reopened.get_run("two")
        result = await run.resume(resume_data=Answer(ok=False))
        assert result.status == "success"
        assert result.result == "doc: dropped"
        assert result.steps["approve"].suspend_payload == Ask(question="publish doc?")
    # prepare never ran again; approve ran once to suspend and once resumed.
    assert calls.count("prepare") == 2
    assert calls.count("approve") == 4
    assert calls.count("publish") == 2


async def test_nested_suspended_step_resumed_by_path_list(new_storage: NewStorage) -> None:
    calls: list[str] = []
    review = approval_workflow(calls, "review")
    wf = (
        trioflow.create_workflow(id="parent")
        .then(review)
        .then(trioflow.create_step(id="after", execute=lambda ctx: f"after {ctx.input_data}"))
        .commit()
    )
    async with engine(new_storage, wf) as eng:
        run = await eng.create_run(wf)
        result = await run.start()
        assert result.status == "suspended"
        assert result.suspended == [["review", "approve"]]
        assert result.steps["review"].status == "suspended"
        assert result.steps["review.approve"].suspend_payload == Ask(question="publish doc?")
    async with engine(new_storage, wf) as reopened:
        again = await reopened.get_run(run.run_id)
        assert again.result_nowait().suspended == [["review", "approve"]]
        result = await again.resume(step=["review", "approve"], resume_data={"ok": True})
        assert result.status == "success"
        assert result.result == "after doc: published"
        assert result.steps["review"].status == "success"
    assert calls == ["prepare", "approve", "approve", "publish"]


async def test_resume_data_failing_validation_keeps_the_run_suspended(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []
    wf = approval_workflow(calls)
    async with engine(new_storage, wf) as eng:
        run = await eng.create_run(wf, run_id="r")
        await run.start()
        with pytest.raises(trioflow.ValidationError) as caught:
            await run.resume(step="approve", resume_data={"ok": "maybe"})
        assert caught.value.step_id == "approve"
        assert caught.value.what == "resume data"
        assert run.status == "suspended"
        assert run.result_nowait().suspended == [["approve"]]
    row = await stored(new_storage, "r")
    assert (row.status, row.owner) == ("suspended", None)
    async with engine(new_storage, wf) as reopened:
        again = await reopened.get_run("r")
        with pytest.raises(trioflow.ValidationError):
            await again.resume(resume_data=["not", "an", "answer"])
        assert again.status == "suspended"
        result = await again.resume(resume_data={"ok": True})
        assert result.status == "success"
        assert result.result == "doc: published"
    assert calls == ["prepare", "approve", "approve", "publish"]


async def test_resume_of_a_finished_or_canceled_run(new_storage: NewStorage) -> None:
    wf = approval_workflow([])
    async with engine(new_storage, wf) as eng, engine(new_storage, wf) as other:
        done = await eng.create_run(wf, run_id="done")
        await done.start()
        await done.resume(resume_data={"ok": True})
        dropped = await eng.create_run(wf, run_id="dropped")
        await dropped.start()
        assert (await (await other.get_run("dropped")).cancel()).status == "canceled"
        for run in (done, await other.get_run("done")):
            with pytest.raises(trioflow.RunStateError) as caught:
                await run.resume(resume_data={"ok": True})
            assert caught.value.run_id == "done"
            assert caught.value.status == "success"
            assert "only a suspended run can be resumed" in str(caught.value)
        for run in (dropped, await other.get_run("dropped")):
            with pytest.raises(trioflow.RunStateError) as caught:
                await run.resume(resume_data={"ok": True})
            assert caught.value.status == "canceled"
            assert str(caught.value) == (
                "run 'dropped' was canceled; a canceled run cannot be resumed"
            )
        stale = await eng.get_run("dropped")
        assert stale.result_nowait().steps["approve"].status == "canceled"
        assert await stale.cancel() == trioflow.CancelResult(
            message="Workflow run canceled", status="canceled"
        )
        assert await done.cancel() == trioflow.CancelResult(
            message="Workflow run already success", status="success"
        )


# -- bad stored data, bad files -------------------------------------------------------------


class Evil:
    """Unpickling this would create a file: a snapshot must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


async def finished_runs(path: Path, wf: trioflow.Workflow, *run_ids: str) -> None:
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[wf]) as eng:
        for run_id in run_ids:
            result = await (await eng.create_run(wf, run_id=run_id)).start(
                Item(name=run_id, count=1)
            )
            assert result.status == "success"


def write_snapshot(path: Path, run_id: str, data: bytes, **columns: Any) -> None:
    """Overwrite a stored row the way another program would (plain sqlite3)."""
    conn = sqlite3.connect(path)
    try:
        sets = ", ".join(["snapshot = ?", *(f"{name} = ?" for name in columns)])
        conn.execute(
            f"UPDATE trioflow_runs SET {sets} WHERE run_id = ?", (data, *columns.values(), run_id)
        )
        conn.commit()
    finally:
        conn.close()


def read_snapshot(path: Path, run_id: str) -> bytes:
    conn = sqlite3.connect(path)
    try:
        (data,) = conn.execute(
            "SELECT snapshot FROM trioflow_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return bytes(data)
    finally:
        conn.close()


@pytest.mark.parametrize("kind", ["garbage", "pickle", "foreign", "newer"])
async def test_a_corrupt_snapshot_row_names_the_run(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "runs.db"
    wf = typed_workflow([])
    await finished_runs(path, wf, "bad", "good")
    marker = tmp_path / "unpickled"
    data, expected = {
        "garbage": (b"\x00not json", "it is corrupt or not a trioflow snapshot (JSON is malformed"),
        "pickle": (pickle.dumps(Evil(marker)), "it is corrupt or not a trioflow snapshot"),
        "foreign": (read_snapshot(path, "good"), "it belongs to run 'good'"),
        "newer": (
            b'{"version": 99, "run_id": "bad", "workflow_id": "typed", "status": "success"}',
            "it was written by a newer trioflow (snapshot version 99, this one reads up to 1); "
            "upgrade trioflow",
        ),
    }[kind]
    write_snapshot(path, "bad", data)
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[wf]) as eng:
        with pytest.raises(trioflow.SnapshotError) as caught:
            await eng.get_run("bad")
        assert caught.value.run_id == "bad"
        assert str(caught.value).startswith(f"cannot read the snapshot of run 'bad': {expected}")
        # Nothing else is lost, and the bad row is left as it was for a human to look at.
        good = await eng.get_run("good")
        assert good.result_nowait().result == Total(name="good", total=4)
        assert sorted(s.run_id for s in await eng.list_runs()) == ["bad", "good"]
    assert read_snapshot(path, "bad") == data
    assert not marker.exists()


async def test_cancelling_a_corrupt_run_leaves_the_database_usable(tmp_path: Path) -> None:
    # An error inside the write transaction must roll it back, or every later call finds
    # a transaction still open. Canceling an idle run appends to its journal without
    # reading it, so even a run whose header is corrupt can be canceled.
    path = tmp_path / "runs.db"
    wf = typed_workflow([])
    await finished_runs(path, wf, "bad", "good")
    write_snapshot(path, "bad", b"\x00not json", status="suspended", owner=None)
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[wf]) as eng:
        assert await eng.storage.request_cancel("bad", "stop", 0.0) == "canceled"
        with pytest.raises(trioflow.SnapshotError, match="cannot read the snapshot of run 'bad'"):
            await eng.get_run("bad")
        with pytest.raises(trioflow.RunNotFoundError):
            await eng.storage.request_cancel("missing", "stop", 0.0)
        assert await eng.storage.request_cancel("good", "stop", 0.0) == "success"
        assert sorted(s.run_id for s in await eng.list_runs()) == ["bad", "good"]
    assert read_snapshot(path, "bad") == b"\x00not json"


async def test_a_corrupt_running_row_does_not_stop_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "runs.db"
    calls: list[str] = []
    wf = typed_workflow(calls)
    await finished_runs(path, wf, "bad", "good")
    # Both look like runs whose executor died; one of them cannot be read.
    write_snapshot(path, "bad", b"{broken", status="running")
    good = read_snapshot(path, "good").replace(b'"status":"success"', b'"status":"running"', 1)
    write_snapshot(path, "good", good, status="running")
    async with trioflow.open_engine(storage=trioflow.SQLiteStorage(path), workflows=[wf]) as eng:
        result = await (await eng.get_run("good")).result()
        assert result.status == "success"
    assert "cannot recover run bad; it is left as stored" in caplog.text
    assert read_snapshot(path, "bad") == b"{broken"
    assert calls == ["double", "total"] * 2  # the good run's steps were all recorded: replayed


async def test_a_database_from_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(trioflow.StorageError) as caught:
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(path), workflows=[typed_workflow([])]
        ):
            pytest.fail("an engine opened a file of a newer schema")  # pragma: no cover
    assert str(caught.value) == (
        f"{path} was written by a newer trioflow (schema version 99, this one knows up to "
        f"{trioflow.storage._sqlite.SCHEMA_VERSION}); upgrade trioflow"
    )
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (99,)
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        assert tables == [("from_the_future",)]
    finally:
        conn.close()


READ_ONLY_CHECK = """
import ctypes, os, sys
if os.geteuid() == 0 and "NO_DAC_OVERRIDE" not in os.environ:
    # root ignores file modes: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, re-exec.
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
    os.environ["NO_DAC_OVERRIDE"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.argv])
import trio, trioflow

async def main():
    wf = trioflow.create_workflow(id="typed").then(
        trioflow.create_step(id="a", execute=lambda ctx: 1)
    ).commit()
    try:
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(sys.argv[1]), workflows=[wf]
        ) as eng:
            print("opened", [s.run_id for s in await eng.list_runs()])
    except trioflow.StorageError as exc:
        print(f"StorageError: {exc}")

trio.run(main)
"""


@pytest.mark.slow
async def test_a_read_only_database_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    await finished_runs(path, typed_workflow([]), "kept")
    before = path.read_bytes()
    script = tmp_path / "check.py"
    script.write_text(READ_ONLY_CHECK)
    path.chmod(0o444)
    try:
        with trio.fail_after(30):
            done = await trio.run_process(
                [sys.executable, str(script), str(path)],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        path.chmod(0o644)
    assert (done.returncode, done.stderr) == (0, b"")
    assert done.stdout.decode() == (
        f"StorageError: SQLite storage {path}: attempt to write a readonly database; "
        "the file or its folder is read-only; give this process write access\n"
    )
    assert path.read_bytes() == before
    async with trioflow.open_engine(
        storage=trioflow.SQLiteStorage(path), workflows=[typed_workflow([])]
    ) as eng:
        assert (await eng.get_run("kept")).status == "success"


class Locker:
    """Another program holding an exclusive lock on the database file."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def lock(self) -> None:
        self.conn.execute("BEGIN EXCLUSIVE")

    def unlock(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


LOCKED = "database is locked; another program holds a lock on it; close that program or retry"


async def test_a_locked_database_file(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    calls: list[str] = []
    wf = typed_workflow(calls)
    await finished_runs(path, wf, "kept")
    locker = Locker(path)
    try:
        locker.lock()
        with pytest.raises(trioflow.StorageError) as caught:
            async with trioflow.open_engine(
                storage=trioflow.SQLiteStorage(path, timeout=0.05), workflows=[wf]
            ):
                pytest.fail("opened a locked file")  # pragma: no cover
        assert str(caught.value) == f"SQLite storage {path}: {LOCKED}"
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        locker.unlock()

        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(path, timeout=0.05), workflows=[wf]
        ) as eng:
            locker.lock()
            with pytest.raises(trioflow.StorageError, match=LOCKED):
                await eng.create_run(wf, run_id="new")
            # Reading goes on (WAL); what was stored is all there.
            assert (await eng.get_run("kept")).status == "success"
            assert [s.run_id for s in await eng.list_runs()] == ["kept"]
            locker.unlock()
            run = await eng.create_run(wf, run_id="new")
            assert (await run.start(Item(name="n", count=1))).status == "success"
    finally:
        locker.close()
    assert calls == ["double", "total"] * 2


@pytest.mark.slow
@pytest.mark.parametrize("how", ["start", "start_soon"])
async def test_a_lock_during_a_run_loses_nothing(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The snapshot write after a step fails on a lock held longer than the storage's
    timeout: `start()` raises `StorageError` (a run started with `start_soon` stops and
    is logged; the engine goes on), the run stays as last recorded, and once the lock is
    gone its lease expires and the engine recovers it (the step whose completion was not
    recorded runs again)."""
    path = tmp_path / "runs.db"
    calls: list[str] = []
    locker = Locker(path)

    async def grab(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("grab")
        if calls.count("grab") == 1:
            locker.lock()
        return "grabbed"

    async def after(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("after")
        return f"{ctx.input_data}, then after"

    wf = (
        trioflow.create_workflow(id="grab")
        .then(trioflow.create_step(id="first", execute=lambda ctx: calls.append("first")))
        .then(trioflow.create_step(id="grab", execute=grab))
        .then(trioflow.create_step(id="after", execute=after))
        .commit()
    )
    try:
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(path, timeout=0.05),
            workflows=[wf],
            lease_seconds=0.3,
            poll_interval=0.01,
        ) as eng:
            run = await eng.create_run(wf, run_id="r")
            if how == "start":
                with pytest.raises(trioflow.StorageError, match=LOCKED):
                    await run.start()
            else:
                await run.start_soon()
                await trio.sleep(0.3)
                assert "run r stopped (StorageError" in caplog.text
                assert "it stays as last stored and will be recovered" in caplog.text
            locker.unlock()
            with trio.fail_after(5):
                result = await run.result()
            assert result.status == "success"
            assert result.result == "grabbed, then after"
    finally:
        locker.close()
    assert calls == ["first", "grab", "grab", "after"]


@pytest.mark.slow
async def test_a_lock_longer_than_the_lease_while_a_step_runs(tmp_path: Path) -> None:
    """Another program locks the file while a step runs, for longer than the lease: the
    engine cannot renew it, goes on, and does not take its own run over a second time."""
    path = tmp_path / "runs.db"
    calls: list[str] = []
    release = trio.Event()

    async def wait(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("wait")
        await release.wait()
        return "released"

    wf = trioflow.create_workflow(id="wait").then(trioflow.create_step(id="w", execute=wait))
    wf.commit()
    locker = Locker(path)
    try:
        async with trioflow.open_engine(
            storage=trioflow.SQLiteStorage(path, timeout=0.05),
            workflows=[wf],
            lease_seconds=0.2,
            poll_interval=0.01,
        ) as eng:
            run = await eng.create_run(wf)
            await run.start_soon()
            await trio.sleep(0.05)
            locker.lock()
            await trio.sleep(0.6)
            locker.unlock()
            await trio.sleep(0.3)  # time to renew, and to (wrongly) recover
            release.set()
            with trio.fail_after(5):
                result = await run.result()
            assert (result.status, result.result) == ("success", "released")
    finally:
        locker.close()
    assert calls == ["wait"]


# -- leaving the engine's block -------------------------------------------------------------


async def leave_normally(new_storage: NewStorage, unit: float) -> float:
    """Two runs started with start_soon, of 3 and 5 units; the time the block took."""

    def sleeper(units: int) -> trioflow.Workflow:
        async def execute(ctx: trioflow.StepContext[Any]) -> int:
            await trio.sleep(units * unit)
            return units

        step = trioflow.create_step(id="nap", execute=execute)
        return trioflow.create_workflow(id=f"nap-{units}").then(step).commit()

    short, long = sleeper(3), sleeper(5)
    t0 = trio.current_time()
    async with engine(new_storage, short, long) as eng:
        for wf in (short, long):
            await (await eng.create_run(wf, run_id=wf.id)).start_soon()
    elapsed = trio.current_time() - t0
    for run_id in ("nap-3", "nap-5"):
        row = await stored(new_storage, run_id)
        assert (row.status, row.owner) == ("success", None)
    return elapsed


async def test_leaving_normally_waits_for_the_runs(autojump_clock: trio.testing.MockClock) -> None:
    storage = trioflow.MemoryStorage()
    assert await leave_normally(lambda: storage, 1) == 5


async def test_leaving_normally_waits_for_the_runs_sqlite(tmp_path: Path) -> None:
    # Real time: SQLite works in threads, during which an autojump clock would jump.
    assert await leave_normally(lambda: trioflow.SQLiteStorage(tmp_path / "runs.db"), 0.02) >= 0.1


async def recover_and_finish(new_storage: NewStorage, wf: trioflow.Workflow) -> trioflow.RunResult:
    async with engine(new_storage, wf) as eng:
        with trio.fail_after(5):
            return await (await eng.get_run("r")).result()


async def assert_recoverable(new_storage: NewStorage) -> None:
    row = await stored(new_storage, "r")
    assert (row.status, row.owner, row.lease_until, row.cancel_requested) == (
        "running",
        None,
        None,
        False,
    )
    snapshot = trioflow._journal.of_row(row)
    assert snapshot.status == "running" and not snapshot.cancel_requested
    # The interrupted step's start is stored with the end of the step before it.
    assert {path: r.status for path, r in snapshot.steps.items()} == {
        "quick": "success",
        "slow": "running",
    }


async def test_leaving_by_an_exception_leaves_the_runs_recoverable(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []
    entered = trio.Event()
    wf = blocking_workflow(calls, entered)
    with pytest.raises(RuntimeError) as caught:
        async with engine(new_storage, wf) as eng:
            await (await eng.create_run(wf, run_id="r")).start_soon("in")
            await entered.wait()
            raise RuntimeError("boom")
    assert type(caught.value) is RuntimeError  # as itself, not in an ExceptionGroup
    assert str(caught.value) == "boom"
    await assert_recoverable(new_storage)
    result = await recover_and_finish(new_storage, wf)
    assert (result.status, result.result) == ("success", "slow done")
    assert calls == ["quick", "slow", "slow"]  # quick never again; slow at least once


async def test_an_outside_cancellation_leaves_the_runs_recoverable(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []
    entered = trio.Event()
    wf = blocking_workflow(calls, entered)
    with trio.CancelScope() as outside:
        async with engine(new_storage, wf) as eng:
            await (await eng.create_run(wf, run_id="r")).start_soon("in")
            await entered.wait()
            outside.cancel()
            await trio.sleep_forever()
    assert outside.cancelled_caught
    await assert_recoverable(new_storage)
    result = await recover_and_finish(new_storage, wf)
    assert (result.status, result.result) == ("success", "slow done")
    assert calls == ["quick", "slow", "slow"]


async def test_an_outside_cancellation_of_an_inline_start(new_storage: NewStorage) -> None:
    calls: list[str] = []
    entered = trio.Event()
    wf = blocking_workflow(calls, entered)
    async with engine(new_storage, wf) as eng:
        run = await eng.create_run(wf, run_id="r")
        async with trio.open_nursery() as nursery:

            async def start() -> None:
                await run.start("in")
                pytest.fail("start() returned after an outside cancellation")  # pragma: no cover

            nursery.start_soon(start)
            await entered.wait()
            nursery.cancel_scope.cancel()
        assert run.status == "running" and not run.cancel_requested
        assert "abort listener" not in calls
    await assert_recoverable(new_storage)
    result = await recover_and_finish(new_storage, wf)
    assert result.status == "success"
    assert calls == ["quick", "slow", "slow"]


# -- cancel across engines ------------------------------------------------------------------


CANCELED = trioflow.CancelResult(message="Workflow run canceled", status="canceled")


async def test_cancel_from_another_engine_stops_the_run_where_it_executes(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []
    entered = trio.Event()
    wf = blocking_workflow(calls, entered)
    async with engine(new_storage, wf, poll_interval=0.01) as eng:
        run = await eng.create_run(wf, run_id="r")
        await run.start_soon("in")
        await entered.wait()
        async with engine(new_storage, wf, poll_interval=0.01) as other:
            remote = await other.get_run("r")
            assert remote is not run and remote.status == "running"
            with trio.fail_after(5):
                assert await remote.cancel("enough") == CANCELED
            # cancel() returned once the run was stored 'canceled' by its executor
            assert (await stored(new_storage, "r")).status == "canceled"
            assert calls == ["quick", "slow", "abort listener"]
            assert remote.status == "canceled"
            assert remote.result_nowait().steps["slow"].status == "canceled"
            assert await remote.cancel() == CANCELED
        result = await run.result()
        assert result.status == run.status == "canceled"
        assert {p: r.status for p, r in result.steps.items()} == {
            "quick": "success",
            "slow": "canceled",
        }
        assert run.cancel_requested
        assert str(run.abort_signal.reason) == "enough"
        assert await run.cancel() == CANCELED
    assert calls == ["quick", "slow", "abort listener"]


async def test_cancel_from_another_engine_of_a_waiting_run(new_storage: NewStorage) -> None:
    calls: list[str] = []
    wf = (
        trioflow.create_workflow(id="sleepy")
        .sleep(3600, id="nap")
        .then(trioflow.create_step(id="after", execute=lambda ctx: calls.append("after")))
        .commit()
    )
    async with engine(new_storage, wf, poll_interval=0.01) as eng:
        run = await eng.create_run(wf, run_id="r")
        await run.start_soon()
        with trio.fail_after(5):
            while (await stored(new_storage, "r")).status != "waiting":  # noqa: ASYNC110
                await trio.sleep(0.01)
        async with engine(new_storage, wf, poll_interval=0.01) as other:
            with trio.fail_after(5):
                assert await (await other.get_run("r")).cancel() == CANCELED
        result = await run.result()
        assert result.status == "canceled"
        assert {p: r.status for p, r in result.steps.items()} == {"nap": "canceled"}
    assert calls == []


async def test_cancel_from_another_engine_of_pending_and_suspended_runs(
    new_storage: NewStorage,
) -> None:
    calls: list[str] = []
    wf = approval_workflow(calls)
    async with engine(new_storage, wf) as eng, engine(new_storage, wf) as other:
        pending = await eng.create_run(wf, run_id="pending")
        suspended = await eng.create_run(wf, run_id="suspended")
        await suspended.start()
        for run_id in ("pending", "suspended"):
            assert await (await other.get_run(run_id)).cancel() == CANCELED
            assert (await stored(new_storage, run_id)).status == "canceled"
        # The engine that created them sees it: start returns the canceled result.
        result = await pending.start()
        assert (result.status, result.steps) == ("canceled", {})
        with pytest.raises(trioflow.RunStateError, match="was canceled"):
            await suspended.resume(resume_data={"ok": True})
        steps = (await other.get_run("suspended")).result_nowait().steps
        assert {p: r.status for p, r in steps.items()} == {
            "prepare": "success",
            "approve": "canceled",
        }
    assert calls == ["prepare", "approve"]


# -- leases and recovery within one process ---------------------------------------------------


async def test_a_renewed_lease_keeps_a_long_step_with_its_engine(
    autojump_clock: trio.testing.MockClock, wall_clock: None
) -> None:
    calls: list[str] = []

    async def long(ctx: trioflow.StepContext[Any]) -> str:
        calls.append("long")
        await trio.sleep(100)
        return "done"

    wf = trioflow.create_workflow(id="long").then(trioflow.create_step(id="s", execute=long))
    wf.commit()
    storage = trioflow.MemoryStorage()
    options: dict[str, Any] = {"workflows": [wf], "lease_seconds": 1, "poll_interval": 0.1}
    async with trioflow.open_engine(storage=storage, **options) as eng:
        async with trioflow.open_engine(storage=storage, **options) as other:
            run = await eng.create_run(wf)
            t0 = trio.current_time()
            await run.start_soon()
            result = await (await other.get_run(run.run_id)).result()
            assert result.status == "success"
            assert trio.current_time() == pytest.approx(t0 + 100, abs=0.1)
    assert calls == ["long"]


async def test_engines_racing_to_recover_a_run_execute_it_once(new_storage: NewStorage) -> None:
    calls: list[str] = []
    entered = trio.Event()
    wf = blocking_workflow(calls, entered)
    with pytest.raises(KeyboardInterrupt):  # the executing engine goes away
        async with engine(new_storage, wf) as eng:
            await (await eng.create_run(wf, run_id="r")).start_soon()
            await entered.wait()
            raise KeyboardInterrupt
    await assert_recoverable(new_storage)
    results: list[trioflow.RunResult] = []

    async def serve() -> None:
        async with engine(new_storage, wf) as eng:
            results.append(await (await eng.get_run("r")).result())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(serve)
    assert [r.status for r in results] == ["success"] * 3
    assert calls == ["quick", "slow", "slow"]


# -- the storage contract (what a PostgreSQL backend must do too) -----------------------------


def snapshot_bytes(run_id: str, status: str = "pending", **fields: Any) -> bytes:
    return trioflow._snapshot.encode(
        trioflow._snapshot.Snapshot(run_id=run_id, workflow_id="wf", status=status, **fields)  # type: ignore[arg-type]
    )


async def test_storage_claims_and_saves_are_compare_and_set(new_storage: NewStorage) -> None:
    storage = new_storage()
    async with storage:
        data = snapshot_bytes("r")
        await storage.insert("r", "wf", "pending", data, 100.0)
        with pytest.raises(ValueError, match="already stored"):
            await storage.insert("r", "wf", "pending", data, 100.0)
        with pytest.raises(trioflow.RunNotFoundError):
            await storage.load("x")
        a = await storage.claim("r", "A", ("pending",), 100.0, 110.0)
        assert a is not None and (a.owner, a.lease_until, a.snapshot) == ("A", 110.0, data)
        assert await storage.claim("r", "B", ("pending",), 105.0, 115.0) is None  # held
        # The journal is opaque to a storage: a write that loses appends nothing.
        assert not await storage.save("r", "running", "B", 105.0, release=False, entries=[b'"x"'])
        assert await storage.save("r", "running", "A", 105.0, release=False, entries=[b"1"])
        assert (await storage.load("r")).entries == (b"1",)
        assert await storage.claim("r", "B", ("pending",), 111.0, 121.0) is None  # status
        assert await storage.recoverable(["wf"], 105.0, 10) == []
        assert await storage.recoverable(["wf"], 111.0, 10) == ["r"]
        assert await storage.recoverable(["other"], 111.0, 10) == []
        await storage.renew("A", ["r"], 120.0)
        assert await storage.recoverable(["wf"], 111.0, 10) == []
        b = await storage.claim("r", "B", ("running", "waiting"), 121.0, 131.0)  # expired
        assert b is not None and b.owner == "B"
        assert not await storage.save(
            "r", "success", "A", 122.0, release=True, entries=[b'"x"'], first_seq=2
        )
        assert await storage.save(
            "r", "success", "B", 122.0, release=True, entries=[b"2", b"3"], first_seq=2
        )
        row = await storage.load("r")
        assert (row.status, row.owner, row.lease_until) == ("success", None, None)
        assert (row.snapshot, row.entries) == (data, (b"1", b"2", b"3"))
        assert (row.created_at, row.updated_at) == (100.0, 122.0)
        # Ended: no more writes, no more claims.
        assert await storage.save("r", "running", "B", 123.0, release=False) is False
        assert await storage.claim("r", "C", ("running", "waiting"), 200.0, 210.0) is None
        assert await storage.recoverable(["wf"], 200.0, 10) == []


async def test_a_claim_with_a_start_answers_the_started_row(new_storage: NewStorage) -> None:
    """Every backend answers a start's claim alike: the row with the start's status and
    the run's events, without entries (the caller knows them); the entries are stored."""
    from trioflow.storage._base import Write

    storage = new_storage()
    async with storage:
        await storage.insert("r", "wf", "pending", snapshot_bytes("r"), 100.0)
        assert await storage.put_event("r", "go", b'"now"', 100.5) == "pending"
        start = Write("r", "running", [b"1", b"2"], 1)
        row = await storage.claim("r", "A", ("pending",), 101.0, 111.0, start=start)
        assert row is not None
        assert (row.status, row.owner, row.entries) == ("running", "A", ())
        assert [(e.name, e.data) for e in row.events] == [("go", b'"now"')]
        stored = await storage.load("r")
        assert (stored.status, stored.updated_at, stored.entries) == (
            "running",
            101.0,
            (b"1", b"2"),
        )


async def test_storage_cancel_requests(new_storage: NewStorage) -> None:
    storage = new_storage()
    watcher = new_storage()  # another connection, for data_version
    async with storage, watcher:
        steps = {
            "done": trioflow._snapshot.StepRecord(status="success", output=1),
            "ask": trioflow._snapshot.StepRecord(status="suspended", suspend_payload="?"),
        }
        idle = snapshot_bytes("idle", "suspended", steps=steps, suspended=["ask"])
        await storage.insert("idle", "wf", "suspended", idle, 100.0)
        await storage.insert("busy", "wf", "pending", snapshot_bytes("busy"), 100.0)
        await storage.claim("busy", "A", ("pending",), 100.0, 110.0)
        await storage.save("busy", "running", "A", 101.0, release=False)
        version = await watcher.data_version()

        assert await storage.request_cancel("idle", "why", 105.0) == "canceled"
        row = await storage.load("idle")
        assert (row.status, row.cancel_requested, row.cancel_reason) == ("canceled", True, "why")
        snapshot = trioflow._journal.of_row(row)
        assert snapshot.status == "canceled" and snapshot.suspended == []
        assert snapshot.cancel_requested and snapshot.cancel_reason == "why"
        assert snapshot.steps["done"] == steps["done"]
        assert snapshot.steps["ask"].status == "canceled"
        assert snapshot.steps["ask"].ended_at == 105.0
        assert await storage.request_cancel("idle", "again", 106.0) == "canceled"
        assert (await storage.load("idle")).cancel_reason == "why"

        assert await storage.request_cancel("busy", "stop", 105.0) == "running"  # held by A
        assert (await storage.load("busy")).status == "running"
        assert await storage.cancel_requests("A") == [("busy", "stop")]
        assert await storage.cancel_requests("B") == []
        assert await watcher.data_version() != version
        # A's lease expired: nobody executes it, so it is canceled right there.
        assert await storage.request_cancel("busy", "stop", 111.0) == "canceled"
        assert await storage.cancel_requests("A") == []
        with pytest.raises(trioflow.RunNotFoundError):
            await storage.request_cancel("nope", None, 111.0)


# -- the journal written at each transition ---------------------------------------------------


class CheckingStorage(trioflow.MemoryStorage):
    """Checks that after every write an engine makes, the stored run (its header and
    journal, folded) is the live run as it was when the write's entries were taken."""

    checked = 0

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.expected: dict[str, Any] = {}
        take = trioflow._journal.Journal.take

        def checked_take(journal: Any, run: Any) -> Any:
            entries = take(journal, run)
            self.expected[run.run_id] = msgspec.json.decode(
                trioflow._snapshot.encode(run._to_snapshot())
            )
            return entries

        monkeypatch.setattr(trioflow._journal.Journal, "take", checked_take)

    async def save_many(self, writes: Any, owner: str, now: float) -> list[bool]:
        saved = await super().save_many(writes, owner, now)
        for write, won in zip(writes, saved, strict=True):
            if won:
                await self.check(write.run_id)
        return saved

    async def claim_many(self, claims: Any) -> Any:
        rows = await super().claim_many(claims)
        for claim, row in zip(claims, rows, strict=True):
            if row is not None and claim.start is not None:
                await self.check(claim.run_id)
        return rows

    async def check(self, run_id: str) -> None:
        stored = trioflow._journal.of_row(await self.load(run_id))
        assert msgspec.json.decode(trioflow._snapshot.encode(stored)) == self.expected[run_id]
        self.checked += 1


async def test_every_write_stores_the_run_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    async def bump(ctx: trioflow.StepContext[Any]) -> Any:
        return {"n": ctx.input_data["n"] + 1}

    async def flaky(ctx: trioflow.StepContext[Any]) -> Any:
        if ctx.retry_count == 0:
            raise RuntimeError("once")
        return ctx.input_data

    inner = (
        trioflow.create_workflow(id="inner")
        .then(trioflow.create_step(id="a", execute=bump))
        .then(trioflow.create_step(id="b", execute=bump))
        .commit()
    )
    wf = (
        trioflow.create_workflow(id="mixed", retry_config=trioflow.RetryConfig(attempts=1))
        .dountil(inner, lambda ctx: ctx.input_data["n"] >= 6)  # forgets inner records
        .parallel([trioflow.create_step(id=f"p{i}", execute=bump) for i in range(3)])
        .map(lambda ctx: [ctx.input_data["p0"], ctx.input_data["p1"]], id="pair")
        .foreach(trioflow.create_step(id="each", execute=bump), concurrency=2)
        .then(trioflow.create_step(id="flaky", execute=flaky))
        .commit()
    )
    storage = CheckingStorage(monkeypatch)
    async with trioflow.open_engine(storage=storage, workflows=[wf]) as eng:
        result = await (await eng.create_run(wf)).start({"n": 0})
    assert result.status == "success"
    assert result.result == [{"n": 8}, {"n": 8}]
    assert storage.checked >= 12


async def test_events_reach_a_durable_run_from_any_engine(new_storage: NewStorage) -> None:
    """An event sent to a durable run is stored: one sent before the run starts is kept
    until the run waits for it; one sent from another engine reaches the executing one."""
    calls: list[Any] = []

    @trioflow.step(id="shipped", resume_schema=Answer)
    async def shipped(ctx: trioflow.StepContext[Any]) -> bool:
        calls.append(ctx.resume_data)
        return bool(ctx.resume_data.ok)

    wf = trioflow.create_workflow(id="events").wait_for_event("go", shipped).commit()
    async with engine(new_storage, wf) as eng, engine(new_storage, wf) as other:
        early = await eng.create_run(wf, run_id="early")
        await early.send_event("go", {"ok": True})  # pending: kept until waited for
        await early.start_soon()
        assert (await early.result()).result is True
        run = await eng.create_run(wf, run_id="r")
        await run.start_soon()
        with trio.fail_after(5):
            while (await stored(new_storage, "r")).status != "waiting":  # noqa: ASYNC110
                await trio.sleep(0.01)
        await (await other.get_run("r")).send_event("go", {"ok": False})
        with trio.fail_after(5):
            assert (await run.result()).result is False
        with pytest.raises(trioflow.RunStateError, match="'r' is success; it takes no events"):
            await (await other.get_run("r")).send_event("go", {"ok": True})
        pending = await eng.create_run(wf)
        with pytest.raises(trioflow.ValidationError):  # validated where it is sent
            await (await other.get_run(pending.run_id)).send_event("go", {"ok": "maybe"})
    assert calls == [Answer(ok=True), Answer(ok=False)]


async def test_result_waits_for_the_final_write_to_be_stored() -> None:
    """A result() asked while the run's final write is under way is that write's
    outcome once stored, not the outcome in memory before it is."""
    entered, release = trio.Event(), trio.Event()

    class SlowFinal(trioflow.MemoryStorage):
        async def save_many(self, writes: Any, owner: str, now: float) -> list[bool]:
            if any(write.release for write in writes):
                entered.set()
                await release.wait()
            return await super().save_many(writes, owner, now)

    async def step(ctx: trioflow.StepContext[Any]) -> Any:
        return ctx.input_data

    wf = trioflow.create_workflow(id="one").then(trioflow.create_step(id="s", execute=step))
    storage = SlowFinal()
    async with trioflow.open_engine(storage=storage, workflows=[wf.commit()]) as eng:
        run = await eng.create_run("one", run_id="r")
        await run.start_soon(1)
        await entered.wait()
        got: list[trioflow.RunResult] = []
        async with trio.open_nursery() as nursery:

            async def wait_result() -> None:
                got.append(await run.result())

            nursery.start_soon(wait_result)
            await trio.sleep(0.05)
            try:
                assert got == []  # 'success' in memory, not stored yet
                assert (await storage.load("r")).status == "running"
            finally:
                release.set()
        assert got[0].status == "success"
        assert (await storage.load("r")).status == "success"
