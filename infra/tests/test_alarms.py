"""The alarms of template.yaml cover what docs/operations.md ("Metrics and alarms") says
they cover: every function's errors and throttles, every dead-letter queue's depth, and
the custom metrics of the contract there (namespace, name, dimensions), each alarm
notifying the stack's alarm topic, which CloudWatch can publish to. A function or a DLQ
added without its alarms fails here."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from kami_local import template as tpl

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
TEMPLATE = tpl.load(tpl.default_template())
TOPIC = {"Ref": "AlarmTopic"}
CUSTOM_NAMESPACE = "Kami"


def resources(template: dict, kind: str) -> dict[str, dict]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == kind}


def alarms(template: dict) -> dict[str, dict]:
    return {lid: r["Properties"] for lid, r in resources(template, "AWS::CloudWatch::Alarm").items()}


def fires_on_the_first(props: dict) -> bool:
    return (props.get("Threshold") == 1 and props.get("ComparisonOperator") == "GreaterThanOrEqualToThreshold"
            and props.get("EvaluationPeriods") == 1)


def missing_function_alarms(template: dict) -> list[tuple[str, str]]:
    """(function, metric) for each function without an alarm on its Errors or Throttles
    that fires on the first one."""
    covered = {(p["Dimensions"][0]["Value"].get("Ref"), p["MetricName"])
               for p in alarms(template).values()
               if p.get("Namespace") == "AWS/Lambda" and p.get("Statistic") == "Sum" and fires_on_the_first(p)
               and [d["Name"] for d in p.get("Dimensions", [])] == ["FunctionName"]}
    return [(fn, metric) for fn in resources(template, "AWS::Serverless::Function")
            for metric in ("Errors", "Throttles") if (fn, metric) not in covered]


def dead_letter_queues(template: dict) -> set[str]:
    """Queues some queue's RedrivePolicy sends to, and queues named so."""
    queues = resources(template, "AWS::SQS::Queue")
    targets = {((q.get("Properties") or {}).get("RedrivePolicy") or {}).get("deadLetterTargetArn", {})
               .get("Fn::GetAtt", [None])[0] for q in queues.values()}
    return {lid for lid in queues if lid in targets or lid.endswith("DLQ")}


def missing_dlq_alarms(template: dict) -> list[str]:
    covered = {p["Dimensions"][0]["Value"]["Fn::GetAtt"][0] for p in alarms(template).values()
               if p.get("Namespace") == "AWS/SQS" and p.get("MetricName") == "ApproximateNumberOfMessagesVisible"
               and p.get("Statistic") == "Maximum" and fires_on_the_first(p)
               and [d["Name"] for d in p.get("Dimensions", [])] == ["QueueName"]
               and p["Dimensions"][0]["Value"].get("Fn::GetAtt", [None, None])[1] == "QueueName"}
    return sorted(dead_letter_queues(template) - covered)


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def metric_contract() -> dict[tuple[str, tuple[str, ...]], set[str]]:
    """The documented custom metrics: (name, dimensions) -> the alarms on it."""
    rows = {}
    for line in section(DOC.read_text(), "Metrics and alarms").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not re.fullmatch(r"`\w+`", cells[0]):
            continue
        dimensions = tuple(re.findall(r"`(\w+)`", cells[2]))
        rows[(cells[0].strip("`"), dimensions)] = set(re.findall(r"`(\w+)`", cells[4]))
    return rows


def test_every_function_has_an_errors_and_a_throttles_alarm():
    assert missing_function_alarms(TEMPLATE) == []


def test_a_function_added_without_alarms_is_found():
    template = copy.deepcopy(TEMPLATE)
    template["Resources"]["NewFunction"] = {"Type": "AWS::Serverless::Function", "Properties": {}}
    assert missing_function_alarms(template) == [("NewFunction", "Errors"), ("NewFunction", "Throttles")]


def test_every_dead_letter_queue_has_a_depth_alarm():
    assert dead_letter_queues(TEMPLATE) == {"DeliveryDLQ", "NotifyDLQ"}
    assert missing_dlq_alarms(TEMPLATE) == []


def test_a_dead_letter_queue_added_without_an_alarm_is_found():
    template = copy.deepcopy(TEMPLATE)
    template["Resources"]["SupplierQueue"] = {"Type": "AWS::SQS::Queue", "Properties": {
        "RedrivePolicy": {"deadLetterTargetArn": {"Fn::GetAtt": ["SupplierDeadLetters", "Arn"]}}}}
    template["Resources"]["SupplierDeadLetters"] = {"Type": "AWS::SQS::Queue", "Properties": {}}
    assert missing_dlq_alarms(template) == ["SupplierDeadLetters"]


def test_every_alarm_notifies_the_topic_on_alarm_and_on_ok():
    for lid, props in alarms(TEMPLATE).items():
        assert props.get("AlarmActions") == [TOPIC] and props.get("OKActions") == [TOPIC], lid
        assert props.get("ActionsEnabled", True) is True, lid
        # An alarm with a Unit sees no data when the emitter spells the unit otherwise.
        assert "Unit" not in props, lid


def test_cloudwatch_can_publish_to_the_encrypted_topic():
    topic = TEMPLATE["Resources"]["AlarmTopic"]
    assert topic["Type"] == "AWS::SNS::Topic"
    # The AWS managed key (alias/aws/sns) would take every notification silently: its
    # policy cannot let CloudWatch in.
    key = topic["Properties"]["KmsMasterKeyId"]["Ref"]
    assert TEMPLATE["Resources"][key]["Type"] == "AWS::KMS::Key"
    granted = [s for s in TEMPLATE["Resources"][key]["Properties"]["KeyPolicy"]["Statement"]
               if s["Effect"] == "Allow" and s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert granted and {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(granted[0]["Action"])


def test_the_email_subscription_exists_only_with_an_address():
    sub = TEMPLATE["Resources"]["AlarmEmailSubscription"]
    assert sub["Type"] == "AWS::SNS::Subscription"
    assert sub["Properties"] == {"TopicArn": TOPIC, "Protocol": "email", "Endpoint": {"Ref": "AlarmEmail"}}

    def created(**params) -> bool:
        resolver = tpl.Resolver(TEMPLATE, params, ref=lambda n: n, get_att=lambda n, a: n)
        return resolver.condition(sub["Condition"])

    assert (created(), created(AlarmEmail="ops@example.com")) == (False, True)


def test_alarms_on_custom_metrics_use_the_documented_contract():
    contract = metric_contract()
    assert ("OldestExceptionAge", ()) in contract and ("ExceptionsFiled", ("Cause",)) in contract
    on_custom = {lid: p for lid, p in alarms(TEMPLATE).items() if not p["Namespace"].startswith("AWS/")}
    assert on_custom, "no alarm on a custom metric"
    for lid, props in on_custom.items():
        assert props["Namespace"] == CUSTOM_NAMESPACE, lid
        dimensions = tuple(d["Name"] for d in props.get("Dimensions", []))
        row = (props["MetricName"], dimensions)
        assert row in contract, f"{lid}: {row} is not in docs/operations.md's metric table"
        assert lid in contract[row], f"{lid} is not named in its metric's row of docs/operations.md"
    for row, named in contract.items():
        for lid in named:
            assert lid in on_custom and on_custom[lid]["MetricName"] == row[0], \
                f"docs/operations.md names {lid} for {row[0]}, the template has no such alarm"


def test_the_docs_name_every_alarm_but_the_per_function_ones():
    text = section(DOC.read_text(), "Metrics and alarms")
    per_function = {f"{fn}{m}Alarm" for fn in resources(TEMPLATE, "AWS::Serverless::Function")
                    for m in ("Errors", "Throttles")}
    unnamed = [lid for lid in alarms(TEMPLATE) if lid not in per_function and f"`{lid}`" not in text]
    assert unnamed == []
