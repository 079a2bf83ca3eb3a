"""Runs function bootstraps under the AWS Lambda Runtime Interface Emulator (RIE).

One RIE process serves one invocation at a time, so each function has a pool of
instances that grows under concurrent load up to a cap, as Lambda scales. Invocations
beyond the cap wait for an instance in arrival order (optionally up to a deadline, then
`NoInstance`); none is ever dropped. A killed or crashed emulator is replaced. Every
invocation gets one status line (function, duration, init duration on a cold start,
result); everything an instance prints goes to the function's log file.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from . import clock, call_faults

INVOKE_PATH = "/2015-03-31/functions/function/invocations"
_INIT_REPORT = re.compile(r"INIT REPORT\(durationMs: ([\d.]+)\)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REPORT = re.compile(r"^REPORT RequestId: \S+.*?\tDuration: ([\d.]+) ms")


def rie_path() -> str:
    import samcli

    return str(Path(samcli.__file__).parent / "local" / "rapid" / "aws-lambda-rie-x86_64")


class NoInstance(RuntimeError):
    """No instance of the function became free before the caller's deadline."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Result:
    kind: str  # "ok", "error" (the function reported an error or timed out), "crashed"
    body: bytes
    duration_ms: float
    init_ms: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The parent is the 2nd field after the command, which is in parentheses.
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        below = [c for p in frontier for c in children.get(p, [])]
        found.extend(below)
        frontier = below
    return found


class Instance:
    """One emulator process (and the bootstrap it runs)."""

    def __init__(self, fn: "Function", number: int) -> None:
        self.fn = fn
        self.number = number
        self.port = free_port()
        api_port = free_port()
        self.proc = subprocess.Popen(
            [rie_path(), "--runtime-interface-emulator-address", f"127.0.0.1:{self.port}",
             "--runtime-api-address", f"127.0.0.1:{api_port}", str(fn.bootstrap)],
            cwd=str(Path(fn.bootstrap).parent), env=fn.process_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pid = self.proc.pid
        self.busy = False
        self.invocations = 0
        self._init_ms: float | None = None
        self._report_ms: float | None = None
        self._reported = threading.Event()
        self.invoke_started = threading.Event()
        threading.Thread(target=self._read_output, daemon=True).start()
        self._wait_listening()

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.fn.name}: emulator exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.fn.name}: emulator did not listen within {timeout}s")

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.fn.log(f"[{self.number}] {_ANSI.sub('', line)}")
            if (m := _INIT_REPORT.search(line)) is not None:
                self._init_ms = float(m.group(1))
            elif "INVOKE START" in line:
                self.invoke_started.set()
            elif (m := _REPORT.search(line)) is not None:
                self._report_ms = float(m.group(1))
                self._reported.set()
        self.proc.wait()
        self.fn.instance_exited(self)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        # The emulator starts the bootstrap in a process group of its own: killing the
        # emulator's group alone left the function running to the end of its invocation
        # (found by tests/e2e/test_call_faults.py). Its descendants go first, then the group.
        for pid in _descendants(self.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def invoke(self, payload: bytes) -> Result:
        self._init_ms = self._report_ms = None
        self._reported.clear()
        self.invoke_started.clear()
        self.invocations += 1
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.fn.timeout + 10)
        try:
            conn.request("POST", INVOKE_PATH, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            status, body = resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            return Result("crashed", b"", _ms(start), self._init_ms, f"emulator lost: {type(e).__name__}")
        finally:
            conn.close()
        wall = _ms(start)
        if self.alive:
            self._reported.wait(1.0)  # the REPORT line follows the response within milliseconds
        duration = self._report_ms if self._report_ms is not None else wall
        kind, detail = _classify(status, body)
        return Result(kind, body, duration, self._init_ms, detail)


def _ms(start: float) -> float:
    return (time.monotonic() - start) * 1000


def _classify(status: int, body: bytes) -> tuple[str, str]:
    if status != 200:
        return "crashed" if status == 502 else "error", _error_type(body) or f"HTTP {status}"
    if body.startswith(b"Task timed out"):
        return "error", "Task timed out"
    error_type = _error_type(body)
    return ("error", error_type) if error_type else ("ok", "")


def _error_type(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    if isinstance(doc, dict) and set(doc) >= {"errorType", "errorMessage"} and "statusCode" not in doc:
        return str(doc.get("errorType") or "Error")
    return ""


class _Waiter:
    """An invocation waiting for an instance: granted one, or room to start one ("slot")."""

    def __init__(self, timeout: float | None) -> None:
        self.event = threading.Event()
        self.grant: Instance | str | None = None
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


class Function:
    """A pool of emulator instances for one template function."""

    def __init__(self, name: str, bootstrap: Path, env: dict[str, str], timeout: int, memory: int,
                 log_dir: Path, max_instances: int = 4, status=print) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.env = env
        self.timeout = timeout
        self.memory = memory
        self.max_instances = max_instances
        self.status = status
        self.instances: list[Instance] = []
        self.idle: list[Instance] = []
        self.restarts = 0
        self.invocations = 0
        self.faults: list[float] = []  # pending "kill mid-invocation" faults: delay in seconds
        self._next_number = 0
        self._lock = threading.Lock()
        self._waiters: deque[_Waiter] = deque()  # invocations waiting for an instance, oldest first
        self._closed = False
        self._log_lock = threading.Lock()
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_dir / f"{name}.log", "a", encoding="utf-8", buffering=1)

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ", "HOME")}
        env.update(self.env)
        env.update({
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(self.timeout),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "local",
            clock.ENV: str(clock.path()),  # local only: `infra/kami clock` moves the time
            clock.SKEW_ENV: str(clock.skew_path(self.name)),  # and `clock skew` this one's
            # Its own key id: the moto wrapper tells its calls apart (call_faults.py).
            "AWS_ACCESS_KEY_ID": call_faults.access_key_of(self.name),
        })
        return env

    def log(self, line: str) -> None:
        with self._log_lock:
            if not self._log.closed:
                self._log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def _spawn(self) -> Instance:
        # The emulator's ports are picked free and bound by the emulator a moment later; under
        # a burst of client connections the kernel can hand one of them out as an ephemeral
        # port in between, and the emulator exits. Another pair of ports is the remedy.
        for attempt in range(3):
            with self._lock:
                self._next_number += 1
                number = self._next_number
            try:
                return Instance(self, number)
            except RuntimeError as e:
                if attempt == 2 or self._closed:
                    raise
                self.status(f"{self.name}: emulator {number} did not start ({e}); trying other ports")
        raise AssertionError("unreachable")

    def start(self) -> None:
        """Starts one idle emulator (init stays lazy): up front, so a broken setup shows at
        once, and to replace one that exited. Does nothing if the pool is full."""
        with self._lock:
            if self._closed or len(self.instances) >= self.max_instances:
                return
            self.instances.append(None)  # reserve the slot while the emulator starts
        self._spawn_into_slot(busy=False)

    def _spawn_into_slot(self, busy: bool) -> Instance | None:
        """Starts an emulator in the slot reserved for it, busy (for the caller) or offered to
        the waiting invocations; None if the pool stopped meanwhile (the emulator is killed:
        stop() did not see it)."""
        try:
            inst = self._spawn()
        except Exception:
            self._unreserve()
            raise
        with self._lock:
            self.instances[self.instances.index(None)] = inst
            inst.busy = busy
            if self._closed:
                inst.kill()
                return None
            if not busy:
                self._offer(inst)
        return inst

    def _unreserve(self) -> None:
        with self._lock:
            self.instances.remove(None)
            self._grant_slot()

    def _offer(self, inst: Instance) -> None:
        """(Under the lock.) A free instance goes to the longest waiting invocation, else idle.
        Handing it over directly keeps arrival order: a newcomer cannot take it first."""
        if not inst.alive or inst not in self.instances:
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.deadline_passed():
                continue  # it is timing out; it removes itself
            waiter.grant = inst
            inst.busy = True
            waiter.event.set()
            return
        self.idle.append(inst)

    def _grant_slot(self) -> bool:
        """(Under the lock.) Room in the pool goes to the longest waiting invocation, which
        starts an emulator for itself. False if nobody was waiting."""
        while self._waiters and len(self.instances) < self.max_instances:
            waiter = self._waiters.popleft()
            if waiter.deadline_passed():
                continue
            self.instances.append(None)
            waiter.grant = "slot"
            waiter.event.set()
            return True
        return False

    def _acquire(self, wait_timeout: float | None = None) -> Instance:
        waiter = None
        with self._lock:
            if self._closed:
                raise RuntimeError("platform stopped")
            # With invocations already waiting there is no idle instance and no room: join the line.
            while self.idle and not self._waiters:
                inst = self.idle.pop()
                if inst.alive:
                    inst.busy = True
                    return inst
            if not self._waiters and len(self.instances) < self.max_instances:
                self.instances.append(None)  # reserve a slot while the emulator starts
                grant = "slot"
            else:
                waiter = _Waiter(wait_timeout)
                self._waiters.append(waiter)
        if waiter is not None:
            waiter.event.wait(wait_timeout)
            with self._lock:
                if waiter.grant is None:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)
                    if self._closed:
                        raise RuntimeError("platform stopped")
                    raise NoInstance(f"{self.name}: no instance free within {wait_timeout:g}s")
            grant = waiter.grant
            if grant != "slot":
                return grant
        inst = self._spawn_into_slot(busy=True)
        if inst is None:
            raise RuntimeError("platform stopped")
        return inst

    def _release(self, inst: Instance) -> None:
        with self._lock:
            inst.busy = False
            self._offer(inst)

    def instance_exited(self, inst: Instance) -> None:
        with self._lock:
            if inst not in self.instances:
                return
            self.instances.remove(inst)
            if inst in self.idle:
                self.idle.remove(inst)
            if self._closed:
                return
            self.restarts += 1
            granted = self._grant_slot()  # a waiting invocation starts the replacement itself
        self.status(f"{self.name}: emulator {inst.number} (pid {inst.pid}) exited with "
                    f"{inst.proc.returncode}; restarting")
        if granted:
            return
        try:
            self.start()
        except Exception as e:  # noqa: BLE001 - reported, the next invocation tries again
            self.status(f"{self.name}: restart failed: {e}")

    def invoke(self, event: dict | bytes, source: str = "", summarize=None,
               wait_timeout: float | None = None) -> Result:
        """Runs one invocation on a free instance, waiting in line for one if the pool is at
        its cap (at most `wait_timeout` seconds, then `NoInstance`). `summarize(body)` adds
        to the status line."""
        payload = event if isinstance(event, bytes) else json.dumps(event).encode()
        inst = self._acquire(wait_timeout)
        try:
            with self._lock:
                fault = self.faults.pop(0) if self.faults else None
            if fault is not None:
                threading.Thread(target=self._kill_when_started, args=(inst, fault), daemon=True).start()
            result = inst.invoke(payload)
        finally:
            self._release(inst)
        with self._lock:
            self.invocations += 1
        init = f" init={result.init_ms:.0f}ms" if result.init_ms is not None else ""
        outcome = result.kind + (f" ({result.detail})" if result.detail else "")
        if result.ok and summarize is not None:
            try:
                outcome += f" {summarize(result.body)}"
            except (ValueError, TypeError, KeyError, AttributeError):
                outcome += " (unreadable response)"
        via = f" via {source}" if source else ""
        self.status(f"{self.name}{via}: {result.duration_ms:.0f}ms{init} {outcome}")
        return result

    def inject_kills(self, count: int, after_seconds: float) -> None:
        """Kills the emulator `after_seconds` into each of the next `count` invocations."""
        with self._lock:
            self.faults.extend([after_seconds] * count)

    def kill_busy(self) -> int:
        """Kills every emulator in the middle of an invocation now (a step kill)."""
        with self._lock:
            busy = [i for i in self.instances if i is not None and i.busy]
        for inst in busy:
            self.status(f"{self.name}: fault injected at a step: killing emulator {inst.number} (pid {inst.pid})")
            inst.kill()
        return len(busy)

    def _kill_when_started(self, inst: Instance, delay: float) -> None:
        if inst.invoke_started.wait(self.timeout):
            time.sleep(delay)  # injected fault: how long into the invocation to kill
            self.status(f"{self.name}: fault injected: killing emulator {inst.number} (pid {inst.pid})")
            inst.kill()

    def describe(self) -> dict:
        with self._lock:
            live = [i for i in self.instances if i is not None]
            return {
                "instances": [{"number": i.number, "pid": i.pid, "port": i.port, "busy": i.busy,
                               "invocations": i.invocations} for i in live],
                "max_instances": self.max_instances,
                "waiting": len(self._waiters),
                "invocations": self.invocations,
                "restarts": self.restarts,
                "pending_faults": len(self.faults),
            }

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            live = [i for i in self.instances if i is not None]
            for waiter in self._waiters:
                waiter.event.set()
            self._waiters.clear()
        for inst in live:
            inst.kill()
        for inst in live:
            try:
                inst.proc.wait(5)
            except subprocess.TimeoutExpired:
                print(f"{self.name}: emulator {inst.pid} did not stop", file=sys.stderr)
        with self._log_lock:
            self._log.close()
