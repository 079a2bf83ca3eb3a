"""Flash sale and bulk import through the whole local platform (HTTP API on loopback,
every function under the emulator, the SQS mapping), release bootstraps."""

from __future__ import annotations

import json
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from common import ADMIN_TOKEN, LOG_DIR, Env, bench_codes, percentile, say
from kami_local import provision, stripe_webhook
from kami_local.platform import Platform

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
KEYS_PER_TRANSACTION = 49  # shared/src/app/import.rs


class _Quiet:
    def __call__(self, _line: str) -> None:
        pass

    def close(self) -> None:
        pass


def start_platform(env: Env, max_instances: int) -> Platform:
    plat = Platform(env.template, env.stack, env.provisioned, env.bootstraps, env.endpoint, port=0,
                    max_instances=max_instances, sqs_pollers=2, log_dir=LOG_DIR)
    plat.status.close()
    plat.status = _Quiet()
    for f in plat.functions.values():
        f.status = plat.status
    for m in plat.mappings:
        m.status = plat.status
    for s in plat.schedules.values():
        s.status = plat.status
    plat.start(register=False)
    return plat


def create_product(api: str, sku: str, max_per_order: int = 5) -> None:
    r = requests.post(f"{api}/admin/products", headers=AUTH, timeout=60, json={
        "sku": sku, "title": "Bench card key", "price": {"amount": 990, "currency": "CNY"},
        "delivery": {"type": "card_key"}, "max_per_order": max_per_order,
        # Every buyer of the local platform comes from 127.0.0.1: no per-address cap.
        "pending_limits": {"per_address": 1000000}})
    if r.status_code != 201:
        raise RuntimeError(f"create product: HTTP {r.status_code} {r.text[:200]}")


def import_keys(api: str, sku: str, codes: list[str]) -> dict:
    r = requests.post(f"{api}/admin/products/{sku}/card-keys", headers=AUTH, timeout=120,
                      data=json.dumps({"keys": codes}).encode())
    if r.status_code not in (200, 201):
        raise RuntimeError(f"import: HTTP {r.status_code} {r.text[:200]}")
    return r.json()


def stock(api: str, sku: str) -> dict:
    r = requests.get(f"{api}/admin/products/{sku}", headers=AUTH, timeout=60)
    r.raise_for_status()
    return r.json()["stock"]


def place_order(api: str, sku: str, i: int) -> tuple[int, float, dict]:
    """`POST /orders` for one unit as buyer `i`: (HTTP status or 0, milliseconds, body)."""
    start = time.monotonic()
    try:
        r = requests.post(f"{api}/orders", timeout=60, headers={"Idempotency-Key": f"bench-{i}-{uuid.uuid4()}"},
                          json={"sku": sku, "quantity": 1, "buyer": {"email": f"buyer{i}@example.com"}})
        status, body = r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {})
    except requests.RequestException:
        status, body = 0, {}
    return status, (time.monotonic() - start) * 1000, body


def pay(api: str, order: dict) -> requests.Response:
    """The provider's notification that `order` (a `POST /orders` answer) is paid: a
    Stripe-signed `checkout.session.completed` to the webhook function."""
    event = stripe_webhook.checkout_completed(order["order_id"], order["amount"]["amount"],
                                              order["amount"]["currency"])
    return stripe_webhook.send(api, event, timeout=60)


def look(api: str, order: dict) -> tuple[str, dict]:
    """`GET /orders/{id}` as its buyer (the order's access token): (status, the answer)."""
    r = requests.get(f"{api}/orders/{order['order_id']}", timeout=60,
                     headers={"Authorization": f"Bearer {order['access_token']}"})
    doc = r.json() if r.ok else {}
    return doc.get("status", f"HTTP {r.status_code}"), doc


def card_keys(doc: dict) -> list[str]:
    """The card keys a `GET /orders/{id}` answer shows."""
    return [d.get("code") for d in doc.get("deliveries") or [] if d.get("type") == "card_key"]


def delivered_in_table(env: Env, order_ids: list[str]) -> set[str]:
    """Which of the orders are `delivered`, read from their order items (BatchGetItem,
    100 a call, strongly consistent): a light watch, unlike every order's GET /orders."""
    ddb = provision.client("dynamodb", env.endpoint)
    done = set()
    for i in range(0, len(order_ids), 100):
        got = ddb.batch_get_item(RequestItems={env.table: {
            "Keys": [{"pk": {"S": f"ORDER#{o}"}, "sk": {"S": "ORDER"}} for o in order_ids[i:i + 100]],
            "ConsistentRead": True, "ProjectionExpression": "pk, #s",
            "ExpressionAttributeNames": {"#s": "status"}}})
        for item in got["Responses"].get(env.table, []):
            if item.get("status", {}).get("S") == "delivered":
                done.add(item["pk"]["S"].split("#", 1)[1])
    return done


def flash_sale(env: Env, buyers: int, stock_n: int, concurrency: int, max_instances: int,
               deliver_timeout: float = 300) -> dict:
    plat = start_platform(env, max_instances)
    api = plat.url
    try:
        sku = f"flash-{uuid.uuid4().hex[:10]}"
        create_product(api, sku)
        codes = bench_codes(stock_n, "FS")
        imported = set(codes)
        for i in range(0, stock_n, 10000):
            import_keys(api, sku, codes[i:i + 10000])
        del codes

        # Warm: as many instances as the pool allows (a flash sale hits a warm fleet;
        # the cold starts are measured separately).
        with ThreadPoolExecutor(max_instances) as pool:
            list(pool.map(lambda _: requests.get(f"{api}/products/{sku}", timeout=60), range(max_instances * 2)))

        say(f"flash sale: {buyers} buyers, {concurrency} at a time, {stock_n} keys, {max_instances} instances")
        results: list[tuple[int, float, dict]] = []

        def buy(i: int) -> tuple[int, float, dict]:
            status, ms, body = place_order(api, sku, i)
            if status == 201:
                sold_at.append(time.monotonic())
            return status, ms, body

        sold_at: list[float] = []
        t0 = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(buy, range(buyers)))
        elapsed = time.monotonic() - t0
        sellout = (max(sold_at) - t0) if sold_at else elapsed  # the last accepted order
        codes_by_status: dict[int, int] = {}
        for status, _, _ in results:
            codes_by_status[status] = codes_by_status.get(status, 0) + 1
        winners = [body for status, _, body in results if status == 201]
        lat = [ms for _, ms, _ in results]
        win_lat = [ms for status, ms, _ in results if status == 201]

        say(f"flash sale: {len(winners)} orders in {elapsed:.1f} s; paying them")
        pay_lat: list[float] = []

        def pay_timed(order: dict) -> int:
            start = time.monotonic()
            r = pay(api, order)
            pay_lat.append((time.monotonic() - start) * 1000)
            return r.status_code

        t1 = time.monotonic()
        with ThreadPoolExecutor(min(concurrency, 16)) as pool:
            pay_status = list(pool.map(pay_timed, winners))
        pay_elapsed = time.monotonic() - t1

        # Wait (bounded) until every paid order shows its key.
        pending = {o["order_id"]: o for o in winners}
        delivered: dict[str, list[str]] = {}
        states: dict[str, str] = {}
        deadline = time.monotonic() + deliver_timeout

        # Watch the order items' status in the table (once a second): polling every
        # order's GET /orders would load the platform more than the deliveries do. Then one
        # read of every order over the buyer's API for the keys.
        sold_qty = sum(int(o.get("quantity", 1)) for o in winners)
        waiting = set(pending)
        while waiting and time.monotonic() < deadline:
            waiting -= delivered_in_table(env, sorted(waiting))
            if waiting:
                time.sleep(1)
        deliver_elapsed = time.monotonic() - t1
        for _ in range(3):  # a last look, bounded, for stragglers
            orders = list(pending.values())
            with ThreadPoolExecutor(4) as pool:
                for order, (status, doc) in zip(orders, pool.map(lambda o: look(api, o), orders)):
                    states[order["order_id"]] = status
                    if status == "delivered":
                        delivered[order["order_id"]] = card_keys(doc)
                        pending.pop(order["order_id"])
            if not pending:
                break
            time.sleep(2)
        all_keys = [k for keys in delivered.values() for k in keys]
        final_stock = stock(api, sku)
        return {
            "buyers": buyers, "stock": stock_n, "concurrency": concurrency, "max_instances": max_instances,
            "elapsed_s": elapsed, "requests_per_s": buyers / elapsed, "orders": len(winners),
            "orders_per_s": len(winners) / sellout, "sellout_s": sellout, "statuses": codes_by_status,
            "latency": {p: percentile(lat, p) for p in (50, 90, 99, 100)},
            "order_latency": {p: percentile(win_lat, p) for p in (50, 90, 99, 100)},
            "webhooks_ok": sum(1 for s in pay_status if s == 200), "pay_elapsed_s": pay_elapsed,
            "pay_latency": {p: percentile(pay_lat, p) for p in (50, 99)},
            "deliver_elapsed_s": deliver_elapsed,
            "oversold": max(0, sold_qty - stock_n),
            "duplicate_keys": len(all_keys) - len(set(all_keys)),
            "foreign_keys": sum(1 for k in all_keys if k not in imported),
            "paid_undelivered": len(pending),
            "undelivered_states": sorted({states.get(o, "?") for o in pending}),
            "keys_delivered": len(all_keys),
            "final_stock": final_stock,
        }
    finally:
        plat.stop()


def bulk_import(env: Env, total: int, per_request: int, budget_s: float | None = None) -> dict:
    """Imports `total` keys; with `budget_s`, stops after the request that passes the
    budget and records how far it got (`completed` false). The expiry-sweep schedule is
    stopped: on moto its GSI queries scan the whole table under moto_serve's DynamoDB
    lock, which on a table of 10^5-10^6 keys stalls the imports past their timeout."""
    plat = start_platform(env, max_instances=1)
    for schedule in plat.schedules.values():
        schedule.stop()
    api = plat.url
    try:
        sku = f"bulk-{uuid.uuid4().hex[:10]}"
        create_product(api, sku)
        requests_n = math.ceil(total / per_request)
        target = total
        say(f"bulk import: {total} keys in {requests_n} request(s) of up to {per_request}")
        accepted = 0
        reported_duplicates = 0
        sent = 0
        body_bytes = 0
        times = []
        transactions = 0
        t0 = time.monotonic()
        for i in range(requests_n):
            n = min(per_request, total - i * per_request)
            codes = bench_codes(n, f"BI{i}")
            body_bytes = max(body_bytes, len(json.dumps({"keys": codes})))
            start = time.monotonic()
            report = import_keys(api, sku, codes)
            times.append(time.monotonic() - start)
            accepted += report["accepted"]
            reported_duplicates += len(report.get("duplicates") or [])
            sent += n
            transactions += math.ceil(n / KEYS_PER_TRANSACTION)
            if (i + 1) % 10 == 0:
                say(f"bulk import: {accepted} keys after {time.monotonic() - t0:.0f} s")
            if budget_s is not None and time.monotonic() - t0 > budget_s and i + 1 < requests_n:
                say(f"bulk import: time budget of {budget_s:.0f} s spent after {accepted} keys; stopping")
                requests_n, total = i + 1, (i + 1) * per_request
                break
        elapsed = time.monotonic() - t0
        final = stock(api, sku)
        return {
            "keys": total, "per_request": per_request, "requests": requests_n, "largest_body_mib": body_bytes / 2**20,
            "elapsed_s": elapsed, "keys_per_s": total / elapsed, "accepted": accepted,
            "request_s_max": max(times), "request_s_first": times[0], "request_s_last": times[-1],
            "completed": sent == target, "target_keys": target, "available": final.get("available"),
            # Every bench key is unique, so a reported duplicate is a key of this import
            # counted twice (see docs/bench.md).
            "reported_duplicates": reported_duplicates,
            # Counted from the code path (shared/src/app/import.rs), as bench-aws-calls counts it:
            # per request 1 GetItem (product), 1 KMS GenerateDataKey, 1 PutItem (batch record),
            # then ceil(n/49) TransactWriteItems of 49 keys x 2 items + the stock counter.
            "kms": requests_n,
            "dynamodb": requests_n * 2 + transactions,
            "transactions": transactions,
            "wru": 2 * (total * 2 + transactions) + requests_n,
        }
    finally:
        plat.stop()
