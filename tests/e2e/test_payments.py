"""Paying through payment channels over real HTTP: the local platform's channels point at
the payment sandbox (docs/sandbox.md), which checks Kami's signed requests with the
providers' own SDKs (python-alipay-sdk, wechatpayv3, stripe) and notifies Kami exactly as
each provider does."""

from __future__ import annotations

import concurrent.futures
import uuid

import pytest
import requests
from conftest import ADMIN, wait_for
from kami_local.sandbox import cli as sandbox


def _pay(platform, order: dict, channel: str | None = None, method: str | None = None,
         key: str | None = None) -> requests.Response:
    body = {k: v for k, v in (("channel", channel), ("method", method)) if v}
    return requests.post(f"{platform.api}/orders/{order['order_id']}/payments", timeout=60, json=body,
                         headers={"Authorization": f"Bearer {order['access_token']}",
                                  "Idempotency-Key": key or str(uuid.uuid4())})


@pytest.mark.parametrize("channel,provider,action", [
    ("alipay-sandbox", "alipay", "redirect"),
    ("wechat-sandbox", "wechatpay", "qr_code"),
    ("stripe-sandbox", "stripe", "redirect"),
])
def test_a_buyer_pays_through_each_provider_and_gets_the_key(platform, channel, provider, action):
    # GIVEN an order, which lists the sandbox's channels
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    assert channel in [c["channel"] for c in order["payment_channels"]], order
    # WHEN the buyer opens a payment on the channel (the sandbox verified Kami's signature
    # with the provider's SDK to answer it) and pays; the provider notifies Kami
    r = _pay(platform, order, channel)
    assert r.status_code == 201, r.text
    started = r.json()
    assert (started["provider"], started["action"]["type"], started["status"]) == (provider, action, "pending")
    assert started["payment_id"].startswith(order["order_id"])
    pay_url = started["action"].get("url") if provider == "alipay" else None
    result = sandbox.pay(platform.sandbox, provider, started["payment_id"], pay_url=pay_url)
    assert all(n["accepted"] for n in result["notifications"]), result
    # THEN the key is delivered
    body = platform.wait_delivered(order, timeout=30)
    assert body["deliveries"][0]["code"] in codes


def test_a_retry_with_the_same_key_answers_the_same_payment(platform):
    sku, _ = platform.create_product(keys=1)
    order = platform.create_order(sku)
    key = str(uuid.uuid4())
    first = _pay(platform, order, "wechat-sandbox", key=key)
    again = _pay(platform, order, "wechat-sandbox", key=key)
    assert first.status_code == again.status_code == 201, (first.text, again.text)
    assert first.json() == again.json()
    other = _pay(platform, order, "alipay-sandbox", key=key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused", other.text


def test_a_lost_notification_is_found_by_the_reconciler(platform):
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    started = _pay(platform, order, "wechat-sandbox").json()
    result = sandbox.pay(platform.sandbox, "wechatpay", started["payment_id"], lose=True)
    assert result["notifications"] == [], result
    assert platform.get_order(order)["status"] == "pending_payment"

    def reconciled() -> bool:
        # The reconciler asks about attempts a minute old: move the clock past that.
        r = requests.post(f"{platform.api}/_local/schedules/PaymentReconcile/fire", timeout=120)
        assert r.status_code == 200, r.text
        return platform.get_order(order)["status"] in ("paid", "delivered")

    from kami_local import clock
    file = platform.log_dir / "clock"
    try:
        clock.advance(clock.parse_duration("61s"), file)
        wait_for("the reconciler to find the payment", reconciled, timeout=60, interval=0.5)
    finally:
        clock.reset(file)
    body = platform.wait_delivered(order, timeout=30)
    assert body["deliveries"][0]["code"] in codes


def test_duplicate_notifications_across_two_channels_deliver_once(platform):
    # GIVEN one order with an attempt on each of two channels, both paid
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    alipay = _pay(platform, order, "alipay-sandbox").json()
    wechat = _pay(platform, order, "wechat-sandbox").json()
    sandbox.pay(platform.sandbox, "alipay", alipay["payment_id"], lose=True, pay_url=alipay["action"]["url"])
    sandbox.pay(platform.sandbox, "wechatpay", wechat["payment_id"], lose=True)
    # WHEN 50 notifications of both arrive at once
    def resend(i: int) -> dict:
        if i % 2:
            return sandbox.resend(platform.sandbox, "alipay", alipay["payment_id"])
        return sandbox.resend(platform.sandbox, "wechatpay", wechat["payment_id"])
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(resend, range(50)))
    assert all(n["accepted"] for r in results for n in r["notifications"]), results
    # THEN one delivery; the other channel's money is a duplicate payment
    body = platform.wait_delivered(order, timeout=30)
    assert len(body["deliveries"]) == 1
    r = requests.get(f"{platform.api}/admin/orders/{order['order_id']}", headers=ADMIN, timeout=30)
    payments = r.json()["payments"]
    outcomes = sorted(p["outcome"] for p in payments)
    assert outcomes.count("paid") == 1 and "duplicate_payment" in outcomes, payments
    # The duplicate's money goes back through its own channel; the order stays delivered.
    duplicate = next(p for p in payments if p["outcome"] == "duplicate_payment")
    refund = _refund(platform, order, duplicate["amount"]["amount"], payment_id=duplicate["payment_id"])
    assert refund.status_code == 201 and refund.json()["payment_id"] == duplicate["payment_id"], refund.text
    if refund.json()["status"] == "pending":
        sandbox.refund_notify(platform.sandbox, refund.json()["refund_id"])
    assert platform.get_order(order)["status"] == "delivered"


def _attempt(platform, order: dict, payment_id: str) -> dict:
    from kami_local.provision import client
    item = client("dynamodb", platform.endpoint).get_item(
        TableName=platform.resources["KamiTable"], ConsistentRead=True,
        Key={"pk": {"S": f"ORDER#{order['order_id']}"}, "sk": {"S": f"ATTEMPT#{payment_id}"}})["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_an_amount_one_fen_short_is_an_exception_and_nothing_is_delivered(platform):
    sku, _ = platform.create_product(keys=1, price=990)
    order = platform.create_order(sku)
    started = _pay(platform, order, "wechat-sandbox").json()
    result = sandbox.pay(platform.sandbox, "wechatpay", started["payment_id"], amount=989)
    assert all(n["accepted"] for n in result["notifications"]), result
    view = wait_for("the payment to be recorded", lambda: (v := platform.get_order(order))["status"] != "pending_payment" and v,
                    timeout=30)
    assert view["status"] == "payment_exception", view
    assert view["deliveries"] == []
    assert platform.admin_product(sku)["stock"]["sold"] == 0
    # The operator returns that money: the order is settled as refunded.
    r = _refund(platform, order, 989)
    assert r.status_code == 201 and r.json()["status"] in ("succeeded", "pending"), r.text
    if r.json()["status"] == "pending":
        sandbox.refund_notify(platform.sandbox, r.json()["refund_id"])
    wait_for("the refund to settle", lambda: platform.get_order(order)["status"] == "refunded", timeout=30)


def test_the_reconciler_closes_an_expired_orders_open_payment_upstream(platform):
    from kami_local import clock
    sku, _ = platform.create_product(keys=1)
    order = platform.create_order(sku)
    started = _pay(platform, order, "wechat-sandbox").json()
    file = platform.log_dir / "clock"
    try:
        # Past the order's 30 minutes: it can no longer be paid.
        clock.advance(clock.parse_duration("31m"), file)

        def closed() -> bool:
            r = requests.post(f"{platform.api}/_local/schedules/PaymentReconcile/fire", timeout=120)
            assert r.status_code == 200, r.text
            return _attempt(platform, order, started["payment_id"])["status"] == "closed"

        wait_for("the reconciler to close the attempt", closed, timeout=60, interval=0.5)
        # Closed at WeChat Pay too: the buyer can no longer pay it.
        with pytest.raises(RuntimeError, match="sandbox refused pay"):
            sandbox.pay(platform.sandbox, "wechatpay", started["payment_id"])
    finally:
        clock.reset(file)


def _paid_and_delivered(platform, channel: str, provider: str, keys: int = 1, price: int = 990) -> dict:
    sku, _ = platform.create_product(keys=keys, price=price)
    order = platform.create_order(sku)
    started = _pay(platform, order, channel).json()
    pay_url = started["action"].get("url") if provider == "alipay" else None
    result = sandbox.pay(platform.sandbox, provider, started["payment_id"], pay_url=pay_url)
    assert all(n["accepted"] for n in result["notifications"]), result
    platform.wait_delivered(order, timeout=30)
    return order


def _refund(platform, order: dict, amount: int, key: str | None = None, **extra) -> requests.Response:
    body = {"amount": {"amount": amount, "currency": "CNY"}, "reason": "e2e refund", **extra}
    return requests.post(f"{platform.api}/admin/orders/{order['order_id']}/refunds", timeout=60, json=body,
                         headers={**ADMIN, "Idempotency-Key": key or str(uuid.uuid4())})


def test_a_full_refund_through_alipay_ends_the_order_refunded(platform):
    order = _paid_and_delivered(platform, "alipay-sandbox", "alipay")
    key = str(uuid.uuid4())
    r = _refund(platform, order, 990, key)
    assert r.status_code == 201 and r.json()["status"] == "succeeded", r.text
    again = _refund(platform, order, 990, key)
    assert again.status_code == 201 and again.json()["refund_id"] == r.json()["refund_id"], again.text
    assert platform.get_order(order)["status"] == "refunded"
    more = _refund(platform, order, 1)
    assert more.status_code == 409 and more.json()["error"]["code"] == "refund_exceeds_payment", more.text


def test_two_concurrent_partial_refunds_that_exceed_the_payment_one_is_refused(platform):
    order = _paid_and_delivered(platform, "stripe-sandbox", "stripe")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: _refund(platform, order, 600), range(2)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201, 409], [a.text for a in answers]
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.json()["error"]["code"] == "refund_exceeds_payment"
    assert platform.get_order(order)["status"] == "partially_refunded"
    rest = _refund(platform, order, 390)
    assert rest.status_code == 201, rest.text
    assert platform.get_order(order)["status"] == "refunded"


def test_ten_identical_refunds_at_once_refund_once_with_one_audit_record(platform):
    order = _paid_and_delivered(platform, "alipay-sandbox", "alipay")
    key = str(uuid.uuid4())
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: _refund(platform, order, 990, key), range(10)))
    done = [a for a in answers if a.status_code == 201]
    # A copy that arrives while the first is still talking to Alipay is told to retry.
    busy = [a for a in answers if a.status_code != 201]
    assert all(a.status_code == 503 and a.json()["error"]["code"] == "busy_retry" for a in busy), \
        [a.text for a in busy]
    assert done and len({a.json()["refund_id"] for a in done}) == 1, [a.text for a in done]
    again = _refund(platform, order, 990, key)
    assert again.status_code == 201 and again.json()["refund_id"] == done[0].json()["refund_id"], again.text
    assert platform.get_order(order)["status"] == "refunded"
    view = requests.get(f"{platform.api}/admin/orders/{order['order_id']}", headers=ADMIN, timeout=30).json()
    assert len(view["refunds"]) == 1, view["refunds"]
    assert [e["to"] for e in view["events"]].count("refunded") == 1, view["events"]
    trail = requests.get(f"{platform.api}/admin/audit", params={"order": order["order_id"]}, headers=ADMIN,
                         timeout=30).json()["entries"]
    assert [e["action"] for e in trail] == ["order.refund"], trail


def test_a_wechat_refund_settles_by_its_notification(platform):
    order = _paid_and_delivered(platform, "wechat-sandbox", "wechatpay")
    r = _refund(platform, order, 990)
    assert r.status_code == 201, r.text
    refund = r.json()
    if refund["status"] == "pending":
        result = sandbox.refund_notify(platform.sandbox, refund["refund_id"])
        assert all(n["accepted"] for n in result["notifications"]), result
    wait_for("the refund to settle", lambda: platform.get_order(order)["status"] == "refunded", timeout=30)


def test_a_refund_notified_twice_settles_once(platform):
    order = _paid_and_delivered(platform, "wechat-sandbox", "wechatpay")
    r = _refund(platform, order, 990)
    assert r.status_code == 201 and r.json()["status"] == "pending", r.text
    refund_id = r.json()["refund_id"]
    # WeChat Pay notifies REFUND.SUCCESS twice (its retry of a notification).
    result = sandbox.refund_notify(platform.sandbox, refund_id, twice=True)
    assert len(result["notifications"]) == 2 and all(n["accepted"] for n in result["notifications"]), result
    view = requests.get(f"{platform.api}/admin/orders/{order['order_id']}", headers=ADMIN, timeout=30).json()
    assert view["status"] == "refunded", view["status"]
    assert [(x["refund_id"], x["status"]) for x in view["refunds"]] == [(refund_id, "succeeded")], view["refunds"]
    assert [e["to"] for e in view["events"]].count("refunded") == 1, view["events"]


def test_money_taken_at_the_default_stripe_endpoint_cannot_be_refunded_here(platform):
    from conftest import stripe_webhook
    sku, _ = platform.create_product(keys=1)
    order = platform.create_order(sku)
    r = stripe_webhook.send(platform.api, platform.paid_event(order["order_id"]))
    assert r.status_code == 200, r.text
    platform.wait_delivered(order, timeout=30)
    r = _refund(platform, order, 990)
    assert r.status_code == 409 and r.json()["error"]["code"] == "refund_not_possible", r.text


def test_an_operator_confirms_a_payment_and_the_order_is_delivered(platform):
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    body = {"reason": "bank transfer seen", "reference": "BANK-2026-0001"}
    url = f"{platform.api}/admin/orders/{order['order_id']}/confirm-paid"
    r = requests.post(url, headers=ADMIN, json=body, timeout=30)
    assert r.status_code == 200, r.text
    delivered = platform.wait_delivered(order, timeout=30)
    assert delivered["deliveries"][0]["code"] in codes
    again = requests.post(url, headers=ADMIN, json=body, timeout=30)
    assert again.status_code == 200, again.text
    other = requests.post(url, headers=ADMIN, json={**body, "reference": "OTHER"}, timeout=30)
    assert other.status_code == 409 and other.json()["error"]["code"] == "illegal_transition", other.text
    bad = requests.post(url, headers=ADMIN, json={"reason": "", "reference": "x"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["path"] == "reason", bad.text


def test_the_operator_sees_every_attempt_refund_and_the_refunded_keys(platform):
    order = _paid_and_delivered(platform, "alipay-sandbox", "alipay")
    failed = _pay(platform, order, "wechat-sandbox")
    assert failed.status_code == 409, "a paid order takes no more payments"
    r = _refund(platform, order, 990)
    assert r.status_code == 201, r.text
    view = requests.get(f"{platform.api}/admin/orders/{order['order_id']}", headers=ADMIN, timeout=30).json()
    assert [(a["channel"], a["status"]) for a in view["attempts"]] == [("alipay-sandbox", "paid")], view
    assert view["attempts"][0]["refunded"] == 990
    assert [(x["amount"]["amount"], x["status"]) for x in view["refunds"]] == [(990, "succeeded")], view
    assert view["payments"][0]["payment_id"] == view["attempts"][0]["payment_id"]
    assert all(k["refunded"] for k in view["allocated_keys"]) and view["allocated_keys"], view
    assert view["status"] == "refunded"
