"""Sends a correctly signed Stripe webhook for an order, as `stripe trigger` would.

The amount and currency come from the order item in DynamoDB (pk ORDER#<id>, sk ORDER).
"""

from __future__ import annotations

import json
import secrets
import time

import requests
import stripe

from .provision import client, local_secrets


def order_amount(endpoint: str, table: str, order_id: str) -> tuple[int, str]:
    item = client("dynamodb", endpoint).get_item(
        TableName=table, Key={"pk": {"S": f"ORDER#{order_id}"}, "sk": {"S": "ORDER"}}, ConsistentRead=True,
    ).get("Item")
    if item is None:
        raise LookupError(f"no order {order_id} in {table}")
    return int(item["amount"]["N"]), item["currency"]["S"]


def _event(kind: str, data_object: dict, event_id: str | None, now: int) -> dict:
    """The envelope Stripe puts around every event."""
    return {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": "2024-06-20",
        "created": now,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
        "data": {"object": data_object},
    }


def checkout_completed(order_id: str, amount: int, currency: str, event_id: str | None = None) -> dict:
    now = int(time.time())
    return _event("checkout.session.completed", {
        "id": "cs_test_" + secrets.token_hex(12),
        "object": "checkout.session",
        "amount_total": amount,
        "currency": currency.lower(),
        "client_reference_id": order_id,
        "metadata": {"order_id": order_id},
        "mode": "payment",
        "payment_intent": "pi_" + secrets.token_hex(12),
        "payment_status": "paid",
        "status": "complete",
        "created": now,
    }, event_id, now)


def payment_intent_succeeded(order_id: str, amount: int, currency: str, event_id: str | None = None) -> dict:
    now = int(time.time())
    return _event("payment_intent.succeeded", {
        "id": "pi_" + secrets.token_hex(12),
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": currency.lower(),
        "metadata": {"order_id": order_id},
        "status": "succeeded",
        "created": now,
    }, event_id, now)


EVENT_TYPES = {"checkout.session.completed": checkout_completed, "payment_intent.succeeded": payment_intent_succeeded}


def sign(payload: str, secret: str | None = None, timestamp: int | None = None) -> str:
    secret = secret or local_secrets()["StripeWebhookSecret"].split(",")[0]
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)


def send(api_url: str, event: dict, secret: str | None = None, timeout: float = 30,
         timestamp: int | None = None) -> requests.Response:
    """`timestamp`: when Stripe signs it (default now; `infra/kami webhook` signs at the local clock's time)."""
    payload = json.dumps(event, separators=(",", ":"))
    return requests.post(f"{api_url}/webhooks/stripe", data=payload.encode(), timeout=timeout, headers={
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": sign(payload, secret, timestamp),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    })
