"""Instructions per warm invocation, counted by `valgrind --tool=callgrind`.

The release bootstrap runs under callgrind, under the emulator (a wrapper script is the
emulator's bootstrap and execs valgrind). Two runs per function: one cold invocation and
N warm ones, then one cold and N + k warm; each run ends with SIGTERM, on which callgrind
writes its totals. (run B - run A) / k is the cost of one warm invocation: everything the
process executes for it (runtime API polling, JSON, the handler, the SDK's signing and
HTTP, TLS-free loopback I/O) but no waiting, since waiting executes no instructions.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import time
from pathlib import Path

from common import BENCH_DIR, Env, bootstrap_pid, say, stop_instance
from coldstart import Workload, invoke_checked

_TOTAL = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.M)


def wrapper(env: Env, logical_id: str, out_file: Path, bootstrap: Path | None = None) -> Path:
    d = BENCH_DIR / "callgrind" / logical_id
    d.mkdir(parents=True, exist_ok=True)
    script = d / "bootstrap"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {shutil.which('valgrind')} --tool=callgrind --callgrind-out-file={out_file} "
        f"--dump-instr=no --compress-strings=no {bootstrap or env.bootstraps[logical_id]} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def one_run(env: Env, workload: Workload, logical_id: str, warm: int, tag: str,
            bootstrap: Path | None = None) -> int:
    out_file = BENCH_DIR / "callgrind" / logical_id / f"callgrind.{tag}.out"
    out_file.unlink(missing_ok=True)
    fn = env.function(logical_id, bootstrap=wrapper(env, logical_id, out_file, bootstrap),
                     timeout=120)
    inst = fn._spawn()
    try:
        invoke_checked(workload, inst, logical_id)  # cold: init under valgrind is slow
        for _ in range(warm):
            invoke_checked(workload, inst, logical_id)
        pid = bootstrap_pid(inst)
        if pid is None:
            raise RuntimeError(f"{logical_id}: valgrind process not found")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop_instance(inst)
        fn.stop()
    m = _TOTAL.search(out_file.read_bytes()) if out_file.exists() else None
    if m is None:
        raise RuntimeError(f"{logical_id}: callgrind wrote no totals ({out_file})")
    return int(m.group(1))


def per_invocation(env: Env, workload: Workload, logical_id: str, warm: int, extra: int,
                   bootstrap: Path | None = None) -> dict:
    a = one_run(env, workload, logical_id, warm, "a", bootstrap)
    b = one_run(env, workload, logical_id, warm + extra, "b", bootstrap)
    return {"function": logical_id, "run_a": a, "run_b": b, "warm": warm, "extra": extra,
            "per_invocation": (b - a) / extra}


def run(env: Env, functions: list[str], warm: int, extra: int) -> list[dict]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    workload = Workload(env, stock=len(functions) * (2 * warm + extra + 4) * 3 + 50)
    out = []
    try:
        for lid in functions:
            say(f"callgrind {lid}: 1 cold + {warm} warm, then 1 cold + {warm + extra} warm")
            out.append(per_invocation(env, workload, lid, warm, extra))
    finally:
        workload.stop()
    return out
