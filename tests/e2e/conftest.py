"""End-to-end harness: starts the whole local platform (moto, provisioning, every function
under the emulator, the HTTP API, the SQS mapping, the schedule) once per session, on
free loopback ports, and stops it afterwards. Nothing here sleeps to synchronise: every
wait polls with a deadline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))

from kami_local import provision  # noqa: E402
from kami_local import stripe_webhook  # noqa: E402

ADMIN = {"Authorization": f"Bearer {provision.local_secrets()['AdminTokenSecret']}"}
START_TIMEOUT = float(os.environ.get("KAMI_E2E_START_TIMEOUT", 900))  # includes a cold build


def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 0.2):
    """Polls `check` until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Platform:
    def __init__(self, api: str, endpoint: str, resources: dict, log_dir: Path, sandbox: str = "",
                 supplier_sim: str = "") -> None:
        self.sandbox = sandbox
        self.supplier_sim = supplier_sim  # the supplier simulator's URL (docs/suppliers.md)
        self.api = api
        self.endpoint = endpoint
        self.resources = resources
        self.log_dir = log_dir

    def status(self) -> dict:
        return requests.get(f"{self.api}/_local/status", timeout=10).json()

    def create_product(self, keys: int, price: int = 990, currency: str = "CNY",
                       settings: dict | None = None) -> tuple[str, list[str]]:
        sku = f"e2e-{uuid.uuid4().hex[:10]}"
        r = requests.post(f"{self.api}/admin/products", headers=ADMIN, timeout=30, json={
            "sku": sku, "title": "E2E card key", "price": {"amount": price, "currency": currency},
            "delivery": {"type": "card_key"}, "max_per_order": 5, **(settings or {})})
        assert r.status_code == 201, r.text
        codes = [f"E2E-{uuid.uuid4().hex.upper()}" for _ in range(keys)]
        r = requests.post(f"{self.api}/admin/products/{sku}/card-keys", headers=ADMIN, json={"keys": codes}, timeout=60)
        assert r.status_code in (200, 201), r.text
        assert r.json()["accepted"] == keys, r.text
        return sku, codes

    def create_order(self, sku: str, quantity: int = 1) -> dict:
        r = requests.post(f"{self.api}/orders", timeout=30, headers={"Idempotency-Key": str(uuid.uuid4())},
                          json={"sku": sku, "quantity": quantity, "buyer": {"email": "e2e@example.com"}})
        assert r.status_code == 201, r.text
        return r.json()

    def paid_event(self, order_id: str) -> dict:
        amount, currency = stripe_webhook.order_amount(self.endpoint, self.resources["KamiTable"], order_id)
        return stripe_webhook.checkout_completed(order_id, amount, currency)

    def get_order(self, order: dict) -> dict:
        r = requests.get(f"{self.api}/orders/{order['order_id']}", timeout=30,
                         headers={"Authorization": f"Bearer {order['access_token']}"})
        assert r.status_code == 200, r.text
        return r.json()

    def wait_delivered(self, order: dict, timeout: float) -> dict:
        def delivered():
            body = self.get_order(order)
            assert body["status"] not in ("delivery_failed", "expired", "cancelled"), body["status"]
            return body if body["status"] == "delivered" else None

        return wait_for(f"order {order['order_id']} delivered", delivered, timeout, interval=0.25)

    def fire_until(self, what: str, done: Callable[[], object], schedule: str = "EveryMinute",
                   timeout: float = 60):
        """Fires `schedule` until `done()` holds. A run of the platform's own schedule may
        hold the sweep's lease at that moment (a fired run then does nothing): fire again."""
        def fired():
            r = requests.post(f"{self.api}/_local/schedules/{schedule}/fire", timeout=60)
            assert r.status_code == 200 and r.json()["result"] == "ok", r.text
            return done()

        return wait_for(what, fired, timeout, interval=0.5)

    def admin_product(self, sku: str) -> dict:
        r = requests.get(f"{self.api}/admin/products/{sku}", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


_FAILED: list[str] = []
_OUTPUT: list[Path] = []


def pytest_terminal_summary(terminalreporter):
    """On failure, the platform's last status lines show what happened to each invocation."""
    if _FAILED and _OUTPUT and _OUTPUT[0].exists():
        terminalreporter.section("local platform (last 80 lines)")
        terminalreporter.write_line("\n".join(_OUTPUT[0].read_text().splitlines()[-80:]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.failed:
        _FAILED.append(item.nodeid)


@pytest.fixture(scope="session")
def platform(tmp_path_factory) -> Platform:
    yield from start_platform(tmp_path_factory.mktemp("platform"))


def start_platform(work: Path, parameters: dict[str, str] | None = None):
    """Runs a whole platform in `work` (template `parameters` overridden) while the
    generator is suspended; a fixture yields from it."""
    ready = work / "ready.json"
    log_dir = work / "logs"
    cmd = [sys.executable, "-m", "kami_local", "up", "--port", "0", "--no-state", "--log-dir", str(log_dir),
           "--ready-file", str(ready)]
    for name, value in (parameters or {}).items():
        cmd += ["--parameter", f"{name}={value}"]
    if os.environ.get("KAMI_E2E_NO_BUILD"):
        cmd.append("--no-build")
    out = open(work / "platform.out", "w")
    proc = subprocess.Popen(cmd, cwd=REPO / "infra", stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for("the platform to start", lambda: ready.exists() or proc.poll() is not None, START_TIMEOUT, 0.5)
        if proc.poll() is not None:
            pytest.fail(f"platform exited with {proc.returncode}:\n{(work / 'platform.out').read_text()[-4000:]}")
        info = json.loads(ready.read_text())
        yield Platform(info["api_url"], info["endpoint"], info["resources"], log_dir, info.get("sandbox_url", ""),
                       info.get("supplier_sim_url", ""))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
        print(f"\nplatform output: {work / 'platform.out'}; function logs: {log_dir}")
        _OUTPUT.append(work / "platform.out")
