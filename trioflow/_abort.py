"""``AbortController`` and ``AbortSignal``: the Web API's cancellation token, on Trio.

Dispatch follows the WHATWG DOM standard ("signal abort", "dispatch", "AbortSignal.any")
and the HTML rule for the ``onabort`` event-handler slot. The Trio side adds ``wait()``,
``cancel_scope()`` and a Trio-clock ``timeout()``.
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import itertools
import logging
import math
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import ClassVar, Final, Literal, TypeAlias

import trio

from ._errors import AbortError

__all__ = ["AbortController", "AbortEvent", "AbortSignal"]

logger: Final = logging.getLogger("trioflow")

Listener: TypeAlias = "Callable[[AbortEvent], object] | Callable[[], object]"

# Guards the constructor: a bare AbortSignal() could never be aborted by anyone.
_PRIVATE: Final = object()

_POSITIONAL: Final = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
)


def _wants_event(listener: Callable[..., object]) -> bool:
    """Whether ``listener`` has a required positional parameter (it then gets the event)."""
    try:
        signature = inspect.signature(listener)
    except (TypeError, ValueError):
        # Some builtins hide their signature; passing the event is the Web API's default.
        return True
    return any(
        p.kind in _POSITIONAL and p.default is inspect.Parameter.empty
        for p in signature.parameters.values()
    )


def _check_type(type: str) -> None:
    if type != "abort":
        raise ValueError(f"an AbortSignal only fires 'abort' events, not {type!r}; use 'abort'")


class AbortEvent:
    """The event passed to abort listeners: ``type == "abort"``, ``target`` the signal."""

    __slots__ = ("target",)

    type: ClassVar[Literal["abort"]] = "abort"

    def __init__(self, target: AbortSignal) -> None:
        self.target: Final = target

    def __repr__(self) -> str:
        return f"<AbortEvent type='abort' target={self.target!r}>"


class _Entry:
    """One registered listener; ``removed`` lets dispatch skip it (the DOM rule)."""

    __slots__ = ("callback", "once", "pass_event", "removed")

    def __init__(self, callback: Callable[..., object], once: bool) -> None:
        self.callback = callback
        self.once = once
        # Decided once, at add time: inspect.signature is slow and dispatch must be cheap.
        self.pass_event = _wants_event(callback)
        self.removed = False


_UNHASHABLE: Final = object()


def _key(listener: object) -> object:
    """The dict key of a listener: itself, or `_UNHASHABLE` for an unhashable callable."""
    try:
        hash(listener)
    except TypeError:
        return _UNHASHABLE
    return listener


class _Dependents:
    """A source's dependent signals: weak and ordered, plus strong pins for the ones that
    have listeners (the DOM keeps those alive while a source can still abort them)."""

    __slots__ = ("pinned", "weak")

    def __init__(self) -> None:
        self.weak: weakref.WeakValueDictionary[int, AbortSignal] = weakref.WeakValueDictionary()
        self.pinned: dict[int, AbortSignal] = {}


class AbortSignal:
    """Tells whoever holds it that an operation should stop; aborted once, never reset.

    Get one from :class:`AbortController`, or from :meth:`AbortSignal.abort`,
    :meth:`AbortSignal.any` or :meth:`AbortSignal.timeout`.
    """

    # Every slot but the two flags stays None until used: thousands of runs hold one.
    __slots__ = (
        "__weakref__",
        "_aborted",
        "_dependents",
        "_event",
        "_handler",
        "_listeners",
        "_reason",
        "_sources",
    )

    def __init__(self, _key: object = None) -> None:
        if _key is not _PRIVATE:
            raise TypeError(
                "AbortSignal cannot be created directly; use AbortController().signal, "
                "AbortSignal.abort(), AbortSignal.any() or AbortSignal.timeout()"
            )
        self._aborted = False
        self._reason: object = None
        # Insertion-ordered, keyed by the listener itself (equal listeners share a key),
        # so that add and remove are O(1): a step that adds a listener on every iteration
        # of a long loop must not make each add scan all the earlier ones.
        self._listeners: dict[object, _Entry] | None = None
        self._handler: _Entry | None = None
        self._event: trio.Event | None = None
        self._dependents: _Dependents | None = None
        # None: not a dependent. A tuple: made by any(), holding its (flattened) sources.
        self._sources: tuple[AbortSignal, ...] | None = None

    def __repr__(self) -> str:
        if self._aborted:
            return f"<AbortSignal aborted reason={self._reason!r}>"
        return "<AbortSignal not aborted>"

    # -- state -----------------------------------------------------------------------

    @property
    def aborted(self) -> bool:
        """Whether the signal is aborted; a plain read, safe from a worker thread."""
        return self._aborted

    @property
    def reason(self) -> object:
        """``None`` until aborted, then the abort reason."""
        return self._reason

    def throw_if_aborted(self) -> None:
        """Raise the reason if it is an exception, else an ``AbortError`` carrying it."""
        if not self._aborted:
            return
        reason = self._reason
        if isinstance(reason, BaseException):
            raise reason
        raise AbortError(f"The operation was aborted: {reason!r}", reason=reason)

    throwIfAborted = throw_if_aborted  # the Web API name

    # -- listeners -------------------------------------------------------------------

    def add_event_listener(self, type: str, listener: Listener, *, once: bool = False) -> None:
        """Call ``listener`` when the signal aborts; an equal listener is added once.

        ``listener`` is called with an :class:`AbortEvent` when it has a required
        positional parameter, bare otherwise. Added after the abort, it is never called.
        """
        _check_type(type)
        if not callable(listener):
            raise TypeError(f"an abort listener must be callable, got {listener!r}")
        if self._aborted:
            return
        listeners = self._listeners
        if listeners is None:
            listeners = self._listeners = {}
        key = _key(listener)
        if key in listeners or (key is _UNHASHABLE and self._find(listener) is not None):
            return
        entry = _Entry(listener, once)
        listeners[entry if key is _UNHASHABLE else key] = entry
        self._pin()

    def remove_event_listener(self, type: str, listener: Listener) -> None:
        """Remove ``listener`` (compared with ``==``); a listener not added is ignored."""
        _check_type(type)
        entry = self._find(listener)
        if entry is not None:
            self._drop(entry)

    def _find(self, listener: Listener) -> _Entry | None:
        """The entry of an added listener equal to `listener`: one dict lookup, so adding
        and removing cost the same however many listeners a signal has."""
        listeners = self._listeners
        if listeners is None:
            return None
        key = _key(listener)
        if key is not _UNHASHABLE:
            entry = listeners.get(key)
            return entry if entry is not None and entry is not self._handler else None
        for entry in listeners.values():  # an unhashable callable: compare one by one
            if entry is not self._handler and entry.callback == listener:
                return entry
        return None

    addEventListener = add_event_listener  # the Web API name
    removeEventListener = remove_event_listener  # the Web API name

    @property
    def onabort(self) -> Listener | None:
        """The event-handler slot, dispatched in order with the listeners."""
        handler = self._handler
        return None if handler is None else handler.callback

    @onabort.setter
    def onabort(self, handler: Listener | None) -> None:
        if handler is None:
            old = self._handler
            if old is not None:
                self._handler = None
                self._drop(old)
            return
        if not callable(handler):
            raise TypeError(f"onabort must be callable or None, got {handler!r}")
        entry = self._handler
        if entry is not None:
            # The HTML rule: a replaced handler keeps its place in the dispatch order.
            entry.callback = handler
            entry.pass_event = _wants_event(handler)
            return
        entry = self._handler = _Entry(handler, once=False)
        if self._aborted:
            return  # kept for the getter; it will never run
        if self._listeners is None:
            self._listeners = {}
        self._listeners[entry] = entry  # keyed by itself: never equal to a listener
        self._pin()

    def _drop(self, entry: _Entry) -> None:
        entry.removed = True
        listeners = self._listeners
        if listeners is not None:
            key = entry if entry is self._handler else _key(entry.callback)
            if listeners.get(key) is not entry:
                key = entry  # an unhashable callable is keyed by its entry
            listeners.pop(key, None)
            if not listeners:
                self._listeners = None
                self._unpin()

    # -- Trio ------------------------------------------------------------------------

    async def wait(self) -> None:
        """Return once the signal is aborted; a checkpoint even if it already is."""
        if self._aborted:
            await trio.lowlevel.checkpoint()
            return
        event = self._event
        if event is None:
            event = self._event = trio.Event()
        await event.wait()

    @contextlib.contextmanager
    def cancel_scope(self) -> Iterator[trio.CancelScope]:
        """A ``trio.CancelScope`` for the block, cancelled when the signal aborts."""
        scope = trio.CancelScope()
        if self._aborted:
            scope.cancel()
            with scope:
                yield scope
            return

        def cancel() -> None:
            scope.cancel()

        self.add_event_listener("abort", cancel)
        try:
            with scope:
                yield scope
        finally:
            self.remove_event_listener("abort", cancel)

    # -- aborting --------------------------------------------------------------------

    def _abort(self, reason: object) -> None:
        """The DOM's "signal abort": mark self and dependents aborted, then dispatch."""
        if self._aborted:
            return
        if reason is None:
            reason = AbortError()
        # Reason first, so a thread that sees ``aborted`` also sees the reason.
        self._reason = reason
        self._aborted = True
        to_dispatch: list[AbortSignal] = []
        dependents = self._dependents
        if dependents is not None:
            self._dependents = None
            for dependent in list(dependents.weak.values()):
                if not dependent._aborted:
                    dependent._reason = reason
                    dependent._aborted = True
                    to_dispatch.append(dependent)
        self._run_abort_steps()
        for dependent in to_dispatch:
            dependent._run_abort_steps()

    def _run_abort_steps(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()
        listeners = self._listeners
        if listeners is not None:
            target_event = AbortEvent(self)
            # Iterate a copy and check ``removed``: removal during dispatch must stick.
            for entry in tuple(listeners.values()):
                if entry.removed:
                    continue
                if entry.once:
                    self._drop(entry)
                callback = entry.callback
                try:
                    if entry.pass_event:
                        callback(target_event)
                    else:
                        callback()
                except Exception:
                    logger.exception("abort listener %r raised", callback)
            self._listeners = None
        self._unpin()
        if self._sources:
            self._sources = ()

    def _pin(self) -> None:
        for source in self._sources or ():
            dependents = source._dependents
            if dependents is not None:
                dependents.pinned[id(self)] = self

    def _unpin(self) -> None:
        for source in self._sources or ():
            dependents = source._dependents
            if dependents is not None:
                dependents.pinned.pop(id(self), None)

    # -- constructors ----------------------------------------------------------------

    @staticmethod
    def abort(reason: object = None) -> AbortSignal:
        """An already aborted signal (reason ``None`` means a new ``AbortError``)."""
        signal = AbortSignal(_PRIVATE)
        signal._abort(reason)
        return signal

    @staticmethod
    def any(signals: Iterable[AbortSignal]) -> AbortSignal:
        """A signal that aborts when the first of ``signals`` does, with its reason."""
        try:
            iterator = iter(signals)
        except TypeError:
            raise TypeError(
                f"AbortSignal.any() takes an iterable of AbortSignal, got {signals!r}"
            ) from None
        inputs = list(iterator)
        for item in inputs:
            if not isinstance(item, AbortSignal):
                raise TypeError(f"AbortSignal.any() takes only AbortSignal objects, got {item!r}")
        result = AbortSignal(_PRIVATE)
        for item in inputs:
            if item._aborted:
                result._reason = item._reason
                result._aborted = True
                result._sources = ()
                return result
        # Flatten to the real sources, so any(any(...)) costs one hop like the DOM's.
        sources: dict[int, AbortSignal] = {}
        for item in inputs:
            for source in (item,) if item._sources is None else item._sources:
                if not source._aborted:
                    sources.setdefault(id(source), source)
        result._sources = tuple(sources.values())
        for source in result._sources:
            if source._dependents is None:
                source._dependents = _Dependents()
            source._dependents.weak[id(result)] = result
        return result

    def _derive(self) -> AbortSignal:
        """A dependent signal of this one alone (``any([self])``, without the checks): a
        step's own signal, dropped with `_release` when the step ends."""
        result = AbortSignal(_PRIVATE)
        if self._aborted:
            result._reason = self._reason
            result._aborted = True
            result._sources = ()
            return result
        sources = (self,) if self._sources is None else self._sources
        result._sources = sources
        for source in sources:
            if source._dependents is None:
                source._dependents = _Dependents()
            source._dependents.weak[id(result)] = result
        return result

    def _release(self) -> None:
        """Stop following this dependent signal's sources: whatever it was for has ended,
        and its listeners must not pile up on them (nor keep it alive) for the rest of
        the run."""
        for source in self._sources or ():
            dependents = source._dependents
            if dependents is not None:
                dependents.weak.pop(id(self), None)
                dependents.pinned.pop(id(self), None)
        if self._sources:
            self._sources = ()

    @staticmethod
    def timeout(seconds: float) -> AbortSignal:
        """A signal that aborts with a ``TimeoutError`` after ``seconds`` of Trio's clock.

        Call it inside ``trio.run``; a pending timeout does not keep the run alive.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"AbortSignal.timeout() takes seconds as a number, got {seconds!r}")
        if math.isnan(seconds) or seconds < 0:
            raise ValueError(
                f"AbortSignal.timeout() needs seconds >= 0, got {seconds!r}; pass 0 or more"
            )
        try:
            now = trio.current_time()
        except RuntimeError:
            raise RuntimeError(
                "AbortSignal.timeout() must be called inside trio.run: it runs on Trio's clock"
            ) from None
        signal = AbortSignal(_PRIVATE)
        if not math.isinf(seconds):
            reason = f"signal timed out after {seconds:g} seconds"
            call_at(now + seconds, lambda: signal._abort(TimeoutError(reason)))
        return signal


class AbortController:
    """Owns an :class:`AbortSignal` and aborts it."""

    __slots__ = ("_signal",)

    def __init__(self) -> None:
        self._signal = AbortSignal(_PRIVATE)

    def __repr__(self) -> str:
        return f"<AbortController signal={self._signal!r}>"

    @property
    def signal(self) -> AbortSignal:
        """The signal this controller aborts."""
        return self._signal

    def abort(self, reason: object = None) -> None:
        """Abort the signal and run every listener before returning; never raises for a
        listener's error. A second call does nothing. Call it from the Trio thread."""
        self._signal._abort(reason)


# Creation order breaks ties between equal deadlines.
_sequence: Final = itertools.count()


class Timer:
    """A callback due at a deadline of Trio's clock, run by the per-run timer task.
    `cancel()` drops it (a step that finished before its timeout)."""

    __slots__ = ("callback", "timers")

    def __init__(self, timers: _Timers, callback: Callable[[], object]) -> None:
        self.timers: _Timers | None = timers
        self.callback = callback

    def cancel(self) -> None:
        timers, self.timers = self.timers, None
        if timers is not None:
            timers.dropped(self)


class _Timers:
    """The per-run timer: one system task sleeping until the earliest deadline."""

    __slots__ = ("heap", "scope", "stale", "started")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Timer]] = []
        self.scope: trio.CancelScope | None = None
        self.started = False
        self.stale = 0  # cancelled timers still in the heap

    def add(self, deadline: float, callback: Callable[[], object]) -> Timer:
        timer = Timer(self, callback)
        heapq.heappush(self.heap, (deadline, next(_sequence), timer))
        if not self.started:
            self.started = True
            # A system task: cancelled when the main task ends, so it never keeps the
            # run alive, and it is not a hidden child of whichever task asked first.
            trio.lowlevel.spawn_system_task(self.serve, name="trioflow.AbortSignal.timeout")
        elif self.scope is not None and deadline < self.scope.deadline:
            self.scope.deadline = deadline
        return timer

    def dropped(self, timer: Timer) -> None:
        self.stale += 1
        heap = self.heap
        if heap[0][2] is timer:
            # The earliest timer went: pop the cancelled ones off the top and sleep only
            # until the next live deadline. Left in place, the timer task would wake at
            # the dead deadline, and under MockClock autojump would jump straight to it
            # (a step that ended at t=0.1 with timeout=30 moved virtual time to t=30).
            while heap and heap[0][2].timers is None:
                heapq.heappop(heap)
                self.stale -= 1
            if self.scope is not None:
                self.scope.deadline = heap[0][0] if heap else math.inf
        # Cancelled timers deeper in the heap are skipped when they come due; once they
        # are most of it the heap is rebuilt, so a loop of steps with long timeouts keeps
        # it small.
        if self.stale > 32 and self.stale * 2 > len(heap):
            heap[:] = [entry for entry in heap if entry[2].timers is not None]
            heapq.heapify(heap)
            self.stale = 0

    async def serve(self) -> None:
        heap = self.heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                timer = heapq.heappop(heap)[2]
                if timer.timers is None:
                    self.stale -= 1
                    continue
                timer.timers = None
                timer.callback()
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self.scope = scope
                await trio.sleep_forever()
            self.scope = None


def call_at(deadline: float, callback: Callable[[], object]) -> Timer:
    """Run `callback` (synchronously, on the timer task) at `deadline` of Trio's clock,
    unless the returned `Timer` is cancelled first. Call it inside ``trio.run``."""
    try:
        timers = _TIMERS.get()
    except LookupError:
        timers = _Timers()
        _TIMERS.set(timers)
    except RuntimeError:
        raise RuntimeError("trioflow's timers run on Trio's clock: call inside trio.run") from None
    return timers.add(deadline, callback)


_TIMERS: Final[trio.lowlevel.RunVar[_Timers]] = trio.lowlevel.RunVar("trioflow_abort_timers")
