"""Direct top-ups (直充) end to end: the real binaries under the emulator, the supplier
simulator (infra/kami_local/supplier_sim, docs/suppliers.md) playing the suppliers over
HTTP, and the simulator's ledger (what it actually topped up) checked against what Kami
says of each order.

Each test registers suppliers of its own (unique ids and secrets, at the simulator and in
Kami), a product of its own and its own phone numbers, so tests never see each other's
requests. Nothing sleeps to synchronise: every wait polls with a deadline, firing the
every-minute sweep (which has the worker poll suppliers about requests left pending or
unknown for a minute) when a test needs it, with the local clock moved on a minute
(`infra/kami clock`; the simulator keeps the same clock, so signatures stay fresh both
ways). Each test puts the clock back when it ends.

`KAMI_E2E_TOPUP_ORDERS` sets the size of the concurrent test: 100 by default (about 35 s
on 2 cores with debug builds, the whole file about 50 s); 300 took 3 min 40 s."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
import secrets
import time
import uuid

import pytest
import requests
from conftest import ADMIN, stripe_webhook, wait_for
from kami_local import clock
from kami_local.provision import client
from kami_local.supplier_sim import SimRefused, SupplierSim

# shared/src/store/mod.rs: a `delivering` order is polled this long after its last try.
POLL_SUPPLIER_AFTER_S = 60
CONCURRENT_ORDERS = int(os.environ.get("KAMI_E2E_TOPUP_ORDERS", 100))
PATTERN = "^1[3-9][0-9]{9}$"
TERMINAL = ("delivered", "delivery_failed")
_PHONES: set[str] = set()  # every phone number this session used


@dataclasses.dataclass
class Supplier:
    id: str
    secret: str
    base_url: str


class TopUps:
    """Kami's admin, storefront and schedule, and the simulator's control routes."""

    def __init__(self, platform) -> None:
        assert platform.supplier_sim, "the platform's ready file has no supplier_sim_url"
        self.p = platform
        self.api = platform.api
        self.sim = SupplierSim(platform.supplier_sim)
        self.clock_file = platform.log_dir / "clock"
        self._ddb = None

    # --- set-up -----------------------------------------------------------------------

    def supplier(self, timeout_ms: int = 3000, circuit: dict | None = None, deadline_s: int = 600) -> Supplier:
        """A supplier of this test's own, at the simulator and in Kami."""
        supplier_id = f"e2e-{uuid.uuid4().hex[:12]}"
        secret = secrets.token_hex(24)
        base_url = self.sim.register(supplier_id, secret)
        r = requests.put(f"{self.api}/admin/suppliers/{supplier_id}", headers=ADMIN, timeout=30, json={
            "kind": "http_json", "base_url": base_url, "secret": secret, "timeout_ms": timeout_ms,
            "enabled": True, "circuit": circuit or {"failures": 5, "window_s": 60, "cooldown_s": 30},
            "unknown_outcome_deadline_s": deadline_s})
        assert r.status_code == 201, r.text
        assert r.json()["secret"] == "<set>" and r.json()["circuit"]["state"] == "closed", r.text
        return Supplier(supplier_id, secret, base_url)

    def product(self, suppliers: list[Supplier], **settings) -> str:
        """A direct top-up product sold through `suppliers`, tried in that order."""
        sku = f"e2e-topup-{uuid.uuid4().hex[:10]}"
        r = requests.post(f"{self.api}/admin/products", headers=ADMIN, timeout=30, json={
            "sku": sku, "title": "E2E mobile credit", "price": {"amount": 5000, "currency": "CNY"},
            "delivery": {"type": "direct_topup", "supplier_product": "cmcc-50",
                         "suppliers": [s.id for s in suppliers],
                         "account": {"label": "Phone number", "pattern": PATTERN}},
            "max_per_order": 1, **settings})
        assert r.status_code == 201, r.text
        return sku

    def phone(self) -> str:
        """A phone number no other test of this session uses."""
        while True:
            number = f"1{random.choice('3456789')}{random.randrange(10**9):09d}"
            if number not in _PHONES:
                _PHONES.add(number)
                return number

    # --- buying -----------------------------------------------------------------------

    def order(self, sku: str, account: str, email: str = "topup-e2e@example.com") -> dict:
        r = requests.post(f"{self.api}/orders", timeout=60, headers={"Idempotency-Key": str(uuid.uuid4())},
                          json={"sku": sku, "quantity": 1, "buyer": {"email": email},
                                "recipient": {"account": account}})
        assert r.status_code == 201, r.text
        return r.json()

    def pay(self, order: dict) -> None:
        """Stripe's webhook at the deployment's default endpoint, signed at the functions' time."""
        event = stripe_webhook.checkout_completed(order["order_id"], order["amount"]["amount"],
                                                  order["amount"]["currency"])
        r = stripe_webhook.send(self.api, event, timestamp=clock.now(self.clock_file), timeout=60)
        assert r.status_code == 200, r.text

    def buy(self, sku: str, account: str, email: str = "topup-e2e@example.com") -> dict:
        order = self.order(sku, account, email)
        self.pay(order)
        return order

    # --- looking ----------------------------------------------------------------------

    def view(self, order: dict) -> dict:
        return self.p.get_order(order)

    def admin(self, order: dict) -> dict:
        r = requests.get(f"{self.api}/admin/orders/{order['order_id']}", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def circuit(self, supplier: Supplier) -> dict:
        r = requests.get(f"{self.api}/admin/suppliers/{supplier.id}", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["circuit"]

    def wait_admin(self, order: dict, what: str, check, timeout: float = 30) -> dict:
        """The operator view once `check(view)` holds."""
        def seen():
            view = self.admin(order)
            return view if check(view) else None

        return wait_for(f"order {order['order_id']}: {what}", seen, timeout, interval=0.25)

    def wait_delivered(self, order: dict, timeout: float = 30) -> dict:
        return self.p.wait_delivered(order, timeout)

    def statuses(self, orders: list[dict]) -> dict[str, str]:
        """Every order's status, read from the table in one request per 100 (cheaper than
        100 API calls while the platform is busy delivering)."""
        if self._ddb is None:
            self._ddb = client("dynamodb", self.p.endpoint)
        ddb = self._ddb
        table = self.p.resources["KamiTable"]
        out: dict[str, str] = {}
        ids = [o["order_id"] for o in orders]
        for start in range(0, len(ids), 100):
            keys = [{"pk": {"S": f"ORDER#{i}"}, "sk": {"S": "ORDER"}} for i in ids[start:start + 100]]
            while keys:
                answer = ddb.batch_get_item(RequestItems={table: {"Keys": keys, "ConsistentRead": True,
                                                                  "ProjectionExpression": "pk, #s",
                                                                  "ExpressionAttributeNames": {"#s": "status"}}})
                for item in answer["Responses"].get(table, []):
                    out[item["pk"]["S"].removeprefix("ORDER#")] = item["status"]["S"]
                keys = answer.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
        return out

    def queue_counts(self) -> tuple[int, int]:
        """Messages in the delivery queue: (visible, in flight)."""
        attributes = client("sqs", self.p.endpoint).get_queue_attributes(
            QueueUrl=self.p.resources["DeliveryQueue"],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    # --- time ---------------------------------------------------------------------------

    def advance(self, seconds: int) -> None:
        clock.advance(seconds, self.clock_file)

    def fire_sweep(self) -> None:
        # A run of the platform's own every-minute schedule may hold the sweep's lease at
        # this moment (the fired run then does nothing): callers fire again until done.
        r = requests.post(f"{self.api}/_local/schedules/EveryMinute/fire", timeout=120)
        assert r.status_code == 200 and r.json()["result"] == "ok", r.text

    def poll_until(self, what: str, check, timeout: float = 60, again_after_s: float = 10):
        """Moves the clock past the minute after which the sweep polls a `delivering`
        order's supplier, then fires the sweep until `check()` holds, moving the clock on
        another minute whenever `again_after_s` passed without it (an order the poll left
        waiting, say a re-sent request that timed out on a busy machine, is due again a
        minute later)."""
        moved = [time.monotonic()]
        self.advance(POLL_SUPPLIER_AFTER_S + 1)

        def fired_and_checked():
            if time.monotonic() - moved[0] > again_after_s:
                self.advance(POLL_SUPPLIER_AFTER_S + 1)
                moved[0] = time.monotonic()
            self.fire_sweep()
            return check()

        return wait_for(what, fired_and_checked, timeout, interval=0.5)


@pytest.fixture
def topups(platform):
    helper = TopUps(platform)
    clock.reset(helper.clock_file)
    try:
        yield helper
    finally:
        clock.reset(helper.clock_file)


def _requests(view: dict) -> list[tuple]:
    return [(r["request_id"], r["supplier_id"], r["status"]) for r in view["top_up"]["requests"]]


def _history(view: dict, request_id: str | None = None) -> list[tuple[str, str]]:
    return [(h["action"], h["status"]) for h in view["supplier_history"]
            if request_id in (None, h["request_id"])]


def _topped_up(sim: SupplierSim, *suppliers: Supplier) -> list[dict]:
    return [entry for s in suppliers for entry in sim.ledger(s.id)]


def _request_id(order: dict, seq: int = 0) -> str:
    return f"{order['order_id']}-{seq:02d}"


def _callback_url(topups: TopUps, supplier: Supplier) -> str:
    return f"{topups.api}/webhooks/suppliers/{supplier.id}"


# --- one order at a time ---------------------------------------------------------------


def test_a_top_up_is_delivered_and_the_account_topped_up_once(topups):
    a = topups.supplier()
    sku = topups.product([a])
    phone = topups.phone()
    order = topups.buy(sku, phone)
    body = topups.wait_delivered(order)
    ledger = topups.sim.ledger(a.id)
    assert [(e["request_id"], e["account"], e["product"], e["quantity"]) for e in ledger] == [
        (_request_id(order), phone, "cmcc-50", 1)], ledger
    assert body["deliveries"] == [{"type": "direct_topup", "account": phone,
                                   "supplier_ref": ledger[0]["supplier_ref"]}], body
    view = topups.admin(order)
    assert view["status"] == "delivered" and view["exception"] is None, view
    # An immediate success goes from paid straight to delivered (no wait, no `delivering`).
    assert [e["to"] for e in view["events"]] == ["pending_payment", "paid", "delivered"], view["events"]
    assert (view["top_up"]["account"], view["top_up"]["supplier_product"], view["top_up"]["suppliers"]) == (
        phone, "cmcc-50", [a.id])
    assert _requests(view) == [(_request_id(order), a.id, "success")], view
    assert view["top_up"]["requests"][0]["supplier_ref"] == ledger[0]["supplier_ref"]
    assert _history(view) == [("send", "sent"), ("answer", "success")], view["supplier_history"]
    assert a.secret not in str(view)
    # The request the supplier got is the protocol's, with Kami's callback URL.
    seen = topups.sim.request(a.id, _request_id(order))
    assert (seen["submits"], seen["queries"], seen["callback_url"]) == (1, 0, _callback_url(topups, a)), seen


def test_pending_then_the_suppliers_callback_delivers(topups):
    a = topups.supplier()
    sku = topups.product([a])
    phone = topups.phone()
    topups.sim.script(a.id, ["pending"], account=phone)
    order = topups.buy(sku, phone)
    rid = _request_id(order)
    topups.wait_admin(order, "pending at the supplier",
                      lambda v: v["status"] == "delivering" and _requests(v) == [(rid, a.id, "pending")])
    buyer = topups.view(order)
    assert (buyer["status"], buyer["deliveries"]) == ("delivering", []), buyer
    assert topups.sim.ledger(a.id) == []
    # WHEN the supplier finishes it and calls back
    done = topups.sim.complete(a.id, rid, "success", callback=True)
    assert [(c["kami_status"], c["accepted"]) for c in done["callbacks"]] == [(200, True)], done
    # THEN the order is delivered, once
    body = topups.wait_delivered(order)
    ledger = topups.sim.ledger(a.id)
    assert len(ledger) == 1 and ledger[0]["request_id"] == rid, ledger
    assert body["deliveries"] == [{"type": "direct_topup", "account": phone,
                                   "supplier_ref": ledger[0]["supplier_ref"]}], body
    view = topups.admin(order)
    assert ("callback", "success") in _history(view), view["supplier_history"]
    assert _requests(view) == [(rid, a.id, "success")]


def test_pending_then_a_poll_on_the_schedule_delivers(topups):
    a = topups.supplier()
    sku = topups.product([a])
    phone = topups.phone()
    topups.sim.script(a.id, ["pending"], account=phone)
    order = topups.buy(sku, phone)
    rid = _request_id(order)
    topups.wait_admin(order, "pending at the supplier",
                      lambda v: v["status"] == "delivering" and _requests(v) == [(rid, a.id, "pending")])
    # WHEN the supplier finishes it without calling back
    done = topups.sim.complete(a.id, rid, "success", callback=False)
    assert done["callbacks"] == []
    assert topups.view(order)["status"] == "delivering"
    # THEN the sweep, a minute later, has the worker ask the supplier, and it is delivered
    topups.poll_until("the poll to deliver the order", lambda: topups.view(order)["status"] == "delivered")
    body = topups.view(order)
    ledger = topups.sim.ledger(a.id)
    assert len(ledger) == 1 and ledger[0]["request_id"] == rid, ledger
    assert body["deliveries"] == [{"type": "direct_topup", "account": phone,
                                   "supplier_ref": ledger[0]["supplier_ref"]}], body
    view = topups.admin(order)
    assert ("poll", "success") in _history(view), view["supplier_history"]
    seen = topups.sim.request(a.id, rid)
    assert seen["submits"] == 1 and seen["queries"] >= 1, seen


def test_pending_past_the_deadline_fails_for_an_operator_and_a_late_success_still_delivers(topups):
    a, b = topups.supplier(deadline_s=60), topups.supplier()
    sku = topups.product([a, b])
    phone = topups.phone()
    topups.sim.script(a.id, ["pending"], account=phone)
    order = topups.buy(sku, phone)
    rid = _request_id(order)
    topups.wait_admin(order, "pending at the supplier",
                      lambda v: v["status"] == "delivering" and _requests(v) == [(rid, a.id, "pending")])
    # WHEN the request is still pending past the supplier's unknown_outcome_deadline_s
    topups.poll_until("the deadline to fail the order", lambda: topups.view(order)["status"] == "delivery_failed")
    view = topups.admin(order)
    # THEN the order waits for an operator: never sent to the next supplier
    assert view["exception"] == "supplier_outcome_unknown", view
    assert _requests(view) == [(rid, a.id, "pending")], view
    assert topups.sim.requests(b.id)["requests"] == []
    # A late success from that supplier still delivers it (the buyer was topped up)
    done = topups.sim.complete(a.id, rid, "success", callback=True)
    assert [c["kami_status"] for c in done["callbacks"]] == [200], done
    wait_for("the late success to deliver", lambda: topups.view(order)["status"] == "delivered", timeout=30)
    body = topups.view(order)
    ledger = _topped_up(topups.sim, a, b)
    assert [(e["supplier_id"], e["request_id"]) for e in ledger] == [(a.id, rid)], ledger
    assert body["deliveries"] == [{"type": "direct_topup", "account": phone,
                                   "supplier_ref": ledger[0]["supplier_ref"]}], body
    view = topups.admin(order)
    assert view["exception"] is None, view
    assert [e["to"] for e in view["events"]][-2:] == ["delivery_failed", "delivered"], view["events"]


@pytest.mark.parametrize("failure", ["fail", "refuse"])
def test_a_definite_failure_fails_over_to_the_next_supplier(topups, failure):
    a, b = topups.supplier(), topups.supplier()
    sku = topups.product([a, b])
    phone = topups.phone()
    topups.sim.script(a.id, [failure], account=phone, reason="number not served")
    order = topups.buy(sku, phone)
    body = topups.wait_delivered(order)
    assert topups.sim.ledger(a.id) == []
    ledger = topups.sim.ledger(b.id)
    assert [(e["request_id"], e["account"]) for e in ledger] == [(_request_id(order, 1), phone)], ledger
    assert body["deliveries"] == [{"type": "direct_topup", "account": phone,
                                   "supplier_ref": ledger[0]["supplier_ref"]}], body
    view = topups.admin(order)
    assert _requests(view) == [(_request_id(order, 0), a.id, "failed"), (_request_id(order, 1), b.id, "success")]
    assert view["top_up"]["requests"][0]["reason"], view  # the supplier's reason, for operators
    assert "reason" not in str(body["deliveries"]) and "number not served" not in str(body), body


def test_no_answer_but_topped_up_is_queried_not_sent_again(topups):
    a, b = topups.supplier(timeout_ms=500), topups.supplier()
    sku = topups.product([a, b])
    phone = topups.phone()
    topups.sim.script(a.id, ["apply_and_hang"], account=phone, hang_s=3)
    order = topups.buy(sku, phone)
    rid = _request_id(order)
    # Kami gave up waiting: the outcome is unknown, the order waits (never the next supplier)
    view = topups.wait_admin(order, "the outcome unknown",
                             lambda v: v["status"] == "delivering" and _requests(v) == [(rid, a.id, "unknown")])
    assert ("answer", "no_answer") in _history(view), view["supplier_history"]
    assert len(topups.sim.ledger(a.id)) == 1  # the supplier did top up
    # WHEN the sweep has the worker ask
    topups.poll_until("the poll to find the top-up", lambda: topups.view(order)["status"] == "delivered")
    # THEN delivered on what the supplier did, with no second request anywhere
    ledger = _topped_up(topups.sim, a, b)
    assert [(e["supplier_id"], e["request_id"]) for e in ledger] == [(a.id, rid)], ledger
    body = topups.view(order)
    assert body["deliveries"] == [{"type": "direct_topup", "account": phone,
                                   "supplier_ref": ledger[0]["supplier_ref"]}], body
    seen = topups.sim.request(a.id, rid)
    assert seen["submits"] == 1 and seen["queries"] >= 1, seen
    assert topups.sim.requests(b.id)["requests"] == []
    view = topups.admin(order)
    assert _requests(view) == [(rid, a.id, "success")]
    assert ("poll", "success") in _history(view), view["supplier_history"]


def test_no_answer_and_not_done_is_sent_again_with_the_same_request_id(topups):
    a, b = topups.supplier(timeout_ms=500), topups.supplier()
    sku = topups.product([a, b])
    phone = topups.phone()
    topups.sim.script(a.id, ["hang"], account=phone, hang_s=3)  # then: success
    order = topups.buy(sku, phone)
    rid = _request_id(order)
    topups.wait_admin(order, "the outcome unknown",
                      lambda v: v["status"] == "delivering" and _requests(v) == [(rid, a.id, "unknown")])
    assert topups.sim.ledger(a.id) == []
    topups.poll_until("the re-sent request to deliver", lambda: topups.view(order)["status"] == "delivered")
    ledger = _topped_up(topups.sim, a, b)
    assert [(e["supplier_id"], e["request_id"]) for e in ledger] == [(a.id, rid)], ledger
    seen = topups.sim.request(a.id, rid)
    assert (seen["behaviours"], seen["submits"]) == (["hang", "success"], 2), seen
    assert seen["queries"] >= 1, seen
    view = topups.admin(order)
    assert _requests(view) == [(rid, a.id, "success")], view  # one request, sent twice
    history = _history(view)
    assert history.index(("poll", "not_found")) < history.index(("resend", "success")), history
    assert topups.view(order)["deliveries"][0]["supplier_ref"] == ledger[0]["supplier_ref"]


def test_duplicate_forged_and_misdirected_callbacks_change_nothing(topups):
    a, other = topups.supplier(), topups.supplier()
    sku = topups.product([a])
    phone = topups.phone()
    topups.sim.script(a.id, ["callback_twice"], account=phone)
    order = topups.buy(sku, phone)
    rid = _request_id(order)
    topups.wait_delivered(order)
    # The supplier's two callbacks after its answer: both answered 200, recorded, nothing more.
    sent = wait_for("both callbacks answered", lambda: (r := topups.sim.request(a.id, rid))["callbacks"][1:] and r,
                    timeout=30)["callbacks"]
    assert [(c["kami_status"], c["accepted"], c["forged"]) for c in sent] == [(200, True, False)] * 2, sent
    view = topups.wait_admin(order, "both callbacks in the history",
                             lambda v: [h for h in _history(v) if h[0] == "callback"][1:])
    callbacks = [status for action, status in _history(view) if action == "callback"]
    assert len(callbacks) == 2 and set(callbacks) <= {"success", "duplicate_success"}, callbacks
    assert "duplicate_success" in callbacks, callbacks
    before_buyer, before_admin = topups.view(order), view
    url = _callback_url(topups, a)
    # A forgery (signed with another secret): 401, nothing recorded.
    forged = topups.sim.callback(a.id, rid, "failed", url, reason="forged", secret=secrets.token_hex(24))
    assert forged["kami_status"] == 401 and "invalid_signature" in forged["kami_body"], forged
    # A request Kami sent to supplier `a`, called back by `other` (its own valid signature): 404.
    misdirected = topups.sim.callback(other.id, rid, "failed", _callback_url(topups, other), reason="not mine")
    assert misdirected["kami_status"] == 404 and "topup_request_not_found" in misdirected["kami_body"], misdirected
    # A request id Kami never sent: 404.
    unknown = topups.sim.callback(a.id, _request_id(order, 7), "success", url, supplier_ref="SIM-999999")
    assert unknown["kami_status"] == 404, unknown
    # Everything as it was.
    assert topups.view(order) == before_buyer
    after = topups.admin(order)
    assert (after["status"], after["top_up"], after["supplier_history"]) == (
        before_admin["status"], before_admin["top_up"], before_admin["supplier_history"])
    # A genuine but contradicting callback on the settled request: recorded, changes nothing.
    late = topups.sim.callback(a.id, rid, "failed", url, reason="changed its mind")
    assert late["kami_status"] == 200, late
    after = topups.admin(order)
    assert after["status"] == "delivered" and _requests(after) == [(rid, a.id, "success")]
    assert _history(after)[-1] == ("callback", "ignored_contradiction_failed"), after["supplier_history"]
    assert topups.view(order) == before_buyer
    assert len(topups.sim.ledger(a.id)) == 1 and topups.sim.ledger(other.id) == []
    assert topups.sim.requests(other.id)["requests"] == []


def test_the_circuit_opens_after_repeated_failures_and_closes_after_the_trial(topups):
    a = topups.supplier(timeout_ms=1000, circuit={"failures": 3, "window_s": 300, "cooldown_s": 30})
    sku = topups.product([a])
    phones = [topups.phone() for _ in range(4)]
    for phone in phones[:3]:
        topups.sim.script(a.id, ["error"], account=phone)  # a 5xx: an unknown outcome
    failing = []
    for phone in phones[:3]:
        order = topups.buy(sku, phone)
        topups.wait_admin(order, "the 5xx recorded",
                          lambda v, rid=_request_id(order): _requests(v) == [(rid, a.id, "unknown")])
        failing.append(order)
    circuit = topups.circuit(a)
    assert circuit["state"] == "open" and circuit["failures"] >= 3 and circuit["opened_at"], circuit
    # While it is open the supplier gets nothing new: the order waits, `delivering`.
    held = topups.buy(sku, phones[3])
    topups.wait_admin(held, "held back", lambda v: v["status"] == "delivering")
    assert _requests(topups.admin(held)) == []
    assert [r["account"] for r in topups.sim.requests(a.id)["requests"]] == phones[:3]
    # After the cooldown one trial goes through; it succeeds and closes the circuit.
    topups.advance(31)
    assert topups.circuit(a)["state"] == "half_open"
    orders = [*failing, held]

    # A sweep may give the trial to one order and leave the others for the next minute.
    topups.poll_until("every order delivered",
                      lambda: set(topups.statuses(orders).values()) == {"delivered"}, timeout=120, again_after_s=8)
    circuit = topups.circuit(a)
    assert (circuit["state"], circuit["failures"], circuit["opened_at"]) == ("closed", 0, None), circuit
    ledger = topups.sim.ledger(a.id)
    assert sorted(e["request_id"] for e in ledger) == sorted(_request_id(o) for o in orders), ledger
    assert sorted(e["account"] for e in ledger) == sorted(phones)
    for order in failing:
        seen = topups.sim.request(a.id, _request_id(order))
        assert seen["behaviours"] == ["error", "success"], seen


# --- many at once -------------------------------------------------------------------------


def test_concurrent_top_up_orders_against_flaky_suppliers_top_up_each_account_at_most_once(topups):
    # Two suppliers that fail in every way the protocol allows, drawn at random (seeded).
    # A high circuit threshold keeps both in play (the circuit has its own test).
    circuit = {"failures": 1000, "window_s": 60, "cooldown_s": 1}
    a = topups.supplier(timeout_ms=500, circuit=circuit, deadline_s=7200)
    b = topups.supplier(timeout_ms=500, circuit=circuit, deadline_s=7200)
    weights = {"success": 4, "fail": 1, "refuse": 1, "pending": 2, "pending_then_callback": 0.5, "callback_twice": 1,
               "hang": 1, "apply_and_hang": 1, "apply_then_drop": 1, "garbage": 1, "error": 0.5}
    topups.sim.flaky(a.id, weights, seed=11, hang_s=2)
    topups.sim.flaky(b.id, {**weights, "fail": 0.5, "refuse": 0}, seed=12, hang_s=2)
    sku = topups.product([a, b], pending_limits={"per_address": 1_000_000, "per_email": 1_000_000})
    phones = [topups.phone() for _ in range(CONCURRENT_ORDERS)]
    started = time.monotonic()

    def buy(i: int) -> dict:
        return topups.buy(sku, phones[i], email=f"topup-{i}@example.com")

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        orders = list(pool.map(buy, range(CONCURRENT_ORDERS)))
    bought = time.monotonic()
    by_id = {o["order_id"]: o for o in orders}
    rng = random.Random(7)
    kicks = {"at": time.monotonic(), "count": 0, "completed": 0}

    def finish_pending() -> None:
        # The suppliers finish what they left pending: mostly successes, some failures,
        # some with a callback and some left for Kami's poll.
        for supplier in (a, b):
            for r in topups.sim.requests(supplier.id)["requests"]:
                if r["state"] != "pending":
                    continue
                try:
                    topups.sim.complete(supplier.id, r["request_id"], "success" if rng.random() < 0.8 else "failed",
                                        callback=rng.random() < 0.5)
                    kicks["completed"] += 1
                except SimRefused as e:
                    if e.status != 409:  # 409: completed meanwhile
                        raise

    def settled():
        statuses = topups.statuses(orders)
        open_ = [s for s in statuses.values() if s not in TERMINAL]
        if not open_:
            return statuses
        # Every few seconds: finish pending requests, move the clock on a minute if an
        # order waits on a supplier, and fire the sweep.
        if time.monotonic() - kicks["at"] > 6:
            finish_pending()
            if "delivering" in open_:
                topups.advance(POLL_SUPPLIER_AFTER_S + 1)
            topups.fire_sweep()
            kicks["at"] = time.monotonic()
            kicks["count"] += 1
        return None

    wait_for("every order delivered or delivery_failed", settled, timeout=600, interval=1)
    settled_at = time.monotonic()

    def consistent():
        # Nothing left in the delivery queue (a leftover message for a failed order sends
        # it round again), and the same statuses before and after reading the ledgers.
        if topups.queue_counts() != (0, 0):
            return None
        before = topups.statuses(orders)
        ledger = _topped_up(topups.sim, a, b)
        after = topups.statuses(orders)
        return (after, ledger) if before == after and set(after.values()) <= set(TERMINAL) else None

    # Messages that failed (contention, the invocation's time) come back after the
    # queue's visibility timeout (60 s).
    statuses, ledger = wait_for("the delivery queue drained and the orders settled", consistent, timeout=180,
                                interval=1)
    by_order: dict[str, list[dict]] = {}
    for entry in ledger:
        order_id, _, seq = entry["request_id"].rpartition("-")
        assert order_id in by_id and seq.isdigit(), entry
        by_order.setdefault(order_id, []).append(entry)
    delivered = [i for i, s in statuses.items() if s == "delivered"]
    failed = [i for i, s in statuses.items() if s == "delivery_failed"]
    twice = {i: e for i, e in by_order.items() if len(e) > 1}
    assert not twice, f"topped up more than once: {twice}"
    assert sorted(by_order) == sorted(delivered), (
        f"delivered without a top-up: {sorted(set(delivered) - set(by_order))}; "
        f"topped up but not delivered: {sorted(set(by_order) - set(delivered))}")
    # Each order's own view agrees: the account and the supplier's reference of its one top-up.
    def check(order_id: str) -> tuple[str, str | None]:
        order = by_id[order_id]
        body = topups.view(order)
        if body["status"] == "delivered":
            entry = by_order[order_id][0]
            assert entry["account"] == phones[orders.index(order)]
            assert body["deliveries"] == [{"type": "direct_topup", "account": entry["account"],
                                           "supplier_ref": entry["supplier_ref"]}], body
            assert [e["to"] for e in body["events"]].count("delivered") == 1, body["events"]
        else:
            assert body["deliveries"] == [], body
        return body["status"], body.get("exception")

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        views = list(pool.map(check, statuses))
    exceptions = sorted({e for s, e in views if s == "delivery_failed"})
    assert set(exceptions) <= {"no_supplier_succeeded"}, exceptions
    requests_a = topups.sim.requests(a.id)["requests"]
    requests_b = topups.sim.requests(b.id)["requests"]
    print(f"\n{CONCURRENT_ORDERS} top-up orders: {len(delivered)} delivered, {len(failed)} delivery_failed "
          f"(exceptions {exceptions}); requests {len(requests_a)} to a, {len(requests_b)} to b, "
          f"{sum(r['submits'] for r in requests_a + requests_b)} submits, "
          f"{sum(r['queries'] for r in requests_a + requests_b)} queries, "
          f"{sum(len(r['callbacks']) for r in requests_a + requests_b)} callbacks; "
          f"{kicks['completed']} pending completed, {kicks['count']} sweeps fired; "
          f"bought in {bought - started:.0f}s, settled {settled_at - bought:.0f}s later")
    assert len(delivered) + len(failed) == CONCURRENT_ORDERS
