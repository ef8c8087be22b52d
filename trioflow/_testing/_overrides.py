"""Step overrides: a copy of a committed workflow with some steps replaced by fakes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeAlias

from .._graph import (
    BranchNode,
    ForeachNode,
    LoopNode,
    MapNode,
    Node,
    ParallelNode,
    SleepNode,
    StepNode,
    WaitEventNode,
    node_steps,
)
from .._step import Step
from .._workflow import Workflow

Fake: TypeAlias = Step[Any, Any] | Callable[[Any], Any]


def override_steps(workflow: Workflow, fakes: Mapping[str, Fake]) -> Workflow:
    """A new committed workflow like `workflow`, with the steps named in `fakes`
    replaced; `workflow` itself is left as it is.

    Keys are step ids, or paths into nested workflows (``"child.fetch"``; the step ids
    of the definition, without the item numbers a ``foreach`` adds to its records).
    A key may also name a nested workflow (replaced as a whole) or a ``.map()`` node
    (its function is replaced). Values are:

    - a function of the context, ``async def (ctx) -> output`` (a plain ``def`` runs in
      a worker thread, as for any step): it runs under the original step's id, schemas,
      retries and timeout; or
    - a `Step`: its ``execute`` runs in the same way; its own ``retries`` and
      ``timeout``, when set, replace the original's.

    The fake keeps the original step's ``input_schema``, ``output_schema``,
    ``resume_schema`` and ``suspend_schema``: a fake whose output breaks the contract
    fails the run with a `trioflow.ValidationError`, as the real step would.

    Raises ``KeyError`` (listing the ids that exist) for a key that names no step, and
    ``ValueError`` for a sleep or for overlapping keys (``"child"`` and ``"child.x"``).
    """
    if not isinstance(workflow, Workflow):
        raise TypeError(f"override_steps() takes a committed Workflow, got {workflow!r}")
    if not workflow.committed:
        raise RuntimeError(f"workflow {workflow.id!r} is not committed; call .commit() first")
    known = dict(_targets(workflow, ""))
    for path, fake in fakes.items():
        target = known.get(path)
        if target is None:
            raise KeyError(
                f"workflow {workflow.id!r} has no step {path!r} to override; "
                f"its steps are {sorted(p for p, t in known.items() if t != 'sleep')}"
            )
        if target == "sleep":
            raise ValueError(
                f"{path!r} is a sleep of workflow {workflow.id!r}; sleeps cannot be "
                "overridden (under MockClock they take no real time)"
            )
        if target == "map" and (isinstance(fake, Step) or not callable(fake)):
            raise TypeError(f"{path!r} is a .map() node: its fake must be a function of ctx")
        if not isinstance(fake, Step) and not callable(fake):
            raise TypeError(
                f"the fake for {path!r} must be a Step or a function of the context, got {fake!r}"
            )
        for other in fakes:
            if other.startswith(path + "."):
                raise ValueError(
                    f"override_steps() got both {path!r} and {other!r}; the first replaces "
                    "the whole nested workflow, so pass only one of them"
                )
    return _copy(workflow, "", dict(fakes))


def _targets(workflow: Workflow, prefix: str) -> Iterator[tuple[str, str]]:
    """``(path, kind)`` of everything a key may name: kind is step, workflow, map, sleep."""
    for node in workflow.nodes:
        if isinstance(node, MapNode):
            yield prefix + node.id, "map"
        elif isinstance(node, SleepNode):
            yield prefix + node.id, "sleep"
        for step in node_steps(node):
            if isinstance(step, Workflow):
                yield prefix + step.id, "workflow"
                yield from _targets(step, f"{prefix}{step.id}.")
            else:
                yield prefix + step.id, "step"


def _copy(workflow: Workflow, prefix: str, fakes: dict[str, Fake]) -> Workflow:
    copy = Workflow(
        id=workflow.id,
        input_schema=workflow.input_schema,
        output_schema=workflow.output_schema,
        state_schema=workflow.state_schema,
        retry_config=workflow.retry_config,
        description=workflow.description,
    )
    copy.nodes = [_copy_node(node, prefix, fakes) for node in workflow.nodes]
    return copy.commit()


def _copy_node(node: Node, prefix: str, fakes: dict[str, Fake]) -> Node:
    """The node itself when nothing in it is overridden, else a new node."""

    def swap(step: Any) -> Any:
        path = prefix + step.id
        if path in fakes:
            return _fake_step(step, fakes[path], path)
        if isinstance(step, Workflow) and any(p.startswith(path + ".") for p in fakes):
            return _copy(step, path + ".", fakes)
        return step

    if isinstance(node, StepNode):
        return StepNode(swap(node.step))
    if isinstance(node, ParallelNode):
        return ParallelNode(tuple(swap(step) for step in node.steps))
    if isinstance(node, BranchNode):
        return BranchNode(tuple((condition, swap(step)) for condition, step in node.branches))
    if isinstance(node, LoopNode):
        return LoopNode(swap(node.step), node.condition, node.until)
    if isinstance(node, ForeachNode):
        return ForeachNode(swap(node.step), node.concurrency)
    if isinstance(node, WaitEventNode):
        return WaitEventNode(node.name, swap(node.step))
    if isinstance(node, MapNode):
        fake = fakes.get(prefix + node.id)
        if fake is None:
            return node
        assert not isinstance(fake, Step)  # checked by override_steps
        return MapNode(node.id, fake)
    return node  # a SleepNode: nothing in it can be overridden


def _fake_step(original: Step[Any, Any] | Workflow, fake: Fake, path: str) -> Step[Any, Any]:
    """A step with `original`'s id and schemas that executes `fake`."""
    if isinstance(original, Workflow):
        # A nested workflow is never retried as a whole: neither is its fake.
        schemas: dict[str, Any] = {
            "input_schema": original.input_schema,
            "output_schema": original.output_schema,
        }
        retries: int | None = 0
        timeout: float | None = None
    else:
        schemas = {
            "input_schema": original.input_schema,
            "output_schema": original.output_schema,
            "resume_schema": original.resume_schema,
            "suspend_schema": original.suspend_schema,
            # A fake's writes are stored (or not) as the original's would be.
            "store_output_events": original.store_output_events,
        }
        retries, timeout = original.retries, original.timeout
    if isinstance(fake, Step):
        execute = fake.execute
        retries = fake.retries if fake.retries is not None else retries
        timeout = fake.timeout if fake.timeout is not None else timeout
    else:
        execute = fake
    return Step(
        id=original.id,
        execute=execute,
        retries=retries,
        timeout=timeout,
        description=f"a fake for {path!r} (trioflow.testing.override_steps)",
        **schemas,
    )
