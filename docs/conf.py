"""Sphinx configuration: the markdown pages of docs/ (through MyST) and an API reference
generated from trioflow's docstrings (autodoc). Build: ``nox -s docs``, or
``sphinx-build -W -b html docs docs/_build/html``."""

from __future__ import annotations

import inspect
import sys

import trioflow
import trioflow.testing

project = "trioflow"
author = "the trioflow developers"
copyright = "2026, the trioflow developers"
version = release = trioflow.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # links such as cancellation.md#thread-steps
myst_enable_extensions = ["colon_fence"]

# `Run.cancel` in a docstring links to its entry (unresolved names stay plain text).
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "furo"
html_title = f"trioflow {release}"


def _resolve_annotations() -> None:
    """Turn the string annotations of trioflow's classes into objects, for autodoc.

    trioflow's modules use ``from __future__ import annotations``, and its public classes
    report ``__module__ = "trioflow"`` (the name users import them by), so evaluating
    their annotations looks in the package's namespace, which lacks the names the
    defining module imported: signatures would fail with ``NameError``. Resolve them
    once here, in the namespace of every trioflow module together (only this build
    process sees the change).
    """
    namespace: dict[str, object] = {}
    modules = [m for name, m in sorted(sys.modules.items()) if name.split(".")[0] == "trioflow"]
    for module in modules:
        namespace.update(vars(module))
    for module in modules:
        for obj in list(vars(module).values()):
            if not isinstance(obj, type) or not obj.__module__.startswith("trioflow"):
                continue
            annotations = inspect.get_annotations(obj)
            if any(isinstance(value, str) for value in annotations.values()):
                obj.__annotations__ = {
                    key: eval(value, namespace) if isinstance(value, str) else value
                    for key, value in annotations.items()
                }


_resolve_annotations()
