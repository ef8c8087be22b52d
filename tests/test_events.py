"""Watch events: a tagged union that round-trips through JSON by its ``type`` tag."""

from __future__ import annotations

import json

import msgspec
import pytest

import trioflow

EVENTS = [
    trioflow.WorkflowStart(run_id="r", workflow_id="w"),
    trioflow.WorkflowStepStart(run_id="r", step_id="child.a", payload={"n": 1}),
    trioflow.WorkflowStepResult(run_id="r", step_id="a", status="success", output=[1, 2]),
    trioflow.WorkflowStepSuspended(run_id="r", step_id="a", payload={"ask": "ok?"}),
    trioflow.WorkflowStepWaiting(run_id="r", step_id="sleep-1"),
    trioflow.WorkflowStepProgress(
        run_id="r", step_id="f", status="success", item_index=2, completed=3, total=5
    ),
    trioflow.WorkflowCanceled(run_id="r", reason="Ctrl-C"),
    trioflow.WorkflowFinish(run_id="r", status="failed", error="boom"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.type)
def test_an_event_round_trips_by_its_type_tag(event: trioflow.WorkflowEvent) -> None:
    data = trioflow.encode_event(event)
    assert json.loads(data)["type"] == event.type
    back = trioflow.decode_event(data)
    assert type(back) is type(event)
    assert back == event


def test_each_event_type_is_named_as_the_spec_says() -> None:
    assert [e.type for e in EVENTS] == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-suspended",
        "workflow-step-waiting",
        "workflow-step-progress",
        "workflow-canceled",
        "workflow-finish",
    ]


def test_an_output_msgspec_cannot_encode_is_written_as_its_str() -> None:
    event = trioflow.WorkflowStepResult(run_id="r", step_id="a", status="success", output={1j})
    assert json.loads(trioflow.encode_event(event))["output"] == ["1j"]


def test_an_unknown_type_is_a_clear_decode_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'workflow-nope'"):
        trioflow.decode_event(b'{"type": "workflow-nope", "run_id": "r"}')
