"""The pure core of a run: which outcome an execution ends with, what `cancel()`
answers, in which order interrupted steps are recorded, and which suspended step a
resume means. Plain functions over plain data: no awaits, no I/O, no clock — so they
are tested without Trio, and the executor and the run only apply what they decide.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from ._results import CancelResult, RunStatus

Outcome = Literal["success", "failed", "suspended"]


def final_status(outcome: Outcome | None, *, cancel_requested: bool) -> RunStatus:
    """The one status an execution ends with. A requested cancel wins over whatever the
    step loop reached (even a last step that finished in the same tick), so what
    `cancel()` returns, the result and the events always agree. No outcome and no cancel
    means the execution was interrupted from outside: the caller records nothing."""
    if cancel_requested:
        return "canceled"
    if outcome is None:
        raise ValueError("an execution interrupted from outside has no final status")
    return outcome


def cancel_result(status: RunStatus) -> CancelResult:
    """What `Run.cancel()` answers for a run now in `status`."""
    if status == "canceled":
        return CancelResult(message="Workflow run canceled", status="canceled")
    return CancelResult(message=f"Workflow run already {status}", status=status)


def cancel_order(in_flight: Mapping[str, tuple[int, ...]], under: tuple[int, ...]) -> list[str]:
    """The in-flight step paths whose key (of declaration indices) starts with `under`,
    in the order their ``'canceled'`` records are written: declaration (or input) order,
    nested steps before the step that holds them — never the order Trio happens to wake
    them."""
    n = len(under)
    return sorted(
        (path for path, key in in_flight.items() if key[:n] == under),
        key=lambda path: (*in_flight[path], math.inf),  # a step sorts after its children
    )


def suspended_leaves(statuses: Iterable[tuple[str, str]], path: str) -> list[str]:
    """Of (path, status) pairs, the suspended steps at or under `path` that hold no
    suspended step below them (a suspended nested workflow is not itself resumed)."""
    paths = [
        p
        for p, status in statuses
        if status == "suspended" and (p == path or p.startswith(path + "."))
    ]
    return [p for p in paths if not any(q.startswith(p + ".") for q in paths)]


def resolve_suspended(run_id: str, leaves: Sequence[str], wanted: str | None) -> str:
    """The suspended path a resume means: `wanted` as a whole path or its last part, or
    the only suspended step when `wanted` is None. `ValueError` names the choices."""
    if wanted is None:
        if len(leaves) == 1:
            return leaves[0]
        raise ValueError(
            f"run {run_id!r} has {len(leaves)} suspended steps {list(leaves)}; name one with step="
        )
    matches = [p for p in leaves if p == wanted or p.endswith("." + wanted)]
    if len(matches) != 1:
        raise ValueError(
            f"step {wanted!r} is not a suspended step of run {run_id!r} "
            f"(suspended: {list(leaves)}); pass one of those paths as step="
        )
    return matches[0]
