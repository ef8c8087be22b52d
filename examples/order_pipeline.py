"""An order pipeline: validate the order, then reserve stock and charge the payment in
parallel, then ship.

Every step honours the run's abort signal, so a cancel (Ctrl-C under `trioflow run`,
`trioflow runs cancel`, or `await run.cancel()`) stops the order cleanly: the stock
reservation is released by an abort listener, the payment call is abandoned through
the signal's cancel scope, and nothing is shipped.

Run it with the command line (the latencies are simulated with `trio.sleep`; `latency`
scales them, so `"latency": 50` gives you time to press Ctrl-C):

    trioflow run examples/order_pipeline.py:workflow \\
        --input '{"order_id": "A-1001", "sku": "trio-mug", "quantity": 2}'

or as a program, ``python examples/order_pipeline.py``, which runs one order on a
temporary SQLite database and prints the result (about 0.3 s).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import trio

import trioflow

PRICES = {"trio-mug": 12.5, "nursery-tee": 20.0, "cancel-scope-cap": 15.0}
STOCK = {"trio-mug": 40, "nursery-tee": 3, "cancel-scope-cap": 0}
RESERVED: dict[str, int] = {}  # sku -> units held for orders in flight


class Order(msgspec.Struct):
    order_id: str
    sku: str
    quantity: int
    latency: float = 1.0  # scales the simulated latencies


class Priced(msgspec.Struct):
    order_id: str
    sku: str
    quantity: int
    amount: float
    latency: float = 1.0


class Reservation(msgspec.Struct):
    reservation_id: str
    units: int


class Payment(msgspec.Struct):
    payment_id: str
    amount: float


class Shipment(msgspec.Struct):
    order_id: str
    tracking: str
    amount: float
    reservation_id: str
    payment_id: str


@trioflow.step(id="validate", input_schema=Order, output_schema=Priced)
async def validate(ctx: trioflow.StepContext[Order]) -> Priced:
    order = ctx.input_data
    await trio.sleep(0.02 * order.latency)  # look the product up
    if order.sku not in PRICES:
        raise ValueError(f"unknown sku {order.sku!r}; known: {', '.join(sorted(PRICES))}")
    if order.quantity < 1:
        raise ValueError(f"quantity must be at least 1, got {order.quantity}")
    amount = PRICES[order.sku] * order.quantity
    return Priced(order.order_id, order.sku, order.quantity, amount, order.latency)


@trioflow.step(id="reserve-stock", input_schema=Priced, output_schema=Reservation)
async def reserve_stock(ctx: trioflow.StepContext[Priced]) -> Reservation:
    order = ctx.input_data
    available = STOCK[order.sku] - RESERVED.get(order.sku, 0)
    if available < order.quantity:
        raise RuntimeError(f"only {available} of {order.sku!r} in stock")
    RESERVED[order.sku] = RESERVED.get(order.sku, 0) + order.quantity

    def release() -> None:  # an abort listener: runs at once, synchronously, on cancel
        RESERVED[order.sku] -= order.quantity

    ctx.abort_signal.add_event_listener("abort", release)
    try:
        await trio.sleep(0.1 * order.latency)  # the warehouse confirms the hold
    finally:
        ctx.abort_signal.remove_event_listener("abort", release)
    return Reservation(reservation_id=f"R-{order.order_id}", units=order.quantity)


@trioflow.step(id="charge-payment", input_schema=Priced, output_schema=Payment)
async def charge_payment(ctx: trioflow.StepContext[Priced]) -> Payment:
    order = ctx.input_data
    # The provider call is abandoned as soon as the signal aborts, even during a
    # cancel's grace period; the step then ends the run 'canceled' itself.
    with ctx.abort_signal.cancel_scope():
        await trio.sleep(0.08 * order.latency)  # the payment provider
        return Payment(payment_id=f"P-{order.order_id}", amount=order.amount)
    ctx.abort()


@trioflow.step(id="ship", output_schema=Shipment)
async def ship(ctx: trioflow.StepContext[dict[str, object]]) -> Shipment:
    order = msgspec.convert(ctx.get_init_data(), Order)
    reservation = msgspec.convert(ctx.input_data["reserve-stock"], Reservation)
    payment = msgspec.convert(ctx.input_data["charge-payment"], Payment)
    ctx.abort_signal.throw_if_aborted()  # never print a label for a canceled order
    await trio.sleep(0.1 * order.latency)  # print the label, book the courier
    return Shipment(
        order_id=order.order_id,
        tracking=f"TRK-{order.order_id}",
        amount=payment.amount,
        reservation_id=reservation.reservation_id,
        payment_id=payment.payment_id,
    )


workflow = (
    trioflow.create_workflow(id="order-pipeline", input_schema=Order, output_schema=Shipment)
    .then(validate)
    .parallel([reserve_stock, charge_payment])
    .then(ship)
    .commit()
)


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        storage = trioflow.SQLiteStorage(Path(folder) / "runs.db")
        async with trioflow.open_engine(storage=storage, workflows=[workflow]) as engine:
            run = await engine.create_run(workflow)
            result = await run.start(
                input_data={"order_id": "A-1001", "sku": "trio-mug", "quantity": 2}
            )
            print(f"{result.status}: {result.result}")
            for step_id, step in result.steps.items():
                print(f"  {step_id}: {step.status}")


if __name__ == "__main__":
    trio.run(main)
