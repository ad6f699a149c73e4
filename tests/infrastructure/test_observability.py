"""The dashboard and each alarm, all sent to the encrypted SNS topic."""

from __future__ import annotations

import json

from .helpers import make_app, resource


def alarms_by_name(harvester_app) -> dict[str, dict]:
    obs = harvester_app.stack.observability
    return {name: harvester_app.cfn["Resources"][harvester_app.stack.get_logical_id(a.node.default_child)]["Properties"]
            for name, a in obs.alarms.items()}


def test_every_alarm_notifies_the_topic(harvester_app):
    [(topic_id, topic)] = resource(harvester_app.cfn, "AWS::SNS::Topic")
    assert "KmsMasterKeyId" in topic["Properties"]
    [(_, key)] = resource(harvester_app.cfn, "AWS::KMS::Key")
    assert key["Properties"]["EnableKeyRotation"] is True
    assert "cloudwatch.amazonaws.com" in json.dumps(key["Properties"]["KeyPolicy"])
    alarms = resource(harvester_app.cfn, "AWS::CloudWatch::Alarm")
    assert alarms
    for logical_id, alarm in alarms:
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": topic_id}], logical_id
        assert alarm["Properties"]["TreatMissingData"] == "notBreaching"


def test_the_alarms_issue_6_asks_for(harvester_app):
    alarms = alarms_by_name(harvester_app)
    scheduled = [s.name for s in harvester_app.stack.sources if s.schedule]
    with_levels = [s.name for s in harvester_app.stack.sources if s.levels]
    expected = {"ExecutionFailed", "RunTooLong", *(f"Throttled-{n}" for n in with_levels)}
    if scheduled:
        expected.add("ScheduledStartFailed")
    assert set(alarms) == expected

    failed = json.dumps(alarms["ExecutionFailed"]["Metrics"])
    for name in ("ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"):
        assert name in failed
    assert "HarvestStateMachineLiveAlias" in failed  # runs started through the alias count too

    too_long = alarms["RunTooLong"]
    assert too_long["Threshold"] == 180 and "ExecutionTime" in json.dumps(too_long["Metrics"])

    for name in with_levels:
        throttled = alarms[f"Throttled-{name}"]
        assert throttled["EvaluationPeriods"] == 3 and throttled["DatapointsToAlarm"] == 3  # sustained
        # one metric per source, whatever its levels (the fetch handler publishes no `level` dimension: each level
        # would be a custom metric of its own, billed per hour)
        [only] = throttled["Metrics"]
        metric = only["MetricStat"]["Metric"]
        assert (metric["Namespace"], metric["MetricName"], only["MetricStat"]["Stat"]) == ("Harvester", "Throttled", "Sum")
        assert {d["Name"]: d["Value"] for d in metric["Dimensions"]} == {"service": "harvester", "source": name}

    if scheduled:
        dlq = alarms["ScheduledStartFailed"]
        assert dlq["Namespace"] == "AWS/SQS" and dlq["MetricName"] == "ApproximateNumberOfMessagesVisible"


def test_dashboard_widgets(harvester_app):
    [(_, dashboard)] = resource(harvester_app.cfn, "AWS::CloudWatch::Dashboard")
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    assert "level" not in body  # the searches name the metrics' real dimensions: service, source
    for text in ("ExecutionsStarted", "calls per second against the limit", "vendor limit", "Throttled", "CallLatency",
                 "p99", "Lambda errors and throttles", "Errors", "Throttles", "WriteThrottleEvents", "alarm"):
        assert text in body, text


def test_alarm_email_subscription_from_context(harvester_app):
    assert not resource(harvester_app.cfn, "AWS::SNS::Subscription")
    from aws_cdk.assertions import Template

    _, stack = make_app({"alarmEmail": "ops@example.com", "expectedRunMinutes": "60", "stackName": "HarvesterOps"})
    cfn = Template.from_stack(stack).to_json()
    [(_, sub)] = resource(cfn, "AWS::SNS::Subscription")
    topic = stack.get_logical_id(stack.observability.topic.node.default_child)
    assert sub["Properties"] == {"Endpoint": "ops@example.com", "Protocol": "email", "TopicArn": {"Ref": topic}}
    [too_long] = [a for _, a in resource(cfn, "AWS::CloudWatch::Alarm") if "took longer" in a["Properties"]["AlarmDescription"]]
    assert too_long["Properties"]["Threshold"] == 60
