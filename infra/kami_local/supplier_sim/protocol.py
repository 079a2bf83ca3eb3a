"""Kami's `http_json` supplier protocol, the part both sides share: how a message is signed
and checked (docs/suppliers.md, "The http_json protocol").

Every message, either way, carries `X-Kami-Timestamp` (Unix seconds) and `X-Kami-Signature`,
the lowercase hex HMAC-SHA256 under the supplier's secret of `"{timestamp}.{raw body}"`
(the body empty for a GET). A receiver refuses a bad signature or a timestamp more than
300 s away from its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re

TIMESTAMP_HEADER = "X-Kami-Timestamp"
SIGNATURE_HEADER = "X-Kami-Signature"
TOLERANCE_S = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # ASCII digits only: str.isdigit() would take "²"


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The signature of one message: hex HMAC-SHA256(secret, "{timestamp}.{body}")."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, timestamp: int | float) -> dict[str, str]:
    """The two headers for a message sent at `timestamp` (Unix seconds)."""
    ts = str(int(timestamp))
    return {TIMESTAMP_HEADER: ts, SIGNATURE_HEADER: sign(secret, ts, body)}


def check(secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float,
          tolerance: int = TOLERANCE_S) -> str | None:
    """None when the message is authentic and fresh, else why not: `missing_signature`,
    `bad_timestamp`, `bad_signature` or `stale_timestamp`. The timestamp is signed as its
    header's text, so a receiver never re-formats it."""
    if not timestamp or not signature:
        return "missing_signature"
    if not _TIMESTAMP.fullmatch(timestamp):
        return "bad_timestamp"
    # As bytes: compare_digest refuses a str with non-ASCII characters (a forged header may have them).
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode("utf-8", "replace")):
        return "bad_signature"
    if abs(now - int(timestamp)) > tolerance:
        return "stale_timestamp"
    return None
