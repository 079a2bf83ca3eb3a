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

# name -> how to build it: CARGO_PROFILE_RELEASE_* overrides (on top of the root Cargo.toml's
# release profile) and, for a "before" figure, the commit to build (in a git worktree).
# Each variant is a full LTO build (about 5 minutes on 2 cores); opt-level "z" was measured
# once (docs/bench.md) and is not rebuilt every run.
# The last commit with the SDK's default aws-lc TLS, every client and router in every binary,
# the test crate's features unified into the functions, and opt-level 3.
TLS_BEFORE_COMMIT = "65ad88d"
# The last commit before the restructuring (hand-written routing, one Store, no ports): the
# "before" of axum + utoipa + ports + the delivery seam (issue 8).
RESTRUCTURE_BEFORE_COMMIT = "f807ebf"
VARIANTS = {
    "opt-level=\"s\" (Cargo.toml)": {},
    f"before the restructuring: hand routing, no axum/utoipa ({RESTRUCTURE_BEFORE_COMMIT})": {
        "commit": RESTRUCTURE_BEFORE_COMMIT, "slug": "pre-axum"},
}
# Measured once and kept in docs/bench.md's text; rebuilt only when named in
# KAMI_BENCH_VARIANTS (comma-separated slugs), each a full LTO build.
OPTIONAL_VARIANTS = {
    "opt-level=3": {"env": {"CARGO_PROFILE_RELEASE_OPT_LEVEL": "3"}, "slug": "opt-3"},
    f"before: aws-lc TLS, every SDK client ({TLS_BEFORE_COMMIT})": {"commit": TLS_BEFORE_COMMIT, "slug": "aws-lc"},
}
for _name, _spec in OPTIONAL_VARIANTS.items():
    if _spec["slug"] in os.environ.get("KAMI_BENCH_VARIANTS", "").split(","):
        VARIANTS[_name] = _spec


def _worktree(commit: str) -> Path:
    tree = BENCH_DIR / f"worktree-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(tree), commit], cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL)
    return tree


def build_variant(name: str, spec: dict, template: dict) -> dict[str, Path]:
    lambda_base = os.environ.get("KAMI_BENCH_LAMBDA_DIR")
    if not spec:
        return {lid: (Path(lambda_base) / b / "bootstrap" if lambda_base else builder.bootstrap_path(b, True))
                for lid, b in builder.binaries(template).items()}
    target = BENCH_DIR / f"target-{spec['slug']}"
    lambda_dir = target / "lambda"
    names = builder.binaries(template)
    cmd = ["cargo", "lambda", "build", "--compiler", "cargo", "--x86-64", "--release",
           "--lambda-dir", str(lambda_dir)]
    for binary in sorted(set(names.values())):
        cmd += ["--bin", binary]
    env = dict(os.environ, CARGO_TARGET_DIR=str(target), **spec.get("env", {}))
    env["PATH"] = str(REPO / ".kami" / "venv" / "bin") + os.pathsep + env.get("PATH", "")
    cwd = _worktree(spec["commit"]) if "commit" in spec else (os.environ.get("KAMI_BENCH_CARGO_DIR") or REPO)
    say(f"profiles: building {name} into {target} (several minutes)")
    with open(BENCH_DIR / "logs" / f"build-{spec['slug']}.log", "w") as log:
        subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=log, stderr=subprocess.STDOUT)
    return {lid: lambda_dir / b / "bootstrap" for lid, b in names.items()}


def run(env: Env, functions: list[str], runs: int, cg: tuple[int, int] = (3, 10),
        only: list[str] | None = None) -> list[dict]:
    import handler_cost

    out = []
    workload = Workload(env, stock=len(VARIANTS) * len(functions) * runs * 4 + 50)
    try:
        for name, spec in VARIANTS.items():
            if only and name not in only:
                continue
            paths = build_variant(name, spec, env.template)
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
