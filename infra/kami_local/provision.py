"""Provisions template.yaml's tables, queues, KMS keys, secrets and the alarm topic on a
moto server, idempotently, and prints what the functions need to run.

A resource whose `Condition` is false is not provisioned, as in CloudFormation. Alarms
are not created: nothing emits metrics to moto or evaluates alarms there; the template's
alarms are checked by infra/tests/test_alarms.py instead.

    python -m kami_local.provision --endpoint http://127.0.0.1:5000 --json

prints {"functions": {LogicalId: {"binary", "env"}}, "env": {...union...},
"resources": {LogicalId: physical id}}. Secret values come from infra/local-defaults.json
(override with --secret LogicalId=VALUE); parameters take their template defaults
(override with --parameter Name=VALUE).
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from . import template as tpl
from .restore import apply_table_settings

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "local-defaults.json"


def aws_env(endpoint: str) -> dict[str, str]:
    """The standard AWS variables every local process gets."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": tpl.REGION,
        "AWS_DEFAULT_REGION": tpl.REGION,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }


def client(service: str, endpoint: str):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=tpl.REGION,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 2}),
    )


class Stack:
    """Creates resources on first Ref/GetAtt, so dependencies come first."""

    def __init__(self, template: dict, endpoint: str, parameters: dict[str, str],
                 secret_values: dict[str, str], stack_name: str = "kami") -> None:
        self.template = template
        self.endpoint = endpoint
        self.stack_name = stack_name
        self.secret_values = secret_values
        self.physical: dict[str, str] = {}
        self.attributes: dict[str, dict[str, str]] = {}
        self._clients: dict[str, Any] = {}
        self.resolver = tpl.Resolver(template, parameters, self.ref, self.get_att, stack_name)

    def _client(self, service: str):
        if service not in self._clients:
            self._clients[service] = client(service, self.endpoint)
        return self._clients[service]

    def _name(self, logical_id: str) -> str:
        return f"{self.stack_name}-{logical_id}"

    def ref(self, logical_id: str) -> str:
        if logical_id not in self.physical:
            if not self.wanted(logical_id):
                raise KeyError(f"{logical_id} is not provisioned: its condition is false")
            self._provision(logical_id)
        return self.physical[logical_id]

    def wanted(self, logical_id: str) -> bool:
        condition = self.template["Resources"][logical_id].get("Condition")
        return condition is None or self.resolver.condition(condition)

    def get_att(self, logical_id: str, attr: str) -> str:
        self.ref(logical_id)
        try:
            return self.attributes[logical_id][attr]
        except KeyError:
            raise KeyError(f"!GetAtt {logical_id}.{attr} is not supported locally") from None

    def provision_all(self) -> dict[str, str]:
        for logical_id in self.template.get("Resources", {}):
            if self.wanted(logical_id):
                self.ref(logical_id)
        return dict(self.physical)

    def _provision(self, logical_id: str) -> None:
        res = self.template["Resources"][logical_id]
        props = self.resolver.resolve(res.get("Properties") or {})
        handler = _HANDLERS.get(res["Type"], Stack._virtual)
        physical, attributes = handler(self, logical_id, props)
        self.physical[logical_id] = physical
        self.attributes[logical_id] = attributes

    # ---- resource types ----

    def _table(self, logical_id: str, p: dict) -> tuple[str, dict]:
        ddb = self._client("dynamodb")
        name = p.get("TableName") or self._name(logical_id)
        try:
            table = ddb.describe_table(TableName=name)["Table"]
        except ddb.exceptions.ResourceNotFoundException:
            args: dict[str, Any] = {
                "TableName": name,
                "AttributeDefinitions": p["AttributeDefinitions"],
                "KeySchema": p["KeySchema"],
                "BillingMode": p.get("BillingMode", "PROVISIONED"),
            }
            for key in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes", "ProvisionedThroughput",
                        "StreamSpecification"):
                if key in p:
                    args[key] = p[key]
            if args["BillingMode"] == "PAY_PER_REQUEST":
                for gsi in args.get("GlobalSecondaryIndexes", []):
                    gsi.pop("ProvisionedThroughput", None)
            table = ddb.create_table(**args)["TableDescription"]
        apply_table_settings(ddb, name, p)
        return name, {"Arn": table["TableArn"], "StreamArn": table.get("LatestStreamArn", "")}

    def _queue(self, logical_id: str, p: dict) -> tuple[str, dict]:
        sqs = self._client("sqs")
        name = p.get("QueueName") or self._name(logical_id) + (".fifo" if p.get("FifoQueue") else "")
        attrs = {}
        for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds", "MaximumMessageSize",
                    "ReceiveMessageWaitTimeSeconds", "FifoQueue", "ContentBasedDeduplication",
                    "SqsManagedSseEnabled", "KmsMasterKeyId", "DeduplicationScope", "FifoThroughputLimit"):
            if key in p:
                attrs[key] = str(p[key]).lower() if isinstance(p[key], bool) else str(p[key])
        for key in ("RedrivePolicy", "RedriveAllowPolicy"):
            if key in p:
                attrs[key] = p[key] if isinstance(p[key], str) else json.dumps(p[key])
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            settable = {k: v for k, v in attrs.items() if k != "FifoQueue"}
            if settable:
                sqs.set_queue_attributes(QueueUrl=url, Attributes=settable)
        except sqs.exceptions.QueueDoesNotExist:
            url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        return url, {"Arn": arn, "QueueName": name, "QueueUrl": url}

    def _kms_key(self, logical_id: str, p: dict) -> tuple[str, dict]:
        kms = self._client("kms")
        alias = f"alias/{self._name(logical_id)}"
        key_id = next((a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]
                       if a["AliasName"] == alias), None)
        if key_id is None:
            args = {k: p[k] for k in ("Description", "KeyUsage", "KeySpec") if k in p}
            if "KeyPolicy" in p:
                args["Policy"] = json.dumps(p["KeyPolicy"])
            key_id = kms.create_key(**args)["KeyMetadata"]["KeyId"]
            kms.create_alias(AliasName=alias, TargetKeyId=key_id)
        if p.get("EnableKeyRotation"):
            kms.enable_key_rotation(KeyId=key_id)
        arn = kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        return key_id, {"Arn": arn, "KeyId": key_id}

    def _kms_alias(self, logical_id: str, p: dict) -> tuple[str, dict]:
        kms = self._client("kms")
        if not any(a["AliasName"] == p["AliasName"] for a in kms.list_aliases()["Aliases"]):
            kms.create_alias(AliasName=p["AliasName"], TargetKeyId=p["TargetKeyId"])
        return p["AliasName"], {}

    def _secret(self, logical_id: str, p: dict) -> tuple[str, dict]:
        sm = self._client("secretsmanager")
        name = p.get("Name") or self._name(logical_id)
        value = self.secret_values.get(logical_id, p.get("SecretString"))
        try:
            current = sm.describe_secret(SecretId=name)
            arn = current["ARN"]
            if value is not None and sm.get_secret_value(SecretId=arn)["SecretString"] != value:
                sm.put_secret_value(SecretId=arn, SecretString=value)
        except sm.exceptions.ResourceNotFoundException:
            if value is None:
                length = int((p.get("GenerateSecretString") or {}).get("PasswordLength", 32))
                value = secrets.token_hex(length)[:length]
            arn = sm.create_secret(Name=name, Description=p.get("Description", ""), SecretString=value)["ARN"]
        return arn, {"Id": arn}

    def _topic(self, logical_id: str, p: dict) -> tuple[str, dict]:
        sns = self._client("sns")
        name = p.get("TopicName") or self._name(logical_id)
        attributes = {k: str(p[k]) for k in ("DisplayName", "KmsMasterKeyId") if k in p}
        # CreateTopic returns the existing topic's ARN when the name is taken.
        arn = sns.create_topic(Name=name, Attributes=attributes)["TopicArn"]
        return arn, {"TopicArn": arn, "TopicName": name}

    def _subscription(self, logical_id: str, p: dict) -> tuple[str, dict]:
        sns = self._client("sns")
        existing = next((s["SubscriptionArn"] for s in sns.list_subscriptions_by_topic(TopicArn=p["TopicArn"])
                         ["Subscriptions"] if (s["Protocol"], s["Endpoint"]) == (p["Protocol"], p["Endpoint"])), None)
        arn = existing or sns.subscribe(TopicArn=p["TopicArn"], Protocol=p["Protocol"], Endpoint=p["Endpoint"],
                                        ReturnSubscriptionArn=True)["SubscriptionArn"]
        return arn, {"Arn": arn}

    def _email_identity(self, logical_id: str, p: dict) -> tuple[str, dict]:
        """moto verifies an identity as it is created (SES sends only from one)."""
        ses = self._client("sesv2")
        identity = p["EmailIdentity"]
        try:
            ses.get_email_identity(EmailIdentity=identity)
        except ses.exceptions.NotFoundException:
            ses.create_email_identity(EmailIdentity=identity)
        return identity, {}

    def _function(self, logical_id: str, p: dict) -> tuple[str, dict]:
        name = p.get("FunctionName") or self._name(logical_id)
        return name, {"Arn": f"arn:aws:lambda:{tpl.REGION}:{tpl.ACCOUNT_ID}:function:{name}"}

    def _role(self, logical_id: str, p: dict) -> tuple[str, dict]:
        """A function's role is only named locally: moto does not enforce IAM, so the
        template's policies are checked by infra/tests/test_iam.py instead."""
        name = p.get("RoleName") or self._name(logical_id)
        return name, {"Arn": f"arn:aws:iam::{tpl.ACCOUNT_ID}:role/{name}", "RoleId": name}

    def _virtual(self, logical_id: str, p: dict) -> tuple[str, dict]:
        """Resources with nothing to create locally (the HTTP API is served by the platform)."""
        return f"{self.stack_name}-{logical_id}".lower(), {}


_HANDLERS = {
    "AWS::DynamoDB::Table": Stack._table,
    "AWS::SQS::Queue": Stack._queue,
    "AWS::KMS::Key": Stack._kms_key,
    "AWS::KMS::Alias": Stack._kms_alias,
    "AWS::SecretsManager::Secret": Stack._secret,
    "AWS::SNS::Topic": Stack._topic,
    "AWS::SNS::Subscription": Stack._subscription,
    "AWS::SES::EmailIdentity": Stack._email_identity,
    "AWS::Serverless::Function": Stack._function,
    "AWS::IAM::Role": Stack._role,
}


def local_secrets() -> dict[str, str]:
    return json.loads(DEFAULTS_FILE.read_text())["secrets"]


def provision(endpoint: str, template_path: str | Path | None = None,
              parameters: dict[str, str] | None = None,
              secret_overrides: dict[str, str] | None = None) -> dict:
    return provision_stack(endpoint, template_path, parameters, secret_overrides)[0]


def provision_stack(endpoint: str, template_path: str | Path | None = None,
                    parameters: dict[str, str] | None = None,
                    secret_overrides: dict[str, str] | None = None) -> tuple[dict, Stack]:
    template = tpl.load(template_path or tpl.default_template())
    secret_values = local_secrets()
    secret_values.update(secret_overrides or {})
    stack = Stack(template, endpoint, parameters or {}, secret_values)
    resources = stack.provision_all()
    functions: dict[str, dict] = {}
    union: dict[str, str] = {}
    for logical_id, fn in tpl.functions(template).items():
        variables = stack.resolver.resolve(fn["Properties"]["Environment"]["Variables"])
        env = {k: str(v) for k, v in variables.items()}
        # What Lambda itself sets from the function's LoggingConfig.
        if (fn["Properties"].get("LoggingConfig") or {}).get("LogFormat") == "JSON":
            env["AWS_LAMBDA_LOG_FORMAT"] = "JSON"
        binary = (fn["Metadata"].get("BuildProperties") or {}).get("Binary") or logical_id
        functions[logical_id] = {"binary": binary, "env": env}
        union.update(env)
    return {"functions": functions, "env": union, "resources": resources}, stack


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Provision template.yaml on a moto server.")
    parser.add_argument("--endpoint", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--template", default=None, help="defaults to the repository's template.yaml")
    parser.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--secret", action="append", default=[], metavar="LOGICAL_ID=VALUE")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = provision(args.endpoint, args.template, _pairs(args.parameter), _pairs(args.secret))
    if args.json:
        json.dump(result, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        for logical_id, physical in result["resources"].items():
            print(f"{logical_id:28} {physical}")


if __name__ == "__main__":
    main()
