"""The ASGI application: the JSON API under ``/api`` and the dashboard's files at ``/``.

Starlette does the routing and the request parsing (it runs on anyio, so on Trio); each
endpoint is a thin translation to the engine's public methods. Runs resumed over HTTP
execute in the engine's nursery, as runs started with ``start_soon`` do: they outlive
the request, and leaving the engine waits for them.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._engine import Engine
from .._errors import WorkflowVersionError
from .._run import Run
from .._schema import convert
from .._workflow import Workflow
from ._describe import describe_workflow
from ._errors import ApiError, error_body, translate
from ._events import EventStreamEndpoint, run_detail
from ._json import encode
from ._openapi import openapi_document
from ._types import (
    CancelAnswer,
    CancelRun,
    Deleted,
    ForkRun,
    ResumeRun,
    RunPage,
    SendEvent,
    StartRun,
    WorkflowList,
)

logger = logging.getLogger("trioflow")

STATIC = Path(__file__).parent / "static"
STATUSES = ("pending", "running", "waiting", "suspended", "success", "failed", "canceled")
MAX_LIMIT = 1000
MAX_OFFSET = 10**12  # SQL takes 64-bit integers; no database pages this far

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encode(value), status_code=status, media_type="application/json")


def _answers_errors(handler: Handler) -> Handler:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            answer = translate(exc)
            if answer is None:
                raise
            return answer

    endpoint.__name__ = handler.__name__
    return endpoint


async def json_body(request: Request, kind: type[T]) -> T:
    """The request's JSON body as `kind`. Changes take JSON only: a form that another
    site's page posts here (which needs no permission from us) is refused."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(
            400,
            "UnsupportedMediaType",
            f"this request takes a JSON body with Content-Type: application/json, "
            f"got {content_type or 'no Content-Type'!r}",
        )
    return msgspec.json.decode(await request.body(), type=kind)


class Api:
    """The endpoints, over one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.workflow_list = encode(
            WorkflowList(workflows=[describe_workflow(w) for w in engine.workflows.values()])
        )

    def _workflow(self, workflow_id: str, version: str | None = None) -> Workflow:
        workflow = self.engine.workflows.get(workflow_id)
        if workflow is not None and version is not None:
            try:
                workflow = self.engine._workflow(workflow_id, version)
            except WorkflowVersionError as exc:
                raise ApiError(404, "NotFound", str(exc)) from None
        if workflow is None:
            known = ", ".join(sorted(self.engine.workflows)) or "none"
            raise ApiError(
                404,
                "NotFound",
                f"this server has no workflow {workflow_id!r} (known: {known}); "
                "GET /api/workflows lists them",
            )
        return workflow

    async def list_workflows(self, request: Request) -> Response:
        return Response(self.workflow_list, media_type="application/json")

    async def list_runs(self, request: Request) -> Response:
        query = request.query_params
        status = query.get("status") or None
        if status is not None and status not in STATUSES:
            raise ApiError(
                400, "InvalidQuery", f"status must be one of {', '.join(STATUSES)}, got {status!r}"
            )
        limit = _int_query(query.get("limit"), "limit", 50, 1, MAX_LIMIT)
        offset = _int_query(query.get("offset"), "offset", 0, 0, MAX_OFFSET)
        runs = await self.engine.list_runs(
            status=status,
            workflow_id=query.get("workflow") or None,
            version=query.get("version") or None,
            since=_moment_query(query.get("since"), "since"),
            until=_moment_query(query.get("until"), "until"),
            limit=limit,
            offset=offset,
        )
        return json_response(RunPage(runs=runs, limit=limit, offset=offset))

    async def start_run(self, request: Request) -> Response:
        body = await json_body(request, StartRun)
        workflow = self._workflow(request.path_params["workflow_id"], body.version)
        convert(body.input_data, workflow.input_schema, step_id=None, what="input")
        if body.run_id is not None and await self._exists(body.run_id):
            raise _run_exists(body.run_id)
        try:
            run = await self.engine.create_run(workflow, body.run_id)
        except ValueError as exc:  # stored meanwhile by another request or process
            raise _run_exists(body.run_id or "") from exc
        await run.start_soon(body.input_data)
        return json_response(await run_detail(self.engine, run), status=201)

    async def _exists(self, run_id: str) -> bool:
        try:
            await self.engine.get_run(run_id)
        except LookupError:  # RunNotFoundError, or a run of a workflow we do not know
            return False
        return True

    async def get_run(self, request: Request) -> Response:
        run = await self.engine.get_run(request.path_params["run_id"])
        return json_response(await run_detail(self.engine, run))

    async def fork_run(self, request: Request) -> Response:
        body = await json_body(request, ForkRun)
        run_id = request.path_params["run_id"]
        await self.engine.get_run(run_id)  # a 404 before anything else
        if body.new_run_id is not None and await self._exists(body.new_run_id):
            raise _run_exists(body.new_run_id)
        forked = await self.engine.fork_run(run_id, body.from_step, new_run_id=body.new_run_id)
        await forked.start_soon()
        return json_response(await run_detail(self.engine, forked), status=201)

    async def delete_run(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        await self.engine.delete_run(run_id)
        return json_response(Deleted(deleted=run_id))

    async def cancel_run(self, request: Request) -> Response:
        body = await json_body(request, CancelRun)
        run = await self.engine.get_run(request.path_params["run_id"])
        if not body.grace_period >= 0:
            raise ApiError(422, "InvalidBody", "grace_period must be a number of seconds >= 0")
        result = await run.cancel(body.reason, grace_period=body.grace_period)
        return json_response(CancelAnswer(message=result.message, status=result.status))

    async def resume_run(self, request: Request) -> Response:
        body = await json_body(request, ResumeRun)
        run = await self.engine.get_run(request.path_params["run_id"])
        step = body.step.split(".") if isinstance(body.step, str) else body.step
        await self._resume_in_engine(run, step, body.resume_data)
        return json_response(await run_detail(self.engine, run), status=202)

    async def _resume_in_engine(self, run: Run, step: list[str] | None, data: Any) -> None:
        """Resume `run` in the engine's nursery and return once it executes again, or
        raise what made `resume()` refuse (a wrong state, step or data)."""
        began = False

        async def resume(task_status: trio.TaskStatus[None]) -> None:
            nonlocal began

            class Started:
                def started(self, value: None = None) -> None:
                    nonlocal began
                    began = True
                    task_status.started()

            try:
                await run.resume(step, data, task_status=Started())
            except Exception:
                if not began:
                    raise  # the answer to the request, raised by nursery.start()
                # Now in the engine's nursery: the run's fault, never the engine's.
                logger.exception("run %r: resumed over HTTP, it failed", run.run_id)

        await self.engine._nursery.start(resume, name=f"trioflow resume {run.run_id}")

    async def send_event(self, request: Request) -> Response:
        body = await json_body(request, SendEvent)
        run = await self.engine.get_run(request.path_params["run_id"])
        await run.send_event(request.path_params["name"], body.data)
        return json_response(await run_detail(self.engine, run), status=202)

    async def openapi(self, request: Request) -> Response:
        return Response(openapi_document(), media_type="application/json")


def _run_exists(run_id: str) -> ApiError:
    return ApiError(
        409,
        "RunExists",
        f"a run with id {run_id!r} is stored already; pick another run_id or leave it out",
    )


def _moment_query(text: str | None, name: str) -> dt.datetime | None:
    """An ISO 8601 date or datetime of the query (UTC when it names no timezone)."""
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(
            400, "InvalidQuery", f"{name} must be an ISO 8601 date or datetime, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _int_query(text: str | None, name: str, default: int, low: int, high: int | None) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        top = "" if high is None else f" and <= {high}"
        raise ApiError(
            400, "InvalidQuery", f"{name} must be a whole number >= {low}{top}, got {text!r}"
        )
    return value


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "NotFound" if exc.status_code == 404 else "MethodNotAllowed"
    message = (
        f"nothing at {request.url.path}; the API is under /api (GET /api/openapi.json)"
        if exc.status_code == 404
        else f"{request.method} is not allowed on {request.url.path}"
    )
    response = error_body(exc.status_code, kind, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


# Pages may load only this server's files and talk only to it; nobody may frame them.
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        b"form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class _Gate:
    """Outermost layer: the bearer token on every API call, and the security headers
    on every answer. No CORS headers are sent, so browsers keep other origins out."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        path: str = scope["path"]
        if self.expected is not None and (path == "/api" or path.startswith("/api/")):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                what = "a wrong token" if given else "no token"
                response = error_body(
                    401,
                    "Unauthorized",
                    f"this server needs its token and the request had {what}; send "
                    "the header Authorization: Bearer <token>",
                )
                await response(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)


def http_app(engine: Engine, *, token: str | None = None) -> ASGIApp:
    """The API and the dashboard over `engine` (see `trioflow.http_app`)."""
    if token is not None and not token:
        raise ValueError("token must be a non-empty string, or None for no token")
    api = Api(engine)

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, _answers_errors(handler), methods=[method])

    routes = [
        route("/api/workflows", api.list_workflows, "GET"),
        route("/api/workflows/{workflow_id}/runs", api.start_run, "POST"),
        route("/api/runs", api.list_runs, "GET"),
        route("/api/runs/{run_id}", api.get_run, "GET"),
        route("/api/runs/{run_id}", api.delete_run, "DELETE"),
        route("/api/runs/{run_id}/cancel", api.cancel_run, "POST"),
        route("/api/runs/{run_id}/fork", api.fork_run, "POST"),
        route("/api/runs/{run_id}/resume", api.resume_run, "POST"),
        route("/api/runs/{run_id}/events/{name}", api.send_event, "POST"),
        Route("/api/runs/{run_id}/events", EventStreamEndpoint(engine), methods=["GET"]),
        route("/api/openapi.json", api.openapi, "GET"),
        Mount("/", StaticFiles(directory=STATIC, html=True)),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
    return _Gate(app, token)


__all__ = ["http_app"]
