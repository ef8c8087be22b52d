"""Tests of a workflow with trioflow.testing: copy this file next to your own tests.

It needs pytest and pytest-trio (``pip install trioflow[test]``); the fixtures come with
trioflow. Async tests carry ``@pytest.mark.trio``, so the file works whether or not your
pytest config sets ``trio_mode = true``. Run it with ``pytest examples/test_my_workflow.py``
(or ``python examples/test_my_workflow.py``).

The workflow under test (in your project, import it instead): reserve stock, charge the
card, wait for the warehouse's "shipped" event, then send an email.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trioflow
from trioflow.testing import (
    EPOCH,
    SweepAttempt,
    cancel_invariants,
    cancellation_sweep,
    drive,
    override_steps,
)


class Order(msgspec.Struct):
    id: str
    quantity: int


class Receipt(msgspec.Struct):
    order: str
    charged: float


class Stock:
    """The shop's stock: a reservation must be given back if the order does not finish."""

    def __init__(self) -> None:
        self.reserved = 0
        self.lock = trio.Lock()


def order_workflow(stock: Stock) -> trioflow.Workflow:
    async def reserve(ctx: trioflow.StepContext[Order]) -> Order:
        async with stock.lock:
            stock.reserved += ctx.input_data.quantity
        return ctx.input_data

    async def charge(ctx: trioflow.StepContext[Order]) -> Receipt:
        try:
            await trio.sleep(2)  # the payment provider
        except BaseException:
            stock.reserved -= ctx.input_data.quantity  # give the stock back, re-raise
            raise
        return Receipt(order=ctx.input_data.id, charged=9.5 * ctx.input_data.quantity)

    async def email(ctx: trioflow.StepContext[Receipt]) -> str:
        await trio.sleep(0.5)
        return f"mailed {ctx.input_data.order} ({ctx.resume_data['carrier']})"

    return (
        trioflow.create_workflow(id="order", input_schema=Order)
        .then(trioflow.create_step(id="reserve", execute=reserve, output_schema=Order))
        .then(trioflow.create_step(id="charge", execute=charge, output_schema=Receipt))
        .wait_for_event("shipped", trioflow.create_step(id="email", execute=email))
        .commit()
    )


ORDER = {"id": "o-1", "quantity": 2}


# 1. Fixtures: virtual time, and every event with the virtual time it was emitted at.
@pytest.mark.trio
async def test_an_order_in_virtual_time(
    trioflow_clock: trio.testing.MockClock, trioflow_events: trioflow.testing.EventRecorder
) -> None:
    run = await order_workflow(Stock()).create_run()
    recording = trioflow_events.record(run)
    await run.send_event("shipped", {"carrier": "post"})  # kept until waited for
    result = await run.start(ORDER)
    assert result.result == "mailed o-1 (post)"
    assert trio.current_time() == 2.5  # no real time passed
    assert recording.times("workflow-step-start") == [0, 0, 2]
    assert result.steps["email"].ended_at == EPOCH.timestamp() + 2.5  # wall clock tied


# 2. Step overrides: replace the payment call by a fake, without touching the workflow.
@pytest.mark.trio
async def test_a_fake_payment(trioflow_clock: trio.testing.MockClock) -> None:
    async def fake_charge(ctx: trioflow.StepContext[Order]) -> dict[str, Any]:
        return {"order": ctx.input_data.id, "charged": 0.0}

    workflow = override_steps(order_workflow(Stock()), {"charge": fake_charge})
    run = await workflow.create_run()
    await run.send_event("shipped", {"carrier": "van"})
    result = await run.start(ORDER)
    # The fake's output went through the real step's output schema.
    assert result.steps["charge"].output == Receipt(order="o-1", charged=0.0)
    assert trio.current_time() == 0.5


# 3. Drivers: stop where the run waits for the warehouse, and cancel it there.
@pytest.mark.trio
async def test_cancel_while_waiting_for_the_warehouse(
    trioflow_clock: trio.testing.MockClock,
) -> None:
    stock = Stock()
    run = await order_workflow(stock).create_run()
    async with drive(run, ORDER) as driver:
        await driver.until_waiting("email")
        assert trio.current_time() == 2
        await run.cancel()
        result = await driver.result()
    assert result.status == "canceled"
    assert result.steps["email"].status == "canceled"
    assert stock.reserved == 2  # charged and reserved: that order stands


# An in-memory engine for durable runs: tell it which workflows it knows.
@pytest.fixture
def trioflow_workflows() -> list[trioflow.Workflow]:
    return [order_workflow(Stock())]


@pytest.mark.trio
async def test_a_durable_run(
    trioflow_clock: trio.testing.MockClock, trioflow_engine: trioflow.Engine
) -> None:
    run = await trioflow_engine.create_run("order")
    await run.start_soon(ORDER)  # executes in the engine's nursery
    await trio.sleep(3)
    [summary] = await trioflow_engine.list_runs()
    assert (summary.run_id, summary.status) == (run.run_id, "waiting")
    await run.send_event("shipped", {"carrier": "post"})
    assert (await run.result()).status == "success"
    assert trio.current_time() == 3.5


# 4. The cancellation sweep: a plain (not async) test; it runs trio.run per attempt.
def test_stock_is_given_back_wherever_a_cancel_lands() -> None:
    def make() -> tuple[trioflow.Workflow, Stock]:
        stock = Stock()
        return order_workflow(stock), stock

    async def scenario(run: trioflow.Run, order: Any) -> None:
        async def warehouse() -> None:
            await trio.sleep(5)
            if run.status == "waiting":
                await run.send_event("shipped", {"carrier": "post"})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(warehouse)
            await run.start(order)
            nursery.cancel_scope.cancel()

    def stock_is_consistent(attempt: SweepAttempt) -> None:
        charged = attempt.result.steps.get("charge")
        expected = 2 if charged is not None and charged.status == "success" else 0
        assert attempt.resources.reserved == expected

    report = cancellation_sweep(
        make, ORDER, check=[cancel_invariants, stock_is_consistent], scenario=scenario
    )
    # charging (t=0), waiting for the warehouse (t=2), emailing (t=5)
    assert [point.time for point in report.points] == [0, 2, 5]


if __name__ == "__main__":
    # ``python examples/test_my_workflow.py`` runs the tests above.
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
