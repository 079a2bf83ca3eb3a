"""Restores Kami's table after data loss or corruption (docs/operations.md, "Restore").

The procedure's steps as commands, against AWS with the caller's credentials, or against
moto (--endpoint-url), as infra/tests/test_restore.py runs them:

    infra/kami restore backup    --table LIVE
    infra/kami restore restore   --source LIVE --target NEW (--time 2025-05-01T09:30:00Z | --latest | --backup ARN)
    infra/kami restore settle    --table NEW
    infra/kami restore verify    --live LIVE --restored NEW [--show 5]
    infra/kami restore copy-back --restored NEW --live LIVE [--prefix PK_PREFIX ...] [--overwrite] [--dry-run]

The live table stays the stack's table: the restore goes to a new table, and copy-back
writes the restored items back into the live one (why not a cut-over: docs/operations.md).
The settings a restore does not carry (TTL, point-in-time recovery, deletion protection)
are read from template.yaml's KamiTable and applied by `restore` (again by `settle`).
With --json (before the command) every command prints JSON.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import boto3

from . import template as tpl

TABLE = "KamiTable"
PITR_WAIT_SECONDS = 600


def table_properties(template_path: str | Path | None = None) -> dict:
    """KamiTable's Properties from the template, intrinsics resolved (they may not refer to
    another resource: a restore creates nothing else)."""
    template = tpl.load(template_path or tpl.default_template())

    def elsewhere(*args: str) -> str:
        raise ValueError(f"{TABLE}'s settings refer to another resource: {args}")

    return tpl.Resolver(template, {}, elsewhere, elsewhere).resolve(template["Resources"][TABLE]["Properties"])


def apply_table_settings(ddb, name: str, props: dict, pitr_wait_seconds: float = PITR_WAIT_SECONDS) -> list[str]:
    """Applies what CreateTable and a restore leave out (TTL, point-in-time recovery,
    deletion protection) as `props` (a table's template Properties) say; returns the
    settings it changed. Idempotent."""
    applied = []
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        current = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if current.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            ddb.update_time_to_live(TableName=name, TimeToLiveSpecification=ttl)
            applied.append("ttl")
    pitr = props.get("PointInTimeRecoverySpecification")
    if pitr:
        want = "ENABLED" if pitr.get("PointInTimeRecoveryEnabled") else "DISABLED"
        if _pitr(ddb, name).get("PointInTimeRecoveryStatus") != want:
            _update_pitr(ddb, name, pitr, pitr_wait_seconds)
            applied.append("pitr")
    protect = bool(props.get("DeletionProtectionEnabled"))
    if bool(ddb.describe_table(TableName=name)["Table"].get("DeletionProtectionEnabled")) != protect:
        ddb.update_table(TableName=name, DeletionProtectionEnabled=protect)
        applied.append("deletion_protection")
    return applied


def _pitr(ddb, name: str) -> dict:
    return ddb.describe_continuous_backups(TableName=name)["ContinuousBackupsDescription"].get(
        "PointInTimeRecoveryDescription", {})


def _update_pitr(ddb, name: str, pitr: dict, wait_seconds: float) -> None:
    # A table just created or restored refuses PITR for a few minutes
    # (ContinuousBackupsUnavailableException) while DynamoDB readies its backups.
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            ddb.update_continuous_backups(TableName=name, PointInTimeRecoverySpecification=pitr)
            return
        except ddb.exceptions.ContinuousBackupsUnavailableException:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: point-in-time recovery still unavailable after {wait_seconds:.0f} s; "
                                 f"run `restore settle --table {name}` again later") from None
            time.sleep(15)


def backup(ddb, table: str, name: str | None = None) -> dict:
    name = name or f"{table}-before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    details = ddb.create_backup(TableName=table, BackupName=name)["BackupDetails"]
    return {"backup_arn": details["BackupArn"], "backup_name": details["BackupName"]}


def restore(ddb, source: str, target: str, props: dict, at: datetime | None = None, latest: bool = False,
            backup_arn: str | None = None, wait_minutes: int = 240) -> dict:
    """Restores `source` as it was at `at` (or its latest restorable time, or a backup) into
    the new table `target`, waits until it is ACTIVE and applies the template's settings."""
    overrides: dict[str, Any] = {"BillingModeOverride": props.get("BillingMode", "PROVISIONED")}
    if (props.get("SSESpecification") or {}).get("SSEEnabled"):
        overrides["SSESpecificationOverride"] = {"Enabled": True}
    if backup_arn:
        ddb.restore_table_from_backup(TargetTableName=target, BackupArn=backup_arn, **overrides)
    else:
        pitr = _pitr(ddb, source)
        if pitr.get("PointInTimeRecoveryStatus") != "ENABLED":
            raise SystemExit(f"{source} has no point-in-time recovery: restore from a backup (--backup)")
        earliest = pitr.get("EarliestRestorableDateTime")
        if at is not None and earliest is not None and at < earliest:
            raise SystemExit(f"{source} can be restored to {earliest.isoformat()} at the earliest, not {at.isoformat()}")
        when = {"UseLatestRestorableTime": True} if latest else {"RestoreDateTime": at}
        ddb.restore_table_to_point_in_time(SourceTableName=source, TargetTableName=target, **when, **overrides)
    # Minutes to hours on AWS, by the table's size.
    ddb.get_waiter("table_exists").wait(TableName=target, WaiterConfig={"Delay": 20, "MaxAttempts": wait_minutes * 3})
    return {"table": target, "applied": apply_table_settings(ddb, target, props)}


# ---- comparing the restored table with the live one, item by item ----

@dataclass
class Diff:
    """How the restored items stand against the live ones, by entity (the `entity`
    attribute every item has)."""

    counts: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[str, dict[str, list]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    show: int = 0

    def note(self, entity: str, status: str, key: dict) -> None:
        self.counts[entity][status] += 1
        if len(self.examples[entity][status]) < self.show:
            self.examples[entity][status].append({k: next(iter(v.values())) for k, v in key.items()})

    def report(self) -> dict:
        return {"entities": {e: dict(sorted(c.items())) for e, c in sorted(self.counts.items())},
                "examples": {e: dict(s) for e, s in sorted(self.examples.items()) if s}}


def _scan(ddb, table: str, prefixes: list[str]) -> Iterator[list[dict]]:
    """The table's items, a page at a time (consistent reads), limited to pk prefixes."""
    for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        yield [i for i in page["Items"] if not prefixes or i["pk"]["S"].startswith(tuple(prefixes))]


def _key(item: dict) -> tuple[str, str]:
    return item["pk"]["S"], item["sk"]["S"]


def _entity(item: dict) -> str:
    return item.get("entity", {}).get("S") or item["pk"]["S"].split("#", 1)[0]


def _digest(item: dict) -> str:
    text = json.dumps(item, sort_keys=True, default=lambda b: base64.b64encode(bytes(b)).decode())
    return hashlib.sha256(text.encode()).hexdigest()


def _held_key_id(item: dict) -> str | None:
    """The card key a live order holds through this delivery record, if it is one."""
    if item["pk"]["S"].startswith("ORDER#") and item["sk"]["S"].startswith("DELIVERY#") \
            and item.get("type", {}).get("S") == "card_key":
        return item["key_id"]["S"]
    return None


def compare(ddb, live: str, restored: str, prefixes: list[str], diff: Diff) -> Iterator[tuple[str, dict]]:
    """Yields (status, restored item) for each restored item: `same`, `missing` (not in
    the live table), `differs`, or `held` (a card key in stock when restored that a live
    order holds now: putting it back would sell it twice). Notes every one, and each live
    item the restored table lacks (`only_live`: written after the restore point), in `diff`.
    Holds a digest per live item in memory, never the items."""
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    held: set[str] = set()
    # The held keys are gathered from the whole live table, whatever the prefixes.
    for page in _scan(ddb, live, []):
        for item in page:
            key_id = _held_key_id(item)
            if key_id:
                held.add(key_id)
            if not prefixes or item["pk"]["S"].startswith(tuple(prefixes)):
                seen[_key(item)] = (_digest(item), _entity(item))
    for page in _scan(ddb, restored, prefixes):
        for item in page:
            key = _key(item)
            found = seen.pop(key, None)
            if found is None:
                stock_key = item["pk"]["S"].startswith("STOCK#") and item.get("key_id", {}).get("S") in held
                status = "held" if stock_key else "missing"
            else:
                status = "same" if found[0] == _digest(item) else "differs"
            diff.note(_entity(item), status, {"pk": item["pk"], "sk": item["sk"]})
            yield status, item
    for (pk, sk), (_, entity) in seen.items():
        diff.note(entity, "only_live", {"pk": {"S": pk}, "sk": {"S": sk}})


def settings_problems(ddb, table: str, props: dict) -> list[str]:
    """What the restored table lacks of the template's table: indexes, TTL, PITR, deletion protection."""
    problems = []
    description = ddb.describe_table(TableName=table)["Table"]
    indexes = {i["IndexName"]: i.get("IndexStatus") for i in description.get("GlobalSecondaryIndexes", [])}
    for gsi in props.get("GlobalSecondaryIndexes", []):
        if indexes.get(gsi["IndexName"]) != "ACTIVE":
            problems.append(f"index {gsi['IndexName']}: {indexes.get(gsi['IndexName'], 'missing')}")
    ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if (props.get("TimeToLiveSpecification") or {}).get("Enabled") and ttl.get("TimeToLiveStatus") != "ENABLED":
        problems.append(f"ttl: {ttl.get('TimeToLiveStatus')}")
    if (props.get("PointInTimeRecoverySpecification") or {}).get("PointInTimeRecoveryEnabled") \
            and _pitr(ddb, table).get("PointInTimeRecoveryStatus") != "ENABLED":
        problems.append("point-in-time recovery: off")
    if props.get("DeletionProtectionEnabled") and not description.get("DeletionProtectionEnabled"):
        problems.append("deletion protection: off")
    return problems


def verify(ddb, live: str, restored: str, props: dict, show: int = 0) -> dict:
    diff = Diff(show=show)
    for _ in compare(ddb, live, restored, [], diff):
        pass
    return {"settings_problems": settings_problems(ddb, restored, props), **diff.report()}


def copy_back(ddb, restored: str, live: str, prefixes: list[str], overwrite: bool = False,
              dry_run: bool = False, workers: int = 16) -> dict:
    """Puts restored items back into the live table: those it lacks (on condition it still
    lacks them), and with `overwrite` those that differ. Never a card key a live order holds."""
    diff = Diff()
    outcome: Counter = Counter()

    def put(entry: tuple[str, dict]) -> str:
        status, item = entry
        if dry_run:
            return f"would_write_{status}"
        try:
            if status == "missing":
                ddb.put_item(TableName=live, Item=item, ConditionExpression="attribute_not_exists(pk)")
            else:
                ddb.put_item(TableName=live, Item=item)
        except ddb.exceptions.ConditionalCheckFailedException:
            return "written_meanwhile"
        return "written" if status == "missing" else "overwritten"

    writable = {"missing", "differs"} if overwrite else {"missing"}
    with ThreadPoolExecutor(workers) as pool:
        batch = []
        for status, item in compare(ddb, live, restored, prefixes, diff):
            if status in writable:
                batch.append((status, item))
            elif status != "same":
                outcome[f"left_{status}"] += 1
            # A thousand at a time: the restored table is never all in memory.
            if len(batch) >= 1000:
                outcome.update(pool.map(put, batch))
                batch = []
        outcome.update(pool.map(put, batch))
    return {"outcome": dict(sorted(outcome.items())), **diff.report()}


# ---- command line ----

def _time(text: str) -> datetime:
    at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("give the time with its zone, e.g. 2025-05-01T09:30:00Z")
    return at


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        return
    for name, value in result.items():
        if name == "entities":
            statuses = sorted({s for c in value.values() for s in c})
            print(f"{'entity':20}" + "".join(f"{s:>12}" for s in statuses))
            for entity, counts in value.items():
                print(f"{entity:20}" + "".join(f"{counts.get(s, 0):>12}" for s in statuses))
        else:
            print(f"{name}: {json.dumps(value, default=str)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="restore", description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", help="another endpoint than AWS's (moto, for tests)")
    parser.add_argument("--region", help="defaults to the AWS configuration's")
    parser.add_argument("--template", help="defaults to the repository's template.yaml")
    parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="an on-demand backup of the live table as it is now")
    b.add_argument("--table", required=True)
    r = sub.add_parser("restore", help="restore into a new table, then settle it")
    r.add_argument("--source", required=True)
    r.add_argument("--target", required=True)
    when = r.add_mutually_exclusive_group(required=True)
    when.add_argument("--time", type=_time, help="ISO 8601 with zone: the last moment before the damage")
    when.add_argument("--latest", action="store_true")
    when.add_argument("--backup", help="a backup's ARN (on-demand, AWS Backup, or a deleted table's system backup)")
    r.add_argument("--wait-minutes", type=int, default=240)
    s = sub.add_parser("settle", help="apply TTL, PITR and deletion protection to a restored table")
    s.add_argument("--table", required=True)
    v = sub.add_parser("verify", help="compare a restored table with the live one, by entity")
    v.add_argument("--live", required=True)
    v.add_argument("--restored", required=True)
    v.add_argument("--show", type=int, default=0, help="list up to N keys per entity and status")
    c = sub.add_parser("copy-back", help="put restored items back into the live table")
    c.add_argument("--restored", required=True)
    c.add_argument("--live", required=True)
    c.add_argument("--prefix", action="append", default=[], help="only items whose pk starts so (repeatable)")
    c.add_argument("--overwrite", action="store_true", help="also replace live items that differ")
    c.add_argument("--dry-run", action="store_true")
    c.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)

    ddb = boto3.client("dynamodb", endpoint_url=args.endpoint_url, region_name=args.region)
    props = table_properties(args.template)
    if args.command == "backup":
        result = backup(ddb, args.table)
    elif args.command == "restore":
        result = restore(ddb, args.source, args.target, props, at=args.time, latest=args.latest,
                         backup_arn=args.backup, wait_minutes=args.wait_minutes)
    elif args.command == "settle":
        result = {"table": args.table, "applied": apply_table_settings(ddb, args.table, props)}
    elif args.command == "verify":
        result = verify(ddb, args.live, args.restored, props, args.show)
    else:
        result = copy_back(ddb, args.restored, args.live, args.prefix, args.overwrite, args.dry_run, args.workers)
    _print(result, args.json)
    return 1 if result.get("settings_problems") else 0


if __name__ == "__main__":
    sys.exit(main())
