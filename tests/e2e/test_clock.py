"""`infra/kami clock`: moving the local clock moves every running function's time, with
no restart: an order expires a month later by the sweep's clock, and a payment arriving
then is verified against that clock."""

from __future__ import annotations

from conftest import stripe_webhook
from kami_local import clock


def test_advancing_the_clock_expires_orders_and_dates_webhooks(platform):
    # The test platform's own clock (`kami_local up --no-state` keeps it in its log dir).
    file = platform.log_dir / "clock"
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    try:
        # WHEN the clock moves a month ahead and the sweep runs
        clock.advance(clock.parse_duration("31d"), file)

        platform.fire_until("the sweep to expire the order",
                            lambda: platform.get_order(order)["status"] == "expired")

        # A payment signed at the machine's time is a month old for the functions...
        event = platform.paid_event(order["order_id"])
        r = stripe_webhook.send(platform.api, event)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_signature", r.text
        # ...and one signed at the clock's time is fresh: the late payment is delivered.
        r = stripe_webhook.send(platform.api, event, timestamp=clock.now(file))
        assert r.status_code == 200, r.text
        body = platform.wait_delivered(order, timeout=30)
        assert body["deliveries"][0]["code"] in codes
    finally:
        clock.reset(file)
