"""Shared pieces of the benchmarks: a moto server provisioned from template.yaml, the
release bootstraps, emulator instances started one by one, and API Gateway events.

Everything binds to 127.0.0.1. Nothing here logs a card key or a secret: events carry
them, but only status codes and timings are printed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "infra"))

from kami_local import apigw, provision, runtime  # noqa: E402
from kami_local import build as builder  # noqa: E402
from kami_local import stripe_webhook  # noqa: E402
from kami_local import template as tpl  # noqa: E402
from kami_local.processes import start_moto, stop_process  # noqa: E402

BENCH_DIR = REPO / ".kami" / "bench"
LOG_DIR = BENCH_DIR / "logs"
FUNCTIONS = ["CheckoutFunction", "AdminFunction", "PaymentWebhookFunction",
             "DeliveryWorkerFunction", "ExpirySweepFunction"]
ADMIN_TOKEN = provision.local_secrets()["AdminTokenSecret"]


def say(line: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def quiet(_line: str) -> None:
    """Status sink for the platform's per-invocation lines (they go to the logs only)."""


@dataclass
class Env:
    """A moto server with the stack provisioned, and what the functions need to run."""

    endpoint: str
    template: dict
    stack: provision.Stack
    provisioned: dict
    moto: object = None
    bootstraps: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def start(cls, release: bool = True) -> "Env":
        moto, endpoint = start_moto(0, LOG_DIR)
        template = tpl.load(tpl.default_template())
        provisioned, stack = provision.provision_stack(endpoint)
        lambda_dir = os.environ.get("KAMI_BENCH_LAMBDA_DIR")  # prebuilt bootstraps elsewhere (e.g. of a commit)
        bootstraps = {lid: (Path(lambda_dir) / b / "bootstrap" if lambda_dir else builder.bootstrap_path(b, release))
                      for lid, b in builder.binaries(template).items()}
        missing = [str(p) for p in bootstraps.values() if not p.exists()]
        if missing:
            stop_process(moto)
            raise SystemExit(f"bench: no build at {', '.join(missing)} (infra/kami build --release)")
        return cls(endpoint, template, stack, provisioned, moto, bootstraps)

    def fresh(self) -> "Env":
        """Another moto server with the stack provisioned anew (an empty table), the same
        template and bootstraps. moto answers every Query by going through the whole
        table, so on a fresh one a measurement does not depend on what ran before it."""
        moto, endpoint = start_moto(0, LOG_DIR)
        provisioned, stack = provision.provision_stack(endpoint)
        return Env(endpoint, self.template, stack, provisioned, moto, dict(self.bootstraps))

    @property
    def table(self) -> str:
        return self.provisioned["resources"]["KamiTable"]

    def fn_env(self, logical_id: str) -> dict[str, str]:
        env = dict(self.provisioned["functions"][logical_id]["env"])
        env.update(provision.aws_env(self.endpoint))
        return env

    def function(self, logical_id: str, bootstrap: Path | None = None, env: dict | None = None,
                 timeout: int | None = None, max_instances: int = 1) -> runtime.Function:
        """A pool for one function (the benchmark starts its own instances from it)."""
        props = tpl.functions(self.template)[logical_id]["Properties"]
        return runtime.Function(logical_id, bootstrap or self.bootstraps[logical_id],
                                env if env is not None else self.fn_env(logical_id),
                                timeout or int(props.get("Timeout", 3)), int(props.get("MemorySize", 128)),
                                LOG_DIR, max_instances, quiet)

    def queue_url(self, logical_id: str = "DeliveryQueue") -> str:
        return self.provisioned["resources"][logical_id]

    def stop(self) -> None:
        if self.moto is not None:
            stop_process(self.moto)
            self.moto = None


# ---------- emulator instances ----------

def bootstrap_pid(inst: runtime.Instance) -> int | None:
    """The pid of the process the emulator started (the bootstrap), if it runs."""
    try:
        for task in Path(f"/proc/{inst.pid}/task").iterdir():
            children = (task / "children").read_text().split()
            if children:
                return int(children[0])
    except OSError:
        return None
    return None


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def stop_instance(inst: runtime.Instance, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
    try:
        os.killpg(inst.pid, sig)
    except ProcessLookupError:
        pass
    try:
        inst.proc.wait(timeout)
    except Exception:  # noqa: BLE001 - then kill it for sure
        inst.kill()
        inst.proc.wait(10)


# ---------- events ----------

class Events:
    """Builds the events each function receives on AWS, against the provisioned stack."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.routes = apigw.routes(env.template)
        self.api_id = env.stack.ref("KamiHttpApi") if "KamiHttpApi" in env.template["Resources"] else "local"

    def http(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
        found = apigw.match(self.routes, method, path)
        if found is None:
            raise LookupError(f"no route for {method} {path}")
        route, params = found
        hdrs = {"content-type": "application/json", "user-agent": "kami-bench"}
        hdrs.update({k.lower(): v for k, v in (headers or {}).items()})
        event = apigw.build_event(route, params, method, path, "", list(hdrs.items()), body,
                                  "127.0.0.1", self.api_id, apigw.request_id())
        return json.dumps(event).encode()

    def create_order(self, sku: str) -> bytes:
        body = json.dumps({"sku": sku, "quantity": 1, "buyer": {"email": "bench@example.com"}}).encode()
        return self.http("POST", "/orders", body, {"Idempotency-Key": str(uuid.uuid4())})

    def get_product(self, sku: str) -> bytes:
        return self.http("GET", f"/products/{sku}")

    def admin_get_product(self, sku: str) -> bytes:
        return self.http("GET", f"/admin/products/{sku}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def admin_create_product(self, sku: str) -> bytes:
        body = json.dumps({"sku": sku, "title": "Bench card key", "price": {"amount": 990, "currency": "CNY"},
                           "delivery": {"type": "card_key"}, "max_per_order": 5}).encode()
        return self.http("POST", "/admin/products", body, {"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def admin_import(self, sku: str, codes: list[str]) -> bytes:
        body = json.dumps({"keys": codes}).encode()
        return self.http("POST", f"/admin/products/{sku}/card-keys", body,
                         {"Authorization": f"Bearer {ADMIN_TOKEN}"})

    def webhook(self, order_id: str) -> bytes:
        amount, currency = stripe_webhook.order_amount(self.env.endpoint, self.env.table, order_id)
        payload = json.dumps(stripe_webhook.checkout_completed(order_id, amount, currency), separators=(",", ":"))
        return self.http("POST", "/webhooks/stripe", payload.encode(), {
            "content-type": "application/json; charset=utf-8",
            "stripe-signature": stripe_webhook.sign(payload),
            "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"})

    def schedule(self) -> bytes:
        return (REPO / "events" / "ExpirySweepFunction" / "schedule.json").read_bytes()


def api_response(result: runtime.Result) -> tuple[int, dict]:
    """(statusCode, parsed body) of an API Gateway proxy response."""
    doc = json.loads(result.body)
    body = doc.get("body") or "{}"
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = {}
    return int(doc.get("statusCode", 200)), parsed


def bench_codes(n: int, tag: str) -> list[str]:
    """Synthetic card keys (unique per run; never printed)."""
    run = uuid.uuid4().hex[:8].upper()
    return [f"BENCH-{tag}-{run}-{i:09d}" for i in range(n)]


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                   if l.startswith("MemTotal:"))
    import subprocess

    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": out(["git", "rev-parse", "--short", "HEAD"]),
        "dirty": bool(out(["git", "status", "--porcelain", "--untracked-files=no"])),
        "rustc": out(["rustc", "--version"]),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "bootstraps": os.environ.get("KAMI_BENCH_LAMBDA_DIR") or "target/lambda/release",
        "built_from": os.environ.get("KAMI_BENCH_BUILT_FROM", ""),
    }
