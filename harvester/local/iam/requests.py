"""An AWS API call -> the authorization requests AWS makes for it: (IAM action, resource ARN, condition keys).

Sources: the Service Authorization Reference of each service ("Actions, resources, and condition keys for ...",
https://docs.aws.amazon.com/service-authorization/latest/reference/reference_policies_actions-resources-contextkeys.html)
and the S3 user guide, "Required permissions for Amazon S3 API operations"
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-with-s3-policy-actions.html): HeadObject needs
s3:GetObject, ListObjectsV2 needs s3:ListBucket (with s3:prefix, s3:delimiter, s3:max-keys from the request);
a transaction or batch call is authorized per item and table.
"""

from __future__ import annotations

from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit


class Request(NamedTuple):
    action: str
    resource: str
    context: dict[str, Any]


def s3_object(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}/{key}"


def s3_bucket(bucket: str) -> str:
    return f"arn:aws:s3:::{bucket}"


_S3_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject", "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload", "DeleteObject": "s3:DeleteObject",
    "GetObjectTagging": "s3:GetObjectTagging", "PutObjectTagging": "s3:PutObjectTagging",
}  # fmt: skip


def _s3(op: str, p: dict) -> list[Request]:
    bucket = p.get("Bucket", "")
    if op in ("GetObject", "HeadObject") and p.get("VersionId"):
        return [Request("s3:GetObjectVersion", s3_object(bucket, p["Key"]), {})]
    if op in _S3_OBJECT_ACTIONS:
        return [Request(_S3_OBJECT_ACTIONS[op], s3_object(bucket, p["Key"]), {})]
    if op == "CopyObject":
        source = p["CopySource"]
        if isinstance(source, dict):
            source = f"{source['Bucket']}/{source['Key']}"
        source = unquote(source.split("?versionId=")[0]).lstrip("/")
        return [Request("s3:PutObject", s3_object(bucket, p["Key"]), {}),
                Request("s3:GetObject", f"arn:aws:s3:::{source}", {})]  # fmt: skip
    if op == "DeleteObjects":
        return [Request("s3:DeleteObject", s3_object(bucket, o["Key"]), {}) for o in p["Delete"]["Objects"]]
    if op in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
        context = {key: str(p[name]) for key, name in (("s3:prefix", "Prefix"), ("s3:delimiter", "Delimiter"),
                                                        ("s3:max-keys", "MaxKeys")) if name in p}  # fmt: skip
        action = "s3:ListBucketVersions" if op == "ListObjectVersions" else "s3:ListBucket"
        return [Request(action, s3_bucket(bucket), context)]
    if op == "HeadBucket":
        return [Request("s3:ListBucket", s3_bucket(bucket), {})]
    if op == "ListBuckets":
        return [Request("s3:ListAllMyBuckets", "*", {})]
    return [Request(f"s3:{op}", s3_object(bucket, p["Key"]) if "Key" in p else s3_bucket(bucket), {})]


_TRANSACT = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem", "ConditionCheck": "ConditionCheckItem",
             "Get": "GetItem"}  # fmt: skip


def _dynamodb(op: str, p: dict, region: str, account: str) -> list[Request]:
    def table(name: str) -> str:
        return name if name.startswith("arn:") else f"arn:aws:dynamodb:{region}:{account}:table/{name}"

    if op in ("BatchGetItem", "BatchWriteItem"):
        return [Request(f"dynamodb:{op}", table(t), {}) for t in p["RequestItems"]]
    if op in ("TransactWriteItems", "TransactGetItems"):
        return [Request(f"dynamodb:{_TRANSACT[kind]}", table(body["TableName"]), {})
                for item in p["TransactItems"] for kind, body in item.items()]  # fmt: skip
    if op == "ListTables":
        return [Request("dynamodb:ListTables", "*", {})]
    resource = table(p["TableName"]) + (f"/index/{p['IndexName']}" if p.get("IndexName") else "")
    return [Request(f"dynamodb:{op}", resource, {})]


def state_machine_request(action: str, arn: str) -> Request:
    """Step Functions authorizes a call on a version or alias ARN on the state machine's own ARN, with the
    version or alias in `states:StateMachineQualifier` ("Authorization for versions and aliases",
    https://docs.aws.amazon.com/step-functions/latest/dg/auth-version-alias.html), a multivalued key
    (ArrayOfString in the Service Authorization Reference: policies test it with ForAnyValue:)."""
    parts = arn.split(":")
    if len(parts) == 8 and parts[5] == "stateMachine":
        return Request(action, ":".join(parts[:7]), {"states:StateMachineQualifier": [parts[7]]})
    return Request(action, arn, {})


def _states(op: str, p: dict) -> list[Request]:
    if p.get("stateMachineArn"):
        return [state_machine_request(f"states:{op}", p["stateMachineArn"])]
    arn = p.get("executionArn") or p.get("mapRunArn") or p.get("stateMachineAliasArn") or "*"
    return [Request(f"states:{op}", arn, {})]


def function_arn(name: str, region: str, account: str, qualifier: str | None = None) -> str:
    arn = name if name.startswith("arn:") else f"arn:aws:lambda:{region}:{account}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def _lambda(op: str, p: dict, region: str, account: str) -> list[Request]:
    action = "lambda:InvokeFunction" if op in ("Invoke", "InvokeAsync", "InvokeWithResponseStream") else f"lambda:{op}"
    name = p.get("FunctionName")
    return [Request(action, function_arn(name, region, account, p.get("Qualifier")) if name else "*", {})]


def _secretsmanager(op: str, p: dict, region: str, account: str) -> list[Request]:
    secret = p.get("SecretId", "*")
    if secret != "*" and not secret.startswith("arn:"):
        secret = f"arn:aws:secretsmanager:{region}:{account}:secret:{secret}-AbCdEf"  # the 6 random characters
    return [Request(f"secretsmanager:{op}", secret, {})]


def _sqs(op: str, p: dict) -> list[Request]:
    url = p.get("QueueUrl")
    if not url:
        return [Request(f"sqs:{op}", "*", {})]
    parts = urlsplit(url)
    account, name = parts.path.strip("/").split("/")[:2]
    region = parts.hostname.split(".")[1] if parts.hostname.startswith("sqs.") else "us-east-1"
    return [Request(f"sqs:{op}", f"arn:aws:sqs:{region}:{account}:{name}", {})]


def requests_for(service: str, op: str, params: dict, region: str, account: str) -> list[Request]:
    """`service`: the signing name (s3, dynamodb, states, lambda, ...); `op`: the API operation name."""
    if service == "s3":
        return _s3(op, params)
    if service == "dynamodb":
        return _dynamodb(op, params, region, account)
    if service == "states":
        return _states(op, params)
    if service == "lambda":
        return _lambda(op, params, region, account)
    if service == "secretsmanager":
        return _secretsmanager(op, params, region, account)
    if service == "sqs":
        return _sqs(op, params)
    if service == "sns":
        return [Request(f"sns:{op}", params.get("TopicArn", "*"), {})]
    return [Request(f"{service}:{op}", "*", {})]
