"""moto server with DynamoDB's isolation guarantees.

Stock moto answers requests on many threads and checks a condition, then writes, with
no lock in between: two concurrent conditional writes can both pass, which real
DynamoDB never allows. It also rolls a cancelled transaction back by restoring a deep
copy of the whole table taken before it, which is slow on large tables and, under
concurrency, erases other requests' writes. This wrapper (owned by the Kami project,
not a stub) fixes both and changes nothing else:

- every DynamoDB request runs under one lock (DynamoDB serialises writes per item and
  isolates transactions; one lock is a stricter, simpler version of that);
- a cancelled TransactWriteItems restores only the items it touched.

Other services (SQS long polling, KMS, Secrets Manager) are not serialised.

Usage: python -m kami_local.moto_serve --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import copy
import os
import threading

from moto.dynamodb.models import DynamoDBBackend, Table
import moto.dynamodb.models as dynamodb_models
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

_DYNAMODB_LOCK = threading.Lock()


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


def _serialise_dynamodb(app):
    def wrapped(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with _DYNAMODB_LOCK:
                # Materialise the body inside the lock: the write is complete when it returns.
                return list(app(environ, start_response))
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
    run_simple(args.host, args.port, _serialise_dynamodb(app), threaded=True)


if __name__ == "__main__":
    main()
