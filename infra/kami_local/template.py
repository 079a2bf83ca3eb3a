"""Reads template.yaml (the single source of truth) and evaluates CloudFormation
intrinsic functions against a set of local physical ids.

`load(path)` understands the short tags (!Ref, !GetAtt, !Sub, !Join, ...) and returns the
long form ({"Ref": ...}, {"Fn::GetAtt": [...]}, ...). `Resolver` evaluates values; it asks
a callback for the physical id (Ref) or attribute (GetAtt) of a resource, so whoever
provisions can create resources lazily, in dependency order.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any, Callable

import yaml

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account

_SHORT_TAGS = {
    "Ref", "GetAtt", "Sub", "Join", "Select", "Split", "If", "Equals", "Not", "And", "Or",
    "FindInMap", "Base64", "GetAZs", "ImportValue", "Condition", "Cidr", "Length", "ToJsonString",
}


class _Loader(yaml.SafeLoader):
    pass


def _construct(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict:
    if suffix not in _SHORT_TAGS:
        raise yaml.constructor.ConstructorError(None, None, f"unknown tag !{suffix}", node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    return {f"Fn::{suffix}": value}


_Loader.add_multi_constructor("!", _construct)


def load(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=_Loader)  # noqa: S506 - SafeLoader subclass


def default_template() -> Path:
    return Path(__file__).resolve().parents[2] / "template.yaml"


class Resolver:
    """Evaluates intrinsic functions. `ref(logical_id)` and `get_att(logical_id, attr)`
    return a resource's physical id and attributes."""

    def __init__(
        self,
        template: dict,
        parameters: dict[str, str],
        ref: Callable[[str], str],
        get_att: Callable[[str, str], str],
        stack_name: str = "kami",
    ) -> None:
        self.template = template
        self.ref_resource = ref
        self.get_att = get_att
        self.pseudo = {
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT_ID,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{REGION}:{ACCOUNT_ID}:stack/{stack_name}/local",
            "AWS::NotificationARNs": [],
        }
        self.parameters = self._parameters(parameters)

    def _parameters(self, overrides: dict[str, str]) -> dict[str, Any]:
        declared = self.template.get("Parameters", {}) or {}
        unknown = set(overrides) - set(declared)
        if unknown:
            raise ValueError(f"unknown parameter(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for name, spec in declared.items():
            if name in overrides:
                value = overrides[name]
            elif "Default" in spec:
                value = spec["Default"]
            else:
                raise ValueError(f"parameter {name} has no default: pass --parameter {name}=VALUE")
            allowed = spec.get("AllowedValues")
            if allowed and str(value) not in [str(a) for a in allowed]:
                raise ValueError(f"parameter {name}={value} is not one of {allowed}")
            if spec.get("Type", "").startswith("List<") or spec.get("Type") == "CommaDelimitedList":
                values[name] = value if isinstance(value, list) else str(value).split(",")
            else:
                values[name] = str(value)
        return values

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def ref(self, name: str) -> Any:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.template.get("Resources", {}):
            return self.ref_resource(name)
        raise KeyError(f"!Ref to unknown name {name}")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self.resolve(v) for v in value) if v is not _NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (key, arg), = value.items()
            fn = _FUNCTIONS.get(key)
            if fn is not None:
                return fn(self, arg)
        out = {}
        for k, v in value.items():
            r = self.resolve(v)
            if r is not _NO_VALUE:
                out[k] = r
        return out

    def sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        variables = {k: self.resolve(v) for k, v in variables.items()}

        def one(m: re.Match) -> str:
            expr = m.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in variables:
                return str(variables[expr])
            if "." in expr and expr.split(".", 1)[0] in self.template.get("Resources", {}):
                return str(self.get_att(*expr.split(".", 1)))
            return str(self.ref(expr))

        return re.sub(r"\$\{([^}]+)\}", one, text)


class _NoValue:
    pass


_NO_VALUE = _NoValue()


def _ref(r: Resolver, arg: str) -> Any:
    return _NO_VALUE if arg == "AWS::NoValue" else r.ref(arg)


def _get_att(r: Resolver, arg: list) -> Any:
    name, attr = r.resolve(arg)
    return r.get_att(name, attr)


def _join(r: Resolver, arg: list) -> str:
    sep, items = r.resolve(arg)
    return sep.join(str(i) for i in items)


def _select(r: Resolver, arg: list) -> Any:
    index, items = r.resolve(arg)
    return items[int(index)]


def _split(r: Resolver, arg: list) -> list:
    sep, text = r.resolve(arg)
    return text.split(sep)


def _if(r: Resolver, arg: list) -> Any:
    name, yes, no = arg
    return r.resolve(yes if r.condition(name) else no)


def _find_in_map(r: Resolver, arg: list) -> Any:
    m, k1, k2 = r.resolve(arg)
    return r.template["Mappings"][m][k1][k2]


_FUNCTIONS: dict[str, Callable[[Resolver, Any], Any]] = {
    "Ref": _ref,
    "Fn::GetAtt": _get_att,
    "Fn::Sub": lambda r, a: r.sub(a),
    "Fn::Join": _join,
    "Fn::Select": _select,
    "Fn::Split": _split,
    "Fn::If": _if,
    "Fn::Equals": lambda r, a: str(r.resolve(a[0])) == str(r.resolve(a[1])),
    "Fn::Not": lambda r, a: not r.resolve(a[0]),
    "Fn::And": lambda r, a: all(r.resolve(x) for x in a),
    "Fn::Or": lambda r, a: any(r.resolve(x) for x in a),
    "Condition": lambda r, a: r.condition(a),
    "Fn::FindInMap": _find_in_map,
    "Fn::Base64": lambda r, a: base64.b64encode(str(r.resolve(a)).encode()).decode(),
    "Fn::GetAZs": lambda r, a: [f"{REGION}{z}" for z in "abc"],
    "Fn::Length": lambda r, a: len(r.resolve(a)),
    "Fn::ToJsonString": lambda r, a: json.dumps(r.resolve(a), separators=(",", ":")),
}


def functions(template: dict) -> dict[str, dict]:
    """Serverless functions by logical id, with Globals.Function merged into Properties."""
    glob = (template.get("Globals") or {}).get("Function") or {}
    out = {}
    for logical_id, res in template.get("Resources", {}).items():
        if res.get("Type") != "AWS::Serverless::Function":
            continue
        props = dict(glob)
        props.update(res.get("Properties") or {})
        env = dict(((glob.get("Environment") or {}).get("Variables")) or {})
        env.update(((res.get("Properties") or {}).get("Environment") or {}).get("Variables") or {})
        props["Environment"] = {"Variables": env}
        out[logical_id] = {"Properties": props, "Metadata": res.get("Metadata") or {}}
    return out
