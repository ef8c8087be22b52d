"""Retries (count, back-off on Trio's clock, cancel during a back-off) and step timeouts."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
import trio
import trio.testing
from composition_helpers import Log, of, sleeper, watched_start

import trioflow


def flaky(
    attempts: list[tuple[int, float]], *, succeed_on: int | None = None, seconds: float = 0
) -> Any:
    """A step that logs ``(ctx.retry_count, time)``, sleeps `seconds`, and fails until
    its retry number `succeed_on` (never, by default)."""

    async def execute(ctx: trioflow.StepContext[Any]) -> str:
        attempts.append((ctx.retry_count, trio.current_time()))
        await trio.sleep(seconds)
        if ctx.retry_count != succeed_on:
            raise ConnectionError(f"attempt {ctx.retry_count} failed")
        return f"ok after {ctx.retry_count}"

    return execute


async def test_retry_with_exponential_back_off_ends_at_exactly_seven(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[int, float]] = []
    workflow = (
        trioflow.create_workflow(
            id="retrying", retry_config=trioflow.RetryConfig(delay=1, backoff=2)
        )
        .then(trioflow.create_step(id="call", execute=flaky(attempts), retries=3))
        .commit()
    )
    watched = await watched_start(await workflow.create_run())
    assert watched.result is not None
    assert watched.result.status == "failed"
    assert str(watched.result.error) == "attempt 3 failed"
    # Delays 1, 2, 4: attempts at 0, 1, 3, 7.
    assert attempts == [(0, 0), (1, 1), (2, 3), (3, 7)]
    assert watched.ended_at == 7
    assert watched.statuses == {"call": "failed"}
    # One record and one start/result pair, however many attempts.
    assert watched.brief()[1:3] == [
        ("workflow-step-start", "call", "running"),
        ("workflow-step-result", "call", "failed"),
    ]


async def test_max_delay_caps_the_back_off(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[tuple[int, float]] = []
    config = trioflow.RetryConfig(attempts=4, delay=1, backoff=3, max_delay=2)
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=config)
        .then(trioflow.create_step(id="call", execute=flaky(attempts, succeed_on=4)))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "success"
    assert result.result == "ok after 4"
    assert attempts == [(0, 0), (1, 1), (2, 3), (3, 5), (4, 7)]  # delays 1, 2(cap), 2, 2


def test_retry_config_delays() -> None:
    config = trioflow.RetryConfig(attempts=5, delay=0.5, backoff=2, max_delay=3)
    assert [config.delay_before(n) for n in range(1, 6)] == [0.5, 1, 2, 3, 3]
    with pytest.raises(ValueError):
        trioflow.RetryConfig(attempts=-1)
    with pytest.raises(ValueError):
        trioflow.RetryConfig(backoff=0.5)


@pytest.mark.parametrize(
    ("step_retries", "calls"),
    [(None, 5), (0, 1), (2, 3)],  # None: the workflow's attempts apply
)
async def test_a_steps_retries_override_the_workflow_attempts(
    step_retries: int | None, calls: int
) -> None:
    attempts: list[tuple[int, float]] = []
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=trioflow.RetryConfig(attempts=4))
        .then(trioflow.create_step(id="call", execute=flaky(attempts), retries=step_retries))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "failed"
    assert [retry for retry, _ in attempts] == list(range(calls))


async def test_a_step_that_succeeds_on_a_retry_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[int, float]] = []
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=trioflow.RetryConfig(delay=2))
        .then(trioflow.create_step(id="call", execute=flaky(attempts, succeed_on=1), retries=5))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "success"
    assert result.steps["call"].output == "ok after 1"
    assert attempts == [(0, 0), (1, 2)]
    assert trio.current_time() == 2


async def test_cancel_during_a_back_off_ends_it_at_once_and_never_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[int, float]] = []
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=trioflow.RetryConfig(delay=10))
        .then(trioflow.create_step(id="call", execute=flaky(attempts, seconds=1), retries=3))
        .then(sleeper("after", 1, log))
        .commit()
    )
    run = await workflow.create_run()
    statuses: list[str] = []

    async def probe() -> None:
        await trio.sleep(5)  # in the first back-off (1 -> 11)
        statuses.append(run.status)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        watched = await watched_start(run, cancel_at=6)
    assert statuses == ["waiting"]  # between retries the run is 'waiting' (SPEC §3.5)
    assert watched.cancel_returned_at == 6
    assert watched.ended_at == 6
    assert attempts == [(0, 0)]
    assert log == []
    assert watched.statuses == {"call": "canceled"}
    assert run.status == "canceled"


async def test_a_canceled_step_is_never_retried(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[tuple[int, float]] = []
    workflow = (
        trioflow.create_workflow(id="retrying")
        .then(trioflow.create_step(id="call", execute=flaky(attempts, seconds=5), retries=3))
        .commit()
    )
    watched = await watched_start(await workflow.create_run(), cancel_at=2)
    assert watched.cancel_returned_at == 2
    assert attempts == [(0, 0)]
    assert watched.statuses == {"call": "canceled"}


# -- timeouts ----------------------------------------------------------------------------


async def test_a_timeout_fails_the_step_after_its_listener_saw_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[str, float, object]] = []

    async def slow(ctx: trioflow.StepContext[Any]) -> str:
        ctx.abort_signal.add_event_listener(
            "abort",
            lambda event: seen.append(("listener", trio.current_time(), event.target.reason)),
        )
        try:
            await trio.sleep(10)
        finally:
            seen.append(("interrupted", trio.current_time(), ctx.abort_signal.reason))
        return "too late"

    log: Log = []
    workflow = (
        trioflow.create_workflow(id="timed")
        .then(sleeper("first", 1, log))
        .then(trioflow.create_step(id="slow", execute=slow, timeout=2.5))
        .then(sleeper("after", 1, log))
        .commit()
    )
    run = await workflow.create_run()
    watched = await watched_start(run)
    assert watched.result is not None
    assert watched.result.status == "failed"
    assert run.status == "failed"
    error = watched.result.error
    assert isinstance(error, trioflow.StepTimeoutError)
    assert isinstance(error, TimeoutError)
    assert error.step_id == "slow"
    assert error.timeout == 2.5
    assert watched.ended_at == 3.5
    assert [(kind, when) for kind, when, _ in seen] == [("listener", 3.5), ("interrupted", 3.5)]
    assert seen[0][2] is error
    assert seen[1][2] is error
    assert watched.statuses == {"first": "success", "slow": "failed"}
    assert watched.result.steps["slow"].error is error
    assert watched.of_type("workflow-canceled") == []
    assert not run.cancel_requested
    assert [step_id for step_id, _ in of(log, "start")] == ["first"]


async def test_a_step_that_answers_its_timeout_with_ctx_abort_still_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def polite(ctx: trioflow.StepContext[Any]) -> str:
        # The SPEC's long-running step: wait for the signal, then abort.
        with trio.move_on_after(10):
            await ctx.abort_signal.wait()
        if ctx.abort_signal.aborted:
            ctx.abort()
        return "done"

    workflow = (
        trioflow.create_workflow(id="timed")
        .then(trioflow.create_step(id="polite", execute=polite, timeout=2))
        .commit()
    )
    run = await workflow.create_run()
    result = await run.start()
    assert result.status == "failed"
    assert isinstance(result.error, trioflow.StepTimeoutError)
    assert result.steps["polite"].status == "failed"
    assert not run.cancel_requested
    assert trio.current_time() == 2


async def test_a_timed_out_step_is_retried(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[tuple[int, float]] = []

    async def slow_then_quick(ctx: trioflow.StepContext[Any]) -> int:
        attempts.append((ctx.retry_count, trio.current_time()))
        await trio.sleep(5 if ctx.retry_count == 0 else 1)
        return ctx.retry_count

    workflow = (
        trioflow.create_workflow(id="timed", retry_config=trioflow.RetryConfig(delay=1))
        .then(trioflow.create_step(id="s", execute=slow_then_quick, timeout=2, retries=1))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "success"
    assert result.result == 1
    assert attempts == [(0, 0), (1, 3)]
    assert trio.current_time() == 4


async def test_a_step_within_its_timeout_succeeds(autojump_clock: trio.testing.MockClock) -> None:
    log: Log = []
    workflow = (
        trioflow.create_workflow(id="timed")
        .then(sleeper("quick", 1, log, timeout=5))
        .then(sleeper("next", 10, log))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "success"
    assert trio.current_time() == 11
    assert of(log, "done") == [("quick", 1), ("next", 11)]


async def test_cancel_of_a_step_with_a_timeout_is_canceled_not_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: Log = []
    workflow = trioflow.create_workflow(id="timed").then(sleeper("s", 10, log, timeout=5)).commit()
    watched = await watched_start(await workflow.create_run(), cancel_at=3)
    assert watched.cancel_returned_at == 3
    assert of(log, "interrupted") == [("s", 3)]
    assert watched.statuses == {"s": "canceled"}
    assert watched.result is not None
    assert watched.result.status == "canceled"
    assert watched.result.error is None


async def test_a_step_failing_during_a_cancel_grace_period_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    attempts: list[tuple[int, float]] = []
    workflow = (
        trioflow.create_workflow(id="retrying")
        .then(trioflow.create_step(id="call", execute=flaky(attempts, seconds=1), retries=3))
        .commit()
    )
    run = await workflow.create_run()

    async def cancel_with_grace() -> None:
        await trio.sleep(0.5)
        await run.cancel(grace_period=10)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_with_grace)
        result = await run.start()
    assert attempts == [(0, 0)]
    assert trio.current_time() == 1
    assert result.status == "canceled"
    assert result.steps["call"].status == "failed"  # it did finish: its real outcome stays


async def test_steps_that_end_before_their_timeout_leave_no_timers_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trioflow._abort import _TIMERS

    async def quick(ctx: trioflow.StepContext[Any]) -> int:
        await trio.sleep(0.001)
        return int(ctx.input_data) + 1

    step = trioflow.create_step(id="quick", execute=quick, timeout=3600)
    loop = (
        trioflow.create_workflow(id="many-timeouts")
        .dountil(step, lambda ctx: ctx.iteration_count >= 1000)
        .commit()
    )
    result = await (await loop.create_run()).start(0)
    assert result.status == "success"
    assert result.result == 1000
    # 1,000 hour-long timeouts were set and each step ended in time: the timer heap
    # holds a bounded handful of them, not one per step until the hour is up.
    assert len(_TIMERS.get().heap) < 70


# -- jitter and retry_on ------------------------------------------------------------------


async def jittered_times(seed: int, jitter: float = 0.5) -> list[float]:
    """The virtual times of the attempts of a step that always fails, retried 4 times
    after 1, 2, 4, 8 seconds plus jitter drawn from ``random.Random(seed)``."""
    attempts: list[tuple[int, float]] = []
    config = trioflow.RetryConfig(
        attempts=4, delay=1, backoff=2, jitter=jitter, rng=random.Random(seed)
    )
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=config)
        .then(trioflow.create_step(id="call", execute=flaky(attempts)))
        .commit()
    )
    start = trio.current_time()
    result = await (await workflow.create_run()).start()
    assert result.status == "failed"
    return [t - start for _, t in attempts]


def jittered_run(seed: int, jitter: float = 0.5) -> list[float]:
    """`jittered_times` in a fresh ``trio.run`` on a fresh MockClock: a whole program."""
    return trio.run(
        jittered_times, seed, jitter, clock=trio.testing.MockClock(autojump_threshold=0)
    )


def test_jitter_gives_the_same_virtual_times_for_the_same_seed() -> None:
    first = jittered_run(7)
    assert first == jittered_run(7)  # exactly: the same program, the same times
    assert first != jittered_run(8)
    # Each delay is its back-off plus up to half of it, drawn from the seeded source.
    rng = random.Random(7)
    expected, t = [0.0], 0.0
    for base in (1, 2, 4, 8):
        t += base + base * 0.5 * rng.random()
        expected.append(t)
    assert first == pytest.approx(expected)
    assert first != pytest.approx([0, 1, 3, 7, 15])  # the jitter did add something


async def test_no_jitter_waits_exactly_the_back_off(autojump_clock: trio.testing.MockClock) -> None:
    assert await jittered_times(1, 0.0) == [0, 1, 3, 7, 15]


def test_jitter_is_added_after_the_max_delay_cap() -> None:
    rng = random.Random(3)
    config = trioflow.RetryConfig(delay=10, max_delay=4, jitter=1.0, rng=random.Random(3))
    assert config.delay_before(1) == 4 + 4 * rng.random()


async def test_retry_on_fails_a_non_matching_exception_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[tuple[str, float]] = []
    errors = iter([ConnectionError("flaky network"), ValueError("bad input"), None])

    async def execute(ctx: trioflow.StepContext[Any]) -> str:
        calls.append((f"attempt {ctx.retry_count}", trio.current_time()))
        error = next(errors)
        if error is not None:
            raise error
        return "ok"

    config = trioflow.RetryConfig(attempts=5, delay=1, retry_on=(ConnectionError, TimeoutError))
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=config)
        .then(trioflow.create_step(id="call", execute=execute))
        .commit()
    )
    result = await (await workflow.create_run()).start()
    assert result.status == "failed"
    assert isinstance(result.error, ValueError)
    assert calls == [("attempt 0", 0), ("attempt 1", 1)]  # the ValueError was not retried
    assert trio.current_time() == 1


async def test_retry_on_matches_subclasses(autojump_clock: trio.testing.MockClock) -> None:
    attempts: list[tuple[int, float]] = []
    config = trioflow.RetryConfig(attempts=2, retry_on=(OSError,))  # ConnectionError is one
    workflow = (
        trioflow.create_workflow(id="retrying", retry_config=config)
        .then(trioflow.create_step(id="call", execute=flaky(attempts, succeed_on=2)))
        .commit()
    )
    assert (await (await workflow.create_run()).start()).status == "success"
    assert [n for n, _ in attempts] == [0, 1, 2]


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"attempts": -1}, ValueError, "attempts"),
        ({"attempts": 1.5}, TypeError, "attempts"),
        ({"attempts": True}, TypeError, "attempts"),
        ({"attempts": "3"}, TypeError, "attempts"),
        ({"delay": -1}, ValueError, "delay"),
        ({"delay": math.nan}, ValueError, "delay"),
        ({"delay": math.inf}, ValueError, "delay"),
        ({"delay": "1"}, TypeError, "delay"),
        ({"delay": False}, TypeError, "delay"),
        ({"backoff": 0.5}, ValueError, "backoff"),
        ({"backoff": math.nan}, ValueError, "backoff"),
        ({"backoff": math.inf}, ValueError, "backoff"),
        ({"backoff": None}, TypeError, "backoff"),
        ({"max_delay": -0.1}, ValueError, "max_delay"),
        ({"max_delay": math.nan}, ValueError, "max_delay"),
        ({"max_delay": math.inf}, ValueError, "max_delay"),
        ({"jitter": -0.1}, ValueError, "jitter"),
        ({"jitter": 1.5}, ValueError, "jitter"),
        ({"jitter": math.nan}, ValueError, "jitter"),
        ({"jitter": "0.1"}, TypeError, "jitter"),
        ({"retry_on": ValueError}, TypeError, "retry_on"),
        ({"retry_on": [ValueError]}, TypeError, "retry_on"),
        ({"retry_on": ()}, TypeError, "retry_on"),
        ({"retry_on": (ValueError, "KeyError")}, TypeError, "retry_on"),
        ({"retry_on": (KeyboardInterrupt,)}, TypeError, "retry_on"),
        ({"rng": 42}, TypeError, "rng"),
    ],
)
def test_a_bad_retry_config_is_refused_naming_the_parameter(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    with pytest.raises(error, match=rf"RetryConfig: {names} must"):
        trioflow.RetryConfig(**options)


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": True}, TypeError, "retries"),
        ({"retries": 2.0}, TypeError, "retries"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": -5}, ValueError, "timeout"),
        ({"timeout": math.nan}, ValueError, "timeout"),
        ({"timeout": math.inf}, ValueError, "timeout"),
        ({"timeout": True}, TypeError, "timeout"),
        ({"timeout": "5"}, TypeError, "timeout"),
    ],
)
def test_a_bad_step_retries_or_timeout_is_refused_naming_the_parameter(
    options: dict[str, Any], error: type[Exception], names: str
) -> None:
    async def execute(ctx: trioflow.StepContext[Any]) -> None:
        pass

    with pytest.raises(error, match=rf"step 'call': {names} must"):
        trioflow.create_step(id="call", execute=execute, **options)


def test_a_retry_config_that_is_not_one_is_refused() -> None:
    with pytest.raises(TypeError, match=r"retry_config must be a trioflow\.RetryConfig"):
        trioflow.create_workflow(id="wf", retry_config={"attempts": 3})  # type: ignore[arg-type]
