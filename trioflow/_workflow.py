"""The workflow builder: `Workflow`, which builds the frozen graph of nodes
(`_graph`) and commits it, and whose `create_run()` makes a `Run` of it.

It describes; `_executor` walks the graph. It is the one describing module above the
run: `create_run()` returns a `Run`, so it imports `_run`, and nothing below the run
imports it (the run reads a committed workflow as a `_graph.Graph`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from ._graph import (
    BranchNode,
    Condition,
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
)
from ._retry import NO_RETRIES, RetryConfig
from ._run import Run
from ._step import Step, check_id


def _check_runnable(what: str, step: object) -> Step[Any, Any] | Workflow:
    if isinstance(step, Workflow):
        if not step.committed:
            raise RuntimeError(
                f"workflow {step.id!r} is used in {what} before .commit(); commit it first"
            )
        return step
    if isinstance(step, Step):
        return step
    raise TypeError(f"{what} takes a step or a committed workflow, got {step!r}")


def _check_aware(when: object) -> None:
    if isinstance(when, dt.datetime) and when.tzinfo is None:
        raise ValueError(
            f"sleep_until({when!r}) got a naive datetime; pass a timezone-aware one, "
            "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)"
        )


class Workflow:
    """A graph of steps, built with chained calls and frozen by `commit()`.

    A committed workflow runs with `create_run()` and can be a step of another workflow;
    its step id there is the workflow's id.
    """

    __slots__ = (
        "_version",
        "committed",
        "description",
        "id",
        "input_schema",
        "nodes",
        "output_schema",
        "retry_config",
        "state_schema",
        "timeout",
    )

    def __init__(
        self,
        *,
        id: str,
        input_schema: Any = None,
        output_schema: Any = None,
        state_schema: Any = None,
        retry_config: RetryConfig | None = None,
        description: str | None = None,
        version: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.id = check_id("workflow", id)
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout < float("inf")
        ):
            raise ValueError(
                f"workflow {id!r}: timeout must be a number of seconds > 0, got {timeout!r}"
            )
        self.timeout = timeout
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ValueError(
                f"workflow {id!r}: version must be a non-empty string, got {version!r}; "
                "or leave it out to derive one from the definition"
            )
        self._version = version
        self.input_schema = input_schema
        self.output_schema = output_schema
        self.state_schema = state_schema
        if retry_config is not None and not isinstance(retry_config, RetryConfig):
            raise TypeError(
                f"workflow {id!r}: retry_config must be a trioflow.RetryConfig, "
                f"got {retry_config!r}"
            )
        self.retry_config = retry_config or NO_RETRIES
        self.description = description
        self.nodes: tuple[Node, ...] | list[Node] = []
        self.committed = False

    def __repr__(self) -> str:
        if not self.committed:
            return f"<trioflow.Workflow {self.id!r} (not committed)>"
        return f"<trioflow.Workflow {self.id!r} version {self.version!r}>"

    @property
    def version(self) -> str:
        """The version every run of this workflow stores: the ``version=`` it was given,
        or ``"sha-"`` + 12 hex digits of a fingerprint of its definition (its graph,
        ids and schemas; not function bodies), the same in every process."""
        if self._version is None:
            if not self.committed:
                raise RuntimeError(
                    f"workflow {self.id!r} has no version until it is committed; call .commit()"
                )
            self._version = (
                "sha-"
                + hashlib.sha256(
                    msgspec.json.encode(fingerprint(self), order="sorted")
                ).hexdigest()[:12]
            )
        return self._version

    def _add(self, node: Node) -> Workflow:
        if self.committed:
            raise RuntimeError(f"workflow {self.id!r} is committed; build a new one to change it")
        assert isinstance(self.nodes, list)
        self.nodes.append(node)
        return self

    def then(self, step: Step[Any, Any] | Workflow) -> Workflow:
        """Run `step` on the previous output."""
        return self._add(StepNode(_check_runnable(".then()", step)))

    def parallel(self, steps: Sequence[Step[Any, Any] | Workflow]) -> Workflow:
        """Run `steps` at once on the previous output; the output maps step id to output."""
        if not steps:
            raise ValueError(".parallel() needs at least one step")
        return self._add(ParallelNode(tuple(_check_runnable(".parallel()", s) for s in steps)))

    def branch(self, branches: Sequence[tuple[Condition, Step[Any, Any] | Workflow]]) -> Workflow:
        """Run, at once, the step of every condition that is true; the output maps step
        id to output (``{}`` when none is true)."""
        if not branches:
            raise ValueError(".branch() needs at least one (condition, step) pair")
        checked = []
        for pair in branches:
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[0])):
                raise TypeError(f".branch() takes (condition, step) pairs, got {pair!r}")
            checked.append((pair[0], _check_runnable(".branch()", pair[1])))
        return self._add(BranchNode(tuple(checked)))

    def dowhile(self, step: Step[Any, Any] | Workflow, condition: Condition) -> Workflow:
        """Run `step`, then again while `condition` is true."""
        return self._add(LoopNode(_check_runnable(".dowhile()", step), condition, until=False))

    def dountil(self, step: Step[Any, Any] | Workflow, condition: Condition) -> Workflow:
        """Run `step`, then again until `condition` is true."""
        return self._add(LoopNode(_check_runnable(".dountil()", step), condition, until=True))

    def foreach(self, step: Step[Any, Any] | Workflow, concurrency: int = 1) -> Workflow:
        """Run `step` on each item of the previous output (a list), at most `concurrency`
        at once; the output is the list of outputs, in input order."""
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(
                f".foreach() concurrency must be a whole number >= 1, got {concurrency!r}"
            )
        return self._add(ForeachNode(_check_runnable(".foreach()", step), concurrency))

    def map(self, fn: Callable[[Any], Any], *, id: str | None = None) -> Workflow:
        """Reshape data: `fn(ctx)` (sync or async) returns the next input."""
        if not callable(fn):
            raise TypeError(f".map() takes a function of the context, got {fn!r}")
        return self._add(MapNode(check_id("map", id or f"map-{len(self.nodes)}"), fn))

    def sleep(self, seconds: float | Callable[[Any], Any], *, id: str | None = None) -> Workflow:
        """Wait `seconds` of Trio's clock (or `seconds(ctx)`); the output is the input."""
        if not callable(seconds) and not (isinstance(seconds, int | float) and seconds >= 0):
            raise ValueError(f".sleep() takes seconds >= 0 or a function, got {seconds!r}")
        node_id = check_id("sleep", id or f"sleep-{len(self.nodes)}")
        return self._add(SleepNode(node_id, seconds, until=False))

    def sleep_until(
        self, when: dt.datetime | Callable[[Any], Any], *, id: str | None = None
    ) -> Workflow:
        """Wait until the timezone-aware `when` (or `when(ctx)`); the output is the input."""
        if not callable(when) and not isinstance(when, dt.datetime):
            raise TypeError(f".sleep_until() takes a datetime or a function, got {when!r}")
        _check_aware(when)
        node_id = check_id("sleep", id or f"sleep-until-{len(self.nodes)}")
        return self._add(SleepNode(node_id, when, until=True))

    def wait_for_event(
        self, name: str, step: Step[Any, Any], *, timeout: float | None = None
    ) -> Workflow:
        """Wait for `Run.send_event(name, data)`, then run `step` with the data as
        ``ctx.resume_data`` (validated by its ``resume_schema``). With `timeout`
        (seconds of Trio's clock, kept across a recovery), a wait that sees no event in
        time fails the step with `EventTimeoutError`."""
        if not isinstance(step, Step):
            raise TypeError(f".wait_for_event() takes a step, got {step!r}")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
        ):
            raise ValueError(
                f".wait_for_event({name!r}, ...): timeout must be a number of seconds > 0, "
                f"got {timeout!r}"
            )
        return self._add(WaitEventNode(name, step, timeout))

    def commit(self) -> Workflow:
        """Freeze the graph. Step ids must be unique within the workflow."""
        if self.committed:
            return self
        if not self.nodes:
            raise ValueError(f"workflow {self.id!r} has no steps; add one with .then(step)")
        seen: set[str] = set()
        for node in self.nodes:
            for node_id in node_ids(node):
                if node_id in seen:
                    raise ValueError(
                        f"workflow {self.id!r} uses the step id {node_id!r} twice; "
                        "give each use its own step (create_step with another id)"
                    )
                seen.add(node_id)
        self.nodes = tuple(self.nodes)
        self.committed = True
        return self

    async def create_run(self, run_id: str | None = None) -> Run:
        """A new in-memory run of this workflow (its id a UUID4 string unless given)."""
        if not self.committed:
            raise RuntimeError(f"workflow {self.id!r} is not committed; call .commit() first")
        await trio.lowlevel.checkpoint()
        return Run(self, run_id)


# -- the fingerprint behind a derived version ------------------------------------------
#
# Durable runs outlive deployments: a run executes only on the definition it started on.
# The fingerprint covers what gives a stored run its meaning: node kinds and order, step
# and node ids, event names, nested workflows (by version), and the msgspec JSON Schema of
# every schema. Function bodies, conditions, retries and timeouts are left out: they
# change how a step behaves, not what its stored records mean, and hashing code would
# make a new version of every reformatting. Plain JSON with sorted keys: no id(), no
# hash(), no repr with addresses, so the same in every process.


def fingerprint(workflow: Workflow) -> dict[str, Any]:
    """The parts of `workflow`'s definition its derived version is a hash of."""
    return {
        "id": workflow.id,
        "input": _schema(workflow.input_schema),
        "output": _schema(workflow.output_schema),
        "state": _schema(workflow.state_schema),
        "nodes": [_node_shape(node) for node in workflow.nodes],
    }


def _node_shape(node: Node) -> dict[str, Any]:
    if isinstance(node, StepNode):
        return {"kind": "step", "step": _runnable_shape(node.step)}
    if isinstance(node, ParallelNode):
        return {"kind": "parallel", "steps": [_runnable_shape(s) for s in node.steps]}
    if isinstance(node, BranchNode):
        return {"kind": "branch", "steps": [_runnable_shape(s) for _, s in node.branches]}
    if isinstance(node, LoopNode):
        kind = "dountil" if node.until else "dowhile"
        return {"kind": kind, "step": _runnable_shape(node.step)}
    if isinstance(node, ForeachNode):
        return {"kind": "foreach", "step": _runnable_shape(node.step)}
    if isinstance(node, MapNode):
        return {"kind": "map", "id": node.id}
    if isinstance(node, SleepNode):
        return {"kind": "sleep_until" if node.until else "sleep", "id": node.id}
    return {"kind": "wait_for_event", "name": node.name, "step": _runnable_shape(node.step)}


def _runnable_shape(step: Step[Any, Any] | Graph) -> dict[str, Any]:
    if not isinstance(step, Step):  # a nested workflow
        return {"workflow": step.id, "version": step.version}
    return {
        "id": step.id,
        "input": _schema(step.input_schema),
        "output": _schema(step.output_schema),
        "resume": _schema(step.resume_schema),
        "suspend": _schema(step.suspend_schema),
    }


def _schema(schema: Any) -> Any:
    """msgspec's JSON Schema of `schema`; its qualified name for a type msgspec cannot
    describe."""
    if schema is None:
        return None
    try:
        return msgspec.json.schema(schema)
    except (TypeError, ValueError):
        return f"{getattr(schema, '__module__', '')}.{getattr(schema, '__qualname__', schema)}"


def create_workflow(
    *,
    id: str,
    input_schema: Any = None,
    output_schema: Any = None,
    state_schema: Any = None,
    retry_config: RetryConfig | None = None,
    description: str | None = None,
    version: str | None = None,
    timeout: float | None = None,
) -> Workflow:
    """A new workflow; chain `.then()` and the rest, then `.commit()`. Without
    `version`, the version is derived from the definition (`Workflow.version`).
    `timeout` bounds each run, from its first start (`RunTimeoutError`)."""
    return Workflow(
        id=id,
        input_schema=input_schema,
        output_schema=output_schema,
        state_schema=state_schema,
        retry_config=retry_config,
        description=description,
        version=version,
        timeout=timeout,
    )
