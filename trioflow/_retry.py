"""How failed steps are retried: `RetryConfig`, and the checks of a step's numbers.

Every number is checked when it is given, not when a step first fails hours later: a
NaN delay would make ``trio.sleep`` raise inside a back-off, an infinite one would hang
the run for ever, and ``attempts=True`` would quietly mean one retry.

Jitter draws from a `random.Random`: the config's own ``rng`` when given (seed it, and
the same program waits the same virtual times on every run under ``MockClock``), else
one shared source seeded by the operating system. (Rejected: a global seed in
`trioflow.testing`, which would tie every workflow of a process to one sequence.)
"""

from __future__ import annotations

import math
import random
from typing import Any

import msgspec

# The source of jitter for configs without their own `rng`.
_shared_rng = random.Random()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_seconds(owner: str, name: str, value: object, *, minimum: float = 0.0) -> float:
    """A finite number of seconds >= `minimum` (``True`` is not a number of seconds)."""
    if not _is_number(value):
        raise TypeError(f"{owner}: {name} must be a number of seconds, got {value!r}")
    assert isinstance(value, int | float)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(
            f"{owner}: {name} must be a finite number of seconds >= {minimum:g}, got {value!r}"
        )
    return float(value)


def check_count(owner: str, name: str, value: object) -> int:
    """A whole number >= 0 (``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be a whole number >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"{owner}: {name} must be a whole number >= 0, got {value!r}")
    return value


def check_timeout(owner: str, value: object) -> float | None:
    """A step's ``timeout=``: None, or a finite number of seconds > 0."""
    if value is None:
        return None
    seconds = check_seconds(owner, "timeout", value)
    if seconds == 0:
        raise ValueError(f"{owner}: timeout must be a number of seconds > 0, got {value!r}")
    return seconds


class RetryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Retries of failed steps: `attempts` more tries, the n-th after
    ``min(delay * backoff**(n-1), max_delay)`` seconds of Trio's clock, plus a random
    fraction of up to `jitter` of that (``jitter=0.5``: up to 50% more), drawn from
    `rng` (a `random.Random`; seed it for the same delays on every run).

    Only exceptions that are instances of `retry_on` are retried; any other exception
    fails the step at once.
    """

    attempts: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    rng: Any = None

    def __post_init__(self) -> None:
        owner = "RetryConfig"
        check_count(owner, "attempts", self.attempts)
        check_seconds(owner, "delay", self.delay)
        if not _is_number(self.backoff):
            raise TypeError(f"{owner}: backoff must be a number >= 1, got {self.backoff!r}")
        if not math.isfinite(self.backoff) or self.backoff < 1:
            raise ValueError(
                f"{owner}: backoff must be a finite number >= 1 (1: the same delay every "
                f"time), got {self.backoff!r}"
            )
        if self.max_delay is not None:
            check_seconds(owner, "max_delay", self.max_delay)
        if not _is_number(self.jitter):
            raise TypeError(f"{owner}: jitter must be a fraction from 0 to 1, got {self.jitter!r}")
        if not 0 <= self.jitter <= 1:  # also false for NaN
            raise ValueError(
                f"{owner}: jitter must be a fraction from 0 to 1 (0.25: up to 25% more "
                f"delay), got {self.jitter!r}"
            )
        retry_on = self.retry_on
        if not (
            isinstance(retry_on, tuple)
            and retry_on
            and all(isinstance(t, type) and issubclass(t, Exception) for t in retry_on)
        ):
            raise TypeError(
                f"{owner}: retry_on must be a non-empty tuple of exception classes, such as "
                f"(ConnectionError, TimeoutError), got {retry_on!r}"
            )
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise TypeError(
                f"{owner}: rng must be a random.Random (for example random.Random(42)), "
                f"got {self.rng!r}"
            )

    def delay_before(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry), with a
        new draw of jitter on every call."""
        try:
            delay = self.delay * self.backoff ** (retry - 1)
        except OverflowError:  # a long run of retries: the cap (if any) decides
            delay = math.inf
        if self.max_delay is not None:
            delay = min(delay, self.max_delay)
        if self.jitter and delay > 0:
            rng = self.rng if self.rng is not None else _shared_rng
            delay += delay * self.jitter * rng.random()
        return delay

    def retries(self, error: BaseException) -> bool:
        """Whether `error` is one that is retried."""
        return isinstance(error, self.retry_on)


NO_RETRIES = RetryConfig()
