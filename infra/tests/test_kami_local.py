"""Unit tests of the local platform's pure parts: template intrinsics, route ranking,
API Gateway v2 events and responses, SQS partial batch responses, schedule rates."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kami_local import apigw  # noqa: E402
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
