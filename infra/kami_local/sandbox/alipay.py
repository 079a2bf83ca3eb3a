"""Alipay's open platform gateway (`/alipay/gateway.do`), as a merchant sees it.

Requests: the common parameters (`app_id`, `method`, `charset`, `sign_type`, `timestamp`,
`version`, `notify_url`, `return_url`, `biz_content`, `sign`) in the query string, a form
body, or both (GET and POST alike, as Alipay accepts). The signature is RSA2
(SHA256withRSA) over every parameter but `sign`, empty values left out, sorted by name,
joined `k=v` with `&`, with the values as decoded (not URL-encoded); it is checked
with python-alipay-sdk's own `_verify` against the app's public key.

- `alipay.trade.page.pay` / `alipay.trade.wap.pay`: what the buyer's browser opens. A
  valid one creates the trade in WAIT_BUYER_PAY (Alipay creates it when the buyer opens
  the page too: a trade whose page nobody opened does not exist) and shows the cashier
  page (HTML). Errors show Alipay's error page (HTTP 200, and `X-Sandbox-Error`).
- `alipay.trade.query`, `alipay.trade.close`, `alipay.trade.refund`,
  `alipay.trade.fastpay.refund.query`: JSON `{"<method>_response": {...}, "sign": "..."}`,
  the sign being RSA2 with the sandbox's Alipay key over the exact text of the
  `..._response` value (slashes written `\\/`, as Alipay's serializer does). Gateway
  errors (40001 missing argument, 40002 invalid app id or signature) come unsigned.
- `alipay.data.dataservice.bill.downloadurl.query` (`bill_type=trade`, `bill_date`
  YYYY-MM-DD): `bill_download_url`, where `GET /alipay/downloadBillFile.resource?...&token=`
  serves the day's bill as Alipay does: a zip of two GBK CSV files, the detail
  (`#支付宝业务明细查询`, a row per trade paid and per refund made that day, China time,
  fields padded with a tab, refunds negative) and the summary (`#支付宝业务汇总查询`);
  edited by `/_sandbox/bill` like the other providers' bills (add, drop, amend an amount).

Notifications: a form POST to the trade's `notify_url` (`notify_type=trade_status_sync`),
signed RSA2 with the sandbox's Alipay key over every parameter but `sign` and
`sign_type` (the SDK's `sign_data` cannot be used: it signs `sign_type` too, as requests
do); Kami must answer the exact body `success`.
"""

from __future__ import annotations

import datetime
import html
import io
import json
import zipfile
from decimal import Decimal, InvalidOperation
from urllib.parse import quote_plus, urlencode

from alipay import AliPay

from .common import (CHINA, Request, Response, SandboxError, bill_state, china_time, digits, edited_rows,
                     html_response, json_response, parse_china_time, pay_form, rows, token)

PAGE_METHODS = {"alipay.trade.page.pay": "page", "alipay.trade.wap.pay": "wap"}
API_METHODS = ("alipay.trade.query", "alipay.trade.close", "alipay.trade.refund", "alipay.trade.fastpay.refund.query",
               "alipay.data.dataservice.bill.downloadurl.query")
REQUIRED = ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version")
DEFAULT_TIMEOUT = 15 * 86400  # an unpaid trade closes after 15 days unless timeout_express/time_expire says less
PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")
CENT = Decimal("0.01")


class GatewayError(Exception):
    def __init__(self, code: str, msg: str, sub_code: str, sub_msg: str, signed: bool = False) -> None:
        super().__init__(f"{code} {sub_code}: {sub_msg}")
        self.body = {"code": code, "msg": msg, "sub_code": sub_code, "sub_msg": sub_msg}
        self.signed = signed


def missing(what: str, sub_msg: str) -> GatewayError:
    return GatewayError("40001", "Missing Required Arguments", f"isv.missing-{what}", sub_msg)


def invalid(what: str, sub_msg: str) -> GatewayError:
    return GatewayError("40002", "Invalid Arguments", f"isv.invalid-{what}", sub_msg)


def business(sub_code: str, sub_msg: str) -> GatewayError:
    return GatewayError("40004", "Business Failed", sub_code, sub_msg, signed=True)


def yuan(text) -> Decimal:
    """An amount in yuan, 0.01 to 100000000, at most two decimals."""
    try:
        value = Decimal(str(text))
    except (InvalidOperation, ValueError):
        raise invalid("parameter", f"金额格式错误: {text}") from None
    if not value.is_finite() or value != value.quantize(CENT) or not Decimal("0.01") <= value <= Decimal("100000000"):
        raise invalid("parameter", f"金额格式错误: {text}")
    return value.quantize(CENT)


def fmt(value: Decimal) -> str:
    return f"{value.quantize(CENT)}"


def sign_content(params: dict, exclude: tuple[str, ...]) -> str:
    """Alipay's string to sign: parameters sorted by name, `k=v` joined by `&`, empty ones
    and `exclude` left out."""
    return "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in exclude and v not in ("", None))


def new_trade_no(now: float) -> str:
    """Alipay's trade number: the day, then digits."""
    return china_time(now, "%Y%m%d") + "22001" + digits(15)


def parse_timeout(text: str) -> int:
    """`timeout_express`: 90m, 2h, 3d, or 1c (until midnight, taken as a day)."""
    units = {"m": 60, "h": 3600, "d": 86400, "c": 86400}
    try:
        return int(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise invalid("parameter", f"timeout_express 格式错误: {text}") from None


class Alipay:
    name = "alipay"

    def __init__(self, sandbox) -> None:
        self.sb = sandbox
        keys = sandbox.keys
        # The SDK as the merchant's counterparty: its "app private key" is the sandbox's
        # Alipay key (it signs answers and notifications) and its "Alipay public key" is
        # the app's (it verifies the app's requests).
        self.apps = {keys.alipay_app_id: {
            "seller_id": keys.alipay_seller_id,
            "sdk": AliPay(appid=keys.alipay_app_id, app_private_key_string=keys.alipay_private_key,
                          alipay_public_key_string=keys.alipay_app_public_key, sign_type="RSA2"),
        }}
        self.state = sandbox.state.setdefault("alipay", {"trades": {}})

    # --- the gateway ---------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        path = req.path
        if path.startswith("/cashier/"):
            return self._cashier(path.removeprefix("/cashier/"))
        if path == "/downloadBillFile.resource" and req.method == "GET":
            with self.sb.lock:
                bill = self.state.setdefault("bills", {}).get(dict(req.query_pairs()).get("token", ""))
            if bill is None:
                return Response(404, b"Not Found", [("Content-Type", "text/plain")])
            return Response(200, bytes.fromhex(bill["zip"]), [("Content-Type", "application/octet-stream")])
        if path != "/gateway.do":
            return Response(404, b"Not Found", [("Content-Type", "text/plain")])
        params: dict[str, str] = {}
        for k, v in req.query_pairs() + (req.form() if req.method == "POST" and req.is_form() else []):
            params.setdefault(k, v)
        method = params.get("method", "")
        page = method in PAGE_METHODS
        try:
            app = self._authenticate(params)
            biz = self._biz(params)
            if page:
                return self._page_pay(app, params, biz)
            if method not in API_METHODS:
                raise invalid("method", "不存在的方法名")
            with self.sb.lock:
                body = getattr(self, "_" + method.removeprefix("alipay.trade.").replace(".", "_"))(app, biz)
                self.sb.save()
            return self._api_answer(params.get("app_id"), method, {"code": "10000", "msg": "Success", **body}, True)
        except GatewayError as e:
            self.sb.log(f"alipay {method or '(no method)'}: {e}")
            if page:
                return self._error_page(e)
            return self._api_answer(params.get("app_id"), method, e.body, e.signed)

    def _authenticate(self, params: dict) -> dict:
        if not params.get("method"):
            raise missing("method", "缺少方法名参数")
        if not params.get("app_id"):
            raise missing("app-id", "缺少AppID参数")
        app = self.apps.get(params["app_id"])
        if app is None:
            raise invalid("app-id", "无效的AppID参数")
        if not params.get("sign"):
            raise missing("signature", "缺少签名参数")
        if params.get("sign_type") != "RSA2":
            raise invalid("signature-type", f"签名类型无效: {params.get('sign_type', '')} (the sandbox takes RSA2)")
        for name in REQUIRED:
            if not params.get(name):
                raise missing(name.replace("_", "-"), f"缺少{name}参数")
        content = sign_content(params, ("sign",))
        try:
            ok = app["sdk"]._verify(content, params["sign"])  # python-alipay-sdk's own RSA2 check
        except (ValueError, TypeError):
            ok = False
        if not ok:
            raise invalid("signature", f"验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配，网关生成的验签字符串为：{content}")
        try:
            parse_china_time(params["timestamp"])
        except ValueError:
            raise invalid("timestamp", "非法的时间戳参数 (yyyy-MM-dd HH:mm:ss)") from None
        if params["charset"].lower() != "utf-8":
            raise invalid("charset", "the sandbox takes charset=utf-8")
        return {"app_id": params["app_id"], **app}

    @staticmethod
    def _biz(params: dict) -> dict:
        try:
            biz = json.loads(params.get("biz_content") or "{}")
        except ValueError:
            raise invalid("parameter", "biz_content 不是合法的JSON") from None
        if not isinstance(biz, dict):
            raise invalid("parameter", "biz_content 不是JSON对象")
        return biz

    def _api_answer(self, app_id: str | None, method: str, body: dict, signed: bool) -> Response:
        key = method.replace(".", "_") + "_response" if method else "error_response"
        inner = json.dumps(body, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")
        app = self.apps.get(app_id or "")
        if signed and app is not None:
            text = '{"%s":%s,"sign":"%s"}' % (key, inner, app["sdk"]._sign(inner))
        else:
            text = '{"%s":%s}' % (key, inner)
        return Response(200, text.encode(), [("Content-Type", "application/json;charset=utf-8")])

    # --- trades ----------------------------------------------------------------------

    def _trades(self, app_id: str) -> dict:
        return self.state["trades"].setdefault(app_id, {})

    def _refresh(self, trade: dict) -> dict:
        """An unpaid trade past its deadline is closed, as Alipay closes it."""
        if trade["status"] == "WAIT_BUYER_PAY" and self.sb.now() > trade["expires_at"]:
            trade["status"] = "TRADE_CLOSED"
            trade["closed_at"] = trade["expires_at"]
        return trade

    def _find(self, app_id: str, biz: dict) -> dict:
        trades = self._trades(app_id)
        trade = None
        if biz.get("out_trade_no"):
            trade = trades.get(str(biz["out_trade_no"]))
        elif biz.get("trade_no"):
            trade = next((t for t in trades.values() if t["trade_no"] == biz["trade_no"]), None)
        else:
            raise missing("parameter", "out_trade_no 和 trade_no 不能同时为空")
        if trade is None:
            raise business("ACQ.TRADE_NOT_EXIST", "交易不存在")
        return self._refresh(trade)

    def find(self, payment_id: str) -> dict | None:
        for trades in self.state["trades"].values():
            for trade in trades.values():
                if payment_id in (trade["out_trade_no"], trade["trade_no"]):
                    return self._refresh(trade)
        return None

    def _page_pay(self, app: dict, params: dict, biz: dict) -> Response:
        out_trade_no = str(biz.get("out_trade_no") or "")
        if not out_trade_no or len(out_trade_no) > 64:
            raise missing("parameter", "out_trade_no 必填，最长64位")
        if not biz.get("subject"):
            raise missing("parameter", "subject 必填")
        amount = yuan(biz.get("total_amount"))
        now = self.sb.now()
        if biz.get("time_expire"):
            try:
                expires_at = parse_china_time(biz["time_expire"])
            except ValueError:
                raise invalid("parameter", "time_expire 格式错误 (yyyy-MM-dd HH:mm:ss)") from None
        elif biz.get("timeout_express"):
            expires_at = now + parse_timeout(biz["timeout_express"])
        else:
            expires_at = now + DEFAULT_TIMEOUT
        with self.sb.lock:
            trades = self._trades(app["app_id"])
            trade = trades.get(out_trade_no)
            if trade is not None:
                self._refresh(trade)
                if trade["status"] in PAID:
                    raise business("ACQ.TRADE_HAS_SUCCESS", "交易已被支付")
                if trade["status"] == "TRADE_CLOSED":
                    raise business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭")
                if trade["total_amount"] != fmt(amount) or trade["subject"] != biz["subject"]:
                    raise business("ACQ.CONTEXT_INCONSISTENT", "交易信息被篡改")
            else:
                if expires_at <= now:
                    raise business("ACQ.TRADE_HAS_CLOSE", "交易已经关闭 (time_expire is past)")
                trade = trades[out_trade_no] = {
                    "app_id": app["app_id"], "out_trade_no": out_trade_no,
                    "trade_no": new_trade_no(now),
                    "method": PAGE_METHODS[params["method"]], "subject": str(biz["subject"]),
                    "total_amount": fmt(amount), "notify_url": params.get("notify_url", ""),
                    "return_url": params.get("return_url", ""),
                    "passback_params": biz.get("passback_params", ""), "body": biz.get("body", ""),
                    "status": "WAIT_BUYER_PAY", "created": now, "expires_at": expires_at,
                    "refunds": {}, "refunded": "0.00",
                }
                self.sb.save()
                self.sb.log(f"alipay trade {out_trade_no} opened ({trade['total_amount']} CNY, {trade['method']})")
        return self._cashier_page(trade)

    def _cashier(self, out_trade_no: str) -> Response:
        trade = self.find(out_trade_no)
        if trade is None:
            return html_response(404, "Alipay", "<h1>交易不存在</h1>")
        return self._cashier_page(trade)

    def _cashier_page(self, trade: dict) -> Response:
        body = (f"<h1>支付宝 Alipay cashier ({html.escape(trade['method'])})</h1>"
                + rows([("subject", trade["subject"]), ("total_amount", trade["total_amount"] + " CNY"),
                        ("out_trade_no", trade["out_trade_no"]), ("trade_no", trade["trade_no"]),
                        ("trade_status", trade["status"])]))
        if trade["status"] == "WAIT_BUYER_PAY":
            body += pay_form("alipay", trade["out_trade_no"], "确认付款 Pay")
        return html_response(200, "支付宝 - 网上支付", body, [("X-Sandbox-Trade", trade["out_trade_no"])])

    @staticmethod
    def _error_page(e: GatewayError) -> Response:
        sub = e.body["sub_code"].removeprefix("isv.")
        return html_response(200, "支付宝 - 错误", f"<h1>错误代码 {html.escape(sub)}</h1>"
                             f"<p>错误原因: {html.escape(e.body['sub_msg'])}</p>",
                             [("X-Sandbox-Error", e.body["sub_code"])])

    # --- server methods (called under the lock) ----------------------------------------

    def _query(self, app: dict, biz: dict) -> dict:
        trade = self._find(app["app_id"], biz)
        body = {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
                "trade_status": trade["status"]}
        if trade.get("paid_at"):
            paid = trade["paid_amount"]
            body.update({"buyer_logon_id": trade["buyer_logon_id"], "buyer_user_id": trade["buyer_id"],
                         "total_amount": paid, "buyer_pay_amount": paid, "invoice_amount": paid,
                         "receipt_amount": paid, "point_amount": "0.00",
                         "send_pay_date": china_time(trade["paid_at"]),
                         "fund_bill_list": [{"amount": paid, "fund_channel": "ALIPAYACCOUNT"}]})
        else:
            body.update({"total_amount": trade["total_amount"], "buyer_pay_amount": "0.00",
                         "invoice_amount": "0.00", "receipt_amount": "0.00", "point_amount": "0.00"})
        return body

    def _close(self, app: dict, biz: dict) -> dict:
        trade = self._find(app["app_id"], biz)
        if trade["status"] in PAID:
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        if trade["status"] == "WAIT_BUYER_PAY":
            trade["status"] = "TRADE_CLOSED"
            trade["closed_at"] = self.sb.now()
            self.sb.log(f"alipay trade {trade['out_trade_no']} closed")
        return {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"]}

    def _refund(self, app: dict, biz: dict) -> dict:
        trade = self._find(app["app_id"], biz)
        if biz.get("refund_amount") in (None, ""):
            raise missing("parameter", "refund_amount 必填")
        amount = yuan(biz["refund_amount"])
        request_no = str(biz.get("out_request_no") or trade["out_trade_no"])
        answer = {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
                  "buyer_logon_id": trade.get("buyer_logon_id", ""), "buyer_user_id": trade.get("buyer_id", "")}
        done = trade["refunds"].get(request_no)
        if done is not None:  # the same refund request again: no money moves (fund_change N)
            return {**answer, "fund_change": "N", "refund_fee": trade["refunded"],
                    "gmt_refund_pay": china_time(done["at"])}
        if trade["status"] not in PAID:
            raise business("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
        refunded = Decimal(trade["refunded"]) + amount
        if refunded > Decimal(trade["paid_amount"]):
            raise business("ACQ.REFUND_AMT_NOT_EQUAL_TOTAL", "退款金额超限")
        now = self.sb.now()
        trade["refunds"][request_no] = {"refund_amount": fmt(amount), "at": now,
                                        "reason": biz.get("refund_reason", "")}
        trade["refunded"] = fmt(refunded)
        if refunded == Decimal(trade["paid_amount"]):
            trade["status"] = "TRADE_CLOSED"  # a trade refunded in full is closed
            trade["closed_at"] = now
        self.sb.log(f"alipay refund {request_no} of {fmt(amount)} on {trade['out_trade_no']}")
        return {**answer, "fund_change": "Y", "refund_fee": trade["refunded"], "gmt_refund_pay": china_time(now)}

    def _fastpay_refund_query(self, app: dict, biz: dict) -> dict:
        trade = self._find(app["app_id"], biz)
        request_no = str(biz.get("out_request_no") or trade["out_trade_no"])
        done = trade["refunds"].get(request_no)
        if done is None:  # Alipay answers success with no refund fields when none was made
            return {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"]}
        return {"trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
                "out_request_no": request_no, "total_amount": trade["paid_amount"],
                "refund_amount": done["refund_amount"], "refund_status": "REFUND_SUCCESS",
                "gmt_refund_pay": china_time(done["at"])}

    # --- the bill (under the lock) -----------------------------------------------------------

    BILL_HEADER = ("支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,门店编号,门店名称,操作员,终端号,对方账户,"
                   "订单金额（元）,商家实收（元）,支付宝红包（元）,集分宝（元）,支付宝优惠（元）,商家优惠（元）,券核销金额（元）,"
                   "券名称,商家红包消费金额（元）,卡消费金额（元）,退款批次号/请求号,服务费（元）,分润（元）,备注")
    RULE = "#-----------------------------------------"

    def _bill_rows(self, app_id: str, day: str) -> list[dict]:
        """The day's rows: a trade paid, a refund made (amounts in fen); then the edits."""
        on_day = lambda ts: datetime.datetime.fromtimestamp(int(ts), CHINA).date().isoformat() == day  # noqa: E731
        fen = lambda text: int(Decimal(text) * 100)  # noqa: E731
        rows = []
        for t in self._trades(app_id).values():
            if t.get("paid_at") and on_day(t["paid_at"]):
                rows.append({"at": t["paid_at"], "trade_no": t["trade_no"], "out_trade_no": t["out_trade_no"],
                             "kind": "交易", "amount": fen(t["paid_amount"]), "request_no": "",
                             "ids": {t["trade_no"], t["out_trade_no"]}})
            for request_no, refund in t.get("refunds", {}).items():
                if on_day(refund["at"]):
                    rows.append({"at": refund["at"], "trade_no": t["trade_no"], "out_trade_no": t["out_trade_no"],
                                 "kind": "退款", "amount": fen(refund["refund_amount"]), "request_no": request_no,
                                 "ids": {request_no}})
        bill = bill_state(self.state)
        rows += [dict(row, ids={row["trade_no"], row["out_trade_no"], row["request_no"]} - {""})
                 for row in bill["extra"] if row["app_id"] == app_id and on_day(row["at"])]

        def amend(row: dict, name: str, value) -> None:
            if name == "amount":  # Alipay's bill has no status to amend
                row["amount"] = int(value)

        return edited_rows(rows, bill, amend)

    def _alipay_data_dataservice_bill_downloadurl_query(self, app: dict, biz: dict) -> dict:
        if biz.get("bill_type") != "trade":
            raise invalid("parameter", "bill_type 只支持 trade (the sandbox serves the trade bill)")
        try:
            day = datetime.date.fromisoformat(str(biz.get("bill_date", "")))
        except ValueError:
            raise invalid("parameter", "bill_date 格式错误 (yyyy-MM-dd)") from None
        rows = self._bill_rows(app["app_id"], day.isoformat())
        yuan = lambda fen: f"{'-' if fen < 0 else ''}{abs(fen) // 100}.{abs(fen) % 100:02d}"  # noqa: E731
        pid, ymd = app["seller_id"], day.strftime("%Y%m%d")
        span = (f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   "
                f"终止日期：[{day + datetime.timedelta(days=1):%Y年%m月%d日} 00:00:00]")
        exported = f"#导出时间：[{datetime.datetime.fromtimestamp(self.sb.now(), CHINA):%Y年%m月%d日 %H:%M:%S}]"
        detail = ["#支付宝业务明细查询", f"#账号：[{pid}0156]", span, self.RULE + "业务明细列表" + "-" * 40,
                  self.BILL_HEADER]
        for row in rows:
            signed = -row["amount"] if row["kind"] == "退款" else row["amount"]
            at = china_time(row["at"])
            fields = [row["trade_no"], row["out_trade_no"], row["kind"], "Kami", at, at, "", "", "", "",
                      "sandbox-buyer***@example.com", yuan(signed), yuan(signed), "0.00", "0.00", "0.00", "0.00",
                      "0.00", "", "0.00", "0.00", row["request_no"], "0.00", "0.00", ""]
            detail.append(",".join(field + "\t" for field in fields))
        trades = [row["amount"] for row in rows if row["kind"] == "交易"]
        refunds = [row["amount"] for row in rows if row["kind"] == "退款"]
        detail += [self.RULE + "业务明细列表结束" + "-" * 36,
                   f"#交易合计：{len(trades)}笔，商家实收共{yuan(sum(trades))}元，商家优惠共0.00元",
                   f"#退款合计：{len(refunds)}笔，商家实收退款共{yuan(-sum(refunds))}元，商家优惠退款共0.00元", exported]
        summary = ["#支付宝业务汇总查询", f"#账号：[{pid}0156]", span, self.RULE + "业务汇总列表" + "-" * 40,
                   "门店编号,门店名称,交易订单总笔数,退款订单总笔数,订单金额（元）,商家实收（元）,支付宝优惠（元）,商家优惠（元）,"
                   "卡消费金额（元）,服务费（元）,分润（元）,实收净额（元）",
                   f"合计,,{len(trades)},{len(refunds)},{yuan(sum(trades) - sum(refunds))},"
                   f"{yuan(sum(trades) - sum(refunds))},0.00,0.00,0.00,0.00,0.00,{yuan(sum(trades) - sum(refunds))}",
                   self.RULE + "业务汇总列表结束" + "-" * 36, exported]
        packed = io.BytesIO()
        with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(f"{pid}_{ymd}_业务明细.csv", ("\r\n".join(detail) + "\r\n").encode("gbk"))
            z.writestr(f"{pid}_{ymd}_业务明细(汇总).csv", ("\r\n".join(summary) + "\r\n").encode("gbk"))
        bill_token = token(32)
        self.state.setdefault("bills", {})[bill_token] = {"zip": packed.getvalue().hex()}
        return {"bill_download_url": f"{self.sb.url}/alipay/downloadBillFile.resource?bizType=trade&userId={pid}"
                                     f"&fileType=csv.zip&bizDates={ymd}&downloadFileName={pid}_{ymd}.csv.zip"
                                     f"&token={bill_token}"}

    def add_bill_line(self, kind: str, amount: int, data: dict) -> dict:
        """A row Kami never saw: `payment_id` / `refund_id`."""
        refund = kind == "refund"
        now = self.sb.now()
        row = {"app_id": next(iter(self.apps)), "at": now, "trade_no": new_trade_no(now),
               "out_trade_no": data.get("payment_id", ""), "kind": "退款" if refund else "交易", "amount": amount,
               "request_no": data.get("refund_id", "") if refund else ""}
        bill_state(self.state)["extra"].append(row)
        return {"added": row["trade_no"], "provider_ref": row["trade_no"]}

    # --- paying and notifying (the control routes) ----------------------------------------

    def pay(self, payment_id: str, amount: int | None, options: dict) -> tuple[dict, dict | None]:
        """Marks the trade paid (or another `trade_status`) and returns the trade's summary and
        the notification to send. Called under the lock."""
        status = options.get("trade_status") or "TRADE_SUCCESS"
        if status not in ("TRADE_SUCCESS", "TRADE_FINISHED", "WAIT_BUYER_PAY", "TRADE_CLOSED"):
            raise SandboxError(400, f"unknown trade_status {status}")
        trade = self.find(payment_id)
        if trade is None:
            raise SandboxError(404, f"no Alipay trade {payment_id}: Alipay creates a trade when the buyer "
                                    "opens the signed pay URL (GET it first, or pass pay_url)")
        now = self.sb.now()
        if status in PAID:
            if trade["status"] != "WAIT_BUYER_PAY":
                raise SandboxError(409, f"Alipay trade {payment_id} is {trade['status']}: it cannot be paid")
            trade.update(status=status, paid_at=now,
                         paid_amount=fmt(Decimal(amount) / 100) if amount is not None else trade["total_amount"],
                         buyer_id=digits(16, "2088"), buyer_logon_id="sandbox-buyer***@example.com")
        elif status == "TRADE_CLOSED" and trade["status"] == "WAIT_BUYER_PAY":
            trade.update(status=status, closed_at=now)
        app = self.apps[trade["app_id"]]
        params = {
            "notify_time": china_time(now), "notify_type": "trade_status_sync", "notify_id": token(34, "0123456789abcdef"),
            "app_id": trade["app_id"], "auth_app_id": trade["app_id"], "charset": "utf-8", "version": "1.0",
            "sign_type": "RSA2", "trade_no": trade["trade_no"], "out_trade_no": trade["out_trade_no"],
            "seller_id": app["seller_id"], "seller_email": "sandbox-seller@example.com",
            "trade_status": status, "subject": trade["subject"], "gmt_create": china_time(trade["created"]),
            "passback_params": trade.get("passback_params", ""), "body": trade.get("body", ""),
        }
        if status in PAID:
            paid = trade["paid_amount"]
            params.update({"buyer_id": trade["buyer_id"], "buyer_logon_id": trade["buyer_logon_id"],
                           "total_amount": paid, "receipt_amount": paid, "invoice_amount": paid,
                           "buyer_pay_amount": paid, "point_amount": "0.00", "gmt_payment": china_time(trade["paid_at"]),
                           "fund_bill_list": json.dumps([{"amount": paid, "fundChannel": "ALIPAYACCOUNT"}],
                                                        separators=(",", ":"))})
        else:
            params["total_amount"] = trade["total_amount"]
            if status == "TRADE_CLOSED":
                params["gmt_close"] = china_time(trade.get("closed_at", now))
        params = {k: v for k, v in params.items() if v not in ("", None)}
        params["sign"] = app["sdk"]._sign(sign_content(params, ("sign", "sign_type")))
        notification = {"url": options.get("notify_url") or trade["notify_url"], "event_id": params["notify_id"],
                        "kind": f"trade_status_sync {status}", "body": urlencode(params)}
        trade["notification"] = notification
        return self.summary(trade), notification

    def deliver(self, notification: dict) -> tuple[dict, bytes]:
        """Headers and body of one delivery: Alipay sends the same form each time."""
        return {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                "User-Agent": "Mozilla/4.0"}, notification["body"].encode()

    @staticmethod
    def accepted(status: int, answer: str) -> bool:
        return status == 200 and answer.strip() == "success"

    def summary(self, trade: dict) -> dict:
        return {k: trade.get(k) for k in ("app_id", "out_trade_no", "trade_no", "status", "total_amount",
                                          "paid_amount", "refunded", "notify_url")}

    def return_url(self, trade: dict) -> str | None:
        """Where the cashier sends the buyer back after paying (`return_url` with Alipay's
        signed sync parameters), if the trade has one."""
        if not trade.get("return_url") or trade["status"] not in PAID:
            return None
        app = self.apps[trade["app_id"]]
        params = {"charset": "utf-8", "out_trade_no": trade["out_trade_no"], "method": "alipay.trade.page.pay.return",
                  "total_amount": trade["paid_amount"], "trade_no": trade["trade_no"], "auth_app_id": trade["app_id"],
                  "version": "1.0", "app_id": trade["app_id"], "sign_type": "RSA2", "seller_id": app["seller_id"],
                  "timestamp": china_time(self.sb.now())}
        params["sign"] = app["sdk"]._sign(sign_content(params, ("sign", "sign_type")))
        sep = "&" if "?" in trade["return_url"] else "?"
        return trade["return_url"] + sep + "&".join(f"{k}={quote_plus(v)}" for k, v in params.items())
