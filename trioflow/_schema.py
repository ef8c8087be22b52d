"""Validation of data crossing a step or workflow boundary, with msgspec."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ._errors import ValidationError

_PATH = re.compile(r" - at `(?P<path>[^`]*)`$")


def convert(
    value: Any, schema: Any, *, step_id: str | None, what: str, workflow_id: str | None = None
) -> Any:
    """`value` as an instance of `schema` (``None``: no schema, passed through).

    Structs convert from dicts (and from Structs by attribute), so a step may return a
    dict where its output schema is a Struct. A mismatch raises `ValidationError` naming
    the step, the field path and what was expected.
    """
    if schema is None or type(value) is schema:
        return value
    try:
        return msgspec.convert(value, schema, from_attributes=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        path = match.group("path") if match else "$"
        detail = message[: match.start()] if match else message
        raise ValidationError(
            step_id=step_id,
            what=what,
            detail=f"{detail} at `{path}`",
            path=path,
            workflow_id=workflow_id,
        ) from exc


def to_builtins(value: Any) -> Any:
    """`value` as JSON-ready builtins, for snapshots and ``--json`` output."""
    return msgspec.to_builtins(value, str_keys=True)
