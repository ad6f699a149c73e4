"""Logical ids of the stateful resources never change: a new one replaces the resource on deploy.

CloudFormation creates a resource whose logical id is new and deletes (or, retained, orphans) the old one: an
empty bucket, table or secret while the data stays in the old one, and a deploy that fails with "already
exists" for anything with a fixed name (state machines, log groups, the dashboard, secrets). The stack groups
its resources in constructs (`stacks/logical_ids.py`: `Group`s are left out of logical ids); these ids are
the ones deployed stacks have had since the stack was one class.
"""

from __future__ import annotations

import pytest

from .helpers import SPEC, make_app

#: logical id -> resource type, in the default configuration (the repo's sources/: one source, demo)
PINNED = {
    "DataBucketE3889A50": "AWS::S3::Bucket",
    "AccessLogsBucket83982689": "AWS::S3::Bucket",
    "LedgerTable38A58B60": "AWS::DynamoDB::Table",
    "Secretdemo72193783": "AWS::SecretsManager::Secret",
    "ObservabilityAlarmTopicKey48516DE9": "AWS::KMS::Key",
    "SchedulesDeadLetterQueue84E31400": "AWS::SQS::Queue",
    "PlanFunctionLogsCB2CD115": "AWS::Logs::LogGroup",
    "FetchFunctionLogs3140F377": "AWS::Logs::LogGroup",
    "AdvanceFunctionLogs1F0F7AFA": "AWS::Logs::LogGroup",
    "ConvertFunctionLogs7AD7E112": "AWS::Logs::LogGroup",
    "QueryFunctionLogs6912F051": "AWS::Logs::LogGroup",
    "StateMachineLogs3CB16D3C": "AWS::Logs::LogGroup",
    "QueryStateMachineLogs70EE99C5": "AWS::Logs::LogGroup",
    "HarvestStateMachineB137AF33": "AWS::StepFunctions::StateMachine",
    "QueryStateMachine2B7A0E21": "AWS::StepFunctions::StateMachine",
    "ObservabilityDashboard9A1D08B3": "AWS::CloudWatch::Dashboard",
}
#: retained, but a new one per deploy by design (their ids carry a hash of the code or definition)
VERSIONED = ("AWS::Lambda::Version", "AWS::StepFunctions::StateMachineVersion")


def test_stateful_resources_keep_their_logical_ids(harvester_app):
    resources = harvester_app.cfn["Resources"]
    assert {k: resources[k]["Type"] for k in PINNED if k in resources} == PINNED
    stack = harvester_app.stack
    assert stack.get_logical_id(stack.bucket.node.default_child) == "DataBucketE3889A50"
    assert stack.get_logical_id(stack.table.node.default_child) == "LedgerTable38A58B60"
    assert stack.get_logical_id(stack.secrets["demo"].node.default_child) == "Secretdemo72193783"


def test_every_retained_resource_is_pinned(harvester_app):
    """A new retained resource (data, or a fixed name) gets its logical id pinned above when it is added."""
    retained = {k for k, r in harvester_app.cfn["Resources"].items()
                if r.get("DeletionPolicy") == "Retain" and r["Type"] not in VERSIONED}
    assert retained - set(PINNED) == set()


def test_a_source_secret_keeps_the_logical_id_of_its_name(tmp_path):
    (tmp_path / "alpha.yaml").write_text(SPEC.format(name="alpha", extra="auth: {env: ALPHA_KEY}"))
    _, stack = make_app({"stackName": "HarvesterIds"}, sources_dir=tmp_path)
    assert stack.get_logical_id(stack.secrets["alpha"].node.default_child) == "SecretalphaAA093BEA"


def test_groups_are_left_out_of_logical_ids_and_nothing_else_is(harvester_app):
    """Our copy of CDK's unique-id rule gives CDK's own answer for every element's full path, and the stack's
    ids are that rule applied to the path without the groups."""
    import aws_cdk as cdk

    from stacks.logical_ids import Group, unique_id

    stack = harvester_app.stack
    elements = [c for c in stack.node.find_all() if isinstance(c, cdk.CfnElement)]
    assert len(elements) > 50
    grouped, ids = 0, []
    for element in elements:
        scopes = element.node.scopes
        assert unique_id([s.node.id for s in scopes[1:]]) == cdk.Names.unique_id(element)
        below = scopes[scopes.index(stack) + 1 :]
        grouped += any(isinstance(s, Group) for s in below)
        expected = unique_id([s.node.id for s in below if not isinstance(s, Group)])
        got = stack.resolve(element.logical_id)
        ids.append(got)
        if element.node.path.endswith("/CurrentVersion/Resource"):
            # a Lambda version appends a hash of its function's code and configuration to the id it is given
            assert got.startswith(expected) and len(got) == len(expected) + 32, element.node.path
        else:
            assert got == expected, element.node.path
    assert grouped > 20  # storage, secrets, functions and workflows are grouped
    # one element, one id: each is in the template (nothing overwritten by a namesake)
    sections = ("Resources", "Outputs", "Parameters", "Rules", "Conditions", "Mappings")
    in_template = [k for section in sections for k in harvester_app.cfn.get(section, {})]
    assert sorted(ids) == sorted(in_template)


def test_two_resources_with_one_logical_id_fail_the_synth():
    import aws_cdk as cdk
    from aws_cdk import aws_sqs as sqs

    from stacks.logical_ids import Group, LogicalIds

    class Stack(cdk.Stack):
        def __init__(self, scope, cid):
            super().__init__(scope, cid)
            self.ids = LogicalIds(self)

        def _allocate_logical_id(self, element):
            return self.ids.allocate(element)

    stack = Stack(cdk.App(), "S")
    sqs.Queue(Group(stack, "A"), "Queue")
    sqs.Queue(Group(stack, "B"), "Queue")
    with pytest.raises(RuntimeError, match="would both have the logical id Queue4A7E3555"):  # through jsii
        cdk.App.of(stack).synth()
