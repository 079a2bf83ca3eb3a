"""Least privilege: every function's effective IAM permissions, as SAM deploys
template.yaml, are exactly the table in docs/security.md ("IAM: least privilege"), and
keep to the rules that section states.

The template is transformed offline by samtranslator (what `sam validate` / `sam deploy`
run), with a stub for the one thing that would call AWS: the map of managed policy names
to ARNs. No network, no credentials. A function's effective permissions are the
statements of its role's inline policies, of any `AWS::IAM::Policy` / `ManagedPolicy`
attached to the role, and of the AWS managed policies it has (their documents are below,
as AWS publishes them): a managed policy SAM attaches behind the template's back counts
like any other statement.

moto does not enforce IAM, so nothing else would notice a policy that is too wide, or a
table that no longer says what the template grants.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from samtranslator.parser.parser import Parser
from samtranslator.translator.translator import Translator

from kami_local import template as tpl

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
DOC = ROOT / "docs" / "security.md"
SOURCES = ROOT / "shared" / "src"

TABLE = "KamiTable"
INDEX = "KamiTable/index/gsi1"
# The exception queue's index: it projects an order's id, sku, status, exception, cause
# and updated_at (no email, token or key), read by operations (the listing) and the sweep
# (the oldest entry's age, a metric).
EXCEPTION_INDEX = "KamiTable/index/gsi2"
# The by-owner index: the audit trail by actor (whole audit entries, never a key or a
# secret), read by operations; a distributor's ledger entries and statements, read by
# distributor-api and settlement.
AUDIT_INDEX = "KamiTable/index/gsi3"
# What a function may do to the table's items; anything else (Scan, PartiQL, `*`) has no
# leading key and would read or write past every LeadingKeys condition.
ITEM_ACTIONS = {"GetItem", "BatchGetItem", "Query", "PutItem", "UpdateItem", "DeleteItem",
                "ConditionCheckItem"}
LEADING_KEYS = "dynamodb:LeadingKeys"
# ForAllValues: every key of the request must match (ForAnyValue would let a BatchGetItem
# or a transaction carry other keys along with one that matches).
LEADING_KEYS_OPERATORS = {"ForAllValues:StringLike", "ForAllValues:StringEquals"}
PURPOSE = "kms:EncryptionContext:kami:purpose"
# Resource "*" is allowed for these actions only: logs (the log group's name is generated)
# and X-Ray's writes (no resource types), and SNS's Publish, whose SMS to a phone number
# has no resource either (the notifier: docs/security.md).
WILDCARD_OK = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
               "xray:PutTraceSegments", "xray:PutTelemetryRecords", "sns:Publish"}
# Key prefixes granted before the code that writes them lands (docs/security.md): the
# per-client hold counters and the sweep's lease.
AWAITED_PREFIXES = {"HOLD#", "SWEEP#"}

_XRAY_WRITE = [{"Effect": "Allow", "Resource": "*", "Action": [
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules",
    "xray:GetSamplingTargets", "xray:GetSamplingStatisticSummaries"]}]
_LOGS = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
# AWS managed policies SAM may attach, by name, with their documents' statements.
MANAGED_POLICIES = {
    "service-role/AWSLambdaBasicExecutionRole": [{"Effect": "Allow", "Action": _LOGS, "Resource": "*"}],
    "service-role/AWSLambdaSQSQueueExecutionRole": [{"Effect": "Allow", "Resource": "*", "Action": [
        "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", *_LOGS]}],
    "AWSXrayWriteOnlyAccess": _XRAY_WRITE,
    "AWSXRayDaemonWriteAccess": _XRAY_WRITE,
}


class ManagedPolicyLoader:
    """Stands in for samtranslator's loader, which lists the account's policies through IAM."""

    def load(self) -> dict[str, str]:
        return {name.rsplit("/", 1)[-1]: f"arn:aws:iam::aws:policy/{name}" for name in MANAGED_POLICIES}


@dataclass(frozen=True)
class Row:
    """One statement's grant to one service: what a row of the table says."""

    service: str
    actions: frozenset[str]
    resources: frozenset[str]
    # (operator, key, values) triples
    conditions: frozenset[tuple[str, str, frozenset[str]]]

    def __str__(self) -> str:
        conditions = "; ".join(f"{op} {key} {sorted(values)}" for op, key, values in sorted(self.conditions))
        return (f"{self.service}: {', '.join(sorted(self.actions))} on {', '.join(sorted(self.resources))}"
                + (f" if {conditions}" if conditions else ""))

    def leading_keys(self) -> tuple[str, frozenset[str]] | None:
        found = [(op, values) for op, key, values in self.conditions if key == LEADING_KEYS]
        return found[0] if len(found) == 1 else None


@dataclass
class Statement:
    origin: str  # "inline", "managed <name>", "policy <logical id>"
    rows: list[Row]


# ---------- the template, as SAM deploys it ----------

def source_template() -> dict:
    return tpl.load(TEMPLATE)


def transformed(template: dict) -> dict:
    """The CloudFormation SAM would deploy: local CodeUris stand for uploaded code, as
    `sam validate` does; the region is fixed (SAM's pseudo parameters need one)."""
    for res in template["Resources"].values():
        if res.get("Type") == "AWS::Serverless::Function":
            props = res.setdefault("Properties", {})
            props["CodeUri"] = f"s3://kami-test/{props.get('CodeUri', 'code')}"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1"))
    return translator.translate(template, parameter_values={},
                                get_managed_policy_map=ManagedPolicyLoader().load)


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def resource_name(value) -> str:
    """A resource as the table names it: `*`, a logical id, or a logical id with a path."""
    if value == "*":
        return "*"
    if isinstance(value, dict) and len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Fn::GetAtt" and arg[1] == "Arn":
            return arg[0]
        if fn == "Ref":
            return arg
        if fn == "Fn::Sub" and isinstance(arg, str):
            m = re.fullmatch(r"\$\{([A-Za-z0-9]+)\.Arn\}(/.*)?", arg)
            if m:
                return m.group(1) + (m.group(2) or "")
            # An SES identity's ARN names the identity resource.
            m = re.fullmatch(r"arn:\$\{AWS::Partition\}:ses:\$\{AWS::Region\}:\$\{AWS::AccountId\}:identity/\$\{([A-Za-z0-9]+)\}", arg)
            if m:
                return m.group(1)
    return str(value)


def rows_of(statement: dict, where: str) -> list[Row]:
    assert statement.get("Effect") == "Allow", f"{where}: only Allow statements are expected: {statement}"
    for unsupported in ("NotAction", "NotResource", "NotPrincipal"):
        assert unsupported not in statement, f"{where}: {unsupported} is not allowed: {statement}"
    conditions = frozenset(
        (op, key, frozenset(str(v) for v in as_list(values)))
        for op, keys in (statement.get("Condition") or {}).items()
        for key, values in keys.items())
    resources = frozenset(resource_name(r) for r in as_list(statement["Resource"]))
    by_service: dict[str, set[str]] = defaultdict(set)
    for action in as_list(statement["Action"]):
        service, _, name = action.partition(":")
        by_service[service].add(name)
    return [Row(service, frozenset(names), resources, conditions) for service, names in sorted(by_service.items())]


def managed_name(arn) -> str:
    text = arn if isinstance(arn, str) else str(arn.get("Fn::Sub", arn))
    m = re.search(r":policy/(.+)$", text)
    assert m, f"not a managed policy ARN: {arn}"
    return m.group(1)


def role_statements(cfn: dict, role: str) -> list[Statement]:
    resources = cfn["Resources"]
    props = resources[role]["Properties"]
    out = []
    for policy in props.get("Policies") or []:
        for st in as_list(policy["PolicyDocument"]["Statement"]):
            out.append(Statement("inline", rows_of(st, f"{role} inline")))
    for arn in props.get("ManagedPolicyArns") or []:
        name = managed_name(arn)
        assert name in MANAGED_POLICIES, (
            f"{role} has managed policy {name}, whose permissions this test does not know: "
            f"add its document to MANAGED_POLICIES (or, better, write the statements inline)")
        for st in MANAGED_POLICIES[name]:
            out.append(Statement(f"managed {name}", rows_of(st, f"{role} managed {name}")))
    for logical_id, res in resources.items():
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy") and \
                {"Ref": role} in (res["Properties"].get("Roles") or []):
            for st in as_list(res["Properties"]["PolicyDocument"]["Statement"]):
                out.append(Statement(f"policy {logical_id}", rows_of(st, f"{role} {logical_id}")))
    return out


@dataclass
class Function:
    logical_id: str
    name: str  # its binary: how the table names it
    role: str
    statements: list[Statement]
    queues: set[str]  # the queues its event source mappings poll

    def rows(self) -> list[Row]:
        return [row for st in self.statements for row in st.rows]


def functions_of(source: dict, cfn: dict) -> dict[str, Function]:
    binaries = {lid: (fn["Metadata"].get("BuildProperties") or {}).get("Binary") or lid
                for lid, fn in tpl.functions(source).items()}
    queues: dict[str, set[str]] = defaultdict(set)
    for res in cfn["Resources"].values():
        if res["Type"] == "AWS::Lambda::EventSourceMapping":
            props = res["Properties"]
            queues[resource_name(props["FunctionName"]) if not isinstance(props["FunctionName"], str)
                   else props["FunctionName"]].add(resource_name(props["EventSourceArn"]))
    out = {}
    for lid, res in cfn["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        role_ref = res["Properties"]["Role"]
        assert isinstance(role_ref, dict) and "Fn::GetAtt" in role_ref, (
            f"{lid}: its role must be a role of this template (an outside role cannot be checked)")
        role = role_ref["Fn::GetAtt"][0]
        out[binaries[lid]] = Function(lid, binaries[lid], role, role_statements(cfn, role), queues[lid])
    return out


# ---------- the table in docs/security.md ----------

TABLE_START = "<!-- iam-table:start"
TABLE_END = "<!-- iam-table:end -->"
HEADER = ["function", "service", "actions", "resources", "condition"]


def cells(line: str) -> list[str]:
    return [c.strip().replace("`", "").strip() for c in line.strip().strip("|").split("|")]


def doc_condition(text: str) -> frozenset[tuple[str, str, frozenset[str]]]:
    """`LeadingKeys A#*, B#*` or `key = value[, value]`, several joined by `;`; `–` is none."""
    out = set()
    for clause in (c.strip() for c in text.split(";")):
        if clause in ("", "-", "–", "—"):
            continue
        m = re.fullmatch(r"LeadingKeys\s+(.+)", clause)
        if m:
            out.add(("ForAllValues:StringLike", LEADING_KEYS,
                     frozenset(v.strip() for v in m.group(1).split(","))))
            continue
        key, sep, values = clause.partition("=")
        assert sep, f"docs/security.md: cannot read the condition {clause!r}"
        out.add(("StringEquals", key.strip(), frozenset(v.strip() for v in values.split(","))))
    return frozenset(out)


def doc_rows(functions: list[str]) -> dict[str, list[Row]]:
    text = DOC.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text, "docs/security.md has no IAM table markers"
    block = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    lines = [line for line in block.splitlines() if line.strip().startswith("|")]
    assert cells(lines[0])[:len(HEADER)] == HEADER, f"docs/security.md IAM table header: {lines[0]}"
    out: dict[str, list[Row]] = defaultdict(list)
    for line in lines[2:]:
        function, service, actions, resources, condition = cells(line)[:len(HEADER)]
        row = Row(service,
                  frozenset(a.strip() for a in actions.split(",")),
                  frozenset(r.strip() for r in resources.split(",")),
                  doc_condition(condition))
        for name in (functions if function == "all" else [function]):
            out[name].append(row)
    return out


# ---------- fixtures ----------

@pytest.fixture(scope="module")
def functions() -> dict[str, Function]:
    return functions_of(source_template(), transformed(source_template()))


@pytest.fixture(scope="module")
def documented(functions) -> dict[str, list[Row]]:
    return doc_rows(sorted(functions))


# ---------- the template agrees with the table ----------

def test_the_table_names_the_functions_of_the_template(functions, documented):
    assert set(documented) == set(functions), (
        f"functions only in docs/security.md: {sorted(set(documented) - set(functions))}; "
        f"only in template.yaml: {sorted(set(functions) - set(documented))}")


def test_each_function_has_exactly_the_permissions_the_table_lists(functions, documented):
    problems = []
    for name, fn in sorted(functions.items()):
        granted, listed = Counter(fn.rows()), Counter(documented.get(name, []))
        for row in sorted(granted - listed, key=str):
            problems.append(f"{name}: template.yaml grants, docs/security.md does not list: {row}")
        for row in sorted(listed - granted, key=str):
            problems.append(f"{name}: docs/security.md lists, template.yaml does not grant: {row}")
    assert not problems, "\n".join(problems)


# ---------- the rules the table keeps to ----------

def test_every_function_has_its_own_role_from_the_template(functions):
    """A role SAM generates gets managed policies the template never mentions."""
    source = source_template()["Resources"]
    roles = Counter(fn.role for fn in functions.values())
    for name, fn in functions.items():
        assert source.get(fn.role, {}).get("Type") == "AWS::IAM::Role", (
            f"{name}: its role {fn.role} is generated by SAM; give the function `Role:` (docs/security.md)")
        assert roles[fn.role] == 1, f"{name} shares its role {fn.role}"


def test_managed_policies_grant_every_resource_only_for_logs(functions):
    problems = [f"{name}: {st.origin} grants {row}"
                for name, fn in sorted(functions.items())
                for st in fn.statements if st.origin.startswith("managed")
                for row in st.rows if "*" in row.resources and row.service != "logs"]
    assert not problems, "\n".join(problems)


def test_every_resource_only_where_nothing_narrower_exists(functions):
    problems = []
    for name, fn in sorted(functions.items()):
        for row in fn.rows():
            wide = {f"{row.service}:{a}" for a in row.actions} - WILDCARD_OK
            if "*" in row.resources and wide:
                problems.append(f"{name}: {sorted(wide)} on Resource *")
            if any(a.endswith("*") for a in row.actions):
                problems.append(f"{name}: a wildcard action in {row}")
    assert not problems, "\n".join(problems)


def test_table_statements_are_limited_by_leading_keys(functions):
    for name, fn in functions.items():
        for row in fn.rows():
            if row.service != "dynamodb":
                continue
            assert row.actions <= ITEM_ACTIONS, f"{name}: {sorted(row.actions - ITEM_ACTIONS)} in {row}"
            assert row.resources in ({TABLE}, {INDEX}, {EXCEPTION_INDEX}, {AUDIT_INDEX}), (
                f"{name}: DynamoDB on {sorted(row.resources)}")
            if row.resources == {EXCEPTION_INDEX}:
                # Operations lists the queue; the sweep reads its oldest entry's age; the
                # stock audit reads the orders in it.
                assert name in ("operations", "expiry-sweep", "stock-audit") and row.actions == {"Query"}, (
                    f"{name}: {row}")
                continue
            if row.resources == {AUDIT_INDEX}:
                assert name in ("operations", "distributor-api", "settlement") and row.actions == {"Query"}, (
                    f"{name}: {row}")
                continue
            if row.resources == {INDEX}:
                # The index is keyed by gsi1pk and projects keys only (docs/security.md).
                assert row.actions == {"Query"}, f"{name}: only Query on the index: {row}"
                continue
            leading = row.leading_keys()
            assert leading, f"{name}: a table statement without a dynamodb:LeadingKeys condition: {row}"
            operator, prefixes = leading
            assert operator in LEADING_KEYS_OPERATORS, f"{name}: {operator} on LeadingKeys: {row}"
            for prefix in prefixes:
                assert re.fullmatch(r"[A-Z][A-Z0-9_]*#\*", prefix), (
                    f"{name}: LeadingKeys {prefix!r} is not one item kind's prefix (`KIND#*`)")


def test_the_audit_trail_is_append_only(functions):
    """No role may change or delete an audit entry: `AUDIT#` is only ever put (and the
    code puts it only where none exists)."""
    writers = set()
    for name, fn in functions.items():
        for row in fn.rows():
            leading = row.leading_keys()
            if row.service != "dynamodb" or not leading or "AUDIT#*" not in leading[1]:
                continue
            assert row.actions <= {"PutItem", "GetItem", "BatchGetItem", "Query"}, f"{name}: {row}"
            if "PutItem" in row.actions:
                assert leading[1] == {"AUDIT#*"}, (
                    f"{name}: audit puts share a statement with other keys: {row}")
                writers.add(name)
    assert writers == {"admin", "operations"}


def test_every_leading_key_prefix_is_a_key_the_store_writes(functions):
    """A typo in a prefix would deny in AWS only; every prefix is a key literal in shared/src."""
    code = "\n".join(p.read_text(encoding="utf-8") for p in SOURCES.rglob("*.rs"))
    literals = set(re.findall(r'"([A-Z][A-Z0-9_]*#)', code))
    for name, fn in functions.items():
        for row in fn.rows():
            leading = row.leading_keys()
            for prefix in (leading[1] if leading else ()):
                kind = prefix.rstrip("*")
                assert kind in literals or kind in AWAITED_PREFIXES, (
                    f"{name}: LeadingKeys {prefix} names no key of shared/src (known: {sorted(literals)})")


# What a data key may protect (`EncryptionContext` in shared/src/ports/vault.rs): every KMS
# grant names exactly one of them.
PURPOSES = ("card-key-batch", "payment-channel", "supplier", "license-key", "link-token", "link-secret")


def test_kms_decrypt_only_where_the_table_says_and_only_for_known_purposes(functions, documented):
    def decrypters(rows_by_function):
        return {name for name, rows in rows_by_function.items()
                if any(r.service == "kms" and "Decrypt" in r.actions for r in rows)}

    granted = decrypters({name: fn.rows() for name, fn in functions.items()})
    assert granted <= decrypters(documented), f"kms:Decrypt outside the table: {sorted(granted - decrypters(documented))}"
    for name, fn in functions.items():
        for row in fn.rows():
            if row.service == "kms":
                assert any(("StringEquals", PURPOSE, frozenset({purpose})) in row.conditions
                           for purpose in PURPOSES), (
                    f"{name}: KMS without one known encryption-context purpose {PURPOSES}: {row}")
                assert row.resources == {"CardKeyKey"}, f"{name}: KMS on {sorted(row.resources)}"


def test_only_a_queue_s_consumer_receives_and_only_from_that_queue(functions):
    consuming = {"ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility"}
    for name, fn in functions.items():
        for row in fn.rows():
            if row.service == "sqs" and row.actions & consuming:
                assert fn.queues and row.resources <= fn.queues, (
                    f"{name}: {row} but its event sources poll {sorted(fn.queues) or 'no queue'}")
    workers = [fn for fn in functions.values() if fn.queues]
    assert workers, "no function polls a queue: the SQS event source is gone?"
    for fn in workers:
        received = {(a, r) for row in fn.rows() if row.service == "sqs" for a in row.actions for r in row.resources}
        for queue in fn.queues:
            for action in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes"):
                assert (action, queue) in received, f"{fn.name}: its event source needs sqs:{action} on {queue}"


def test_the_transform_runs_offline_and_sam_would_have_attached_managed_policies():
    """What the explicit roles are for: the same functions with SAM's generated roles get
    the SQS execution role (Resource *) on the worker and X-Ray's managed policy on every
    function. Kept as evidence of the finding; should SAM stop doing this, this test says
    so, and the explicit roles could be reconsidered."""
    source = source_template()
    for lid, res in list(source["Resources"].items()):
        if res.get("Type") == "AWS::Serverless::Function":
            res["Properties"].pop("Role", None)
            res["Properties"]["Policies"] = []
        elif res.get("Type") == "AWS::IAM::Role":
            del source["Resources"][lid]
    cfn = transformed(source)
    attached = {lid: [managed_name(a) for a in r["Properties"].get("ManagedPolicyArns") or []]
                for lid, r in cfn["Resources"].items() if r["Type"] == "AWS::IAM::Role"}
    assert "service-role/AWSLambdaSQSQueueExecutionRole" in attached["DeliveryWorkerFunctionRole"]
    assert all("AWSXrayWriteOnlyAccess" in names for lid, names in attached.items() if lid.endswith("FunctionRole"))
