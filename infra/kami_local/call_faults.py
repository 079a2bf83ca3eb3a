"""Faults at a named AWS call of one function, on the local platform: the function killed
right after the call took effect, before it sees the answer (a step kill; docs/reliability.md,
section 2, K7 to K9), or the call failed with an AWS error (section 1, A21 and on).

The local platform gives every function an access key id of its own
(`access_key_of`, runtime.py), so the moto wrapper (moto_serve.py) knows which function
sent each request from its SigV4 `Credential=`. A rule armed there names the function,
the call (`X-Amz-Target`, e.g. `DynamoDB_20120810.TransactWriteItems` or
`AmazonSQS.SendMessage`), a text the request body must contain (an order id) and which
matching call (`nth`, counted from arming; for a kill after the call, only calls moto
answered with success count: a transaction it cancelled took no effect). The wrapper lets
that call reach moto, so it takes effect, then asks the platform to SIGKILL the function's busy emulators
(`POST /_local/functions/{id}/kill-now`) and only then answers: the function never learns
that its write happened, as when Lambda's host dies mid-invocation. With `"when":
"before"` the function dies as the call arrives, and the call never reaches moto (for a
step that is not an AWS call, such as a supplier's answer the next write would record).

Arm through the platform: `POST /_local/functions/{id}/faults
{"kill_at": {"target": ..., "contains": ..., "nth": 1}}`.

Also `POST /_kami/sqs/visible-now {"queue_url": ...}` on the wrapper: every in-flight
message of that queue is visible again at once, as if its visibility timeout had passed,
so a test need not wait the queue's 60 s for a killed worker's message.
"""

from __future__ import annotations

import io
import json
import re
import threading
import urllib.request

RULES_PATH = "/_kami/call-faults"
VISIBLE_NOW_PATH = "/_kami/sqs/visible-now"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


# The errors a fail rule can answer: HTTP status, and the `__type` the SDKs read.
ERRORS = {
    "ThrottlingException": 400,
    "ProvisionedThroughputExceededException": 400,
    "InternalServerError": 500,
    "KMSInternalException": 500,
    "ServiceUnavailable": 503,
}


def access_key_of(function: str) -> str:
    """The access key id the platform gives `function` (moto accepts any)."""
    return f"LOCAL{function.upper()}"


class _Rules:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[dict] = []

    def add(self, rule: dict) -> None:
        action = rule.get("action") or "kill"
        needs = ("access_key", "target", "notify") if action == "kill" else ("access_key", "target")
        for field in needs:
            if not isinstance(rule.get(field), str) or not rule[field]:
                raise ValueError(f"a {action} rule needs {field}")
        if action == "kill":
            times = rule.get("nth", 1)
            when = rule.get("when") or "after"
            if when not in ("after", "before"):
                raise ValueError("when is after (the call took effect) or before (it never reaches moto)")
        elif action == "fail":
            times, when = rule.get("count", 1), None
            if rule.get("error") not in ERRORS:
                raise ValueError(f"error is one of {sorted(ERRORS)}")
        else:
            raise ValueError("action is kill or fail")
        if not isinstance(times, int) or times < 1:
            raise ValueError("nth and count are whole numbers from 1")
        with self._lock:
            self._rules.append({**rule, "action": action, "contains": rule.get("contains") or "",
                                "left": times, "when": when})

    def armed(self) -> bool:
        with self._lock:
            return bool(self._rules)

    def pending(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._rules]

    @staticmethod
    def _on_arrival(rule: dict) -> bool:
        """Counted when the call arrives (a fail rule, a kill before it); otherwise once
        moto answered it with success (a kill after it took effect)."""
        return rule["action"] == "fail" or rule["when"] == "before"

    def awaits(self, access_key: str, target: str, body: bytes) -> bool:
        """Whether a kill-after rule would count this call if it succeeds."""
        with self._lock:
            return any(self._matches(r, access_key, target, body) and not self._on_arrival(r)
                       for r in self._rules)

    @staticmethod
    def _matches(rule: dict, access_key: str, target: str, body: bytes) -> bool:
        return rule["access_key"] == access_key and rule["target"] == target \
            and rule["contains"].encode() in body

    def fired_by(self, access_key: str, target: str, body: bytes, *, took_effect: bool = False) -> dict | None:
        """The rule this call fires, after counting it against every rule it matches (on
        arrival, or with `took_effect` once moto answered it with success): a kill rule
        fires on its nth counted call, a fail rule on each of its first `count`; a rule is
        taken off once spent. A call moto refused (a cancelled transaction, a failed
        condition) took no effect, so it does not count for a kill after it."""
        fired = None
        with self._lock:
            for rule in list(self._rules):
                if self._on_arrival(rule) == took_effect or not self._matches(rule, access_key, target, body):
                    continue
                rule["left"] -= 1
                if rule["left"] == 0:
                    self._rules.remove(rule)
                if fired is None and (rule["action"] == "fail" or rule["left"] == 0):
                    fired = rule
        return fired


def _answer(start_response, status: str, body: dict) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


def _read_body(environ) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    return raw


def _visible_now(queue_url: str) -> int:
    from moto.sqs.models import sqs_backends

    name = queue_url.rstrip("/").rsplit("/", 1)[-1]
    made_visible = 0
    for _account, regions in sqs_backends.items():
        for _region, backend in regions.items():
            queue = backend.queues.get(name)
            if queue is None:
                continue
            for message in list(queue._messages):  # noqa: SLF001 - moto keeps no public list
                if not message.visible:
                    message.change_visibility(0)
                    made_visible += 1
    return made_visible


def _kill(rule: dict) -> None:
    """Has the platform kill the rule's function now; returns once it is dead."""
    request = urllib.request.Request(rule["notify"], data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310 - the platform on loopback
        r.read()


def middleware(app):
    """The wrapper's kill rules and `visible-now`, in front of moto (`app`)."""
    rules = _Rules()

    def wrapped(environ, start_response):
        path, method = environ.get("PATH_INFO"), environ.get("REQUEST_METHOD")
        if path == RULES_PATH:
            if method == "POST":
                try:
                    rules.add(json.loads(_read_body(environ) or b"{}"))
                except (ValueError, TypeError) as e:
                    return _answer(start_response, "400 Bad Request", {"message": str(e)})
            return _answer(start_response, "200 OK", {"rules": rules.pending()})
        if path == VISIBLE_NOW_PATH and method == "POST":
            queue_url = json.loads(_read_body(environ) or b"{}").get("queue_url") or ""
            return _answer(start_response, "200 OK", {"made_visible": _visible_now(queue_url)})
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        credential = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        # No rule armed (nearly always): the call goes through untouched, its body unread.
        if not target or credential is None or not rules.armed():
            return app(environ, start_response)
        key, body = credential.group(1), _read_body(environ)
        rule = rules.fired_by(key, target, body)
        if rule is None:
            if not rules.awaits(key, target, body):
                return app(environ, start_response)
            status: list[str] = []

            def recording(s, headers, exc_info=None):
                status.append(s)
                return start_response(s, headers, exc_info)

            answer = list(app(environ, recording))  # the call takes effect (or is refused)...
            if status and status[0].startswith("2") and (rule := rules.fired_by(key, target, body, took_effect=True)):
                _kill(rule)  # ...and its caller dies before it hears so
            return answer
        if rule["action"] == "fail":
            payload = json.dumps({"__type": rule["error"], "message": "injected by the local platform"}).encode()
            start_response(f"{ERRORS[rule['error']]} Injected", [
                ("Content-Type", environ.get("CONTENT_TYPE") or "application/x-amz-json-1.0"),
                ("Content-Length", str(len(payload)))])
            return [payload]
        # A kill before the call: the caller dies as it arrives, and it never reaches moto.
        _kill(rule)
        return _answer(start_response, "500 Internal Server Error", {"message": "killed before the call"})

    return wrapped
