"""The real binaries' logs, and the platform's own output, hold no card key, access
token or secret after a full run (import, order, pay, deliver, show, a forged webhook,
a payment and a refund through a payment channel, whose keys must not show either),
with every function at RUST_LOG=trace (the template's LogLevel): at TRACE the Lambda
runtime would log each invocation event whole, unless Kami's log filter caps it."""

from __future__ import annotations

import pytest
import requests
import uuid

from conftest import ADMIN, start_platform, stripe_webhook
from kami_local import provision
from kami_local.sandbox import cli as sandbox
from kami_local.supplier_sim import SupplierSim


def _channel_secrets(sandbox_url: str) -> list[str]:
    """Every secret value of the sandbox's channels, PEM keys by their base64 lines (the
    header lines are not secret)."""
    secrets = []
    for channel in sandbox.channels(sandbox_url).values():
        config = channel["config"]
        for field in ("app_private_key", "merchant_private_key", "apiv3_key", "secret_key", "webhook_secrets"):
            values = config.get(field) or []
            for value in values if isinstance(values, list) else [values]:
                secrets += [line for line in value.splitlines() if line and not line.startswith("-----")]
    assert secrets, "the sandbox's channels carry secrets"
    return secrets


@pytest.fixture(scope="module")
def trace_platform(tmp_path_factory):
    yield from start_platform(tmp_path_factory.mktemp("trace-platform"), {"LogLevel": "trace"})


def test_function_logs_of_a_full_run_at_trace_hold_no_key_token_or_secret(trace_platform):
    platform = trace_platform
    sku, codes = platform.create_product(keys=2)
    order = platform.create_order(sku)
    forged = stripe_webhook.send(platform.api, platform.paid_event(order["order_id"]), secret="whsec_forged")
    assert forged.status_code == 400, forged.text
    paid = stripe_webhook.send(platform.api, platform.paid_event(order["order_id"]))
    assert paid.status_code == 200, paid.text
    body = platform.wait_delivered(order, timeout=30)
    assert body["deliveries"][0]["code"] in codes
    wrong = requests.get(f"{platform.api}/orders/{order['order_id']}", timeout=30,
                         headers={"Authorization": f"Bearer {order['access_token']}x"})
    assert wrong.status_code == 404

    # A payment and a refund through a channel: its keys sign and verify, never show.
    channel_order = platform.create_order(sku)
    started = requests.post(f"{platform.api}/orders/{channel_order['order_id']}/payments", timeout=60,
                            json={"channel": "wechat-sandbox"},
                            headers={"Authorization": f"Bearer {channel_order['access_token']}",
                                     "Idempotency-Key": str(uuid.uuid4())})
    assert started.status_code == 201, started.text
    sandbox.pay(platform.sandbox, "wechatpay", started.json()["payment_id"])
    platform.wait_delivered(channel_order, timeout=30)
    refund = requests.post(f"{platform.api}/admin/orders/{channel_order['order_id']}/refunds", timeout=60,
                           json={"amount": {"amount": 990, "currency": "CNY"}, "reason": "no leaks"},
                           headers={**ADMIN, "Idempotency-Key": str(uuid.uuid4())})
    assert refund.status_code == 201, refund.text

    # A top-up through the seeded supplier: its secret signs requests and verifies answers.
    sim = SupplierSim(platform.supplier_sim)
    supplier_secrets = [s["secret"] for s in sim.suppliers()]
    assert supplier_secrets, "the simulator has a supplier with a secret"
    top_up = requests.post(f"{platform.api}/orders", timeout=30,
                           headers={"Idempotency-Key": str(uuid.uuid4())},
                           json={"sku": "mobile-credit-50", "quantity": 1, "buyer": {"email": "leaks@example.com"},
                                 "recipient": {"account": "13900139000"}})
    assert top_up.status_code == 201, top_up.text
    paid = stripe_webhook.send(platform.api, platform.paid_event(top_up.json()["order_id"]))
    assert paid.status_code == 200, paid.text
    topped_up = platform.wait_delivered(top_up.json(), timeout=30)
    assert topped_up["deliveries"][0]["type"] == "direct_topup", topped_up

    # The functions' and the platform's logs; the sandbox's and the simulator's own state
    # (the outside side, holding the keys it plays with) is not Kami's.
    logs = {path.name: path.read_text(errors="replace") for path in platform.log_dir.rglob("*")
            if path.is_file() and "sandbox" not in path.parts and "supplier_sim" not in path.parts}
    assert any("REPORT" in text for text in logs.values()), f"no invocation logs captured in {platform.log_dir}"
    assert any("TRACE" in text for text in logs.values()), "the functions did not log at TRACE"
    forbidden = [*codes, order["access_token"], channel_order["access_token"], *provision.local_secrets().values(),
                 *_channel_secrets(platform.sandbox), *supplier_secrets]
    for name, text in logs.items():
        for secret in forbidden:
            assert secret not in text, f"{name} holds a card key, token or secret"
