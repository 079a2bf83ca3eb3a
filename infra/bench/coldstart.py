"""Cold start, binary size, peak RSS and warm latency of every function under the emulator.

For each function: start a fresh emulator process (so the bootstrap starts cold), invoke a
realistic event, read the emulator's `INIT REPORT (durationMs: ...)`, invoke again (warm),
read VmHWM of the bootstrap from /proc, stop the emulator. Repeated `runs` times. Then
one instance per function takes `warm` warm invocations: the emulator's REPORT duration
(the handler, as Lambda bills it) and the client's round trip, p50/p99.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from common import (Env, Events, api_response, bench_codes, bootstrap_pid, median, percentile, say,
                    stop_instance, vm_hwm_kib)
from kami_local import provision, runtime, sources


class Workload:
    """Realistic events for each function, with the state they need (a product with
    stock, orders to pay, delivery messages) made by helper instances."""

    def __init__(self, env: Env, stock: int) -> None:
        self.env = env
        self.events = Events(env)
        self.sku = f"bench-{int(time.time() * 1000) % 10**9}"
        self.helpers: dict[str, runtime.Function] = {}
        self.unpaid: list[str] = []
        self.sqs = provision.client("sqs", env.endpoint)
        self.queue_url = env.queue_url()
        self.queue_arn = env.stack.get_att("DeliveryQueue", "Arn")
        admin = self.helper("AdminFunction")
        status, _ = api_response(admin.invoke(self.events.admin_create_product(self.sku)))
        if status not in (201, 409):
            raise RuntimeError(f"creating the bench product: HTTP {status}")
        codes = bench_codes(stock, "CS")
        for i in range(0, len(codes), 5000):
            status, body = api_response(admin.invoke(self.events.admin_import(self.sku, codes[i:i + 5000])))
            if status not in (200, 201):
                raise RuntimeError(f"importing bench keys: HTTP {status}")

    def helper(self, logical_id: str) -> runtime.Function:
        if logical_id not in self.helpers:
            self.helpers[logical_id] = self.env.function(logical_id)
        return self.helpers[logical_id]

    def new_order(self) -> str:
        status, body = api_response(self.helper("CheckoutFunction").invoke(self.events.create_order(self.sku)))
        if status != 201:
            raise RuntimeError(f"helper order: HTTP {status}")
        return body["order_id"]

    def paid_message(self) -> dict:
        """One delivery message for a paid order (pays an order if the queue is empty)."""
        for _ in range(3):
            got = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=0,
                                           AttributeNames=["All"], MessageAttributeNames=["All"])
            if got.get("Messages"):
                return got["Messages"][0]
            order_id = self.unpaid.pop() if self.unpaid else self.new_order()
            status, _ = api_response(self.helper("PaymentWebhookFunction").invoke(self.events.webhook(order_id)))
            if status != 200:
                raise RuntimeError(f"helper webhook: HTTP {status}")
        raise RuntimeError("no delivery message after paying an order")

    def event(self, logical_id: str) -> tuple[bytes, callable]:
        """(event, check(result) -> error or None) for one invocation of the function."""
        if logical_id == "CheckoutFunction":
            def check(r):
                status, body = api_response(r)
                if status == 201:
                    self.unpaid.append(body["order_id"])
                    return None
                return f"HTTP {status}"
            return self.events.create_order(self.sku), check
        if logical_id == "AdminFunction":
            return self.events.admin_get_product(self.sku), lambda r: None if api_response(r)[0] == 200 else "HTTP"
        if logical_id == "PaymentWebhookFunction":
            order_id = self.unpaid.pop() if self.unpaid else self.new_order()
            return self.events.webhook(order_id), lambda r: None if api_response(r)[0] == 200 else "HTTP"
        if logical_id == "DeliveryWorkerFunction":
            msg = self.paid_message()
            event = {"Records": [sources.sqs_record(msg, self.queue_arn)]}

            def check(r):
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
                failed = sources.failed_ids(r.body, event["Records"])
                return None if failed == set() else "batch item failures"
            return json.dumps(event).encode(), check
        if logical_id == "ExpirySweepFunction":
            return self.events.schedule(), lambda r: None
        raise KeyError(logical_id)

    def stop(self) -> None:
        for f in self.helpers.values():
            f.stop()


def invoke_checked(workload: Workload, inst: runtime.Instance, logical_id: str) -> runtime.Result:
    event, check = workload.event(logical_id)
    result = inst.invoke(event)
    if not result.ok:
        raise RuntimeError(f"{logical_id}: {result.kind} {result.detail}")
    error = check(result)
    if error:
        raise RuntimeError(f"{logical_id}: {error}")
    return result


def cold_starts(env: Env, workload: Workload, logical_id: str, runs: int, extra_env: dict | None = None,
                bootstrap: Path | None = None) -> dict:
    fn_env = env.fn_env(logical_id)
    fn_env.update(extra_env or {})
    fn = env.function(logical_id, bootstrap=bootstrap, env=fn_env)
    inits, rss, firsts = [], [], []
    try:
        for i in range(runs):
            inst = fn._spawn()
            try:
                first = invoke_checked(workload, inst, logical_id)
                if first.init_ms is None:
                    raise RuntimeError(f"{logical_id}: no INIT REPORT on a cold start")
                inits.append(first.init_ms)
                firsts.append(first.duration_ms)
                invoke_checked(workload, inst, logical_id)  # warm
                pid = bootstrap_pid(inst)
                hwm = vm_hwm_kib(pid) if pid else None
                if hwm is not None:
                    rss.append(hwm / 1024)
            finally:
                stop_instance(inst)
    finally:
        fn.stop()
    path = bootstrap or env.bootstraps[logical_id]
    return {
        "function": logical_id,
        "runs": runs,
        "init_ms": inits,
        "init_median": median(inits),
        "init_max": max(inits),
        "first_duration_median": median(firsts),
        "rss_mib_max": max(rss) if rss else None,
        "binary_mib": path.stat().st_size / 2**20,
    }


def warm_latency(env: Env, workload: Workload, logical_id: str, count: int) -> dict:
    fn = env.function(logical_id)
    inst = fn._spawn()
    durations, walls = [], []
    try:
        invoke_checked(workload, inst, logical_id)  # cold
        for _ in range(count):
            event, check = workload.event(logical_id)
            start = time.monotonic()
            result = inst.invoke(event)
            walls.append((time.monotonic() - start) * 1000)
            if not result.ok or check(result):
                raise RuntimeError(f"{logical_id}: warm invocation failed: {result.kind} {result.detail}")
            durations.append(result.duration_ms)
    finally:
        stop_instance(inst)
        fn.stop()
    return {
        "function": logical_id,
        "count": count,
        "p50": percentile(durations, 50), "p90": percentile(durations, 90), "p99": percentile(durations, 99),
        "wall_p50": percentile(walls, 50), "wall_p99": percentile(walls, 99),
    }


def run(env: Env, functions: list[str], runs: int, warm: int) -> dict:
    workload = Workload(env, stock=(runs * 2 + warm) * 3 + 50)
    out = {"cold": [], "warm": []}
    try:
        for lid in functions:
            say(f"cold start {lid} x{runs}")
            out["cold"].append(cold_starts(env, workload, lid, runs))
        for lid in functions:
            say(f"warm latency {lid} x{warm}")
            out["warm"].append(warm_latency(env, workload, lid, warm))
    finally:
        workload.stop()
    return out
