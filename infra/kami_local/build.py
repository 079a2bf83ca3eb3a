"""Builds every template function the way `sam build` does for BuildMethod
rust-cargolambda (`cargo lambda build --bin <Binary>`), for x86_64: this host runs only
the x86_64 emulator. Cargo reuses what is up to date."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from . import template as tpl

REPO = Path(__file__).resolve().parents[2]


def binaries(template: dict) -> dict[str, str]:
    """Function logical id -> binary name, for the rust-cargolambda functions."""
    out = {}
    for logical_id, fn in tpl.functions(template).items():
        meta = fn["Metadata"]
        if meta.get("BuildMethod") != "rust-cargolambda":
            continue
        out[logical_id] = (meta.get("BuildProperties") or {}).get("Binary") or logical_id
    return out


def bootstrap_path(binary: str, release: bool) -> Path:
    return REPO / "target" / "lambda" / ("release" if release else "debug") / binary / "bootstrap"


def build(template: dict, release: bool = False, only: list[str] | None = None) -> dict[str, Path]:
    names = binaries(template)
    if only:
        names = {k: v for k, v in names.items() if k in only or v in only}
    profile = "release" if release else "debug"
    cmd = ["cargo", "lambda", "build", "--compiler", "cargo", "--x86-64",
           "--lambda-dir", str(REPO / "target" / "lambda" / profile)]
    if release:
        cmd.append("--release")
    for binary in sorted(set(names.values())):
        cmd += ["--bin", binary]
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")  # cargo-lambda lives in the venv
    print(f"build: {' '.join(cmd[:6])} ... ({profile}, {len(names)} functions)", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    paths = {logical_id: bootstrap_path(binary, release) for logical_id, binary in names.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise RuntimeError(f"build produced no bootstrap at {', '.join(missing)}")
    return paths
