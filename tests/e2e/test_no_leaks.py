"""The real binaries' logs, and the platform's own output, hold no card key, access
token or secret after a full run (import, order, pay, deliver, show, a forged webhook),
with every function at RUST_LOG=trace (the template's LogLevel): at TRACE the Lambda
runtime would log each invocation event whole, unless Kami's log filter caps it."""

from __future__ import annotations

import pytest
import requests
from conftest import start_platform, stripe_webhook
from kami_local import provision


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

    logs = {path.name: path.read_text(errors="replace") for path in platform.log_dir.rglob("*") if path.is_file()}
    assert any("REPORT" in text for text in logs.values()), f"no invocation logs captured in {platform.log_dir}"
    assert any("TRACE" in text for text in logs.values()), "the functions did not log at TRACE"
    forbidden = [*codes, order["access_token"], *provision.local_secrets().values()]
    for name, text in logs.items():
        for secret in forbidden:
            assert secret not in text, f"{name} holds a card key, token or secret"
