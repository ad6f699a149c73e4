"""The one function catalog (harvester/functions.py) against what reads it: the workflow definitions (a Task must
outlive its function), the synthesized functions, the local engine; and the DynamoDB error names the workflows
retry on, against the names Step Functions can emit."""

from __future__ import annotations

import json

import botocore.session
import pytest

from harvester import definition
from harvester.functions import FUNCTION_CATALOG, TASK_TIMEOUT_MARGIN_S, function_of_placeholder

from .test_workflow import all_states

DEFINITIONS = [definition.DEFINITION_PATH, definition.QUERY_DEFINITION_PATH]


def lambda_tasks(path):
    """(state path, state, catalog function name) of every Lambda Task of a definition file."""
    states = json.loads(path.read_text())["States"]
    out = []
    for name, state in all_states(states):
        if state.get("Type") == "Task" and state.get("Resource") == "arn:aws:states:::lambda:invoke":
            placeholder = state["Parameters"]["FunctionName"].strip("${}")
            out.append((f"{path.name}:{name}", state, function_of_placeholder(placeholder)))
    return out


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_every_lambda_task_outlives_its_function(path):
    """Lambda stops a handler at the function's timeout and reports `Sandbox.Timedout`; a Task whose TimeoutSeconds
    is at or below that timeout times out first (`States.Timeout`) while the invocation still runs, so the retry
    starts a second copy of a batch that is still writing. Each Task must exceed its function's timeout by
    TASK_TIMEOUT_MARGIN_S (invoke round trip, cold start)."""
    tasks = lambda_tasks(path)
    assert tasks
    short = {}
    for name, state, function in tasks:
        assert function in FUNCTION_CATALOG, name
        needed = FUNCTION_CATALOG[function].timeout_s + TASK_TIMEOUT_MARGIN_S
        if state.get("TimeoutSeconds", 60) < needed:  # 60 s: Step Functions' default for a Task
            short[name] = (state.get("TimeoutSeconds"), needed)
    assert not short, f"Task TimeoutSeconds below function timeout + {TASK_TIMEOUT_MARGIN_S} s: {short}"


def test_synthesized_functions_are_the_catalog(harvester_app):
    resources = harvester_app.cfn["Resources"]
    for name, fn in harvester_app.stack.functions.items():
        props = resources[harvester_app.stack.get_logical_id(fn.node.default_child)]["Properties"]
        entry = FUNCTION_CATALOG[name]
        assert props["Handler"] == entry.handler
        assert props["Timeout"] == entry.timeout_s, name
        assert props["MemorySize"] == entry.memory_mb, name
        assert props["EphemeralStorage"] == {"Size": entry.ephemeral_mb}, name


def test_local_engine_runs_the_catalog():
    from harvester.local import engine

    assert engine.FUNCTIONS == {name: (f.target, f.timeout_s) for name, f in FUNCTION_CATALOG.items()}


# --- DynamoDB error names ------------------------------------------------------------------------------------
#: The optimized DynamoDB integration reports a DynamoDB error as `DynamoDB.<the API's error code>`, and any other
#: as `DynamoDB.AmazonDynamoDBException` (https://docs.aws.amazon.com/step-functions/latest/dg/connect-ddb.html).
#: The codes are the operation's errors in the DynamoDB API reference
#: (https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_PutItem.html#API_PutItem_Errors), which
#: botocore's service model carries: e.g. `InternalServerError`, not `InternalServerErrorException`.
DYNAMODB_ACTIONS = {"putItem": "PutItem", "updateItem": "UpdateItem", "getItem": "GetItem", "deleteItem": "DeleteItem"}


def dynamodb_error_names(operation: str) -> set[str]:
    model = botocore.session.get_session().get_service_model("dynamodb").operation_model(operation)
    return {f"DynamoDB.{shape.name}" for shape in model.error_shapes} | {"DynamoDB.AmazonDynamoDBException"}


@pytest.mark.parametrize("path", DEFINITIONS, ids=lambda p: p.name)
def test_dynamodb_retries_name_errors_step_functions_emits(path):
    states = json.loads(path.read_text())["States"]
    wrong = {}
    for name, state in all_states(states):
        resource = state.get("Resource", "")
        if state.get("Type") != "Task" or not resource.startswith("arn:aws:states:::dynamodb:"):
            continue
        known = dynamodb_error_names(DYNAMODB_ACTIONS[resource.rsplit(":", 1)[-1]])
        for rule in state.get("Retry", []) + state.get("Catch", []):
            names = [e for e in rule["ErrorEquals"] if e.startswith("DynamoDB.")]
            wrong.update({f"{name}: {e}": sorted(known) for e in names if e not in known})
    assert not wrong, f"error names Step Functions never emits for these tasks: {sorted(wrong)}"


def test_dynamodb_retries_cover_the_server_side_errors():
    """The retryable server-side errors of the ledger writes are retried, by their real names."""
    states = json.loads(definition.DEFINITION_PATH.read_text())["States"]
    for name, state in all_states(states):
        if state.get("Type") == "Task" and state.get("Resource", "").startswith("arn:aws:states:::dynamodb:"):
            retried = {e for rule in state.get("Retry", []) for e in rule["ErrorEquals"]}
            assert {"DynamoDB.InternalServerError", "DynamoDB.ProvisionedThroughputExceededException",
                    "DynamoDB.ThrottlingException", "DynamoDB.RequestLimitExceeded"} <= retried, name


# --- Distributed Map results -----------------------------------------------------------------------------------
def test_every_distributed_map_writes_its_results_where_the_role_may_write(harvester_app):
    """Without a ResultWriter a failed child comes back inline with its whole input and a few failed batches pass
    the 256 KiB state limit (D5; tests/integration/test_limits.py shows it on the local engine)."""
    stack = harvester_app.stack
    for workflow in stack.workflows.values():
        states = json.loads(workflow.definition_path.read_text())["States"]
        maps = [(n, s) for n, s in all_states(states) if s.get("Type") == "Map"
                and s["ItemProcessor"]["ProcessorConfig"].get("Mode") == "DISTRIBUTED"]
        assert maps
        for name, state in maps:
            writer = state.get("ResultWriter")
            assert writer and writer["Resource"] == "arn:aws:states:::s3:putObject", name
            assert writer["Parameters"]["Bucket"] == "${BucketName}", name
            prefix = writer["Parameters"]["Prefix.$"]
            assert prefix.startswith(f"States.Format('{workflow.reader_prefix}") and "/map-results'" in prefix, name
        role = harvester_app.cfn["Resources"][stack.get_logical_id(
            workflow.machine.role.node.find_child("DefaultPolicy").node.default_child)]["Properties"]["PolicyDocument"]
        grant = next(s for s in role["Statement"] if s.get("Sid") == "WriteMapResults")
        assert set(grant["Action"]) == {"s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts",
                                        "s3:AbortMultipartUpload"}
        assert f"/{workflow.reader_prefix}*/map-results/*" in json.dumps(grant["Resource"])
