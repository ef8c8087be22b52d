"""Errors of the HTTP API: every one is ``{"error": {"type": ..., "message": ...}}``
with a status that says whose fault it is. trioflow's own exceptions are translated
here, at the boundary (and only `Exception`s: a cancellation is never an answer)."""

from __future__ import annotations

import msgspec
from starlette.responses import Response

from .._errors import (
    RunNotFoundError,
    RunStateError,
    TrioflowError,
    ValidationError,
    WorkflowVersionError,
)
from ._types import Error, ErrorDetail


class ApiError(Exception):
    """A request the API refuses, with the status and the type to answer."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type


def error_body(status: int, type: str, message: str) -> Response:
    body = msgspec.json.encode(Error(error=ErrorDetail(type=type, message=message)))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def translate(exc: Exception) -> Response | None:
    """The error answer for `exc`, or None when it is not a client's doing (a bug or a
    broken storage: the server's 500)."""
    if isinstance(exc, ApiError):
        return error_body(exc.status, exc.type, str(exc))
    if isinstance(exc, RunNotFoundError):
        return error_body(404, "RunNotFoundError", str(exc))
    if isinstance(exc, RunStateError):
        return error_body(409, "RunStateError", str(exc))
    if isinstance(exc, WorkflowVersionError):  # a run this server cannot execute
        return error_body(409, "WorkflowVersionError", str(exc))
    if isinstance(exc, ValidationError):
        return error_body(422, "ValidationError", str(exc))
    if isinstance(exc, msgspec.ValidationError):  # before DecodeError: it is one
        return error_body(
            422, "InvalidBody", f"the request body does not fit: {exc}; see /api/openapi.json"
        )
    if isinstance(exc, msgspec.DecodeError):
        return error_body(
            400, "InvalidJSON", f"the request body is not valid JSON ({exc}); send a JSON object"
        )
    if isinstance(exc, LookupError):  # a workflow this server does not know
        return error_body(404, "NotFound", str(exc.args[0]) if exc.args else str(exc))
    if isinstance(exc, ValueError) and not isinstance(exc, TrioflowError):
        return error_body(422, "InvalidRequest", str(exc))
    return None
