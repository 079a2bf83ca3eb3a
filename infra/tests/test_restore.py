"""The restore procedure of docs/operations.md ("Restore"), run as the operator runs it
(the commands of `infra/kami restore`, kami_local/restore.py) against moto, on a table
provisioned from template.yaml's KamiTable by the local platform's provisioner.

moto accepts RestoreTableToPointInTime but copies the table as it is at the call,
whatever RestoreDateTime says; so the point-in-time test restores before it damages the
live table, and the damage-then-restore story runs on an on-demand backup, which moto
does take at a moment (docs/operations.md says which step is tested where)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta, timezone

import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from kami_local import provision as prov
from kami_local import restore
from kami_local import template as tpl

SKU = "demo-card"
_tables = itertools.count()


@pytest.fixture(autouse=True)
def credentials(monkeypatch, moto_endpoint):
    # The commands take the caller's credentials from the environment, as on an operator's machine.
    for name, value in prov.aws_env(moto_endpoint).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def ddb(moto_endpoint):
    return prov.client("dynamodb", moto_endpoint)


@pytest.fixture
def live(moto_endpoint):
    """A fresh KamiTable, as `infra/kami up` provisions it (TTL, PITR, deletion protection)."""
    stack = prov.Stack(tpl.load(tpl.default_template()), moto_endpoint, {}, prov.local_secrets(),
                       stack_name=f"restore{next(_tables)}")
    return stack.ref("KamiTable")


@pytest.fixture
def run(moto_endpoint, capsys):
    def run(*args: str) -> dict:
        capsys.readouterr()
        assert restore.main(["--endpoint-url", moto_endpoint, "--json", *args]) == 0
        return json.loads(capsys.readouterr().out)
    return run


def put(ddb, table: str, pk: str, sk: str, entity: str, **attributes) -> None:
    item = {"pk": pk, "sk": sk, "entity": entity, **attributes}
    ddb.put_item(TableName=table, Item={k: TypeSerializer().serialize(v) for k, v in item.items()})


def get(ddb, table: str, pk: str, sk: str) -> dict | None:
    item = ddb.get_item(TableName=table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True).get("Item")
    return None if item is None else {k: TypeDeserializer().deserialize(v) for k, v in item.items()}


def scan(ddb, table: str) -> list[dict]:
    items = [i for page in ddb.get_paginator("scan").paginate(TableName=table) for i in page["Items"]]
    return sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def seed(ddb, table: str) -> None:
    """A product with its counters and two keys in stock, a paid order (gsi1), an order in
    the exception queue (gsi2), a delivered one, an idempotency record: docs/dynamodb.md."""
    now = 1_760_000_000
    put(ddb, table, f"PRODUCT#{SKU}", "PRODUCT", "product", sku=SKU, title="Demo card", price_amount=500,
        currency="CNY", delivery_type="card_key", created_at=now)
    for shard in range(8):
        put(ddb, table, f"STOCKCOUNT#{SKU}#{shard}", "COUNTER", "stock_counter", shard=shard,
            available=10, reserved=1 if shard == 3 else 0, sold=0)
    put(ddb, table, "BATCH#b1", "BATCH", "batch", batch_id="b1", sku=SKU, wrapped_key=b"\x01wrapped", created_at=now)
    for key_id in ("k1", "k2"):
        put(ddb, table, f"STOCK#{SKU}#3", f"KEY#{key_id}", "stock_key", key_id=key_id, batch_id="b1",
            sealed=b"\x00nonce+ciphertext-" + key_id.encode(), created_at=now)
        put(ddb, table, f"FINGERPRINT#fp-{key_id}", "FINGERPRINT", "fingerprint", sku=SKU, key_id=key_id)
    order = dict(sku=SKU, quantity=1, delivery_type="card_key", amount=500, currency="CNY",
                 stock_split=[{"shard": 3, "units": 1}], stock_shard=3, buyer_email="buyer@example.com",
                 token_hash="ab" * 32, created_at=now, expires_at=(now + 1800) * 1000, updated_at=now)
    put(ddb, table, "ORDER#o1", "ORDER", "order", order_id="o1", status="paid", gsi1pk="PAID#5",
        gsi1sk=now + 120, **order)
    put(ddb, table, "ORDER#o1", "EVENT#01JAAAAAAAAAAAAAAAAAAAAAAA", "order_event", at=now,
        **{"from": "pending_payment", "to": "paid", "cause": "payment"})
    put(ddb, table, "ORDER#o2", "ORDER", "order", order_id="o2", status="delivery_failed",
        exception="no_stock", exception_cause="delivery_failed", gsi2pk="EXCEPTIONS", gsi2sk=now * 1000, **order)
    put(ddb, table, "ORDER#o3", "ORDER", "order", order_id="o3", status="delivered", **order)
    put(ddb, table, "ORDER#o3", "DELIVERY#000", "delivery", type="card_key", slot=0, key_id="k0", batch_id="b1",
        sku=SKU, sealed=b"\x00nonce+ciphertext-k0", allocated_at=now)
    put(ddb, table, "IDEMPOTENCY#orders#h1", "IDEMPOTENCY", "idempotency", request_hash="h", order_id="o1",
        ttl=now + 86400)


def keys(items: list[dict]) -> list[tuple[str, str]]:
    return [(i["pk"]["S"], i["sk"]["S"]) for i in items]


def test_a_point_in_time_restore_brings_back_the_items_their_indexes_and_the_settings(ddb, live, run):
    seed(ddb, live)
    target = f"{live}-restored"
    at = datetime.now(timezone.utc).isoformat()

    out = run("restore", "--source", live, "--target", target, "--time", at)

    # None of these came with the restore; the command set each one.
    assert out == {"table": target, "applied": ["ttl", "pitr", "deletion_protection"]}
    assert scan(ddb, target) == scan(ddb, live)
    paid = ddb.query(TableName=target, IndexName="gsi1", KeyConditionExpression="gsi1pk = :p",
                     ExpressionAttributeValues={":p": {"S": "PAID#5"}})["Items"]
    assert keys(paid) == [("ORDER#o1", "ORDER")]
    exceptions = ddb.query(TableName=target, IndexName="gsi2", KeyConditionExpression="gsi2pk = :p",
                           ExpressionAttributeValues={":p": {"S": "EXCEPTIONS"}})["Items"]
    assert keys(exceptions) == [("ORDER#o2", "ORDER")] and exceptions[0]["exception_cause"] == {"S": "delivery_failed"}
    assert ddb.describe_time_to_live(TableName=target)["TimeToLiveDescription"] == {
        "TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
    assert ddb.describe_continuous_backups(TableName=target)["ContinuousBackupsDescription"][
        "PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"
    assert ddb.describe_table(TableName=target)["Table"]["DeletionProtectionEnabled"] is True
    report = run("verify", "--live", live, "--restored", target)
    assert report["settings_problems"] == []
    assert {status for counts in report["entities"].values() for status in counts} == {"same"}
    assert run("settle", "--table", target) == {"table": target, "applied": []}


def test_a_restore_to_before_point_in_time_recovery_began_is_refused(ddb, live, moto_endpoint):
    earliest = ddb.describe_continuous_backups(TableName=live)["ContinuousBackupsDescription"][
        "PointInTimeRecoveryDescription"]["EarliestRestorableDateTime"]
    too_early = (earliest - timedelta(days=1)).isoformat()

    with pytest.raises(SystemExit, match="at the earliest"):
        restore.main(["--endpoint-url", moto_endpoint, "restore", "--source", live, "--target", f"{live}-early",
                      "--time", too_early])
    assert f"{live}-early" not in ddb.list_tables()["TableNames"]


def test_after_damage_a_backup_is_restored_compared_and_copied_back_without_selling_a_key_twice(ddb, live, run):
    seed(ddb, live)
    backup_arn = run("backup", "--table", live)["backup_arn"]
    before = {k: get(ddb, live, *k) for k in [("ORDER#o1", "ORDER"), (f"STOCKCOUNT#{SKU}#5", "COUNTER")]}
    # The damage: an order and a key in stock lost, a counter zeroed by a bad script.
    ddb.delete_item(TableName=live, Key={"pk": {"S": "ORDER#o1"}, "sk": {"S": "ORDER"}})
    ddb.delete_item(TableName=live, Key={"pk": {"S": f"STOCK#{SKU}#3"}, "sk": {"S": "KEY#k1"}})
    put(ddb, live, f"STOCKCOUNT#{SKU}#5", "COUNTER", "stock_counter", shard=5, available=0, reserved=0, sold=0)
    # Real business after the backup: order o4 sold key k2 from counter 3.
    ddb.delete_item(TableName=live, Key={"pk": {"S": f"STOCK#{SKU}#3"}, "sk": {"S": "KEY#k2"}})
    put(ddb, live, "ORDER#o4", "ORDER", "order", order_id="o4", sku=SKU, status="delivered")
    put(ddb, live, "ORDER#o4", "DELIVERY#000", "delivery", type="card_key", slot=0, key_id="k2", batch_id="b1")
    put(ddb, live, f"STOCKCOUNT#{SKU}#3", "COUNTER", "stock_counter", shard=3, available=9, reserved=1, sold=1)
    target = f"{live}-from-backup"

    assert run("restore", "--source", live, "--target", target, "--backup", backup_arn)["applied"] == [
        "ttl", "pitr", "deletion_protection"]
    report = run("verify", "--live", live, "--restored", target, "--show", "5")

    assert report["settings_problems"] == []
    entities = report["entities"]
    assert entities["order"] == {"missing": 1, "only_live": 1, "same": 2}
    assert entities["stock_key"] == {"missing": 1, "held": 1}
    assert entities["stock_counter"] == {"differs": 2, "same": 6}
    assert entities["delivery"] == {"only_live": 1, "same": 1}
    assert report["examples"]["order"]["missing"] == [{"pk": "ORDER#o1", "sk": "ORDER"}]
    assert report["examples"]["stock_key"]["held"] == [{"pk": f"STOCK#{SKU}#3", "sk": "KEY#k2"}]

    dry = run("copy-back", "--restored", target, "--live", live, "--dry-run")
    assert dry["outcome"] == {"would_write_missing": 2, "left_differs": 2, "left_held": 1}
    assert get(ddb, live, "ORDER#o1", "ORDER") is None

    assert run("copy-back", "--restored", target, "--live", live)["outcome"] == {
        "written": 2, "left_differs": 2, "left_held": 1}
    assert get(ddb, live, "ORDER#o1", "ORDER") == before[("ORDER#o1", "ORDER")]
    assert get(ddb, live, f"STOCK#{SKU}#3", "KEY#k1")["key_id"] == "k1"
    assert get(ddb, live, f"STOCK#{SKU}#3", "KEY#k2") is None  # o4 holds it
    assert get(ddb, live, "ORDER#o4", "DELIVERY#000")["key_id"] == "k2"

    # Only the damaged counter goes back; counter 3 moved for a real sale.
    assert run("copy-back", "--restored", target, "--live", live, "--prefix", f"STOCKCOUNT#{SKU}#5",
               "--overwrite")["outcome"] == {"overwritten": 1}
    assert get(ddb, live, f"STOCKCOUNT#{SKU}#5", "COUNTER") == before[(f"STOCKCOUNT#{SKU}#5", "COUNTER")]
    assert get(ddb, live, f"STOCKCOUNT#{SKU}#3", "COUNTER")["sold"] == 1
    after = run("verify", "--live", live, "--restored", target)["entities"]
    assert after["order"] == {"only_live": 1, "same": 3}
    assert after["stock_key"] == {"held": 1, "same": 1}
    assert after["stock_counter"] == {"differs": 1, "same": 7}
