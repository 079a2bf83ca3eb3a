"""The checkout function's shape in Python (awslambdaric + boto3), for the cold-start
baseline: at init one boto3 session, DynamoDB/SQS/KMS/Secrets Manager clients, and the
secrets the function's environment names, read once (as kami_shared::config does); per
invocation GET /products/{sku} as one GetItem. Not a port of Kami: only its shape."""

import json
import os

import boto3

_session = boto3.session.Session()
dynamodb = _session.client("dynamodb")
sqs = _session.client("sqs")
kms = _session.client("kms")
_secrets_client = _session.client("secretsmanager")
TABLE = os.environ["KAMI_TABLE"]
SECRETS = {
    name: _secrets_client.get_secret_value(SecretId=os.environ[name])["SecretString"]
    for name in ("ADMIN_TOKEN_SECRET_ID", "STRIPE_WEBHOOK_SECRET_ID", "FINGERPRINT_SECRET_ID",
                 "ORDER_TOKEN_SECRET_ID")
    if os.environ.get(name)
}


def handler(event, context):
    sku = (event.get("pathParameters") or {}).get("sku", "")
    item = dynamodb.get_item(TableName=TABLE, Key={"pk": {"S": f"PRODUCT#{sku}"}, "sk": {"S": "PRODUCT"}},
                             ConsistentRead=False).get("Item")
    if item is None:
        return {"statusCode": 404, "headers": {"content-type": "application/json"},
                "body": json.dumps({"error": {"code": "product_not_found", "message": "no such product"}})}
    view = {"sku": item["sku"]["S"], "title": item["title"]["S"],
            "price": {"amount": int(item["price_amount"]["N"]), "currency": item["currency"]["S"]}}
    return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": json.dumps(view)}
