"""The import graph of trioflow's modules: no cycle, and every import points down.

Read with `ast` from the sources, so every import counts: at module level, inside
functions, and under ``if TYPE_CHECKING:``, relative or absolute (STYLE.md #9: imports
point down; no import inside a function to dodge a cycle). The layers are the module
map of docs/architecture.md, bottom first. Where a lower module needs something of a
higher one, it names it with a protocol of its own (`_graph.Graph`, `_step.StepRun`,
`_executor.RunState`, `_run.Host`, `_schedules.ScheduleHost`) instead of importing it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import trioflow

PACKAGE_DIR = Path(trioflow.__file__).resolve().parent

# Bottom first. A module is named relative to the package ("" is trioflow/__init__.py);
# an entry covers a module and everything under it ("_cli" covers "_cli._common").
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "data and primitives",
        (
            "_abort",
            "_clock",
            "_errors",
            "_events",
            "_journal",
            "_logs",
            "_queues",
            "_realtime",
            "_results",
            "_retry",
            "_schema",
            "_snapshot",
            "_state",
            "_transitions",
            "_util",
        ),
    ),
    ("description", ("_step", "_graph")),
    ("storage", ("storage",)),
    ("execution", ("_tracing", "_executor", "_follow", "_run")),
    ("builder", ("_workflow",)),
    ("engine", ("_commits", "_schedules", "_engine", "_worker")),
    ("on the engine", ("_web", "_testing", "testing")),
    # Imports `_web` when called, so that the core never needs the web extra.
    ("web entry", ("_web_entry",)),
    ("package", ("",)),
    ("commands and plugins", ("_cli", "__main__", "_pytest_plugin")),
)

# Code that describes a workflow; it never imports code that executes one.
DESCRIBING = ("_step", "_graph", "_workflow")
EXECUTING = (
    "_tracing",
    "_executor",
    "_follow",
    "_run",
    "_commits",
    "_schedules",
    "_engine",
    "_worker",
)
# The one exception, and exactly this much of it: the builder's `create_run()` returns a
# `Run`, which is why the builder sits above the run, apart from the graph it builds.
DESCRIBING_MAY_IMPORT = {("_workflow", "_run"): frozenset({"Run"})}


class Import(NamedTuple):
    source: str  # the importing module
    target: str  # the imported trioflow module
    names: frozenset[str]  # what `from target import ...` takes (empty for `import target`)
    where: str  # "module", "function" or "TYPE_CHECKING"
    line: int

    def __str__(self) -> str:
        taken = f" ({', '.join(sorted(self.names))})" if self.names else ""
        return (
            f"{_show(self.source)} -> {_show(self.target)}{taken}, {self.where}, line {self.line}"
        )


def _show(module: str) -> str:
    return f"trioflow.{module}" if module else "trioflow"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources() -> dict[str, tuple[str, bool]]:
    """Module name -> (source, is a package's ``__init__``), for every module of trioflow."""
    return {
        _module_name(path): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


def _under_type_checking(test: ast.expr) -> bool:
    return any(
        (isinstance(node, ast.Name) and node.id == "TYPE_CHECKING")
        or (isinstance(node, ast.Attribute) and node.attr == "TYPE_CHECKING")
        for node in ast.walk(test)
    )


def _walk(node: ast.AST, where: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, where
            continue
        inner = where
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "function"
        elif isinstance(child, ast.If) and where == "module" and _under_type_checking(child.test):
            inner = "TYPE_CHECKING"
        yield from _walk(child, inner)


def imports(sources: Mapping[str, tuple[str, bool]]) -> list[Import]:
    """Every import of a trioflow module by a trioflow module."""
    found = []
    for module, (source, is_package) in sources.items():
        package = module if is_package else module.rpartition(".")[0]
        for node, where in _walk(ast.parse(source), "module"):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "trioflow" or alias.name.startswith("trioflow."):
                        target = alias.name.removeprefix("trioflow").removeprefix(".")
                        found.append(Import(module, target, frozenset(), where, node.lineno))
                continue
            absolute = node.module or ""
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)]
                parent = ".".join([*base, *([absolute] if absolute else [])])
            elif absolute == "trioflow" or absolute.startswith("trioflow."):
                parent = absolute.removeprefix("trioflow").removeprefix(".")
            else:
                continue
            # `from . import _events`: each name that is a module is an import of it.
            by_target: dict[str, set[str]] = {}
            for alias in node.names:
                submodule = f"{parent}.{alias.name}" if parent else alias.name
                target = submodule if submodule in sources else parent
                by_target.setdefault(target, set()).add(alias.name)
            for target, names in by_target.items():
                found.append(Import(module, target, frozenset(names), where, node.lineno))
    return found


def layer_of(module: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member and module.startswith(member + ".")):
                return index
    return None


def find_cycle(edges: list[Import]) -> list[str] | None:
    """Some cycle of the graph, as the modules along it (the first one repeated at the
    end), or None."""
    graph: dict[str, list[str]] = {}
    for edge in edges:
        if edge.target != edge.source:
            graph.setdefault(edge.source, []).append(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(set(graph.get(module, ()))):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found is not None:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found is not None:
                return found
    return None


def upward(edges: list[Import]) -> list[str]:
    """The imports of a module in a higher layer than the importer's."""
    wrong = []
    for edge in edges:
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source is not None and target is not None and target > source:
            wrong.append(f"{edge}: {LAYERS[source][0]} -> {LAYERS[target][0]}")
    return wrong


def describing_imports_of_executing_code(edges: list[Import]) -> list[str]:
    def top(module: str) -> str:
        return module.partition(".")[0]

    wrong = []
    for edge in edges:
        if top(edge.source) not in DESCRIBING or top(edge.target) not in EXECUTING:
            continue
        allowed = DESCRIBING_MAY_IMPORT.get((edge.source, edge.target), frozenset())
        if edge.where == "module" and edge.names and edge.names <= allowed:
            continue
        wrong.append(str(edge))
    return wrong


def _cycle_message(cycle: list[str] | None) -> str:
    return "import cycle: " + " -> ".join(_show(m) for m in cycle or [])


# ---- the package as it is --------------------------------------------------------------


def test_the_reader_sees_imports_in_functions_and_under_type_checking() -> None:
    edges = imports(package_sources())
    assert {edge.where for edge in edges} >= {"module", "function", "TYPE_CHECKING"}
    assert any(edge.source == "_run" and edge.target == "_executor" for edge in edges)


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in package_sources() if layer_of(m) is None)
    assert unplaced == [], "place these in LAYERS (and in docs/architecture.md)"


def test_the_import_graph_has_no_cycle() -> None:
    cycle = find_cycle(imports(package_sources()))
    assert cycle is None, _cycle_message(cycle)


def test_every_import_points_to_its_own_layer_or_below() -> None:
    assert upward(imports(package_sources())) == []


def test_describing_modules_import_no_executing_module() -> None:
    """`_step`, `_graph` and `_workflow` import nothing of `_executor`, `_run`, `_engine`
    and the rest, except the builder's `Run` (for `create_run()`), at module level."""
    assert describing_imports_of_executing_code(imports(package_sources())) == []


def test_the_one_exception_is_still_needed() -> None:
    """The builder's `create_run()` exists and returns a `Run`: the reason for the one
    import of executing code by describing code."""
    assert trioflow.Workflow.create_run.__annotations__["return"] == "Run"
    edges = imports(package_sources())
    assert any(
        edge.source == "_workflow" and edge.target == "_run" and edge.names == {"Run"}
        for edge in edges
    )


async def test_create_run_returns_a_run() -> None:
    step = trioflow.create_step(id="one", execute=lambda ctx: ctx.input_data)
    workflow = trioflow.create_workflow(id="layers").then(step).commit()
    assert isinstance(await workflow.create_run(), trioflow.Run)


# ---- the checks catch what they are for ------------------------------------------------


def _with_import(module: str, line: str, *, type_checking: bool) -> dict[str, tuple[str, bool]]:
    sources = package_sources()
    source, is_package = sources[module]
    if type_checking:
        line = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    " + line
    sources[module] = (source + "\n" + line + "\n", is_package)
    return sources


def test_importing_the_executor_in_step_is_caught() -> None:
    for type_checking in (False, True):
        edges = imports(
            _with_import("_step", "from ._executor import Frame", type_checking=type_checking)
        )
        assert describing_imports_of_executing_code(edges) != []
        assert upward(edges) != []
        cycle = find_cycle(edges)
        assert cycle is not None and "_step" in cycle and "_executor" in cycle


def test_importing_more_than_run_in_the_builder_is_caught() -> None:
    edges = imports(
        _with_import("_workflow", "from ._run import Run, _initial_state", type_checking=False)
    )
    assert describing_imports_of_executing_code(edges) != []


def test_an_import_inside_a_function_is_caught() -> None:
    line = "def f():\n    from ._engine import Engine\n    return Engine"
    edges = imports(_with_import("_run", line, type_checking=False))
    assert any(
        edge.source == "_run" and edge.target == "_engine" and edge.where == "function"
        for edge in edges
    )
    assert upward(edges) != []
    assert find_cycle(edges) is not None


# ---- the executor changes the run's state only through its methods -----------------------

# The tables of `_state.ExecutionState`, and what changes one in place.
STATE_TABLES = frozenset(
    {"steps", "in_flight", "progress", "states", "pending_events", "outputs", "suspended"}
)
MUTATING_CALLS = frozenset(
    {"note_item", "pop", "popleft", "append", "setdefault", "clear", "update", "popitem"}
)


def _names_a_table(node: ast.expr) -> bool:
    """Whether `node` is a state table: ``x.steps``, ``x._steps`` (the old `Run`
    attributes), or a local bound to one (``done`` and the like are not)."""
    return isinstance(node, ast.Attribute) and node.attr.removeprefix("_") in STATE_TABLES


def writes_to_state_tables(source: str) -> list[str]:
    """Subscript assignments and deletions on a state table, and calls that change one
    in place, in `source`: each as "line: code"."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.Delete):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Subscript) and _names_a_table(target.value):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
            elif isinstance(target, ast.Attribute) and _names_a_table(target):
                found.append(f"{node.lineno}: {ast.unparse(node)}")  # a table replaced
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and (
                node.func.attr == "note_item"  # on a local bound to a table, too
                or (node.func.attr in MUTATING_CALLS and _names_a_table(node.func.value))
            )
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_executor_changes_the_state_only_through_its_methods() -> None:
    """`_executor.py` never assigns into, deletes from, or changes in place a table of
    the run's `ExecutionState`: every change goes through a method of `_state.py`, so a
    durable run's journal sees it. Nor do the run handle and the engine."""
    sources = package_sources()
    for module in ("_executor", "_run", "_engine"):
        assert writes_to_state_tables(sources[module][0]) == [], module


def test_a_write_into_a_state_table_is_caught() -> None:
    for line in (
        "run._steps[path] = record",
        "state.progress[path] = (1, None, False)",
        "del frame.exec_state.in_flight[path]",
        "run._state.progress.note_item(path, 0)",
        "progress.note_item(path, 0)",
        "state.in_flight.pop(path, None)",
        "state.steps = {}",
    ):
        assert writes_to_state_tables(line) != [], line
    assert writes_to_state_tables("done = state.progress.get(path)\nx[path] = 1") == []
