"""The Lambda functions: runtime, architecture, handlers, environment, limits."""

from __future__ import annotations

import ast

from .helpers import ROOT, resource


def handler_modules() -> dict[str, str]:
    """Every module in lambdas/ that defines a top-level `handler`: name -> "lambdas.<name>.handler" (read from
    the source, not from the catalog the stack is built from)."""
    found = {}
    for path in sorted((ROOT / "lambdas").glob("*.py")):
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) and n.name == "handler" for n in tree.body):
            found[path.stem] = f"lambdas.{path.stem}.handler"
    return found


HANDLERS = handler_modules()


def props_of(harvester_app, name):
    fn = harvester_app.stack.functions[name]
    return harvester_app.cfn["Resources"][harvester_app.stack.get_logical_id(fn.node.default_child)]["Properties"]


def test_every_handler_in_lambdas_is_a_function_with_its_handler(harvester_app):
    """Each handler module is deployed as its own function, and nothing else is (the five of today: plan, fetch,
    advance, convert, query)."""
    assert set(HANDLERS) == {"plan", "fetch", "advance", "convert", "query"}
    assert set(harvester_app.stack.functions) == set(HANDLERS)
    for name, handler in HANDLERS.items():
        props = props_of(harvester_app, name)
        assert props["Handler"] == handler
        assert props["Runtime"] == "python3.12"
        assert props["Architectures"] == ["arm64"]
        assert props["TracingConfig"] == {"Mode": "Active"}


def test_environment(harvester_app):
    for name in HANDLERS:
        env = props_of(harvester_app, name)["Environment"]["Variables"]
        assert env["HARVESTER_SOURCES_DIR"] == "/var/task/sources"
        assert "AWS::StackId" in str(env["HARVESTER_SECRET_PREFIX"])  # per stack and creation (test_sources)
        assert env["POWERTOOLS_SERVICE_NAME"] == "harvester"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "Harvester"
        assert env["POWERTOOLS_LOG_LEVEL"] == "INFO"
        assert "DataBucket" in str(env["HARVESTER_BUCKET"])
        assert "LedgerTable" in str(env["HARVESTER_TABLE"])


def test_limits(harvester_app):
    fetch = props_of(harvester_app, "fetch")
    assert fetch["Timeout"] == 900 and 512 <= fetch["MemorySize"] <= 1024
    for name in ("plan", "advance"):
        assert 120 <= props_of(harvester_app, name)["Timeout"] <= 300


def test_no_function_outside_the_known_ones(harvester_app):
    # CDK's own helper functions (e.g. auto-delete) would show up here; none is expected
    assert len(resource(harvester_app.cfn, "AWS::Lambda::Function")) == len(harvester_app.stack.functions)


def test_outputs(harvester_app):
    outputs = harvester_app.cfn["Outputs"]
    for key in ("StateMachineArn", "BucketName", "LedgerTableName", "ExampleExecutionInput"):
        assert key in outputs
    assert outputs["ExampleExecutionInput"]["Value"].startswith('{"source": ')


def test_lambda_versions_are_retained_for_rollback(harvester_app):
    """stacks/README.md documents rollback by pointing `live` back at an earlier version. CDK's `current_version`
    destroys the old AWS::Lambda::Version when a deploy publishes a new one (VersionOptions.removalPolicy defaults to
    DESTROY), which leaves nothing to point back at: every version must carry DeletionPolicy Retain."""
    versions = resource(harvester_app.cfn, "AWS::Lambda::Version")
    assert versions, "each function publishes a version for its live alias"
    for logical_id, version in versions:
        assert version.get("DeletionPolicy") == "Retain", logical_id
        assert version.get("UpdateReplacePolicy") == "Retain", logical_id
