"""API Gateway HTTP API emulation: routes from the template's HttpApi events, requests
turned into payload format 2.0 events, function responses mapped back."""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote

from . import template as tpl

MAX_PAYLOAD = 6 * 1024 * 1024  # Lambda's synchronous invocation payload limit
# HTTP APIs wait at most 30 s for an integration, then answer 503 {"message":"Service
# Unavailable"}. Locally that bounds how long a request waits for a free instance.
INTEGRATION_TIMEOUT = 30.0
_TEXT_TYPES = re.compile(
    r"^(text/.*|application/(json|xml|javascript)|application/.*\+(json|xml))$"
)


@dataclass
class Route:
    method: str  # "GET", ... or "ANY"
    path: str  # "/orders/{order_id}", or "$default"
    function: str
    regex: re.Pattern

    @property
    def key(self) -> str:
        return "$default" if self.path == "$default" else f"{self.method} {self.path}"

    @property
    def rank(self) -> tuple:
        """API Gateway prefers the most specific route: more literal segments, no greedy
        parameter, an exact method over ANY."""
        segments = [s for s in self.path.split("/") if s]
        literal = sum(1 for s in segments if not s.startswith("{"))
        greedy = any(s.endswith("+}") for s in segments)
        return (self.path != "$default", literal, not greedy, self.method != "ANY")


def routes(template: dict) -> list[Route]:
    out = []
    for logical_id, fn in tpl.functions(template).items():
        for event in (fn["Properties"].get("Events") or {}).values():
            if event.get("Type") != "HttpApi":
                continue
            props = event.get("Properties") or {}
            method = str(props.get("Method", "ANY")).upper()
            path = props.get("Path", "$default")
            out.append(Route("ANY" if method in ("ANY", "X-AMAZON-APIGATEWAY-ANY-METHOD") else method,
                             path, logical_id, _compile(path)))
    return sorted(out, key=lambda r: r.rank, reverse=True)


def _compile(path: str) -> re.Pattern:
    if path == "$default":
        return re.compile(r"^/.*$")
    pattern = ""
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("+}"):
            pattern += f"(?P<{_group(part[1:-2])}>.+)"
        elif part.startswith("{"):
            pattern += f"(?P<{_group(part[1:-1])}>[^/]+)"
        else:
            pattern += re.escape(part)
    return re.compile(f"^{pattern}$")


def _group(name: str) -> str:
    return "p_" + re.sub(r"\W", "_", name)


def match(table: list[Route], method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    for route in table:
        if route.method not in ("ANY", method):
            continue
        m = route.regex.match(path)
        if m:
            names = re.findall(r"\{([^}+]+)\+?\}", route.path)
            return route, {n: unquote(v) for n, v in zip(names, m.groups(), strict=True)}
    return None


def request_id() -> str:
    return base64.b64encode(os.urandom(10)).decode()


def build_event(route: Route, params: dict[str, str], method: str, raw_path: str, raw_query: str,
                header_pairs: list[tuple[str, str]], body: bytes, source_ip: str, api_id: str,
                req_id: str) -> dict:
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in header_pairs:
        name = name.lower()
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        else:
            headers[name] = f"{headers[name]},{value}" if name in headers else value
    headers.setdefault("x-forwarded-for", source_ip)
    headers.setdefault("x-forwarded-port", headers.get("host", ":80").rpartition(":")[2] or "80")
    headers.setdefault("x-forwarded-proto", "http")
    headers["x-amzn-trace-id"] = f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
    now = time.time()
    host = headers.get("host", "localhost")
    event: dict = {
        "version": "2.0",
        "routeKey": route.key,
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if raw_query:
        query: dict[str, str] = {}
        for k, v in parse_qsl(raw_query, keep_blank_values=True):
            query[k] = f"{query[k]},{v}" if k in query else v
        event["queryStringParameters"] = query
    event["requestContext"] = {
        "accountId": tpl.ACCOUNT_ID,
        "apiId": api_id,
        "domainName": host,
        "domainPrefix": host.split(".")[0].split(":")[0],
        "http": {
            "method": method,
            "path": raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": req_id,
        "routeKey": route.key,
        "stage": "$default",
        "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
        "timeEpoch": int(now * 1000),
    }
    if params:
        event["pathParameters"] = params
    if body:
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        text = _TEXT_TYPES.match(content_type) is not None
        if text:
            try:
                event["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                text = False
        if not text:
            event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = not text
    else:
        event["isBase64Encoded"] = False
    return event


def map_response(payload: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """A function's payload format 2.0 response as (status, headers, body)."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return error(500)
    if not isinstance(doc, dict) or "statusCode" not in doc:
        # Valid JSON without a statusCode: API Gateway returns it whole as a JSON body.
        return 200, [("content-type", "application/json")], payload
    try:
        status = int(doc["statusCode"])
        headers = [(k, str(v)) for k, v in (doc.get("headers") or {}).items()]
        for k, values in (doc.get("multiValueHeaders") or {}).items():
            headers.extend((k, str(v)) for v in values)
        headers.extend(("set-cookie", str(c)) for c in doc.get("cookies") or [])
        body = doc.get("body") or ""
        data = base64.b64decode(body) if doc.get("isBase64Encoded") else str(body).encode()
    except (TypeError, ValueError, AttributeError):
        return error(500)
    return status, headers, data


_MESSAGES = {404: "Not Found", 413: "Request Entity Too Large", 500: "Internal Server Error",
             503: "Service Unavailable"}


def error(status: int) -> tuple[int, list[tuple[str, str]], bytes]:
    body = json.dumps({"message": _MESSAGES[status]}).encode()
    return status, [("content-type", "application/json")], body
