"""JSON out: run data holds user Structs, exceptions and whatever steps returned;
anything msgspec cannot encode is written as text rather than failing the answer."""

from __future__ import annotations

from typing import Any

import msgspec

from .._errors import StepFailedError


def error_text(error: BaseException) -> str:
    """``Type: message``, with the original type of an error loaded from storage."""
    if isinstance(error, StepFailedError) and error.type_name:
        return f"{error.type_name}: {error}"
    return f"{type(error).__name__}: {error}"


def _fallback(value: Any) -> Any:
    if isinstance(value, BaseException):
        return error_text(value)
    return str(value)


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value, enc_hook=_fallback)
