"""Unit tests of the local platform's pure parts: template intrinsics, route ranking,
API Gateway v2 events and responses, SQS partial batch responses, schedule rates; and of
its HTTP server and function pools under load (no emulator: instances are stand-ins)."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import selectors
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kami_local import apigw, runtime  # noqa: E402
from kami_local import template as tpl  # noqa: E402
from kami_local.sources import failed_ids, rate_seconds  # noqa: E402

TEMPLATE = tpl.load(tpl.default_template())


def resolver(template: dict, **params) -> tpl.Resolver:
    return tpl.Resolver(template, params, ref=lambda n: f"phys-{n}", get_att=lambda n, a: f"{n}.{a}")


def test_short_tags_load_as_long_form(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("A: !Ref X\nB: !GetAtt Q.Arn\nC: !Sub '${X}-${AWS::Region}'\nD: !Join [',', [a, !Ref X]]\n")
    assert tpl.load(path) == {"A": {"Ref": "X"}, "B": {"Fn::GetAtt": ["Q", "Arn"]},
                              "C": {"Fn::Sub": "${X}-${AWS::Region}"},
                              "D": {"Fn::Join": [",", ["a", {"Ref": "X"}]]}}


def test_intrinsics_resolve_against_parameters_and_resources():
    template = {"Parameters": {"P": {"Type": "Number", "Default": 5}},
                "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
                "Conditions": {"Big": {"Fn::Equals": [{"Ref": "P"}, "9"]}}}
    r = resolver(template)
    assert r.resolve({"Ref": "P"}) == "5"
    assert r.resolve({"Fn::Sub": "${Q}/${Q.Arn}/${AWS::AccountId}/${!Literal}"}) == \
        "phys-Q/Q.Arn/123456789012/${Literal}"
    assert r.resolve({"Fn::If": ["Big", "yes", "no"]}) == "no"
    assert resolver(template, P="9").resolve({"Fn::If": ["Big", "yes", "no"]}) == "yes"
    assert r.resolve({"Fn::Select": [1, {"Fn::Split": [",", "a,b"]}]}) == "b"
    assert r.resolve({"K": {"Ref": "AWS::NoValue"}, "L": 1}) == {"L": 1}


def test_function_environment_merges_globals():
    env = tpl.functions(TEMPLATE)["CheckoutFunction"]["Properties"]["Environment"]["Variables"]
    assert {"KAMI_TABLE", "RUST_LOG", "ORDER_TTL_SECONDS"} <= set(env)


def test_routes_come_from_the_template_and_rank_like_api_gateway():
    table = apigw.routes(TEMPLATE)
    route, params = apigw.match(table, "GET", "/orders/01ABC")
    assert (route.key, route.function, params) == ("GET /orders/{order_id}", "CheckoutFunction", {"order_id": "01ABC"})
    route, params = apigw.match(table, "POST", "/admin/products/sku%201/card-keys")
    assert route.function == "AdminFunction" and params == {"sku": "sku 1"}
    assert apigw.match(table, "DELETE", "/orders/x") is None
    assert apigw.match(table, "GET", "/nope") is None
    greedy = apigw.Route("ANY", "/{proxy+}", "F", apigw._compile("/{proxy+}"))
    exact = apigw.Route("GET", "/a/{b}", "G", apigw._compile("/a/{b}"))
    ranked = sorted([greedy, exact], key=lambda r: r.rank, reverse=True)
    assert apigw.match(ranked, "GET", "/a/1")[0].function == "G"
    assert apigw.match(ranked, "GET", "/a/1/2")[0].path == "/{proxy+}"


def _event(headers, body=b"", query=""):
    route = apigw.Route("POST", "/orders", "CheckoutFunction", apigw._compile("/orders"))
    return apigw.build_event(route, {}, "POST", "/orders", query, headers, body, "10.0.0.1", "api", "rid")


def test_v2_event_shape():
    e = _event([("Host", "h:3000"), ("Content-Type", "application/json"), ("X-A", "1"), ("x-a", "2"),
                ("Cookie", "a=1; b=2"), ("User-Agent", "ua")], b'{"k":1}', "x=1&x=2&y=%20")
    assert e["version"] == "2.0" and e["routeKey"] == "POST /orders" and e["rawQueryString"] == "x=1&x=2&y=%20"
    assert e["cookies"] == ["a=1", "b=2"] and "cookie" not in e["headers"]
    assert e["headers"]["x-a"] == "1,2" and e["headers"]["x-forwarded-for"] == "10.0.0.1"
    assert e["queryStringParameters"] == {"x": "1,2", "y": " "}
    ctx = e["requestContext"]
    assert ctx["stage"] == "$default" and ctx["http"] == {
        "method": "POST", "path": "/orders", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.1", "userAgent": "ua"}
    assert isinstance(ctx["timeEpoch"], int) and ctx["requestId"] == "rid"
    assert e["body"] == '{"k":1}' and e["isBase64Encoded"] is False
    assert "pathParameters" not in e


def test_binary_bodies_are_base64():
    e = _event([("Content-Type", "application/octet-stream")], b"\xff\x00")
    assert e["isBase64Encoded"] is True and base64.b64decode(e["body"]) == b"\xff\x00"


def test_responses_map_back():
    status, headers, body = apigw.map_response(json.dumps({
        "statusCode": 201, "headers": {"content-type": "application/json"}, "multiValueHeaders": {"x": ["1", "2"]},
        "cookies": ["s=1"], "body": base64.b64encode(b"\x01").decode(), "isBase64Encoded": True}).encode())
    assert status == 201 and body == b"\x01"
    assert ("x", "1") in headers and ("x", "2") in headers and ("set-cookie", "s=1") in headers
    assert apigw.map_response(b'{"a":1}') == (200, [("content-type", "application/json")], b'{"a":1}')
    assert apigw.map_response(b"not json")[0] == 500


def test_partial_batch_responses():
    records = [{"messageId": "a"}, {"messageId": "b"}]
    assert failed_ids(b'{"batchItemFailures":[]}', records) == set()
    assert failed_ids(b"null", records) == set()
    assert failed_ids(b'{"batchItemFailures":[{"itemIdentifier":"b"}]}', records) == {"b"}
    assert failed_ids(b'{"batchItemFailures":[{"itemIdentifier":""}]}', records) is None
    assert failed_ids(b'{"batchItemFailures":[{"itemIdentifier":"zzz"}]}', records) is None


def test_schedule_rates():
    assert rate_seconds("rate(1 minute)") == 60
    assert rate_seconds("rate(2 hours)") == 7200
    assert rate_seconds("cron(0 12 * * ? *)") is None


def test_client_tokens_replay_within_the_window_only():
    from kami_local.moto_serve import _ClientTokens

    tokens = _ClientTokens(window_seconds=600)
    request = {"TransactItems": [{"Put": {"TableName": "t"}}], "ClientRequestToken": "tok"}
    digest = tokens.digest(request)
    assert tokens.earlier("tok", digest, now=0) is None
    tokens.remember("tok", digest, now=0)
    # The token is not part of what must match; the request is.
    assert tokens.digest({**request, "ClientRequestToken": "other"}) == digest
    assert tokens.earlier("tok", digest, now=599) == "replay"
    other = tokens.digest({"TransactItems": [], "ClientRequestToken": "tok"})
    assert tokens.earlier("tok", other, now=599) == "mismatch"
    assert tokens.earlier("tok", digest, now=600) is None  # a new call after 10 minutes


def test_client_tokens_expire_oldest_first_and_keep_the_rest():
    from kami_local.moto_serve import _ClientTokens

    tokens = _ClientTokens(window_seconds=600)
    tokens.remember("early", "d1", now=0)
    tokens.remember("late", "d2", now=300)
    assert tokens.earlier("early", "d1", now=650) is None
    assert tokens.earlier("late", "d2", now=650) == "replay"
    assert list(tokens.succeeded) == ["late"]


# ---- the local API under load: listen backlog, connection threads, a saturated pool ----

BURST = 200


def _wait_until(what: str, check, timeout: float = 10.0) -> None:
    """Polls `check` until true; fails after `timeout` (a bound, not a synchroniser)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def _connect_all(address: tuple[str, int], count: int, timeout: float) -> tuple[list[socket.socket], int]:
    """Opens `count` connections at once (non-blocking, back to back) and waits for their
    handshakes; returns the sockets and how many completed within `timeout`."""
    socks, pending = [], selectors.DefaultSelector()
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(address)
        socks.append(s)
        pending.register(s, selectors.EVENT_WRITE)
    connected = 0
    deadline = time.monotonic() + timeout
    while pending.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in pending.select(left):
            pending.unregister(key.fileobj)
            connected += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    pending.close()
    return socks, connected


def _read_response(s: socket.socket) -> tuple[int, bytes]:
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    length = 0
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, f.read(length)


def test_the_api_server_holds_a_burst_of_connections_it_is_not_yet_accepting():
    """200 clients connect at the same instant while the server's accepting thread is held
    (as when it waits for the GIL on a busy machine): the kernel's accept queue holds them
    all. With the standard library's backlog of 5 only 6 handshakes complete and the rest
    are dropped. Then all 200 requests are inside a handler at once and each is answered."""
    from kami_local.platform import ApiServer

    backlog = ApiServer.listen_backlog()
    if backlog < BURST:
        pytest.skip(f"net.core.somaxconn caps listen backlogs at {backlog} on this machine")
    inside = threading.Barrier(BURST + 1, timeout=30)  # every handler, and this test
    release = threading.Event()

    class Blocking(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            inside.wait()
            release.wait(30)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = ApiServer(("127.0.0.1", 0), Blocking)  # bound and listening, not accepting yet
    socks: list[socket.socket] = []
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        socks, connected = _connect_all(server.server_address, BURST, timeout=5)
        assert connected == BURST, (
            f"only {connected} of {BURST} handshakes completed within 5 s: the listen backlog "
            f"({server.request_queue_size}, capped at {backlog}) does not hold the burst")
        serving.start()
        for s in socks:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"GET / HTTP/1.1\r\nHost: local\r\n\r\n")
        inside.wait()  # all 200 requests are being handled at the same time
        release.set()
        assert [_read_response(s) for s in socks] == [(200, b"ok")] * BURST
    finally:
        release.set()
        if serving.is_alive():
            server.shutdown()
        server.server_close()
        for s in socks:
            s.close()


class _FakeInstance:
    """Stands in for an emulator: each invocation records its payload, then waits for the
    test to let it finish."""

    def __init__(self, number: int, served: list, gate: threading.Semaphore, changed: threading.Condition):
        self.number, self.pid, self.port = number, 0, 0
        self.busy, self.alive, self.invocations = False, True, 0
        self.served, self.gate, self.changed = served, gate, changed
        self.proc = SimpleNamespace(wait=lambda timeout=None: 0)

    def kill(self) -> None:
        self.alive = False

    def invoke(self, payload: bytes) -> runtime.Result:
        with self.changed:
            self.served.append(payload)
            self.changed.notify_all()
        assert self.gate.acquire(timeout=30), "the test never let the invocation finish"
        return runtime.Result("ok", json.dumps({"statusCode": 200, "body": payload.decode()}).encode(), 1.0)


def _pool(tmp_path, max_instances: int):
    served: list[bytes] = []
    gate = threading.Semaphore(0)
    changed = threading.Condition()
    fn = runtime.Function("F", tmp_path / "bootstrap", {}, 3, 128, tmp_path, max_instances, status=lambda line: None)
    numbers = iter(range(1, 100))
    fn._spawn = lambda: _FakeInstance(next(numbers), served, gate, changed)
    return fn, served, gate, changed


def test_a_saturated_pool_serves_waiting_invocations_in_arrival_order(tmp_path):
    fn, served, gate, changed = _pool(tmp_path, max_instances=1)
    threads = []
    try:
        for i in range(4):
            t = threading.Thread(target=fn.invoke, args=(f"p{i}".encode(),), daemon=True)
            t.start()
            threads.append(t)
            if i == 0:
                with changed:
                    assert changed.wait_for(lambda: served == [b"p0"], timeout=10)
            else:
                _wait_until(f"p{i} to wait in line", lambda i=i: fn.describe()["waiting"] == i)
        for i in range(1, 4):
            gate.release()  # the running invocation ends: its instance goes to the oldest waiter
            with changed:
                assert changed.wait_for(lambda i=i: len(served) == i + 1, timeout=10)
        assert served == [b"p0", b"p1", b"p2", b"p3"]
        gate.release()
        for t in threads:
            t.join(10)
        assert fn.describe()["waiting"] == 0 and len(fn.instances) == 1
    finally:
        for _ in range(4):
            gate.release()
        fn.stop()


def test_a_saturated_pool_gives_up_after_the_deadline_and_keeps_working(tmp_path):
    fn, served, gate, changed = _pool(tmp_path, max_instances=1)
    try:
        busy = threading.Thread(target=fn.invoke, args=(b"long",), daemon=True)
        busy.start()
        with changed:
            assert changed.wait_for(lambda: served == [b"long"], timeout=10)
        with pytest.raises(runtime.NoInstance):
            fn.invoke(b"late", wait_timeout=0.05)
        assert fn.describe()["waiting"] == 0
        gate.release()
        busy.join(10)
        gate.release()
        assert fn.invoke(b"next", wait_timeout=10).ok and served == [b"long", b"next"]
    finally:
        gate.release()
        fn.stop()


def test_the_api_answers_503_when_no_instance_frees_up_in_time(tmp_path, monkeypatch):
    from kami_local.platform import ApiServer, _handler

    monkeypatch.setattr(apigw, "INTEGRATION_TIMEOUT", 0.05)
    fn, served, gate, changed = _pool(tmp_path, max_instances=1)
    route = apigw.Route("GET", "/items/{id}", "F", apigw._compile("/items/{id}"))
    stub = SimpleNamespace(routes=[route], functions={"F": fn}, api_id="api", status=lambda line: None)
    server = ApiServer(("127.0.0.1", 0), _handler(stub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/items/1"
    try:
        first = concurrent.futures.ThreadPoolExecutor(1)
        pending = first.submit(requests.get, url, timeout=30)
        with changed:
            assert changed.wait_for(lambda: len(served) == 1, timeout=10)
        r = requests.get(url, timeout=30)  # the only instance is busy past the deadline
        assert r.status_code == 503 and r.json() == {"message": "Service Unavailable"}
        assert r.headers["apigw-requestid"]
        gate.release()
        assert pending.result(30).status_code == 200
        first.shutdown()
    finally:
        gate.release()
        server.shutdown()
        server.server_close()
        fn.stop()


def test_a_method_no_route_takes_answers_404_not_501():
    from kami_local.platform import ApiServer, _handler

    route = apigw.Route("GET", "/items/{id}", "F", apigw._compile("/items/{id}"))
    stub = SimpleNamespace(routes=[route], functions={}, api_id="api", status=lambda line: None)
    server = ApiServer(("127.0.0.1", 0), _handler(stub))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/items/1"
    try:
        for method in ("TRACE", "QUERY", "PUT", "DELETE"):
            r = requests.request(method, url, timeout=30)
            assert (r.status_code, r.json()) == (404, {"message": "Not Found"}), method
    finally:
        server.shutdown()
        server.server_close()


# ---- provisioning on moto: the alarm topic, resources under a condition ----

def test_the_alarm_topic_is_provisioned_and_the_email_subscription_only_with_an_address(moto_endpoint):
    from kami_local import provision as prov

    sns = prov.client("sns", moto_endpoint)
    resources = prov.provision(moto_endpoint)["resources"]
    topic = resources["AlarmTopic"]
    assert sns.get_topic_attributes(TopicArn=topic)["Attributes"]["KmsMasterKeyId"] == resources["AlarmTopicKey"]
    # AlarmEmail is empty by default: the subscription's condition is false.
    assert "AlarmEmailSubscription" not in resources
    assert sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"] == []
    # Alarms are named only: nothing evaluates them locally.
    assert prov.client("cloudwatch", moto_endpoint).describe_alarms()["MetricAlarms"] == []

    for _ in range(2):  # provisioning again changes nothing
        resources = prov.provision(moto_endpoint, parameters={"AlarmEmail": "ops@example.com"})["resources"]
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"], s["SubscriptionArn"]) for s in subscriptions] == [
        ("email", "ops@example.com", resources["AlarmEmailSubscription"])]
    assert resources["AlarmTopic"] == topic


def test_functions_log_json_as_lambda_tells_them_to(moto_endpoint):
    """The template's LoggingConfig (LogFormat: JSON) reaches every function as Lambda
    passes it, AWS_LAMBDA_LOG_FORMAT, so local logs are the lines AWS would see."""
    from kami_local import provision as prov

    functions = prov.provision(moto_endpoint)["functions"]
    assert functions and all(f["env"].get("AWS_LAMBDA_LOG_FORMAT") == "JSON" for f in functions.values())
