"""The payment sandbox against the providers' own SDKs: python-alipay-sdk, wechatpayv3 and
stripe play the merchant (Kami's side) and must accept everything the sandbox answers and
notifies, and the sandbox must accept what they sign and refuse what is tampered with."""

from __future__ import annotations

import datetime
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import stripe
from alipay import AliPay
from alipay.exceptions import AliPayException
from wechatpayv3 import WeChatPay, WeChatPayType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kami_local.sandbox import Sandbox, channel_configs, cli, keys as sandbox_keys  # noqa: E402
from kami_local.sandbox.common import CHINA  # noqa: E402
from kami_local.sandbox.stripe import parse_form  # noqa: E402

KEYS = sandbox_keys.generate()  # once for the module: RSA key generation is the slow part


class Clock:
    """The sandbox's clock, movable like `infra/kami clock advance`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Receiver:
    """A stand-in for Kami's webhook endpoint: records every request, answers as told."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.answer = {"alipay": (200, b"success"), "wechatpay": (204, b""), "stripe": (200, b'{"received":true}')}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                provider = self.path.split("/")[2] if self.path.startswith("/webhooks/") else "?"
                receiver.requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                status, answer = receiver.answer.get(provider, (200, b"ok"))
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def webhook(self, provider: str, channel: str) -> str:
        return f"{self.url}/webhooks/{provider}/{channel}"


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def sandbox(tmp_path, receiver, clock):
    receiver.requests.clear()
    sb = Sandbox(state_dir=tmp_path, kami_api=receiver.url, keys=KEYS, clock=clock, log=lambda line: None).start()
    yield sb
    sb.stop()


def alipay_merchant(sb: Sandbox, app_private_key: str | None = None) -> AliPay:
    """python-alipay-sdk as Kami: the app's private key, the sandbox's Alipay public key."""
    merchant = AliPay(appid=sb.keys.alipay_app_id,
                      app_private_key_string=app_private_key or sb.keys.alipay_app_private_key,
                      alipay_public_key_string=sb.keys.alipay_public_key, sign_type="RSA2")
    merchant._gateway = f"{sb.url}/alipay/gateway.do"
    return merchant


def wechat_merchant(sb: Sandbox, notify_url: str = "", platform_key: bool = True,
                    private_key: str = KEYS.wechat_merchant_private_key) -> WeChatPay:
    """wechatpayv3 as Kami, pointed at the sandbox, trusting the platform public key (or,
    with `platform_key` False, the platform certificate it downloads from /v3/certificates)."""
    from wechatpayv3 import core

    with pytest.MonkeyPatch.context() as mp:
        # The SDK downloads certificates from its fixed gateway in __init__: defer that
        # until the gateway points at the sandbox.
        mp.setattr(core.Core, "_init_certificates", lambda self: None)
        pay = WeChatPay(
            wechatpay_type=WeChatPayType.NATIVE, mchid=KEYS.wechat_mchid, private_key=private_key,
            cert_serial_no=KEYS.wechat_merchant_serial_no, appid=KEYS.wechat_appid, apiv3_key=KEYS.wechat_apiv3_key,
            notify_url=notify_url or "https://kami.invalid/webhooks/wechatpay/wechat-sandbox",
            public_key=KEYS.wechat_platform_public_key if platform_key else None,
            public_key_id=KEYS.wechat_platform_serial_no if platform_key else None)
    pay._core._gate_way = f"{sb.url}/wechatpay"
    if not platform_key:
        pay._core._init_certificates()
        assert [hex(c.serial_number)[2:].upper() for c in pay._core._certificates] == [KEYS.wechat_platform_serial_no]
    return pay


def stripe_merchant(sb: Sandbox, key: str = KEYS.stripe_secret_key) -> stripe.StripeClient:
    return stripe.StripeClient(key, base_addresses={"api": f"{sb.url}/stripe"}, max_network_retries=0)


def alipay_page_url(sb: Sandbox, receiver: Receiver, out_trade_no: str, amount: str = "9.90", **kwargs) -> str:
    query = alipay_merchant(sb).api_alipay_trade_page_pay(
        subject="Demo card key", out_trade_no=out_trade_no, total_amount=amount,
        notify_url=receiver.webhook("alipay", "alipay-sandbox"), return_url="http://127.0.0.1:1/return", **kwargs)
    return f"{sb.url}/alipay/gateway.do?{query}"


def sandbox_pay(sb: Sandbox, **body) -> requests.Response:
    return requests.post(f"{sb.url}/_sandbox/pay", json=body, timeout=30)


# --- Alipay ------------------------------------------------------------------------------


def test_alipay_page_pay_signed_by_the_sdk_opens_a_trade(sandbox, receiver):
    r = requests.get(alipay_page_url(sandbox, receiver, "PAY-A1"), timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert r.headers.get("X-Sandbox-Trade") == "PAY-A1" and "X-Sandbox-Error" not in r.headers
    trade = sandbox.state["alipay"]["trades"][KEYS.alipay_app_id]["PAY-A1"]
    assert (trade["status"], trade["total_amount"], trade["subject"]) == ("WAIT_BUYER_PAY", "9.90", "Demo card key")
    assert trade["notify_url"] == receiver.webhook("alipay", "alipay-sandbox")
    # Opening the same page again shows the same trade; the SDK's own query verifies the answer.
    assert requests.get(alipay_page_url(sandbox, receiver, "PAY-A1"), timeout=10).headers["X-Sandbox-Trade"] == "PAY-A1"
    answer = alipay_merchant(sandbox).api_alipay_trade_query(out_trade_no="PAY-A1")
    assert answer["code"] == "10000" and answer["trade_status"] == "WAIT_BUYER_PAY"
    assert answer["trade_no"] == trade["trade_no"] and answer["total_amount"] == "9.90"


def test_alipay_page_pay_tampered_or_foreign_is_refused(sandbox, receiver):
    url = alipay_page_url(sandbox, receiver, "PAY-A2")
    tampered = url.replace("9.90", "0.01")
    assert tampered != url
    r = requests.get(tampered, timeout=10)
    assert r.headers.get("X-Sandbox-Error") == "isv.invalid-signature" and "invalid-signature" in r.text
    # Signed with a key that is not the app's.
    other = AliPay(appid=KEYS.alipay_app_id, app_private_key_string=KEYS.wechat_merchant_private_key,
                   alipay_public_key_string=KEYS.alipay_public_key, sign_type="RSA2")
    query = other.api_alipay_trade_page_pay(subject="x", out_trade_no="PAY-A2", total_amount="9.90")
    assert requests.get(f"{sandbox.url}/alipay/gateway.do?{query}", timeout=10).headers.get(
        "X-Sandbox-Error") == "isv.invalid-signature"
    # An app id the sandbox does not know.
    stranger = AliPay(appid="9021000000000000", app_private_key_string=KEYS.alipay_app_private_key,
                      alipay_public_key_string=KEYS.alipay_public_key, sign_type="RSA2")
    query = stranger.api_alipay_trade_page_pay(subject="x", out_trade_no="PAY-A2", total_amount="9.90")
    assert requests.get(f"{sandbox.url}/alipay/gateway.do?{query}", timeout=10).headers.get(
        "X-Sandbox-Error") == "isv.invalid-app-id"
    assert "PAY-A2" not in sandbox.state["alipay"]["trades"].get(KEYS.alipay_app_id, {})
    # The same out_trade_no with another amount is "交易信息被篡改".
    requests.get(alipay_page_url(sandbox, receiver, "PAY-A3"), timeout=10)
    r = requests.get(alipay_page_url(sandbox, receiver, "PAY-A3", amount="19.90"), timeout=10)
    assert r.headers.get("X-Sandbox-Error") == "ACQ.CONTEXT_INCONSISTENT"


def test_alipay_query_close_refund_answers_verify_with_the_sdk(sandbox, receiver):
    merchant = alipay_merchant(sandbox)
    missing = merchant.api_alipay_trade_query(out_trade_no="NOPE-1")  # verified by the SDK, signed
    assert (missing["code"], missing["sub_code"]) == ("40004", "ACQ.TRADE_NOT_EXIST")

    requests.get(alipay_page_url(sandbox, receiver, "PAY-B1"), timeout=10)
    assert sandbox_pay(sandbox, provider="alipay", payment_id="PAY-B1", lose=True).ok
    paid = merchant.api_alipay_trade_query(out_trade_no="PAY-B1")
    assert (paid["trade_status"], paid["total_amount"], paid["buyer_pay_amount"]) == ("TRADE_SUCCESS", "9.90", "9.90")
    assert merchant.api_alipay_trade_close(out_trade_no="PAY-B1")["sub_code"] == "ACQ.TRADE_STATUS_ERROR"

    first = merchant.api_alipay_trade_refund(refund_amount="4.00", out_trade_no="PAY-B1", out_request_no="RF-1")
    assert (first["code"], first["fund_change"], first["refund_fee"]) == ("10000", "Y", "4.00")
    again = merchant.api_alipay_trade_refund(refund_amount="4.00", out_trade_no="PAY-B1", out_request_no="RF-1")
    assert (again["code"], again["fund_change"], again["refund_fee"]) == ("10000", "N", "4.00")
    too_much = merchant.api_alipay_trade_refund(refund_amount="6.00", out_trade_no="PAY-B1", out_request_no="RF-2")
    assert too_much["sub_code"] == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    rest = merchant.api_alipay_trade_refund(refund_amount="5.90", trade_no=paid["trade_no"], out_request_no="RF-3")
    assert (rest["fund_change"], rest["refund_fee"]) == ("Y", "9.90")
    assert merchant.api_alipay_trade_query(out_trade_no="PAY-B1")["trade_status"] == "TRADE_CLOSED"
    assert merchant.server_api("alipay.trade.fastpay.refund.query", {"out_trade_no": "PAY-B1",
                                                                     "out_request_no": "RF-1"})["refund_amount"] == "4.00"

    requests.get(alipay_page_url(sandbox, receiver, "PAY-B2"), timeout=10)
    closed = merchant.api_alipay_trade_close(out_trade_no="PAY-B2")
    assert closed["code"] == "10000" and closed["out_trade_no"] == "PAY-B2"
    assert merchant.api_alipay_trade_query(out_trade_no="PAY-B2")["trade_status"] == "TRADE_CLOSED"
    assert sandbox_pay(sandbox, provider="alipay", payment_id="PAY-B2").status_code == 409


def test_alipay_trade_bill_through_the_sdk_is_a_zip_of_gbk_csv_and_takes_edits(sandbox, receiver):
    merchant = alipay_merchant(sandbox)
    requests.get(alipay_page_url(sandbox, receiver, "PAY-AB1"), timeout=10)
    assert sandbox_pay(sandbox, provider="alipay", payment_id="PAY-AB1", lose=True).ok
    assert merchant.api_alipay_trade_refund(refund_amount="3.00", out_trade_no="PAY-AB1",
                                            out_request_no="RF-AB1")["fund_change"] == "Y"
    day = datetime.datetime.fromtimestamp(sandbox.now(), CHINA).date().isoformat()

    def bill(date: str = day) -> list[list[str]]:
        named = merchant.server_api("alipay.data.dataservice.bill.downloadurl.query",
                                    {"bill_type": "trade", "bill_date": date})  # verified by the SDK
        assert named["code"] == "10000", named
        packed = zipfile.ZipFile(io.BytesIO(requests.get(named["bill_download_url"], timeout=10).content))
        texts = [packed.read(name).decode("gbk") for name in packed.namelist()]
        assert sorted(t.splitlines()[0] for t in texts) == ["#支付宝业务明细查询", "#支付宝业务汇总查询"]
        detail = next(t for t in texts if t.startswith("#支付宝业务明细查询")).splitlines()
        assert detail[4].startswith("支付宝交易号,商户订单号,业务类型,")
        lines = [line for line in detail[5:] if not line.startswith("#")]
        assert all(field.endswith("\t") for line in lines for field in line.split(","))  # Alipay pads each field
        return [[field.strip() for field in line.split(",")] for line in lines]

    rows = bill()
    assert [(r[1], r[2], r[11], r[21]) for r in rows] == [("PAY-AB1", "交易", "9.90", ""),
                                                           ("PAY-AB1", "退款", "-3.00", "RF-AB1")]
    control = lambda **body: requests.post(f"{sandbox.url}/_sandbox/bill", json={"provider": "alipay", **body},
                                           timeout=10).json()
    control(action="amend", id="PAY-AB1", amount=980)
    control(action="drop", id="RF-AB1")
    added = control(action="add", kind="payment", amount=50, payment_id="PAY-X")
    rows = bill()
    assert [(r[0], r[1], r[11]) for r in rows] == [(rows[0][0], "PAY-AB1", "9.80"), (added["provider_ref"], "PAY-X", "0.50")]
    assert bill("2001-01-01") == []


def test_alipay_server_calls_by_form_post_and_bad_signatures(sandbox, receiver):
    requests.get(alipay_page_url(sandbox, receiver, "PAY-C1"), timeout=10)
    merchant = alipay_merchant(sandbox)
    signed = merchant.sign_data(merchant.build_body("alipay.trade.query", {"out_trade_no": "PAY-C1"}))
    r = requests.post(f"{sandbox.url}/alipay/gateway.do", data=signed, timeout=10,
                      headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"})
    answer = merchant._verify_and_return_sync_response(r.text, "alipay_trade_query_response")
    assert answer["trade_status"] == "WAIT_BUYER_PAY"
    # A request signed with another key: 40002 isv.invalid-signature, unsigned (the SDK raises).
    forger = alipay_merchant(sandbox, app_private_key=KEYS.wechat_platform_private_key)
    with pytest.raises(AliPayException) as refused:
        forger.api_alipay_trade_query(out_trade_no="PAY-C1")
    assert "code:40002" in str(refused.value) and "isv.invalid-signature" in str(refused.value)
    # Tampered after signing.
    tampered = signed.replace("PAY-C1", "PAY-C9")
    body = json.loads(requests.post(f"{sandbox.url}/alipay/gateway.do?{tampered}", timeout=10).text)
    assert body["alipay_trade_query_response"]["sub_code"] == "isv.invalid-signature" and "sign" not in body


def test_alipay_notification_verifies_with_the_sdk(sandbox, receiver):
    requests.get(alipay_page_url(sandbox, receiver, "PAY-D1"), timeout=10)
    result = sandbox_pay(sandbox, provider="alipay", payment_id="PAY-D1").json()
    assert [n["status"] for n in result["notifications"]] == [200]
    assert result["notifications"][0]["accepted"] and result["notifications"][0]["answer"] == "success"
    [hit] = receiver.requests
    assert hit["path"] == "/webhooks/alipay/alipay-sandbox"
    assert hit["headers"]["Content-Type"].startswith("application/x-www-form-urlencoded")
    data = dict(parse_qsl(hit["body"].decode(), keep_blank_values=True))
    assert (data["notify_type"], data["trade_status"], data["out_trade_no"], data["total_amount"]) == \
        ("trade_status_sync", "TRADE_SUCCESS", "PAY-D1", "9.90")
    assert (data["app_id"], data["seller_id"], data["sign_type"], data["charset"]) == \
        (KEYS.alipay_app_id, KEYS.alipay_seller_id, "RSA2", "utf-8")
    sign = data.pop("sign")
    merchant = alipay_merchant(sandbox)
    assert merchant.verify(dict(data), sign)  # python-alipay-sdk's notification check
    assert not merchant.verify({**data, "total_amount": "0.01"}, sign)
    assert result["return_url"].startswith("http://127.0.0.1:1/return?")
    # Kami refusing it shows as not accepted; a mismatched amount is what the SDK verifies too.
    requests.get(alipay_page_url(sandbox, receiver, "PAY-D2"), timeout=10)
    receiver.answer["alipay"] = (200, b"fail")
    try:
        sent = sandbox_pay(sandbox, provider="alipay", payment_id="PAY-D2", amount=1).json()["notifications"]
    finally:
        receiver.answer["alipay"] = (200, b"success")
    assert sent[0]["answer"] == "fail" and not sent[0]["accepted"]
    data = dict(parse_qsl(receiver.requests[-1]["body"].decode()))
    sign = data.pop("sign")
    assert data["total_amount"] == "0.01" and merchant.verify(data, sign)


def test_alipay_trade_closes_at_its_deadline_by_the_clock(sandbox, receiver, clock):
    requests.get(alipay_page_url(sandbox, receiver, "PAY-E1", timeout_express="30m"), timeout=10)
    merchant = alipay_merchant(sandbox)
    assert merchant.api_alipay_trade_query(out_trade_no="PAY-E1")["trade_status"] == "WAIT_BUYER_PAY"
    clock.offset = 31 * 60
    assert merchant.api_alipay_trade_query(out_trade_no="PAY-E1")["trade_status"] == "TRADE_CLOSED"
    assert sandbox_pay(sandbox, provider="alipay", payment_id="PAY-E1").status_code == 409


# --- WeChat Pay ------------------------------------------------------------------------------


def test_wechat_native_signed_by_the_sdk_gets_a_code_url_and_signed_answers(sandbox, receiver):
    pay = wechat_merchant(sandbox, notify_url=receiver.webhook("wechatpay", "wechat-sandbox"))
    code, body = pay.pay(description="Demo card key", out_trade_no="PAY-W1", amount={"total": 990, "currency": "CNY"})
    # The SDK raised had the answer's Wechatpay-Signature not verified with the platform key.
    assert code == 200 and json.loads(body)["code_url"].startswith("weixin://wxpay/bizpayurl?pr=")
    again = pay.pay(description="Demo card key", out_trade_no="PAY-W1", amount={"total": 990, "currency": "CNY"})
    assert json.loads(again[1]) == json.loads(body)
    conflict = pay.pay(description="Demo card key", out_trade_no="PAY-W1", amount={"total": 1990, "currency": "CNY"})
    assert conflict[0] == 400 and json.loads(conflict[1])["code"] == "INVALID_REQUEST"
    code, body = pay.query(out_trade_no="PAY-W1")
    tx = json.loads(body)
    assert code == 200 and (tx["trade_state"], tx["amount"]["total"], tx["mchid"], tx["appid"]) == \
        ("NOTPAY", 990, KEYS.wechat_mchid, KEYS.wechat_appid) and "transaction_id" not in tx
    code, body = pay.query(out_trade_no="NOPE-W")
    assert code == 404 and json.loads(body)["code"] == "ORDER_NOT_EXIST"
    assert pay.close(out_trade_no="PAY-W1")[0] == 204  # an empty answer, signed all the same
    assert json.loads(pay.query(out_trade_no="PAY-W1")[1])["trade_state"] == "CLOSED"


def test_wechat_sdk_in_certificate_mode_downloads_and_trusts_the_platform_certificate(sandbox):
    pay = wechat_merchant(sandbox, platform_key=False)
    code, body = pay.pay(description="x", out_trade_no="PAY-W2", amount={"total": 1})
    assert code == 200 and "code_url" in json.loads(body)


def test_wechat_requests_not_signed_by_the_merchant_are_refused(sandbox):
    forger = wechat_merchant(sandbox, private_key=KEYS.alipay_app_private_key)
    code, body = forger.pay(description="x", out_trade_no="PAY-W3", amount={"total": 1})
    assert code == 401 and json.loads(body)["code"] == "SIGN_ERROR"
    # Signed over the sandbox's own path (with /wechatpay): not what WeChat Pay checks.
    from wechatpayv3.utils import build_authorization, load_private_key
    key = load_private_key(KEYS.wechat_merchant_private_key)
    auth = build_authorization("/wechatpay/v3/pay/transactions/out-trade-no/PAY-W3?mchid=" + KEYS.wechat_mchid, "GET",
                               KEYS.wechat_mchid, KEYS.wechat_merchant_serial_no, key)
    r = requests.get(f"{sandbox.url}/wechatpay/v3/pay/transactions/out-trade-no/PAY-W3?mchid={KEYS.wechat_mchid}",
                     headers={"Authorization": auth, "Accept": "application/json"}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "SIGN_ERROR" and r.headers["Wechatpay-Signature"]
    r = requests.get(f"{sandbox.url}/wechatpay/v3/pay/transactions/out-trade-no/PAY-W3?mchid={KEYS.wechat_mchid}",
                     timeout=10)
    assert r.status_code == 401


def test_wechat_notification_decrypts_and_verifies_with_the_sdk_callback(sandbox, receiver):
    pay = wechat_merchant(sandbox, notify_url=receiver.webhook("wechatpay", "wechat-sandbox"))
    pay.pay(description="Demo card key", out_trade_no="PAY-W4", amount={"total": 990})
    result = sandbox_pay(sandbox, provider="wechatpay", payment_id="PAY-W4", twice=True).json()
    assert [n["status"] for n in result["notifications"]] == [204, 204]
    first, second = receiver.requests
    assert first["path"] == "/webhooks/wechatpay/wechat-sandbox" and first["body"] == second["body"]
    assert first["headers"]["Wechatpay-Nonce"] != second["headers"]["Wechatpay-Nonce"]  # each delivery signed anew
    event = pay.callback(first["headers"], first["body"])  # wechatpayv3 verifies, then decrypts
    assert event is not None and event["event_type"] == "TRANSACTION.SUCCESS"
    assert event["resource_type"] == "encrypt-resource" and event["id"] == result["notifications"][0]["event_id"]
    tx = event["resource"]
    assert (tx["trade_state"], tx["out_trade_no"], tx["mchid"], tx["appid"]) == \
        ("SUCCESS", "PAY-W4", KEYS.wechat_mchid, KEYS.wechat_appid)
    assert tx["amount"] == {"total": 990, "currency": "CNY", "payer_currency": "CNY", "payer_total": 990}
    assert tx["transaction_id"] == json.loads(pay.query(out_trade_no="PAY-W4")[1])["transaction_id"]
    tampered = first["body"].replace(b"TRANSACTION.SUCCESS", b"TRANSACTION.SUCCEED")
    assert pay.callback(first["headers"], tampered) is None
    assert pay.close(out_trade_no="PAY-W4")[0] == 400


def test_wechat_refund_processing_then_refund_notification(sandbox, receiver):
    hook = receiver.webhook("wechatpay", "wechat-sandbox")
    pay = wechat_merchant(sandbox, notify_url=hook)
    pay.pay(description="Demo card key", out_trade_no="PAY-W5", amount={"total": 990})
    sandbox_pay(sandbox, provider="wechatpay", payment_id="PAY-W5", lose=True)
    assert receiver.requests == []
    assert json.loads(pay.query(out_trade_no="PAY-W5")[1])["trade_state"] == "SUCCESS"  # lost, but paid
    code, body = pay.refund(out_refund_no="RF-W5", amount={"refund": 500, "total": 990, "currency": "CNY"},
                            out_trade_no="PAY-W5", notify_url=hook)
    refund = json.loads(body)
    assert code == 200 and (refund["status"], refund["amount"]["refund"]) == ("PROCESSING", 500)
    same = json.loads(pay.refund(out_refund_no="RF-W5", amount={"refund": 500, "total": 990, "currency": "CNY"},
                                 out_trade_no="PAY-W5", notify_url=hook)[1])
    assert same["refund_id"] == refund["refund_id"]
    wrong_total = pay.refund(out_refund_no="RF-W6", amount={"refund": 1, "total": 999, "currency": "CNY"},
                             out_trade_no="PAY-W5")
    assert wrong_total[0] == 400
    too_much = pay.refund(out_refund_no="RF-W7", amount={"refund": 491, "total": 990, "currency": "CNY"},
                          out_trade_no="PAY-W5")
    assert too_much[0] == 400 and json.loads(too_much[1])["code"] == "INVALID_REQUEST"
    r = requests.post(f"{sandbox.url}/_sandbox/refund-notify", json={"out_refund_no": "RF-W5"}, timeout=30)
    assert r.ok and r.json()["notifications"][0]["status"] == 204
    [hit] = receiver.requests
    event = pay.callback(hit["headers"], hit["body"])
    assert event["event_type"] == "REFUND.SUCCESS" and event["resource"]["refund_status"] == "SUCCESS"
    assert (event["resource"]["out_refund_no"], event["resource"]["amount"]["refund"]) == ("RF-W5", 500)
    assert json.loads(pay.query_refund(out_refund_no="RF-W5")[1])["status"] == "SUCCESS"
    assert requests.post(f"{sandbox.url}/_sandbox/refund-notify", json={"out_refund_no": "RF-W5", "status": "CLOSED"},
                         timeout=30).status_code == 409


def test_wechat_refunds_can_settle_at_once(sandbox):
    requests.post(f"{sandbox.url}/_sandbox/settings", json={"wechatpay_refund_status": "SUCCESS"}, timeout=10)
    pay = wechat_merchant(sandbox)
    pay.pay(description="x", out_trade_no="PAY-W8", amount={"total": 100})
    sandbox_pay(sandbox, provider="wechatpay", payment_id="PAY-W8", lose=True)
    refund = json.loads(pay.refund(out_refund_no="RF-W8", amount={"refund": 100, "total": 100, "currency": "CNY"},
                                   out_trade_no="PAY-W8")[1])
    assert refund["status"] == "SUCCESS" and refund["success_time"]


def test_wechat_trade_bill_through_the_sdk_with_its_hash_and_edits(sandbox):
    import hashlib

    pay = wechat_merchant(sandbox)
    pay.pay(description="x", out_trade_no="PAY-WB1", amount={"total": 990})
    sandbox_pay(sandbox, provider="wechatpay", payment_id="PAY-WB1", lose=True)
    pay.refund(out_refund_no="RF-WB1", amount={"refund": 300, "total": 990, "currency": "CNY"}, out_trade_no="PAY-WB1")
    day = datetime.datetime.now(CHINA).date().isoformat()

    def bill() -> list[list[str]]:
        code, text = pay._core.request(f"/v3/bill/tradebill?bill_date={day}&bill_type=ALL")  # verified by the SDK
        assert code == 200, text
        named = json.loads(text)
        code, file = pay.download_bill(named["download_url"])
        assert code == 200 and hashlib.sha1(file).hexdigest() == named["hash_value"]
        lines = file.decode().strip().split("\r\n")
        assert lines[0].startswith("交易时间,") and lines[-2].startswith("总交易单数,")
        return [[field.removeprefix("`") for field in line.split(",")] for line in lines[1:-2]]

    rows = bill()
    assert [(r[6], r[9], r[15], r[19], r[24], r[25]) for r in rows] == [
        ("PAY-WB1", "SUCCESS", "0", "", "9.90", "0.00"), ("PAY-WB1", "REFUND", "RF-WB1", "PROCESSING", "0.00", "3.00")]
    control = lambda **body: requests.post(f"{sandbox.url}/_sandbox/bill", json={"provider": "wechatpay", **body},
                                           timeout=30)
    assert control(action="amend", id="PAY-WB1", amount=980).status_code == 200
    assert control(action="drop", id="RF-WB1").status_code == 200
    assert control(action="add", kind="payment", amount=50, payment_id="PAY-X").status_code == 200
    assert [(r[6], r[24]) for r in bill()] == [("PAY-WB1", "9.80"), ("PAY-X", "0.50")]
    code, text = pay._core.request("/v3/bill/tradebill?bill_date=2001-01-01&bill_type=ALL")
    assert code == 400 and json.loads(text)["code"] == "NO_STATEMENT_EXIST"


# --- Stripe -------------------------------------------------------------------------------------


def session_params(**extra) -> dict:
    return {"mode": "payment", "client_reference_id": "ORDER-1", "success_url": "http://127.0.0.1:1/done",
            "metadata": {"order_id": "ORDER-1", "payment_id": "PAY-S1"},
            "line_items": [{"quantity": 2, "price_data": {"currency": "cny", "unit_amount": 495,
                                                          "product_data": {"name": "Demo card key"}}}], **extra}


def test_stripe_checkout_session_through_the_sdk_with_idempotency(sandbox):
    client = stripe_merchant(sandbox)
    session = client.v1.checkout.sessions.create(session_params(), {"idempotency_key": "idem-1"})
    assert session.id.startswith("cs_test_") and session.object == "checkout.session"
    assert (session.status, session.payment_status, session.amount_total, session.currency) == \
        ("open", "unpaid", 990, "cny")
    assert session.metadata["payment_id"] == "PAY-S1" and session.client_reference_id == "ORDER-1"
    assert session.payment_intent is None and session.url.startswith(f"{sandbox.url}/stripe/checkout/pay/cs_test_")
    again = client.v1.checkout.sessions.create(session_params(), {"idempotency_key": "idem-1"})
    assert again.id == session.id
    with pytest.raises(stripe.IdempotencyError):
        client.v1.checkout.sessions.create(session_params(client_reference_id="ORDER-2"), {"idempotency_key": "idem-1"})
    other = client.v1.checkout.sessions.create(session_params(), {"idempotency_key": "idem-2"})
    assert other.id != session.id
    assert client.v1.checkout.sessions.retrieve(session.id).amount_total == 990
    expired = client.v1.checkout.sessions.expire(other.id)
    assert expired.status == "expired"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.expire(other.id)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.checkout.sessions.retrieve("cs_test_nope")
    assert missing.value.code == "resource_missing"
    with pytest.raises(stripe.AuthenticationError):
        stripe_merchant(sandbox, key="sk_test_wrong").v1.checkout.sessions.retrieve(session.id)


def test_stripe_refuses_what_stripe_refuses(sandbox):
    client = stripe_merchant(sandbox)
    now = int(time.time())
    with pytest.raises(stripe.InvalidRequestError) as early:
        client.v1.checkout.sessions.create(session_params(expires_at=now + 29 * 60))
    assert early.value.param == "expires_at"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.checkout.sessions.create(session_params(expires_at=now + 25 * 3600))
    assert client.v1.checkout.sessions.create(session_params(expires_at=now + 31 * 60)).expires_at == now + 31 * 60
    r = requests.post(f"{sandbox.url}/stripe/v1/checkout/sessions", timeout=10,
                      headers={"Authorization": f"Bearer {KEYS.stripe_secret_key}"},
                      data={"mode": "payment", "line_items[0][price_data][currency]": "cny", "colour": "red"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "Received unknown parameter: colour"


def test_stripe_notification_verifies_with_construct_event_then_refunds(sandbox, receiver):
    client = stripe_merchant(sandbox)
    session = client.v1.checkout.sessions.create(session_params())
    result = sandbox_pay(sandbox, provider="stripe", payment_id="PAY-S1").json()
    assert result["notifications"][0]["status"] == 200 and result["success_url"] == "http://127.0.0.1:1/done"
    [hit] = receiver.requests
    assert hit["path"] == "/webhooks/stripe/stripe-sandbox"
    event = stripe.Webhook.construct_event(hit["body"], hit["headers"]["Stripe-Signature"], KEYS.stripe_webhook_secret)
    assert event.type == "checkout.session.completed" and event.id == result["notifications"][0]["event_id"]
    paid = event.data.object
    assert (paid.id, paid.status, paid.payment_status, paid.amount_total) == (session.id, "complete", "paid", 990)
    assert paid.payment_intent.startswith("pi_") and paid.metadata["order_id"] == "ORDER-1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(hit["body"], hit["headers"]["Stripe-Signature"], "whsec_other")
    assert client.v1.checkout.sessions.retrieve(session.id).payment_intent == paid.payment_intent

    refund = client.v1.refunds.create({"payment_intent": paid.payment_intent, "amount": 400},
                                      {"idempotency_key": "rf-1"})
    assert (refund.object, refund.status, refund.amount, refund.currency) == ("refund", "succeeded", 400, "cny")
    assert client.v1.refunds.create({"payment_intent": paid.payment_intent, "amount": 400},
                                    {"idempotency_key": "rf-1"}).id == refund.id
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create({"payment_intent": paid.payment_intent, "amount": 600})
    assert too_much.value.code == "amount_too_large"
    rest = client.v1.refunds.create({"payment_intent": paid.payment_intent})
    assert rest.amount == 590
    with pytest.raises(stripe.InvalidRequestError) as done:
        client.v1.refunds.create({"payment_intent": paid.payment_intent})
    assert done.value.code == "charge_already_refunded"
    assert sandbox_pay(sandbox, provider="stripe", payment_id="PAY-S1").status_code == 409


def test_stripe_lose_then_resend_and_twice(sandbox, receiver):
    client = stripe_merchant(sandbox)
    session = client.v1.checkout.sessions.create(session_params(metadata={"payment_id": "PAY-S2"}))
    result = sandbox_pay(sandbox, provider="stripe", payment_id="PAY-S2", lose=True).json()
    assert result["lost"] and result["notifications"] == [] and receiver.requests == []
    assert client.v1.checkout.sessions.retrieve(session.id).payment_status == "paid"  # reconciliation sees it
    resent = requests.post(f"{sandbox.url}/_sandbox/resend", json={"provider": "stripe", "payment_id": "PAY-S2"},
                           timeout=30).json()
    assert resent["notifications"][0]["status"] == 200 and len(receiver.requests) == 1
    receiver.requests.clear()
    client.v1.checkout.sessions.create(session_params(metadata={"payment_id": "PAY-S3"}))
    twice = sandbox_pay(sandbox, provider="stripe", payment_id="PAY-S3", twice=True).json()["notifications"]
    assert len(twice) == 2 and twice[0]["event_id"] == twice[1]["event_id"]
    ids = {json.loads(r["body"])["id"] for r in receiver.requests}
    assert len(receiver.requests) == 2 and ids == {twice[0]["event_id"]}


def test_stripe_bill_lists_payments_and_refunds_and_takes_edits(sandbox, clock):
    client = stripe_merchant(sandbox)
    client.v1.checkout.sessions.create(session_params(metadata={"payment_id": "PAY-B1"},
                                                      payment_intent_data={"metadata": {"payment_id": "PAY-B1"}}))
    pi = sandbox_pay(sandbox, provider="stripe", payment_id="PAY-B1", lose=True).json()["trade"]["payment_intent"]
    clock.offset += 5
    client.v1.refunds.create({"payment_intent": pi, "amount": 300, "metadata": {"refund_id": "REF-B1"}})
    now = int(clock())

    def bill(**params) -> list:
        listed = client.v1.balance_transactions.list({"created": {"gte": now - 60, "lt": now + 60},
                                                      "expand": ["data.source"], **params})
        return [(t.type, t.amount, t.source.payment_intent, t.source.metadata.to_dict()) for t in listed.data]

    assert bill() == [("refund", -300, pi, {"refund_id": "REF-B1"}), ("charge", 990, pi, {"payment_id": "PAY-B1"})]
    first = client.v1.balance_transactions.list({"limit": 1, "created": {"gte": now - 60}})
    assert first.has_more and isinstance(first.data[0].source, str)
    rest = client.v1.balance_transactions.list({"limit": 1, "starting_after": first.data[0].id})
    assert not rest.has_more and rest.data[0].type == "charge"
    assert client.v1.balance_transactions.list({"created": {"gte": now + 60}}).data == []

    control = lambda **body: requests.post(f"{sandbox.url}/_sandbox/bill", json={"provider": "stripe", **body},
                                           timeout=30)
    assert control(action="amend", id="PAY-B1", amount=980).status_code == 200
    assert control(action="drop", id="REF-B1").status_code == 200
    added = control(action="add", kind="payment", amount=50, payment_id="PAY-X").json()
    assert [(kind, amount) for kind, amount, _, _ in bill()] == [("charge", 50), ("charge", 980)]
    assert bill()[0][2] == added["payment_intent"]
    assert control(action="shred", id="x").status_code == 400
    assert control(action="add", kind="payment", amount=-1).status_code == 400
    assert cli.main(["--sandbox", sandbox.url, "bill", "stripe", "drop", "--id", "PAY-X"]) == 0
    assert [kind for kind, _, _, _ in bill()] == ["charge"]


# --- the sandbox itself ---------------------------------------------------------------------------


def test_channel_configs_are_complete_and_their_keys_work(tmp_path):
    configs = channel_configs("http://127.0.0.1:4010/", state_dir=tmp_path)
    assert set(configs) == {"alipay-sandbox", "wechat-sandbox", "stripe-sandbox"}
    stored = sandbox_keys.load_or_create(tmp_path)
    assert configs == channel_configs("http://127.0.0.1:4010", keys=stored)  # made once, then reused
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    alipay, wechat, stripe_ = configs["alipay-sandbox"], configs["wechat-sandbox"], configs["stripe-sandbox"]
    for c in configs.values():
        assert c["enabled"] is True and c["min_amount"] == 1 and c["max_amount"] == 5_000_000 and c["display_name"]
    assert alipay["provider"] == "alipay" and alipay["currencies"] == ["CNY"] and alipay["priority"] == 10
    assert alipay["config"]["gateway_url"] == "http://127.0.0.1:4010/alipay/gateway.do"
    assert alipay["config"]["app_private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert alipay["config"]["alipay_public_keys"] == [stored.alipay_public_key]
    assert wechat["config"]["api_base_url"] == "http://127.0.0.1:4010/wechatpay"
    assert len(wechat["config"]["apiv3_key"]) == 32
    assert wechat["config"]["platform_public_keys"] == [{"serial_no": stored.wechat_platform_serial_no,
                                                         "public_key": stored.wechat_platform_public_key}]
    assert stripe_["config"]["secret_key"].startswith("sk_test_")
    assert stripe_["config"]["webhook_secrets"][0].startswith("whsec_")
    assert stripe_["config"]["api_base_url"] == "http://127.0.0.1:4010/stripe"


def test_state_survives_a_restart_and_cli_pay_finds_the_running_sandbox(tmp_path, receiver):
    receiver.requests.clear()
    first = Sandbox(state_dir=tmp_path, kami_api=receiver.url, log=lambda line: None).start()
    try:
        requests.get(alipay_page_url(first, receiver, "PAY-R1"), timeout=10)
        assert cli.running_url(tmp_path) == first.url
    finally:
        first.stop()
    assert not (tmp_path / "sandbox.json").exists()
    second = Sandbox(state_dir=tmp_path, kami_api=receiver.url, log=lambda line: None).start()
    try:
        assert second.keys == first.keys
        result = cli.pay(second.url, "alipay", "PAY-R1", twice=True)
        assert [n["answer"] for n in result["notifications"]] == ["success", "success"]
        with pytest.raises(RuntimeError, match="404"):
            cli.pay(second.url, "alipay", "NOPE")
    finally:
        second.stop()


def test_pay_opens_the_pay_url_first_and_refuses_unknown_payments(sandbox, receiver):
    url = alipay_page_url(sandbox, receiver, "PAY-U1")
    result = sandbox_pay(sandbox, provider="alipay", payment_id="PAY-U1", pay_url=url).json()
    assert result["trade"]["status"] == "TRADE_SUCCESS" and result["notifications"][0]["accepted"]
    for provider in ("alipay", "wechatpay", "stripe"):
        r = sandbox_pay(sandbox, provider=provider, payment_id="NOPE-U")
        assert r.status_code == 404 and "error" in r.json()
    assert sandbox_pay(sandbox, provider="paypal", payment_id="x").status_code == 400
    assert sandbox_pay(sandbox, provider="alipay", payment_id="PAY-U1", amount=-1).status_code == 400


def test_the_buyers_pages_pay_by_form(sandbox, receiver):
    html = requests.get(alipay_page_url(sandbox, receiver, "PAY-F1"), timeout=10).text
    assert "action='/_sandbox/pay'" in html and "PAY-F1" in html
    r = requests.post(f"{sandbox.url}/_sandbox/pay", data={"provider": "alipay", "payment_id": "PAY-F1"}, timeout=30)
    assert r.status_code == 200 and "Paid" in r.text and "Back to the shop" in r.text
    session = stripe_merchant(sandbox).v1.checkout.sessions.create(session_params(metadata={"payment_id": "PAY-F2"}))
    page = requests.get(session.url, timeout=10)
    assert page.status_code == 200 and session.id in page.text
    assert "PAY-F1" in requests.get(f"{sandbox.url}/", timeout=10).text


def test_stripe_form_encoding_parses_as_stripe_nests_it():
    assert parse_form([("line_items[0][price_data][currency]", "cny"), ("line_items[0][quantity]", "1"),
                       ("line_items[1][quantity]", "2"), ("metadata[order_id]", "O"), ("expand[]", "a"),
                       ("expand[]", "b")]) == {
        "line_items": [{"price_data": {"currency": "cny"}, "quantity": "1"}, {"quantity": "2"}],
        "metadata": {"order_id": "O"}, "expand": ["a", "b"]}


def test_notifications_are_signed_at_the_local_clocks_time(sandbox, receiver, clock):
    clock.offset = 31 * 86400
    pay = wechat_merchant(sandbox, notify_url=receiver.webhook("wechatpay", "wechat-sandbox"))
    assert pay.pay(description="x", out_trade_no="PAY-T1", amount={"total": 1})[0] == 200  # signed at real time: ok
    sandbox_pay(sandbox, provider="wechatpay", payment_id="PAY-T1")
    ts = int(receiver.requests[-1]["headers"]["Wechatpay-Timestamp"])
    assert abs(ts - (time.time() + 31 * 86400)) < 60
    assert urlsplit(sandbox.url).hostname == "127.0.0.1"


def test_put_channels_stores_each_channel_with_the_admin_token(sandbox, receiver):
    statuses = cli.put_channels(receiver.url, "admin-token", sandbox.channel_configs())
    assert statuses == {"alipay-sandbox": 200, "wechat-sandbox": 200, "stripe-sandbox": 200}
    puts = {r["path"]: r for r in receiver.requests}
    body = json.loads(puts["/admin/payment-channels/wechat-sandbox"]["body"])
    assert body["config"]["api_base_url"] == f"{sandbox.url}/wechatpay"
    assert puts["/admin/payment-channels/alipay-sandbox"]["headers"]["Authorization"] == "Bearer admin-token"
    assert requests.get(f"{sandbox.url}/_sandbox/channels", timeout=10).json() == sandbox.channel_configs()


def test_the_command_line_runs_the_sandbox_and_pays(tmp_path, receiver):
    receiver.requests.clear()
    infra = Path(__file__).resolve().parents[1]
    python = os.path.abspath(sys.executable)  # the venv's (not resolved: that would leave the venv)
    proc = subprocess.Popen([python, "-m", "kami_local.sandbox", "--port", "0", "--state", str(tmp_path),
                             "--kami-api", receiver.url], cwd=infra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "sandbox.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
            time.sleep(0.05)
        url = cli.running_url(tmp_path)
        keys = sandbox_keys.load_or_create(tmp_path)
        client = stripe.StripeClient(keys.stripe_secret_key, base_addresses={"api": f"{url}/stripe"})
        session = client.v1.checkout.sessions.create(session_params(metadata={"payment_id": "PAY-CLI"}))
        assert cli.main(["--sandbox", url, "pay", "stripe", "PAY-CLI"]) == 0
        [hit] = receiver.requests
        event = stripe.Webhook.construct_event(hit["body"], hit["headers"]["Stripe-Signature"],
                                               keys.stripe_webhook_secret)
        assert event.data.object.id == session.id
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0 and not (tmp_path / "sandbox.json").exists()


def test_a_trade_without_notify_url_is_paid_and_nothing_is_sent(sandbox):
    query = alipay_merchant(sandbox).api_alipay_trade_wap_pay(subject="x", out_trade_no="PAY-N1", total_amount="1.00")
    assert requests.get(f"{sandbox.url}/alipay/gateway.do?{query}", timeout=10).headers["X-Sandbox-Trade"] == "PAY-N1"
    [sent] = sandbox_pay(sandbox, provider="alipay", payment_id="PAY-N1").json()["notifications"]
    assert sent["status"] is None and "no notify_url" in sent["error"]
    assert alipay_merchant(sandbox).api_alipay_trade_query(out_trade_no="PAY-N1")["trade_status"] == "TRADE_SUCCESS"
