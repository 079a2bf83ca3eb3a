"""The local platform: every template function under the emulator, the HTTP API on
localhost, the SQS event source mappings and the schedules, wired from template.yaml.

Besides the API routes, the server answers a few local-only control routes under
/_local/ (API Gateway would answer 404 there):
  GET  /_local/status                         functions, instances, mappings, schedules
  POST /_local/schedules/{name}/fire          fire a schedule now (name: event or function id)
  POST /_local/functions/{id}/invoke          invoke a function with the body as event
  POST /_local/functions/{id}/faults          {"count": 1, "kill_after_ms": 0}: kill the emulator
                                              during its next invocation(s); or
                                              {"kill_at": {"target", "contains", "nth"}}: kill it
                                              right after that AWS call took effect, or
                                              {"fail": {"target", "contains", "count", "error"}}:
                                              fail that call (call_faults.py)
  POST /_local/functions/{id}/kill-now        kill its busy emulators (what a kill_at rule calls)
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from . import apigw, provision, runtime, call_faults
from . import template as tpl
from .sources import Schedule, SqsMapping

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = REPO / ".kami"
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


class ApiServer(ThreadingHTTPServer):
    """The local API's HTTP server: one daemon thread per connection (keep-alive or not).

    The standard library listens with a backlog of 5. Connections that arrive while the
    accepting thread waits for the GIL (a burst of clients, a busy machine) overflow it;
    Linux then drops their handshakes, and clients see resets or multi-second stalls.
    A large backlog holds such a burst until it is accepted. The kernel caps it at
    net.core.somaxconn (4096 by default since Linux 5.4, 128 before)."""

    request_queue_size = 4096
    daemon_threads = True  # an open keep-alive connection never holds up stopping

    @classmethod
    def listen_backlog(cls) -> int:
        """The backlog the kernel actually grants: ours, capped by somaxconn."""
        try:
            return min(cls.request_queue_size, int(SOMAXCONN.read_text()))
        except (OSError, ValueError):
            return cls.request_queue_size

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client that went away between requests: nothing to answer, nothing to log
        super().handle_error(request, client_address)


class Status:
    """One line per event on stdout and in .kami/logs/platform.log."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(log_dir / "platform.log", "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        with self._lock:
            print(stamped, flush=True)
            if not self._file.closed:
                self._file.write(stamped + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Platform:
    def __init__(self, template: dict, stack: provision.Stack, provisioned: dict,
                 bootstraps: dict[str, Path], endpoint: str, port: int = 3000,
                 max_instances: int = 4, sqs_pollers: int = 2, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir or STATE_DIR / "logs"
        self.status = Status(self.log_dir)
        self.endpoint = endpoint
        self.port = port
        self.provisioned = provisioned
        self.functions: dict[str, runtime.Function] = {}
        self.mappings: list[SqsMapping] = []
        self.schedules: dict[str, Schedule] = {}
        api = next((k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::HttpApi"), None)
        self.api_id = stack.ref(api) if api else "local"
        self.routes = apigw.routes(template)
        self.server = ApiServer(("127.0.0.1", port), _handler(self))
        self.port = self.server.server_address[1]
        for logical_id, fn in tpl.functions(template).items():
            if logical_id not in bootstraps:
                continue
            props = fn["Properties"]
            env = dict(provisioned["functions"][logical_id]["env"])
            env.update(provision.aws_env(endpoint))
            # The local API is the public API: payment providers (the sandbox) notify it.
            if "PUBLIC_API_URL" in env and not env["PUBLIC_API_URL"]:
                env["PUBLIC_API_URL"] = self.url
            self.functions[logical_id] = runtime.Function(
                logical_id, bootstraps[logical_id], env, int(props.get("Timeout", 3)),
                int(props.get("MemorySize", 128)), self.log_dir, max_instances, self.status)
            for event_name, event in (props.get("Events") or {}).items():
                self._event_source(stack, logical_id, event_name, event, sqs_pollers)

    def _event_source(self, stack, logical_id: str, event_name: str, event: dict, pollers: int) -> None:
        kind = event.get("Type")
        fn = self.functions[logical_id]
        if kind == "SQS":
            props = stack.resolver.resolve(event.get("Properties") or {})
            arn = props["Queue"]
            sqs = provision.client("sqs", self.endpoint)
            url = sqs.get_queue_url(QueueName=arn.rsplit(":", 1)[1])["QueueUrl"]
            self.mappings.append(SqsMapping(f"{logical_id}.{event_name}", fn, url, arn, props,
                                            self.endpoint, min(pollers, fn.max_instances), self.status))
        elif kind in ("Schedule", "ScheduleV2"):
            props = stack.resolver.resolve(event.get("Properties") or {})
            self.schedules[event_name] = Schedule(event_name, fn, props, kind, self.status)
        elif kind != "HttpApi":
            self.status(f"{logical_id}.{event_name}: event type {kind} is not emulated")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, register: bool = True) -> None:
        threads = [threading.Thread(target=f.start) for f in self.functions.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()
        for m in self.mappings:
            m.start()
        for s in self.schedules.values():
            s.start()
        if register:
            state = {"api_url": self.url, "endpoint": self.endpoint, "pid": os.getpid(),
                     "resources": self.provisioned["resources"]}
            (STATE_DIR / "run").mkdir(parents=True, exist_ok=True)
            (STATE_DIR / "run" / "platform.json").write_text(json.dumps(state, indent=2))
        for r in self.routes:
            self.status(f"route {r.key:40} -> {r.function}")
        for m in self.mappings:
            self.status(f"sqs {m.queue_arn.rsplit(':', 1)[1]} -> {m.function.name} "
                        f"(batch {m.batch_size}, window {m.window:g}s, report failures: {m.report_failures})")
        for s in self.schedules.values():
            self.status(f"schedule {s.name} {s.expression} -> {s.function.name}")
        backlog = ApiServer.listen_backlog()
        if backlog < 1024:
            self.status(f"listen backlog capped at {backlog} by net.core.somaxconn: a burst of more "
                        f"simultaneous connections may be dropped (sysctl -w net.core.somaxconn=4096)")
        self.status(f"API on {self.url}  (listen backlog {backlog}; logs in {self.log_dir})")

    def stop(self) -> None:
        for m in self.mappings:
            m.stop()
        for s in self.schedules.values():
            s.stop()
        self.server.shutdown()
        self.server.server_close()
        for f in self.functions.values():
            f.stop()
        state = STATE_DIR / "run" / "platform.json"
        if state.exists() and json.loads(state.read_text()).get("pid") == os.getpid():
            state.unlink()
        self.status.close()

    def describe(self) -> dict:
        return {
            "api_url": self.url,
            "listen_backlog": ApiServer.listen_backlog(),
            "functions": {n: f.describe() for n, f in self.functions.items()},
            "sqs": [{"name": m.name, "queue": m.queue_url, "batches": m.batches} for m in self.mappings],
            "schedules": {n: {"expression": s.expression, "fired": s.fired, "function": s.function.name}
                          for n, s in self.schedules.items()},
        }

    # ---- control routes ----

    def control(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        parts = [p for p in path.split("/") if p][1:]
        if method == "GET" and parts == ["status"]:
            return 200, self.describe()
        if method == "POST" and len(parts) == 3 and parts[0] == "schedules" and parts[2] == "fire":
            schedule = self.schedules.get(parts[1]) or next(
                (s for s in self.schedules.values() if s.function.name == parts[1]), None)
            if schedule is None:
                return 404, {"message": f"no schedule {parts[1]}"}
            result = schedule.fire()
            return 200, {"result": result.kind, "detail": result.detail, "duration_ms": result.duration_ms}
        if method == "POST" and len(parts) == 3 and parts[0] == "functions" and parts[1] in self.functions:
            fn = self.functions[parts[1]]
            if parts[2] == "invoke":
                result = fn.invoke(body or b"{}", source="direct invoke")
                try:
                    payload = json.loads(result.body) if result.body else None
                except ValueError:
                    payload = result.body.decode("utf-8", "replace")
                return 200, {"result": result.kind, "detail": result.detail, "payload": payload}
            if parts[2] == "faults":
                spec = json.loads(body or b"{}")
                if "kill_at" in spec:
                    return self._arm_call_fault(fn, {**spec["kill_at"], "action": "kill"})
                if "fail" in spec:
                    return self._arm_call_fault(fn, {**spec["fail"], "action": "fail"})
                fn.inject_kills(int(spec.get("count", 1)), float(spec.get("kill_after_ms", 0)) / 1000)
                return 200, fn.describe()
            if parts[2] == "kill-now":
                return 200, {"killed": fn.kill_busy()}
        return 404, {"message": "Not Found"}

    def _arm_call_fault(self, fn: runtime.Function, spec: dict) -> tuple[int, dict]:
        rule = {**spec, "access_key": call_faults.access_key_of(fn.name),
                "notify": f"{self.url}/_local/functions/{fn.name}/kill-now"}
        request = urllib.request.Request(f"{self.endpoint}{call_faults.RULES_PATH}", method="POST",
                                         data=json.dumps(rule).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - moto on loopback
                return 200, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def _handler(platform: Platform):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "kami-local"

        def log_message(self, *args) -> None:  # the status line per invocation replaces it
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, req_id: str) -> None:
            self._sent = True
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(k, v)
            self.send_header("apigw-requestid", req_id)
            if self.close_connection:
                self.send_header("Connection", "close")  # the client asked, or this connection is done
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self) -> None:
            req_id = apigw.request_id()
            self._sent = False
            try:
                self._route(req_id)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client left; nobody to answer
            except Exception as e:  # noqa: BLE001 - answer like API Gateway, never drop the connection
                platform.status(f"{self.command} {urlsplit(self.path).path}: platform error: {e!r}")
                self.close_connection = True
                if not self._sent:
                    self._send(*apigw.error(500), req_id)

        def _route(self, req_id: str) -> None:
            body = self._body()
            split = urlsplit(self.path)
            if split.path.startswith("/_local/"):
                status, doc = platform.control(self.command, split.path, body)
                return self._send(status, [("content-type", "application/json")],
                                  json.dumps(doc).encode(), req_id)
            found = apigw.match(platform.routes, self.command, split.path)
            if found is None:
                return self._send(*apigw.error(404), req_id)
            route, params = found
            event = apigw.build_event(route, params, self.command, split.path, split.query,
                                      list(self.headers.items()), body, self.client_address[0],
                                      platform.api_id, req_id)
            payload = json.dumps(event).encode()
            if len(payload) > apigw.MAX_PAYLOAD:
                return self._send(*apigw.error(413), req_id)
            try:
                result = platform.functions[route.function].invoke(
                    payload, source=route.key, summarize=lambda b: json.loads(b).get("statusCode", 200),
                    wait_timeout=apigw.INTEGRATION_TIMEOUT)
            except runtime.NoInstance as e:
                # Every instance stayed busy for as long as API Gateway waits on an integration.
                platform.status(f"{route.function} via {route.key}: not invoked: {e}: 503")
                return self._send(*apigw.error(503), req_id)
            except Exception as e:  # noqa: BLE001 - e.g. an emulator that cannot start
                platform.status(f"{route.function} via {route.key}: not invoked: {e}")
                return self._send(*apigw.error(500), req_id)
            if not result.ok:
                return self._send(*apigw.error(500), req_id)
            status, headers, data = apigw.map_response(result.body)
            self._send(status, headers, data, req_id)

        # Every method, known verb or not, reaches the router, so one that no route takes gets
        # 404 as from API Gateway (the standard library would answer TRACE or QUERY with 501).
        def __getattr__(self, name: str):
            if name.startswith("do_"):
                return self._handle
            raise AttributeError(name)

    return Handler
