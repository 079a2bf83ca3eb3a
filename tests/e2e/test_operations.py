"""Operators through the real binaries (the operations and admin functions under the
emulator, as API Gateway routes them): an order whose money was short is resolved with a
reason, once, its stock given back; the audit trail names who did it and from where;
every function writes CloudWatch Embedded Metric Format lines for what it counted
(docs/operations.md, "Operators: who did what", "Metrics and alarms")."""

from __future__ import annotations

import concurrent.futures
import json

import requests
from conftest import ADMIN, stripe_webhook, wait_for


def emf_documents(platform) -> list[dict]:
    """Every EMF document the functions wrote so far."""
    documents = []
    for path in platform.log_dir.rglob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            start = line.find('{"_aws"')
            if start < 0:
                continue
            try:
                documents.append(json.loads(line[start:]))
            except json.JSONDecodeError:
                continue
    return documents


def metric_total(documents: list[dict], name: str) -> float:
    total = 0.0
    for doc in documents:
        dimensions = doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]
        if name in doc and not dimensions:
            value = doc[name]
            total += sum(value) if isinstance(value, list) else value
    return total


def test_a_short_payment_is_resolved_once_and_audited_with_metrics(platform):
    sku, _ = platform.create_product(keys=3)
    before = emf_documents(platform)

    # One order paid in full and delivered; one paid short: a payment exception.
    delivered = platform.create_order(sku)
    assert stripe_webhook.send(platform.api, platform.paid_event(delivered["order_id"])).status_code == 200
    platform.wait_delivered(delivered, timeout=60)
    short = platform.create_order(sku)
    event = stripe_webhook.checkout_completed(short["order_id"], 1, "CNY")
    assert stripe_webhook.send(platform.api, event).status_code == 200
    wait_for("a payment exception", lambda: platform.get_order(short)["status"] == "payment_exception", 30)
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 1, "sold": 1}

    queue = requests.get(f"{platform.api}/admin/exceptions?cause=payment_exception&order=newest&limit=100",
                         headers=ADMIN, timeout=30).json()["exceptions"]
    assert short["order_id"] in [e["order_id"] for e in queue]

    # Ten operators' clicks at once: one resolution.
    url = f"{platform.api}/admin/orders/{short['order_id']}/resolve"
    body = {"reason": "buyer paid the rest by bank transfer, ticket 77"}
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: requests.post(url, headers=ADMIN, json=body, timeout=60), range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert {a.json()["status"] for a in answers} == {"resolved"}
    assert platform.admin_product(sku)["stock"] == {"available": 2, "reserved": 0, "sold": 1}
    view = requests.get(f"{platform.api}/admin/orders/{short['order_id']}", headers=ADMIN, timeout=30).json()
    resolves = [e for e in view["events"] if e["cause"] == "resolve"]
    assert len(resolves) == 1 and resolves[0]["by"] == "admin" and resolves[0]["reason"] == body["reason"], view
    queue = requests.get(f"{platform.api}/admin/exceptions?limit=100&order=newest", headers=ADMIN,
                         timeout=30).json()["exceptions"]
    assert short["order_id"] not in [e["order_id"] for e in queue]

    trail = requests.get(f"{platform.api}/admin/audit", params={"order": short["order_id"]}, headers=ADMIN,
                         timeout=30).json()["entries"]
    assert [(e["action"], e["actor"]) for e in trail] == [("order.resolve", "admin")], trail
    assert trail[0]["source_ip"] == "127.0.0.1", trail[0]
    product_trail = requests.get(f"{platform.api}/admin/audit", params={"product": sku}, headers=ADMIN,
                                 timeout=30).json()["entries"]
    assert [e["action"] for e in product_trail] == ["product.import_card_keys", "product.create"], product_trail
    assert product_trail[0]["after"]["accepted"] == 3

    # What the functions counted: this test's orders, payment, delivery and exception.
    def counted():
        after = emf_documents(platform)
        grew = {name: metric_total(after, name) - metric_total(before, name)
                for name in ("OrdersCreated", "OrdersPaid", "OrdersDelivered", "ExceptionsFiled")}
        return grew if all(value >= 1 for value in grew.values()) else None

    grew = wait_for("metrics in the function logs", counted, 30)
    assert grew["OrdersCreated"] >= 2 and grew["OrdersPaid"] >= 1, grew
    latencies = [v for doc in emf_documents(platform) for v in (doc.get("DeliveryLatency") or [])]
    assert latencies and all(v >= 0 for v in latencies), latencies
