"""The API answers as its OpenAPI spec says: the served spec is the committed
docs/openapi.json, and schemathesis, driven by that spec, finds no 5xx and no answer
(status, content type, body) that the spec does not describe, on every route."""

from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET

import requests

from conftest import ADMIN, REPO

SCHEMATHESIS = REPO / ".kami" / "schemathesis" / "bin" / "schemathesis"
# Examples per operation and phase; CI keeps it small, KAMI_SCHEMATHESIS_EXAMPLES raises it.
EXAMPLES = int(os.environ.get("KAMI_SCHEMATHESIS_EXAMPLES", 25))
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_the_served_spec_is_docs_openapi_json(platform):
    r = requests.get(f"{platform.api}/openapi.json", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == json.loads((REPO / "docs" / "openapi.json").read_text())


def test_every_route_answers_as_the_spec_says(platform, tmp_path):
    cmd = [str(SCHEMATHESIS), "run", f"{platform.api}/openapi.json",
           # Admin routes with the admin token; the others ignore it (an order token that
           # does not match answers 404, as documented).
           "--header", f"Authorization: {ADMIN['Authorization']}",
           "--checks", CHECKS, "--phases", "examples,coverage,fuzzing",
           "--max-examples", str(EXAMPLES), "--workers", "2", "--seed", "20261130",
           "--request-timeout", "30", "--report", "junit", "--report-dir", str(tmp_path)]
    # Run from the test's own folder: schemathesis keeps a cache in its working directory.
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    summary = run.stdout[-8000:]
    print(summary)
    assert run.returncode == 0, summary
    # Every operation was exercised (schemathesis leaves out the spec's own route, which
    # the test above checks).
    spec = json.loads((REPO / "docs" / "openapi.json").read_text())
    operations = {f"{method.upper()} {path}" for path, item in spec["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")} - {"GET /openapi.json"}
    report = next(tmp_path.glob("junit-*.xml"))
    tested = {case.get("name") for case in ET.parse(report).getroot().iter("testcase")}
    assert tested == operations, summary
