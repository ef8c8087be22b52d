"""The OpenAPI document: valid by a validator, and a bounded property-based run of the
live API against it (schemathesis) that never gets a server error."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import web_app
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from web_server import serving

import trioflow


async def test_the_document_is_valid_openapi_and_covers_every_route() -> None:
    async with trioflow.open_engine(
        storage=trioflow.MemoryStorage(), workflows=web_app.WORKFLOWS
    ) as engine:
        transport = httpx.ASGITransport(app=trioflow.http_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            document = (await client.get("/api/openapi.json")).json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {
        "/api/workflows",
        "/api/workflows/{workflow_id}/runs",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/fork",
        "/api/runs/{run_id}/resume",
        "/api/runs/{run_id}/events/{name}",
        "/api/runs/{run_id}/events",
        "/api/openapi.json",
    }
    assert set(document["paths"]["/api/runs/{run_id}"]) == {"get", "delete"}
    schemas = document["components"]["schemas"]
    # The engine's own types, as msgspec describes them.
    assert schemas["RunSummary"]["required"] == [
        "run_id",
        "workflow_id",
        "status",
        "created_at",
        "updated_at",
    ]
    assert "WorkflowStepResult" in schemas and "WorkflowFinish" in schemas
    assert schemas["StartRun"]["properties"]["run_id"]["anyOf"] == [
        {"type": "string"},
        {"type": "null"},
    ]


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("openapi") / "runs.db") as url:
        yield url


OPERATIONS = [
    ("GET", "/api/workflows"),
    ("POST", "/api/workflows/{workflow_id}/runs"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/{run_id}"),
    ("POST", "/api/runs/{run_id}/cancel"),
    ("POST", "/api/runs/{run_id}/fork"),
    ("DELETE", "/api/runs/{run_id}"),
    ("POST", "/api/runs/{run_id}/resume"),
    ("POST", "/api/runs/{run_id}/events/{name}"),
]  # not the event stream, which on a run that never ends never ends either; nor the
# document itself, read above


# Nothing to make invalid: no input at all, or only a path's free-form string.
NO_INVALID_INPUT = {"/api/workflows", "/api/runs/{run_id}"}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        (method, path, mode)
        for method, path in OPERATIONS
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if not (path in NO_INVALID_INPUT and mode == GenerationMode.NEGATIVE)
    ],
)
def test_no_request_makes_a_server_error(
    live_url: str, method: str, path: str, mode: GenerationMode
) -> None:
    api = schemathesis.openapi.from_url(f"{live_url}/api/openapi.json")
    [operation] = [
        result.ok()
        for result in api.get_all_operations()
        if result.ok().method.upper() == method and result.ok().path == path
    ]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(checks=[not_a_server_error], timeout=10)
        answered.append(response.status_code)

    answered: list[int] = []
    check()
    assert answered, "no request reached the server"
