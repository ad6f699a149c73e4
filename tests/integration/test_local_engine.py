"""Each correction the local engine makes to moto's executor, shown to matter: without it a local run would
pass where AWS fails, or hang."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from harvester.local import moto_patches
from harvester.local.engine import ACCOUNT, BUCKET, rendered_definition

ROLE = f"arn:aws:iam::{ACCOUNT}:role/test"


def dist_map(child_states: dict, start: str, **extra) -> dict:
    return {
        "StartAt": "M",
        "States": {
            "M": {
                "Type": "Map",
                "ItemReader": {"Resource": "arn:aws:states:::s3:getObject", "ReaderConfig": {"InputType": "JSON"},
                               "Parameters": {"Bucket": BUCKET, "Key.$": "$.key"}},
                "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                                  "StartAt": start, "States": child_states},
                "ResultPath": None,
                "End": True,
                **extra,
            }
        },
    }


def run(engine, name: str, definition: dict | str, items: list, timeout: float = 60) -> dict:
    engine.s3.put_object(Bucket=BUCKET, Key=f"{name}.json", Body=json.dumps(items).encode())
    text = definition if isinstance(definition, str) else json.dumps(definition)
    arn = engine.sfn.create_state_machine(name=name, definition=text, roleArn=ROLE)["stateMachineArn"]
    ex = engine.sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps({"key": f"{name}.json"}))
    return engine.wait(ex["executionArn"], timeout=timeout)


FAIL_ODD = {
    "Odd?": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericGreaterThan": 6, "Next": "Boom"}], "Default": "Ok"},
    "Boom": {"Type": "Fail", "Error": "Child.Failed", "Cause": "n > 6"},
    "Ok": {"Type": "Succeed"},
}


def test_failed_children_fail_the_map_as_on_aws(engine):
    items = [{"n": i} for i in range(10)]  # 3 of 10 fail
    no_tolerance = run(engine, "tol0", dist_map(FAIL_ODD, "Odd?"), items)
    assert no_tolerance["status"] == "FAILED"
    assert no_tolerance["error"] == "States.ExceedToleratedFailureThreshold"
    within = run(engine, "tol50", dist_map(FAIL_ODD, "Odd?", ToleratedFailurePercentage=50.0), items)
    assert within["status"] == "SUCCEEDED"
    over = run(engine, "tol2", dist_map(FAIL_ODD, "Odd?", ToleratedFailureCount=2), items)
    assert over["status"] == "FAILED"


def test_large_level_does_not_hang(engine):
    items = [{"n": i} for i in range(1500)]  # > 985 items on one worker thread
    desc = run(engine, "big", dist_map({"P": {"Type": "Pass", "End": True}}, "P", MaxConcurrency=1), items, timeout=120)
    assert desc["status"] == "SUCCEEDED"
    runs = engine.sfn.list_map_runs(executionArn=desc["executionArn"])["mapRuns"]
    counts = engine.sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"])["itemCounts"]
    assert counts["succeeded"] == 1500


def test_integer_tolerance_is_rewritten(engine):
    text = json.dumps(dist_map({"P": {"Type": "Pass", "End": True}}, "P", ToleratedFailurePercentage=50))
    # what moto does with CDK's rendering of 50.0: its ASL parser refuses the definition
    with pytest.raises(ClientError, match="ASLParserException.*ToleratedFailurePercentage"):
        engine.sfn.create_state_machine(name="int-tol", definition=text, roleArn=ROLE)
    desc = run(engine, "int-tol-fixed", moto_patches.float_tolerances(text), [{"n": 1}])
    assert desc["status"] == "SUCCEEDED"


def test_rendered_definition_is_the_file_with_local_names():
    rendered = json.loads(rendered_definition())
    fetch = rendered["States"]["Harvest level"]["ItemProcessor"]["States"]["Fetch batch"]
    # the live alias ARN, as CDK substitutes it (alias.function_arn): the invoke grant is checked against it
    assert fetch["Parameters"]["FunctionName"].endswith(":function:harvester-fetch:live")
    assert "${" not in json.dumps(rendered)
