"""Workflows described for the dashboard: the graph's nodes in order and the JSON
Schema of every input, output, resume and suspend type (the forms are built from them).
Computed once per workflow when the app is built: a committed workflow never changes."""

from __future__ import annotations

from typing import Any

import msgspec

from .._graph import (
    BranchNode,
    ForeachNode,
    Graph,
    LoopNode,
    MapNode,
    Node,
    ParallelNode,
    SleepNode,
    StepNode,
    WaitEventNode,
    node_ids,
    node_steps,
)
from .._step import Step
from .._workflow import Workflow
from ._types import NodeInfo, NodeKind, StepInfo, WorkflowInfo


def json_schema(schema: Any) -> dict[str, Any] | None:
    """The JSON Schema of a step's schema type; None for "any data" (no schema, or a
    type msgspec cannot describe)."""
    if schema is None:
        return None
    try:
        return msgspec.json.schema(schema)
    except (TypeError, ValueError):
        return None


def describe_workflow(workflow: Workflow) -> WorkflowInfo:
    events: dict[str, dict[str, Any] | None] = {}
    _collect_events(workflow, events)
    return WorkflowInfo(
        id=workflow.id,
        description=workflow.description,
        input_schema=json_schema(workflow.input_schema),
        output_schema=json_schema(workflow.output_schema),
        nodes=[_describe_node(node) for node in workflow.nodes],
        events=events,
    )


def _kind(node: Node) -> NodeKind:
    if isinstance(node, StepNode):
        return "step"
    if isinstance(node, ParallelNode):
        return "parallel"
    if isinstance(node, BranchNode):
        return "branch"
    if isinstance(node, LoopNode):
        return "dountil" if node.until else "dowhile"
    if isinstance(node, ForeachNode):
        return "foreach"
    if isinstance(node, MapNode):
        return "map"
    if isinstance(node, SleepNode):
        return "sleep_until" if node.until else "sleep"
    assert isinstance(node, WaitEventNode)
    return "wait_for_event"


def _describe_node(node: Node) -> NodeInfo:
    return NodeInfo(
        kind=_kind(node),
        ids=node_ids(node),
        steps=[_describe_step(step) for step in node_steps(node)],
        event=node.name if isinstance(node, WaitEventNode) else None,
    )


def _describe_step(step: Step[Any, Any] | Graph) -> StepInfo:
    if not isinstance(step, Step):  # a nested workflow
        return StepInfo(
            id=step.id,
            kind="workflow",
            description=step.description,
            input_schema=json_schema(step.input_schema),
            output_schema=json_schema(step.output_schema),
        )
    return StepInfo(
        id=step.id,
        kind="step",
        description=step.description,
        input_schema=json_schema(step.input_schema),
        output_schema=json_schema(step.output_schema),
        resume_schema=json_schema(step.resume_schema),
        suspend_schema=json_schema(step.suspend_schema),
    )


def _collect_events(workflow: Workflow, into: dict[str, dict[str, Any] | None]) -> None:
    """Every ``wait_for_event`` name of the workflow (nested ones included) with the
    JSON Schema of its data, as `Run.send_event` finds them."""
    for node in workflow.nodes:
        if isinstance(node, WaitEventNode):
            into.setdefault(node.name, json_schema(node.step.resume_schema))
        for step in node_steps(node):
            if isinstance(step, Workflow):
                _collect_events(step, into)
