"""Invokes every function's built bootstrap under the Runtime Interface Emulator with each
sample event in events/<FunctionLogicalId>/ and checks the response's shape.

Run: infra/kami build && .kami/venv/bin/python -m pytest events   (infra/test.sh does both)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "infra"))

from kami_local import build, provision, runtime  # noqa: E402
from kami_local import template as tpl  # noqa: E402
from kami_local.processes import start_moto, stop_process  # noqa: E402

EVENTS = sorted(Path(__file__).parent.glob("*/*.json"))
TEMPLATE = tpl.load(tpl.default_template())


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    moto, endpoint = start_moto(0, log_dir)
    started: dict[str, runtime.Function] = {}
    try:
        provisioned = provision.provision(endpoint)
        for logical_id, fn in tpl.functions(TEMPLATE).items():
            binary = provisioned["functions"][logical_id]["binary"]
            bootstrap = build.bootstrap_path(binary, release=False)
            if not bootstrap.exists():
                pytest.fail(f"{bootstrap} is missing: run infra/kami build first")
            env = {**provisioned["functions"][logical_id]["env"], **provision.aws_env(endpoint)}
            props = fn["Properties"]
            started[logical_id] = runtime.Function(
                logical_id, bootstrap, env, int(props.get("Timeout", 3)), int(props.get("MemorySize", 128)),
                log_dir, max_instances=1, status=lambda line: None)
        yield started
    finally:
        for fn in started.values():
            fn.stop()
        stop_process(moto)


def test_every_function_has_sample_events():
    covered = {p.parent.name for p in EVENTS}
    assert set(tpl.functions(TEMPLATE)) <= covered


@pytest.mark.parametrize("path", EVENTS, ids=[f"{p.parent.name}/{p.stem}" for p in EVENTS])
def test_sample_event(functions, path):
    event = json.loads(path.read_text())
    result = functions[path.parent.name].invoke(event)
    assert result.ok, f"{path.name}: {result.kind} {result.detail}"
    response = json.loads(result.body)
    if "routeKey" in event:  # API Gateway HTTP API, payload format 2.0
        assert isinstance(response.get("statusCode"), int), response
        assert 200 <= response["statusCode"] < 500, response
        if response["statusCode"] >= 400:
            error = json.loads(response["body"])["error"]
            assert error["code"] and error["message"]
    elif "Records" in event:  # SQS with ReportBatchItemFailures
        assert isinstance(response.get("batchItemFailures"), list), response
        ids = {r["messageId"] for r in event["Records"]}
        assert all(f["itemIdentifier"] in ids for f in response["batchItemFailures"])
