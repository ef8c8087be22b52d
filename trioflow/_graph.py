"""The frozen graph of nodes a committed workflow is: what runs it reads.

It describes and never runs: `_executor` walks it, `_workflow` builds it. A nested
workflow sits in a node as the `Graph` it is seen as here, not as `_workflow.Workflow`:
the builder's `create_run()` returns a `Run`, so the builder sits above the run, and
the run (and its executor) must read graphs without importing it. Rejected: a base class
of `Workflow` here, which would show up in `trioflow.Workflow`'s documented bases and
take its documented members away from it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._retry import RetryConfig
from ._step import Step


class Graph(Protocol):
    """A committed `trioflow.Workflow` as those who run it see it. Tell a nested
    workflow from a step with ``isinstance(x, Step)``: below the builder there is no
    workflow class to test for."""

    @property
    def id(self) -> str: ...
    @property
    def nodes(self) -> Sequence[Node]: ...
    @property
    def input_schema(self) -> Any: ...
    @property
    def output_schema(self) -> Any: ...
    @property
    def state_schema(self) -> Any: ...
    @property
    def retry_config(self) -> RetryConfig: ...
    @property
    def timeout(self) -> float | None: ...
    @property
    def description(self) -> str | None: ...
    @property
    def version(self) -> str: ...


Condition = Callable[[Any], Any]


class StepNode:
    __slots__ = ("step",)

    def __init__(self, step: Step[Any, Any] | Graph) -> None:
        self.step = step


class ParallelNode:
    __slots__ = ("steps",)

    def __init__(self, steps: tuple[Step[Any, Any] | Graph, ...]) -> None:
        self.steps = steps


class BranchNode:
    __slots__ = ("branches",)

    def __init__(self, branches: tuple[tuple[Condition, Step[Any, Any] | Graph], ...]) -> None:
        self.branches = branches


class LoopNode:
    __slots__ = ("condition", "step", "until")

    def __init__(self, step: Step[Any, Any] | Graph, condition: Condition, until: bool) -> None:
        self.step = step
        self.condition = condition
        self.until = until


class ForeachNode:
    __slots__ = ("concurrency", "step")

    def __init__(self, step: Step[Any, Any] | Graph, concurrency: int) -> None:
        self.step = step
        self.concurrency = concurrency


class MapNode:
    __slots__ = ("fn", "id")

    def __init__(self, id: str, fn: Callable[[Any], Any]) -> None:
        self.id = id
        self.fn = fn


class SleepNode:
    """`.sleep()` (``until=False``: seconds) or `.sleep_until()` (a wall-clock time)."""

    __slots__ = ("id", "until", "when")

    def __init__(self, id: str, when: Any, until: bool) -> None:
        self.id = id
        self.when = when
        self.until = until


class WaitEventNode:
    __slots__ = ("name", "step", "timeout")

    def __init__(self, name: str, step: Step[Any, Any], timeout: float | None = None) -> None:
        self.name = name
        self.step = step
        self.timeout = timeout


Node = (
    StepNode
    | ParallelNode
    | BranchNode
    | LoopNode
    | ForeachNode
    | MapNode
    | SleepNode
    | WaitEventNode
)


def node_steps(node: Node) -> list[Step[Any, Any] | Graph]:
    """The steps and nested workflows a node runs."""
    if isinstance(node, ParallelNode):
        return list(node.steps)
    if isinstance(node, BranchNode):
        return [s for _, s in node.branches]
    if isinstance(node, MapNode | SleepNode):
        return []
    return [node.step]


def node_ids(node: Node) -> list[str]:
    """The step ids a node records results under."""
    if isinstance(node, MapNode | SleepNode):
        return [node.id]
    return [s.id for s in node_steps(node)]
