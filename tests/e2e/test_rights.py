"""License keys, count cards, redemption links and the buyer's notice through the real
binaries (checkout, admin, operations, the delivery worker, merchant-api and the notifier
under the emulator, as API Gateway and the SQS mappings run them): a key is generated and
validated, a card redeemed once per redemption id, a link opened once with the
documented signature, a delivered order's email in the local outbox (docs/licenses.md,
docs/entitlements.md, docs/links.md, docs/notifications.md)."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import requests
from conftest import ADMIN, stripe_webhook, wait_for
from kami_local import clock, outbox


def _product(platform, delivery: dict) -> tuple[str, dict]:
    sku = f"e2e-{uuid.uuid4().hex[:10]}"
    r = requests.post(f"{platform.api}/admin/products", headers=ADMIN, timeout=30, json={
        "sku": sku, "title": "E2E rights", "price": {"amount": 500, "currency": "CNY"}, "delivery": delivery})
    assert r.status_code == 201, r.text
    return sku, r.json()


def _delivered(platform, sku: str, buyer: dict | None = None) -> dict:
    r = requests.post(f"{platform.api}/orders", timeout=30, headers={"Idempotency-Key": str(uuid.uuid4())},
                      json={"sku": sku, "quantity": 1, "buyer": {"email": "e2e@example.com", **(buyer or {})}})
    assert r.status_code == 201, r.text
    order = r.json()
    assert 200 <= stripe_webhook.send(platform.api, platform.paid_event(order["order_id"])).status_code < 300
    # The view, with the token that opened it.
    return {**platform.wait_delivered(order, timeout=60), "access_token": order["access_token"]}


def _merchant_key(platform, scopes: list[str]) -> dict:
    r = requests.post(f"{platform.api}/admin/api-keys", headers=ADMIN, timeout=30,
                      json={"name": "e2e", "scopes": scopes})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def test_a_license_key_is_generated_validated_and_activated(platform):
    sku, _ = _product(platform, {"type": "license_key", "activation_limit": 1})
    body = _delivered(platform, sku)
    key = body["deliveries"][0]["license_key"]
    assert body["deliveries"][0]["type"] == "license_key" and len(key) == 23, body

    licenses = _merchant_key(platform, ["licenses"])
    r = requests.post(f"{platform.api}/licenses/validate", headers=licenses, timeout=30, json={"license_key": key.lower()})
    assert r.status_code == 200 and r.json()["valid"] is True and r.json()["activations_left"] == 1, r.text
    r = requests.post(f"{platform.api}/licenses/activate", headers=licenses, timeout=30,
                      json={"license_key": key, "instance_name": "ci"})
    assert r.status_code == 200 and r.json()["activations_left"] == 0, r.text
    r = requests.post(f"{platform.api}/licenses/activate", headers=licenses, timeout=30,
                      json={"license_key": key, "instance_name": "another"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "activation_limit_reached", r.text
    typo = ("3" if key[0] == "2" else "2") + key[1:]
    r = requests.post(f"{platform.api}/licenses/validate", headers=licenses, timeout=30, json={"license_key": typo})
    assert r.status_code == 400 and r.json()["error"]["code"] == "license_key_typo", r.text
    # A key without the scope is refused before anything is read.
    reader = _merchant_key(platform, ["entitlements:read"])
    r = requests.post(f"{platform.api}/licenses/validate", headers=reader, timeout=30, json={"license_key": key})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text


def test_a_count_card_is_redeemed_once_per_redemption_id(platform):
    sku, _ = _product(platform, {"type": "count_card", "entitlement": "yoga", "uses": 2})
    account = f"e2e-{uuid.uuid4().hex[:8]}"
    body = _delivered(platform, sku, {"account_id": account})
    entitlement_id = body["deliveries"][0]["entitlement_id"]
    merchant = _merchant_key(platform, ["entitlements:read", "entitlements:redeem"])
    listed = requests.get(f"{platform.api}/entitlements", params={"account_id": account}, headers=merchant,
                          timeout=30).json()["entitlements"]
    assert [e["entitlement_id"] for e in listed] == [entitlement_id] and listed[0]["uses_left"] == 2, listed
    url = f"{platform.api}/entitlements/{entitlement_id}/redemptions"
    answers = [requests.post(url, headers=merchant, timeout=30, json={"redemption_id": "visit-1"}) for _ in range(3)]
    assert all(a.status_code == 201 and a.json()["uses_left"] == 1 for a in answers), [a.text for a in answers]
    assert requests.post(url, headers=merchant, timeout=30, json={"redemption_id": "visit-2"}).json()["uses_left"] == 0
    r = requests.post(url, headers=merchant, timeout=30, json={"redemption_id": "visit-3"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_uses_left", r.text


def test_a_link_redirects_once_with_the_documented_signature(platform):
    sku, created = _product(platform, {"type": "link", "target_url": "https://merchant.example/redeem",
                                       "valid_hours": 1, "max_opens": 1})
    secret = created["link_secret"]
    body = _delivered(platform, sku)
    url = body["deliveries"][0]["url"]
    path = urlsplit(url).path
    assert path.startswith("/r/"), url

    r = requests.get(f"{platform.api}{path}", allow_redirects=False, timeout=30)
    assert r.status_code == 302, r.text
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    assert q["kami_order"] == body["order_id"] and q["kami_sku"] == sku
    message = f"{q['kami_order']}.{q['kami_sku']}.{q['kami_exp']}".encode()
    assert hmac.compare_digest(hmac.new(secret.encode(), message, hashlib.sha256).hexdigest(), q["kami_sig"])
    r = requests.get(f"{platform.api}{path}", allow_redirects=False, timeout=30)
    assert r.status_code == 410 and r.json()["error"]["code"] == "link_used", r.text
    r = requests.get(f"{platform.api}/r/{'A' * 43}", allow_redirects=False, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "link_not_found", r.text


def test_a_delivered_order_is_told_by_email_in_the_outbox(platform):
    sku, codes = platform.create_product(keys=1, settings={"goods_in_notifications": True})
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    body = _delivered(platform, sku, {"email": email, "language": "en"})
    order_id = body["order_id"]

    def told():
        sent = [m for m in outbox.read(platform.endpoint, platform.resources["KamiTable"]) if m["recipient"] == email]
        return sent if sent and sent[0]["kind"] else None

    sent = wait_for(f"the notice of {order_id}", told, timeout=60, interval=0.5)
    assert len(sent) == 1, sent
    assert sent[0]["kind"] == "delivery" and sent[0]["order_id"] == order_id and sent[0]["language"] == "en", sent
    assert sent[0]["subject"] == f"Your order {order_id} is delivered", sent
    assert codes[0] in sent[0]["body"], sent


def test_a_subscription_is_renewed_through_its_notice_a_month_later(platform):
    """The sweep (its every-minute schedule, fired) makes the renewal order three days
    before the end once the clock has moved; the notifier sends its notice with the
    order's access token; paid then, the period continues from the old end."""
    file = platform.log_dir / "clock"
    sku, _ = _product(platform, {"type": "subscription", "entitlement": f"vip-{uuid.uuid4().hex[:6]}",
                                 "period_days": 30, "renewal_notice_days": 3})
    account = f"e2e-{uuid.uuid4().hex[:8]}"
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.com"
    body = _delivered(platform, sku, {"email": email, "account_id": account, "language": "en"})
    first = body["order_id"]
    assert body["deliveries"][0]["subscription_id"] == first, body
    merchant = _merchant_key(platform, ["entitlements:read"])

    def ends_at() -> str:
        listed = requests.get(f"{platform.api}/entitlements", params={"account_id": account}, headers=merchant,
                              timeout=30).json()["entitlements"]
        assert len(listed) == 1, listed
        return listed[0]["ends_at"]

    first_end = ends_at()
    table = platform.resources["KamiTable"]
    try:
        clock.advance(clock.parse_duration("28d"), file)

        def renewal_made():
            r = requests.post(f"{platform.api}/_local/schedules/EveryMinute/fire", timeout=60)
            assert r.status_code == 200, r.text
            view = requests.get(f"{platform.api}/orders/{first}", timeout=30,
                                headers={"Authorization": f"Bearer {body['access_token']}"}).json()
            return view.get("renewal_order_id")

        renewal = wait_for("the renewal order", renewal_made, timeout=60, interval=0.5)

        def noticed():
            return [m for m in outbox.read(platform.endpoint, table)
                    if m["recipient"] == email and m["kind"] == "renewal_notice" and m["order_id"] == renewal]

        notice = wait_for("the renewal notice", noticed, timeout=60, interval=0.5)[0]
        token = next(line.removeprefix("Access token: ") for line in notice["body"].splitlines()
                     if line.startswith("Access token: "))
        order = {"order_id": renewal, "access_token": token}
        assert platform.get_order(order)["status"] == "pending_payment"

        r = stripe_webhook.send(platform.api, platform.paid_event(renewal), timestamp=clock.now(file))
        assert r.status_code == 200, r.text
        renewed = platform.wait_delivered(order, timeout=60)
        assert renewed["deliveries"][0]["subscription_id"] == first, renewed
        # Thirty days more from the old end: no gap, no overlap.
        parse = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: E731
        assert parse(ends_at()) - parse(first_end) == timedelta(days=30)
    finally:
        clock.reset(file)


def test_a_bundle_is_delivered_part_by_part(platform):
    license_sku, _ = _product(platform, {"type": "license_key", "activation_limit": 1})
    card_sku, _ = _product(platform, {"type": "count_card", "entitlement": "gym", "uses": 5})
    bundle_sku, created = _product(platform, {
        "type": "bundle", "on_partial_failure": "reverse",
        "items": [{"sku": card_sku, "quantity": 1}, {"sku": license_sku, "quantity": 2}]})
    assert created["delivery"]["type"] == "bundle" and created["bundle"]["on_partial_failure"] == "reverse", created
    # No part counts stock: neither does the bundle.
    product = requests.get(f"{platform.api}/products/{bundle_sku}", timeout=30).json()
    assert product["stock"] == {"available": None}, product

    account = f"e2e-{uuid.uuid4().hex[:8]}"
    body = _delivered(platform, bundle_sku, {"account_id": account})
    parts = [(d["part"], d["type"]) for d in body["deliveries"]]
    assert parts == [(card_sku, "count_card"), (license_sku, "license_key"), (license_sku, "license_key")], body
    keys = {d["license_key"] for d in body["deliveries"] if d["type"] == "license_key"}
    assert len(keys) == 2, body
    merchant = _merchant_key(platform, ["entitlements:read"])
    listed = requests.get(f"{platform.api}/entitlements", params={"account_id": account}, headers=merchant,
                          timeout=30).json()["entitlements"]
    assert [(e["name"], e["uses_left"]) for e in listed] == [("gym", 5)], listed
