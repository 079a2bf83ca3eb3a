"""Buying a card key over real HTTP against the running local platform."""

from __future__ import annotations

import concurrent.futures
import json
import uuid

import requests
from conftest import stripe_webhook, wait_for
from kami_local.provision import client


def test_buy_a_key_end_to_end(platform):
    # GIVEN a product with imported keys
    sku, codes = platform.create_product(keys=3)
    view = requests.get(f"{platform.api}/products/{sku}", timeout=30)
    assert view.status_code == 200 and view.json()["stock"]["available"] == 3, view.text

    # WHEN a buyer orders it and Stripe reports the payment
    order = platform.create_order(sku)
    assert order["status"] == "pending_payment"
    assert order["amount"] == {"amount": 990, "currency": "CNY"}
    assert order["order_id"] and order["access_token"] and order["expires_at"]
    r = stripe_webhook.send(platform.api, platform.paid_event(order["order_id"]))
    assert 200 <= r.status_code < 300, r.text

    # THEN the order is delivered with one of the imported keys
    body = platform.wait_delivered(order, timeout=30)
    assert len(body["deliveries"]) == 1
    assert body["deliveries"][0]["type"] == "card_key"
    assert body["deliveries"][0]["code"] in codes
    assert body["events"], "the order has an event history"


def test_a_client_at_its_cap_of_unpaid_units_gets_429_with_retry_after(platform):
    # GIVEN a product whose clients may hold 5 unpaid units per address (the local API
    # passes the TCP peer, 127.0.0.1, as API Gateway's sourceIp)
    sku, _ = platform.create_product(keys=10, settings={"pending_limits": {"per_address": 5}})
    platform.create_order(sku, quantity=5)
    # WHEN the same address orders one more, as another buyer
    r = requests.post(f"{platform.api}/orders", timeout=30, headers={"Idempotency-Key": str(uuid.uuid4())},
                      json={"sku": sku, "quantity": 1, "buyer": {"email": "other-e2e@example.com"}})
    # THEN the real binary refuses it with the stable code and a Retry-After past the 30 minutes
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "too_many_pending_orders"
    assert int(r.headers["Retry-After"]) > 1800, r.headers
    assert requests.get(f"{platform.api}/products/{sku}", timeout=30).json()["stock"]["available"] == 5


def test_the_same_webhook_twenty_times_concurrently_delivers_once(platform):
    sku, codes = platform.create_product(keys=3)
    order = platform.create_order(sku)
    event = platform.paid_event(order["order_id"])

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda _: stripe_webhook.send(platform.api, event).status_code, range(20)))
    assert all(200 <= s < 300 for s in statuses), statuses

    body = platform.wait_delivered(order, timeout=30)
    assert len(body["deliveries"]) == 1 and body["deliveries"][0]["code"] in codes
    # Nothing else is in flight for this order: once the queue is drained, stock shows one sale.
    _wait_queue_drained(platform)
    stock = platform.admin_product(sku)["stock"]
    assert stock["sold"] == 1 and stock["available"] == 2, stock


def test_a_worker_killed_mid_batch_is_restarted_and_the_order_delivered_once(platform):
    sku, codes = platform.create_product(keys=3)
    order = platform.create_order(sku)
    worker = "DeliveryWorkerFunction"
    restarts = platform.status()["functions"][worker]["restarts"]

    # The platform kills the worker's emulator 20 ms into its next batch.
    r = requests.post(f"{platform.api}/_local/functions/{worker}/faults", json={"count": 1, "kill_after_ms": 20}, timeout=10)
    assert r.status_code == 200, r.text
    assert 200 <= stripe_webhook.send(platform.api, platform.paid_event(order["order_id"])).status_code < 300

    wait_for("the worker to be killed and restarted", lambda: (
        (f := platform.status()["functions"][worker])["pending_faults"] == 0 and f["restarts"] > restarts
        and any(not i["busy"] for i in f["instances"])), timeout=30)
    # The message is in flight, invisible until the queue's visibility timeout ends.
    assert _queue_counts(platform)[1] >= 1 or platform.get_order(order)["status"] == "delivered"

    visibility = int(_queue_attributes(platform)["VisibilityTimeout"])
    body = platform.wait_delivered(order, timeout=visibility + 60)
    assert len(body["deliveries"]) == 1 and body["deliveries"][0]["code"] in codes
    _wait_queue_drained(platform, timeout=visibility + 30)
    assert platform.get_order(order)["deliveries"] == body["deliveries"]
    stock = platform.admin_product(sku)["stock"]
    assert stock["sold"] == 1, stock


def _queue_attributes(platform) -> dict:
    return client("sqs", platform.endpoint).get_queue_attributes(
        QueueUrl=platform.resources["DeliveryQueue"], AttributeNames=["All"])["Attributes"]


def _queue_counts(platform) -> tuple[int, int]:
    a = _queue_attributes(platform)
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def _wait_queue_drained(platform, timeout: float = 30) -> None:
    wait_for("the delivery queue to drain", lambda: _queue_counts(platform) == (0, 0), timeout, 0.25)


def test_unknown_route_is_api_gateway_404(platform):
    r = requests.get(f"{platform.api}/no/such/route", timeout=10)
    assert r.status_code == 404 and r.json() == {"message": "Not Found"}
    assert json.loads(requests.post(f"{platform.api}/products/x", timeout=10).text) == {"message": "Not Found"}


def test_concurrent_requests_scale_a_function_to_several_instances(platform):
    sku, _ = platform.create_product(keys=1)

    def burst():
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda _: requests.get(f"{platform.api}/products/{sku}", timeout=30).status_code,
                                  range(24)))
        assert codes == [200] * 24
        return len(platform.status()["functions"]["CheckoutFunction"]["instances"]) > 1

    wait_for("CheckoutFunction to scale out", burst, timeout=60)
    assert len(platform.status()["functions"]["CheckoutFunction"]["instances"]) <= \
        platform.status()["functions"]["CheckoutFunction"]["max_instances"]


def test_a_schedule_fires_on_demand(platform):
    before = platform.status()["schedules"]["EveryMinute"]["fired"]
    r = requests.post(f"{platform.api}/_local/schedules/EveryMinute/fire", timeout=60)
    assert r.status_code == 200 and r.json()["result"] == "ok", r.text
    assert platform.status()["schedules"]["EveryMinute"]["fired"] > before
