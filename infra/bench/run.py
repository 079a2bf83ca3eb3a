"""Kami's benchmarks. Run through infra/bench.sh (which installs and builds first).

    python infra/bench/run.py [--tiny] [--only a,b] [--skip a,b] [--render-only]

Sections: cold (cold start, size, RSS, warm latency), handler (callgrind instructions per
invocation), latency (paid notification → delivered through the platform: steady, paced,
in a burst), flash (flash sale through the platform), bulk (100,000-key import), baseline
(Python runtime), awscalls (bench-aws-calls: AWS requests and cost per order), settlement
(the settlement suite's many-orders test at 1,000 orders / 50 distributors, timed), profiles
(build-profile variants; full mode only), bulk1m (1,000,000-key import; only when named
in --only: it takes long against moto).

Each section's result is kept as JSON in .kami/bench/results/<mode>/; the report (full mode:
docs/bench.md and docs/bench-*.png; --tiny: .kami/bench/tiny.md) is rendered from every
result present, so sections can be re-run one at a time; `--only latency` (a section that
stands on its own) updates only its own parts of an existing docs/bench.md. Exits non-zero
if a section fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, FUNCTIONS, REPO, Env, machine, say  # noqa: E402

SIZES = {
    "full": {"cold_runs": 20, "warm": 100, "cg_warm": 3, "cg_extra": 10, "flash": (2000, 500, 64, 4),
             "bulk": (100_000, 5_000), "bulk1m": (1_000_000, 5_000, 1080), "baseline": (20, 100),
             "awscalls": (200, 1000), "settlement": (1000, 50), "profile_runs": 20, "latency": (60, 1.0, 300, 10.0, 100, 20)},
    "tiny": {"cold_runs": 2, "warm": 5, "cg_warm": 1, "cg_extra": 1, "flash": (20, 5, 8, 2),
             "bulk": (1000, 500), "bulk1m": (2000, 1000, 60), "baseline": (2, 3),
             "awscalls": (5, 20), "settlement": (20, 3), "profile_runs": 2, "latency": (3, 5.0, 5, 10.0, 5, 20)},
}
# profiles before flash and bulk: run after them (moto then holding 100,000s of items),
# its delivery-worker workload once hit the function timeout.
DEFAULT_SECTIONS = ["cold", "handler", "profiles", "latency", "flash", "bulk", "baseline", "awscalls",
                    "settlement"]


def section_cold(env, s):
    import coldstart
    return coldstart.run(env, FUNCTIONS, s["cold_runs"], s["warm"])


def section_handler(env, s):
    import handler_cost
    return handler_cost.run(env, ["CheckoutFunction", "PaymentWebhookFunction", "DeliveryWorkerFunction"],
                            s["cg_warm"], s["cg_extra"])


def section_flash(env, s):
    import platform_bench
    buyers, stock, conc, inst = s["flash"]
    return platform_bench.flash_sale(env, buyers, stock, conc, inst)


def section_latency(env, s):
    import latency
    return latency.run(env, *s["latency"])


def section_bulk(env, s):
    import platform_bench
    return platform_bench.bulk_import(env, *s["bulk"])


def section_bulk1m(env, s):
    import platform_bench
    return platform_bench.bulk_import(env, *s["bulk1m"])


def section_baseline(env, s):
    import baseline
    return baseline.run(env, *s["baseline"])


def section_awscalls(env, s):
    orders, keys = s["awscalls"]
    release = ["--release"] if os.environ.get("KAMI_BENCH_PROFILE", "release") == "release" else []
    cmd = ["cargo", "run", "--quiet", *release, "-p", "kami-tests", "--bin", "bench-aws-calls", "--",
           str(orders), str(keys)]
    say(f"awscalls: {' '.join(cmd)}")
    cwd = os.environ.get("KAMI_BENCH_CARGO_DIR") or REPO  # the source tree to run it from
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"bench-aws-calls failed ({r.returncode}): {r.stderr[-2000:]}")
    return {"command": " ".join(cmd[:2] + cmd[3:]), "markdown": r.stdout.strip()}


def section_settlement(env, s):
    """The settlement suite's many-orders test at this size (it asserts that every statement
    and the totals reconcile to the minor unit), timed."""
    orders, distributors = s["settlement"]
    test = "many_orders_across_many_distributors_reconcile_to_the_minor_unit"
    cmd = ["cargo", "test", "--quiet", "-p", "kami-tests", "--test", "distributors", "--", "--exact", test]
    say(f"settlement: {orders} orders across {distributors} distributors: {' '.join(cmd)}")
    cwd = os.environ.get("KAMI_BENCH_CARGO_DIR") or REPO
    started = time.monotonic()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "KAMI_SETTLEMENT_ORDERS": str(orders),
                            "KAMI_SETTLEMENT_DISTRIBUTORS": str(distributors)})
    seconds = time.monotonic() - started
    if r.returncode != 0 or "1 passed" not in r.stdout:
        raise RuntimeError(f"settlement test failed ({r.returncode}): {(r.stdout + r.stderr)[-2000:]}")
    return {"orders": orders, "distributors": distributors, "seconds": round(seconds, 1),
            "command": " ".join(cmd)}


def section_profiles(env, s):
    import profiles
    return profiles.run(env, FUNCTIONS, s["profile_runs"], (s["cg_warm"], s["cg_extra"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smallest sizes only, to prove every measurement works")
    p.add_argument("--only", default="", help="comma-separated sections to run")
    p.add_argument("--skip", default="", help="comma-separated sections not to run")
    p.add_argument("--render-only", action="store_true", help="render the report from the kept results")
    args = p.parse_args()
    mode = "tiny" if args.tiny else "full"
    sizes = SIZES[mode]
    results_dir = BENCH_DIR / "results" / mode
    results_dir.mkdir(parents=True, exist_ok=True)
    sections = [x for x in args.only.split(",") if x] or list(DEFAULT_SECTIONS)
    if args.tiny and not args.only:
        sections = [x for x in sections if x != "profiles"]  # builds, not a measurement
    sections = [x for x in sections if x not in args.skip.split(",")]
    failed = []
    if not args.render_only:
        env = Env.start(release=os.environ.get("KAMI_BENCH_PROFILE", "release") == "release")
        try:
            for name in sections:
                fn = globals().get(f"section_{name}")
                if fn is None:
                    raise SystemExit(f"unknown section {name}")
                start = time.monotonic()
                try:
                    result = fn(env, sizes)
                except Exception as e:  # noqa: BLE001 - report, continue, exit non-zero
                    traceback.print_exc()
                    failed.append(f"{name}: {type(e).__name__}: {e}")
                    continue
                doc = {"section": name, "mode": mode, "seconds": time.monotonic() - start,
                       "machine": machine(), "result": result}
                (results_dir / f"{name}.json").write_text(json.dumps(doc, indent=1, default=str))
                say(f"{name}: done in {doc['seconds']:.0f} s")
        finally:
            env.stop()
    import report
    out = report.render(results_dir, mode, only=[x for x in args.only.split(",") if x])
    say(f"report written to {out.relative_to(REPO)}")
    for f in failed:
        print(f"bench: FAILED {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
