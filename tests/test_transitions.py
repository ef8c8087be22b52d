"""The pure core, tested without Trio: plain functions over plain data."""

from __future__ import annotations

import pytest

from trioflow import CancelResult
from trioflow._transitions import (
    cancel_order,
    cancel_result,
    final_status,
    resolve_suspended,
    suspended_leaves,
)


@pytest.mark.parametrize("outcome", ["success", "failed", "suspended", None])
def test_a_requested_cancel_wins_over_any_outcome(outcome: str | None) -> None:
    assert final_status(outcome, cancel_requested=True) == "canceled"  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome", ["success", "failed", "suspended"])
def test_without_a_cancel_the_outcome_stands(outcome: str) -> None:
    assert final_status(outcome, cancel_requested=False) == outcome  # type: ignore[arg-type]


def test_an_outside_interruption_has_no_final_status() -> None:
    with pytest.raises(ValueError, match="interrupted from outside"):
        final_status(None, cancel_requested=False)


def test_cancel_results() -> None:
    assert cancel_result("canceled") == CancelResult(
        message="Workflow run canceled", status="canceled"
    )
    assert cancel_result("success") == CancelResult(
        message="Workflow run already success", status="success"
    )
    assert cancel_result("failed").message == "Workflow run already failed"


def test_cancel_order_is_declaration_order_with_nested_steps_first() -> None:
    in_flight = {
        # inserted in the order Trio happened to start them
        "c": (2,),
        "child": (1,),
        "a": (0,),
        "child.inner": (1, 0),
        "other": (5,),
    }
    assert cancel_order(in_flight, ()) == ["a", "child.inner", "child", "c", "other"]
    assert cancel_order(in_flight, (1,)) == ["child.inner", "child"]


def test_suspended_leaves_skip_the_workflows_that_hold_them() -> None:
    statuses = [
        ("a", "success"),
        ("child", "suspended"),
        ("child.approve", "suspended"),
        ("other", "suspended"),
        ("childish", "suspended"),
    ]
    assert suspended_leaves(statuses, "child") == ["child.approve"]
    assert suspended_leaves(statuses, "other") == ["other"]
    assert suspended_leaves(statuses, "a") == []


def test_resolve_suspended_by_whole_path_last_part_or_alone() -> None:
    leaves = ["child.approve", "review"]
    assert resolve_suspended("r1", leaves, "child.approve") == "child.approve"
    assert resolve_suspended("r1", leaves, "approve") == "child.approve"
    assert resolve_suspended("r1", ["review"], None) == "review"
    with pytest.raises(ValueError, match=r"has 2 suspended steps .*name one with step="):
        resolve_suspended("r1", leaves, None)
    with pytest.raises(ValueError, match=r"'nope' is not a suspended step of run 'r1'"):
        resolve_suspended("r1", leaves, "nope")
