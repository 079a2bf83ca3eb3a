"""Event sources from the template: SQS event source mappings and EventBridge schedules."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid

from . import template as tpl
from .provision import client


def sqs_record(msg: dict, queue_arn: str) -> dict:
    attrs = msg.get("Attributes", {})
    record = {
        "messageId": msg["MessageId"],
        "receiptHandle": msg["ReceiptHandle"],
        "body": msg["Body"],
        "attributes": attrs,
        "messageAttributes": {
            name: {
                "stringValue": a.get("StringValue"),
                "binaryValue": a.get("BinaryValue"),
                "stringListValues": a.get("StringListValues", []),
                "binaryListValues": a.get("BinaryListValues", []),
                "dataType": a["DataType"],
            } for name, a in (msg.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": msg.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": tpl.REGION,
    }
    for name, a in record["messageAttributes"].items():
        record["messageAttributes"][name] = {k: v for k, v in a.items() if v is not None}
    if msg.get("MD5OfMessageAttributes"):
        record["md5OfMessageAttributes"] = msg["MD5OfMessageAttributes"]
    return record


def failed_ids(payload: bytes, records: list[dict]) -> set[str] | None:
    """Message ids to keep from a ReportBatchItemFailures response; None = the whole
    batch failed (a malformed response counts as a failure of the whole batch, as in AWS)."""
    ids = {r["messageId"] for r in records}
    try:
        doc = json.loads(payload) if payload.strip() else None
    except ValueError:
        return None
    if doc is None or doc == {} or not isinstance(doc, dict) or doc.get("batchItemFailures") in (None, []):
        return set()
    failures = doc["batchItemFailures"]
    if not isinstance(failures, list):
        return None
    out = set()
    for f in failures:
        item = f.get("itemIdentifier") if isinstance(f, dict) else None
        if not item or item not in ids:
            return None
        out.add(item)
    return out


class SqsMapping:
    """Polls a queue as Lambda's event source mapping does: long polling, batch size and
    batching window, delete only what succeeded. Messages that fail become visible again
    after the queue's visibility timeout; moto itself moves a message to the DLQ once its
    receive count reaches the RedrivePolicy's maxReceiveCount (checked, not re-done here)."""

    def __init__(self, name: str, function, queue_url: str, queue_arn: str, props: dict,
                 endpoint: str, pollers: int, status=print) -> None:
        self.name = name
        self.function = function
        self.queue_url = queue_url
        self.queue_arn = queue_arn
        self.batch_size = int(props.get("BatchSize", 10))
        self.window = float(props.get("MaximumBatchingWindowInSeconds", 0))
        self.report_failures = "ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or [])
        self.enabled = props.get("Enabled", True) not in (False, "false")
        self.endpoint = endpoint
        self.pollers = pollers
        self.status = status
        self.stop_event = threading.Event()
        self.batches = 0

    def start(self) -> None:
        if not self.enabled:
            self.status(f"{self.name}: disabled in the template")
            return
        for i in range(self.pollers):
            threading.Thread(target=self._run, name=f"{self.name}-{i}", daemon=True).start()

    def _run(self) -> None:
        sqs = client("sqs", self.endpoint)
        while not self.stop_event.is_set():
            try:
                messages = self._receive(sqs)
                if messages and not self.stop_event.is_set():
                    self._process(sqs, messages)
            except Exception as e:  # noqa: BLE001 - keep polling, as Lambda does
                if not self.stop_event.is_set():
                    self.status(f"{self.name}: poll error: {type(e).__name__}: {e}")
                    self.stop_event.wait(1)

    def _receive(self, sqs) -> list[dict]:
        messages: list[dict] = []
        deadline = None
        while len(messages) < self.batch_size and not self.stop_event.is_set():
            wait = 5 if deadline is None else max(0, deadline - time.monotonic())
            got = sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=min(10, self.batch_size - len(messages)),
                WaitTimeSeconds=int(min(wait, 20)), AttributeNames=["All"], MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(got)
            if not messages:
                continue  # keep long polling
            if deadline is None:
                deadline = time.monotonic() + self.window
            if time.monotonic() >= deadline or (not got and deadline - time.monotonic() < 1):
                break
        return messages

    def _process(self, sqs, messages: list[dict]) -> None:
        records = [sqs_record(m, self.queue_arn) for m in messages]
        self.batches += 1
        result = self.function.invoke(
            {"Records": records}, source=f"{self.name} ({len(records)} msgs)",
            summarize=lambda b: f"{len((json.loads(b) or {}).get('batchItemFailures') or [])} failed")
        if not result.ok:
            return  # the whole batch comes back after the visibility timeout
        keep = failed_ids(result.body, records) if self.report_failures else set()
        if keep is None:
            self.status(f"{self.name}: invalid batchItemFailures response; the whole batch is retried")
            return
        done = [r for r in records if r["messageId"] not in keep]
        for i in range(0, len(done), 10):
            sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=[
                {"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(done[i:i + 10])
            ])
        if keep:
            self.status(f"{self.name}: {len(keep)} of {len(records)} messages failed; they will be retried")

    def stop(self) -> None:
        self.stop_event.set()


_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT = {"minute": 60, "hour": 3600, "day": 86400}


def rate_seconds(expression: str) -> float | None:
    m = _RATE.match(expression.strip())
    if not m:
        return None
    return int(m.group(1)) * _UNIT[m.group(2).rstrip("s")]


class Schedule:
    """An EventBridge (Scheduler) schedule firing a function asynchronously. rate()
    expressions fire on their rate; cron()/at() schedules fire only on demand."""

    def __init__(self, name: str, function, props: dict, event_type: str, status=print) -> None:
        self.name = name
        self.function = function
        self.expression = props.get("ScheduleExpression", "")
        self.period = rate_seconds(self.expression)
        self.enabled = props.get("State", "ENABLED") != "DISABLED" and props.get("Enabled", True) not in (False, "false")
        self.input = props.get("Input")
        self.retries = int((props.get("RetryPolicy") or {}).get("MaximumRetryAttempts", 2))
        self.scheduler = event_type == "ScheduleV2"
        self.status = status
        self.stop_event = threading.Event()
        self.fired = 0

    def event(self) -> dict:
        if self.input is not None:
            return json.loads(self.input) if isinstance(self.input, str) else self.input
        source = "aws.scheduler" if self.scheduler else "aws.events"
        kind = "schedule" if self.scheduler else "rule"
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": "Scheduled Event",
            "source": source,
            "account": tpl.ACCOUNT_ID,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": tpl.REGION,
            "resources": [f"arn:aws:{source.split('.')[1]}:{tpl.REGION}:{tpl.ACCOUNT_ID}:{kind}/default/{self.name}"],
            "detail": {},
        }

    def fire(self):
        """Invokes the function now, retrying per RetryPolicy as an async invocation would."""
        self.fired += 1
        for _attempt in range(1 + min(self.retries, 2)):
            result = self.function.invoke(self.event(), source=f"schedule {self.name}")
            if result.ok:
                break
        return result

    def start(self) -> None:
        if self.period is None or not self.enabled:
            self.status(f"schedule {self.name} ({self.expression}): fires only on demand")
            return
        threading.Thread(target=self._run, name=f"schedule-{self.name}", daemon=True).start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.period):
            try:
                self.fire()
            except Exception as e:  # noqa: BLE001 - a schedule keeps firing
                self.status(f"schedule {self.name}: {type(e).__name__}: {e}")

    def stop(self) -> None:
        self.stop_event.set()
