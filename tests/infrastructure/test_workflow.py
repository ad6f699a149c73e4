"""The state machine in the template: the lead's definition file, verbatim, with every placeholder substituted,
and the properties issue 3 asks of it (Distributed Map over S3 manifests, Retry and Catch on Tasks)."""

from __future__ import annotations

import json

import pytest

from .helpers import resource

LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}

#: Tasks allowed without a Catch, and why. A new Task without Catch fails the test until it is listed here.
NO_CATCH = {
    "Plan run": "a bad input or spec must fail the execution here, with its message, before anything is written",
    "Record run start": "its condition failing (the run id exists) must fail the execution; nothing to record yet",
    "Record run resume": "its condition failing (no such run, or it is RUNNING) must fail the execution",
    "Record batch failure": "already the failure path of a batch; its next state is Fail",
    "Record run success": "terminal ledger write; its next state is Succeed",
    "Record run incomplete": "terminal ledger write; its next state is Fail",
    "Record run failure": "terminal ledger write; its next state is Fail",
}


def all_states(states: dict, path: str = "", parent: dict | None = None, with_parent: bool = False) -> list:
    """(path, state) of every state, nested ones included; with_parent adds the enclosing Map/Parallel state."""
    out = []
    for name, state in states.items():
        out.append((f"{path}{name}", state, parent) if with_parent else (f"{path}{name}", state))
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if processor:
            out += all_states(processor["States"], f"{path}{name}/", state, with_parent)
        for branch in state.get("Branches", []):
            out += all_states(branch["States"], f"{path}{name}/", state, with_parent)
    return out


@pytest.fixture(scope="module")
def machine(harvester_app):
    stack = harvester_app.stack
    return harvester_app.cfn["Resources"][stack.get_logical_id(stack.state_machine.node.default_child)]["Properties"]


@pytest.fixture(scope="module")
def states(harvester_app):
    return all_states(harvester_app.definition["States"])


def test_definition_is_the_file_verbatim_with_every_placeholder_substituted(harvester_app, machine):
    from harvester.definition import SUBSTITUTION_KEYS, placeholders

    assert machine["DefinitionString"] == harvester_app.stack.definition_path.read_text(encoding="utf-8")
    # every key of the contract, and every placeholder the file uses, gets a value
    assert set(machine["DefinitionSubstitutions"]) == set(SUBSTITUTION_KEYS) | placeholders(machine["DefinitionString"])
    assert "${" not in json.dumps(harvester_app.definition)


def test_substitutions_point_at_the_live_aliases_bucket_and_table(harvester_app, machine):
    subs = machine["DefinitionSubstitutions"]
    stack = harvester_app.stack
    for name in ("plan", "fetch", "advance"):
        alias_id = stack.get_logical_id(stack.aliases[name].node.default_child)
        assert subs[f"{name.capitalize()}FunctionArn"] == {"Ref": alias_id}, name
        alias = harvester_app.cfn["Resources"][alias_id]
        assert alias["Type"] == "AWS::Lambda::Alias" and alias["Properties"]["Name"] == "live"
        version_id = alias["Properties"]["FunctionVersion"]["Fn::GetAtt"][0]
        assert harvester_app.cfn["Resources"][version_id]["Type"] == "AWS::Lambda::Version"
    assert "DataBucket" in json.dumps(subs["BucketName"])
    assert "LedgerTable" in json.dumps(subs["LedgerTableName"])


def test_standard_with_error_logging_and_tracing(machine):
    """ALL with execution data logs every state of every Distributed Map child with its input and output (each
    batch's parents and results): CloudWatch Logs ingestion grows with the run. ERROR keeps every failure with its
    data; -c workflowLogLevel=ALL when debugging."""
    assert machine["StateMachineType"] == "STANDARD"
    assert machine["LoggingConfiguration"]["Level"] == "ERROR"
    assert machine["LoggingConfiguration"]["IncludeExecutionData"] is True
    assert machine["TracingConfiguration"] == {"Enabled": True}


def test_workflow_log_level_is_a_setting():
    from aws_cdk.assertions import Template

    from .helpers import make_app

    _, stack = make_app({"workflowLogLevel": "ALL"})
    machines = resource(Template.from_stack(stack).to_json(), "AWS::StepFunctions::StateMachine")
    assert machines and all(m["Properties"]["LoggingConfiguration"]["Level"] == "ALL" for _, m in machines)


def test_fans_out_with_a_distributed_map_over_an_s3_manifest(states):
    maps = [(n, s) for n, s in states if s["Type"] == "Map"]
    distributed = [(n, s) for n, s in maps if s.get("ItemProcessor", {}).get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED"]
    assert distributed, "no Distributed Map state"
    for name, state in distributed:
        reader = state["ItemReader"]
        assert reader["Resource"] == "arn:aws:states:::s3:getObject", name
        assert reader["Parameters"]["Bucket"] == "placeholder-BucketName", name
        assert "Key.$" in reader["Parameters"], f"{name}: the items key comes from the state (one per level or run)"
        assert "MaxConcurrencyPath" in state or "MaxConcurrency" in state, name
    # the Map over the vendor: concurrency from the spec, and one failed batch never stops the others
    harvest = [(n, s) for n, s in distributed if "FetchFunctionArn" in json.dumps(s["ItemProcessor"])]
    assert harvest, "no Distributed Map runs the fetch worker"
    for name, state in harvest:
        assert "MaxConcurrencyPath" in state, f"{name}: MaxConcurrency must come from the spec"
        assert state.get("ToleratedFailurePercentage") == 100 or "ToleratedFailurePercentagePath" in state, name
    assert not [n for n, s in maps if (n, s) not in distributed], "inline Map states do not scale past the history limit"


def test_every_task_retries_with_backoff_and_full_jitter(states):
    tasks = [(n, s) for n, s in states if s["Type"] == "Task"]
    assert tasks
    for name, state in tasks:
        assert state.get("Retry"), f"{name}: no Retry"
        for retrier in state["Retry"]:
            assert retrier.get("MaxAttempts", 3) >= 1
        if state["Resource"].startswith("arn:aws:states:::lambda:invoke"):
            covered = set().union(*(set(r["ErrorEquals"]) for r in state["Retry"]))
            assert LAMBDA_SERVICE_ERRORS <= covered, f"{name}: Lambda service errors not retried"
            service = [r for r in state["Retry"] if LAMBDA_SERVICE_ERRORS & set(r["ErrorEquals"])]
            for r in service:
                assert r.get("BackoffRate", 2) > 1 and r.get("JitterStrategy") == "FULL" and "MaxDelaySeconds" in r, name


def test_every_task_catches_or_is_listed_with_a_reason(harvester_app):
    """A Task inside a Map without its own Catch fails its child execution, which the enclosing Map's Catch
    handles (a Map with no tolerance fails as a whole); anything else needs a Catch or a reason in NO_CATCH."""
    nested = all_states(harvester_app.definition["States"], with_parent=True)
    missing = [n.rsplit("/", 1)[-1] for n, s, parent in nested
               if s["Type"] in ("Task", "Map") and not s.get("Catch") and not (parent and parent.get("Catch"))]
    unexplained = sorted(set(missing) - set(NO_CATCH))
    assert not unexplained, f"Tasks without Catch and without a reason in NO_CATCH: {unexplained}"


def test_the_worker_failure_is_caught_and_recorded(states):
    workers = [(n, s) for n, s in states if s["Type"] == "Task" and "FetchFunctionArn" in json.dumps(s)]
    assert workers
    for name, state in workers:
        assert any("States.ALL" in c["ErrorEquals"] for c in state["Catch"]), name


def test_lambda_tasks_call_only_the_stacks_functions(states):
    for name, state in states:
        if state["Type"] == "Task" and "lambda:invoke" in state["Resource"]:
            fn = state["Parameters"]["FunctionName"]
            assert fn.startswith("arn:aws:lambda:us-east-1:123456789012:function:"), f"{name}: {fn}"


def test_ledger_writes_go_to_the_stacks_table(states):
    for name, state in states:
        if state["Type"] == "Task" and ":::dynamodb:" in state["Resource"]:
            assert state["Parameters"]["TableName"] == "placeholder-LedgerTableName", name


def test_a_version_and_a_live_alias_of_each_state_machine(harvester_app):
    stack, cfn = harvester_app.stack, harvester_app.cfn
    machines = resource(cfn, "AWS::StepFunctions::StateMachine")
    assert len(machines) == len(stack.workflows)
    for workflow in stack.workflows.values():
        sm_id = stack.get_logical_id(workflow.machine.node.default_child)
        version_id, alias_id = workflow.version.logical_id, workflow.alias.logical_id
        version, alias = cfn["Resources"][stack.resolve(version_id)], cfn["Resources"][stack.resolve(alias_id)]
        assert version["Properties"]["StateMachineArn"] == {"Ref": sm_id}
        assert version["Properties"]["StateMachineRevisionId"] == {"Fn::GetAtt": [sm_id, "StateMachineRevisionId"]}
        assert version["DeletionPolicy"] == "Retain" and version["UpdateReplacePolicy"] == "Retain"  # to roll back to
        assert alias["Properties"]["Name"] == "live"
        assert alias["Properties"]["RoutingConfiguration"] == [
            {"StateMachineVersionArn": {"Fn::GetAtt": [stack.resolve(version_id), "Arn"]}, "Weight": 100}
        ]
    assert cfn["Outputs"]["StateMachineAliasArn"]["Value"] == {"Ref": stack.resolve(stack.workflows["harvest"].alias.logical_id)}


def test_every_workflow_is_its_file_with_substitutions_and_retries(harvester_app):
    from .helpers import render_definition

    stack, cfn = harvester_app.stack, harvester_app.cfn
    for key, workflow in stack.workflows.items():
        sm = cfn["Resources"][stack.get_logical_id(workflow.machine.node.default_child)]
        assert sm["Properties"]["DefinitionString"] == workflow.definition_path.read_text(encoding="utf-8"), key
        assert sm["Properties"]["StateMachineName"] == f"{stack.stack_name}-{key}"
        assert sm["Properties"]["LoggingConfiguration"]["Level"] == "ERROR" and sm["Properties"]["TracingConfiguration"]
        states = all_states(render_definition(sm)["States"])
        for name, state in states:
            if state["Type"] == "Task":
                assert state.get("Retry"), f"{key}: {name} has no Retry"
            if state["Type"] == "Map":
                assert state["ItemReader"]["Parameters"]["Bucket"] == "placeholder-BucketName", f"{key}: {name}"
