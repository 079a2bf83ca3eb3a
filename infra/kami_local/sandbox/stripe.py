"""Stripe's API (`/stripe/v1/...`) for Checkout in payment mode, in test mode.

Requests: `Authorization: Bearer sk_test_...` (or HTTP basic with the key as user name),
form-encoded bodies with Stripe's nested names (`line_items[0][price_data][currency]`,
`metadata[order_id]`), `Idempotency-Key` on POSTs: the same key with the same parameters
replays the first answer (`Idempotent-Replayed: true`), with others is 400
`idempotency_error`. Unknown parameters are refused as Stripe refuses them.

- `POST /v1/checkout/sessions` (mode=payment, line_items with price_data, client_reference_id,
  metadata, success_url, cancel_url, customer_email, expires_at: 30 min to 24 h ahead,
  payment_intent_data[metadata]) → the Checkout Session (`cs_test_...`, status open,
  payment_status unpaid, url: the sandbox's checkout page). `payment_intent` is null
  until the buyer pays, as with Stripe's current API versions.
- `GET /v1/checkout/sessions/{id}` (`expand[]=payment_intent`, `line_items`)
- `POST /v1/checkout/sessions/{id}/expire` (open sessions only)
- `POST /v1/refunds` (payment_intent or charge, amount, reason, metadata), `GET /v1/refunds/{id}`
- `GET /v1/payment_intents/{id}`
- `GET /v1/balance_transactions` (`created[gte]`, `created[lt]`, `limit`, `starting_after`,
  `expand[]=data.source`): the account's bill, one `charge` per payment and one `refund`
  per refund the sandbox made (newest first, as Stripe lists), edited through
  `/_sandbox/bill` (add a line, drop one, or change one's amount or status).

Paying sends `checkout.session.completed` to the configured webhook URL, signed with the
endpoint's secret by the `stripe` package's own `WebhookSignature` (`Stripe-Signature:
t=...,v1=...`).
"""

from __future__ import annotations

import base64
import json
import re

import stripe

from .common import Request, Response, SandboxError, bill_state, json_response, token

SESSION_PARAMS = {
    "mode", "line_items", "client_reference_id", "metadata", "success_url", "cancel_url", "expires_at",
    "customer_email", "customer", "customer_creation", "payment_method_types", "payment_intent_data", "locale",
    "submit_type", "billing_address_collection", "allow_promotion_codes", "ui_mode", "return_url", "currency",
    "phone_number_collection", "automatic_tax", "custom_text", "consent_collection", "after_expiration",
    "expand", "payment_method_options", "shipping_address_collection", "saved_payment_method_options",
    "redirect_on_completion", "adaptive_pricing", "discounts", "tax_id_collection", "invoice_creation",
    "custom_fields", "payment_method_configuration", "payment_method_collection", "origin_context", "branding_settings",
}
REFUND_PARAMS = {"payment_intent", "charge", "amount", "reason", "metadata", "expand", "refund_application_fee",
                 "reverse_transfer", "instructions_email", "origin", "customer", "currency"}
REFUND_REASONS = {"duplicate", "fraudulent", "requested_by_customer"}
MIN_EXPIRY, MAX_EXPIRY = 30 * 60, 24 * 3600
KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")


class StripeError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, validation: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.validation = validation  # refused before running: no idempotent result is kept
        error = {"message": message, "type": type_}
        if code:
            error.update(code=code, doc_url=f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}")
        if param:
            error["param"] = param
        self.body = {"error": error}


def parse_form(pairs: list[tuple[str, str]]) -> dict:
    """Stripe's nested form encoding (`a[b][0][c]=v`, `expand[]=x`) as dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        m = KEY.match(key)
        if not m:
            raise StripeError(400, f"Invalid parameter name: {key}")
        parts = [m.group(1), *re.findall(r"\[([^\[\]]*)\]", m.group(2))]
        node = root
        for i, part in enumerate(parts):
            if part == "":
                part = str(len(node))
            if i == len(parts) - 1:
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeError(400, f"Invalid parameter: {key} mixes a value and a hash")
                node = child

    def lists(node):
        if not isinstance(node, dict):
            return node
        node = {k: lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
        return node
    return lists(root)


def integer(value, param: str, minimum: int = 0) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise StripeError(400, f"Invalid integer: {value}", param=param) from None
    if number < minimum:
        raise StripeError(400, f"This value must be greater than or equal to {minimum}.", param=param)
    return number


def metadata(value, param: str = "metadata") -> dict:
    if value in (None, ""):
        return {}
    if not isinstance(value, dict):
        raise StripeError(400, "Invalid object", param=param)
    if len(value) > 50:
        raise StripeError(400, "You can specify up to 50 keys.", param=param)
    for k, v in value.items():
        if len(k) > 40 or not isinstance(v, str) or len(v) > 500:
            raise StripeError(400, "Metadata keys can be up to 40 characters and values up to 500 characters.",
                              param=f"{param}[{k}]")
    return dict(value)


class Stripe:
    name = "stripe"

    def __init__(self, sandbox) -> None:
        self.sb = sandbox
        keys = sandbox.keys
        self.accounts = {keys.stripe_secret_key: {"id": keys.stripe_account, "secret_key": keys.stripe_secret_key,
                                                  "webhook_secrets": [keys.stripe_webhook_secret],
                                                  "channel_id": "stripe-sandbox"}}
        self.state = sandbox.state.setdefault("stripe", {"sessions": {}, "payment_intents": {}, "refunds": {},
                                                         "idempotency": {}})

    # --- HTTP ----------------------------------------------------------------------------

    def _headers(self, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        return [("Request-Id", "req_" + token(14)), ("Stripe-Version", stripe.api_version), *(extra or [])]

    def handle(self, req: Request) -> Response:
        if req.method == "GET" and req.path.startswith("/checkout/pay/"):
            return self.sb.checkout_page(self, req.path.removeprefix("/checkout/pay/"))
        idem = req.header("Idempotency-Key") if req.method == "POST" else ""
        extra = [("Idempotency-Key", idem)] if idem else []
        try:
            account_key = self._authenticate(req)
            pairs = req.query_pairs() + (req.form() if req.method == "POST" else [])
            params = parse_form(pairs)
            with self.sb.lock:
                if idem:
                    slot = f"{account_key[-12:]}:{idem}"
                    fingerprint = json.dumps([req.method, req.path, sorted(pairs)])
                    seen = self.state["idempotency"].get(slot)
                    if seen is not None:
                        if seen["fingerprint"] != fingerprint:
                            raise StripeError(400, "Keys for idempotent requests can only be used with the same "
                                              f"parameters they were first used with. Try using a key other than "
                                              f"'{idem}' if you meant to execute a different request.",
                                              type_="idempotency_error")
                        return Response(seen["status"], seen["body"].encode(), [
                            ("Content-Type", "application/json"),
                            *self._headers([*extra, ("Idempotent-Replayed", "true"),
                                            ("Original-Request", seen["request_id"])])])
                try:
                    status, data = self._route(req, self.accounts[account_key], params)
                except StripeError as e:
                    if e.validation or not idem:
                        raise
                    status, data = e.status, e.body
                answer = json_response(status, data, self._headers(extra))
                if idem:
                    self.state["idempotency"][slot] = {"fingerprint": fingerprint, "status": status,
                                                       "body": answer.body.decode(),
                                                       "request_id": answer.header("Request-Id")}
                self.sb.save()
                return answer
        except StripeError as e:
            self.sb.log(f"stripe {req.method} {req.path}: {e.status} {e}")
            return json_response(e.status, e.body, self._headers(extra))

    def _authenticate(self, req: Request) -> str:
        auth = req.header("Authorization")
        key = ""
        if auth.startswith("Bearer "):
            key = auth[7:].strip()
        elif auth.startswith("Basic "):
            try:
                key = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
            except ValueError:
                key = ""
        if not key:
            raise StripeError(401, "You did not provide an API key. You need to provide your API key in the "
                                   "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                                   "YOUR_SECRET_KEY').")
        if key not in self.accounts:
            raise StripeError(401, f"Invalid API Key provided: {key[:8]}{'*' * max(len(key) - 12, 0)}{key[-4:]}")
        return key

    def _route(self, req: Request, account: dict, params: dict) -> tuple[int, dict]:
        path, method = req.path, req.method
        parts = path.strip("/").split("/")
        if method == "POST" and path == "/v1/checkout/sessions":
            return 200, self._create_session(account, params)
        if parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 4 and method == "GET":
            return 200, self._view(self._session(account, parts[3]), params.get("expand") or [])
        if parts[:3] == ["v1", "checkout", "sessions"] and len(parts) == 5 and parts[4] == "expire" and method == "POST":
            return 200, self._expire(self._session(account, parts[3]))
        if method == "POST" and path == "/v1/refunds":
            return 200, self._refund(account, params)
        if parts[:2] == ["v1", "refunds"] and len(parts) == 3 and method == "GET":
            refund = self.state["refunds"].get(parts[2])
            if refund is None or refund["account"] != account["id"]:
                raise StripeError(404, f"No such refund: '{parts[2]}'", code="resource_missing", param="id")
            return 200, refund["object"]
        if parts[:2] == ["v1", "payment_intents"] and len(parts) == 3 and method == "GET":
            return 200, self._payment_intent(account, parts[2], "id")["object"]
        if method == "GET" and path == "/v1/balance_transactions":
            return 200, self._balance_transactions(account, params)
        raise StripeError(404, f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
                               "or we can help at https://support.stripe.com/.")

    # --- sessions (under the lock) ---------------------------------------------------------

    def _create_session(self, account: dict, params: dict) -> dict:
        for name in params:
            if name not in SESSION_PARAMS:
                raise StripeError(400, f"Received unknown parameter: {name}", param=name)
        if not params.get("mode"):
            raise StripeError(400, "Missing required param: mode.", param="mode")
        if params["mode"] != "payment":
            raise StripeError(400, f"The sandbox takes mode=payment only (got {params['mode']}).", param="mode")
        items = params.get("line_items")
        if not isinstance(items, list) or not items:
            raise StripeError(400, "Missing required param: line_items.", param="line_items")
        currencies, total, line_items = set(), 0, []
        for i, item in enumerate(items):
            where = f"line_items[{i}]"
            if not isinstance(item, dict):
                raise StripeError(400, "Invalid object", param=where)
            if "price" in item:
                raise StripeError(400, f"No such price: '{item['price']}'", code="resource_missing",
                                  param=f"{where}[price]")
            price = item.get("price_data")
            if not isinstance(price, dict):
                raise StripeError(400, "You must specify either `price` or `price_data` for each line item.",
                                  param=f"{where}[price_data]")
            currency = str(price.get("currency", "")).lower()
            if not re.fullmatch(r"[a-z]{3}", currency):
                raise StripeError(400, "Missing required param: line_items[0][price_data][currency].",
                                  param=f"{where}[price_data][currency]")
            if "unit_amount" not in price:
                raise StripeError(400, f"Missing required param: {where}[price_data][unit_amount].",
                                  param=f"{where}[price_data][unit_amount]")
            unit = integer(price["unit_amount"], f"{where}[price_data][unit_amount]")
            product = price.get("product_data")
            if not (isinstance(product, dict) and product.get("name")) and not price.get("product"):
                raise StripeError(400, f"Missing required param: {where}[price_data][product_data][name].",
                                  param=f"{where}[price_data][product_data][name]")
            quantity = integer(item.get("quantity", ""), f"{where}[quantity]", 1) if "quantity" in item else None
            if quantity is None:
                raise StripeError(400, f"Missing required param: {where}[quantity].", param=f"{where}[quantity]")
            currencies.add(currency)
            total += unit * quantity
            line_items.append({"id": "li_" + token(24), "object": "item", "amount_subtotal": unit * quantity,
                               "amount_total": unit * quantity, "currency": currency,
                               "description": (product or {}).get("name", ""), "quantity": quantity,
                               "price": {"object": "price", "currency": currency, "unit_amount": unit,
                                         "product": "prod_" + token(14), "type": "one_time"}})
        if len(currencies) > 1:
            raise StripeError(400, "Checkout does not support multiple currencies.", param="line_items")
        now = int(self.sb.now())
        expires_at = now + MAX_EXPIRY
        if params.get("expires_at") not in (None, ""):
            expires_at = integer(params["expires_at"], "expires_at")
            if expires_at < now + MIN_EXPIRY:
                raise StripeError(400, "The `expires_at` timestamp must be at least 30 minutes from Checkout "
                                       "Session creation.", param="expires_at")
            if expires_at > now + MAX_EXPIRY:
                raise StripeError(400, "The `expires_at` timestamp must be less than 24 hours from Checkout "
                                       "Session creation.", param="expires_at")
        reference = params.get("client_reference_id")
        if reference is not None and len(reference) > 200:
            raise StripeError(400, "client_reference_id must be at most 200 characters.", param="client_reference_id")
        pi_data = params.get("payment_intent_data") or {}
        session_id = "cs_test_" + token(58)
        obj = {
            "id": session_id, "object": "checkout.session", "adaptive_pricing": {"enabled": False},
            "after_expiration": None, "allow_promotion_codes": None, "amount_subtotal": total, "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None, "cancel_url": params.get("cancel_url"),
            "client_reference_id": reference or None, "client_secret": None, "consent": None,
            "consent_collection": None, "created": now, "currency": currencies.pop(), "custom_fields": [],
            "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                            "terms_of_service_acceptance": None},
            "customer": None, "customer_creation": "if_required", "customer_details": None,
            "customer_email": params.get("customer_email"), "expires_at": expires_at, "invoice": None,
            "invoice_creation": {"enabled": False, "invoice_data": {}}, "livemode": False, "locale": params.get("locale"),
            "metadata": metadata(params.get("metadata")), "mode": "payment", "payment_intent": None,
            "payment_link": None, "payment_method_collection": "if_required",
            "payment_method_configuration_details": None, "payment_method_options": {},
            "payment_method_types": params.get("payment_method_types") or ["card"], "payment_status": "unpaid",
            "phone_number_collection": {"enabled": False}, "recovered_from": None,
            "saved_payment_method_options": None, "setup_intent": None, "shipping_address_collection": None,
            "shipping_cost": None, "shipping_details": None, "shipping_options": [], "status": "open",
            "submit_type": params.get("submit_type"), "subscription": None, "success_url": params.get("success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
            "ui_mode": params.get("ui_mode") or "hosted",
            "url": f"{self.sb.url}/stripe/checkout/pay/{session_id}",
        }
        self.state["sessions"][session_id] = {
            "account": account["id"], "object": obj, "line_items": line_items,
            "payment_intent_metadata": metadata((pi_data or {}).get("metadata"), "payment_intent_data[metadata]"),
        }
        self.sb.log(f"stripe session {session_id} opened ({total} {obj['currency']})")
        return obj

    def _refresh(self, session: dict) -> dict:
        obj = session["object"]
        if obj["status"] == "open" and self.sb.now() > obj["expires_at"]:
            obj.update(status="expired", url=None)
        return session

    def _session(self, account: dict, session_id: str) -> dict:
        session = self.state["sessions"].get(session_id)
        if session is None or session["account"] != account["id"]:
            raise StripeError(404, f"No such checkout.session: '{session_id}'", code="resource_missing", param="session")
        return self._refresh(session)

    def _view(self, session: dict, expand) -> dict:
        obj = dict(session["object"])
        expand = expand if isinstance(expand, list) else [expand]
        if "payment_intent" in expand and obj.get("payment_intent"):
            obj["payment_intent"] = self.state["payment_intents"][obj["payment_intent"]]["object"]
        if "line_items" in expand:
            obj["line_items"] = {"object": "list", "data": session["line_items"], "has_more": False,
                                 "url": f"/v1/checkout/sessions/{obj['id']}/line_items"}
        return obj

    def _expire(self, session: dict) -> dict:
        obj = session["object"]
        if obj["status"] != "open":
            raise StripeError(400, f"Only Checkout Sessions with a status in [\"open\"] can be expired. This "
                                   f"Checkout Session has a status of \"{obj['status']}\".", validation=False)
        obj.update(status="expired", url=None)
        self.sb.log(f"stripe session {obj['id']} expired")
        return obj

    # --- refunds (under the lock) ------------------------------------------------------------

    def _payment_intent(self, account: dict, pi_id: str, param: str) -> dict:
        pi = self.state["payment_intents"].get(pi_id)
        if pi is None or pi["account"] != account["id"]:
            raise StripeError(404, f"No such payment_intent: '{pi_id}'", code="resource_missing", param=param)
        return pi

    def _refund(self, account: dict, params: dict) -> dict:
        for name in params:
            if name not in REFUND_PARAMS:
                raise StripeError(400, f"Received unknown parameter: {name}", param=name)
        if params.get("payment_intent"):
            pi = self._payment_intent(account, params["payment_intent"], "payment_intent")
        elif params.get("charge"):
            pi = next((p for p in self.state["payment_intents"].values()
                       if p["object"]["latest_charge"] == params["charge"] and p["account"] == account["id"]), None)
            if pi is None:
                raise StripeError(404, f"No such charge: '{params['charge']}'", code="resource_missing", param="charge")
        else:
            raise StripeError(400, "One of the following params should be provided for this request: "
                                   "payment_intent or charge.")
        if params.get("reason") not in (None, "") and params["reason"] not in REFUND_REASONS:
            raise StripeError(400, f"Invalid reason: must be one of {', '.join(sorted(REFUND_REASONS))}", param="reason")
        obj = pi["object"]
        remaining = obj["amount_received"] - pi["amount_refunded"]
        charge = obj["latest_charge"]
        if remaining <= 0:
            raise StripeError(400, f"Charge {charge} has already been refunded.", code="charge_already_refunded",
                              validation=False)
        amount = integer(params["amount"], "amount", 1) if params.get("amount") not in (None, "") else remaining
        if amount > remaining:
            raise StripeError(400, f"Refund amount ({amount} {obj['currency']}) is greater than unrefunded amount on "
                                   f"charge ({remaining} {obj['currency']})", code="amount_too_large", param="amount",
                              validation=False)
        pi["amount_refunded"] += amount
        refund_id = "re_" + token(24)
        refund = {"id": refund_id, "object": "refund", "amount": amount, "balance_transaction": "txn_" + token(24),
                  "charge": charge, "created": int(self.sb.now()), "currency": obj["currency"],
                  "destination_details": {"card": {"reference_status": "pending",
                                                   "reference_type": "acquirer_reference_number", "type": "refund"},
                                          "type": "card"},
                  "metadata": metadata(params.get("metadata")), "payment_intent": obj["id"],
                  "reason": params.get("reason") or None, "receipt_number": None, "source_transfer_reversal": None,
                  "status": self.sb.settings["stripe_refund_status"], "transfer_reversal": None}
        self.state["refunds"][refund_id] = {"account": account["id"], "object": refund}
        self.sb.log(f"stripe refund {refund_id} of {amount} on {obj['id']}: {refund['status']}")
        return refund

    # --- the bill (under the lock) ---------------------------------------------------------

    def _transactions(self, account_id: str) -> list[dict]:
        """Every balance transaction of the account, sources expanded, edits applied."""
        txns = []
        for pi in self.state["payment_intents"].values():
            if pi["account"] != account_id:
                continue
            obj = pi["object"]
            charge = {"id": obj["latest_charge"], "object": "charge", "amount": obj["amount_received"],
                      "currency": obj["currency"], "payment_intent": obj["id"], "metadata": dict(obj["metadata"]),
                      "status": "succeeded", "created": obj["created"]}
            txns.append({"id": "txn_" + obj["latest_charge"][3:], "object": "balance_transaction",
                         "amount": obj["amount_received"], "currency": obj["currency"], "created": obj["created"],
                         "type": "charge", "status": "available", "source": charge,
                         "_ids": {obj["id"], obj["latest_charge"], obj["metadata"].get("payment_id")}})
        for refund in self.state["refunds"].values():
            if refund["account"] != account_id:
                continue
            obj = refund["object"]
            txns.append({"id": obj["balance_transaction"], "object": "balance_transaction", "amount": -obj["amount"],
                         "currency": obj["currency"], "created": obj["created"], "type": "refund",
                         "status": "available", "source": dict(obj),
                         "_ids": {obj["id"], obj["metadata"].get("refund_id")}})
        bill = bill_state(self.state)
        txns += [dict(t, _ids={t["source"]["id"], t["source"]["metadata"].get("payment_id"),
                               t["source"]["metadata"].get("refund_id")})
                 for t in bill["extra"] if t["_account"] == account_id]
        kept = []
        for txn in txns:
            ids = txn.pop("_ids") - {None}
            if ids & set(bill["dropped"]):
                continue
            txn.pop("_account", None)
            for key in sorted(ids):
                amended = bill["amended"].get(key)
                if amended:
                    txn = json.loads(json.dumps(txn))
                    if "amount" in amended:
                        txn["amount"] = amended["amount"] if txn["type"] == "charge" else -amended["amount"]
                        txn["source"]["amount"] = amended["amount"]
                    if "status" in amended:
                        txn["source"]["status"] = amended["status"]
            kept.append(txn)
        return sorted(kept, key=lambda t: (t["created"], t["id"]), reverse=True)

    def _balance_transactions(self, account: dict, params: dict) -> dict:
        created = params.get("created") or {}
        if not isinstance(created, dict):
            created = {"gte": created, "lte": created}
        bounds = {op: integer(created[op], f"created[{op}]") for op in ("gt", "gte", "lt", "lte") if op in created}
        limit = integer(params.get("limit") or 10, "limit", 1)
        if limit > 100:
            raise StripeError(400, "This value must be less than or equal to 100.", param="limit")
        expand = params.get("expand") or []
        expand = expand if isinstance(expand, list) else [expand]
        checks = {"gt": lambda c, b: c > b, "gte": lambda c, b: c >= b, "lt": lambda c, b: c < b,
                  "lte": lambda c, b: c <= b}
        txns = [t for t in self._transactions(account["id"])
                if all(checks[op](t["created"], b) for op, b in bounds.items())]
        after = params.get("starting_after")
        if after:
            at = next((i for i, t in enumerate(txns) if t["id"] == after), None)
            if at is None:
                raise StripeError(400, f"No such balance_transaction: '{after}'", param="starting_after")
            txns = txns[at + 1:]
        page = txns[:limit]
        if "data.source" not in expand:
            page = [dict(t, source=t["source"]["id"]) for t in page]
        return {"object": "list", "data": page, "has_more": len(txns) > limit, "url": "/v1/balance_transactions"}

    def add_bill_line(self, kind: str, amount: int, data: dict) -> dict:
        """A line Kami never saw: `currency`, `payment_id` / `refund_id`, `payment_intent`,
        a refund's `status`."""
        bill = bill_state(self.state)
        account = next(iter(self.accounts.values()))
        now = int(self.sb.now())
        pi_id = data.get("payment_intent") or "pi_" + token(24)
        if kind == "payment":
            source = {"id": "ch_" + token(24), "object": "charge", "amount": amount, "payment_intent": pi_id,
                      "currency": data.get("currency", "cny"), "status": "succeeded", "created": now,
                      "metadata": {k: data[k] for k in ("payment_id",) if k in data}}
        else:
            source = {"id": "re_" + token(24), "object": "refund", "amount": amount, "payment_intent": pi_id,
                      "currency": data.get("currency", "cny"), "status": data.get("status", "succeeded"),
                      "created": now, "metadata": {k: data[k] for k in ("refund_id",) if k in data}}
        txn = {"id": "txn_" + token(24), "object": "balance_transaction",
               "amount": amount if kind == "payment" else -amount, "currency": source["currency"], "created": now,
               "type": "charge" if kind == "payment" else "refund", "status": "available", "source": source,
               "_account": account["id"]}
        bill["extra"].append(txn)
        return {"added": txn["id"], "source": source["id"], "payment_intent": pi_id, "provider_ref": pi_id}

    # --- paying and notifying (the control routes, under the lock) ----------------------------

    def find(self, payment_id: str) -> dict | None:
        sessions = self.state["sessions"]
        if payment_id in sessions:
            return self._refresh(sessions[payment_id])
        for key in ("payment_id", "order_id"):
            found = [s for s in sessions.values() if s["object"]["metadata"].get(key) == payment_id]
            if found:
                return self._refresh(max(found, key=lambda s: s["object"]["created"]))
        found = [s for s in sessions.values() if s["object"]["client_reference_id"] == payment_id]
        return self._refresh(max(found, key=lambda s: s["object"]["created"])) if found else None

    def pay(self, payment_id: str, amount: int | None, options: dict) -> tuple[dict, dict | None]:
        session = self.find(payment_id)
        if session is None:
            raise SandboxError(404, f"no Stripe Checkout Session for {payment_id} (session id, metadata[payment_id], "
                                    "metadata[order_id] or client_reference_id)")
        obj = session["object"]
        if obj["status"] != "open":
            raise SandboxError(409, f"Checkout Session {obj['id']} is {obj['status']}: it cannot be paid")
        account = next(a for a in self.accounts.values() if a["id"] == session["account"])
        url = options.get("notify_url") or (f"{self.sb.kami_api}/webhooks/stripe/{account['channel_id']}"
                                            if self.sb.kami_api else None)
        if not url:
            raise SandboxError(409, "the sandbox does not know Kami's webhook URL for Stripe: start it with "
                                    "--kami-api URL (or pass notify_url)")
        now = int(self.sb.now())
        paid = amount if amount is not None else obj["amount_total"]
        pi_id, charge = "pi_" + token(24), "ch_" + token(24)
        self.state["payment_intents"][pi_id] = {"account": session["account"], "amount_refunded": 0, "object": {
            "id": pi_id, "object": "payment_intent", "amount": paid, "amount_received": paid,
            "currency": obj["currency"], "status": "succeeded", "latest_charge": charge, "created": now,
            "livemode": False, "metadata": session["payment_intent_metadata"], "payment_method_types": ["card"],
        }}
        obj.update(status="complete", payment_status="paid", payment_intent=pi_id, amount_total=paid,
                   amount_subtotal=paid, url=None, customer_details={
                       "address": {"city": None, "country": "CN", "line1": None, "line2": None, "postal_code": None,
                                   "state": None},
                       "email": obj.get("customer_email") or "sandbox-buyer@example.com", "name": "Sandbox Buyer",
                       "phone": None, "tax_exempt": "none", "tax_ids": []})
        event = {"id": "evt_" + token(24), "object": "event", "api_version": stripe.api_version, "created": now,
                 "data": {"object": self._view(session, [])}, "livemode": False, "pending_webhooks": 1,
                 "request": {"id": None, "idempotency_key": None}, "type": "checkout.session.completed"}
        notification = {"url": url, "event_id": event["id"], "kind": event["type"], "account_key": account["secret_key"],
                        "body": json.dumps(event, indent=2, ensure_ascii=False)}
        session["notification"] = notification
        return self.summary(session), notification

    def deliver(self, notification: dict) -> tuple[dict, bytes]:
        """Signed afresh at each delivery (a new `t`), as Stripe's retries are; one `v1` per
        active endpoint secret."""
        body = notification["body"]
        secrets = self.accounts[notification["account_key"]]["webhook_secrets"]
        now = int(self.sb.now())
        header = stripe.WebhookSignature.generate_signature_header(body, secrets[0], now)
        for secret in secrets[1:]:
            header += ",v1=" + stripe.WebhookSignature._compute_signature(f"{now}.{body}", secret)
        return {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}, body.encode()

    @staticmethod
    def accepted(status: int, answer: str) -> bool:
        return 200 <= status < 300

    @staticmethod
    def summary(session: dict) -> dict:
        obj = session["object"]
        return {k: obj.get(k) for k in ("id", "status", "payment_status", "amount_total", "currency", "payment_intent",
                                        "client_reference_id", "metadata")}
