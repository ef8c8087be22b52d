"""GroupCommit (trioflow/_commits.py) on its own: batches, slots, failures, cancellation."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trioflow._commits import IN_FLIGHT, MOST, GroupCommit
from trioflow._errors import StorageError


class Storage:
    """A storage call that takes `delay` seconds per batch, answers ``item * 10``, and
    fails the batches that hold an item in `failing`."""

    def __init__(self, delay: float = 0.0, failing: frozenset[int] = frozenset()) -> None:
        self.delay = delay
        self.failing = failing
        self.batches: list[list[int]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def call_many(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        if self.failing.intersection(items):
            raise OSError(f"disk full at {sorted(self.failing.intersection(items))}")
        return [item * 10 for item in items]


async def call_all(commit: GroupCommit[int, int], items: Sequence[int]) -> dict[int, object]:
    """Each item's result (or the exception it got), every call in a task of its own."""
    answers: dict[int, object] = {}

    async def call(item: int) -> None:
        try:
            answers[item] = await commit(item)
        except Exception as exc:
            answers[item] = exc

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(call, item)
    return answers


async def test_a_lone_call_goes_at_once_alone() -> None:
    storage = Storage()
    commit = GroupCommit(storage.call_many)
    with trio.fail_after(5):
        assert await commit(7) == 70
        assert await commit(8) == 80
    assert storage.batches == [[7], [8]]


async def test_concurrent_calls_share_batches_within_the_limits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = Storage(delay=0.01)
    commit = GroupCommit(storage.call_many)
    items = list(range(1000))
    with trio.fail_after(60):
        answers = await call_all(commit, items)
    assert answers == {item: item * 10 for item in items}
    assert sorted(i for batch in storage.batches for i in batch) == items  # each once
    assert max(len(batch) for batch in storage.batches) <= MOST
    assert storage.most_in_flight == IN_FLIGHT
    # The calls that arrive together go together, not each alone: the first goes at
    # once, the second leads a batch of all the others while it is under way (up to
    # MOST, then the rest by MOST).
    assert len(storage.batches) <= 2 + len(items) // MOST, [len(b) for b in storage.batches]


async def test_a_failed_batch_fails_its_own_calls_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = Storage(delay=0.01, failing=frozenset({600}))
    commit = GroupCommit(storage.call_many)
    with trio.fail_after(60):
        answers = await call_all(commit, range(1000))
    (failed,) = [batch for batch in storage.batches if 600 in batch]
    for item, answer in answers.items():
        if item in failed:
            assert isinstance(answer, Exception)
            assert "disk full at [600]" in str(answer)
        else:
            assert answer == item * 10
    # Each caller gets an exception object of its own (one object raised in two tasks
    # would have its traceback grown by both).
    errors = [answers[item] for item in failed]
    assert len({id(error) for error in errors}) == len(errors)
    assert all(isinstance(e, StorageError | OSError) for e in errors)
    # And the calls made after it go on as usual.
    with trio.fail_after(5):
        assert await commit(1) == 10


async def test_a_cancelled_call_still_learns_its_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call cannot be cancelled, leading or queued: its write is made, its caller gets
    the result, and the cancellation arrives at the caller's next checkpoint."""
    storage = Storage(delay=1.0)
    commit = GroupCommit(storage.call_many)
    got: list[int] = []

    async def call(item: int, scope: trio.CancelScope) -> None:
        with scope:
            got.append(await commit(item))
            await trio.lowlevel.checkpoint()
            got.append(-1)  # never: the cancellation was delivered above

    scopes = [trio.CancelScope() for _ in range(3)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for item, scope in enumerate(scopes, start=1):  # 1 leads, 2 leads, 3 queues
                nursery.start_soon(call, item, scope)
            await trio.sleep(0.5)  # all three are under way
            for scope in scopes:
                scope.cancel()
    assert sorted(got) == [10, 20, 30]
    assert all(scope.cancelled_caught for scope in scopes)
    assert sorted(i for batch in storage.batches for i in batch) == [1, 2, 3]


@settings(max_examples=40, deadline=None)
@given(
    arrivals=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 400)), min_size=1, max_size=6),
    delay=st.sampled_from([0.0, 0.001, 0.05]),
    failing=st.sets(st.integers(0, 2000), max_size=3),
)
def test_every_call_gets_its_own_answer(
    arrivals: list[tuple[int, int]], delay: float, failing: set[int]
) -> None:
    """Waves of calls (after a number of scheduler passes, so many of them at once)
    against a storage that is quick or slow and fails some batches: every call gets its
    own item's answer or its batch's failure; no batch is over `MOST` calls, no more than
    `IN_FLIGHT` are under way at once, and no item is written twice."""
    storage = Storage(delay=delay, failing=frozenset(failing))

    async def main() -> dict[int, object]:
        commit = GroupCommit(storage.call_many)
        answers: dict[int, object] = {}

        async def call(item: int) -> None:
            try:
                answers[item] = await commit(item)
            except (StorageError, OSError) as exc:
                answers[item] = exc

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                item = 0
                for passes, count in arrivals:
                    for _ in range(passes):
                        await trio.lowlevel.checkpoint()
                    for _ in range(count):
                        nursery.start_soon(call, item)
                        item += 1
        return answers

    answers = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    written = [i for batch in storage.batches for i in batch]
    assert sorted(written) == sorted(answers) == list(range(sum(c for _, c in arrivals)))
    assert max(len(batch) for batch in storage.batches) <= MOST
    assert storage.most_in_flight <= IN_FLIGHT
    failed_items = {i for batch in storage.batches if failing.intersection(batch) for i in batch}
    for item, answer in answers.items():
        if item in failed_items:
            assert isinstance(answer, StorageError | OSError), (item, answer)
        else:
            assert answer == item * 10
