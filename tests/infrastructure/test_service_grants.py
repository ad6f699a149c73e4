"""Grants that only AWS services or the console use, decided as AWS decides them (the local engine's IAM evaluator
on the synthesized policies): the local engine never makes these calls.

- the alarm topic's resource policy lets CloudWatch alarms publish: a topic policy replaces SNS's default one, so
  without a statement for `cloudwatch.amazonaws.com` no alarm e-mail is ever sent;
- each state machine's role may redrive its Distributed Map runs (console "Redrive" of a failed Map Run)."""

from __future__ import annotations

import json

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


def distributed_map_labels(definition: dict) -> list[str]:
    labels = []
    for name, state in definition["States"].items():
        processor = state.get("ItemProcessor", {})
        if state["Type"] == "Map" and processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            labels.append(state.get("Label", name))
        if processor:
            labels += distributed_map_labels(processor)
    return labels


def test_each_state_machine_may_redrive_its_map_runs(model, harvester_app):
    """Redriving a Map Run redrives its parent execution; Step Functions then restarts the Map Run's failed child
    executions as the state machine's role, which needs states:RedriveExecution on
    arn:...:execution:{stateMachineName}/{mapRunLabel}:* ("Redriving Map Runs", IAM permission to redrive a Map
    Run, https://docs.aws.amazon.com/step-functions/latest/dg/redrive-map-run.html)."""
    for workflow in harvester_app.stack.workflows.values():
        role = [r for lid, r in harvester_app.cfn["Resources"].items()
                if lid == harvester_app.stack.get_logical_id(workflow.machine.node.default_child)][0]
        policies = model.roles[role["Properties"]["RoleArn"]["Fn::GetAtt"][0]]
        labels = distributed_map_labels(json.loads(workflow.definition_path.read_text()))
        assert labels, workflow.key
        for label in labels:
            child = f"arn:aws:states:us-east-1:{ACCOUNT}:execution:{workflow.name}/{label}:0f2c9e1a-child"
            assert decide(policies, "states:RedriveExecution", child) == ALLOWED, (workflow.key, label)
        other = f"arn:aws:states:us-east-1:{ACCOUNT}:execution:{workflow.name}x/{labels[0]}:0f2c9e1a-child"
        assert decide(policies, "states:RedriveExecution", other) != ALLOWED
