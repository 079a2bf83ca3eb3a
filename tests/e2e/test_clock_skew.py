"""Clocks that disagree between functions (docs/reliability.md, section 4), through the
real binaries: `infra/kami clock skew FN ±D` sets one function's clock off the others'
(kami_local.clock, the functions' `LocalClock`).

- The sweep's clock ahead of checkout's and the webhook's by more than the payment
  window and its grace: the sweep expires an order the buyer can still pay, and the
  payment then takes the stock again and is delivered, with every counter exact.
- The delivery worker's clock behind the webhook's: the order is delivered once, and
  its history never dates a move before the one it follows.
"""

from __future__ import annotations

from conftest import stripe_webhook
from kami_local import clock

# The template's defaults (OrderTtlSeconds, ExpiryGraceSeconds), and a minute more.
PAST_THE_GRACE = 1800 + 300 + 60


def test_a_sweep_ahead_of_checkout_expires_an_order_whose_late_payment_is_still_delivered(platform):
    file = platform.log_dir / "clock"
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 1, "sold": 0}
    try:
        # GIVEN the sweep's clock ahead of everyone else's by more than the window and grace
        clock.skew("ExpirySweepFunction", PAST_THE_GRACE, file)

        # WHEN it runs, THEN by its clock the order is over: expired, its unit back
        platform.fire_until("the skewed sweep to expire the order",
                            lambda: platform.get_order(order)["status"] == "expired")
        assert platform.admin_product(sku)["stock"] == {"available": 2, "reserved": 0, "sold": 0}

        # WHEN the buyer pays on time by checkout's and the webhook's clock
        r = stripe_webhook.send(platform.api, platform.paid_event(order["order_id"]))
        assert r.status_code == 200, r.text

        # THEN the payment takes its unit again and the order is delivered, once
        body = platform.wait_delivered(order, timeout=60)
        assert [d["code"] for d in body["deliveries"]] in ([c] for c in codes)
        assert [e["to"] for e in body["events"]] == ["pending_payment", "expired", "paid", "delivered"]
        assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 1}

        # AND another run of the skewed sweep leaves the delivered order alone
        platform.fire_until("one more sweep run", lambda: True)
        assert platform.get_order(order)["status"] == "delivered"
    finally:
        clock.skew("ExpirySweepFunction", 0, file)


def test_a_worker_behind_the_webhook_never_dates_delivery_before_payment(platform):
    file = platform.log_dir / "clock"
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    try:
        # GIVEN the delivery worker's clock ten minutes behind the webhook's
        clock.skew("DeliveryWorkerFunction", -600, file)

        # WHEN the order is paid
        r = stripe_webhook.send(platform.api, platform.paid_event(order["order_id"]))
        assert r.status_code == 200, r.text

        # THEN it is delivered once, and no move is dated before the one it follows
        body = platform.wait_delivered(order, timeout=60)
        assert [d["code"] for d in body["deliveries"]] == codes
        moves = [(e["to"], e["at"]) for e in body["events"]]
        assert [to for to, _ in moves] == ["pending_payment", "paid", "delivered"], moves
        times = [at for _, at in moves]
        assert times == sorted(times), moves  # fixed-width UTC: sorted as text is sorted in time
        assert platform.admin_product(sku)["stock"] == {"available": 0, "reserved": 0, "sold": 1}
    finally:
        clock.skew("DeliveryWorkerFunction", 0, file)

