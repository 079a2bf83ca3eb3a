"""The routes API Gateway sends to each function (template.yaml) are exactly the routes
the spec (docs/openapi.json, generated from the code) describes."""

from __future__ import annotations

import json
from pathlib import Path

from kami_local import template as tpl

REPO = Path(__file__).resolve().parents[2]


def template_routes() -> set[tuple[str, str]]:
    template = tpl.load(tpl.default_template())
    routes = set()
    for fn in tpl.functions(template).values():
        for event in (fn["Properties"].get("Events") or {}).values():
            if event.get("Type") == "HttpApi":
                routes.add((event["Properties"]["Method"].lower(), event["Properties"]["Path"]))
    return routes


def spec_routes() -> set[tuple[str, str]]:
    spec = json.loads((REPO / "docs" / "openapi.json").read_text())
    return {(method, path) for path, item in spec["paths"].items() for method in item
            if method in ("get", "post", "put", "patch", "delete")}


def test_template_routes_are_the_spec_routes():
    assert template_routes() == spec_routes()


def test_the_spec_is_valid_openapi_3_1():
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator

    spec = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert spec["openapi"].startswith("3.1")
    validate(spec, cls=OpenAPIV31SpecValidator)
