"""The public surface: what ``trioflow`` exports, and how it reports itself.

Modelled on trio's ``_tests/test_exports.py``: every name in ``__all__`` resolves, and
everything trioflow defines reports the public module it is reached through, not the
private ``trioflow._*`` module it lives in (``trioflow._util.fixup_module_metadata``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import types
from pathlib import Path

import pytest

import trioflow
from trioflow._util import fixup_module_metadata

PACKAGE_DIR = Path(trioflow.__file__).resolve().parent
# The one module allowed to read the OS clocks: everything else waits on Trio's clock
# and reads wall time through it (STYLE.md #11).
CLOCK_MODULE = PACKAGE_DIR / "_clock.py"
BANNED_TIME_FUNCTIONS = frozenset({"sleep", "time", "time_ns", "monotonic", "monotonic_ns"})


def _defined_in_trioflow(obj: object) -> bool:
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == "trioflow" or module.startswith("trioflow."))


def _public_api(module: types.ModuleType) -> list[tuple[str, object]]:
    return [(name, getattr(module, name)) for name in module.__all__]


def _is_private_module(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


# ---- trioflow --------------------------------------------------------------------------


def test_all_is_a_list_of_unique_names() -> None:
    names = trioflow.__all__
    assert isinstance(names, list | tuple)
    assert all(isinstance(name, str) for name in names)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert duplicates == []
    assert not [name for name in names if name.startswith("_")]


def test_every_name_in_all_resolves() -> None:
    missing = [name for name in trioflow.__all__ if not hasattr(trioflow, name)]
    assert missing == [], f"in trioflow.__all__ but not importable: {missing}"


def test_version_is_a_string() -> None:
    assert isinstance(trioflow.__version__, str)
    assert trioflow.__version__


def test_public_objects_report_module_trioflow() -> None:
    wrong = {
        name: f"{obj.__module__}.{obj.__qualname__}"
        for name, obj in _public_api(trioflow)
        if (inspect.isclass(obj) or inspect.isfunction(obj))
        and _defined_in_trioflow(obj)
        and (obj.__module__ != "trioflow" or obj.__qualname__ != name)
    }
    assert wrong == {}, "call fixup_module_metadata(__name__, globals()) in trioflow/__init__"


def test_members_of_public_classes_report_module_trioflow() -> None:
    wrong = []
    for name, cls in _public_api(trioflow):
        if not inspect.isclass(cls) or not _defined_in_trioflow(cls):
            continue
        for attr_name, member in vars(cls).items():
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            if (inspect.isclass(member) or inspect.isfunction(member)) and _defined_in_trioflow(
                member
            ):
                if _is_private_module(member.__module__):
                    wrong.append(f"{name}.{attr_name}: {member.__module__}")
    assert wrong == []


def test_no_public_name_left_out_of_all() -> None:
    exported = set(trioflow.__all__)
    unlisted = sorted(
        name
        for name, obj in vars(trioflow).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and _defined_in_trioflow(obj)
        and name not in exported
    )
    assert unlisted == [], "add these to trioflow.__all__ or give them a leading underscore"


# ---- trioflow.testing ------------------------------------------------------------------


def test_testing_module_exports_resolve_and_report_a_public_module() -> None:
    # Skip only while the module is not written: once it exists, a broken import fails.
    if not (PACKAGE_DIR / "testing.py").exists() and not (PACKAGE_DIR / "testing").is_dir():
        pytest.skip("trioflow.testing is not written yet")
    testing = importlib.import_module("trioflow.testing")
    assert isinstance(testing.__all__, list | tuple)
    missing = [name for name in testing.__all__ if not hasattr(testing, name)]
    assert missing == []
    wrong = {
        name: obj.__module__
        for name, obj in _public_api(testing)
        if (inspect.isclass(obj) or inspect.isfunction(obj))
        and _defined_in_trioflow(obj)
        and _is_private_module(obj.__module__)
    }
    assert wrong == {}, "call fixup_module_metadata(__name__, globals()) in trioflow/testing"


# ---- fixup_module_metadata -------------------------------------------------------------


def _make_namespace() -> dict[str, object]:
    def create_thing() -> None: ...

    class Thing:
        class Inner:
            def method(self) -> None: ...

        def method(self) -> None: ...

        @staticmethod
        def helper() -> None: ...

    def foreign() -> None: ...

    def _private() -> None: ...

    for obj in (create_thing, Thing, Thing.Inner, Thing.Inner.method, Thing.method):
        obj.__module__ = "fakepkg._impl"
    Thing.__dict__["helper"].__func__.__module__ = "fakepkg._impl"
    foreign.__module__ = "otherpkg._impl"
    _private.__module__ = "fakepkg._impl"
    return {
        "make": create_thing,  # exported under another name
        "Thing": Thing,
        "foreign": foreign,
        "_private": _private,
        "CONSTANT": 3,
    }


def test_fixup_module_metadata_rewrites_public_objects_of_private_modules() -> None:
    namespace = _make_namespace()
    fixup_module_metadata("fakepkg", namespace)

    make = namespace["make"]
    assert isinstance(make, types.FunctionType)
    assert (make.__module__, make.__name__, make.__qualname__) == ("fakepkg", "make", "make")

    thing = namespace["Thing"]
    assert isinstance(thing, type)
    assert (thing.__module__, thing.__qualname__) == ("fakepkg", "Thing")
    assert repr(thing) == "<class 'fakepkg.Thing'>"
    inner = vars(thing)["Inner"]
    assert (inner.__module__, inner.__qualname__) == ("fakepkg", "Thing.Inner")
    assert vars(inner)["method"].__qualname__ == "Thing.Inner.method"
    assert vars(inner)["method"].__module__ == "fakepkg"
    assert vars(thing)["method"].__qualname__ == "Thing.method"
    assert vars(thing)["helper"].__func__.__module__ == "fakepkg"
    assert vars(thing)["helper"].__func__.__qualname__ == "Thing.helper"


def test_fixup_module_metadata_leaves_other_objects_alone() -> None:
    namespace = _make_namespace()
    fixup_module_metadata("fakepkg", namespace)

    foreign = namespace["foreign"]
    assert isinstance(foreign, types.FunctionType)
    assert foreign.__module__ == "otherpkg._impl"
    assert foreign.__name__ == "foreign"

    private = namespace["_private"]
    assert isinstance(private, types.FunctionType)
    assert private.__module__ == "fakepkg._impl"
    assert namespace["CONSTANT"] == 3


def test_fixup_module_metadata_names_a_public_submodule() -> None:
    namespace = _make_namespace()
    fixup_module_metadata("fakepkg.testing", namespace)
    thing = namespace["Thing"]
    assert isinstance(thing, type)
    assert thing.__module__ == "fakepkg.testing"
    # Already public: a second, top-level fixup does not move it.
    fixup_module_metadata("fakepkg", namespace)
    assert thing.__module__ == "fakepkg.testing"


# ---- the clock rule --------------------------------------------------------------------


def _wall_clock_uses(path: Path, root: Path) -> list[str]:
    """``path:line: time.name`` (path relative to ``root``) for each banned ``time`` call."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    time_aliases = {"time"}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            time_aliases.update(a.asname or a.name for a in node.names if a.name == "time")
        elif isinstance(node, ast.ImportFrom) and node.module == "time":
            found.extend(
                (node.lineno, f"from time import {a.name}")
                for a in node.names
                if a.name in BANNED_TIME_FUNCTIONS or a.name == "*"
            )
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in time_aliases
            and node.attr in BANNED_TIME_FUNCTIONS
        ):
            found.append((node.lineno, f"time.{node.attr}"))
    shown = path.relative_to(root).as_posix()
    return [f"{shown}:{line}: {what}" for line, what in sorted(found)]


def test_only_the_clock_module_reads_the_os_clocks() -> None:
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    assert sources, f"no sources found under {PACKAGE_DIR}"
    root = PACKAGE_DIR.parent
    uses = [use for path in sources if path != CLOCK_MODULE for use in _wall_clock_uses(path, root)]
    assert uses == [], "wait on Trio's clock (trio.sleep, trio.current_time); wall time via _clock"


def test_the_clock_scan_finds_every_spelling(tmp_path: Path) -> None:
    module = tmp_path / "sample.py"
    module.write_text(
        "import time\n"
        "import time as t\n"
        "from time import monotonic\n"
        "time.sleep(1)\n"
        "x = t.time()\n"
        "time.perf_counter()\n"
        "'time.sleep in a string is fine'\n"
    )
    assert _wall_clock_uses(module, tmp_path) == [
        "sample.py:3: from time import monotonic",
        "sample.py:4: time.sleep",
        "sample.py:5: time.time",
    ]
