"""Latency of the promise (the seed's 秒级到账, "within a second"): from the payment
provider's notification to the order showing `delivered`, through the local platform
(webhook function → SQS → the delivery worker's event source mapping → DynamoDB), with
the release bootstraps as template.yaml wires them.

Each order is placed first (not timed), then its Stripe-signed `checkout.session.completed`
is sent to the webhook function, paced at a rate or all at once. Two clocks are read:

- Kami's own record: the order's history (`events`, each with the millisecond `at` of the
  function that took the step) gives paid → delivered, whatever watches the order;
- the buyer's view: `GET /orders/{id}` with the order's access token, polled `interval`
  after each answer until it says `delivered`; from sending the notification to that
  answer. The gap between the last answer that was not yet `delivered` and the first
  that was is the polling's resolution, recorded per order.

A stand-in between the delivery queue's mapping and the worker function (the platform is
not changed) notes each message's SQS `SentTimestamp` and `ApproximateFirstReceiveTimestamp`
and when the worker was invoked, so the time splits into stages. Every stamp is this
machine's wall clock (the functions add the local clock's offset, taken off here).

Nothing asserts a time. An order not `delivered` within the timeout is a lost order: the
section fails.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import requests

from common import Env, bench_codes, percentile, say
from kami_local import clock, provision
from platform_bench import (card_keys, create_product, delivered_in_table, import_keys, look, pay, place_order,
                            start_platform)

MAX_INSTANCES = 4  # per function; the delivery queue's mapping runs min(2 pollers, this) batches at once
# Threads polling GET /orders for all the orders in flight: each poll is a checkout
# invocation and a Query under moto's one DynamoDB lock, on the same 2 CPUs as the path it
# watches, so more pollers slow what they measure. The realised gap between two polls of an
# order is reported with the figures.
BUYER_POLLERS = 2
STAGES = ["webhook → paid recorded", "paid → message sent", "waiting in the queue", "received → worker invoked",
          "worker → delivered recorded", "delivered → buyer sees it"]


def pct(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99),
            "max": max(values) if values else float("nan"), "n": len(values)}


def epoch_ms(at: str) -> float:
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() * 1000


def step_at(doc: dict, status: str) -> float | None:
    """When the order's history says it became `status` (epoch ms, Kami's clock)."""
    return next((epoch_ms(e["at"]) for e in doc.get("events") or [] if e.get("to") == status), None)


class WorkerStamps:
    """Stands in for the delivery worker behind the queue's mapping: passes each batch on
    and notes, per order, the message's SQS timestamps and when the worker ran it."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.orders: dict[str, dict] = {}
        self.batches: list[tuple[float, float, int, int]] = []  # invoked, returned (ms), records, handed back
        self.cold_starts = 0
        self.in_flight = 0
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)

    def __getattr__(self, name: str):
        return getattr(self.fn, name)

    def invoke(self, event, **kw):
        start = time.time() * 1000
        records = event["Records"]
        with self.lock:
            self.in_flight += 1
            for position, record in enumerate(records):
                order_id = json.loads(record["body"]).get("order_id")
                if order_id in self.orders:  # again: the first time is the one timed
                    self.orders[order_id]["receives"] += 1
                    continue
                attrs = record.get("attributes") or {}
                self.orders[order_id] = {
                    "sent": float(attrs.get("SentTimestamp", "nan")),
                    "received": float(attrs.get("ApproximateFirstReceiveTimestamp", "nan")),
                    "invoked": start, "batch": len(records), "position": position, "receives": 1}
        try:
            result = self.fn.invoke(event, **kw)
        finally:
            end = time.time() * 1000
            with self.lock:
                self.in_flight -= 1
                self.idle.notify_all()
        try:
            back = len((json.loads(result.body) or {}).get("batchItemFailures") or []) if result.ok else -1
        except (ValueError, AttributeError):
            back = -1
        with self.lock:
            self.batches.append((start, end, len(records), back))
            self.cold_starts += result.init_ms is not None
        return result

    def settle(self, timeout: float) -> None:
        """Waits (bounded) until no batch is running: an order shows `delivered` before the
        worker's invocation returns."""
        with self.lock:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout)

    @classmethod
    def install(cls, plat) -> "WorkerStamps":
        mapping = next(m for m in plat.mappings if m.function.name == "DeliveryWorkerFunction")
        mapping.function = cls(mapping.function)  # read by the pollers at every batch
        return mapping.function


@dataclass
class Watched:
    order: dict
    since: float  # monotonic: the notification was sent
    last_miss: float | None = None  # monotonic: the last poll that did not yet show it delivered
    seen: float | None = None  # monotonic: the answer that first showed it delivered
    polls: list[float] = field(default_factory=list)
    status: str = ""
    doc: dict = field(default_factory=dict)


class BuyerPolls:
    """Polls each watched order's `GET /orders/{id}` as its buyer would, `interval`
    seconds after the previous answer, with `threads` pollers for all of them, until it
    shows `delivered`."""

    def __init__(self, api: str, interval: float, threads: int) -> None:
        self.api = api
        self.interval = interval
        self.heap: list = []
        self.seq = itertools.count()
        self.cond = threading.Condition()
        self.watched: dict[str, Watched] = {}
        self.open = 0
        self.stopped = False
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def watch(self, order: dict, since: float) -> None:
        with self.cond:
            w = self.watched[order["order_id"]] = Watched(order, since)
            heapq.heappush(self.heap, (since + self.interval, next(self.seq), w))
            self.open += 1
            self.cond.notify_all()

    def _next(self) -> Watched | None:
        with self.cond:
            while not self.stopped and (not self.heap or self.heap[0][0] > time.monotonic()):
                self.cond.wait(self.heap[0][0] - time.monotonic() if self.heap else None)
            return None if self.stopped else heapq.heappop(self.heap)[2]

    def _run(self) -> None:
        while (w := self._next()) is not None:
            start = time.monotonic()
            try:
                status, doc = look(self.api, w.order)
            except requests.RequestException as e:
                status, doc = type(e).__name__, {}
            end = time.monotonic()
            with self.cond:
                w.polls.append(start)
                w.status = status
                if status == "delivered":
                    w.seen, w.doc = end, doc
                    self.open -= 1
                else:
                    w.last_miss = start
                    heapq.heappush(self.heap, (end + self.interval, next(self.seq), w))
                self.cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.open == 0, timeout)

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        for t in self.threads:
            t.join(60)


@dataclass
class Sent:
    order: dict
    at: float  # monotonic, just before the POST
    wall_ms: float
    status: int = 0
    ms: float = 0.0
    attempts: int = 0


def notify(api: str, orders: list[dict], rate: float | None, on_sent) -> list[Sent]:
    """Sends each order's paid notification, `rate` a second from the first (each on
    time, not after the previous answer), or all at once (`rate` None). A notification
    that is not answered 200 is sent again after a second, as the provider would retry
    (later); its latency keeps counting from the first send."""
    go = threading.Event()

    def send(order: dict, due: float) -> Sent:
        go.wait()
        time.sleep(max(0.0, due - time.monotonic()))
        s = Sent(order, time.monotonic(), time.time() * 1000)
        on_sent(order, s.at)
        while s.attempts < 3:
            s.attempts += 1
            try:
                s.status = pay(api, order).status_code
            except requests.RequestException:
                s.status = 0
            if s.status == 200:
                break
            time.sleep(1)
        s.ms = (time.monotonic() - s.at) * 1000
        return s

    with ThreadPoolExecutor(len(orders) if rate is None else 16) as pool:
        t0 = time.monotonic() + 0.2
        futures = [pool.submit(send, o, t0 + (i / rate if rate else 0.0)) for i, o in enumerate(orders)]
        go.set()
        return [f.result() for f in futures]


def measure(env: Env, plat, stamps: WorkerStamps, orders: list[dict], rate: float | None,
            poll_s: float | None, timeout: float, offset_ms: float) -> dict:
    """One run: notifies `orders`, waits until each shows `delivered` (polling as the buyer
    every `poll_s`, or, with None, watching the table once every 250 ms), and returns the
    figures."""
    api = plat.url
    fired = {n: s.fired for n, s in plat.schedules.items()}
    batches_before = len(stamps.batches)
    cold_before = stamps.cold_starts
    load = [os.getloadavg()[0]]
    polls = BuyerPolls(api, poll_s, BUYER_POLLERS) if poll_s else None
    try:
        t0 = time.monotonic()
        sent = notify(api, orders, rate, polls.watch if polls else lambda *_: None)
        deadline = max(s.at for s in sent) + timeout
        docs: dict[str, dict] = {}
        seen: dict[str, float] = {}
        if polls:
            polls.wait(max(0.0, deadline - time.monotonic()))
            with polls.cond:
                watched = dict(polls.watched)
            for order_id, w in watched.items():
                if w.seen is not None:
                    docs[order_id], seen[order_id] = w.doc, w.seen
        else:
            waiting = [o["order_id"] for o in orders]
            while waiting and time.monotonic() < deadline:
                waiting = sorted(set(waiting) - delivered_in_table(env, waiting))
                if waiting:
                    time.sleep(0.25)
            with ThreadPoolExecutor(4) as pool:
                for o, (status, doc) in zip(orders, pool.map(lambda o: look(api, o), orders)):
                    if status == "delivered":
                        docs[o["order_id"]] = doc
        elapsed = time.monotonic() - t0
        stamps.settle(30)
    finally:
        if polls:
            polls.close()
    load.append(os.getloadavg()[0])
    lost = [o["order_id"] for o in orders if o["order_id"] not in docs]
    if lost:
        states: dict[str, int] = {}
        for o in orders:
            if o["order_id"] in lost:
                status = look(api, o)[0]
                states[status] = states.get(status, 0) + 1
        raise RuntimeError(f"{len(lost)} of {len(orders)} paid orders not delivered {timeout:.0f} s after their "
                           f"notification (lost orders; now: {states})")
    not_ok = [s for s in sent if s.status != 200]
    if not_ok:
        raise RuntimeError(f"{len(not_ok)} notifications not answered 200 after 3 tries: "
                           f"{sorted({s.status for s in not_ok})}")
    if any(not card_keys(d) for d in docs.values()):
        raise RuntimeError("an order shows `delivered` without its card key")

    recorded, visible, resolution, gaps, rows = [], [], [], [], []
    stages: dict[str, list[float]] = {name: [] for name in STAGES}
    first_sent = min(s.wall_ms for s in sent)
    last_delivered = first_sent
    for s in sent:
        order_id = s.order["order_id"]
        doc = docs[order_id]
        paid, delivered = step_at(doc, "paid"), step_at(doc, "delivered")
        if paid is None or delivered is None:
            raise RuntimeError(f"order history without paid/delivered steps: {[e.get('to') for e in doc.get('events', [])]}")
        paid, delivered = paid - offset_ms, delivered - offset_ms
        recorded.append(delivered - paid)
        last_delivered = max(last_delivered, delivered)
        w = stamps.orders.get(order_id)
        row = {"sent_s": round((s.wall_ms - first_sent) / 1000, 3), "recorded_ms": round(delivered - paid, 1)}
        stages["webhook → paid recorded"].append(paid - s.wall_ms)
        if w:
            stages["paid → message sent"].append(w["sent"] - paid)
            stages["waiting in the queue"].append(w["received"] - w["sent"])
            stages["received → worker invoked"].append(w["invoked"] - w["received"])
            stages["worker → delivered recorded"].append(delivered - w["invoked"])
            row.update(queue_ms=round(w["received"] - w["sent"], 1), batch=w["batch"], position=w["position"],
                       receives=w["receives"])
        if polls:
            wt = polls.watched[order_id]
            visible.append((seen[order_id] - s.at) * 1000)
            resolution.append((wt.seen - (wt.last_miss if wt.last_miss is not None else s.at)) * 1000)
            gaps += [(b - a) * 1000 for a, b in zip(wt.polls, wt.polls[1:])]
            stages["delivered → buyer sees it"].append(s.wall_ms + (seen[order_id] - s.at) * 1000 - delivered)
            row["visible_ms"] = round(visible[-1], 1)
        rows.append(row)
    ids = {o["order_id"] for o in orders}
    mine = [w for k, w in stamps.orders.items() if k in ids]
    batches = stamps.batches[batches_before:]
    sizes = [b[2] for b in batches]
    return {
        "orders": len(orders), "rate_per_s": rate, "buyer_poll_ms": poll_s * 1000 if poll_s else None,
        "elapsed_s": elapsed, "send_span_s": max(s.at for s in sent) - min(s.at for s in sent),
        "webhook_ms": pct([s.ms for s in sent]), "webhook_retries": sum(s.attempts - 1 for s in sent),
        "recorded_ms": pct(recorded),
        "visible_ms": pct(visible) if visible else None,
        "resolution_ms": pct(resolution) if resolution else None,
        "poll_gap_ms": pct(gaps) if gaps else None,
        "polls": sum(len(w.polls) for w in polls.watched.values()) if polls else 0,
        "stages": {name: pct(v) for name, v in stages.items() if v},
        "batches": {"count": len(batches), "mean": sum(sizes) / len(sizes) if sizes else 0,
                    "max": max(sizes, default=0)},
        # A batch's duration over its records: the worker's time per order, waiting on moto included.
        "worker_ms_per_order": pct([(end - start) / n for start, end, n, _ in batches if n]),
        # Records a batch reported failed or that came back with a failed invocation: the
        # worker's time ran out (its 10 s timeout) before them; SQS shows them again only
        # after the queue's visibility timeout.
        "handed_back": sum(n if back < 0 else back for _, _, n, back in batches),
        "delivered_per_s": len(orders) / max(1e-3, (last_delivered - first_sent) / 1000),
        "detail": rows,
        "position_in_batch_max": max((w["position"] for w in mine), default=0),
        "received_more_than_once": sum(1 for w in mine if w["receives"] > 1),
        "worker_cold_starts": stamps.cold_starts - cold_before,
        "schedules_fired": {n: s.fired - fired[n] for n, s in plat.schedules.items()},
        "instances": {n: len(f.describe()["instances"]) for n, f in plat.functions.items()},
        "load_1min": load,
    }


def query_ms(env: Env, times: int = 20) -> float:
    """What one DynamoDB Query costs on this moto now (of a partition that is empty: moto
    goes through the whole table for every Query, under moto_serve's one lock)."""
    ddb = provision.client("dynamodb", env.endpoint)
    start = time.perf_counter()
    for _ in range(times):
        ddb.query(TableName=env.table, KeyConditionExpression="pk = :pk",
                  ExpressionAttributeValues={":pk": {"S": "BENCH#none"}})
    return (time.perf_counter() - start) / times * 1000


def table_items(env: Env) -> int:
    ddb = provision.client("dynamodb", env.endpoint)
    n, start = 0, None
    while True:
        page = ddb.scan(TableName=env.table, Select="COUNT", **({"ExclusiveStartKey": start} if start else {}))
        n += page["Count"]
        start = page.get("LastEvaluatedKey")
        if not start:
            return n


def run(env: Env, steady: int, steady_rate: float, paced: int, rate: float, burst: int, poll_ms: float,
        timeout: float = 300) -> dict:
    """Four runs, each on a fresh moto (env.fresh()) and platform: `steady` orders at
    `steady_rate` a second (one order in flight at a time) and `paced` orders at `rate`, the
    buyer polling every `poll_ms`; the paced run again without buyer polling (Kami's record
    only: what the polling costs); `burst` orders at once, polled."""
    offset_ms = clock.offset() * 1000
    runs = [("steady", steady, steady_rate, poll_ms / 1000), ("paced", paced, rate, poll_ms / 1000),
            ("paced, no buyer polling", paced, rate, None), ("burst", burst, None, poll_ms / 1000)]
    out = []
    for name, n, r, poll in runs:
        say(f"latency: {name}: {n} orders" + (f" at {r:g}/s" if r else " at once")
            + (f", the buyer polling every {poll * 1000:.0f} ms" if poll else ", watched in the table"))
        fresh = env.fresh()
        try:
            res = one_run(fresh, n, r, poll, timeout, offset_ms)
        finally:
            fresh.stop()
        say(f"latency: {name}: paid → delivered p50 {res['recorded_ms']['p50']:.0f} ms, p99 "
            f"{res['recorded_ms']['p99']:.0f} ms (Kami's record)"
            + (f"; the buyer sees it p99 {res['visible_ms']['p99']:.0f} ms" if res["visible_ms"] else ""))
        out.append({"name": name, **res})
    if clock.offset() * 1000 != offset_ms:
        raise RuntimeError("the local clock moved during the run (infra/kami clock); its stamps cannot be compared")
    worker = env.template["Resources"]["DeliveryWorkerFunction"]["Properties"]
    queue = env.template["Resources"]["DeliveryQueue"]["Properties"]
    return {"runs": out, "max_instances": MAX_INSTANCES, "worker_pollers": out[0]["worker_pollers"],
            "worker_timeout_s": worker.get("Timeout"), "visibility_timeout_s": queue.get("VisibilityTimeout"),
            "buyer_pollers": BUYER_POLLERS, "timeout_s": timeout, "clock_offset_s": offset_ms / 1000}


def one_run(env: Env, n: int, rate: float | None, poll_s: float | None, timeout: float, offset_ms: float) -> dict:
    plat = start_platform(env, MAX_INSTANCES)
    stamps = WorkerStamps.install(plat)
    api = plat.url
    try:
        sku = f"latency-{uuid.uuid4().hex[:10]}"
        create_product(api, sku)
        import_keys(api, sku, bench_codes(n + 1, "LT"))

        def place(i: int) -> dict:
            status, _, body = place_order(api, sku, i)
            if status != 201:
                raise RuntimeError(f"POST /orders: HTTP {status} {body}")
            return body

        with ThreadPoolExecutor(4) as pool:
            orders = list(pool.map(place, range(n + 1)))
        # Warm: one order all the way, so each function has a warm instance (a paid order
        # arrives at a running shop; cold starts are measured in their own section).
        measure(env, plat, stamps, orders[:1], rate, poll_s or 0.05, timeout, offset_ms)
        items, query = table_items(env), query_ms(env)
        res = measure(env, plat, stamps, orders[1:], rate, poll_s, timeout, offset_ms)
        return {**res, "table_items": [items, table_items(env)], "moto_query_ms": [query, query_ms(env)],
                "worker_pollers": next(
            m.pollers for m in plat.mappings if m.function.name == "DeliveryWorkerFunction")}
    finally:
        plat.stop()
