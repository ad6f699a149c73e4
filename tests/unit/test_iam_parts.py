"""The parts of the local engine's offline IAM: API call -> authorization requests, CloudFormation intrinsics ->
local names, the cache of the resolved policies."""

from __future__ import annotations

import pytest

from harvester.local.iam import policies
from harvester.local.iam.requests import Request, requests_for

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

R, A = "us-east-1", "123456789012"


@pytest.mark.parametrize(
    "service, op, params, expected",
    [
        ("s3", "GetObject", {"Bucket": "b", "Key": "runs/x"}, [Request("s3:GetObject", "arn:aws:s3:::b/runs/x", {})]),
        ("s3", "HeadObject", {"Bucket": "b", "Key": "k"}, [Request("s3:GetObject", "arn:aws:s3:::b/k", {})]),
        ("s3", "ListObjectsV2", {"Bucket": "b", "Prefix": "raw/", "Delimiter": "/"},
         [Request("s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "raw/", "s3:delimiter": "/"})]),
        ("s3", "DeleteObjects", {"Bucket": "b", "Delete": {"Objects": [{"Key": "a"}, {"Key": "c"}]}},
         [Request("s3:DeleteObject", "arn:aws:s3:::b/a", {}), Request("s3:DeleteObject", "arn:aws:s3:::b/c", {})]),
        ("s3", "CopyObject", {"Bucket": "b", "Key": "to", "CopySource": "b/from%20x"},
         [Request("s3:PutObject", "arn:aws:s3:::b/to", {}), Request("s3:GetObject", "arn:aws:s3:::b/from x", {})]),
        ("dynamodb", "Query", {"TableName": "t", "IndexName": "gsi1"},
         [Request("dynamodb:Query", f"arn:aws:dynamodb:{R}:{A}:table/t/index/gsi1", {})]),
        ("dynamodb", "TransactWriteItems", {"TransactItems": [{"Put": {"TableName": "t"}},
                                                              {"ConditionCheck": {"TableName": "u"}}]},
         [Request("dynamodb:PutItem", f"arn:aws:dynamodb:{R}:{A}:table/t", {}),
          Request("dynamodb:ConditionCheckItem", f"arn:aws:dynamodb:{R}:{A}:table/u", {})]),
        ("dynamodb", "BatchWriteItem", {"RequestItems": {"t": []}},
         [Request("dynamodb:BatchWriteItem", f"arn:aws:dynamodb:{R}:{A}:table/t", {})]),
        ("lambda", "Invoke", {"FunctionName": "f", "Qualifier": "live"},
         [Request("lambda:InvokeFunction", f"arn:aws:lambda:{R}:{A}:function:f:live", {})]),
        ("states", "StartExecution", {"stateMachineArn": f"arn:aws:states:{R}:{A}:stateMachine:m:live"},
         [Request("states:StartExecution", f"arn:aws:states:{R}:{A}:stateMachine:m",
                  {"states:StateMachineQualifier": ["live"]})]),
        ("states", "DescribeExecution", {"executionArn": f"arn:aws:states:{R}:{A}:execution:m:e"},
         [Request("states:DescribeExecution", f"arn:aws:states:{R}:{A}:execution:m:e", {})]),
        ("sqs", "SendMessage", {"QueueUrl": f"https://sqs.{R}.amazonaws.com/{A}/q"},
         [Request("sqs:SendMessage", f"arn:aws:sqs:{R}:{A}:q", {})]),
    ],
)
def test_an_api_call_is_the_authorization_requests_aws_makes(service, op, params, expected):
    assert requests_for(service, op, params, R, A) == expected


TEMPLATE = {"Resources": {
    "Bucket1": {"Type": "AWS::S3::Bucket", "Properties": {}},
    "Table1": {"Type": "AWS::DynamoDB::Table", "Properties": {}},
    "Fn1": {"Type": "AWS::Lambda::Function", "Properties": {"Role": {"Fn::GetAtt": ["Role1", "Arn"]}}},
    "Alias1": {"Type": "AWS::Lambda::Alias", "Properties": {"FunctionName": {"Ref": "Fn1"}, "Name": "live"}},
    "Role1": {"Type": "AWS::IAM::Role", "Properties": {}},
    "Policy1": {"Type": "AWS::IAM::Policy", "Properties": {"Roles": [{"Ref": "Role1"}], "PolicyDocument": {
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject",
             "Resource": {"Fn::Join": ["", [{"Fn::GetAtt": ["Bucket1", "Arn"]}, "/runs/*"]]}},
            {"Effect": "Allow", "Action": "lambda:InvokeFunction", "Resource": {"Ref": "Alias1"}},
            {"Effect": "Allow", "Action": "dynamodb:GetItem",
             "Resource": {"Fn::Sub": ["${T}/index/*", {"T": {"Fn::GetAtt": ["Table1", "Arn"]}}]}},
            {"Effect": "Allow", "Action": "states:StartExecution",
             "Resource": {"Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:m-${!x}"}},
            {"Effect": "Allow", "Action": "logs:PutLogEvents", "Resource": {"Fn::Select": [1, {"Fn::Split": [
                "-", {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}]}]}},
        ]}}},
}}  # fmt: skip


def test_intrinsics_resolve_to_the_local_names():
    names = {"REGION": R, "ACCOUNT": A, "BUCKET": "bkt", "TABLE": "tbl", "DATA_BUCKET_ID": "Bucket1"}
    model = policies.build_model(TEMPLATE, names, {"Fn1": "harvester-plan"})
    assert model.functions == {"plan": "Role1"}
    resources = [s["Resource"] for s in model.roles["Role1"][0]["Statement"]]
    assert resources == ["arn:aws:s3:::bkt/runs/*", f"arn:aws:lambda:{R}:{A}:function:harvester-plan:live",
                         f"arn:aws:dynamodb:{R}:{A}:table/tbl/index/*",
                         f"arn:aws:states:{R}:{A}:stateMachine:m-${{x}}", "0000"]  # fmt: skip


def test_the_cache_key_changes_with_the_inputs(tmp_path, monkeypatch):
    """A change to any input of the template (here a state machine definition) gives another cache file."""
    (tmp_path / "stacks").mkdir()
    (tmp_path / "statemachines").mkdir()
    (tmp_path / "statemachines" / "a.asl.json").write_text("{}")
    monkeypatch.setattr(policies, "ROOT", tmp_path)
    monkeypatch.setattr(policies, "INPUTS", ("statemachines", "cdk.json"))
    first = policies.inputs_hash()
    assert policies.inputs_hash() == first
    (tmp_path / "statemachines" / "a.asl.json").write_text('{"Comment": "changed"}')
    assert policies.inputs_hash() != first
