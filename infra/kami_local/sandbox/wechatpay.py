"""WeChat Pay API v3 (`/wechatpay/v3/...`), as a direct merchant sees it.

Every request carries `Authorization: WECHATPAY2-SHA256-RSA2048 mchid="..",nonce_str="..",
signature="..",timestamp="..",serial_no=".."`, an RSA-SHA256 signature with the merchant's
key over `"{METHOD}\\n{URL}\\n{timestamp}\\n{nonce}\\n{body}\\n"`, where URL is the path
and query as the merchant signed it: without the sandbox's `/wechatpay` prefix (Kami's
`api_base_url` ends in `/wechatpay`, so its paths are WeChat's own). It is checked with
wechatpayv3's `rsa_verify` against the public key of the mchid's merchant certificate
(`serial_no` must name it); anything wrong is 401 `SIGN_ERROR`.

Every answer, errors and 204s included, is signed with the platform key:
`Wechatpay-Timestamp`, `-Nonce`, `-Serial`, `-Signature` (wechatpayv3's `rsa_sign` over
`"{ts}\\n{nonce}\\n{body}\\n"`) and `-Signature-Type`.

- `POST /v3/pay/transactions/native` → 200 `{"code_url": "weixin://wxpay/bizpayurl?pr=..."}`
- `GET /v3/pay/transactions/out-trade-no/{out_trade_no}?mchid=` and
  `GET /v3/pay/transactions/id/{transaction_id}?mchid=` → the transaction, 404 ORDER_NOT_EXIST
- `POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close` `{"mchid"}` → 204
- `POST /v3/refund/domestic/refunds`, `GET /v3/refund/domestic/refunds/{out_refund_no}`
- `GET /v3/certificates` → the platform certificate, encrypted under the APIv3 key (for
  SDKs that use platform certificates rather than the platform public key)
- `GET /v3/bill/tradebill?bill_date=&bill_type=ALL` → `{"hash_type": "SHA1", "hash_value",
  "download_url"}` (400 `NO_STATEMENT_EXIST` for a day without trades), and `GET
  /v3/billdownload/file?token=` → the trade bill file (CSV, backtick-prefixed fields, the
  summary last; not signed, as WeChat Pay's is not): a row per trade paid and per refund
  asked on that day (China time), edited by `/_sandbox/bill` like Stripe's

Notifications (`TRANSACTION.SUCCESS`, `REFUND.SUCCESS`/`.ABNORMAL`/`.CLOSED`): JSON with
`resource` encrypted AEAD_AES_256_GCM under the APIv3 key (wechatpayv3 only decrypts, so
encryption is `cryptography`'s AESGCM with the same parameters), signed like answers.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import re
import uuid

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509 import load_pem_x509_certificate
from wechatpayv3.utils import load_private_key, load_public_key, rsa_sign, rsa_verify

from .common import (CHINA, Request, Response, SandboxError, bill_state, digits, edited_rows, parse_rfc3339,
                     rfc3339_china, token)

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
TOLERANCE = 300  # seconds; requests signed further off than this are refused
OUT_NO = re.compile(r"^[0-9A-Za-z_\-|*]{6,32}$")
OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")
AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')
STATE_DESC = {"NOTPAY": "订单未支付", "SUCCESS": "支付成功", "CLOSED": "订单已关闭", "REFUND": "转入退款"}
REFUND_EVENTS = {"SUCCESS": ("REFUND.SUCCESS", "退款成功"), "ABNORMAL": ("REFUND.ABNORMAL", "退款异常"),
                 "CLOSED": ("REFUND.CLOSED", "退款关闭")}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def encrypt(apiv3_key: str, plaintext: str, associated_data: str) -> dict:
    """A `resource` as WeChat Pay sends it (the inverse of wechatpayv3's aes_decrypt)."""
    nonce = token(12)
    sealed = AESGCM(apiv3_key.encode()).encrypt(nonce.encode(), plaintext.encode(), associated_data.encode())
    return {"algorithm": "AEAD_AES_256_GCM", "ciphertext": base64.b64encode(sealed).decode(),
            "associated_data": associated_data, "nonce": nonce}


class WechatPay:
    name = "wechatpay"

    def __init__(self, sandbox) -> None:
        self.sb = sandbox
        keys = sandbox.keys
        self.merchants = {keys.wechat_mchid: {
            "mchid": keys.wechat_mchid, "appids": {keys.wechat_appid}, "serial_no": keys.wechat_merchant_serial_no,
            "public_key": load_public_key(keys.wechat_merchant_public_key), "apiv3_key": keys.wechat_apiv3_key,
        }}
        self.platform_key = load_private_key(keys.wechat_platform_private_key)
        self.platform_serial = keys.wechat_platform_serial_no
        self.platform_certificate = keys.wechat_platform_certificate
        self.state = sandbox.state.setdefault("wechatpay", {"trades": {}, "refunds": {}})

    # --- signing -----------------------------------------------------------------------

    def signed_headers(self, body: str) -> dict[str, str]:
        timestamp, nonce = str(int(self.sb.now())), token(32)
        return {"Wechatpay-Timestamp": timestamp, "Wechatpay-Nonce": nonce, "Wechatpay-Serial": self.platform_serial,
                "Wechatpay-Signature": rsa_sign(self.platform_key, f"{timestamp}\n{nonce}\n{body}\n"),
                "Wechatpay-Signature-Type": SCHEMA}

    def _answer(self, status: int, data: dict | None = None) -> Response:
        body = "" if data is None else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        headers = [("Request-ID", str(uuid.uuid4())), *self.signed_headers(body).items()]
        if data is not None:
            headers.insert(0, ("Content-Type", "application/json; charset=utf-8"))
        return Response(status, body.encode(), headers)

    def _authenticate(self, req: Request) -> dict:
        schema, _, rest = req.header("Authorization").partition(" ")
        if schema != SCHEMA:
            raise ApiError(401, "SIGN_ERROR", f"Authorization 认证类型错误，应为 {SCHEMA}")
        fields = dict(AUTH_FIELD.findall(rest))
        for name in ("mchid", "nonce_str", "signature", "timestamp", "serial_no"):
            if not fields.get(name):
                raise ApiError(401, "SIGN_ERROR", f"Authorization 缺少 {name}")
        merchant = self.merchants.get(fields["mchid"])
        if merchant is None:
            raise ApiError(401, "SIGN_ERROR", "商户号不存在")
        if fields["serial_no"].upper() != merchant["serial_no"]:
            raise ApiError(401, "SIGN_ERROR", "商户证书序列号有误，请核实后再试")
        try:
            ts = int(fields["timestamp"])
        except ValueError:
            raise ApiError(401, "SIGN_ERROR", "Authorization 中的 timestamp 不是整数") from None
        # Fresh by the local clock (which Kami's functions follow) or by the machine's.
        if min(abs(ts - self.sb.now()), abs(ts - self.sb.real_now())) > TOLERANCE:
            raise ApiError(401, "SIGN_ERROR", "Authorization 中的 timestamp 与当前时间相差超过5分钟")
        try:
            body = req.body.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "PARAM_ERROR", "请求体不是 UTF-8") from None
        # wechatpayv3's verifier checks "{a}\n{b}\n{c}\n"; the request's message is
        # "{METHOD}\n{URL}\n{ts}\n{nonce}\n{body}\n", so the first part carries three lines.
        if not rsa_verify(f"{req.method}\n{req.target}\n{fields['timestamp']}", fields["nonce_str"], body,
                          fields["signature"], merchant["public_key"]):
            raise ApiError(401, "SIGN_ERROR", "签名错误，请检查后再试")
        return merchant

    # --- routing -----------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        try:
            merchant = self._authenticate(req)
            if req.method == "GET" and req.path == "/v3/billdownload/file":
                with self.sb.lock:
                    bill = self.state.setdefault("bills", {}).get(dict(req.query_pairs()).get("token", ""))
                if bill is None or bill["mchid"] != merchant["mchid"]:
                    raise ApiError(404, "RESOURCE_NOT_EXISTS", "账单文件不存在")
                return Response(200, bill["file"].encode(), [("Content-Type", "text/plain; charset=utf-8")])
            with self.sb.lock:
                status, data = self._route(req, merchant)
                self.sb.save()
            return self._answer(status, data)
        except ApiError as e:
            self.sb.log(f"wechatpay {req.method} {req.path}: {e}")
            return self._answer(e.status, {"code": e.code, "message": e.message})

    def _route(self, req: Request, merchant: dict) -> tuple[int, dict | None]:
        path, method = req.path, req.method
        query = dict(req.query_pairs())
        if method == "POST" and path == "/v3/pay/transactions/native":
            return 200, self._native(merchant, self._json(req))
        if method == "GET" and path.startswith("/v3/pay/transactions/out-trade-no/"):
            self._check_mchid(merchant, query.get("mchid"))
            return 200, self._transaction(self._trade(merchant, path.rsplit("/", 1)[1]))
        if method == "GET" and path.startswith("/v3/pay/transactions/id/"):
            self._check_mchid(merchant, query.get("mchid"))
            transaction_id = path.rsplit("/", 1)[1]
            trade = next((t for t in self._trades(merchant).values()
                          if t.get("transaction_id") == transaction_id), None)
            if trade is None:
                raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
            return 200, self._transaction(trade)
        if method == "POST" and path.startswith("/v3/pay/transactions/out-trade-no/") and path.endswith("/close"):
            self._check_mchid(merchant, self._json(req).get("mchid"))
            self._close(self._trade(merchant, path.split("/")[-2]))
            return 204, None
        if method == "POST" and path == "/v3/refund/domestic/refunds":
            return 200, self._refund(merchant, self._json(req))
        if method == "GET" and path.startswith("/v3/refund/domestic/refunds/"):
            refund = self._refunds(merchant).get(path.rsplit("/", 1)[1])
            if refund is None:
                raise ApiError(404, "RESOURCE_NOT_EXISTS", "退款单不存在")
            return 200, self._refund_view(refund)
        if method == "GET" and path == "/v3/certificates":
            return 200, self._certificates(merchant)
        if method == "GET" and path == "/v3/bill/tradebill":
            return 200, self._trade_bill(merchant, query.get("bill_date", ""))
        raise ApiError(404, "NOT_FOUND", f"无此接口 {method} {path}")

    @staticmethod
    def _json(req: Request) -> dict:
        try:
            data = json.loads(req.body or b"{}")
        except ValueError:
            raise ApiError(400, "PARAM_ERROR", "请求体不是合法的JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "PARAM_ERROR", "请求体不是JSON对象")
        return data

    @staticmethod
    def _check_mchid(merchant: dict, mchid) -> None:
        if not mchid:
            raise ApiError(400, "PARAM_ERROR", "缺少参数 mchid")
        if mchid != merchant["mchid"]:
            raise ApiError(400, "PARAM_ERROR", "mchid 与 Authorization 中的商户号不一致")

    # --- trades (called under the lock) ------------------------------------------------

    def _trades(self, merchant: dict) -> dict:
        return self.state["trades"].setdefault(merchant["mchid"], {})

    def _refunds(self, merchant: dict) -> dict:
        return self.state["refunds"].setdefault(merchant["mchid"], {})

    def _trade(self, merchant: dict, out_trade_no: str) -> dict:
        trade = self._trades(merchant).get(out_trade_no)
        if trade is None:
            raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
        return trade

    def find(self, payment_id: str) -> dict | None:
        for trades in self.state["trades"].values():
            for trade in trades.values():
                if payment_id in (trade["out_trade_no"], trade.get("transaction_id")):
                    return trade
        return None

    def _native(self, merchant: dict, body: dict) -> dict:
        self._check_mchid(merchant, body.get("mchid"))
        if body.get("appid") not in merchant["appids"]:
            raise ApiError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        for name in ("description", "out_trade_no", "notify_url", "amount"):
            if not body.get(name):
                raise ApiError(400, "PARAM_ERROR", f"缺少参数 {name}")
        out_trade_no = str(body["out_trade_no"])
        if not OUT_NO.match(out_trade_no):
            raise ApiError(400, "PARAM_ERROR", "out_trade_no 应为6-32位数字、大小写字母、_-|*")
        if len(str(body["description"])) > 127:
            raise ApiError(400, "PARAM_ERROR", "description 超过127个字符")
        amount = body["amount"]
        total = amount.get("total") if isinstance(amount, dict) else None
        if not isinstance(total, int) or isinstance(total, bool) or total < 1:
            raise ApiError(400, "PARAM_ERROR", "amount.total 应为大于0的整数（分）")
        currency = amount.get("currency", "CNY")
        if currency != "CNY":
            raise ApiError(400, "PARAM_ERROR", "amount.currency 仅支持 CNY")
        now = self.sb.now()
        expires_at = None
        if body.get("time_expire"):
            try:
                expires_at = parse_rfc3339(body["time_expire"])
            except ValueError:
                raise ApiError(400, "PARAM_ERROR", "time_expire 应为 RFC3339 格式") from None
        trades = self._trades(merchant)
        trade = trades.get(out_trade_no)
        if trade is not None:
            if trade["trade_state"] in ("SUCCESS", "REFUND"):
                raise ApiError(400, "ORDERPAID", "该订单已支付")
            if trade["trade_state"] == "CLOSED":
                raise ApiError(400, "ORDERCLOSED", "订单已关闭")
            if (trade["total"], trade["description"], trade["appid"]) != (total, body["description"], body["appid"]):
                raise ApiError(400, "INVALID_REQUEST", "201 商户订单号重复")
            return {"code_url": trade["code_url"]}
        trade = trades[out_trade_no] = {
            "mchid": merchant["mchid"], "appid": body["appid"], "out_trade_no": out_trade_no,
            "description": body["description"], "attach": body.get("attach", ""), "notify_url": body["notify_url"],
            "total": total, "currency": currency, "code_url": "weixin://wxpay/bizpayurl?pr=" + token(7),
            "trade_state": "NOTPAY", "created": now, "expires_at": expires_at,
        }
        self.sb.log(f"wechatpay trade {out_trade_no} opened ({total} fen)")
        return {"code_url": trade["code_url"]}

    def _transaction(self, trade: dict) -> dict:
        state = trade["trade_state"]
        data = {"appid": trade["appid"], "mchid": trade["mchid"], "out_trade_no": trade["out_trade_no"],
                "trade_state": state, "trade_state_desc": STATE_DESC[state],
                "amount": {"total": trade["total"], "currency": trade["currency"], "payer_currency": trade["currency"]},
                "promotion_detail": []}
        if trade.get("attach"):
            data["attach"] = trade["attach"]
        if trade.get("transaction_id"):
            data.update({"transaction_id": trade["transaction_id"], "trade_type": "NATIVE", "bank_type": "OTHERS",
                         "success_time": rfc3339_china(trade["paid_at"]), "payer": {"openid": trade["openid"]}})
            data["amount"].update(total=trade["paid_total"], payer_total=trade["paid_total"])
        return data

    def _close(self, trade: dict) -> None:
        if trade["trade_state"] in ("SUCCESS", "REFUND"):
            raise ApiError(400, "ORDERPAID", "订单已支付")
        if trade["trade_state"] == "NOTPAY":
            trade["trade_state"] = "CLOSED"
            trade["closed_at"] = self.sb.now()
            self.sb.log(f"wechatpay trade {trade['out_trade_no']} closed")

    def _refund(self, merchant: dict, body: dict) -> dict:
        for name in ("out_refund_no", "amount"):
            if not body.get(name):
                raise ApiError(400, "PARAM_ERROR", f"缺少参数 {name}")
        if body.get("transaction_id"):
            trade = next((t for t in self._trades(merchant).values()
                          if t.get("transaction_id") == body["transaction_id"]), None)
        elif body.get("out_trade_no"):
            trade = self._trades(merchant).get(body["out_trade_no"])
        else:
            raise ApiError(400, "PARAM_ERROR", "transaction_id 和 out_trade_no 必须二选一")
        if trade is None:
            raise ApiError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
        out_refund_no = str(body["out_refund_no"])
        if not OUT_REFUND_NO.match(out_refund_no):
            raise ApiError(400, "PARAM_ERROR", "out_refund_no 格式错误")
        refunds = self._refunds(merchant)
        if out_refund_no in refunds:  # the same refund asked again: answered as it is
            return self._refund_view(refunds[out_refund_no])
        if trade["trade_state"] not in ("SUCCESS", "REFUND"):
            raise ApiError(400, "INVALID_REQUEST", "订单未支付，不能退款")
        amount = body["amount"]
        refund, total = amount.get("refund"), amount.get("total")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (refund, total)):
            raise ApiError(400, "PARAM_ERROR", "amount.refund 和 amount.total 应为大于0的整数（分）")
        if amount.get("currency", "CNY") != trade["currency"]:
            raise ApiError(400, "PARAM_ERROR", "amount.currency 与订单币种不一致")
        if total != trade["paid_total"]:
            raise ApiError(400, "PARAM_ERROR", "订单金额或退款金额与之前请求不一致，请核实后再试")
        already = sum(r["refund"] for r in refunds.values()
                      if r["out_trade_no"] == trade["out_trade_no"] and r["status"] != "CLOSED")
        if already + refund > trade["paid_total"]:
            raise ApiError(400, "INVALID_REQUEST", "申请退款金额超过订单可退金额，请核实后再试")
        now = self.sb.now()
        status = self.sb.settings["wechatpay_refund_status"]
        record = refunds[out_refund_no] = {
            "mchid": merchant["mchid"], "out_refund_no": out_refund_no, "refund_id": "50" + digits(30),
            "out_trade_no": trade["out_trade_no"], "transaction_id": trade["transaction_id"],
            "reason": body.get("reason", ""), "notify_url": body.get("notify_url", ""),
            "refund": refund, "total": total, "currency": trade["currency"], "status": status, "created": now,
            "success_at": now if status == "SUCCESS" else None,
        }
        trade["trade_state"] = "REFUND"
        self.sb.log(f"wechatpay refund {out_refund_no} of {refund} fen on {trade['out_trade_no']}: {status}")
        return self._refund_view(record)

    def _refund_view(self, r: dict) -> dict:
        data = {"refund_id": r["refund_id"], "out_refund_no": r["out_refund_no"], "transaction_id": r["transaction_id"],
                "out_trade_no": r["out_trade_no"], "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
                "create_time": rfc3339_china(r["created"]), "status": r["status"], "funds_account": "AVAILABLE",
                "amount": {"total": r["total"], "refund": r["refund"], "from": [], "payer_total": r["total"],
                           "payer_refund": r["refund"], "settlement_refund": r["refund"], "settlement_total": r["total"],
                           "discount_refund": 0, "currency": r["currency"], "refund_fee": 0},
                "promotion_detail": []}
        if r.get("success_at"):
            data["success_time"] = rfc3339_china(r["success_at"])
        return data

    def _certificates(self, merchant: dict) -> dict:
        cert = load_pem_x509_certificate(self.platform_certificate.encode())
        return {"data": [{
            "serial_no": self.platform_serial,
            "effective_time": rfc3339_china(cert.not_valid_before_utc.timestamp()),
            "expire_time": rfc3339_china(cert.not_valid_after_utc.timestamp()),
            "encrypt_certificate": encrypt(merchant["apiv3_key"], self.platform_certificate, "certificate"),
        }]}

    # --- paying and notifying (the control routes, under the lock) ------------------------

    def _notification(self, merchant: dict, url: str, event_type: str, summary: str, original_type: str,
                      plaintext: dict) -> dict:
        resource = encrypt(merchant["apiv3_key"], json.dumps(plaintext, ensure_ascii=False, separators=(",", ":")),
                           original_type)
        envelope = {"id": str(uuid.uuid4()), "create_time": rfc3339_china(self.sb.now()),
                    "resource_type": "encrypt-resource", "event_type": event_type, "summary": summary,
                    "resource": {"original_type": original_type, **resource}}
        return {"url": url, "event_id": envelope["id"], "kind": event_type,
                "body": json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))}

    # --- the bill (under the lock) -----------------------------------------------------------

    BILL_HEADER = ("交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,"
                   "付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,"
                   "退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,费率备注")

    def _bill_rows(self, merchant: dict, day: str) -> list[dict]:
        """The day's rows as dicts: a trade paid, a refund asked; then the edits."""
        on_day = lambda ts: datetime.datetime.fromtimestamp(int(ts), CHINA).date().isoformat() == day  # noqa: E731
        rows = []
        for t in self._trades(merchant).values():
            if t.get("transaction_id") and on_day(t["paid_at"]):
                rows.append({"at": t["paid_at"], "transaction_id": t["transaction_id"], "out_trade_no": t["out_trade_no"],
                             "state": "SUCCESS", "amount": t["paid_total"], "refund_id": "", "out_refund_no": "",
                             "refund": 0, "refund_status": "", "ids": {t["transaction_id"], t["out_trade_no"]}})
        for r in self._refunds(merchant).values():
            if on_day(r["created"]):
                rows.append({"at": r["created"], "transaction_id": r["transaction_id"], "out_trade_no": r["out_trade_no"],
                             "state": "REFUND", "amount": 0, "refund_id": r["refund_id"],
                             "out_refund_no": r["out_refund_no"], "refund": r["refund"], "refund_status": r["status"],
                             "ids": {r["refund_id"], r["out_refund_no"]}})
        bill = bill_state(self.state)
        rows += [dict(row, ids={row["transaction_id"], row["out_trade_no"], row["out_refund_no"]} - {""})
                 for row in bill["extra"] if row["mchid"] == merchant["mchid"] and on_day(row["at"])]

        def amend(row: dict, name: str, value) -> None:
            if name == "amount":
                row["amount" if row["state"] == "SUCCESS" else "refund"] = value
            elif name == "status":
                row["refund_status"] = value

        return edited_rows(rows, bill, amend)

    def _trade_bill(self, merchant: dict, day: str) -> dict:
        try:
            datetime.date.fromisoformat(day)
        except ValueError:
            raise ApiError(400, "PARAM_ERROR", "bill_date 应为 YYYY-MM-DD") from None
        rows = self._bill_rows(merchant, day)
        if not rows:
            raise ApiError(400, "NO_STATEMENT_EXIST", "账单文件不存在")
        yuan = lambda fen: f"{fen // 100}.{fen % 100:02d}"  # noqa: E731
        lines = [self.BILL_HEADER]
        for row in rows:
            at = datetime.datetime.fromtimestamp(int(row["at"]), CHINA).strftime("%Y-%m-%d %H:%M:%S")
            fields = [at, next(iter(merchant["appids"])), merchant["mchid"], "0", "", row["transaction_id"],
                      row["out_trade_no"], "o" + token(27), "NATIVE", row["state"], "OTHERS", "CNY",
                      yuan(row["amount"]), "0.00", row["refund_id"] or "0", row["out_refund_no"] or "0",
                      yuan(row["refund"]), "0.00", "ORIGINAL" if row["refund_id"] else "", row["refund_status"],
                      "Kami", "", "0.00000", "0.60%", yuan(row["amount"]), yuan(row["refund"]), ""]
            lines.append(",".join("`" + field for field in fields))
        total = sum(row["amount"] for row in rows)
        refunded = sum(row["refund"] for row in rows)
        lines.append("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额")
        lines.append(",".join("`" + f for f in (str(len(rows)), yuan(total), yuan(refunded), "0.00", "0.00000",
                                                   yuan(total), yuan(refunded))))
        file = "\r\n".join(lines) + "\r\n"
        bill_token = token(32)
        self.state.setdefault("bills", {})[bill_token] = {"mchid": merchant["mchid"], "file": file}
        return {"hash_type": "SHA1", "hash_value": hashlib.sha1(file.encode()).hexdigest(),
                "download_url": f"{self.sb.url}/wechatpay/v3/billdownload/file?token={bill_token}"}

    def add_bill_line(self, kind: str, amount: int, data: dict) -> dict:
        """A row Kami never saw: `payment_id` / `refund_id`, a refund's `status`."""
        bill = bill_state(self.state)
        refund = kind == "refund"
        row = {"mchid": next(iter(self.merchants)), "at": self.sb.now(), "transaction_id": "4200" + digits(24),
               "out_trade_no": data.get("payment_id", ""), "state": "REFUND" if refund else "SUCCESS",
               "amount": 0 if refund else amount, "refund_id": "50" + digits(30) if refund else "",
               "out_refund_no": data.get("refund_id", "") if refund else "", "refund": amount if refund else 0,
               "refund_status": data.get("status", "SUCCESS") if refund else ""}
        bill["extra"].append(row)
        return {"added": row["transaction_id"], "provider_ref": row["transaction_id"]}

    def pay(self, payment_id: str, amount: int | None, options: dict) -> tuple[dict, dict | None]:
        trade = self.find(payment_id)
        if trade is None:
            raise SandboxError(404, f"no WeChat Pay trade {payment_id}")
        if trade["trade_state"] != "NOTPAY":
            raise SandboxError(409, f"WeChat Pay trade {payment_id} is {trade['trade_state']}: it cannot be paid")
        now = self.sb.now()
        if trade.get("expires_at") and now > trade["expires_at"]:
            raise SandboxError(409, f"WeChat Pay trade {payment_id} expired at its time_expire: it cannot be paid")
        trade.update(trade_state="SUCCESS", paid_at=now, transaction_id="4200" + digits(24),
                     openid="o" + token(27), paid_total=amount if amount is not None else trade["total"])
        merchant = self.merchants[trade["mchid"]]
        notification = self._notification(merchant, options.get("notify_url") or trade["notify_url"],
                                          "TRANSACTION.SUCCESS", "支付成功", "transaction", self._transaction(trade))
        trade["notification"] = notification
        return self.summary(trade), notification

    def refund_notify(self, out_refund_no: str, status: str, options: dict) -> tuple[dict, dict]:
        if status not in REFUND_EVENTS:
            raise SandboxError(400, f"status must be one of {', '.join(REFUND_EVENTS)}")
        record = next((r for refunds in self.state["refunds"].values() for r in refunds.values()
                       if out_refund_no in (r["out_refund_no"], r["refund_id"])), None)
        if record is None:
            raise SandboxError(404, f"no WeChat Pay refund {out_refund_no}")
        if record["status"] != "PROCESSING" and record["status"] != status:
            raise SandboxError(409, f"refund {out_refund_no} is {record['status']} already")
        url = options.get("notify_url") or record["notify_url"]
        if not url:
            raise SandboxError(409, f"refund {out_refund_no} was asked for without notify_url: "
                                    "WeChat Pay would not notify")
        now = self.sb.now()
        record["status"] = status
        if status == "SUCCESS":
            record["success_at"] = record.get("success_at") or now
        event_type, summary = REFUND_EVENTS[status]
        plaintext = {"mchid": record["mchid"], "out_trade_no": record["out_trade_no"],
                     "transaction_id": record["transaction_id"], "out_refund_no": record["out_refund_no"],
                     "refund_id": record["refund_id"], "refund_status": status,
                     "user_received_account": "支付用户零钱",
                     "amount": {"total": record["total"], "refund": record["refund"], "payer_total": record["total"],
                                "payer_refund": record["refund"]}}
        if status == "SUCCESS":
            plaintext["success_time"] = rfc3339_china(record["success_at"])
        notification = self._notification(self.merchants[record["mchid"]], url, event_type, summary, "refund",
                                          plaintext)
        record["notification"] = notification
        return {k: record[k] for k in ("out_refund_no", "refund_id", "out_trade_no", "status", "refund")}, notification

    def deliver(self, notification: dict) -> tuple[dict, bytes]:
        """Each delivery is signed afresh (a new timestamp and nonce), as WeChat Pay's retries are."""
        return {"Content-Type": "application/json", "User-Agent": "Mozilla/4.0",
                **self.signed_headers(notification["body"])}, notification["body"].encode()

    @staticmethod
    def accepted(status: int, answer: str) -> bool:
        return status in (200, 204)

    def summary(self, trade: dict) -> dict:
        return {k: trade.get(k) for k in ("mchid", "out_trade_no", "transaction_id", "trade_state", "total",
                                          "paid_total", "notify_url")}
