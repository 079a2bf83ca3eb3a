"""Killing a function at a named step: right after one of its AWS calls took effect, before
it sees the answer (docs/reliability.md, section 2, K7).

The local platform gives every function an access key id of its own
(`access_key_of`, runtime.py), so the moto wrapper (moto_serve.py) knows which function
sent each request from its SigV4 `Credential=`. A rule armed there names the function,
the call (`X-Amz-Target`, e.g. `DynamoDB_20120810.TransactWriteItems` or
`AmazonSQS.SendMessage`), a text the request body must contain (an order id) and which
matching call (`nth`, counted from arming). The wrapper lets that call reach moto, so it
takes effect, then asks the platform to SIGKILL the function's busy emulators
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

RULES_PATH = "/_kami/kill-rules"
VISIBLE_NOW_PATH = "/_kami/sqs/visible-now"
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def access_key_of(function: str) -> str:
    """The access key id the platform gives `function` (moto accepts any)."""
    return f"LOCAL{function.upper()}"


class _Rules:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[dict] = []

    def add(self, rule: dict) -> None:
        for field in ("access_key", "target", "notify"):
            if not isinstance(rule.get(field), str) or not rule[field]:
                raise ValueError(f"a kill rule needs {field}")
        nth = rule.get("nth", 1)
        if not isinstance(nth, int) or nth < 1:
            raise ValueError("nth is a whole number from 1")
        when = rule.get("when") or "after"
        if when not in ("after", "before"):
            raise ValueError("when is after (the call took effect) or before (it never reaches moto)")
        with self._lock:
            self._rules.append({**rule, "contains": rule.get("contains") or "", "left": nth, "when": when})

    def pending(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._rules]

    def fired_by(self, access_key: str, target: str, body: bytes) -> dict | None:
        """The rule this call fires (taking it off), after counting it against every rule
        it matches."""
        with self._lock:
            for rule in self._rules:
                if rule["access_key"] == access_key and rule["target"] == target \
                        and rule["contains"].encode() in body:
                    rule["left"] -= 1
                    if rule["left"] == 0:
                        self._rules.remove(rule)
                        return rule
        return None


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
        if not target or credential is None:
            return app(environ, start_response)
        rule = rules.fired_by(credential.group(1), target, _read_body(environ))
        if rule is None:
            return app(environ, start_response)
        if rule["when"] == "before":
            # The caller dies just before this call: it never reaches moto.
            _kill(rule)
            return _answer(start_response, "500 Internal Server Error", {"message": "killed before the call"})
        answer = list(app(environ, start_response))  # the call takes effect...
        _kill(rule)  # ...and its caller dies before it hears so
        return answer

    return wrapped
