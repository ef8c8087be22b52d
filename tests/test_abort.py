"""AbortController / AbortSignal: SPEC §4, the DOM dispatch rules, and the Trio side."""

from __future__ import annotations

import gc
import logging
import threading
import weakref
from collections.abc import Callable

import pytest
import trio
import trio.testing

from trioflow._abort import AbortController, AbortEvent, AbortSignal
from trioflow._errors import AbortError, TrioflowError


def recorder() -> tuple[list[object], Callable[[str], Callable[[], None]]]:
    """A shared call log and a factory of bare listeners that append their name."""
    calls: list[object] = []

    def make(name: str) -> Callable[[], None]:
        def listener() -> None:
            calls.append(name)

        return listener

    return calls, make


# -- aborted / reason / abort() -------------------------------------------------------


def test_fresh_signal_is_not_aborted() -> None:
    signal = AbortController().signal
    assert signal.aborted is False
    assert signal.reason is None
    signal.throw_if_aborted()  # does not raise


def test_abort_without_reason_sets_a_new_abort_error() -> None:
    controller = AbortController()
    controller.abort()
    assert controller.signal.aborted is True
    assert isinstance(controller.signal.reason, AbortError)
    other = AbortController()
    other.abort(None)
    assert isinstance(other.signal.reason, AbortError)
    assert other.signal.reason is not controller.signal.reason


def test_abort_error_is_a_trioflow_error() -> None:
    assert issubclass(AbortError, TrioflowError)
    assert issubclass(AbortError, Exception)


def test_abort_keeps_reason_identity_and_second_abort_is_a_no_op() -> None:
    controller = AbortController()
    calls, make = recorder()
    controller.signal.add_event_listener("abort", make("a"))
    reason = {"why": "user"}
    controller.abort(reason)
    controller.abort(ValueError("later"))
    controller.abort()
    assert controller.signal.reason is reason
    assert calls == ["a"]


def test_abort_runs_listeners_before_returning() -> None:
    controller = AbortController()
    calls, make = recorder()
    controller.signal.add_event_listener("abort", make("a"))
    controller.signal.onabort = make("handler")
    controller.abort()
    assert calls == ["a", "handler"]


def test_abort_inside_a_listener_is_a_no_op() -> None:
    controller = AbortController()
    calls: list[object] = []

    def again() -> None:
        controller.abort("second")
        calls.append(controller.signal.reason)

    controller.signal.add_event_listener("abort", again)
    controller.abort("first")
    assert calls == ["first"]


def test_signal_cannot_be_constructed_directly() -> None:
    with pytest.raises(TypeError, match="AbortController"):
        AbortSignal()


def test_repr() -> None:
    controller = AbortController()
    assert "not aborted" in repr(controller.signal)
    controller.abort("x")
    assert "'x'" in repr(controller.signal)
    assert "AbortController" in repr(controller)


# -- throw_if_aborted -----------------------------------------------------------------


def test_throw_if_aborted_raises_an_exception_reason_itself() -> None:
    reason = KeyError("gone")
    signal = AbortSignal.abort(reason)
    with pytest.raises(KeyError) as info:
        signal.throw_if_aborted()
    assert info.value is reason


def test_throw_if_aborted_raises_the_default_abort_error() -> None:
    signal = AbortSignal.abort()
    with pytest.raises(AbortError) as info:
        signal.throw_if_aborted()
    assert info.value is signal.reason


def test_throw_if_aborted_wraps_a_non_exception_reason() -> None:
    signal = AbortSignal.abort("shutdown")
    with pytest.raises(AbortError) as info:
        signal.throwIfAborted()
    assert info.value.reason == "shutdown"
    assert "shutdown" in str(info.value)


# -- listeners: arity, event, equality ------------------------------------------------


def test_listener_arity_decides_whether_the_event_is_passed() -> None:
    controller = AbortController()
    signal = controller.signal
    got: list[object] = []

    def with_event(event: AbortEvent) -> None:
        got.append(("event", event))

    def star_args(*args: object) -> None:
        got.append(("star", args))

    def optional(x: object = "default") -> None:
        got.append(("optional", x))

    class Callable1:
        def __call__(self, event: AbortEvent) -> None:
            got.append(("callable", event))

    signal.add_event_listener("abort", with_event)
    signal.add_event_listener("abort", lambda: got.append(("lambda0",)))
    signal.add_event_listener("abort", lambda i=1: got.append(("lambda_default", i)))
    signal.add_event_listener("abort", star_args)
    signal.add_event_listener("abort", optional)
    signal.add_event_listener("abort", Callable1())
    controller.abort()

    event = got[0][1]  # type: ignore[index]
    assert isinstance(event, AbortEvent)
    assert event.type == "abort"
    assert event.target is signal
    assert got == [
        ("event", event),
        ("lambda0",),
        ("lambda_default", 1),
        ("star", ()),
        ("optional", "default"),
        ("callable", event),
    ]


def test_listener_without_readable_signature_gets_the_event() -> None:
    got: list[tuple[object, ...]] = []

    class Opaque:
        # inspect.signature() raises on this, as it does for some builtins.
        __signature__ = "unreadable"

        def __call__(self, *args: object) -> None:
            got.append(args)

    controller = AbortController()
    controller.signal.add_event_listener("abort", Opaque())
    controller.abort()
    assert len(got) == 1
    assert isinstance(got[0][0], AbortEvent)


def test_the_same_listener_is_registered_once() -> None:
    controller = AbortController()
    calls, make = recorder()
    listener = make("a")
    controller.signal.add_event_listener("abort", listener)
    controller.signal.add_event_listener("abort", listener)
    controller.signal.add_event_listener("abort", listener, once=True)
    controller.abort()
    assert calls == ["a"]


def test_equal_bound_methods_are_one_listener() -> None:
    class Step:
        def __init__(self) -> None:
            self.calls = 0

        def on_abort(self) -> None:
            self.calls += 1

    step = Step()
    controller = AbortController()
    # Each attribute access makes a new bound-method object; they compare equal.
    controller.signal.add_event_listener("abort", step.on_abort)
    controller.signal.add_event_listener("abort", step.on_abort)
    controller.abort()
    assert step.calls == 1

    other = AbortController()
    other.signal.add_event_listener("abort", step.on_abort)
    other.signal.remove_event_listener("abort", step.on_abort)
    other.abort()
    assert step.calls == 1


def test_listeners_are_held_strongly() -> None:
    controller = AbortController()
    calls: list[str] = []

    def make() -> Callable[[], None]:
        def only_referenced_by_the_signal() -> None:
            calls.append("ran")

        return only_referenced_by_the_signal

    controller.signal.add_event_listener("abort", make())
    gc.collect()
    controller.abort()
    assert calls == ["ran"]


def test_dispatch_order_is_registration_order() -> None:
    controller = AbortController()
    calls, make = recorder()
    for name in "dbeac":
        controller.signal.add_event_listener("abort", make(name))
    controller.abort()
    assert calls == list("dbeac")


def test_once_listener_is_called_once_and_removed_before_it_runs() -> None:
    controller = AbortController()
    signal = controller.signal
    calls: list[str] = []
    still_registered: list[bool] = []

    def once() -> None:
        calls.append("once")
        # The DOM removes a once-listener before invoking it.
        listeners = (signal._listeners or {}).values()
        still_registered.append(any(e.callback is once for e in listeners))

    signal.add_event_listener("abort", once, once=True)
    signal.add_event_listener("abort", lambda: calls.append("after"))
    controller.abort()
    controller.abort()
    assert calls == ["once", "after"]
    assert still_registered == [False]


def test_remove_event_listener() -> None:
    controller = AbortController()
    calls, make = recorder()
    a, b = make("a"), make("b")
    controller.signal.add_event_listener("abort", a)
    controller.signal.add_event_listener("abort", b)
    controller.signal.removeEventListener("abort", a)
    controller.signal.remove_event_listener("abort", make("never added"))
    controller.abort()
    controller.signal.remove_event_listener("abort", b)  # after abort: harmless
    assert calls == ["b"]


def test_removed_listener_can_be_added_again_at_the_end() -> None:
    controller = AbortController()
    calls, make = recorder()
    a, b = make("a"), make("b")
    controller.signal.add_event_listener("abort", a)
    controller.signal.add_event_listener("abort", b)
    controller.signal.remove_event_listener("abort", a)
    controller.signal.add_event_listener("abort", a)
    controller.abort()
    assert calls == ["b", "a"]


def test_web_api_aliases() -> None:
    assert AbortSignal.addEventListener is AbortSignal.add_event_listener
    assert AbortSignal.removeEventListener is AbortSignal.remove_event_listener
    assert AbortSignal.throwIfAborted is AbortSignal.throw_if_aborted
    controller = AbortController()
    calls, make = recorder()
    controller.signal.addEventListener("abort", make("a"), once=True)
    controller.abort()
    assert calls == ["a"]


def test_listener_added_after_abort_is_never_called() -> None:
    controller = AbortController()
    controller.abort()
    calls, make = recorder()
    controller.signal.add_event_listener("abort", make("late"))
    controller.signal.onabort = make("late handler")
    controller.abort()
    assert calls == []
    assert controller.signal.onabort is not None


def test_listener_added_during_dispatch_is_not_called() -> None:
    controller = AbortController()
    calls, make = recorder()

    def adder() -> None:
        calls.append("adder")
        controller.signal.add_event_listener("abort", make("added during dispatch"))

    controller.signal.add_event_listener("abort", adder)
    controller.abort()
    assert calls == ["adder"]


def test_listener_removed_during_dispatch_before_its_turn_is_not_called() -> None:
    controller = AbortController()
    calls, make = recorder()
    victim = make("victim")

    def remover() -> None:
        calls.append("remover")
        controller.signal.remove_event_listener("abort", victim)

    controller.signal.add_event_listener("abort", remover)
    controller.signal.add_event_listener("abort", victim)
    controller.signal.add_event_listener("abort", make("last"))
    controller.abort()
    assert calls == ["remover", "last"]


def test_wrong_event_type_or_listener_is_rejected() -> None:
    signal = AbortController().signal
    with pytest.raises(ValueError, match="'abort'"):
        signal.add_event_listener("click", lambda: None)
    with pytest.raises(ValueError, match="'abort'"):
        signal.remove_event_listener("Abort", lambda: None)
    with pytest.raises(TypeError, match="callable"):
        signal.add_event_listener("abort", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        signal.onabort = "not callable"  # type: ignore[assignment]


# -- listener errors ------------------------------------------------------------------


def test_raising_listener_is_logged_and_dispatch_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controller = AbortController()
    calls, make = recorder()

    def broken() -> None:
        raise RuntimeError("listener bug")

    controller.signal.add_event_listener("abort", broken)
    controller.signal.add_event_listener("abort", make("after"))
    with caplog.at_level(logging.ERROR, logger="trioflow"):
        controller.abort()  # does not raise
    assert calls == ["after"]
    records = [r for r in caplog.records if r.name == "trioflow"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert "broken" in records[0].getMessage()


# -- onabort --------------------------------------------------------------------------


def test_onabort_takes_the_slot_of_its_first_assignment() -> None:
    controller = AbortController()
    calls, make = recorder()
    signal = controller.signal
    assert signal.onabort is None
    signal.add_event_listener("abort", make("a"))
    handler = make("handler")
    signal.onabort = handler
    assert signal.onabort is handler
    signal.add_event_listener("abort", make("b"))
    controller.abort()
    assert calls == ["a", "handler", "b"]


def test_replacing_onabort_keeps_its_slot() -> None:
    controller = AbortController()
    calls, make = recorder()
    signal = controller.signal
    signal.add_event_listener("abort", make("a"))
    signal.onabort = make("first handler")
    signal.add_event_listener("abort", make("b"))
    signal.onabort = make("second handler")
    controller.abort()
    assert calls == ["a", "second handler", "b"]


def test_onabort_none_then_set_again_goes_to_the_end() -> None:
    controller = AbortController()
    calls, make = recorder()
    signal = controller.signal
    signal.add_event_listener("abort", make("a"))
    signal.onabort = make("first handler")
    signal.add_event_listener("abort", make("b"))
    signal.onabort = None
    assert signal.onabort is None
    signal.onabort = make("second handler")
    controller.abort()
    assert calls == ["a", "b", "second handler"]


def test_onabort_is_separate_from_an_equal_listener() -> None:
    controller = AbortController()
    calls, make = recorder()
    shared = make("shared")
    controller.signal.add_event_listener("abort", shared)
    controller.signal.onabort = shared
    controller.signal.remove_event_listener("abort", shared)  # the listener, not the slot
    controller.abort()
    assert calls == ["shared"]


def test_onabort_gets_the_event_when_it_takes_one() -> None:
    controller = AbortController()
    got: list[AbortEvent] = []
    controller.signal.onabort = got.append
    controller.abort()
    assert len(got) == 1
    assert got[0].target is controller.signal


def test_onabort_cleared_during_dispatch_before_its_turn_is_not_called() -> None:
    controller = AbortController()
    calls, make = recorder()

    def clear() -> None:
        calls.append("clear")
        controller.signal.onabort = None

    controller.signal.add_event_listener("abort", clear)
    controller.signal.onabort = make("handler")
    controller.abort()
    assert calls == ["clear"]


# -- AbortSignal.abort ----------------------------------------------------------------


def test_static_abort_gives_an_aborted_signal() -> None:
    signal = AbortSignal.abort()
    assert signal.aborted
    assert isinstance(signal.reason, AbortError)
    reason = object()
    assert AbortSignal.abort(reason).reason is reason
    assert AbortSignal.abort().reason is not signal.reason


# -- AbortSignal.any ------------------------------------------------------------------


def test_any_aborts_with_the_first_source_reason() -> None:
    a, b = AbortController(), AbortController()
    combined = AbortSignal.any([a.signal, b.signal])
    assert not combined.aborted
    b.abort("b first")
    assert combined.aborted
    assert combined.reason == "b first"
    a.abort("a later")
    assert combined.reason == "b first"


def test_any_takes_any_iterable() -> None:
    a, b = AbortController(), AbortController()
    from_generator = AbortSignal.any(s for s in (a.signal, b.signal))
    from_tuple = AbortSignal.any((a.signal,))
    from_dict_keys = AbortSignal.any({b.signal: 1}.keys())
    empty = AbortSignal.any([])
    b.abort()
    assert from_generator.aborted and from_dict_keys.aborted
    assert not from_tuple.aborted and not empty.aborted


@pytest.mark.parametrize("bad", [42, None, AbortController().signal])
def test_any_rejects_a_non_iterable(bad: object) -> None:
    with pytest.raises(TypeError, match="iterable"):
        AbortSignal.any(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [[AbortController().signal, 1], "ab", [AbortController()]])
def test_any_rejects_a_non_signal_item(bad: object) -> None:
    with pytest.raises(TypeError, match="AbortSignal"):
        AbortSignal.any(bad)  # type: ignore[arg-type]


def test_any_with_an_already_aborted_input_is_aborted_at_once() -> None:
    live = AbortController()
    first = AbortSignal.abort("first")
    second = AbortSignal.abort("second")
    combined = AbortSignal.any([live.signal, first, second])
    assert combined.aborted
    assert combined.reason == "first"
    calls, make = recorder()
    combined.add_event_listener("abort", make("late"))
    live.abort()
    assert calls == []
    assert combined.reason == "first"


def test_any_dependent_is_aborted_before_source_listeners_and_dispatched_after() -> None:
    source = AbortController()
    dependent = AbortSignal.any([source.signal])
    seen: list[object] = []

    def source_listener() -> None:
        seen.append(("source", dependent.aborted, dependent.reason))

    source.signal.add_event_listener("abort", source_listener)
    dependent.add_event_listener("abort", lambda: seen.append(("dependent",)))
    source.signal.add_event_listener("abort", lambda: seen.append(("source 2",)))
    reason = ValueError("stop")
    source.abort(reason)
    assert seen == [("source", True, reason), ("source 2",), ("dependent",)]
    assert dependent.reason is reason


def test_any_dependents_of_one_source_dispatch_in_creation_order() -> None:
    source = AbortController()
    calls, make = recorder()
    dependents = [AbortSignal.any([source.signal]) for _ in range(5)]
    for i, dependent in enumerate(dependents):
        dependent.add_event_listener("abort", make(f"d{i}"))
    source.signal.add_event_listener("abort", make("source"))
    source.abort()
    assert calls == ["source", "d0", "d1", "d2", "d3", "d4"]


def test_any_of_any_flattens_to_the_real_sources() -> None:
    a, b = AbortController(), AbortController()
    calls, make = recorder()
    inner = AbortSignal.any([a.signal])
    outer = AbortSignal.any([inner, b.signal])
    inner.add_event_listener("abort", make("inner"))
    outer.add_event_listener("abort", make("outer"))
    a.signal.add_event_listener("abort", make("a"))
    assert outer._sources == (a.signal, b.signal)
    a.abort("from a")
    # Both are direct dependents of a: aborted together, dispatched in creation order.
    assert calls == ["a", "inner", "outer"]
    assert outer.reason == "from a"


def test_any_of_any_works_after_the_inner_signal_is_gone() -> None:
    a = AbortController()
    outer = AbortSignal.any([AbortSignal.any([a.signal])])
    gc.collect()
    a.abort("why")
    assert outer.aborted
    assert outer.reason == "why"


def test_any_dependents_are_weakly_referenced_by_their_sources() -> None:
    source = AbortController()
    ref = weakref.ref(AbortSignal.any([source.signal]))
    gc.collect()
    assert ref() is None
    source.abort()  # a collected dependent is skipped


def test_any_dependent_with_a_listener_stays_alive_while_a_source_can_abort() -> None:
    source = AbortController()
    calls, make = recorder()
    AbortSignal.any([source.signal]).add_event_listener("abort", make("kept"))
    gc.collect()
    source.abort()
    assert calls == ["kept"]


def test_any_dependent_released_once_its_listeners_are_removed() -> None:
    source = AbortController()
    dependent = AbortSignal.any([source.signal])
    _calls, make = recorder()
    handler = make("h")
    dependent.add_event_listener("abort", handler)
    dependent.remove_event_listener("abort", handler)
    ref = weakref.ref(dependent)
    del dependent
    gc.collect()
    assert ref() is None


# -- AbortSignal.timeout --------------------------------------------------------------


async def test_timeout_aborts_with_timeout_error_after_trio_seconds(autojump_clock: object) -> None:
    start = trio.current_time()
    signal = AbortSignal.timeout(5)
    assert not signal.aborted
    await signal.wait()
    assert trio.current_time() == start + 5
    assert type(signal.reason) is TimeoutError
    assert "5" in str(signal.reason)
    with pytest.raises(TimeoutError):
        signal.throw_if_aborted()


async def test_timeout_zero_aborts_after_a_scheduling_round(autojump_clock: object) -> None:
    start = trio.current_time()
    signal = AbortSignal.timeout(0)
    assert not signal.aborted
    await signal.wait()
    assert trio.current_time() == start


async def test_earlier_timeout_added_later_fires_first(autojump_clock: object) -> None:
    start = trio.current_time()
    fired: list[tuple[str, float]] = []
    late = AbortSignal.timeout(10)
    early = AbortSignal.timeout(3)
    late.add_event_listener("abort", lambda: fired.append(("late", trio.current_time())))
    early.add_event_listener("abort", lambda: fired.append(("early", trio.current_time())))
    await late.wait()
    assert fired == [("early", start + 3), ("late", start + 10)]


async def test_timeouts_with_equal_deadlines_abort_in_creation_order(
    autojump_clock: object,
) -> None:
    calls, make = recorder()
    # The same deadline, reached from different creation times.
    first = AbortSignal.timeout(4)
    second = AbortSignal.timeout(4)
    await trio.sleep(1)
    third = AbortSignal.timeout(3)
    for name, signal in [("third", third), ("first", first), ("second", second)]:
        signal.add_event_listener("abort", make(name))
    await trio.sleep(10)
    assert calls == ["first", "second", "third"]


async def test_timeout_inside_any(autojump_clock: object) -> None:
    start = trio.current_time()
    controller = AbortController()
    combined = AbortSignal.any([controller.signal, AbortSignal.timeout(2)])
    await combined.wait()
    assert trio.current_time() == start + 2
    assert isinstance(combined.reason, TimeoutError)


async def test_timeout_argument_checks() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        AbortSignal.timeout(-1)
    with pytest.raises(ValueError, match=">= 0"):
        AbortSignal.timeout(float("nan"))
    with pytest.raises(TypeError, match="number"):
        AbortSignal.timeout("5")  # type: ignore[arg-type]


async def test_infinite_timeout_never_aborts(autojump_clock: object) -> None:
    signal = AbortSignal.timeout(float("inf"))
    await trio.sleep(10**9)
    assert not signal.aborted


def test_timeout_outside_trio_run_raises() -> None:
    with pytest.raises(RuntimeError, match=r"trio\.run"):
        AbortSignal.timeout(1)


@pytest.mark.slow
def test_pending_timeout_does_not_keep_trio_run_alive() -> None:
    signals: list[AbortSignal] = []

    async def main() -> None:
        signals.append(AbortSignal.timeout(1000))

    # Real clock, in a thread: if the timer kept the run alive it would not finish.
    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert not signals[0].aborted


def test_pending_timeout_does_not_fire_after_main_returns() -> None:
    signals: list[AbortSignal] = []

    async def main() -> None:
        signals.append(AbortSignal.timeout(1000))

    # An autojump clock would reach the deadline if the timer task outlived main.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert not signals[0].aborted


def test_timeouts_work_in_successive_runs() -> None:
    for _ in range(2):

        async def main() -> float:
            start = trio.current_time()
            await AbortSignal.timeout(7).wait()
            return trio.current_time() - start

        assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == 7


# -- Trio: wait() ---------------------------------------------------------------------


async def test_wait_returns_when_aborted(autojump_clock: object) -> None:
    controller = AbortController()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(controller.signal.wait)
        await trio.sleep(3)
        controller.abort()
    assert trio.current_time() == start + 3


async def test_wait_on_an_aborted_signal_returns_at_once_and_checkpoints() -> None:
    signal = AbortSignal.abort()
    with trio.testing.assert_checkpoints():
        await signal.wait()
    with trio.CancelScope() as scope:
        scope.cancel()
        await signal.wait()
        pytest.fail("an aborted wait() still raises Cancelled when cancelled")
    assert scope.cancelled_caught


async def test_wait_wakes_every_waiter() -> None:
    controller = AbortController()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await controller.signal.wait()
        woken.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(waiter, i)
        await trio.testing.wait_all_tasks_blocked()
        assert woken == []
        controller.abort()
    assert sorted(woken) == [0, 1, 2, 3]


async def test_wait_is_cancellable(autojump_clock: object) -> None:
    controller = AbortController()
    start = trio.current_time()
    with trio.move_on_after(2) as scope:
        await controller.signal.wait()
    assert scope.cancelled_caught
    assert trio.current_time() == start + 2
    assert not controller.signal.aborted
    # A cancelled waiter does not break later ones.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(controller.signal.wait)
        await trio.testing.wait_all_tasks_blocked()
        controller.abort()


async def test_wait_on_a_dependent() -> None:
    source = AbortController()
    dependent = AbortSignal.any([source.signal])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dependent.wait)
        await trio.testing.wait_all_tasks_blocked()
        source.abort()
    assert dependent.aborted


# -- Trio: threads and cancel scopes --------------------------------------------------


async def test_aborted_is_readable_from_a_worker_thread() -> None:
    controller = AbortController()
    signal = controller.signal
    assert await trio.to_thread.run_sync(lambda: signal.aborted) is False
    controller.abort()
    assert await trio.to_thread.run_sync(lambda: signal.aborted) is True


async def test_worker_thread_sees_the_abort_while_running() -> None:
    controller = AbortController()
    signal = controller.signal
    seen = threading.Event()

    def poll() -> bool:
        while not signal.aborted:
            seen.wait(0.001)
        return True

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, poll)
            await trio.testing.wait_all_tasks_blocked()
            controller.abort()


async def test_cancel_scope_is_cancelled_when_the_signal_aborts(autojump_clock: object) -> None:
    controller = AbortController()
    start = trio.current_time()
    after_sleep: list[bool] = []

    async def step() -> None:
        with controller.signal.cancel_scope() as scope:
            await trio.sleep_forever()
            after_sleep.append(True)
        assert scope.cancelled_caught

    async with trio.open_nursery() as nursery:
        nursery.start_soon(step)
        await trio.sleep(4)
        controller.abort()
    assert after_sleep == []
    assert trio.current_time() == start + 4


async def test_cancel_scope_on_an_aborted_signal_is_already_cancelled() -> None:
    signal = AbortSignal.abort()
    with signal.cancel_scope() as scope:
        assert scope.cancel_called
        await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_cancel_scope_unregisters_its_listener_on_exit() -> None:
    controller = AbortController()
    with controller.signal.cancel_scope() as scope:
        await trio.lowlevel.checkpoint()
    assert controller.signal._listeners is None
    controller.abort()
    assert not scope.cancel_called


async def test_cancel_scope_does_not_swallow_other_errors() -> None:
    controller = AbortController()
    with pytest.raises(KeyError), controller.signal.cancel_scope():
        raise KeyError("boom")
    assert controller.signal._listeners is None


async def test_cancel_scope_of_a_timeout(autojump_clock: object) -> None:
    start = trio.current_time()
    with AbortSignal.timeout(6).cancel_scope() as scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == start + 6


# -- memory ---------------------------------------------------------------------------


def test_signal_uses_slots_and_stays_small() -> None:
    import sys

    signal = AbortController().signal
    assert not hasattr(signal, "__dict__")
    assert not hasattr(AbortController(), "__dict__")
    assert signal._listeners is None and signal._event is None
    assert sys.getsizeof(signal) <= 128
