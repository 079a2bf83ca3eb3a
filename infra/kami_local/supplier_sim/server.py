"""The supplier simulator's HTTP server: one ThreadingHTTPServer on loopback that plays any
number of upstream suppliers speaking Kami's `http_json` protocol (docs/suppliers.md),
each under its own prefix, and control routes that tell each supplier how to behave.

  POST /s/{supplier_id}/topups                a top-up (signed)
  GET  /s/{supplier_id}/topups/{request_id}   what became of it (signed)
  /_sim/...                                   control (JSON, unsigned): suppliers, script, complete,
                                              complete-pending, callback, flaky, ledger, requests,
                                              reset, health

A new request_id takes the next behaviour scripted for it, else the next one scripted for
its account, else a seeded random draw when the supplier is flaky, else `success`. A
repeated request_id is the same request: it is answered with its current state and never
topped up again. The ledger is what was topped up, one entry per request_id at most.

State lives in memory, and in `<state dir>/state.json` when a state dir is given (written
after every change). Time is the local platform's clock (`infra/kami clock`), so
signature timestamps agree with Kami's functions after `clock advance`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable
from urllib.parse import unquote

import requests

from ..sandbox.common import Request, Response, SandboxError, json_response
from ..sandbox.server import LoopbackService, SandboxServer, _fields, local_time
from . import protocol

STATE_FILE = "state.json"
RUN_FILE = "supplier_sim.json"  # where a running simulator says its URL
BEHAVIOURS = ("success", "fail", "refuse", "error", "hang", "apply_and_hang", "apply_then_drop", "garbage",
              "pending", "pending_then_callback", "callback_twice")
# Behaviours after which the supplier has done nothing: its books do not know the request
# (GET -> 404), and a submit with the same request_id is a new request.
UNRECORDED = ("error", "hang")
PENDING = ("pending", "pending_then_callback")
DEFAULT_HANG_S = 10.0
DEFAULT_AFTER_S = 1.0
DEFAULT_REASON = "simulated failure: the account cannot be topped up"
GARBAGE = b"<html><body>top-up accepted</body></html>"  # a 200 whose body is not JSON
_SUPPLIER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def log_line(line: str, stream=None) -> None:
    """The simulator's default log: a timestamped line on stdout (or `stream`)."""
    print(f"{time.strftime('%H:%M:%S')} supplier-sim: {line}", file=stream or sys.stdout, flush=True)


@dataclasses.dataclass
class Answer:
    """What the handler does with a request: wait `hang_s`, then write `response` (None:
    close the connection without a word), then start `then` (callbacks go after the
    answer, from a thread of their own so Kami's next request on the connection never
    waits for them)."""
    response: Response | None
    hang_s: float = 0.0
    then: Callable[[], None] | None = None


class Simulator(LoopbackService):
    """The suppliers, their scripts, the requests they got, the ledger, and the HTTP server."""

    def __init__(self, state_dir: Path | str | None = None, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], float] | None = None, log: Callable[[str], None] | None = None,
                 hang_s: float = DEFAULT_HANG_S, callback_timeout: float = 10.0) -> None:
        self.state_dir = Path(state_dir) if state_dir else None
        self._clock = clock or local_time
        self._log = log or log_line
        self.hang_s = hang_s
        self.callback_timeout = callback_timeout
        self.lock = threading.RLock()
        self.state = self._load()
        self.stopping = threading.Event()  # ends hangs at once on stop
        self._timers: set[threading.Timer] = set()
        self.server = SandboxServer((host, port), _handler(self))
        self.host, self.port = self.server.server_address[:2]
        self.url = f"http://{self.host}:{self.port}"
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "Simulator":
        # A short poll: stop() waits for it, and tests start and stop a simulator per test.
        self._serve("supplier-sim", {}, poll_interval=0.05)
        self.log(f"listening on {self.url} (supplier X at {self.url}/s/X; suppliers: "
                 f"{', '.join(self.state['suppliers']) or 'none yet'})")
        return self

    run_file = RUN_FILE

    def stop(self) -> None:
        self.stopping.set()
        self._cancel_timers()
        super().stop()

    def client(self):
        from .client import SupplierSim

        return SupplierSim(self.url)

    def now(self) -> float:
        return self._clock()

    def log(self, line: str) -> None:
        self._log(line)

    def base_url(self, supplier_id: str) -> str:
        return f"{self.url}/s/{supplier_id}"

    # --- state --------------------------------------------------------------------------

    def _load(self) -> dict:
        saved = {}
        if self.state_dir and (self.state_dir / STATE_FILE).exists():
            saved = json.loads((self.state_dir / STATE_FILE).read_text())
        # `seq` numbers supplier_refs: kept by a reset, so a ref never names two top-ups.
        return {"suppliers": {}, "seq": 0, **_forgettable(), **saved}

    def save(self) -> None:
        """Writes the state (call under the lock)."""
        if self.state_dir:
            self._write(self.state_dir / STATE_FILE, json.dumps(self.state, ensure_ascii=False))

    def _supplier(self, supplier_id: str) -> dict:
        supplier = self.state["suppliers"].get(supplier_id)
        if supplier is None:
            raise SandboxError(404, f"no supplier {supplier_id!r} (register it: PUT /_sim/suppliers/{supplier_id})")
        return supplier

    def _record(self, supplier_id: str, request_id: str) -> dict:
        record = self.state["requests"].get(supplier_id, {}).get(request_id)
        if record is None:
            raise SandboxError(404, f"supplier {supplier_id} never got request {request_id!r}")
        return record

    def _cancel_timers(self) -> None:
        with self.lock:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()

    # --- routing --------------------------------------------------------------------------

    def route(self, req: Request) -> Answer:
        if req.path.startswith("/s/"):
            return self._supplier_route(req)
        if req.path.startswith("/_sim/"):
            return Answer(self._control(req))
        return Answer(json_response(404, {"error": f"no such route {req.method} {req.path}"}))

    def _supplier_route(self, req: Request) -> Answer:
        supplier_id, _, rest = req.path[len("/s/"):].partition("/")
        with self.lock:
            supplier = self.state["suppliers"].get(supplier_id)
        if supplier is None:
            return Answer(json_response(404, {"error": "unknown_supplier"}))
        secret = supplier["secret"]
        problem = protocol.check(secret, req.header(protocol.TIMESTAMP_HEADER) or None,
                                 req.header(protocol.SIGNATURE_HEADER) or None, req.body, self.now())
        if problem:
            with self.lock:
                self.state["refused"].append({"supplier_id": supplier_id, "method": req.method, "path": req.path,
                                              "reason": problem, "timestamp": req.header(protocol.TIMESTAMP_HEADER),
                                              "at": int(self.now())})
                self.save()
            self.log(f"{supplier_id}: refused {req.method} {req.path} ({problem})")
            return Answer(self._signed(secret, 401, {"error": "invalid_signature"}))
        if rest == "topups" and req.method == "POST":
            return self._submit(supplier_id, secret, req)
        if rest.startswith("topups/") and req.method == "GET":
            return Answer(self._query(supplier_id, secret, unquote(rest[len("topups/"):])))
        return Answer(self._signed(secret, 404, {"error": f"no such route {req.method} /{rest}"}))

    def _signed(self, secret: str, status: int, data) -> Response:
        """A supplier's answer, signed as every http_json message is (`data` bytes: sent as is)."""
        resp = (Response(status, data, [("Content-Type", "text/html")]) if isinstance(data, bytes)
                else json_response(status, data))
        resp.headers += list(protocol.signed_headers(secret, resp.body, self.now()).items())
        return resp

    # --- the supplier -------------------------------------------------------------------------

    def _submit(self, supplier_id: str, secret: str, req: Request) -> Answer:
        try:
            topup = _topup(json.loads(req.body))
        except (ValueError, TypeError) as e:
            return Answer(self._signed(secret, 400, {"error": "invalid_request", "detail": str(e)}))
        rid = topup["request_id"]
        with self.lock:
            record = self.state["requests"].setdefault(supplier_id, {}).get(rid)
            if record is not None and record["state"] != "unrecorded":
                # The same request again: its state as it is, whatever the script says next.
                record["submits"] += 1
                self.save()
                self.log(f"{supplier_id} {rid}: repeated submit -> {record['state']}")
                return Answer(self._signed(secret, 200, _status(record)))
            step = self._next_step(supplier_id, topup["account"], rid)
            behaviour = step["behaviour"]
            if record is None:
                record = self.state["requests"][supplier_id][rid] = {
                    "supplier_id": supplier_id, "state": "unrecorded", "behaviour": None, "behaviours": [],
                    "supplier_ref": None, "reason": None, "submits": 0, "queries": 0, "callbacks": [],
                    "first_at": int(self.now())}
            record.update(topup)  # a request the supplier never recorded may come back changed
            record["submits"] += 1
            record["behaviour"] = behaviour
            record["behaviours"].append(behaviour)
            if behaviour in ("fail", "refuse"):
                record.update(state="failed", reason=step.get("reason") or DEFAULT_REASON)
            elif behaviour in PENDING:
                record.update(state="pending", supplier_ref=self._ref())
            elif behaviour not in UNRECORDED:
                self._top_up(record)
            self.save()
            answer_body = _status(record)
        self.log(f"{supplier_id} {rid}: {behaviour} (account {topup['account']}) -> {record['state']}")
        hang_s = step.get("hang_s")
        hang_s = self.hang_s if hang_s is None else hang_s
        if behaviour == "refuse":
            return Answer(self._signed(secret, 422, {"error": "refused", "reason": record["reason"]}))
        if behaviour == "error":
            return Answer(self._signed(secret, 500, {"error": "internal_error"}))
        if behaviour in ("hang", "apply_and_hang"):
            return Answer(None, hang_s=hang_s)
        if behaviour == "apply_then_drop":
            return Answer(None)
        if behaviour == "garbage":
            return Answer(self._signed(secret, 200, GARBAGE))
        then = None
        if behaviour == "pending_then_callback":
            after_s = step.get("after_s")
            then = lambda: self._complete_later(supplier_id, rid, DEFAULT_AFTER_S if after_s is None else after_s)
        elif behaviour == "callback_twice":
            then = lambda: [self._callback(supplier_id, rid) for _ in range(2)]
        return Answer(self._signed(secret, 200, answer_body), then=then)

    def _query(self, supplier_id: str, secret: str, request_id: str) -> Response:
        with self.lock:
            record = self.state["requests"].get(supplier_id, {}).get(request_id)
            if record is not None:
                record["queries"] += 1
                self.save()
            if record is None or record["state"] == "unrecorded":
                return self._signed(secret, 404, {"error": "not_found"})
            return self._signed(secret, 200, _status(record))

    def _next_step(self, supplier_id: str, account: str, request_id: str) -> dict:
        """The behaviour of a new request: scripted for its request_id, else for its account,
        else drawn (a flaky supplier), else success. Call under the lock."""
        scripts = self.state["scripts"].get(supplier_id, {})
        for kind, key in (("request_id", request_id), ("account", account)):
            queue = scripts.get(kind, {}).get(key)
            if queue:
                step = queue.pop(0)
                if not queue:
                    del scripts[kind][key]
                return step
        flaky = self.state["flaky"].get(supplier_id)
        if flaky:
            # Draw n comes from (seed, n) alone, so the sequence survives a restart from state.json.
            names = sorted(flaky["weights"])
            draw = random.Random(f"{flaky['seed']}:{flaky['draws']}").choices(
                names, [flaky["weights"][n] for n in names])[0]
            flaky["draws"] += 1
            return {"behaviour": draw, "hang_s": flaky.get("hang_s")}
        return {"behaviour": "success"}

    def _ref(self) -> str:
        self.state["seq"] += 1
        return f"SIM-{self.state['seq']:06d}"

    def _top_up(self, record: dict) -> None:
        """The account receives its credit: the one place the ledger grows (under the lock)."""
        record.update(state="success", supplier_ref=record["supplier_ref"] or self._ref(), reason=None)
        self.state["ledger"].append({k: record[k] for k in ("supplier_id", "request_id", "account", "product",
                                                            "quantity", "supplier_ref")} | {"at": int(self.now())})

    # --- callbacks ----------------------------------------------------------------------------

    def _callback(self, supplier_id: str, request_id: str) -> dict:
        """The supplier tells Kami a request's current state at its callback_url."""
        with self.lock:
            record = self._record(supplier_id, request_id)
            secret = self._supplier(supplier_id)["secret"]
            body = {"request_id": request_id, **_status(record)}
            url = record["callback_url"]
        return self.send_callback(supplier_id, body, url, secret, record=record)

    def send_callback(self, supplier_id: str, body: dict, url: str, secret: str, record: dict | None = None,
                      forged: bool = False) -> dict:
        """One signed POST of `body` to `url` (outside the lock: Kami may query back while
        it handles it); Kami's answer is kept with the request, when there is one."""
        raw = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **protocol.signed_headers(secret, raw, self.now())}
        sent = {"request_id": body.get("request_id"), "status": body.get("status"), "url": url, "forged": forged,
                "at": int(self.now()), "kami_status": None, "kami_body": None, "accepted": False, "error": None}
        try:
            r = requests.post(url, data=raw, headers=headers, timeout=self.callback_timeout)
            sent.update(kami_status=r.status_code, kami_body=r.text[:500])
            try:
                sent["accepted"] = r.status_code == 200 and r.json().get("ok") is True
            except (ValueError, AttributeError):
                pass
        except requests.RequestException as e:
            sent["error"] = f"{type(e).__name__}: {e}"
        with self.lock:
            if record is not None:
                record["callbacks"].append(sent)
                self.save()
        self.log(f"{supplier_id} {sent['request_id']}: callback {sent['status']}{' (forged)' if forged else ''} -> "
                 + (f"HTTP {sent['kami_status']}" if sent["error"] is None else sent["error"]))
        return sent

    def _complete_later(self, supplier_id: str, request_id: str, after_s: float) -> None:
        def fire() -> None:
            with self.lock:
                self._timers.discard(timer)
            try:
                self.complete(supplier_id, request_id, "success")
            except SandboxError as e:  # completed by hand meanwhile, or forgotten by a reset
                self.log(f"{supplier_id} {request_id}: scheduled completion skipped ({e.message})")

        timer = threading.Timer(after_s, fire)
        timer.daemon = True
        with self.lock:
            self._timers.add(timer)
        timer.start()

    # --- control ----------------------------------------------------------------------------

    def register(self, supplier_id: str, secret: str) -> dict:
        if not isinstance(supplier_id, str) or not _SUPPLIER_ID.fullmatch(supplier_id):
            raise SandboxError(400, "supplier_id: 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -)")
        if not isinstance(secret, str) or not secret:
            raise SandboxError(400, "secret: a non-empty string")
        with self.lock:
            self.state["suppliers"][supplier_id] = {"secret": secret}
            self.save()
        self.log(f"supplier {supplier_id} at {self.base_url(supplier_id)}")
        return self._supplier_view(supplier_id)

    def _supplier_view(self, supplier_id: str) -> dict:
        return {"supplier_id": supplier_id, "base_url": self.base_url(supplier_id),
                "secret": self.state["suppliers"][supplier_id]["secret"]}

    def script(self, supplier_id: str, behaviours: list, account: str | None = None, request_id: str | None = None,
               hang_s: float | None = None, after_s: float | None = None, reason: str | None = None) -> dict:
        """Appends behaviours to the FIFO queue of an account or a request_id."""
        if (account is None) == (request_id is None):
            raise SandboxError(400, "script one key: account or request_id")
        if not isinstance(behaviours, list) or not behaviours or any(b not in BEHAVIOURS for b in behaviours):
            raise SandboxError(400, f"behaviours: a non-empty list of {', '.join(BEHAVIOURS)}")
        _seconds("hang_s", hang_s)
        _seconds("after_s", after_s)
        kind, key = ("account", account) if account is not None else ("request_id", request_id)
        with self.lock:
            self._supplier(supplier_id)
            queue = self.state["scripts"].setdefault(supplier_id, {}).setdefault(kind, {}).setdefault(str(key), [])
            queue += [{"behaviour": b, "hang_s": hang_s, "after_s": after_s, "reason": reason} for b in behaviours]
            self.save()
            return {"supplier_id": supplier_id, kind: key, "queue": [s["behaviour"] for s in queue]}

    def complete(self, supplier_id: str, request_id: str, status: str = "success", callback: bool = True,
                 times: int = 1, reason: str | None = None) -> dict:
        """Finishes a pending request (the ledger grows on success) and calls Kami back
        `times` times."""
        if status not in ("success", "failed"):
            raise SandboxError(400, "status: success or failed")
        if not isinstance(times, int) or isinstance(times, bool) or times < 0:
            raise SandboxError(400, "times: a whole number >= 0")
        with self.lock:
            self._supplier(supplier_id)
            record = self._record(supplier_id, request_id)
            if record["state"] != "pending":
                raise SandboxError(409, f"request {request_id} is {record['state']}, not pending")
            if status == "success":
                self._top_up(record)
            else:
                record.update(state="failed", reason=reason or DEFAULT_REASON)
            self.save()
            final = {"request_id": request_id, **_status(record)}
        self.log(f"{supplier_id} {request_id}: completed {status}")
        sent = [self._callback(supplier_id, request_id) for _ in range(times if callback else 0)]
        return {"request": final, "callbacks": sent}

    def complete_pending(self, supplier_id: str | None = None, status: str = "success", callback: bool = True) -> dict:
        with self.lock:
            pending = [(sid, rid) for sid, records in self.state["requests"].items() for rid, r in records.items()
                       if r["state"] == "pending" and supplier_id in (None, sid)]
        done = []
        for sid, rid in pending:
            try:
                done.append(self.complete(sid, rid, status, callback) | {"supplier_id": sid})
            except SandboxError as e:
                if e.status != 409:  # 409: completed meanwhile (a timer)
                    raise
        return {"completed": done}

    def callback(self, supplier_id: str, request_id: str, status: str, callback_url: str,
                 supplier_ref: str | None = None, reason: str | None = None, secret: str | None = None) -> dict:
        """Any callback, signed with the supplier's secret or `secret` (a forgery)."""
        with self.lock:
            own = self.state["suppliers"].get(supplier_id, {}).get("secret")
            if secret is None and own is None:
                raise SandboxError(404, f"no supplier {supplier_id!r} and no secret to sign with")
            record = self.state["requests"].get(supplier_id, {}).get(request_id)
        body = {"request_id": request_id, "status": status, "supplier_ref": supplier_ref, "reason": reason}
        return self.send_callback(supplier_id, body, callback_url, secret or own, record=record,
                                  forged=secret is not None and secret != own)

    def flaky(self, supplier_id: str, weights: dict | None = None, seed: int = 1, hang_s: float | None = None) -> dict:
        if weights is not None and not (
                isinstance(weights, dict) and all(k in BEHAVIOURS for k in weights)
                and all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights.values())
                and sum(weights.values()) > 0):
            raise SandboxError(400, f"weights: {{behaviour: weight >= 0}}, some weight > 0, behaviours from "
                                    f"{', '.join(BEHAVIOURS)}; null turns flakiness off")
        _seconds("hang_s", hang_s)
        with self.lock:
            self._supplier(supplier_id)
            if weights is None:
                self.state["flaky"].pop(supplier_id, None)
            else:
                self.state["flaky"][supplier_id] = {"seed": seed, "weights": weights, "hang_s": hang_s, "draws": 0}
            self.save()
            return {"supplier_id": supplier_id, "flaky": self.state["flaky"].get(supplier_id)}

    def reset(self) -> dict:
        self._cancel_timers()
        with self.lock:
            self.state.update(_forgettable())
            self.save()
        self.log("reset (suppliers kept)")
        return {"ok": True, "suppliers": sorted(self.state["suppliers"])}

    def _control(self, req: Request) -> Response:
        name = req.path.removeprefix("/_sim/")
        params = dict(req.query_pairs())
        only = params.get("supplier_id")
        try:
            if req.method == "GET":
                with self.lock:
                    if name == "health":
                        return json_response(200, {"ok": True, "url": self.url,
                                                   "suppliers": sorted(self.state["suppliers"])})
                    if name == "suppliers":
                        return json_response(200, [self._supplier_view(s) for s in sorted(self.state["suppliers"])])
                    if name == "ledger":
                        return json_response(200, [e for e in self.state["ledger"] if only in (None, e["supplier_id"])])
                    if name == "requests":
                        return json_response(200, {
                            "requests": [r for sid, records in self.state["requests"].items()
                                         if only in (None, sid) for r in records.values()],
                            "refused": [r for r in self.state["refused"] if only in (None, r["supplier_id"])]})
                raise SandboxError(404, f"no such control route GET {req.path}")
            data = _fields(req)
            if req.method == "PUT" and name.startswith("suppliers/"):
                return json_response(200, self.register(unquote(name[len("suppliers/"):]), **data))
            if req.method != "POST":
                raise SandboxError(405, "control routes take GET, POST, or PUT /_sim/suppliers/{id}")
            actions = {"script": self.script, "complete": self.complete, "complete-pending": self.complete_pending,
                       "callback": self.callback, "flaky": self.flaky, "reset": self.reset}
            if name not in actions:
                raise SandboxError(404, f"no such control route POST {req.path}")
            return json_response(200, actions[name](**data))
        except TypeError as e:  # an unknown or missing field
            return json_response(400, {"error": str(e)})
        except SandboxError as e:
            return json_response(e.status, {"error": e.message})


def _forgettable() -> dict:
    """What a reset forgets, empty: all but the suppliers and the supplier_ref counter."""
    return {"requests": {}, "ledger": [], "refused": [], "scripts": {}, "flaky": {}}


def _topup(data) -> dict:
    """The fields of a POST /topups body, checked."""
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    for key in ("request_id", "product", "account", "callback_url"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ValueError(f"{key}: a non-empty string")
    quantity = data.get("quantity")
    if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
        raise ValueError("quantity: a whole number >= 1")
    return {k: data[k] for k in ("request_id", "product", "account", "quantity", "callback_url")}


def _status(record: dict) -> dict:
    """The protocol's answer for a request (POST, GET and the callback share it)."""
    return {"status": record["state"], "supplier_ref": record["supplier_ref"], "reason": record["reason"]}


def _seconds(name: str, value) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
        raise SandboxError(400, f"{name}: seconds >= 0")


def _handler(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    def _after(then: Callable[[], None], request: str) -> None:
        try:
            then()
        except SandboxError as e:  # the request was forgotten meanwhile (a reset)
            sim.log(f"after {request}: {e.message}")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "KamiSupplierSim/1.0"

        def log_message(self, fmt, *args) -> None:  # the simulator logs what matters itself
            pass

        def _dispatch(self) -> None:
            path, _, query = self.path.partition("?")
            # Kami and requests send Content-Length; chunked bodies are not part of the protocol.
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                answer = sim.route(Request(self.command, path, query, self.headers, body))
            except Exception:  # a bug in the simulator: answer, and say where
                traceback.print_exc()
                answer = Answer(json_response(500, {"error": "simulator internal error (see its log)"}))
            if answer.hang_s:
                sim.stopping.wait(answer.hang_s)
            resp = answer.response
            if resp is None:
                self.close_connection = True  # the socket closes with nothing written
            else:
                self.send_response(resp.status)
                for name, value in resp.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                self.wfile.write(resp.body)
            if answer.then:
                threading.Thread(target=_after, args=(answer.then, f"{self.command} {path}"), daemon=True).start()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    return Handler


def start_supplier_sim(port: int = 0, state_dir: Path | str | None = None, log: Callable[[str], None] | None = None,
                       host: str = "127.0.0.1", clock: Callable[[], float] | None = None,
                       suppliers: dict[str, str] | None = None, hang_s: float = DEFAULT_HANG_S,
                       callback_timeout: float = 10.0) -> Simulator:
    """Starts the simulator in a daemon thread of this process and returns it (`.url`,
    `.base_url(id)`, `.client()`, `.stop()`).

    `state_dir` keeps suppliers, requests and the ledger across restarts (None: memory
    only); `suppliers` {id: secret} are registered at once; `hang_s` is how long `hang`
    and `apply_and_hang` hold a connection unless a script says; `clock` gives Unix
    seconds (default: the local platform's clock, `infra/kami clock`)."""
    sim = Simulator(state_dir=state_dir, host=host, port=port, clock=clock, log=log, hang_s=hang_s,
                    callback_timeout=callback_timeout)
    for supplier_id, secret in (suppliers or {}).items():
        sim.register(supplier_id, secret)
    return sim.start()
