"""The HTTP API (``trioflow.http_app``) through httpx's ASGI transport, on Trio: every
endpoint, every error status, and the token rules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import msgspec
import pytest
import trio
import web_app

import trioflow

RUN_STATUSES = {"pending", "running", "waiting", "suspended", "success", "failed", "canceled"}


@pytest.fixture
async def engine() -> AsyncIterator[trioflow.Engine]:
    # Leaving by a cancellation interrupts the runs still executing (the `long` ones).
    with trio.CancelScope() as scope:
        async with trioflow.open_engine(
            storage=trioflow.MemoryStorage(), workflows=web_app.WORKFLOWS
        ) as engine:
            yield engine
            scope.cancel()


def _client(app: Any, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", headers=headers
    )


@pytest.fixture
async def client(engine: trioflow.Engine) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(trioflow.http_app(engine)) as client:
        yield client


async def _start(client: httpx.AsyncClient, workflow: str, **body: Any) -> dict[str, Any]:
    response = await client.post(f"/api/workflows/{workflow}/runs", json=body)
    assert response.status_code == 201, response.text
    detail: dict[str, Any] = response.json()
    return detail


async def _ended(engine: trioflow.Engine, run_id: str) -> trioflow.RunResult:
    run = await engine.get_run(run_id)
    with trio.fail_after(10):
        return await run.result()


async def _wait_until(check: Callable[[], bool]) -> None:
    """Poll a live run's state (it changes in the engine's tasks, not ours)."""
    for _ in range(500):
        if check():
            return
        await trio.sleep(0.01)
    raise AssertionError("the run did not get there in 5 s")


def _error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and body["error"]["type"] == kind, body
    message: str = body["error"]["message"]
    assert message
    return message


# --- workflows ---------------------------------------------------------------------------


async def test_workflows_lists_graphs_schemas_and_events(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/workflows")
    assert response.status_code == 200
    by_id = {w["id"]: w for w in response.json()["workflows"]}
    assert set(by_id) == {"quick", "long", "approval", "signal", "broken", "writer"}
    quick = by_id["quick"]
    assert quick["input_schema"]["$defs"]["Name"]["required"] == ["name"]
    assert [(n["kind"], n["ids"]) for n in quick["nodes"]] == [("step", ["greet"])]
    approve = by_id["approval"]["nodes"][0]["steps"][0]
    assert approve["id"] == "approve"
    assert approve["resume_schema"]["$defs"]["Approval"]["properties"]["approved"] == {
        "type": "boolean"
    }
    signal = by_id["signal"]
    assert signal["nodes"][0]["kind"] == "wait_for_event" and signal["nodes"][0]["event"] == "go"
    assert "Approval" in signal["events"]["go"]["$defs"]


# --- starting runs ------------------------------------------------------------------------


async def test_start_runs_the_workflow_in_the_engine(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    started = await _start(client, "quick", input_data={"name": "Ada"}, run_id="run-1")
    assert started["run_id"] == "run-1" and started["workflow_id"] == "quick"
    assert started["status"] in {"pending", "running"}
    assert (await _ended(engine, "run-1")).status == "success"
    detail = (await client.get("/api/runs/run-1")).json()
    assert detail["status"] == "success"
    assert detail["result"] == {"text": "hello Ada"}
    [step] = detail["steps"]
    assert step["path"] == "greet" and step["status"] == "success"
    assert step["input"] == {"name": "Ada"} and step["output"] == {"text": "hello Ada"}
    assert step["started_at"] <= step["ended_at"]


async def test_start_with_input_that_fails_the_schema_is_422_and_stores_nothing(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    response = await client.post("/api/workflows/quick/runs", json={"input_data": {"name": 7}})
    message = _error(response, 422, "ValidationError")
    assert "$.name" in message and "str" in message
    assert await engine.list_runs() == []


async def test_start_of_an_unknown_workflow_is_404(client: httpx.AsyncClient) -> None:
    message = _error(await client.post("/api/workflows/nope/runs", json={}), 404, "NotFound")
    assert "'nope'" in message and "quick" in message


async def test_start_with_a_taken_run_id_is_409(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    await _start(client, "approval", run_id="taken")
    response = await client.post("/api/workflows/approval/runs", json={"run_id": "taken"})
    assert "'taken'" in _error(response, 409, "RunExists")


async def test_failed_step_shows_its_error(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "broken")
    assert (await _ended(engine, run["run_id"])).status == "failed"
    detail = (await client.get(f"/api/runs/{run['run_id']}")).json()
    assert detail["error"] == detail["steps"][0]["error"]
    assert detail["steps"][0]["error"] == "RuntimeError: the step broke on purpose"


# --- bodies: JSON only --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send", "status", "kind"),
    [
        ({"data": {"reason": "x"}}, 400, "UnsupportedMediaType"),  # a form post
        ({"content": b'{"reason": "x"}'}, 400, "UnsupportedMediaType"),  # no type
        (
            {"content": b'{"reason": "x"}', "headers": {"content-type": "text/plain"}},
            400,
            "UnsupportedMediaType",
        ),
        (
            {"content": b"{nope", "headers": {"content-type": "application/json"}},
            400,
            "InvalidJSON",
        ),
        ({"content": b"", "headers": {"content-type": "application/json"}}, 400, "InvalidJSON"),
        ({"json": {"reason": "x", "colour": "red"}}, 422, "InvalidBody"),
        ({"json": {"grace_period": "soon"}}, 422, "InvalidBody"),
        ({"json": {"grace_period": -1}}, 422, "InvalidBody"),
    ],
)
async def test_changes_take_a_json_body_that_fits_its_schema(
    client: httpx.AsyncClient, send: dict[str, Any], status: int, kind: str
) -> None:
    run = await _start(client, "approval")
    response = await client.post(f"/api/runs/{run['run_id']}/cancel", **send)
    _error(response, status, kind)
    assert (await client.get(f"/api/runs/{run['run_id']}")).json()["cancel_requested"] is False


# --- listing --------------------------------------------------------------------------------


async def test_list_runs_filters_and_pages_newest_first(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    for n in range(3):
        await _start(client, "quick", input_data={"name": str(n)}, run_id=f"q{n}")
        await _ended(engine, f"q{n}")
        await trio.sleep(0.01)  # distinct creation times
    await _start(client, "approval", run_id="a0")
    await _ended(engine, "a0")

    page = (await client.get("/api/runs")).json()
    assert [r["run_id"] for r in page["runs"]] == ["a0", "q2", "q1", "q0"]
    assert page["limit"] == 50 and page["offset"] == 0
    assert set(page["runs"][0]) == {
        "run_id",
        "workflow_id",
        "status",
        "created_at",
        "updated_at",
        "version",
        "forked_from",
        "lease_until",
    }

    async def ids(query: str) -> list[str]:
        response = await client.get(f"/api/runs?{query}")
        assert response.status_code == 200, response.text
        return [r["run_id"] for r in response.json()["runs"]]

    assert await ids("workflow=quick&limit=2") == ["q2", "q1"]
    assert await ids("workflow=quick&limit=2&offset=2") == ["q0"]
    assert await ids("status=suspended") == ["a0"]
    assert await ids("status=success&workflow=approval") == []


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=100000", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=52537089982212464640", "offset"),  # found by schemathesis: a 500 once
    ],
)
async def test_list_runs_with_a_bad_query_is_400(
    client: httpx.AsyncClient, query: str, named: str
) -> None:
    message = _error(await client.get(f"/api/runs?{query}"), 400, "InvalidQuery")
    assert message.startswith(named)


async def test_unknown_run_is_404_on_every_run_endpoint(client: httpx.AsyncClient) -> None:
    _error(await client.get("/api/runs/ghost"), 404, "RunNotFoundError")
    _error(await client.get("/api/runs/ghost/events"), 404, "RunNotFoundError")
    for action, body in [("cancel", {}), ("resume", {}), ("events/go", {})]:
        response = await client.post(f"/api/runs/ghost/{action}", json=body)
        assert "'ghost'" in _error(response, 404, "RunNotFoundError")


async def test_unknown_paths_and_methods_answer_json_errors(client: httpx.AsyncClient) -> None:
    _error(await client.get("/api/nothing"), 404, "NotFound")
    _error(await client.delete("/api/runs"), 405, "MethodNotAllowed")


# --- cancel -------------------------------------------------------------------------------


async def test_cancel_a_running_run_answers_once_it_is_canceled(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "long")
    live = await engine.get_run(run["run_id"])
    await _wait_until(lambda: bool(live.result_nowait().steps))
    response = await client.post(
        f"/api/runs/{run['run_id']}/cancel", json={"reason": "no longer needed"}
    )
    assert response.status_code == 200
    assert response.json() == {"message": "Workflow run canceled", "status": "canceled"}
    detail = (await client.get(f"/api/runs/{run['run_id']}")).json()
    assert detail["status"] == "canceled" and detail["cancel_requested"] is True
    assert detail["cancel_reason"] == "no longer needed"
    assert [(s["path"], s["status"]) for s in detail["steps"]] == [("wait-for-cancel", "canceled")]
    again = await client.post(f"/api/runs/{run['run_id']}/cancel", json={})
    assert again.json() == {"message": "Workflow run canceled", "status": "canceled"}


async def test_cancel_with_a_grace_period_lets_the_step_stop_itself(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "long")
    response = await client.post(f"/api/runs/{run['run_id']}/cancel", json={"grace_period": 5})
    assert response.json()["status"] == "canceled"


async def test_cancel_a_finished_run_changes_nothing(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "quick", input_data={"name": "x"})
    await _ended(engine, run["run_id"])
    response = await client.post(f"/api/runs/{run['run_id']}/cancel", json={})
    assert response.json() == {"message": "Workflow run already success", "status": "success"}


# --- resume ---------------------------------------------------------------------------------


async def test_resume_a_suspended_run_with_typed_data(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "approval")
    assert (await _ended(engine, run["run_id"])).status == "suspended"
    detail = (await client.get(f"/api/runs/{run['run_id']}")).json()
    assert detail["suspended"] == ["approve"]
    assert detail["steps"][0]["suspend_payload"] == {"question": "ship it?"}

    bad = await client.post(
        f"/api/runs/{run['run_id']}/resume", json={"resume_data": {"approved": "yes"}}
    )
    assert "$.approved" in _error(bad, 422, "ValidationError")
    wrong_step = await client.post(
        f"/api/runs/{run['run_id']}/resume", json={"step": "nope", "resume_data": {}}
    )
    assert "approve" in _error(wrong_step, 422, "InvalidRequest")

    response = await client.post(
        f"/api/runs/{run['run_id']}/resume",
        json={"step": "approve", "resume_data": {"approved": True, "note": "fine"}},
    )
    assert response.status_code == 202, response.text
    assert response.json()["status"] in {"running", "success"}
    result = await _ended(engine, run["run_id"])
    assert result.status == "success"
    assert msgspec.to_builtins(result.result) == {"approved": True, "note": "fine"}


async def test_resume_a_run_that_is_not_suspended_is_409(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "quick", input_data={"name": "x"})
    await _ended(engine, run["run_id"])
    response = await client.post(f"/api/runs/{run['run_id']}/resume", json={})
    assert "not 'suspended'" in _error(response, 409, "RunStateError")


async def test_resume_a_canceled_run_is_409(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "approval")
    await _ended(engine, run["run_id"])
    await client.post(f"/api/runs/{run['run_id']}/cancel", json={})
    response = await client.post(f"/api/runs/{run['run_id']}/resume", json={})
    assert "canceled" in _error(response, 409, "RunStateError")


# --- events ---------------------------------------------------------------------------------


async def test_send_event_reaches_the_waiting_step(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "signal")
    live = await engine.get_run(run["run_id"])
    await _wait_until(lambda: live.status == "waiting")
    bad = await client.post(f"/api/runs/{run['run_id']}/events/go", json={"data": {"x": 1}})
    _error(bad, 422, "ValidationError")
    unknown = await client.post(f"/api/runs/{run['run_id']}/events/stop", json={"data": {}})
    assert "'stop'" in _error(unknown, 422, "InvalidRequest")
    response = await client.post(
        f"/api/runs/{run['run_id']}/events/go", json={"data": {"approved": False, "note": "no"}}
    )
    assert response.status_code == 202, response.text
    result = await _ended(engine, run["run_id"])
    assert msgspec.to_builtins(result.result) == {"approved": False, "note": "no"}
    late = await client.post(f"/api/runs/{run['run_id']}/events/go", json={"data": {}})
    assert "takes no events" in _error(late, 409, "RunStateError")


# --- the event stream -----------------------------------------------------------------------


def _frames(text: str) -> list[tuple[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            frames.append((fields["event"], fields["data"]))
    return frames


async def test_event_stream_sends_the_run_its_events_and_end(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "quick", input_data={"name": "Ada"})
    with trio.fail_after(10):
        response = await client.get(f"/api/runs/{run['run_id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = _frames(response.text)
    names = [name for name, _ in frames]
    assert names[0] == "run" and names[-1] == "end"
    events = [name for name in names if name.startswith("workflow-")]
    # No replay: the stream sends what happens from when it began, which may be after
    # the run started; the step takes longer than that.
    everything = [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert events == everything[-len(events) :] and len(events) >= 2
    decoded = [trioflow.decode_event(data) for name, data in frames if name.startswith("workflow")]
    assert decoded[-1] == trioflow.WorkflowFinish(
        run_id=run["run_id"], status="success", result={"text": "hello Ada"}
    )
    last_run = [data for name, data in frames if name == "run"][-1]
    assert '"status":"success"' in last_run


async def test_event_stream_of_an_ended_run_is_its_state_and_end(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    run = await _start(client, "broken")
    await _ended(engine, run["run_id"])
    response = await client.get(f"/api/runs/{run['run_id']}/events")
    assert [name for name, _ in _frames(response.text)] == ["run", "end"]


async def test_event_stream_follows_a_run_resumed_later(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    """A suspended run is read from storage until it executes again, then watched."""
    run = await _start(client, "approval")
    await _ended(engine, run["run_id"])
    async with trio.open_nursery() as nursery:
        got: list[httpx.Response] = []

        async def stream() -> None:
            got.append(await client.get(f"/api/runs/{run['run_id']}/events"))

        nursery.start_soon(stream)
        await trio.sleep(0.2)
        await client.post(
            f"/api/runs/{run['run_id']}/resume", json={"resume_data": {"approved": True}}
        )
    statuses = [
        data.split('"status":"')[1].split('"')[0]
        for name, data in _frames(got[0].text)
        if name == "run"
    ]
    assert statuses[0] == "suspended" and statuses[-1] == "success"


# --- the token --------------------------------------------------------------------------------


async def test_with_a_token_every_api_call_needs_it(engine: trioflow.Engine) -> None:
    app = trioflow.http_app(engine, token="s3cret")
    calls = [
        ("GET", "/api/workflows"),
        ("GET", "/api/runs"),
        ("GET", "/api/runs/x"),
        ("GET", "/api/runs/x/events"),
        ("GET", "/api/openapi.json"),
        ("POST", "/api/workflows/quick/runs"),
        ("POST", "/api/runs/x/cancel"),
        ("POST", "/api/runs/x/resume"),
        ("POST", "/api/runs/x/events/go"),
    ]
    for headers in [{}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}]:
        async with _client(app, **headers) as client:
            for method, path in calls:
                response = await client.request(method, path, json={})
                assert response.headers["www-authenticate"] == "Bearer"
                _error(response, 401, "Unauthorized")
    async with _client(app, authorization="Bearer s3cret") as client:
        assert (await client.get("/api/workflows")).status_code == 200
        assert (await client.get("/api/runs")).status_code == 200


async def test_the_dashboard_loads_without_the_token_and_never_contains_it(
    engine: trioflow.Engine,
) -> None:
    async with _client(trioflow.http_app(engine, token="s3cret")) as client:
        for path in ["/", "/app.js", "/api.js", "/forms.js", "/style.css"]:
            response = await client.get(path)
            assert response.status_code == 200, path
            assert "s3cret" not in response.text
        index = await client.get("/")
        assert "default-src 'self'" in index.headers["content-security-policy"]
        assert index.headers["x-frame-options"] == "DENY"
        assert "http" not in index.text.replace('lang="en"', "")  # no CDN, no other host


async def test_no_cors_headers_for_another_origin(client: httpx.AsyncClient) -> None:
    origin = {"origin": "https://evil.example"}
    preflight = await client.options(
        "/api/runs/x/cancel",
        headers={**origin, "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 405
    response = await client.get("/api/runs", headers=origin)
    for answer in (preflight, response):
        assert not [h for h in answer.headers if h.startswith("access-control-")]


async def test_an_empty_token_is_refused(engine: trioflow.Engine) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        trioflow.http_app(engine, token="")


# --- serving ---------------------------------------------------------------------------------


async def test_serve_http_refuses_a_non_loopback_address_without_a_token(
    engine: trioflow.Engine,
) -> None:
    for host in ["0.0.0.0", "192.168.1.5", "example.com", "::"]:
        with pytest.raises(ValueError, match="pass a token"):
            await trioflow.serve_http(engine, host=host, port=0)


async def test_serve_http_serves_on_loopback_for_nursery_start(engine: trioflow.Engine) -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: trioflow.serve_http(
                engine, host="127.0.0.1", port=0, token="t", task_status=task_status
            )
        )
        assert url.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/api/runs")).status_code == 401
            ok = await client.get("/api/runs", headers={"authorization": "Bearer t"})
            assert ok.json()["runs"] == []
        nursery.cancel_scope.cancel()


def test_the_core_does_not_import_the_web_libraries() -> None:
    code = (
        "import sys, trioflow; "
        "print(sorted(m for m in ('starlette', 'hypercorn', 'trioflow._web') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_the_web_extra_the_error_says_how_to_install_it() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None; import trioflow\n"
        "try:\n    trioflow.http_app(None)\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'trioflow[web]'" in out.stdout


async def test_the_api_over_sqlite_and_postgresql(storage: trioflow.Storage) -> None:
    """Start, list, cancel and resume through the API on each durable storage."""
    with trio.CancelScope() as scope:
        async with (
            trioflow.open_engine(storage=storage, workflows=web_app.WORKFLOWS) as engine,
            _client(trioflow.http_app(engine)) as client,
        ):
            quick = await _start(client, "quick", input_data={"name": "Bo"}, run_id="q")
            approval = await _start(client, "approval", run_id="a")
            long = await _start(client, "long", run_id="l")
            assert (await _ended(engine, quick["run_id"])).status == "success"
            assert (await _ended(engine, approval["run_id"])).status == "suspended"
            cancel = await client.post("/api/runs/l/cancel", json={"reason": "stop"})
            assert cancel.json()["status"] == "canceled"
            resume = await client.post(
                "/api/runs/a/resume", json={"resume_data": {"approved": True}}
            )
            assert resume.status_code == 202, resume.text
            assert (await _ended(engine, "a")).status == "success"
            page = (await client.get("/api/runs?status=success")).json()
            assert sorted(r["run_id"] for r in page["runs"]) == ["a", "q"]
            detail = (await client.get(f"/api/runs/{long['run_id']}")).json()
            assert detail["status"] == "canceled" and detail["cancel_reason"] == "stop"
            scope.cancel()


async def test_runs_start_on_a_named_version_and_list_by_version(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    version = engine.workflows["quick"].version
    started = await _start(client, "quick", input_data={"name": "Ada"}, version=version)
    assert (await _ended(engine, started["run_id"])).status == "success"
    listed = (await client.get("/api/runs", params={"version": version})).json()
    assert [run["run_id"] for run in listed["runs"]] == [started["run_id"]]
    assert listed["runs"][0]["version"] == version
    assert (await client.get(f"/api/runs/{started['run_id']}")).json()["version"] == version
    assert (await client.get("/api/runs", params={"version": "nope"})).json()["runs"] == []
    response = await client.post("/api/workflows/quick/runs", json={"version": "nope"})
    message = _error(response, 404, "NotFound")
    assert "version 'nope' of workflow 'quick'" in message


async def test_delete_removes_a_finished_run_and_refuses_one_that_is_not(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    started = await _start(client, "quick", input_data={"name": "Ada"})
    assert (await _ended(engine, started["run_id"])).status == "success"
    waiting = await _start(client, "approval", run_id="waiting")  # not finished
    deleted = await client.delete(f"/api/runs/{started['run_id']}")
    assert (deleted.status_code, deleted.json()) == (200, {"deleted": started["run_id"]})
    _error(await client.get(f"/api/runs/{started['run_id']}"), 404, "RunNotFoundError")
    _error(await client.delete(f"/api/runs/{started['run_id']}"), 404, "RunNotFoundError")
    message = _error(await client.delete(f"/api/runs/{waiting['run_id']}"), 409, "RunStateError")
    assert "only a finished run can be deleted" in message


async def test_fork_starts_a_new_run_from_a_step(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    started = await _start(client, "quick", input_data={"name": "Ada"}, run_id="orig")
    assert (await _ended(engine, "orig")).status == "success"
    response = await client.post("/api/runs/orig/fork", json={"from_step": "greet"})
    assert response.status_code == 201
    forked = response.json()
    assert forked["run_id"] != started["run_id"]
    assert (await _ended(engine, forked["run_id"])).result.text == "hello Ada"
    message = _error(
        await client.post("/api/runs/orig/fork", json={"from_step": "nope"}), 422, "InvalidRequest"
    )
    assert "has no step 'nope' that started" in message
    _error(
        await client.post("/api/runs/none/fork", json={"from_step": "greet"}),
        404,
        "RunNotFoundError",
    )
    taken = await client.post(
        "/api/runs/orig/fork", json={"from_step": "greet", "new_run_id": "orig"}
    )
    _error(taken, 409, "RunExists")


async def test_list_runs_by_when_they_were_created(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    started = await _start(client, "quick", input_data={"name": "Ada"})
    assert (await _ended(engine, started["run_id"])).status == "success"
    page = (await client.get("/api/runs", params={"since": "2000-01-01T00:00:00Z"})).json()
    assert [r["run_id"] for r in page["runs"]] == [started["run_id"]]
    page = (await client.get("/api/runs", params={"until": "2000-01-01"})).json()
    assert page["runs"] == []
    message = _error(await client.get("/api/runs", params={"since": "soon"}), 400, "InvalidQuery")
    assert "since must be an ISO 8601 date or datetime" in message


async def test_a_run_shows_its_failed_steps_traceback_and_its_logs(
    client: httpx.AsyncClient, engine: trioflow.Engine
) -> None:
    started = await _start(client, "broken")
    assert (await _ended(engine, started["run_id"])).status == "failed"
    detail = (await client.get(f"/api/runs/{started['run_id']}")).json()
    [step] = detail["steps"]
    assert "RuntimeError: the step broke on purpose" in step["traceback"]
    assert "in explode" in step["traceback"]
    assert [(log["level"], log["message"], log["step_id"]) for log in detail["logs"]] == [
        ("INFO", "checking the parts", "explode"),
        ("WARNING", "a part is missing", "explode"),
    ]
