"""moto server with DynamoDB's isolation guarantees.

Stock moto answers requests on many threads and checks a condition, then writes, with
no lock in between: two concurrent conditional writes can both pass, which real
DynamoDB never allows. It also rolls a cancelled transaction back by restoring a deep
copy of the whole table taken before it, which is slow on large tables and, under
concurrency, erases other requests' writes. This wrapper (owned by the Kami project,
not a stub) fixes both and changes nothing else:

- every DynamoDB request runs under one lock (DynamoDB serialises writes per item and
  isolates transactions; one lock is a stricter, simpler version of that);
- a cancelled TransactWriteItems restores only the items it touched;
- TransactWriteItems honours ClientRequestToken as DynamoDB does: the same token with
  the same request within 10 minutes of a success succeeds again without writing, with a
  different request it fails with IdempotentParameterMismatchException. (The SDK sends
  one token per call and keeps it across its own retries, so a retry after a lost answer
  must not run the transaction twice.)

Other services (SQS long polling, KMS, Secrets Manager) are not serialised.

It also serves `GET /_kami/outbox`: every email moto's SES took and every SMS its SNS
took, as `{"messages": [{"channel", "message_id", "recipient", "subject", "body"}]}`
(the local outbox that `infra/kami outbox` prints; moto keeps them but has no API
that lists them).

And the fault suite's hooks (call_faults.py): rules at `/_kami/call-faults` that kill a
function right after a chosen call of its took effect, or fail that call with an AWS
error; and `POST /_kami/sqs/visible-now`.

Usage: python -m kami_local.moto_serve --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import threading
import time

from moto.dynamodb.models import DynamoDBBackend, Table
import moto.dynamodb.models as dynamodb_models
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

from . import call_faults

_DYNAMODB_LOCK = threading.Lock()
_TOKEN_WINDOW_SECONDS = 600
_TRANSACT_WRITE = "DynamoDB_20120810.TransactWriteItems"


class _CopyWithoutTables:
    """Stands in for the `copy` module inside moto's DynamoDB models: tables are not
    deep-copied (the item-level undo below replaces that), everything else is."""

    @staticmethod
    def deepcopy(obj, memo=None):
        return obj if isinstance(obj, Table) else copy.deepcopy(obj, memo)

    copy = staticmethod(copy.copy)


def _item_key(backend: DynamoDBBackend, op_type: str, op: dict) -> dict:
    if op_type != "Put":
        return op["Key"]
    table = backend.get_table(op["TableName"])
    key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = op["Item"][table.range_key_attr]
    return key


def _patch_transactions() -> None:
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self: DynamoDBBackend, transact_items: list) -> None:
        undo = []
        for entry in transact_items:
            op_type, op = next(iter(entry.items()))
            try:
                key = _item_key(self, op_type, op)
                before = self.get_item(op["TableName"], key)
            except Exception:  # moto itself reports malformed operations
                continue
            undo.append(
                (op["TableName"], key, None if before is None else copy.deepcopy(before.to_json()["Attributes"]))
            )
        try:
            original(self, transact_items)
        except Exception:
            for table_name, key, attributes in reversed(undo):
                if attributes is None:
                    if self.get_item(table_name, key) is not None:
                        self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attributes)
            raise

    dynamodb_models.copy = _CopyWithoutTables
    DynamoDBBackend.transact_write_items = transact_write_items


class _ClientTokens:
    """Successful TransactWriteItems by ClientRequestToken: token -> (request digest, when)."""

    def __init__(self, window_seconds: float = _TOKEN_WINDOW_SECONDS):
        self.window_seconds = window_seconds
        self.succeeded: dict[str, tuple[str, float]] = {}

    @staticmethod
    def digest(request: dict) -> str:
        rest = {k: v for k, v in request.items() if k != "ClientRequestToken"}
        return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()

    def earlier(self, token: str, digest: str, now: float) -> str | None:
        """'replay' or 'mismatch' for a token that succeeded within the window, else None."""
        # Oldest first (insertion order, monotonic time): drop the expired ones from the front.
        while self.succeeded:
            oldest, (_, when) = next(iter(self.succeeded.items()))
            if now - when < self.window_seconds:
                break
            del self.succeeded[oldest]
        seen = self.succeeded.get(token)
        if seen is None:
            return None
        return "replay" if seen[0] == digest else "mismatch"

    def remember(self, token: str, digest: str, now: float) -> None:
        self.succeeded[token] = (digest, now)


def _json_answer(start_response, status: str, body: dict) -> list[bytes]:
    payload = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/x-amz-json-1.0"), ("Content-Length", str(len(payload)))])
    return [payload]


def _transact_with_token(app, tokens: _ClientTokens, environ, start_response) -> list[bytes]:
    if not environ.get("CONTENT_LENGTH"):
        return list(app(environ, start_response))
    raw = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
    environ["wsgi.input"] = io.BytesIO(raw)
    try:
        request = json.loads(raw)
    except ValueError:
        return list(app(environ, start_response))
    token = request.get("ClientRequestToken")
    if not token:
        return list(app(environ, start_response))
    digest = tokens.digest(request)
    earlier = tokens.earlier(token, digest, time.monotonic())
    if earlier == "replay":
        return _json_answer(start_response, "200 OK", {})
    if earlier == "mismatch":
        return _json_answer(start_response, "400 Bad Request", {
            "__type": "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
            "message": "The request uses the same client token as a previous, but non-identical request.",
        })
    status_seen = []

    def recording_start_response(status, headers, exc_info=None):
        status_seen.append(status)
        return start_response(status, headers, exc_info)

    body = list(app(environ, recording_start_response))
    if status_seen and status_seen[0].startswith("200"):
        tokens.remember(token, digest, time.monotonic())
    return body


def _serialise_dynamodb(app):
    tokens = _ClientTokens()

    def wrapped(environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith("DynamoDB_"):
            with _DYNAMODB_LOCK:
                # Materialise the body inside the lock: the write is complete when it returns.
                if target == _TRANSACT_WRITE:
                    return _transact_with_token(app, tokens, environ, start_response)
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


OUTBOX_PATH = "/_kami/outbox"


def outbox_messages() -> list[dict]:
    """What moto's SES and SNS sent, in the order each took them (emails first)."""
    from moto.ses.models import Message as SesMessage, ses_backends
    from moto.sns.models import sns_backends

    messages = []
    for _account, regions in ses_backends.items():
        for _region, backend in regions.items():
            for sent in backend.sent_messages:
                if not isinstance(sent, SesMessage):
                    continue
                for recipient in [a for addresses in sent.destinations.values() for a in addresses]:
                    messages.append({
                        "channel": "email", "message_id": sent.id, "recipient": recipient,
                        "subject": sent.subject, "body": sent.body,
                    })
    for _account, regions in sns_backends.items():
        for _region, backend in regions.items():
            for message_id, (phone, body) in backend.sms_messages.items():
                messages.append({
                    "channel": "sms", "message_id": message_id, "recipient": phone,
                    "subject": None, "body": body,
                })
    return messages


def _serve_outbox(app):
    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") == OUTBOX_PATH and environ.get("REQUEST_METHOD") == "GET":
            payload = json.dumps({"messages": outbox_messages()}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
            return [payload]
        return app(environ, start_response)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    # moto builds queue URLs from this, as its own launcher does.
    os.environ.setdefault("MOTO_PORT", str(args.port))
    _patch_transactions()
    app = DomainDispatcherApplication(create_backend_app)
    # Kill rules sit outside the DynamoDB lock: the platform kills while others go on.
    served = _serve_outbox(call_faults.middleware(_serialise_dynamodb(app)))
    run_simple(args.host, args.port, served, threaded=True)


if __name__ == "__main__":
    main()
