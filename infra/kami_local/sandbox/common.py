"""What the providers' modules share: the request and answer types, the error the control
routes raise, and the time formats the providers write."""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import secrets
import string
from email.message import Message
from urllib.parse import parse_qsl

CHINA = datetime.timezone(datetime.timedelta(hours=8))  # Alipay and WeChat Pay write Beijing time


@dataclasses.dataclass
class Request:
    method: str
    path: str  # without the query string, URL-encoded as received
    query: str  # the raw query string ('' when none)
    headers: Message
    body: bytes
    # The request target after the provider's prefix, query included, exactly as sent
    # (WeChat Pay signs this: `/v3/pay/transactions/out-trade-no/X?mchid=Y`).
    target: str = ""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default) or default

    def text(self) -> str:
        return self.body.decode("utf-8")

    def form(self) -> list[tuple[str, str]]:
        """The body as `application/x-www-form-urlencoded` pairs (UTF-8)."""
        return parse_qsl(self.body.decode("utf-8"), keep_blank_values=True)

    def query_pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def is_form(self) -> bool:
        return self.header("Content-Type").split(";")[0].strip().lower() == "application/x-www-form-urlencoded"


@dataclasses.dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class SandboxError(Exception):
    """A refusal of a control route (`/_sandbox/...`): HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(status: int, data, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(status, body, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])])


def html_response(status: int, title: str, body_html: str, headers: list[tuple[str, str]] | None = None) -> Response:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}"
            "table{border-collapse:collapse}td{padding:.2em .8em;border-bottom:1px solid #ddd}"
            "button{font-size:1.2em;padding:.4em 1.5em}.sandbox{color:#a00}</style></head><body>"
            f"<p class='sandbox'>Kami payment sandbox: LOCAL TEST, no money moves.</p>{body_html}</body></html>")
    return Response(status, page.encode(), [("Content-Type", "text/html; charset=utf-8"), *(headers or [])])


def pay_form(provider: str, payment_id: str, label: str = "Pay") -> str:
    """A button that pays through the control route, as a buyer would on the provider's page."""
    return ("<form method='post' action='/_sandbox/pay'>"
            f"<input type='hidden' name='provider' value='{html.escape(provider)}'>"
            f"<input type='hidden' name='payment_id' value='{html.escape(payment_id)}'>"
            f"<button type='submit'>{html.escape(label)}</button></form>")


def rows(pairs: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                               for k, v in pairs) + "</table>"


def china_time(ts: float, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Alipay's `yyyy-MM-dd HH:mm:ss` in Beijing time."""
    return datetime.datetime.fromtimestamp(ts, CHINA).strftime(fmt)


def parse_china_time(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA).timestamp()


def rfc3339_china(ts: float) -> str:
    """WeChat Pay's `2018-06-08T10:34:56+08:00`."""
    return datetime.datetime.fromtimestamp(int(ts), CHINA).isoformat()


def parse_rfc3339(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def bill_state(state: dict) -> dict:
    """A provider's bill edits (`/_sandbox/bill`): lines added, ids dropped, amendments by id."""
    return state.setdefault("bill", {"extra": [], "dropped": [], "amended": {}})


def edited_rows(rows: list[dict], bill: dict, amend) -> list[dict]:
    """A day's bill rows (each naming its `ids`) with the edits applied: the dropped ones
    left out, each amendment (`name`, `value`) given to `amend(row, name, value)`; by time."""
    kept = []
    for row in rows:
        if row["ids"] & set(bill["dropped"]):
            continue
        for key in sorted(row["ids"]):
            for name, value in bill["amended"].get(key, {}).items():
                amend(row, name, value)
        kept.append(row)
    return sorted(kept, key=lambda row: row["at"])


def digits(n: int, first: str = "") -> str:
    return first + "".join(secrets.choice(string.digits) for _ in range(n - len(first)))


def token(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))
