"""Golden values for Kami's WeChat Pay adapter (shared/src/adapters/wechatpay.rs), made by
the Python SDK `wechatpayv3` that Kami must interoperate with.

Not a pytest module (the SDK is not one of Kami's dependencies): run it by hand in a
throw-away venv and paste what it prints into the Rust test `golden` module:

    python3 -m venv /tmp/wechat-venv && /tmp/wechat-venv/bin/pip install wechatpayv3
    /tmp/wechat-venv/bin/python infra/tests/wechatpay_golden.py

It uses the committed test keys (shared/testdata/wechatpay, test keys, not secrets), a
fixed timestamp and fixed nonces, so its output never changes (RSA PKCS#1 v1.5 signatures
and AES-GCM under a fixed nonce are deterministic). What it produces, all with the SDK's
own functions:
- the Authorization header of a Native order (POST with Kami's exact JSON body) and of an
  order query (GET with a query string, empty body): `wechatpayv3.utils.build_authorization`
  with the clock frozen;
- a TRANSACTION.SUCCESS notification signed with the platform key (`rsa_sign`) and
  encrypted with the APIv3 key (AES-256-GCM, the inverse of the SDK's `aes_decrypt`), then
  accepted and decrypted by the SDK's own `WeChatPay.callback`, as a merchant's server
  using the SDK would;
- a signed Native order answer that the SDK's response check (`Core._verify_signature`)
  accepts.
"""

from __future__ import annotations

import json
from base64 import b64encode
from pathlib import Path
from unittest import mock

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import wechatpayv3
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3 import utils

KEYS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "wechatpay"

MCHID = "1900000001"
APPID = "wxd678efh567hg6787"
MERCHANT_SERIAL_NO = "3775B6A45ACD588826D15E583A95F5DD4C3C7E0F"
PLATFORM_SERIAL_NO = "PUB_KEY_ID_0119000000012027011500000000"
APIV3_KEY = "kami-test-apiv3-key-0123456789ab"
TIMESTAMP = 1_800_000_000  # FakeClock::DEFAULT, 2027-01-15T08:00:00Z
REQUEST_NONCE = "593BEC0C930BF1AFEB40B4A08C8FB242"
NOTIFY_NONCE = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"
RESPONSE_NONCE = "C8F4E1A2B3D4E5F60718293A4B5C6D7E"
PAYMENT_ID = "P01JG7ZQ8K2M3N4P5Q6R7S8T9V"

# Kami's body for the Native order: serde_json's compact output, fields in struct order.
NATIVE_BODY = json.dumps(
    {
        "appid": APPID,
        "mchid": MCHID,
        "description": "Kami 测试商品",
        "out_trade_no": PAYMENT_ID,
        "time_expire": "2027-01-15T16:30:00+08:00",
        "notify_url": "https://kami.example.com/webhooks/wechatpay/ch_01",
        "amount": {"total": 990, "currency": "CNY"},
    },
    separators=(",", ":"),
    ensure_ascii=False,
)
QUERY_PATH = f"/v3/pay/transactions/out-trade-no/{PAYMENT_ID}?mchid={MCHID}"

TRANSACTION = json.dumps(
    {
        "mchid": MCHID,
        "appid": APPID,
        "out_trade_no": PAYMENT_ID,
        "transaction_id": "4200000000202701150000000001",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2027-01-15T16:00:00+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {"total": 990, "payer_total": 990, "currency": "CNY", "payer_currency": "CNY"},
    },
    separators=(",", ":"),
    ensure_ascii=False,
)
RESOURCE_NONCE = "fdasflkja484"
ASSOCIATED_DATA = "transaction"


def read(name: str) -> str:
    return (KEYS / name).read_text()


def rust(name: str, value: str) -> str:
    return f'pub const {name}: &str = r#"{value}"#;'


def main() -> None:
    merchant_key = utils.load_private_key(read("test_merchant_private_key.pem"))
    platform_key = utils.load_private_key(read("test_platform_private_key.pem"))
    out = [f"// wechatpayv3 {wechatpayv3.__version__}"]

    # Request signatures, the clock frozen at TIMESTAMP.
    with mock.patch.object(utils.time, "time", return_value=TIMESTAMP):
        native = utils.build_authorization(
            "/v3/pay/transactions/native", "POST", MCHID, MERCHANT_SERIAL_NO, merchant_key,
            data=NATIVE_BODY, nonce_str=REQUEST_NONCE)
        query = utils.build_authorization(
            QUERY_PATH, "GET", MCHID, MERCHANT_SERIAL_NO, merchant_key, nonce_str=REQUEST_NONCE)
    out += [rust("NATIVE_BODY", NATIVE_BODY), rust("NATIVE_AUTHORIZATION", native),
            rust("QUERY_PATH", QUERY_PATH), rust("QUERY_AUTHORIZATION", query)]

    # A payment notification as WeChat Pay sends it.
    ciphertext = b64encode(AESGCM(APIV3_KEY.encode()).encrypt(
        RESOURCE_NONCE.encode(), TRANSACTION.encode(), ASSOCIATED_DATA.encode())).decode()
    body = json.dumps(
        {
            "id": "EV-2018022511223320873",
            "create_time": "2027-01-15T16:00:00+08:00",
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": ciphertext,
                "associated_data": ASSOCIATED_DATA,
                "nonce": RESOURCE_NONCE,
            },
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )
    signature = utils.rsa_sign(platform_key, f"{TIMESTAMP}\n{NOTIFY_NONCE}\n{body}\n")
    headers = {
        "Wechatpay-Timestamp": str(TIMESTAMP),
        "Wechatpay-Nonce": NOTIFY_NONCE,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": PLATFORM_SERIAL_NO,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }
    # The SDK in public-key mode (no certificate download, no network).
    sdk = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE, mchid=MCHID,
        private_key=read("test_merchant_private_key.pem"), cert_serial_no=MERCHANT_SERIAL_NO,
        appid=APPID, apiv3_key=APIV3_KEY, public_key=read("test_platform_public_key.pem"),
        public_key_id=PLATFORM_SERIAL_NO)
    accepted = sdk.callback(headers, body.encode())
    assert accepted is not None, "the SDK refused its own notification"
    assert accepted["resource"] == json.loads(TRANSACTION), accepted
    tampered = body.replace("EV-2018", "EV-2019")
    assert sdk.callback(headers, tampered.encode()) is None, "the SDK accepted a tampered body"
    out += [rust("NOTIFY_BODY", body), rust("NOTIFY_SIGNATURE", signature),
            rust("TRANSACTION", TRANSACTION)]

    # A signed answer to the Native order, as the SDK checks answers.
    answer = '{"code_url":"weixin://wxpay/bizpayurl?pr=p4lpSuKzz"}'
    answer_signature = utils.rsa_sign(platform_key, f"{TIMESTAMP}\n{RESPONSE_NONCE}\n{answer}\n")
    answer_headers = {
        "Wechatpay-Timestamp": str(TIMESTAMP),
        "Wechatpay-Nonce": RESPONSE_NONCE,
        "Wechatpay-Signature": answer_signature,
        "Wechatpay-Serial": PLATFORM_SERIAL_NO,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }
    assert sdk._core._verify_signature(answer_headers, answer)
    assert not sdk._core._verify_signature(answer_headers, answer.replace("p4l", "p5l"))
    out += [rust("ANSWER_BODY", answer), rust("ANSWER_SIGNATURE", answer_signature)]

    print("\n".join(out))


if __name__ == "__main__":
    main()
