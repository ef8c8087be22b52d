"""Small internal helpers that belong to no one module."""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Mapping


def _is_private_module(module: str, root: str) -> bool:
    """Whether ``module`` is ``root`` itself or lies inside it under a ``_private`` part."""
    if module != root and not module.startswith(root + "."):
        return False
    return any(part.startswith("_") for part in module.split("."))


def _resolve_annotations(cls: type) -> None:
    """Evaluate `cls`'s string annotations (``from __future__ import annotations``) in
    the module that defines it, before its ``__module__`` changes: msgspec, like
    ``typing.get_type_hints``, looks names up in ``sys.modules[cls.__module__]``, and
    ``trioflow`` has no ``ClassVar`` or ``RunStatus`` in it (``msgspec.json.schema(
    trioflow.RunSummary)`` failed with a NameError)."""
    if "__annotations__" not in vars(cls):
        return
    try:
        cls.__annotations__ = inspect.get_annotations(cls, eval_str=True)
    except NameError:
        pass  # a name only imported for type checkers: leave the strings as they were


def fixup_module_metadata(module_name: str, namespace: Mapping[str, object]) -> None:
    """Make re-exported objects report the public module they are reached through.

    Call it at the end of a public module (``trioflow/__init__.py``, ``trioflow/testing.py``)
    with ``(__name__, globals())``. Each public class or function in ``namespace`` that was
    defined in a private module of the same package (``trioflow._run``) gets
    ``__module__ = module_name`` and a ``__name__``/``__qualname__`` equal to the name it
    is exported under, so reprs, tracebacks, pickles and docs show ``trioflow.Run``, not
    ``trioflow._run.Run``. The functions and classes defined inside an exported class
    are fixed the same way, with a ``__qualname__`` of ``Outer.name``.

    Objects from other packages (``trio``, ``msgspec``) and names that start with ``_``
    are left alone. Top-level names are fixed before nested ones, so a class reached both
    as ``trioflow.X`` and as an attribute of another class keeps its top-level name.
    """
    root = module_name.partition(".")[0]
    seen: set[int] = set()
    classes: list[tuple[str, type]] = []

    def fix_one(qualname: str, name: str, obj: object) -> None:
        if id(obj) in seen:
            return
        # Only classes and plain functions carry writable, meaningful metadata.
        if not isinstance(obj, type | types.FunctionType):
            return
        if not _is_private_module(obj.__module__, root):
            return
        seen.add(id(obj))
        if isinstance(obj, type):
            _resolve_annotations(obj)
        obj.__module__ = module_name
        obj.__name__ = name
        obj.__qualname__ = qualname
        if isinstance(obj, type):
            classes.append((qualname, obj))

    for name, obj in namespace.items():
        if not name.startswith("_"):
            fix_one(name, name, obj)
    # Breadth first: a nested class's own members are appended while we walk.
    index = 0
    while index < len(classes):
        outer, cls = classes[index]
        index += 1
        for attr_name, attr_value in list(vars(cls).items()):
            member = attr_value
            if isinstance(member, staticmethod | classmethod):
                member = member.__func__
            fix_one(f"{outer}.{attr_name}", attr_name, member)


def random_run_id() -> str:
    """A random UUID4 in its canonical text form, as ``str(uuid.uuid4())`` gives, in
    half the time (uuid.UUID validates and converts in Python): one per run created."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
