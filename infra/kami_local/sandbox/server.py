"""The payment sandbox's HTTP server: one ThreadingHTTPServer on loopback that plays Alipay,
WeChat Pay v3 and Stripe by path prefix, plus the control routes that play the buyer.

  /alipay/gateway.do          Alipay's gateway (alipay.py); /alipay/downloadBillFile.resource its bill file
  /wechatpay/v3/...           WeChat Pay API v3 (wechatpay.py)
  /stripe/v1/...              Stripe's API (stripe.py); /stripe/checkout/pay/{id} the hosted page
  /_sandbox/pay               the buyer pays; the provider notifies Kami
  /_sandbox/refund-notify     WeChat Pay reports a refund it held in PROCESSING
  /_sandbox/resend            the provider delivers a trade's last notification again (a retry)
  /_sandbox/settings          how refunds settle (wechatpay_refund_status, stripe_refund_status)
  /_sandbox/bill              edit a provider's bill: add a line, drop one, amend one (Stripe, WeChat Pay, Alipay)
  /_sandbox/state, /_sandbox/channels, /_sandbox/notifications, /_sandbox/health
  /                           a page listing the trades, with pay buttons

State lives in memory, and in `<state dir>/state.json` when a state dir is given (written
after every change). Time is the local platform's clock (`infra/kami clock`), so the
sandbox's deadlines and signature timestamps agree with Kami's functions after
`clock advance`.
"""

from __future__ import annotations

import html
import json
import os
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import requests

from .. import clock as local_clock
from . import keys as sandbox_keys
from .alipay import Alipay
from .common import Request, Response, SandboxError, bill_state, html_response, json_response, pay_form, rows
from .stripe import Stripe
from .wechatpay import WechatPay

STATE_FILE = "state.json"
RUN_FILE = "sandbox.json"  # where a running sandbox says its URL (for `pay` from the CLI)
PREFIXES = ("alipay", "wechatpay", "stripe")
DEFAULT_SETTINGS = {"wechatpay_refund_status": "PROCESSING", "stripe_refund_status": "succeeded"}
ALLOWED_SETTINGS = {"wechatpay_refund_status": {"PROCESSING", "SUCCESS"},
                    "stripe_refund_status": {"succeeded", "pending"}}


def local_time() -> float:
    """The local platform's clock: the machine's time plus `infra/kami clock`'s offset."""
    return time.time() + local_clock.offset()


class SandboxServer(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class LoopbackService:
    """An HTTP server on loopback served from a thread of its own, which says where it
    is in `<state_dir>/<run_file>` while it runs (the sandbox, the supplier simulator).
    A subclass sets `server`, `url`, `state_dir` and `_thread = None`, and `run_file`."""

    run_file = RUN_FILE
    server: ThreadingHTTPServer
    url: str
    state_dir: Path | None
    _thread: threading.Thread | None

    def _serve(self, name: str, run_info: dict, poll_interval: float = 0.5) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, args=(poll_interval,), name=name,
                                        daemon=True)
        self._thread.start()
        if self.state_dir:
            self._write(self.state_dir / self.run_file, json.dumps({"url": self.url, "pid": os.getpid(),
                                                                   **run_info}) + "\n")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread:
            self._thread.join(5)
        if self.state_dir:
            run = self.state_dir / self.run_file
            try:
                if json.loads(run.read_text()).get("url") == self.url:
                    run.unlink()
            except (OSError, ValueError):
                pass

    def start(self):
        raise NotImplementedError

    def __enter__(self):
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)


class Sandbox(LoopbackService):
    """The sandbox: its keys, its state, its providers and its HTTP server."""

    def __init__(self, state_dir: Path | str | None = None, kami_api: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, clock: Callable[[], float] | None = None, log: Callable[[str], None] | None = None,
                 notify_timeout: float = 30.0, keys: sandbox_keys.SandboxKeys | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir else None
        self.keys = keys or sandbox_keys.load_or_create(self.state_dir)
        self.kami_api = kami_api.rstrip("/") if kami_api else None
        self._clock = clock or local_time
        self._log = log or (lambda line: print(f"{time.strftime('%H:%M:%S')} sandbox: {line}", flush=True))
        self.notify_timeout = notify_timeout
        self.lock = threading.RLock()
        self.state = self._load()
        self.settings = self.state.setdefault("settings", dict(DEFAULT_SETTINGS))
        self.sent: deque[dict] = deque(maxlen=500)
        self.server = SandboxServer((host, port), _handler(self))
        self.host, self.port = self.server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.providers = {"alipay": Alipay(self), "wechatpay": WechatPay(self), "stripe": Stripe(self)}
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Sandbox":
        self._serve("payment-sandbox", {"kami_api": self.kami_api})
        self.log(f"listening on {self.url} (Alipay {self.url}/alipay/gateway.do, WeChat Pay {self.url}/wechatpay, "
                 f"Stripe {self.url}/stripe; Kami API {self.kami_api or 'not set'})")
        return self

    # --- shared services ------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    @staticmethod
    def real_now() -> float:
        return time.time()

    def log(self, line: str) -> None:
        self._log(line)

    def channel_configs(self) -> dict[str, dict]:
        return sandbox_keys.channel_configs(self.url, keys=self.keys)

    def _load(self) -> dict:
        if self.state_dir and (self.state_dir / STATE_FILE).exists():
            return json.loads((self.state_dir / STATE_FILE).read_text())
        return {}

    def save(self) -> None:
        """Writes the state (call under the lock)."""
        if self.state_dir:
            self._write(self.state_dir / STATE_FILE, json.dumps(self.state, ensure_ascii=False))

    # --- routing ------------------------------------------------------------------------

    def route(self, req: Request) -> Response:
        for prefix in PREFIXES:
            root = "/" + prefix
            if req.path == root or req.path.startswith(root + "/"):
                req.target = req.path[len(root):] + (f"?{req.query}" if req.query else "")
                req.path = req.path[len(root):] or "/"
                return self.providers[prefix].handle(req)
        if req.path.startswith("/_sandbox/"):
            return self._control(req)
        if req.path == "/" and req.method == "GET":
            return self._index()
        return json_response(404, {"error": f"no such route {req.method} {req.path}"})

    def _control(self, req: Request) -> Response:
        name = req.path.removeprefix("/_sandbox/")
        as_html = req.is_form()
        try:
            if req.method == "GET":
                if name == "health":
                    return json_response(200, {"ok": True, "url": self.url, "kami_api": self.kami_api})
                if name == "state":
                    with self.lock:
                        return json_response(200, self.state)
                if name == "channels":
                    return json_response(200, self.channel_configs())
                if name == "notifications":
                    return json_response(200, list(self.sent))
                raise SandboxError(404, f"no such control route GET {req.path}")
            if req.method != "POST":
                raise SandboxError(405, "control routes take GET or POST")
            data = _fields(req)
            if name == "pay":
                result = self.pay(**data)
                return self._paid_page(result) if as_html else json_response(200, result)
            if name == "refund-notify":
                return json_response(200, self.refund_notify(**data))
            if name == "resend":
                return json_response(200, self.resend(**data))
            if name == "settings":
                return json_response(200, self.update_settings(data))
            if name == "bill":
                return json_response(200, self.bill(**data))
            raise SandboxError(404, f"no such control route POST {req.path}")
        except TypeError as e:  # an unknown or missing field
            return _refusal(as_html, 400, str(e))
        except SandboxError as e:
            return _refusal(as_html, e.status, e.message)

    # --- the buyer and the provider's notifications -------------------------------------------

    def pay(self, provider: str, payment_id: str, lose: bool = False, twice: bool = False, amount: int | None = None,
            notify_url: str | None = None, pay_url: str | None = None, trade_status: str | None = None) -> dict:
        """The buyer pays `payment_id` (Kami's out_trade_no; for Stripe the session id or
        metadata[payment_id]) and the provider notifies Kami: not at all with `lose`, twice
        with `twice`. `amount` (minor units) overrides what was paid. `pay_url` is opened
        first, as the buyer's browser opens it (Alipay creates its trade then).
        `trade_status` (Alipay): TRADE_SUCCESS (default), TRADE_FINISHED, WAIT_BUYER_PAY or
        TRADE_CLOSED."""
        impl = self._provider(provider)
        if amount is not None and (not isinstance(amount, int) or isinstance(amount, bool) or amount < 0):
            raise SandboxError(400, "amount is a whole number of minor units (fen, cents)")
        if pay_url:
            opened = requests.get(pay_url, timeout=self.notify_timeout)
            if opened.status_code != 200 or opened.headers.get("X-Sandbox-Error"):
                raise SandboxError(400, f"opening pay_url failed: HTTP {opened.status_code} "
                                        f"{opened.headers.get('X-Sandbox-Error') or opened.text[:200]}")
        with self.lock:
            summary, notification = impl.pay(str(payment_id), amount, {"notify_url": notify_url,
                                                                       "trade_status": trade_status})
            self.save()
            result = {"provider": provider, "payment_id": str(payment_id), "trade": summary, "lost": bool(lose)}
            if provider == "alipay":  # where the cashier sends the buyer back
                result["return_url"] = impl.return_url(impl.find(str(payment_id)))
            if provider == "stripe":
                result["success_url"] = impl.find(str(payment_id))["object"].get("success_url")
        self.log(f"{provider} {payment_id} paid" + (" (notification lost)" if lose else ""))
        result["notifications"] = [] if lose else [self.send(impl, notification) for _ in range(2 if twice else 1)]
        return result

    def refund_notify(self, out_refund_no: str, status: str = "SUCCESS", lose: bool = False, twice: bool = False,
                      notify_url: str | None = None) -> dict:
        """WeChat Pay settles a refund it answered PROCESSING and notifies its notify_url."""
        impl = self.providers["wechatpay"]
        with self.lock:
            summary, notification = impl.refund_notify(str(out_refund_no), status, {"notify_url": notify_url})
            self.save()
        sent = [] if lose else [self.send(impl, notification) for _ in range(2 if twice else 1)]
        return {"provider": "wechatpay", "refund": summary, "lost": bool(lose), "notifications": sent}

    def resend(self, provider: str, payment_id: str) -> dict:
        """Delivers the trade's (or WeChat refund's) last notification again, as the provider's retry."""
        impl = self._provider(provider)
        with self.lock:
            record = impl.find(str(payment_id))
            if record is None and provider == "wechatpay":
                record = next((r for refunds in self.state["wechatpay"]["refunds"].values() for r in refunds.values()
                               if str(payment_id) in (r["out_refund_no"], r["refund_id"])), None)
            notification = (record or {}).get("notification")
        if notification is None:
            raise SandboxError(404, f"{provider} {payment_id} has sent no notification")
        return {"provider": provider, "payment_id": str(payment_id), "notifications": [self.send(impl, notification)]}

    def update_settings(self, data: dict) -> dict:
        with self.lock:
            for key, value in data.items():
                if key not in ALLOWED_SETTINGS or value not in ALLOWED_SETTINGS[key]:
                    raise SandboxError(400, f"settings: {key}={value!r} (allowed: {ALLOWED_SETTINGS})")
                self.settings[key] = value
            self.save()
            return dict(self.settings)

    def bill(self, provider: str, action: str, **data) -> dict:
        """Edits `provider`'s bill (so a reconciliation meets each kind of difference):
        `add` a line (`kind` payment|refund, a positive `amount` in minor units, and what
        the provider's `add_bill_line` takes), `drop` every line naming `id`, `amend` the
        lines naming `id` (`amount`, `status`)."""
        impl = self._provider(provider)
        if not hasattr(impl, "add_bill_line"):
            raise SandboxError(400, f"the sandbox does not serve {provider}'s bill yet")
        with self.lock:
            bill = bill_state(impl.state)
            if action == "drop":
                bill["dropped"].append(str(data["id"]))
                result = {"dropped": str(data["id"])}
            elif action == "amend":
                change = {k: data[k] for k in ("amount", "status") if k in data}
                if not change:
                    raise SandboxError(400, "amend takes amount or status")
                bill["amended"].setdefault(str(data["id"]), {}).update(change)
                result = {"amended": str(data["id"]), **change}
            elif action == "add":
                kind, amount = data.pop("kind", "payment"), data.pop("amount", None)
                if kind not in ("payment", "refund") or not isinstance(amount, int) or amount <= 0:
                    raise SandboxError(400, "add takes kind payment|refund and a positive amount in minor units")
                result = impl.add_bill_line(kind, amount, data)
            else:
                raise SandboxError(400, "action must be add, drop or amend")
            self.save()
        self.log(f"{provider} bill: {action} {data}")
        return result

    def _provider(self, provider: str):
        if provider not in self.providers:
            raise SandboxError(400, f"provider must be one of {', '.join(self.providers)}")
        return self.providers[provider]

    def send(self, impl, notification: dict) -> dict:
        """One delivery of a notification to Kami (outside the lock: Kami may call back)."""
        headers, body = impl.deliver(notification)
        record = {"provider": impl.name, "kind": notification["kind"], "event_id": notification["event_id"],
                  "url": notification["url"], "at": int(self.now()), "status": None, "answer": None,
                  "accepted": False, "error": None}
        if not notification["url"]:
            record["error"] = "no notify_url: the provider has nowhere to send it"
            self.sent.append(record)
            return record
        try:
            r = requests.post(notification["url"], data=body, headers=headers, timeout=self.notify_timeout)
            record.update(status=r.status_code, answer=r.text[:500], accepted=impl.accepted(r.status_code, r.text))
        except requests.RequestException as e:
            record["error"] = f"{type(e).__name__}: {e}"
        self.sent.append(record)
        self.log(f"{impl.name} notification {notification['kind']} {notification['event_id']} -> {notification['url']}: "
                 + (f"HTTP {record['status']} {'accepted' if record['accepted'] else 'refused'}"
                    if record["error"] is None else record["error"]))
        return record

    # --- pages ------------------------------------------------------------------------------

    def checkout_page(self, impl: Stripe, session_id: str) -> Response:
        with self.lock:
            session = impl.state["sessions"].get(session_id)
            if session is None:
                return html_response(404, "Stripe Checkout", "<h1>Something went wrong</h1><p>No such session.</p>")
            obj = impl._refresh(session)["object"]
            body = ("<h1>Stripe Checkout (test mode)</h1>"
                    + rows([("amount", f"{obj['amount_total']} {obj['currency']} (minor units)"),
                            ("session", obj["id"]), ("status", obj["status"]),
                            ("client_reference_id", obj["client_reference_id"])]))
            if obj["status"] == "open":
                body += pay_form("stripe", obj["id"], "Pay")
        return html_response(200, "Stripe Checkout", body)

    def _paid_page(self, result: dict) -> Response:
        lines = "".join(f"<li>{html.escape(n['kind'])} to {html.escape(n['url'])}: "
                        f"{html.escape(str(n['status'] or n['error']))} {html.escape(n['answer'] or '')}</li>"
                        for n in result["notifications"])
        back = result.get("return_url") or result.get("success_url")
        link = f"<p><a href='{html.escape(back)}'>Back to the shop</a></p>" if back else ""
        return html_response(200, "Paid", f"<h1>Paid</h1><p>{html.escape(result['provider'])} "
                                          f"{html.escape(result['payment_id'])}</p><ul>{lines}</ul>{link}")

    def _index(self) -> Response:
        with self.lock:
            items = []
            for trades in self.state.get("alipay", {}).get("trades", {}).values():
                items += [("alipay", t["out_trade_no"], t["total_amount"] + " CNY", t["status"]) for t in trades.values()]
            for trades in self.state.get("wechatpay", {}).get("trades", {}).values():
                items += [("wechatpay", t["out_trade_no"], f"{t['total']} fen", t["trade_state"]) for t in trades.values()]
            for s in self.state.get("stripe", {}).get("sessions", {}).values():
                o = s["object"]
                items += [("stripe", o["id"], f"{o['amount_total']} {o['currency']}", o["status"])]
        table = "".join(f"<tr><td>{html.escape(p)}</td><td>{html.escape(i)}</td><td>{html.escape(a)}</td>"
                        f"<td>{html.escape(s)}</td><td>{pay_form(p, i) if s in ('WAIT_BUYER_PAY', 'NOTPAY', 'open') else ''}"
                        "</td></tr>" for p, i, a, s in items)
        return html_response(200, "Payment sandbox", f"<h1>Payment sandbox</h1><table>{table}</table>")


def _fields(req: Request) -> dict:
    """A control route's fields: JSON, or a form (as the pay buttons send)."""
    if req.is_form():
        data: dict = dict(req.form())
        for flag in ("lose", "twice"):
            if flag in data:
                data[flag] = data[flag].lower() in ("1", "true", "on", "yes")
        if data.get("amount") in ("", None):
            data.pop("amount", None)
        elif "amount" in data:
            try:
                data["amount"] = int(data["amount"])
            except ValueError:
                raise SandboxError(400, "amount is a whole number of minor units") from None
        return data
    try:
        data = json.loads(req.body or b"{}")
    except ValueError:
        raise SandboxError(400, "the body is not JSON") from None
    if not isinstance(data, dict):
        raise SandboxError(400, "the body is not a JSON object")
    return {k: v for k, v in data.items() if v is not None}


def _refusal(as_html: bool, status: int, message: str) -> Response:
    if as_html:
        return html_response(status, "Sandbox", f"<h1>Refused</h1><p>{html.escape(message)}</p>")
    return json_response(status, {"error": message})


def _handler(sandbox: Sandbox) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "KamiPaymentSandbox/1.0"

        def log_message(self, fmt, *args) -> None:  # one line per request through sandbox.log instead
            pass

        def _body(self) -> bytes:
            if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _dispatch(self) -> None:
            path, _, query = self.path.partition("?")
            try:
                req = Request(self.command, path, query, self.headers, self._body())
                resp = sandbox.route(req)
            except Exception:  # a bug in the sandbox: answer, and say where
                traceback.print_exc()
                resp = json_response(500, {"error": "sandbox internal error (see its log)"})
            if not path.startswith("/_sandbox/") or self.command != "GET":
                sandbox.log(f"{self.command} {path} -> {resp.status}")
            self.send_response(resp.status)
            for name, value in resp.headers:
                self.send_header(name, value)
            if resp.status != 204 and resp.status >= 200:
                self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            if resp.status != 204 and self.command != "HEAD":
                self.wfile.write(resp.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch

    return Handler


def start_sandbox(port: int = 0, state_dir: Path | str | None = sandbox_keys.DEFAULT_STATE_DIR,
                  kami_api: str | None = None, host: str = "127.0.0.1", clock: Callable[[], float] | None = None,
                  log: Callable[[str], None] | None = None, notify_timeout: float = 30.0) -> Sandbox:
    """Starts the sandbox in a daemon thread of this process and returns it (`.url`,
    `.channel_configs()`, `.pay(...)`, `.stop()`).

    `state_dir` keeps the keys and trades across restarts (None: fresh keys, memory only);
    `kami_api` is Kami's API base URL, where Stripe's webhook goes
    (`{kami_api}/webhooks/stripe/stripe-sandbox`); `clock` gives Unix seconds (default: the
    local platform's clock, `infra/kami clock`)."""
    return Sandbox(state_dir=state_dir, kami_api=kami_api, host=host, port=port, clock=clock, log=log,
                   notify_timeout=notify_timeout).start()
