"""One EventBridge Scheduler schedule per scheduled source, starting the workflow's live alias."""

from __future__ import annotations

import json

import pytest

from .helpers import SPEC, make_app, resource


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    from aws_cdk.assertions import Template

    folder = tmp_path_factory.mktemp("scheduled")
    (folder / "daily.yaml").write_text(SPEC.format(name="daily", extra="schedule: {cron: '0 3 * * ? *', timezone: Europe/Paris}"))
    paused = "schedule: {cron: 'cron(30 1 ? * MON *)', enabled: false}"
    (folder / "paused.yaml").write_text(SPEC.format(name="paused", extra=paused))
    (folder / "manual.yaml").write_text(SPEC.format(name="manual", extra=""))
    _, stack = make_app({"stackName": "HarvesterScheduled"}, sources_dir=folder)
    return stack, Template.from_stack(stack).to_json()


def test_one_schedule_per_scheduled_source(scheduled):
    stack, cfn = scheduled
    schedules = {json.loads(s["Properties"]["Target"]["Input"])["source"]: s["Properties"]
                 for _, s in resource(cfn, "AWS::Scheduler::Schedule")}
    assert sorted(schedules) == ["daily", "paused"]
    assert schedules["daily"]["ScheduleExpression"] == "cron(0 3 * * ? *)"
    assert schedules["daily"]["ScheduleExpressionTimezone"] == "Europe/Paris"
    assert schedules["daily"]["State"] == "ENABLED"
    assert schedules["paused"]["ScheduleExpression"] == "cron(30 1 ? * MON *)"
    assert schedules["paused"]["ScheduleExpressionTimezone"] == "UTC"
    assert schedules["paused"]["State"] == "DISABLED"


def test_schedules_start_the_live_alias_with_a_dead_letter_queue(scheduled):
    stack, cfn = scheduled
    alias_id = stack.resolve(stack.state_machine_alias.logical_id)
    [(queue_id, queue)] = resource(cfn, "AWS::SQS::Queue")
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    for _, schedule in resource(cfn, "AWS::Scheduler::Schedule"):
        props = schedule["Properties"]
        assert props["FlexibleTimeWindow"] == {"Mode": "OFF"}
        assert props["Target"]["Arn"] == {"Ref": alias_id}
        assert props["Target"]["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": [queue_id, "Arn"]}}
    role_id = stack.get_logical_id(stack.schedules.role.node.default_child)
    [policy] = [p for _, p in resource(cfn, "AWS::IAM::Policy") if {"Ref": role_id} in p["Properties"]["Roles"]]
    [start] = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Action"] == "states:StartExecution"]
    # authorized on the state machine's own ARN, kept to the live alias (not on the alias ARN: never matches)
    machine_id = stack.get_logical_id(stack.state_machine.node.default_child)
    assert start["Resource"] == {"Ref": machine_id}
    assert start["Condition"] == {"ForAnyValue:StringEquals": {"states:StateMachineQualifier": ["live"]}}


def test_the_repo_sources_get_their_schedules(harvester_app):
    expected = sorted(s.name for s in harvester_app.stack.sources if s.schedule)
    got = sorted(json.loads(s["Properties"]["Target"]["Input"])["source"]
                 for _, s in resource(harvester_app.cfn, "AWS::Scheduler::Schedule"))
    assert got == expected


def test_schedules_can_be_switched_off(tmp_path):
    from aws_cdk.assertions import Template

    (tmp_path / "daily.yaml").write_text(SPEC.format(name="daily", extra="schedule: {cron: '0 3 * * ? *'}"))
    _, stack = make_app({"schedules": "false", "stackName": "HarvesterNoSchedules"}, sources_dir=tmp_path)
    cfn = Template.from_stack(stack).to_json()
    assert not resource(cfn, "AWS::Scheduler::Schedule") and not resource(cfn, "AWS::SQS::Queue")


@pytest.mark.parametrize(
    "block, message",
    [
        ("schedule: {cron: '0 3 * * *'}", "six fields"),
        ("schedule: {cron: '0 3 * * 1 *'}", "must be '\\?'"),
        ("schedule: {cron: '0 3 * * ? *', timezone: Mars/Olympus}", "unknown time zone"),
    ],
)
def test_a_bad_schedule_fails_the_synth_naming_the_field(tmp_path, block, message):
    """The schedule is checked by the one spec parser: `cdk synth` and `harvest run` refuse it alike."""
    from harvester.spec import SpecError
    from stacks.sources import discover

    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.format(name="bad", extra=block))
    with pytest.raises(SpecError, match=message) as err:
        discover(tmp_path)
    assert "bad.yaml: schedule." in str(err.value)


def test_a_machine_without_a_zone_database_does_not_refuse_the_deployed_spec(tmp_path, monkeypatch):
    """The plan function parses the spec too: on a runtime without the IANA database every zone would be
    'unknown', so there the zone `cdk synth` checked is not checked again; with a database a bad zone is refused."""
    import zoneinfo

    from harvester import spec as spec_module
    from harvester.spec import SpecError, load_spec

    path = tmp_path / "daily.yaml"
    path.write_text(SPEC.format(name="daily", extra="schedule: {cron: '0 3 * * ? *', timezone: Europe/Paris}"))

    def no_database(key):
        raise zoneinfo.ZoneInfoNotFoundError(f"No time zone found with key {key}")

    monkeypatch.setattr(spec_module, "ZoneInfo", no_database)
    monkeypatch.setattr(spec_module, "available_timezones", set)
    assert load_spec(path).schedule.timezone == "Europe/Paris"
    monkeypatch.setattr(spec_module, "available_timezones", lambda: {"UTC"})
    with pytest.raises(SpecError, match="schedule.timezone: unknown time zone"):
        load_spec(path)
