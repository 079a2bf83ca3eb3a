"""Driving a running simulator from Python (tests, scripts), and setting up Kami to use it.

    sim = SupplierSim(url)
    base_url = sim.register("acme", "s3cret")              # Kami's supplier base_url
    sim.script("acme", ["hang", "success"], account="13800138000")
    ...                                                     # Kami submits, queries, retries
    assert len(sim.ledger("acme")) == 1                     # topped up once

`seed_kami` stores a supplier and a direct top-up product in Kami through its admin API,
as an operator would (the local platform's `up` does it for `sim-mobile`).
"""

from __future__ import annotations

import requests

DEMO_SUPPLIER = "sim-mobile"
DEMO_SKU = "mobile-credit-50"
DEMO_PRODUCT = {"sku": DEMO_SKU, "title": "Mobile credit 50 CNY", "price": {"amount": 5000, "currency": "CNY"},
                "delivery": {"type": "direct_topup", "supplier_product": "cmcc-50", "suppliers": [DEMO_SUPPLIER],
                             "account": {"label": "Phone number", "pattern": "^1[3-9][0-9]{9}$"}},
                "max_per_order": 1}


class SimRefused(RuntimeError):
    """The simulator refused a control call: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"supplier simulator: HTTP {status} {message}")
        self.status = status
        self.message = message


class SupplierSim:
    """The control routes (`/_sim/...`) of the simulator at `url`."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, route: str, body: dict | None = None, params: dict | None = None):
        r = requests.request(method, f"{self.url}/_sim/{route}", json=body,
                             params={k: v for k, v in (params or {}).items() if v is not None}, timeout=self.timeout)
        try:
            data = r.json()
        except ValueError:
            data = {"error": r.text[:300]}
        if not r.ok:
            raise SimRefused(r.status_code, data.get("error", str(data)) if isinstance(data, dict) else str(data))
        return data

    def base_url(self, supplier_id: str) -> str:
        """What Kami's supplier config calls `base_url`."""
        return f"{self.url}/s/{supplier_id}"

    def health(self) -> dict:
        return self._call("GET", "health")

    def register(self, supplier_id: str, secret: str) -> str:
        """Adds (or replaces) a supplier; returns its base_url."""
        return self._call("PUT", f"suppliers/{supplier_id}", {"secret": secret})["base_url"]

    def suppliers(self) -> list[dict]:
        return self._call("GET", "suppliers")

    def script(self, supplier_id: str, behaviours: list[str], account: str | None = None,
               request_id: str | None = None, hang_s: float | None = None, after_s: float | None = None,
               reason: str | None = None) -> dict:
        """Appends `behaviours` to the queue of an account or a request_id; each new
        request_id that matches takes the next one."""
        return self._call("POST", "script", {"supplier_id": supplier_id, "account": account,
                                             "request_id": request_id, "behaviours": behaviours, "hang_s": hang_s,
                                             "after_s": after_s, "reason": reason})

    def complete(self, supplier_id: str, request_id: str, status: str = "success", callback: bool = True,
                 times: int = 1, reason: str | None = None) -> dict:
        """Finishes a pending request; returns it and the callbacks' answers from Kami."""
        return self._call("POST", "complete", {"supplier_id": supplier_id, "request_id": request_id, "status": status,
                                               "callback": callback, "times": times, "reason": reason})

    def complete_pending(self, supplier_id: str | None = None, status: str = "success",
                         callback: bool = True) -> dict:
        return self._call("POST", "complete-pending", {"supplier_id": supplier_id, "status": status,
                                                       "callback": callback})

    def callback(self, supplier_id: str, request_id: str, status: str, callback_url: str,
                 supplier_ref: str | None = None, reason: str | None = None, secret: str | None = None) -> dict:
        """Sends any callback (`secret`: sign with this one instead, a forgery); returns
        what was sent and Kami's answer (`kami_status`, `kami_body`)."""
        return self._call("POST", "callback", {"supplier_id": supplier_id, "request_id": request_id, "status": status,
                                               "callback_url": callback_url, "supplier_ref": supplier_ref,
                                               "reason": reason, "secret": secret})

    def flaky(self, supplier_id: str, weights: dict[str, float] | None, seed: int = 1,
              hang_s: float | None = None) -> dict:
        """Unscripted new requests draw their behaviour by `weights` (seeded); None: off."""
        return self._call("POST", "flaky", {"supplier_id": supplier_id, "weights": weights, "seed": seed,
                                            "hang_s": hang_s})

    def ledger(self, supplier_id: str | None = None) -> list[dict]:
        return self._call("GET", "ledger", params={"supplier_id": supplier_id})

    def requests(self, supplier_id: str | None = None) -> dict:
        """{"requests": [...], "refused": [...]}."""
        return self._call("GET", "requests", params={"supplier_id": supplier_id})

    def request(self, supplier_id: str, request_id: str) -> dict | None:
        return next((r for r in self.requests(supplier_id)["requests"] if r["request_id"] == request_id), None)

    def reset(self) -> dict:
        return self._call("POST", "reset")


def supplier_config(base_url: str, secret: str, timeout_ms: int = 3000) -> dict:
    """Kami's `PUT /admin/suppliers/{id}` body for an http_json supplier at `base_url`."""
    return {"kind": "http_json", "base_url": base_url, "secret": secret, "timeout_ms": timeout_ms, "enabled": True,
            "circuit": {"failures": 5, "window_s": 60, "cooldown_s": 30}, "unknown_outcome_deadline_s": 600}


def seed_kami(kami_api: str, admin_token: str, sim_url: str, secret: str, supplier_id: str = DEMO_SUPPLIER,
              product: dict | None = DEMO_PRODUCT, timeout: float = 30) -> None:
    """Registers `supplier_id` at the simulator, stores it in Kami (`PUT
    /admin/suppliers/{id}`) and creates `product` (`POST /admin/products`; 409: it exists).
    Raises when Kami refuses."""
    api = kami_api.rstrip("/")
    auth = {"Authorization": f"Bearer {admin_token}"}
    base_url = SupplierSim(sim_url).register(supplier_id, secret)
    r = requests.put(f"{api}/admin/suppliers/{supplier_id}", json=supplier_config(base_url, secret), headers=auth,
                     timeout=timeout)
    if r.status_code not in (200, 201):
        raise RuntimeError(f"seeding supplier {supplier_id} failed: HTTP {r.status_code} {r.text[:300]}")
    if product is not None:
        r = requests.post(f"{api}/admin/products", json=product, headers=auth, timeout=timeout)
        if r.status_code not in (201, 409):
            raise RuntimeError(f"seeding product {product['sku']} failed: HTTP {r.status_code} {r.text[:300]}")
