"""The lake in the template: the query state machine (plan -> Distributed Map over the tasks in S3 -> reduce), its
grants, the query function's index look-up, and the convert stage of the harvest workflow."""

from __future__ import annotations

import json

import pytest

from .helpers import render_definition
from .test_iam import _as_list, actions, policy_of
from .test_workflow import all_states

pytestmark = pytest.mark.infrastructure


@pytest.fixture(scope="module")
def query_machine(harvester_app):
    stack = harvester_app.stack
    assert "query" in stack.workflows, "statemachines/query.asl.json is deployed as a second state machine"
    workflow = stack.workflows["query"]
    return workflow, harvester_app.cfn["Resources"][stack.get_logical_id(workflow.machine.node.default_child)]


def test_query_workflow_plans_fans_out_over_s3_tasks_and_reduces(harvester_app, query_machine):
    stack = harvester_app.stack
    _, sm = query_machine
    props = sm["Properties"]
    assert props["StateMachineName"] == f"{stack.stack_name}-query" and props["StateMachineType"] == "STANDARD"
    query_alias = {"Ref": stack.get_logical_id(stack.aliases["query"].node.default_child)}
    assert props["DefinitionSubstitutions"]["QueryFunctionArn"] == query_alias
    definition = render_definition(sm)
    states = definition["States"]
    assert definition["StartAt"] == "Plan query"
    plan = states["Plan query"]
    assert plan["Parameters"]["Payload"]["step"] == "plan" and plan["Parameters"]["Payload"]["query.$"] == "$"
    assert "Catch" not in plan  # a bad query fails the execution right here, with QueryError and its message
    assert plan["Next"] == "Aggregate files"

    fan = states["Aggregate files"]
    assert fan["Type"] == "Map" and fan["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert fan["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert fan["ItemReader"]["Parameters"] == {"Bucket": "placeholder-BucketName", "Key.$": "$.tasks_key"}
    assert fan["MaxConcurrencyPath"] == "$.max_concurrency"
    assert fan["ResultPath"] is None  # partials go to S3, never through the Map's output
    assert fan["ItemSelector"]["step"] == "partial"
    child = fan["ItemProcessor"]["States"][fan["ItemProcessor"]["StartAt"]]
    assert child["Parameters"]["FunctionName"].endswith(":function:QueryFunctionArn")
    assert set(child["ResultSelector"]) == {"task.$"}  # one small value per task
    assert fan["Next"] == "Reduce and write result"
    reduce = states["Reduce and write result"]
    assert reduce["Parameters"]["Payload"]["step"] == "reduce" and reduce["Next"] == "Query done"
    for name, state in states.items():  # a worker's failure fails the Map, whose Catch ends the query
        if state["Type"] in ("Task", "Map") and name != "Plan query":
            assert state.get("Catch"), name
    for name, state in all_states(states):
        if state["Type"] == "Task":
            assert any("Lambda.TooManyRequestsException" in r["ErrorEquals"] for r in state["Retry"]), name


def test_query_state_machine_grants(harvester_app, query_machine):
    stack = harvester_app.stack
    workflow, _ = query_machine
    stmts = policy_of(harvester_app, workflow.machine)
    by_sid = {s.get("Sid"): s for s in stmts}
    query_alias = {"Ref": stack.get_logical_id(stack.aliases["query"].node.default_child)}
    assert _as_list(by_sid["InvokeFunctions"]["Resource"]) == [query_alias]  # the query function only
    readers = [s for s in stmts if "s3:GetObject" in _as_list(s["Action"])]
    assert readers and all("/queries/*" in json.dumps(s["Resource"]) for s in readers)
    assert not any(a.startswith("dynamodb:") for a in actions(stmts))  # the index is read by the function
    starts = json.dumps([s["Resource"] for s in stmts if "states:StartExecution" in _as_list(s["Action"])])
    assert f":stateMachine:{workflow.name}" in starts and stack.state_machine_name not in starts


def test_query_function_looks_up_the_index_in_the_ledger_table_read_only(harvester_app):
    stack = harvester_app.stack
    stmts = policy_of(harvester_app, stack.functions["query"])
    table_id = stack.get_logical_id(stack.table.node.default_child)
    lookups = [s for s in stmts if "dynamodb:Query" in _as_list(s["Action"])]
    assert lookups and any({"Fn::GetAtt": [table_id, "Arn"]} in _as_list(s["Resource"]) for s in lookups)
    assert not {a for a in actions(stmts) if a.startswith("dynamodb:")} - {"dynamodb:GetItem", "dynamodb:Query",
                                                                          "dynamodb:BatchGetItem"}
    reads = json.dumps([s["Resource"] for s in stmts if "s3:GetObject" in _as_list(s["Action"])])
    assert "/processed/*" in reads and "/raw/*" not in reads
    fn = harvester_app.cfn["Resources"][stack.get_logical_id(stack.functions["query"].node.default_child)]
    assert fn["Properties"]["Handler"] == "lambdas.query.handler"
    assert fn["Properties"]["Environment"]["Variables"]["HARVESTER_TABLE"] == {"Ref": table_id}


def test_harvest_workflow_converts_at_the_end_with_the_convert_function(harvester_app):
    stack = harvester_app.stack
    states = harvester_app.definition["States"]
    machine = harvester_app.cfn["Resources"][stack.get_logical_id(stack.state_machine.node.default_child)]
    convert_alias = {"Ref": stack.get_logical_id(stack.aliases["convert"].node.default_child)}
    assert machine["Properties"]["DefinitionSubstitutions"]["ConvertFunctionArn"] == convert_alias
    # after the last level, whatever happened to the batches: convert, compact, count, then success or incomplete
    assert states["More levels?"]["Default"] == "Plan conversion"
    chain, name = [], "Plan conversion"
    while name in states and states[name]["Type"] != "Choice":
        chain.append(name)
        name = states[name]["Next"]
    assert chain == ["Plan conversion", "Convert raw", "Plan compaction", "Compact partitions", "Record lake counts"]
    assert {c["Next"] for c in states[name]["Choices"]} | {states[name]["Default"]} == {
        "Record run incomplete", "Record run success"}
    for name, key in (("Convert raw", "$.lake.plan_key"), ("Compact partitions", "$.compaction.plan_key")):
        fan = states[name]
        assert fan["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
        assert fan["ItemReader"]["Parameters"] == {"Bucket": "placeholder-BucketName", "Key.$": key}
        assert fan["Catch"][0]["Next"] == "Record run failure" and fan["ResultPath"] is None
    convert = policy_of(harvester_app, stack.functions["convert"])
    # index items are written with BatchWriteItem, the lake counts onto the run item with UpdateItem
    assert {"dynamodb:BatchWriteItem", "dynamodb:UpdateItem", "dynamodb:Query"} <= actions(convert)
    reads = json.dumps([s["Resource"] for s in convert if "s3:GetObject" in _as_list(s["Action"])])
    assert "/raw/*" in reads
    fn = harvester_app.cfn["Resources"][stack.get_logical_id(stack.functions["convert"].node.default_child)]
    assert fn["Properties"]["Handler"] == "lambdas.convert.handler" and fn["Properties"]["Timeout"] == 900
