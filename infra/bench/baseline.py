"""Cold-start baseline: the checkout function's shape in Python (awslambdaric + boto3,
baseline_python/handler.py) against the Rust checkout bootstrap, both under the same
emulator, same environment, same event (GET /products/{sku}), measured the same way."""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

from common import BENCH_DIR, Env, Events, api_response, bootstrap_pid, median, percentile, say, stop_instance, vm_hwm_kib
from coldstart import Workload

HERE = Path(__file__).resolve().parent


def python_bootstrap() -> Path:
    d = BENCH_DIR / "baseline"
    d.mkdir(parents=True, exist_ok=True)
    script = d / "bootstrap"
    script.write_text(
        "#!/bin/sh\n"
        f"cd {HERE / 'baseline_python'}\n"
        f"export PYTHONPYCACHEPREFIX={d / 'pycache'}\n"
        f"exec {sys.executable} -m awslambdaric handler.handler\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def measure(env: Env, sku: str, label: str, bootstrap: Path | None, runs: int, warm: int) -> dict:
    event = Events(env).get_product(sku)
    fn = env.function("CheckoutFunction", bootstrap=bootstrap)
    inits, rss, durations = [], [], []
    try:
        # One discarded cold start first, for both runtimes: page cache and (Python) bytecode
        # cache warm, as on a Lambda host that has run the function before.
        inst = fn._spawn()
        try:
            inst.invoke(event)
        finally:
            stop_instance(inst)
        for i in range(runs):
            inst = fn._spawn()
            try:
                first = inst.invoke(event)
                if not first.ok or api_response(first)[0] != 200 or first.init_ms is None:
                    raise RuntimeError(f"{label}: cold invocation failed: {first.kind} {first.detail}")
                inits.append(first.init_ms)
                # Warm invocations on the last instance only (the others are for init).
                for _ in range(warm if i == runs - 1 else 1):
                    r = inst.invoke(event)
                    if not r.ok or api_response(r)[0] != 200:
                        raise RuntimeError(f"{label}: warm invocation failed: {r.kind} {r.detail}")
                    durations.append(r.duration_ms)
                pid = bootstrap_pid(inst)
                hwm = vm_hwm_kib(pid) if pid else None
                if hwm:
                    rss.append(hwm / 1024)
            finally:
                stop_instance(inst)
    finally:
        fn.stop()
    return {"label": label, "runs": runs, "init_median": median(inits), "init_max": max(inits),
            "init_min": min(inits), "warm_p50": percentile(durations, 50), "warm_p99": percentile(durations, 99),
            "rss_mib_max": max(rss) if rss else None}


def run(env: Env, runs: int, warm: int) -> list[dict]:
    workload = Workload(env, stock=10)  # creates a product to read
    try:
        out = []
        say(f"baseline: Rust checkout, GET /products/{{sku}}, {runs} cold starts")
        out.append(measure(env, workload.sku, "Rust (checkout bootstrap, release)", None, runs, warm))
        say(f"baseline: Python 3.{sys.version_info.minor} awslambdaric + boto3, {runs} cold starts")
        out.append(measure(env, workload.sku, f"Python 3.{sys.version_info.minor} (awslambdaric + boto3)",
                           python_bootstrap(), runs, warm))
        return out
    finally:
        workload.stop()
