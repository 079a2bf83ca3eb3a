"""Starting and stopping the local processes (moto server) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from .runtime import free_port


def start_moto(port: int, log_dir: Path) -> tuple[subprocess.Popen, str]:
    """moto server (with DynamoDB's isolation, see moto_serve.py) on loopback."""
    port = port or free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kami_local.moto_serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
        stdout=open(log_dir / "moto.log", "a"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}; see {log_dir / 'moto.log'}")
        try:
            requests.get(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except requests.ConnectionError:
            time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError("moto server did not start within 30 s")


def stop_process(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
