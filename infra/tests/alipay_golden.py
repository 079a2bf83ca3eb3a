"""Golden values for Kami's Alipay adapter (shared/src/adapters/alipay.rs), produced by the
real python-alipay-sdk (fzlee/alipay, `pip install python-alipay-sdk`) on the test-only keys
of shared/testdata/alipay/. The Rust tests hold the printed strings; rerun this script and
compare when the signing code or the SDK changes.

    python3 -m venv /tmp/alipay-venv && /tmp/alipay-venv/bin/pip install python-alipay-sdk
    /tmp/alipay-venv/bin/python infra/tests/alipay_golden.py

Not a pytest module (no `test_` prefix): it needs the SDK, which the project's venv lacks.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from alipay import AliPay

KEYS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "alipay"
APP_ID = "2021000000000001"
NOTIFY_URL = "https://kami.example.com/webhooks/alipay/01J0CHANNEL"
# FakeClock::DEFAULT (2027-01-15T08:00:00Z) in Beijing time; the order expires 30 min later.
TIMESTAMP = "2027-01-15 16:00:00"


def sdk(private_key: str, public_key: str) -> AliPay:
    return AliPay(
        appid=APP_ID,
        app_notify_url=None,
        app_private_key_string=(KEYS / private_key).read_text(),
        alipay_public_key_string=(KEYS / public_key).read_text(),
        sign_type="RSA2",
    )


def main() -> None:
    # Kami's side: the app signs a page-pay request.
    app = sdk("app_private_key.test.pem", "alipay_public_key.test.pem")
    biz_content = {
        "out_trade_no": "pay_01J0ATTEMPT",
        "total_amount": "12.34",
        # Non-ASCII, a quote, an ampersand and a plus: the SDK's json.dumps escapes the
        # first two, quote_plus the rest.
        "subject": '会员月卡 "VIP" & 1+1',
        "product_code": "FAST_INSTANT_TRADE_PAY",
        "time_expire": "2027-01-15 16:30:00",
    }
    # timestamp and format are passed as common parameters (build_body's kwargs override
    # its datetime.now()); everything else is the SDK's own build_body / sign_data.
    data = app.build_body(
        "alipay.trade.page.pay",
        dict(biz_content),
        notify_url=NOTIFY_URL,
        format="JSON",
        timestamp=TIMESTAMP,
    )
    unsigned = "&".join("{}={}".format(k, v) for k, v in app._ordered_data(dict(data)))
    print("page_pay_string_to_sign:")
    print(unsigned)
    print("page_pay_signed_query:")
    print(app.sign_data(data))

    # Alipay's side: a notification signed with the "Alipay" test key, as a form body
    # (sign_type is not signed; Alipay appends it).
    alipay = sdk("alipay_private_key.test.pem", "app_public_key.test.pem")
    notification = {
        "gmt_create": "2027-01-15 16:01:02",
        "charset": "utf-8",
        "seller_id": "2088000000000002",
        "subject": "会员月卡",
        "buyer_id": "2088000000000003",
        "invoice_amount": "12.34",
        "notify_id": "2027011500222160105000000000000001",
        "fund_bill_list": '[{"amount":"12.34","fundChannel":"ALIPAYACCOUNT"}]',
        "notify_type": "trade_status_sync",
        "trade_status": "TRADE_SUCCESS",
        "receipt_amount": "12.34",
        "app_id": APP_ID,
        "buyer_pay_amount": "12.34",
        "notify_time": "2027-01-15 16:01:05",
        "point_amount": "0.00",
        "total_amount": "12.34",
        "trade_no": "2027011522001400000000000001",
        "auth_app_id": APP_ID,
        "out_trade_no": "pay_01J0ATTEMPT",
        "version": "1.0",
    }
    body = alipay.sign_data(dict(notification)) + "&sign_type=RSA2"
    # The SDK's own verifier accepts it (as a merchant's Python server would).
    params = dict(parse_qsl(body, keep_blank_values=True))
    assert app.verify(params, params.pop("sign")), "the SDK refuses its own notification"
    print("notification_form_body:")
    print(body)


if __name__ == "__main__":
    main()
