"""Call faults (kami_local/call_faults.py): a kill rule fires on the nth matching call of
one function only, after the call reached moto and before its answer leaves; a fail rule
answers its calls with an AWS error and nothing reaches moto; the platform kills an
emulator's whole process tree (the bootstrap runs in a group of its own)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kami_local import runtime, call_faults  # noqa: E402

TARGET = "DynamoDB_20120810.TransactWriteItems"


class _Platform:
    """A stand-in for the platform's kill-now route: records when it was called."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the standard library's name
                outer.calls.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/_local/functions/W/kill-now"


@pytest.fixture
def platform():
    p = _Platform()
    yield p
    p.server.shutdown()


def _call(app, *, key: str, target: str, body: bytes, path: str = "/", method: str = "POST") -> tuple[str, bytes]:
    status = []
    environ = {
        "PATH_INFO": path, "REQUEST_METHOD": method, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "HTTP_X_AMZ_TARGET": target,
        "HTTP_AUTHORIZATION": f"AWS4-HMAC-SHA256 Credential={key}/20261203/us-east-1/dynamodb/aws4_request, "
                              "SignedHeaders=host, Signature=0",
    }
    answer = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    return status[0], answer


def _recording_moto() -> tuple[list[bytes], object]:
    """A stand-in for moto that records each request body it gets, and answers 200."""
    seen: list[bytes] = []

    def moto(environ, start_response):
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [])
        return [b"{}"]

    return seen, moto


def _arm(app, rule: dict) -> None:
    status, body = _call(app, key="x", target="", body=json.dumps(rule).encode(), path=call_faults.RULES_PATH)
    assert status.startswith("200"), body


def test_a_rule_fires_on_its_functions_nth_matching_call_after_the_call_took_effect(platform):
    seen: list[tuple[bytes, int]] = []  # each call moto got, and how many kills had come before it

    def moto(environ, start_response):
        seen.append((environ["wsgi.input"].read(), len(platform.calls)))
        start_response("200 OK", [])
        return [b"{}"]

    app = call_faults.middleware(moto)
    worker, other = call_faults.access_key_of("DeliveryWorkerFunction"), call_faults.access_key_of("CheckoutFunction")
    _arm(app, {"access_key": worker, "target": TARGET, "contains": "ORDER#A", "nth": 2, "notify": platform.url})

    # Not counted: another function, another call, another order.
    for key, target, body in [(other, TARGET, b"ORDER#A"), (worker, "DynamoDB_20120810.Query", b"ORDER#A"),
                              (worker, TARGET, b"ORDER#B")]:
        assert _call(app, key=key, target=target, body=body)[0].startswith("200")
    assert platform.calls == []
    # The first matching call goes through; the second reaches moto, then the kill.
    _call(app, key=worker, target=TARGET, body=b"ORDER#A slot 0")
    assert platform.calls == []
    _call(app, key=worker, target=TARGET, body=b"ORDER#A slot 1")
    assert platform.calls == ["/_local/functions/W/kill-now"]
    assert seen[-1] == (b"ORDER#A slot 1", 0), "the call reached moto before the kill"
    # Fired once: the rule is gone.
    _call(app, key=worker, target=TARGET, body=b"ORDER#A slot 2")
    assert len(platform.calls) == 1
    _, listed = _call(app, key="x", target="", body=b"", path=call_faults.RULES_PATH, method="GET")
    assert json.loads(listed)["rules"] == []


def test_a_kill_after_counts_only_calls_that_took_effect(platform):
    answers = iter(["400 Bad Request", "200 OK"])  # a cancelled transaction, then a commit

    def moto(environ, start_response):
        start_response(next(answers), [])
        return [b"{}"]

    app = call_faults.middleware(moto)
    _arm(app, {"access_key": "K", "target": TARGET, "contains": "ORDER#A", "notify": platform.url})
    assert _call(app, key="K", target=TARGET, body=b"ORDER#A")[0].startswith("400")
    assert platform.calls == [], "a refused call took no effect: not counted"
    assert _call(app, key="K", target=TARGET, body=b"ORDER#A")[0].startswith("200")
    assert len(platform.calls) == 1


def test_a_before_rule_kills_without_the_call_reaching_moto(platform):
    seen, moto = _recording_moto()
    app = call_faults.middleware(moto)
    _arm(app, {"access_key": "K", "target": TARGET, "contains": "ORDER#A", "when": "before", "notify": platform.url})
    status, _ = _call(app, key="K", target=TARGET, body=b"ORDER#A")
    assert status.startswith("500") and seen == [] and len(platform.calls) == 1


def test_a_fail_rule_answers_its_first_count_calls_with_the_error_and_writes_nothing():
    seen, moto = _recording_moto()
    app = call_faults.middleware(moto)
    _arm(app, {"action": "fail", "access_key": "K", "target": TARGET, "contains": "ORDER#A", "count": 2,
               "error": "ThrottlingException"})
    for _ in range(2):
        status, body = _call(app, key="K", target=TARGET, body=b"ORDER#A")
        assert status.startswith("400") and json.loads(body)["__type"] == "ThrottlingException"
    assert seen == [], "nothing reached moto"
    assert _call(app, key="K", target=TARGET, body=b"ORDER#A")[0].startswith("200")
    assert seen == [b"ORDER#A"]


def test_rules_are_checked():
    app = call_faults.middleware(lambda environ, start_response: [])
    for bad in [{}, {"access_key": "k", "target": "t"}, {"access_key": "k", "target": "t", "notify": "u", "nth": 0},
                {"access_key": "k", "target": "t", "notify": "u", "when": "during"},
                {"action": "fail", "access_key": "k", "target": "t", "error": "Oops"},
                {"action": "stall", "access_key": "k", "target": "t", "notify": "u"}]:
        status, body = _call(app, key="x", target="", body=json.dumps(bad).encode(), path=call_faults.RULES_PATH)
        assert status.startswith("400"), bad


def test_every_function_gets_its_own_access_key(tmp_path):
    fn = runtime.Function("CheckoutFunction", tmp_path / "bootstrap", {"AWS_ACCESS_KEY_ID": "test"}, 3, 128,
                          tmp_path / "logs", status=lambda line: None)
    try:
        assert fn.process_env()["AWS_ACCESS_KEY_ID"] == call_faults.access_key_of("CheckoutFunction")
        assert call_faults.access_key_of("CheckoutFunction") != call_faults.access_key_of("DeliveryWorkerFunction")
    finally:
        fn.stop()


def test_a_kill_takes_the_children_in_their_own_process_groups_too():
    # A parent in its own session whose child starts a session of its own, as the
    # emulator does with the bootstrap.
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, start_new_session=True, text=True)
    child = int(parent.stdout.readline())
    assert child in runtime._descendants(parent.pid)  # noqa: SLF001
    inst = runtime.Instance.__new__(runtime.Instance)
    inst.pid = parent.pid
    inst.kill()
    parent.wait(5)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and _state(child) != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z", "the child was killed too"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"
