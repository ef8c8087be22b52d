"""``GET /api/openapi.json``: the OpenAPI 3.1 document of the API, its schemas generated
by msgspec from the very Structs the endpoints decode and encode (and the engine's own
`RunSummary` and event types), so the document cannot drift from the code."""

from __future__ import annotations

import functools
import typing
from typing import Any

import msgspec

from .. import _events as ev
from .._results import RunStatus
from ..storage import RunSummary
from ._types import (
    CancelAnswer,
    CancelRun,
    Deleted,
    Error,
    ForkRun,
    ResumeRun,
    RunDetail,
    RunPage,
    SendEvent,
    StartRun,
    WorkflowList,
)

# Every event type of the engine, from its own union: a new one is documented at once.
EVENT_TYPES: tuple[type, ...] = typing.get_args(ev.WorkflowEvent)
MODELS = (
    StartRun,
    CancelRun,
    ForkRun,
    ResumeRun,
    SendEvent,
    Error,
    RunDetail,
    RunPage,
    RunSummary,
    CancelAnswer,
    Deleted,
    WorkflowList,
    *EVENT_TYPES,
)
REF = "#/components/schemas/{name}"


def _ref(model: type) -> dict[str, Any]:
    return {"$ref": REF.format(name=model.__name__)}


def _json(model: type) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "Bad request: not JSON, not Content-Type: application/json, or a bad query",
        401: "Missing or wrong bearer token",
        404: "No such run, workflow or path",
        409: "The run is not in a state for this (RunStateError), or its id is taken",
        422: "The body does not fit its schema, or the data fails the step's schema",
    }
    return {
        str(status): {"description": why[status], "content": _json(Error)}
        for status in (401, *statuses)
    }


def _operation(
    summary: str,
    *,
    ok: tuple[int, str, dict[str, Any]],
    errors: tuple[int, ...],
    body: type | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    status, description, content = ok
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {str(status): {"description": description, "content": content}}
        | _errors(*errors),
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if params:
        operation["parameters"] = params
    return operation


def _path_param(name: str, text: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": text,
        "schema": {"type": "string"},
    }


RUN_ID = _path_param("run_id", "the run's id")


@functools.cache
def openapi_document() -> bytes:
    _, components = msgspec.json.schema_components(MODELS, ref_template=REF)
    statuses = list(typing.get_args(RunStatus))
    events_schema = {"oneOf": [_ref(model) for model in EVENT_TYPES]}
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "trioflow",
            "version": "1",
            "description": "Durable, cancellable workflow runs: list, start, cancel, resume "
            "and watch them. With a server token, every call needs "
            "`Authorization: Bearer <token>`. Changes take JSON bodies only.",
        },
        "components": {
            "schemas": components | {"WorkflowEvent": events_schema},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}, {}],
        "paths": {
            "/api/workflows": {
                "get": _operation(
                    "The workflows this server runs, with their graphs and JSON Schemas",
                    ok=(200, "The workflows", _json(WorkflowList)),
                    errors=(),
                )
            },
            "/api/workflows/{workflow_id}/runs": {
                "post": _operation(
                    "Start a run of the workflow (it executes in the server)",
                    ok=(201, "The new run", _json(RunDetail)),
                    errors=(400, 404, 409, 422),
                    body=StartRun,
                    params=[_path_param("workflow_id", "the workflow's id")],
                )
            },
            "/api/runs": {
                "get": _operation(
                    "Stored runs, newest first, paged",
                    ok=(200, "A page of run summaries", _json(RunPage)),
                    errors=(400,),
                    params=[
                        _query("status", {"type": "string", "enum": statuses}),
                        _query("workflow", {"type": "string"}),
                        _query("version", {"type": "string"}),
                        _query("since", {"type": "string", "format": "date-time"}),
                        _query("until", {"type": "string", "format": "date-time"}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                        _query("offset", {"type": "integer", "minimum": 0, "maximum": 10**12}),
                    ],
                )
            },
            "/api/runs/{run_id}": {
                "get": _operation(
                    "A run and its steps",
                    ok=(200, "The run", _json(RunDetail)),
                    errors=(404,),
                    params=[RUN_ID],
                ),
                "delete": _operation(
                    "Delete a finished run (a run that has not ended is a 409: cancel it first)",
                    ok=(200, "The run is deleted", _json(Deleted)),
                    errors=(404, 409),
                    params=[RUN_ID],
                ),
            },
            "/api/runs/{run_id}/cancel": {
                "post": _operation(
                    "Cancel the run; answers once it is stored 'canceled' (or had ended)",
                    ok=(200, "How the run ended", _json(CancelAnswer)),
                    errors=(400, 404, 409, 422),
                    body=CancelRun,
                    params=[RUN_ID],
                )
            },
            "/api/runs/{run_id}/fork": {
                "post": _operation(
                    "Run the run again from a step, as a new run started in the engine",
                    ok=(201, "The new run", _json(RunDetail)),
                    errors=(400, 404, 409, 422),
                    body=ForkRun,
                    params=[RUN_ID],
                )
            },
            "/api/runs/{run_id}/resume": {
                "post": _operation(
                    "Resume a suspended run; answers once it executes again",
                    ok=(202, "The run, executing", _json(RunDetail)),
                    errors=(400, 404, 409, 422),
                    body=ResumeRun,
                    params=[RUN_ID],
                )
            },
            "/api/runs/{run_id}/events/{name}": {
                "post": _operation(
                    "Send an event to the run's .wait_for_event(name, ...)",
                    ok=(202, "The run", _json(RunDetail)),
                    errors=(400, 404, 409, 422),
                    body=SendEvent,
                    params=[RUN_ID, _path_param("name", "the event's name")],
                )
            },
            "/api/runs/{run_id}/events": {
                "get": _operation(
                    "The run's live events as Server-Sent Events: `run` (a RunDetail), "
                    "each WorkflowEvent under its type, and `end`",
                    ok=(200, "An event stream", {"text/event-stream": {"schema": {}}}),
                    errors=(404,),
                    params=[RUN_ID],
                )
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    }
                    | _errors(),
                }
            },
        },
    }
    return msgspec.json.encode(document)


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}
