"""The supplier simulator (infra/kami_local/supplier_sim, docs/suppliers.md) against a
stand-in for Kami: Kami's requests are signed here with hmac directly, not with the
simulator's own code, and a fake Kami callback endpoint checks the simulator's callbacks
the same way, so a bug in `sign` cannot hide itself."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

INFRA = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(INFRA))

from kami_local import __main__ as kami_main  # noqa: E402
from kami_local import clock as local_clock  # noqa: E402
from kami_local import provision as prov  # noqa: E402
from kami_local.supplier_sim import (DEMO_PRODUCT, SimRefused, seed_kami, sign,  # noqa: E402
                                     start_supplier_sim)

SECRET = "acme-test-secret"
BETA_SECRET = "beta-test-secret"
ACCOUNT = "13800138000"
TIMEOUT = 10  # seconds any awaited event may take before the test fails


def hex_hmac(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def wait_until(what: str, predicate, timeout: float = TIMEOUT):
    """Polls a condition until a deadline (for state the simulator writes after Kami answered)."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
    return result


class FakeKami:
    """Kami's callback endpoint `/webhooks/suppliers/{id}` (checks the signature and the
    timestamp itself, answers 200 {"ok": true} or 401) and the admin routes `seed_kami`
    calls (answers as told in `admin_answers`)."""

    def __init__(self) -> None:
        self.secrets = {"acme": SECRET, "beta": BETA_SECRET}
        self.callbacks: list[dict] = []
        self.admin: list[dict] = []
        self.admin_answers = {"PUT": 200, "POST": 201}
        self.cond = threading.Condition()
        kami = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, data: dict) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/admin/"):
                    return self._admin(raw)
                supplier_id = self.path.rsplit("/", 1)[-1]
                ts = self.headers.get("X-Kami-Timestamp", "")
                sig = self.headers.get("X-Kami-Signature", "")
                secret = kami.secrets.get(supplier_id, "")
                valid = (bool(secret) and ts.isdigit() and abs(time.time() - int(ts)) <= 300
                         and hmac.compare_digest(hex_hmac(secret, ts, raw), sig))
                with kami.cond:
                    kami.callbacks.append({"supplier_id": supplier_id, "valid": valid, "body": json.loads(raw),
                                           "content_type": self.headers.get("Content-Type")})
                    kami.cond.notify_all()
                self._answer(200, {"ok": True}) if valid else self._answer(401, {"error": "invalid_signature"})

            def _admin(self, raw: bytes) -> None:
                kami.admin.append({"method": self.command, "path": self.path, "body": json.loads(raw),
                                   "auth": self.headers.get("Authorization")})
                self._answer(kami.admin_answers[self.command], {})

            do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def callback_url(self, supplier_id: str = "acme") -> str:
        return f"{self.url}/webhooks/suppliers/{supplier_id}"

    def wait_callbacks(self, n: int) -> list[dict]:
        """Blocks until Kami got `n` callbacks (fails after TIMEOUT)."""
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.callbacks) >= n, TIMEOUT):
                pytest.fail(f"Kami got {len(self.callbacks)} callbacks, expected {n}")
            return list(self.callbacks)


class Clock:
    """The simulator's clock, movable like `infra/kami clock advance`."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture(scope="module")
def kami():
    k = FakeKami()
    yield k
    k.server.shutdown()
    k.server.server_close()


@pytest.fixture
def sim(tmp_path, kami):
    kami.callbacks.clear()
    kami.admin.clear()
    s = start_supplier_sim(port=0, state_dir=tmp_path / "sim", log=lambda line: None, clock=Clock(),
                           suppliers={"acme": SECRET, "beta": BETA_SECRET}, hang_s=5)
    yield s
    s.stop()


@pytest.fixture
def client(sim):
    return sim.client()


class Kami:
    """Kami's http_json client side, signing with hmac directly."""

    def __init__(self, sim, kami: FakeKami, supplier_id: str = "acme", secret: str = SECRET) -> None:
        self.base = sim.base_url(supplier_id)
        self.kami = kami
        self.supplier_id = supplier_id
        self.secret = secret

    def body(self, request_id: str, account: str = ACCOUNT) -> dict:
        return {"request_id": request_id, "product": "cmcc-50", "account": account, "quantity": 1,
                "callback_url": self.kami.callback_url(self.supplier_id)}

    def _headers(self, raw: bytes, timestamp: int | None, secret: str | None) -> dict:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {"X-Kami-Timestamp": ts, "X-Kami-Signature": hex_hmac(secret or self.secret, ts, raw)}

    def submit(self, request_id: str, account: str = ACCOUNT, timeout: float = 5, timestamp: int | None = None,
               secret: str | None = None, body: dict | None = None) -> requests.Response:
        raw = json.dumps(body or self.body(request_id, account)).encode()
        return requests.post(f"{self.base}/topups", data=raw, timeout=timeout,
                             headers={"Content-Type": "application/json", **self._headers(raw, timestamp, secret)})

    def query(self, request_id: str, timestamp: int | None = None, secret: str | None = None) -> requests.Response:
        return requests.get(f"{self.base}/topups/{request_id}", timeout=5,
                            headers=self._headers(b"", timestamp, secret))


@pytest.fixture
def acme(sim, kami):
    return Kami(sim, kami)


def signed_answer(r: requests.Response, secret: str = SECRET):
    """The answer's JSON after checking its signature (every message is signed, both ways)."""
    ts = r.headers["X-Kami-Timestamp"]
    assert abs(time.time() - int(ts)) <= 5
    assert r.headers["X-Kami-Signature"] == hex_hmac(secret, ts, r.content)
    return r.json()


def record(client, request_id: str, supplier_id: str = "acme") -> dict:
    return client.request(supplier_id, request_id)


# --- signatures -------------------------------------------------------------------------------

def test_sign_is_hmac_sha256_of_timestamp_dot_body_and_matches_the_documented_example():
    # docs/suppliers.md's worked example.
    body = (b'{"request_id":"01JB8Z6Q4W3N2M1K0H9G8F7E6D-01","product":"cmcc-50","account":"13800138000",'
            b'"quantity":1,"callback_url":"https://api.example.com/webhooks/suppliers/sim-mobile"}')
    assert sign("demo-secret", 1700000000, body) == hex_hmac("demo-secret", "1700000000", body) == (
        "3f555f617a23fccc1ef174595a03aa97041557cfb6bc43c476addaaa11042748")
    assert sign("demo-secret", "1700000000", b"") == (  # a GET: the body is empty
        "929dbee7b07ffd7b1f50107f53265cd51122942003ecd2f700f1342640b425c6")
    callback = (b'{"request_id":"01JB8Z6Q4W3N2M1K0H9G8F7E6D-01","status":"success","supplier_ref":"SIM-000123",'
                b'"reason":null}')
    assert sign("demo-secret", 1700000042, callback) == (
        "d39fcb32d88a7b44e30fe5a9387a74f7d061b995de80d7c7db94b7e96c73c1e3")


def test_a_bad_signature_is_refused_recorded_and_never_acted_on(acme, client):
    r = acme.submit("r-bad", secret="not-the-secret")
    assert r.status_code == 401 and signed_answer(r) == {"error": "invalid_signature"}
    raw = json.dumps(acme.body("r-tampered")).encode()
    headers = {"X-Kami-Timestamp": str(int(time.time())),
               "X-Kami-Signature": hex_hmac(SECRET, str(int(time.time())), raw + b" ")}
    assert requests.post(f"{acme.base}/topups", data=raw, headers=headers, timeout=5).status_code == 401
    assert requests.post(f"{acme.base}/topups", data=raw, timeout=5).status_code == 401
    assert acme.query("r-bad", secret="not-the-secret").status_code == 401
    refused = client.requests("acme")["refused"]
    assert [(x["method"], x["reason"]) for x in refused] == [
        ("POST", "bad_signature"), ("POST", "bad_signature"), ("POST", "missing_signature"), ("GET", "bad_signature")]
    assert client.requests("acme")["requests"] == [] and client.ledger() == []
    assert acme.query("r-bad").status_code == 404


def test_a_timestamp_more_than_300_s_off_is_refused(acme, client):
    now = int(time.time())
    for ts in (now - 301, now + 301):
        r = acme.submit(f"r-{ts}", timestamp=ts)
        assert r.status_code == 401 and r.json() == {"error": "invalid_signature"}
    assert [x["reason"] for x in client.requests("acme")["refused"]] == ["stale_timestamp"] * 2
    assert acme.submit("r-late-but-fresh", timestamp=now - 290).status_code == 200
    assert acme.query("r-late-but-fresh", timestamp=now - 400).status_code == 401


def test_time_is_the_local_platforms_clock(tmp_path, monkeypatch, kami):
    """After `infra/kami clock advance 1d`, Kami signs at the advanced time; so does the simulator."""
    clock_file = tmp_path / "clock"
    clock_file.write_text("86400\n")
    monkeypatch.setenv(local_clock.ENV, str(clock_file))
    s = start_supplier_sim(port=0, log=lambda line: None, suppliers={"acme": SECRET})
    try:
        k = Kami(s, kami)
        assert k.submit("r-now").status_code == 401
        r = k.submit("r-advanced", timestamp=int(time.time()) + 86400)
        assert r.status_code == 200 and abs(int(r.headers["X-Kami-Timestamp"]) - time.time() - 86400) <= 5
    finally:
        s.stop()


def test_an_unknown_supplier_or_route_is_404(sim, acme):
    raw = json.dumps(acme.body("r1")).encode()
    r = requests.post(f"{sim.url}/s/nobody/topups", data=raw, timeout=5)
    assert r.status_code == 404 and r.json() == {"error": "unknown_supplier"}
    assert requests.get(f"{sim.url}/elsewhere", timeout=5).status_code == 404


def test_a_malformed_top_up_is_a_400(acme, client):
    for body in ({"request_id": "r1"}, {**acme.body("r1"), "quantity": 0}, {**acme.body("r1"), "account": ""}):
        r = acme.submit("r1", body=body)
        assert r.status_code == 400 and signed_answer(r)["error"] == "invalid_request"
    assert client.requests("acme")["requests"] == []


# --- behaviours -------------------------------------------------------------------------------

def test_success_tops_up_once_however_often_the_request_id_comes(acme, client):
    first = signed_answer(acme.submit("r1"))
    assert first["status"] == "success" and first["reason"] is None and first["supplier_ref"].startswith("SIM-")
    client.script("acme", ["fail"], request_id="r1")  # a script cannot change what was done
    assert signed_answer(acme.submit("r1")) == first
    assert signed_answer(acme.query("r1")) == first
    ledger = client.ledger("acme")
    assert [(e["request_id"], e["account"], e["product"], e["quantity"], e["supplier_ref"]) for e in ledger] == [
        ("r1", ACCOUNT, "cmcc-50", 1, first["supplier_ref"])]
    rec = record(client, "r1")
    assert (rec["state"], rec["behaviour"], rec["submits"], rec["queries"], rec["callbacks"]) == (
        "success", "success", 2, 1, [])


def test_concurrent_submits_of_one_request_id_top_up_once(acme, client):
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(acme.submit("r-race").json())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(answers) == 8 and all(a == answers[0] for a in answers)
    assert len(client.ledger("acme")) == 1 and record(client, "r-race")["submits"] == 8


def test_a_query_of_a_request_never_seen_is_404(acme):
    r = acme.query("never-sent")
    assert r.status_code == 404 and signed_answer(r) == {"error": "not_found"}


def test_fail_answers_failed_with_a_reason_and_tops_up_nothing(acme, client):
    client.script("acme", ["fail"], account=ACCOUNT, reason="number not in service")
    answer = {"status": "failed", "supplier_ref": None, "reason": "number not in service"}
    assert signed_answer(acme.submit("r1")) == answer
    assert signed_answer(acme.query("r1")) == answer
    assert client.ledger() == []


def test_refuse_answers_422_without_acting(acme, client):
    client.script("acme", ["refuse"], account=ACCOUNT)
    r = acme.submit("r1")
    assert r.status_code == 422 and signed_answer(r)["error"] == "refused"
    assert client.ledger() == []
    # Its state now: failed, also for a repeat of the request_id.
    assert acme.submit("r1").json()["status"] == acme.query("r1").json()["status"] == "failed"


def test_error_answers_500_and_the_supplier_never_saw_it(acme, client):
    client.script("acme", ["error", "success"], account=ACCOUNT)
    r = acme.submit("r1")
    assert r.status_code == 500 and signed_answer(r) == {"error": "internal_error"}
    assert acme.query("r1").status_code == 404
    assert client.ledger() == []
    assert (record(client, "r1")["state"], record(client, "r1")["behaviours"]) == ("unrecorded", ["error"])
    # Not found, so Kami may submit the same request_id again: a new request to the supplier.
    assert acme.submit("r1").json()["status"] == "success"
    assert record(client, "r1")["behaviours"] == ["error", "success"] and len(client.ledger()) == 1


def test_hang_holds_the_connection_then_closes_without_an_answer(acme, client):
    client.script("acme", ["hang"], account=ACCOUNT, hang_s=0.3)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        acme.submit("r1", timeout=5)
    assert time.monotonic() - started >= 0.3
    client.script("acme", ["hang"], account=ACCOUNT, hang_s=5)
    with pytest.raises(requests.ReadTimeout):  # Kami's timeout comes first
        acme.submit("r2", timeout=0.2)
    assert acme.query("r1").status_code == acme.query("r2").status_code == 404
    assert client.ledger() == [] and record(client, "r1")["behaviour"] == "hang"


def test_apply_and_hang_tops_up_but_never_answers(acme, client):
    client.script("acme", ["apply_and_hang"], account=ACCOUNT, hang_s=0.2)
    with pytest.raises(requests.ConnectionError):
        acme.submit("r1", timeout=5)
    done = signed_answer(acme.query("r1"))
    assert done["status"] == "success"
    assert acme.submit("r1").json() == done  # Kami's retry: the same top-up, not a second one
    assert [e["request_id"] for e in client.ledger()] == ["r1"]


def test_apply_then_drop_tops_up_and_drops_the_connection(acme, client):
    client.script("acme", ["apply_then_drop"], account=ACCOUNT)
    with pytest.raises(requests.ConnectionError):
        acme.submit("r1", timeout=5)
    assert acme.query("r1").json()["status"] == "success" and len(client.ledger()) == 1


def test_garbage_tops_up_and_answers_a_body_that_is_not_json(acme, client):
    client.script("acme", ["garbage"], account=ACCOUNT)
    r = acme.submit("r1")
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)
    assert r.headers["X-Kami-Signature"] == hex_hmac(SECRET, r.headers["X-Kami-Timestamp"], r.content)
    assert acme.query("r1").json()["status"] == "success" and len(client.ledger()) == 1


def test_pending_stays_pending_until_completed_then_calls_back_signed(acme, client, kami):
    client.script("acme", ["pending"], account=ACCOUNT)
    pending = signed_answer(acme.submit("r1"))
    assert pending["status"] == "pending" and pending["supplier_ref"].startswith("SIM-") and pending["reason"] is None
    assert acme.query("r1").json() == pending and acme.submit("r1").json() == pending
    assert client.ledger() == []
    done = client.complete("acme", "r1")
    assert [(c["kami_status"], c["accepted"], c["forged"]) for c in done["callbacks"]] == [(200, True, False)]
    [callback] = kami.wait_callbacks(1)
    assert callback["valid"] and callback["content_type"] == "application/json"
    assert callback["body"] == {"request_id": "r1", "status": "success", "supplier_ref": pending["supplier_ref"],
                                "reason": None}
    assert acme.query("r1").json()["status"] == "success" and len(client.ledger()) == 1
    assert [c["kami_status"] for c in record(client, "r1")["callbacks"]] == [200]
    with pytest.raises(SimRefused) as refused:
        client.complete("acme", "r1")
    assert refused.value.status == 409


def test_complete_as_failed_with_several_or_no_callbacks(acme, client, kami):
    client.script("acme", ["pending"] * 3, account=ACCOUNT)
    for rid in ("r1", "r2", "r3"):
        acme.submit(rid)
    client.complete("acme", "r1", status="failed", reason="operator rejected", times=2)
    bodies = [c["body"] for c in kami.wait_callbacks(2)]
    assert bodies == [{"request_id": "r1", "status": "failed", "supplier_ref": bodies[0]["supplier_ref"],
                       "reason": "operator rejected"}] * 2
    assert client.complete("acme", "r2", callback=False)["callbacks"] == []
    assert len(kami.callbacks) == 2  # complete returns only after its callbacks were answered
    assert acme.query("r1").json()["status"] == "failed" and acme.query("r2").json()["status"] == "success"
    assert [e["request_id"] for e in client.ledger()] == ["r2"]
    with pytest.raises(SimRefused) as e:
        client.complete("acme", "unknown")
    assert e.value.status == 404


def test_complete_pending_finishes_every_pending_request(sim, acme, client, kami):
    beta = Kami(sim, kami, "beta", BETA_SECRET)
    client.script("acme", ["pending", "pending"], account=ACCOUNT)
    client.script("beta", ["pending"], account=ACCOUNT)
    acme.submit("a1"), acme.submit("a2"), beta.submit("b1")
    assert {c["request"]["request_id"] for c in client.complete_pending("acme")["completed"]} == {"a1", "a2"}
    assert beta.query("b1").json()["status"] == "pending"
    assert [(c["supplier_id"], c["request"]["request_id"]) for c in client.complete_pending()["completed"]] == [
        ("beta", "b1")]
    assert all(c["valid"] for c in kami.wait_callbacks(3))
    assert sorted(e["request_id"] for e in client.ledger()) == ["a1", "a2", "b1"]
    assert [e["request_id"] for e in client.ledger("beta")] == ["b1"]


def test_pending_then_callback_completes_by_itself(acme, client, kami):
    client.script("acme", ["pending_then_callback"], account=ACCOUNT, after_s=0.05)
    assert acme.submit("r1").json()["status"] == "pending"
    [callback] = kami.wait_callbacks(1)
    assert callback["valid"] and callback["body"]["status"] == "success"
    assert acme.query("r1").json()["status"] == "success" and len(client.ledger()) == 1


def test_callback_twice_answers_success_and_calls_back_twice(acme, client, kami):
    client.script("acme", ["callback_twice"], account=ACCOUNT)
    answer = acme.submit("r1").json()
    assert answer["status"] == "success"
    first, second = kami.wait_callbacks(2)
    assert first == second and first["valid"]
    assert first["body"] == {"request_id": "r1", **answer}
    wait_until("both callbacks recorded", lambda: len(record(client, "r1")["callbacks"]) == 2)
    assert len(client.ledger()) == 1


def test_forged_and_misbound_callbacks_are_sent_as_told(acme, client, kami):
    acme.submit("r1")
    forged = client.callback("acme", "r1", "failed", kami.callback_url("acme"), reason="x", secret="forger")
    assert (forged["kami_status"], forged["accepted"], forged["forged"]) == (401, False, True)
    misbound = client.callback("acme", "r1", "success", kami.callback_url("beta"), supplier_ref="SIM-999999")
    assert misbound["kami_status"] == 401  # acme's signature on beta's endpoint
    genuine = client.callback("acme", "r1", "success", kami.callback_url("acme"), supplier_ref="SIM-999999")
    assert (genuine["kami_status"], genuine["accepted"]) == (200, True)
    got = kami.wait_callbacks(3)
    assert [c["valid"] for c in got] == [False, False, True]
    assert got[2]["body"] == {"request_id": "r1", "status": "success", "supplier_ref": "SIM-999999", "reason": None}
    assert len(record(client, "r1")["callbacks"]) == 3 and len(client.ledger()) == 1


# --- scripts and flakiness ------------------------------------------------------------------------

def test_scripts_are_fifo_per_key_request_id_first_then_success(acme, client):
    client.script("acme", ["fail", "pending"], account=ACCOUNT)
    client.script("acme", ["refuse"], request_id="r2")
    assert acme.submit("r1").json()["status"] == "failed"
    assert acme.submit("r2").status_code == 422  # its request_id's script comes before its account's
    assert acme.submit("r3").json()["status"] == "pending"
    assert acme.submit("r4").json()["status"] == "success"
    assert acme.submit("r5", account="13900139000").json()["status"] == "success"
    assert [record(client, r)["behaviour"] for r in ("r1", "r2", "r3", "r4")] == [
        "fail", "refuse", "pending", "success"]


def test_bad_control_calls_are_refused(client):
    for kwargs in ({"behaviours": ["explode"], "account": ACCOUNT}, {"behaviours": ["fail"]},
                   {"behaviours": ["fail"], "account": ACCOUNT, "request_id": "r1"}, {"behaviours": [], "account": "a"},
                   {"behaviours": ["hang"], "account": ACCOUNT, "hang_s": -1}):
        with pytest.raises(SimRefused) as e:
            client.script("acme", **kwargs)
        assert e.value.status == 400
    with pytest.raises(SimRefused) as e:
        client.script("nobody", ["fail"], account=ACCOUNT)
    assert e.value.status == 404
    for weights in ({"explode": 1}, {"success": 0}, {"success": -1}):
        with pytest.raises(SimRefused):
            client.flaky("acme", weights)
    with pytest.raises(SimRefused):
        client.register("bad/id", "x")


def flaky_run(acme, client, n: int = 24, prefix: str = "f") -> list[str]:
    for i in range(n):
        try:
            acme.submit(f"{prefix}{i}", timeout=5)
        except requests.ConnectionError:  # hang / apply_and_hang (hang_s 0): no answer
            pass
    return [record(client, f"{prefix}{i}")["behaviour"] for i in range(n)]


def test_a_flaky_supplier_draws_behaviours_reproducibly_from_its_seed(acme, client):
    weights = {"success": 4, "hang": 1, "fail": 1, "pending": 2, "callback_twice": 1, "apply_and_hang": 1}
    client.flaky("acme", weights, seed=7, hang_s=0)
    first = flaky_run(acme, client)
    assert len(set(first)) >= 4 and set(first) <= set(weights)
    client.reset()
    client.flaky("acme", weights, seed=7, hang_s=0)
    assert flaky_run(acme, client) == first
    client.reset()
    client.flaky("acme", weights, seed=8, hang_s=0)
    assert flaky_run(acme, client) != first
    # A script still comes first; and null weights end the flakiness.
    client.script("acme", ["refuse"], account="13900139000")
    assert acme.submit("s1", account="13900139000").status_code == 422
    client.flaky("acme", None)
    assert flaky_run(acme, client, 5, prefix="g") == ["success"] * 5


# --- state, the CLI, the platform -------------------------------------------------------------------

def test_state_survives_a_restart_and_reset_keeps_only_the_suppliers(tmp_path, kami):
    state_dir = tmp_path / "state"
    s = start_supplier_sim(port=0, state_dir=state_dir, log=lambda line: None, suppliers={"acme": SECRET})
    try:
        ref = Kami(s, kami).submit("r1").json()["supplier_ref"]
        assert json.loads((state_dir / "supplier_sim.json").read_text())["url"] == s.url
    finally:
        s.stop()
    assert not (state_dir / "supplier_sim.json").exists()
    s = start_supplier_sim(port=0, state_dir=state_dir, log=lambda line: None)
    try:
        client, k = s.client(), Kami(s, kami)
        assert k.submit("r1").json()["supplier_ref"] == ref and len(client.ledger()) == 1
        client.script("acme", ["fail"], account=ACCOUNT)
        assert client.reset()["suppliers"] == ["acme"]
        assert client.ledger() == [] and client.requests() == {"requests": [], "refused": []}
        assert k.submit("r2").json()["status"] == "success"  # the script went with the reset
        assert k.submit("r2").json()["supplier_ref"] != ref  # refs stay unique across a reset
        assert [x["supplier_id"] for x in client.suppliers()] == ["acme"]
    finally:
        s.stop()


def test_the_cli_prints_its_url_and_serves_the_suppliers_it_is_given():
    env = {**os.environ, "PYTHONPATH": str(INFRA)}
    proc = subprocess.Popen([sys.executable, "-m", "kami_local.supplier_sim", "--port", "0", "--supplier", "acme=s3"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline().strip()), daemon=True)
        reader.start()
        reader.join(TIMEOUT)
        assert line and line[0].startswith("http://127.0.0.1:"), line
        health = requests.get(f"{line[0]}/_sim/health", timeout=5).json()
        assert health == {"ok": True, "url": line[0], "suppliers": ["acme"]}
    finally:
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0


def test_seed_kami_registers_the_supplier_and_stores_it_and_its_product_in_kami(sim, client, kami):
    kami.admin_answers = {"PUT": 201, "POST": 409}  # 409: the product exists, which is fine
    seed_kami(kami.url, "admin-token", sim.url, "the-secret")
    put, post = kami.admin
    assert (put["method"], put["path"], put["auth"]) == ("PUT", "/admin/suppliers/sim-mobile", "Bearer admin-token")
    assert put["body"] == {"kind": "http_json", "base_url": f"{sim.url}/s/sim-mobile", "secret": "the-secret",
                           "timeout_ms": 3000, "enabled": True,
                           "circuit": {"failures": 5, "window_s": 60, "cooldown_s": 30},
                           "unknown_outcome_deadline_s": 600}
    assert (post["path"], post["body"]) == ("/admin/products", DEMO_PRODUCT)
    assert {"supplier_id": "sim-mobile", "base_url": f"{sim.url}/s/sim-mobile", "secret": "the-secret"} in (
        client.suppliers())
    kami.admin_answers = {"PUT": 404, "POST": 201}
    with pytest.raises(RuntimeError, match="seeding supplier sim-mobile failed: HTTP 404"):
        seed_kami(kami.url, "admin-token", sim.url, "the-secret")
    kami.admin_answers = {"PUT": 200, "POST": 400}
    with pytest.raises(RuntimeError, match="seeding product mobile-credit-50 failed: HTTP 400"):
        seed_kami(kami.url, "admin-token", sim.url, "the-secret")


def test_the_platform_starts_the_simulator_and_seeds_kami_with_a_fresh_secret(tmp_path, kami, monkeypatch):
    kami.admin.clear()
    kami.admin_answers = {"PUT": 200, "POST": 201}
    monkeypatch.setattr(prov, "local_secrets", lambda: {"AdminTokenSecret": "local-admin"})
    platform = SimpleNamespace(url=kami.url, status=lambda line: None)
    s = kami_main.start_supplier_sim(platform, tmp_path / "supplier_sim")
    try:
        [supplier] = s.client().suppliers()
        assert supplier["supplier_id"] == "sim-mobile" and len(supplier["secret"]) == 64
        assert kami.admin[0]["auth"] == "Bearer local-admin" and kami.admin[0]["body"]["secret"] == supplier["secret"]
    finally:
        s.stop()
    kami.admin_answers = {"PUT": 500, "POST": 201}
    with pytest.raises(RuntimeError):
        kami_main.start_supplier_sim(platform, tmp_path / "supplier_sim")
