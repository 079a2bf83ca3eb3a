"""Build-profile comparison: the release bootstraps built with other settings of the
release profile (through CARGO_PROFILE_RELEASE_* variables, each variant in its own
target directory so the main build is untouched), then binary size and cold start."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from common import BENCH_DIR, REPO, Env, say
from coldstart import Workload, cold_starts
from kami_local import build as builder

# name -> CARGO_PROFILE_RELEASE_* overrides (on top of the root Cargo.toml's release profile).
# Each variant is a full LTO build (about 10 minutes on 2 cores); add {"...": "s"} to compare "s".
VARIANTS = {
    "opt-level=3 (Cargo.toml)": {},
    "opt-level=\"z\"": {"CARGO_PROFILE_RELEASE_OPT_LEVEL": "z"},
}


def build_variant(name: str, overrides: dict, template: dict) -> dict[str, Path]:
    lambda_base = os.environ.get("KAMI_BENCH_LAMBDA_DIR")
    if not overrides:
        return {lid: (Path(lambda_base) / b / "bootstrap" if lambda_base else builder.bootstrap_path(b, True))
                for lid, b in builder.binaries(template).items()}
    slug = overrides["CARGO_PROFILE_RELEASE_OPT_LEVEL"]
    target = BENCH_DIR / f"target-opt-{slug}"
    lambda_dir = target / "lambda"
    names = builder.binaries(template)
    cmd = ["cargo", "lambda", "build", "--compiler", "cargo", "--x86-64", "--release",
           "--lambda-dir", str(lambda_dir)]
    for binary in sorted(set(names.values())):
        cmd += ["--bin", binary]
    env = dict(os.environ, CARGO_TARGET_DIR=str(target), **overrides)
    env["PATH"] = str(REPO / ".kami" / "venv" / "bin") + os.pathsep + env.get("PATH", "")
    say(f"profiles: building {name} into {target} (several minutes)")
    with open(BENCH_DIR / "logs" / f"build-opt-{slug}.log", "w") as log:
        subprocess.run(cmd, cwd=os.environ.get("KAMI_BENCH_CARGO_DIR") or REPO, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {lid: lambda_dir / b / "bootstrap" for lid, b in names.items()}


def run(env: Env, functions: list[str], runs: int, cg: tuple[int, int] = (3, 10),
        only: list[str] | None = None) -> list[dict]:
    import handler_cost

    out = []
    workload = Workload(env, stock=len(VARIANTS) * len(functions) * runs * 4 + 50)
    try:
        for name, overrides in VARIANTS.items():
            if only and name not in only:
                continue
            paths = build_variant(name, overrides, env.template)
            rows = []
            for lid in functions:
                say(f"profiles: {name}: cold start {lid} x{runs}")
                rows.append(cold_starts(env, workload, lid, runs, bootstrap=paths[lid]))
            say(f"profiles: {name}: callgrind CheckoutFunction")
            cost = handler_cost.per_invocation(env, workload, "CheckoutFunction", *cg,
                                               bootstrap=paths["CheckoutFunction"])
            out.append({"variant": name, "rows": rows, "checkout_instructions": cost["per_invocation"]})
    finally:
        workload.stop()
    return out
