"""The alarm topic's resource policy lets CloudWatch alarms publish, as AWS evaluates it (the local engine's IAM
evaluator on the synthesized policy): a topic policy replaces the default one, so without a statement for
`cloudwatch.amazonaws.com` no alarm e-mail is ever sent."""

from __future__ import annotations

import pytest

from harvester.local.iam.evaluate import ALLOWED, decide
from harvester.local.iam.policies import build_model

ACCOUNT = "123456789012"
CLOUDWATCH = {"Service": "cloudwatch.amazonaws.com"}


@pytest.fixture(scope="module")
def model(harvester_app):
    stack = harvester_app.stack
    functions = {stack.get_logical_id(fn.node.default_child): f"harvester-{n}" for n, fn in stack.functions.items()}
    names = {"REGION": "us-east-1", "ACCOUNT": ACCOUNT, "BUCKET": "b", "TABLE": "t",
             "DATA_BUCKET_ID": stack.get_logical_id(stack.bucket.node.default_child)}
    return build_model(harvester_app.cfn, names, functions)


def publish(model, principal, alarm, *, account=ACCOUNT, tls=True):
    """sns:Publish as CloudWatch sends it for an alarm: aws:SourceArn is the alarm, aws:SourceAccount its account."""
    context = {"aws:SourceArn": alarm, "aws:SourceAccount": account, "aws:SecureTransport": str(tls).lower()}
    return decide(model.resource_policies[model.alarm_topic], "sns:Publish", model.alarm_topic, context, principal)


def test_cloudwatch_alarms_of_this_account_may_publish(model):
    assert model.alarms
    for alarm in model.alarms:
        assert publish(model, CLOUDWATCH, alarm) == ALLOWED, alarm


def test_nobody_else_and_no_other_account_may_publish(model):
    alarm = model.alarms[0]
    assert publish(model, {"Service": "events.amazonaws.com"}, alarm) != ALLOWED
    assert publish(model, CLOUDWATCH, alarm.replace(ACCOUNT, "999999999999"), account="999999999999") != ALLOWED
    assert publish(model, CLOUDWATCH, alarm, tls=False) != ALLOWED
