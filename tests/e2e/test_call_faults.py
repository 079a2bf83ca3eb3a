"""The delivery worker killed at every step of delivering a card-key order of two keys,
and the payment webhook at each of its writes, through the real binaries
(docs/reliability.md, section 2, K7 to K9).

Each step is one AWS call of the worker's. The platform kills the worker's emulator right
after that call took effect and before the worker hears so (kami_local/call_faults.py:
the moto wrapper knows the worker by its access key id, lets the call through, has the
platform SIGKILL the busy emulator, then answers a dead socket). The message the worker
held comes back (made visible at once rather than after the queue's 60 s), and the next
worker finishes the order. For every step: both keys delivered, each once, from the
product's keys; stock exact; one `delivered` move; the buyer told once. A top-up worker
killed before sending, after the supplier applied the request but before its answer was
recorded, or after recording it: the account is topped up once. A webhook killed
after recording the payment, or after queueing its delivery, answers no 2xx; the
provider's retry of the same event delivers the order once.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
import requests
from conftest import ADMIN, stripe_webhook, wait_for
from kami_local import clock, outbox
from kami_local.provision import client
from test_topups import topups  # noqa: F401 - the fixture: suppliers of a test's own, the clock reset

WORKER = "DeliveryWorkerFunction"
WRITE = "DynamoDB_20120810.TransactWriteItems"

# (step, the worker's call it dies right after, which such call for this order, the
# order's status the kill leaves)
STEPS = [
    ("reading the order", "DynamoDB_20120810.Query", 1, "paid"),
    ("taking the first key", WRITE, 1, "paid"),
    ("taking the second key", WRITE, 2, "paid"),
    ("marking the order delivered", WRITE, 3, "delivered"),
    ("queueing the buyer's notice", "AmazonSQS.SendMessage", 1, "delivered"),
]


def _queue_counts(platform, queue: str) -> tuple[int, int]:
    attrs = client("sqs", platform.endpoint).get_queue_attributes(
        QueueUrl=platform.resources[queue], AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def _order(platform, sku: str, quantity: int, buyer: dict) -> dict:
    r = requests.post(f"{platform.api}/orders", timeout=30, headers={"Idempotency-Key": str(uuid.uuid4())},
                      json={"sku": sku, "quantity": quantity, "buyer": buyer})
    assert r.status_code == 201, r.text
    return r.json()


def _kill_at(platform, function: str, target: str, contains: str, nth: int = 1, when: str = "after") -> None:
    r = requests.post(f"{platform.api}/_local/functions/{function}/faults", timeout=10,
                      json={"kill_at": {"target": target, "contains": contains, "nth": nth, "when": when}})
    assert r.status_code == 200, r.text


def _visible_now(platform) -> int:
    """Makes the delivery queue's in-flight messages visible at once; how many there were."""
    r = requests.post(f"{platform.endpoint}/_kami/sqs/visible-now", timeout=10,
                      json={"queue_url": platform.resources["DeliveryQueue"]})
    assert r.status_code == 200, r.text
    return r.json()["made_visible"]


@pytest.mark.parametrize(("step", "target", "nth", "left"), STEPS, ids=[s[0] for s in STEPS])
def test_a_worker_killed_right_after_a_step_is_finished_by_the_next_one(platform, step, target, nth, left):
    sku, codes = platform.create_product(keys=3)
    email = f"e2e-kill-{uuid.uuid4().hex[:10]}@example.com"
    order = _order(platform, sku, 2, {"email": email, "language": "en"})
    order_id = order["order_id"]
    restarts = platform.status()["functions"][WORKER]["restarts"]

    # GIVEN the worker dies right after this step of this order
    _kill_at(platform, WORKER, target, order_id, nth)

    # WHEN the order is paid
    assert stripe_webhook.send(platform.api, platform.paid_event(order_id)).status_code == 200

    # THEN the worker is killed there, leaving what that step wrote
    def killed() -> bool:
        rules = requests.get(f"{platform.endpoint}/_kami/call-faults", timeout=10).json()["rules"]
        worker = platform.status()["functions"][WORKER]
        return not rules and worker["restarts"] > restarts

    wait_for(f"the worker killed after {step}", killed, timeout=60)
    assert platform.get_order(order)["status"] == left

    # WHEN the message it held comes back (its visibility timeout passed at once)
    assert _visible_now(platform) >= 1

    # THEN the next worker finishes the order: two keys, each once
    body = platform.wait_delivered(order, timeout=60)
    delivered = [d["code"] for d in body["deliveries"]]
    assert len(delivered) == 2 and len(set(delivered)) == 2 and set(delivered) <= set(codes), delivered
    assert [e["to"] for e in body["events"]].count("delivered") == 1, body["events"]
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 2}

    # AND the buyer is told once, however often the notice was queued
    def told():
        sent = [m for m in outbox.read(platform.endpoint, platform.resources["KamiTable"])
                if m["recipient"] == email]
        return sent if sent and sent[0]["kind"] else None

    wait_for(f"the notice of {order_id}", told, timeout=60, interval=0.5)
    wait_for("both queues drained", lambda: _queue_counts(platform, "DeliveryQueue") == (0, 0)
             and _queue_counts(platform, "NotifyQueue") == (0, 0), timeout=60, interval=0.25)
    sent = told()
    assert len(sent) == 1 and sent[0]["order_id"] == order_id, sent
    assert platform.get_order(order)["deliveries"] == body["deliveries"]


WEBHOOK = "PaymentWebhookFunction"

# (step, the webhook's call it dies right after)
WEBHOOK_STEPS = [
    ("recording the payment", WRITE),
    ("queueing the delivery", "AmazonSQS.SendMessage"),
]


@pytest.mark.parametrize(("step", "target"), WEBHOOK_STEPS, ids=[s[0] for s in WEBHOOK_STEPS])
def test_a_webhook_killed_right_after_a_step_is_made_good_by_the_providers_retry(platform, step, target):
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    order_id = order["order_id"]
    restarts = platform.status()["functions"][WEBHOOK]["restarts"]
    _kill_at(platform, WEBHOOK, target, order_id, 1)

    # WHEN the webhook dies right after this step, Stripe gets no 2xx (API Gateway's 500)
    event = platform.paid_event(order_id)
    r = stripe_webhook.send(platform.api, event)
    assert r.status_code == 500, r.text
    wait_for("the webhook's emulator replaced",
             lambda: platform.status()["functions"][WEBHOOK]["restarts"] > restarts, timeout=30)
    assert platform.get_order(order)["status"] in ("paid", "delivered"), "the payment was recorded"

    # AND Stripe sends the same event again: a duplicate that queues the delivery
    r = stripe_webhook.send(platform.api, event)
    assert r.status_code == 200, r.text

    # THEN the order is delivered once, paid once
    body = platform.wait_delivered(order, timeout=60)
    assert [d["code"] for d in body["deliveries"]] in ([c] for c in codes)
    assert [e["to"] for e in body["events"]] == ["pending_payment", "paid", "delivered"], body["events"]
    wait_for("the delivery queue drained", lambda: _queue_counts(platform, "DeliveryQueue") == (0, 0),
             timeout=60, interval=0.25)
    assert platform.get_order(order)["deliveries"] == body["deliveries"]
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 1}


# (step, the worker's call, which such call for this order, after or before it, the
# order's supplier history after the next worker finished it)
TOP_UP_STEPS = [
    ("recording the request as sending, before sending it", WRITE, 1, "after",
     [("send", "sent"), ("poll", "not_found"), ("resend", "success")]),
    ("after the supplier applied it, before its answer is recorded", WRITE, 2, "before",
     [("send", "sent"), ("poll", "success")]),
    ("recording the supplier's success, before marking the order delivered", WRITE, 2, "after",
     [("send", "sent"), ("answer", "success")]),
]


@pytest.mark.parametrize(("step", "target", "nth", "when", "history"), TOP_UP_STEPS, ids=[s[0] for s in TOP_UP_STEPS])
def test_a_top_up_worker_killed_at_a_step_tops_the_account_up_once(platform, topups, step, target, nth, when,
                                                                    history):
    supplier = topups.supplier()
    sku = topups.product([supplier])
    order = topups.order(sku, topups.phone())
    order_id = order["order_id"]
    request_id = f"{order_id}-00"
    restarts = platform.status()["functions"][WORKER]["restarts"]
    _kill_at(platform, WORKER, target, order_id, nth, when)

    # WHEN the order is paid and the worker dies at this step
    topups.pay(order)
    wait_for(f"the worker killed {step}", lambda: platform.status()["functions"][WORKER]["restarts"] > restarts,
             timeout=60)
    assert topups.view(order)["status"] == "paid"
    assert _visible_now(platform) >= 1

    # THEN the next worker delivers it, the account topped up once under the one request id
    body = topups.wait_delivered(order, timeout=60)
    ledger = topups.sim.ledger(supplier.id)
    assert [e["request_id"] for e in ledger] == [request_id], ledger
    assert body["deliveries"][0]["supplier_ref"] == ledger[0]["supplier_ref"], body
    seen = topups.sim.request(supplier.id, request_id)
    assert seen["submits"] == 1, seen
    view = topups.admin(order)
    # Asked before anything is sent again; a recorded success is never asked about again.
    assert [(h["action"], h["status"]) for h in view["supplier_history"]] == history, view["supplier_history"]
    assert [(q["request_id"], q["status"]) for q in view["top_up"]["requests"]] == [(request_id, "success")], view
    assert [e["to"] for e in view["events"]].count("delivered") == 1, view["events"]


# --- AWS calls failing, through the real binaries (docs/reliability.md, section 1) ---------


def _fail(platform, function: str, target: str, count: int, error: str, contains: str = "") -> None:
    r = requests.post(f"{platform.api}/_local/functions/{function}/faults", timeout=10, json={
        "fail": {"target": target, "contains": contains, "count": count, "error": error}})
    assert r.status_code == 200, r.text


def _spent(platform) -> bool:
    return not requests.get(f"{platform.endpoint}/_kami/call-faults", timeout=10).json()["rules"]


def test_an_import_whose_data_key_cannot_be_made_stores_nothing_and_its_retry_stores_each_key_once(platform):
    sku, _ = platform.create_product(keys=1)
    codes = [f"E2E-KMS-{uuid.uuid4().hex.upper()}" for _ in range(3)]
    url = f"{platform.api}/admin/products/{sku}/card-keys"
    # KMS fails every attempt the SDK makes (3) to make the import's data key.
    _fail(platform, "AdminFunction", "TrentService.GenerateDataKey", 3, "KMSInternalException")
    r = requests.post(url, headers=ADMIN, json={"keys": codes}, timeout=60)
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
    assert not any(code in r.text for code in codes), "no key in the error"
    assert _spent(platform)
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 0}, "nothing stored"

    r = requests.post(url, headers=ADMIN, json={"keys": codes}, timeout=60)
    assert r.status_code in (200, 201) and r.json()["accepted"] == 3 and r.json()["duplicates"] == [], r.text
    assert platform.admin_product(sku)["stock"] == {"available": 4, "reserved": 0, "sold": 0}


def test_a_delivered_key_that_cannot_be_opened_is_shown_on_the_next_look(platform):
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    assert stripe_webhook.send(platform.api, platform.paid_event(order["order_id"])).status_code == 200
    # Delivered, as the operator's view (which never opens a key) tells.
    wait_for("the order delivered", lambda: requests.get(
        f"{platform.api}/admin/orders/{order['order_id']}", headers=ADMIN, timeout=30).json()["status"] == "delivered",
        timeout=60, interval=0.25)
    # KMS fails every attempt to open the sealed key when the buyer first looks.
    _fail(platform, "CheckoutFunction", "TrentService.Decrypt", 3, "KMSInternalException")
    r = requests.get(f"{platform.api}/orders/{order['order_id']}", timeout=30,
                     headers={"Authorization": f"Bearer {order['access_token']}"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error", r.text
    assert codes[0] not in r.text
    assert _spent(platform)
    assert [d["code"] for d in platform.get_order(order)["deliveries"]] == codes


def test_a_throttled_payment_answers_no_2xx_and_the_providers_retry_delivers_once(platform):
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    # Every attempt the SDK makes at the payment's transaction is throttled.
    _fail(platform, "PaymentWebhookFunction", WRITE, 3, "ThrottlingException", contains=order["order_id"])
    event = platform.paid_event(order["order_id"])
    r = stripe_webhook.send(platform.api, event)
    assert r.status_code == 500, r.text
    assert _spent(platform)
    assert platform.get_order(order)["status"] == "pending_payment", "nothing written"
    assert stripe_webhook.send(platform.api, event).status_code == 200
    body = platform.wait_delivered(order, timeout=60)
    assert [e["to"] for e in body["events"]] == ["pending_payment", "paid", "delivered"], body["events"]
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 1}


def test_throttled_checkouts_make_each_order_once(platform):
    sku, _ = platform.create_product(keys=3)
    # Two throttled attempts of the order's transaction: the SDK's third gets through.
    _fail(platform, "CheckoutFunction", WRITE, 2, "ProvisionedThroughputExceededException", contains=sku)
    key = str(uuid.uuid4())

    def checkout():
        return requests.post(f"{platform.api}/orders", timeout=30, headers={"Idempotency-Key": key},
                             json={"sku": sku, "quantity": 1, "buyer": {"email": "e2e@example.com"}})

    first = checkout()
    assert first.status_code == 201, first.text
    assert _spent(platform)
    again = checkout()
    assert again.status_code == 201 and again.json()["order_id"] == first.json()["order_id"], again.text
    assert platform.admin_product(sku)["stock"] == {"available": 2, "reserved": 1, "sold": 0}


def test_a_key_allocation_failing_with_5xx_fails_the_message_and_its_retry_delivers_once(platform):
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    _fail(platform, WORKER, WRITE, 3, "InternalServerError", contains=order["order_id"])
    assert stripe_webhook.send(platform.api, platform.paid_event(order["order_id"])).status_code == 200
    wait_for("the worker's three attempts answered 500", lambda: _spent(platform), timeout=60)
    # The failed message waits out its visibility timeout: made visible at once instead.
    wait_for("the failed message back in the queue", lambda: _visible_now(platform) >= 1
             or platform.get_order(order)["status"] == "delivered", timeout=30)
    body = platform.wait_delivered(order, timeout=60)
    assert [d["code"] for d in body["deliveries"]] in ([c] for c in codes)
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 1}


def test_a_dead_lettered_delivery_waits_in_the_exception_queue_and_a_cut_short_redeliver_is_asked_again(platform):
    sku, codes = platform.create_product(keys=1)
    order = platform.create_order(sku)
    order_id = order["order_id"]
    # Every allocation of the product's keys fails (5 receives x 3 SDK attempts), while
    # the worker's other writes (giving up on the last receive) go through.
    _fail(platform, WORKER, WRITE, 15, "InternalServerError", contains=f"STOCK#{sku}")
    assert stripe_webhook.send(platform.api, platform.paid_event(order_id)).status_code == 200
    sqs = client("sqs", platform.endpoint)
    dlq = platform.resources["DeliveryDLQ"]

    def dead_lettered():
        # Each failed receive waits out its visibility timeout: made visible at once.
        _visible_now(platform)
        attrs = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attrs["Attributes"]["ApproximateNumberOfMessages"]) >= 1

    wait_for("the message in the DLQ", dead_lettered, timeout=120, interval=0.5)
    got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0,
                              AttributeNames=["ApproximateReceiveCount"])["Messages"]
    mine = [m for m in got if order_id in m["Body"]]
    assert len(mine) == 1, got
    # Its last receive marked the order: it waits in the exception queue for a person.
    assert platform.get_order(order)["status"] == "delivery_failed"
    queue = requests.get(f"{platform.api}/admin/exceptions", params={"cause": "delivery_failed", "limit": 100,
                         "order": "newest"}, headers=ADMIN, timeout=30).json()["exceptions"]
    assert order_id in [e["order_id"] for e in queue], queue
    assert _spent(platform), "every allocation attempt was failed"
    assert platform.admin_product(sku)["stock"] == {"available": 0, "reserved": 1, "sold": 0}, "its unit held"

    # The operator redelivers once the outage is over. The first try's function dies right
    # after recording the request (with its audit record), before queueing the message:
    # the operator sees a 500 and asks again.
    url = f"{platform.api}/admin/orders/{order_id}/redeliver"
    restarts = platform.status()["functions"]["OperationsFunction"]["restarts"]
    _kill_at(platform, "OperationsFunction", WRITE, order_id)
    r = requests.post(url, headers=ADMIN, timeout=30, json={"reason": "the table is back"})
    assert r.status_code == 500, r.text
    wait_for("the operations function replaced", lambda: _spent(platform)
             and platform.status()["functions"]["OperationsFunction"]["restarts"] > restarts, timeout=30)
    assert platform.get_order(order)["status"] == "delivery_failed", "nothing queued yet"
    r = requests.post(url, headers=ADMIN, timeout=30, json={"reason": "the table is back"})
    assert r.status_code in (200, 202), r.text
    body = wait_for("the redelivered order delivered", lambda: (b := platform.get_order(order))["status"] == "delivered"
                    and b, timeout=60, interval=0.25)
    assert [d["code"] for d in body["deliveries"]] == codes
    assert platform.admin_product(sku)["stock"] == {"available": 0, "reserved": 0, "sold": 1}
    # Both requests happened, so both are in the audit trail; one delivery.
    trail = requests.get(f"{platform.api}/admin/audit", params={"order": order_id}, headers=ADMIN,
                         timeout=30).json()["entries"]
    assert [e["action"] for e in trail] == ["order.redeliver", "order.redeliver"], trail
    assert [e["to"] for e in body["events"]].count("delivered") == 1, body["events"]


# --- the other delivery types' workers killed at their writes (K10) ----------------------

# (type, its delivery, quantity, which of the worker's transactions for the order it dies
# right after: each unit's write, then marking the order delivered)
RIGHTS = [
    ("license_key", {"type": "license_key", "activation_limit": 1}, 2),
    ("membership", {"type": "membership", "entitlement": "vip-kill", "period_days": 30}, 1),
    ("count_card", {"type": "count_card", "entitlement": "yoga-kill", "uses": 2}, 1),
    ("link", {"type": "link", "target_url": "https://merchant.example/redeem", "valid_hours": 1, "max_opens": 1}, 2),
]
RIGHTS_CASES = [(kind, delivery, quantity, nth) for kind, delivery, quantity in RIGHTS
                for nth in range(1, quantity + 2)]


def _merchant(platform) -> dict:
    r = requests.post(f"{platform.api}/admin/api-keys", headers=ADMIN, timeout=30,
                      json={"name": "e2e-kills", "scopes": ["entitlements:read"]})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def _product(platform, title: str, delivery: dict, price: int = 500, **settings) -> str:
    sku = f"e2e-{uuid.uuid4().hex[:10]}"
    r = requests.post(f"{platform.api}/admin/products", headers=ADMIN, timeout=30, json={
        "sku": sku, "title": title, "price": {"amount": price, "currency": "CNY"}, "delivery": delivery,
        **settings})
    assert r.status_code == 201, r.text
    return sku


def _paid_and_worker_killed(platform, order_id: str, nth: int) -> None:
    """Pays the order with the worker set to die right after its `nth` transaction
    naming the order, and waits for that kill."""
    restarts = platform.status()["functions"][WORKER]["restarts"]
    _kill_at(platform, WORKER, WRITE, order_id, nth)
    assert stripe_webhook.send(platform.api, platform.paid_event(order_id)).status_code == 200
    wait_for("the worker killed", lambda: platform.status()["functions"][WORKER]["restarts"] > restarts
             and _spent(platform), timeout=60)


@pytest.mark.parametrize(("kind", "delivery", "quantity", "nth"), RIGHTS_CASES,
                         ids=[f"{c[0]}-after-write-{c[3]}" for c in RIGHTS_CASES])
def test_a_rights_worker_killed_after_a_write_grants_each_unit_once(platform, kind, delivery, quantity, nth):
    sku = _product(platform, "E2E rights kill", delivery, max_per_order=5)
    account = f"e2e-{uuid.uuid4().hex[:8]}"
    order = _order(platform, sku, quantity, {"email": "e2e@example.com", "account_id": account})
    order_id = order["order_id"]
    _paid_and_worker_killed(platform, order_id, nth)
    assert platform.get_order(order)["status"] == ("delivered" if nth == quantity + 1 else "paid")
    assert _visible_now(platform) >= 1

    body = platform.wait_delivered(order, timeout=60)
    assert len(body["deliveries"]) == quantity, body["deliveries"]
    view = requests.get(f"{platform.api}/admin/orders/{order_id}", headers=ADMIN, timeout=30).json()
    assert len(view["generated"]) == quantity and len({u["id"] for u in view["generated"]}) == quantity, view
    assert [e["to"] for e in view["events"]].count("delivered") == 1, view["events"]
    if kind in ("license_key", "link"):
        given = [d["license_key" if kind == "license_key" else "url"] for d in body["deliveries"]]
        assert len(set(given)) == quantity, given
    else:
        # Granted once: one entitlement, its uses or its 30 days not doubled.
        listed = requests.get(f"{platform.api}/entitlements", params={"account_id": account},
                              headers=_merchant(platform), timeout=30).json()["entitlements"]
        assert len(listed) == 1, listed
        if kind == "count_card":
            assert listed[0]["uses_left"] == 2, listed
        else:
            days = (datetime.fromisoformat(listed[0]["ends_at"].replace("Z", "+00:00"))
                    - datetime.fromisoformat(listed[0]["starts_at"].replace("Z", "+00:00")))
            assert days == timedelta(days=30), listed


def test_a_sweep_killed_after_requeueing_a_stuck_order_leaves_it_delivered_once(platform):
    file = platform.log_dir / "clock"
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    order_id = order["order_id"]
    # GIVEN a paid order whose delivery was never queued (SQS unavailable to the webhook)
    _fail(platform, "PaymentWebhookFunction", "AmazonSQS.SendMessage", 3, "ServiceUnavailable", contains=order_id)
    assert stripe_webhook.send(platform.api, platform.paid_event(order_id)).status_code == 500
    assert platform.get_order(order)["status"] == "paid"
    sweep = "ExpirySweepFunction"
    restarts = platform.status()["functions"][sweep]["restarts"]
    _kill_at(platform, sweep, "AmazonSQS.SendMessage", order_id)
    try:
        # WHEN the sweep, its clock past the stuck-order delay (120 s), re-queues it and is
        # killed before it snoozes the order or releases its lease
        clock.skew(sweep, 130, file)
        wait_for("the sweep killed right after re-queueing", lambda: requests.post(
            f"{platform.api}/_local/schedules/EveryMinute/fire", timeout=60).status_code == 200
            and _spent(platform) and platform.status()["functions"][sweep]["restarts"] > restarts,
            timeout=60, interval=0.5)

        # THEN the message it queued delivers the order, once
        body = platform.wait_delivered(order, timeout=60)
        assert [d["code"] for d in body["deliveries"]] in ([c] for c in codes)

        # AND once its lease has lapsed, the next run finds nothing more to do for it
        clock.skew(sweep, 130 + 120, file)
        platform.fire_until("a sweep run after the lease", lambda: True)
        wait_for("the delivery queue drained", lambda: _queue_counts(platform, "DeliveryQueue") == (0, 0),
                 timeout=60, interval=0.25)
        again = platform.get_order(order)
        assert again["deliveries"] == body["deliveries"]
        assert [e["to"] for e in again["events"]] == ["pending_payment", "paid", "delivered"], again["events"]
        assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 0, "sold": 1}
    finally:
        clock.skew(sweep, 0, file)



@pytest.mark.parametrize("nth", [1, 2, 3, 4], ids=["after-the-count-card", "after-the-first-license",
                                                   "after-the-second-license", "after-marking-delivered"])
def test_a_bundle_worker_killed_after_a_part_delivers_each_part_once(platform, nth):
    card = _product(platform, "E2E part", {"type": "count_card", "entitlement": "gym-kill", "uses": 5})
    license_ = _product(platform, "E2E part", {"type": "license_key", "activation_limit": 1})
    bundle = _product(platform, "E2E bundle kill", {
        "type": "bundle", "on_partial_failure": "reverse",
        "items": [{"sku": card, "quantity": 1}, {"sku": license_, "quantity": 2}]}, price=900)
    account = f"e2e-{uuid.uuid4().hex[:8]}"
    order = _order(platform, bundle, 1, {"email": "e2e@example.com", "account_id": account})
    order_id = order["order_id"]
    _paid_and_worker_killed(platform, order_id, nth)
    assert platform.get_order(order)["status"] == ("delivered" if nth == 4 else "paid")
    assert _visible_now(platform) >= 1

    body = platform.wait_delivered(order, timeout=60)
    assert [(d["part"], d["type"]) for d in body["deliveries"]] == [
        (card, "count_card"), (license_, "license_key"), (license_, "license_key")], body["deliveries"]
    assert len({d["license_key"] for d in body["deliveries"] if d["type"] == "license_key"}) == 2
    listed = requests.get(f"{platform.api}/entitlements", params={"account_id": account},
                          headers=_merchant(platform), timeout=30).json()["entitlements"]
    assert [(e["name"], e["uses_left"]) for e in listed] == [("gym-kill", 5)], listed
    assert [e["to"] for e in body["events"]].count("delivered") == 1, body["events"]


def test_a_checkout_killed_after_making_the_order_gives_the_same_order_on_the_buyers_retry(platform):
    sku, codes = platform.create_product(keys=2)
    key = str(uuid.uuid4())
    restarts = platform.status()["functions"]["CheckoutFunction"]["restarts"]
    _kill_at(platform, "CheckoutFunction", WRITE, sku)

    def checkout():
        return requests.post(f"{platform.api}/orders", timeout=30, headers={"Idempotency-Key": key},
                             json={"sku": sku, "quantity": 1, "buyer": {"email": "e2e@example.com"}})

    # WHEN checkout dies right after its order transaction committed, the buyer sees a 500
    assert checkout().status_code == 500
    wait_for("checkout's emulator replaced", lambda: _spent(platform)
             and platform.status()["functions"]["CheckoutFunction"]["restarts"] > restarts, timeout=30)
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 1, "sold": 0}, "the order was made"

    # THEN the buyer's retry under the same key answers that order, and nothing more is reserved
    again = checkout()
    assert again.status_code == 201, again.text
    assert platform.admin_product(sku)["stock"] == {"available": 1, "reserved": 1, "sold": 0}
    order = again.json()
    assert stripe_webhook.send(platform.api, platform.paid_event(order["order_id"])).status_code == 200
    body = platform.wait_delivered(order, timeout=60)
    assert [d["code"] for d in body["deliveries"]] in ([c] for c in codes)
