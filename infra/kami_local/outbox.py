"""The local outbox: what the notifier sent, as buyers would receive it.

moto's SES and SNS keep every email and SMS they take; Kami's wrapper around moto
(`moto_serve`, `GET /_kami/outbox`) lists them. Each is joined with the notifier's own
record in the table (`NOTIFY#{order_id}`, matched by the message id SES or SNS answered)
for what the message was about: its kind, order and language. A local tool: it reads the
notification records with a Scan (no request path does).
"""

from __future__ import annotations

import json

import requests

from .provision import client


def notification_records(endpoint: str, table: str) -> dict[str, dict]:
    """The notifier's records by the message id their channel answered."""
    ddb = client("dynamodb", endpoint)
    records: dict[str, dict] = {}
    pages = ddb.get_paginator("scan").paginate(
        TableName=table, FilterExpression="begins_with(pk, :notify)",
        ExpressionAttributeValues={":notify": {"S": "NOTIFY#"}}, ConsistentRead=True)
    for page in pages:
        for item in page["Items"]:
            if "provider_ref" in item:
                records[item["provider_ref"]["S"]] = {k: next(iter(v.values())) for k, v in item.items()}
    return records


def read(endpoint: str, table: str) -> list[dict]:
    """Every message sent, oldest first per channel: kind, order_id, recipient, language,
    channel, subject and body (kind, order_id and language are null for a message the
    notifier did not record as sent)."""
    sent = requests.get(f"{endpoint}/_kami/outbox", timeout=10)
    sent.raise_for_status()
    records = notification_records(endpoint, table)
    out = []
    for message in sent.json()["messages"]:
        record = records.get(message["message_id"], {})
        out.append({
            "kind": record.get("kind"),
            "order_id": record.get("order_id"),
            "recipient": message["recipient"],
            "language": record.get("language"),
            "channel": message["channel"],
            "subject": message["subject"],
            "body": message["body"],
        })
    return out


def print_lines(endpoint: str, table: str) -> None:
    for message in read(endpoint, table):
        print(json.dumps(message, ensure_ascii=False))
