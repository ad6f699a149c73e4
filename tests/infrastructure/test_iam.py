"""Least privilege: no `*` resource on data actions, each function's grants, the workflow's own grants."""

from __future__ import annotations

import json

from .helpers import resource

DATA_SERVICES = ("s3:", "dynamodb:", "secretsmanager:", "states:", "lambda:", "kms:", "sqs:", "sns:")


def _as_list(x):
    return x if isinstance(x, list) else [x]


def statements(cfn: dict) -> list[tuple[str, dict]]:
    out = []
    for logical_id, policy in resource(cfn, "AWS::IAM::Policy"):
        out += [(logical_id, s) for s in policy["Properties"]["PolicyDocument"]["Statement"]]
    for logical_id, role in resource(cfn, "AWS::IAM::Role"):
        for inline in role["Properties"].get("Policies", []):
            out += [(logical_id, s) for s in inline["PolicyDocument"]["Statement"]]
    return out


def policy_of(harvester_app, construct) -> list[dict]:
    role_id = harvester_app.stack.get_logical_id(construct.role.node.default_child)
    found = []
    for _, policy in resource(harvester_app.cfn, "AWS::IAM::Policy"):
        if {"Ref": role_id} in policy["Properties"]["Roles"]:
            found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def actions(stmts: list[dict]) -> set[str]:
    return {a for s in stmts if s["Effect"] == "Allow" for a in _as_list(s["Action"])}


def test_no_star_resource_on_data_actions(harvester_app):
    offenders = []
    for logical_id, s in statements(harvester_app.cfn):
        acts = _as_list(s.get("Action", []))
        if s["Effect"] == "Allow" and "*" in _as_list(s.get("Resource", [])):
            offenders += [(logical_id, a) for a in acts if a.startswith(DATA_SERVICES) or a == "*"]
    assert not offenders, offenders


def test_no_action_wildcards_and_deletes_only_where_declared(harvester_app):
    stack = harvester_app.stack
    deleters = {stack.get_logical_id(fn.role.node.find_child("DefaultPolicy").node.default_child): name
                for name, fn in stack.functions.items() if stack.function_access[name].s3_delete}
    for logical_id, s in statements(harvester_app.cfn):
        for a in _as_list(s.get("Action", [])):
            assert "*" not in a or a.startswith(("xray:", "logs:")), (logical_id, a)
            assert not a.startswith(("dynamodb:Delete", "s3:DeleteBucket")), (logical_id, a)
            if a.startswith("s3:Delete"):
                assert a == "s3:DeleteObject" and logical_id in deleters, (logical_id, a)
                allowed = [f"/{p}*" for p in stack.function_access[deleters[logical_id]].s3_delete]
                for r in _as_list(s["Resource"]):
                    assert any(json.dumps(r).endswith(f'{x}"]]}}') for x in allowed), (logical_id, r)
    for name in ("plan", "fetch", "advance"):
        assert not stack.function_access[name].s3_delete, name


def test_lake_function_grants(harvester_app):
    stack = harvester_app.stack
    if "convert" in stack.functions:
        convert = policy_of(harvester_app, stack.functions["convert"])
        deletes = json.dumps([s["Resource"] for s in convert if "s3:DeleteObject" in _as_list(s["Action"])])
        assert "/runs/*/staging/*" in deletes and "/processed/*" in deletes and "/raw/*" not in deletes
        assert not any(a.startswith("secretsmanager:") for a in actions(convert))
    if "query" in stack.functions:
        query = policy_of(harvester_app, stack.functions["query"])
        assert {a for a in actions(query) if a.startswith("dynamodb:")} <= {"dynamodb:GetItem", "dynamodb:Query",
                                                                             "dynamodb:BatchGetItem"}
        writes = json.dumps([s["Resource"] for s in query if "s3:PutObject" in _as_list(s["Action"])])
        assert "/results/*" in writes and "/raw/*" not in writes and "/processed/*" not in writes


def test_function_grants(harvester_app):
    fns = harvester_app.stack.functions
    plan, fetch, advance = (policy_of(harvester_app, fns[n]) for n in ("plan", "fetch", "advance"))
    assert not any(a.startswith("secretsmanager:") for a in actions(advance))
    for stmts in (plan, advance):
        writes = [s for s in stmts if "s3:PutObject" in _as_list(s["Action"])]
        assert "/runs/*" in json.dumps(writes) and "/raw/*" not in json.dumps(writes)
    fetch_writes = json.dumps([s for s in fetch if "s3:PutObject" in _as_list(s["Action"])])
    assert "/runs/*" in fetch_writes and "/raw/*" in fetch_writes
    fetch_reads = json.dumps([s for s in fetch if "s3:GetObject" in _as_list(s["Action"])])
    assert "/runs/*" in fetch_reads and "/raw/*" not in fetch_reads
    for stmts in (plan, fetch, advance):
        assert {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query"} <= actions(stmts)
        for s in stmts:
            if any(a.startswith("dynamodb:") for a in _as_list(s["Action"])):
                assert "LedgerTable" in json.dumps(s["Resource"])


def test_secrets_are_read_by_exactly_the_functions_whose_code_reads_them(harvester_app):
    """A function gets the secrets grant if and only if its bundle carries harvester/secrets.py (plan checks the
    credential before a run starts, fetch uses it), and then only for the source secrets."""
    from harvester.functions import FUNCTION_CATALOG
    from stacks.bundling import REQUIREMENTS_DIR, BundleSpec

    stack = harvester_app.stack
    for name, fn in stack.functions.items():
        f = FUNCTION_CATALOG[name]
        spec = BundleSpec(name, REQUIREMENTS_DIR / f.requirements, module=f.handler.rsplit(".", 1)[0])
        reads_secrets = "harvester/secrets.py" in [rel for _, rel in spec.files()]
        assert stack.function_access[name].secrets == reads_secrets, name
        stmts = [s for s in policy_of(harvester_app, fn) if any(a.startswith("secretsmanager:") for a in _as_list(s["Action"]))]
        if not reads_secrets or not stack.secrets:
            assert not stmts, name
            continue
        assert actions(stmts) == {"secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"}
        assert len(_as_list(stmts[0]["Resource"])) == len(stack.secrets)


def test_state_machine_grants_for_a_distributed_map(harvester_app):
    stack = harvester_app.stack
    stmts = policy_of(harvester_app, stack.state_machine)
    by_sid = {s.get("Sid"): s for s in stmts}
    invoke = by_sid["InvokeFunctions"]["Resource"]
    # only the live aliases of the functions the definition calls: neither $LATEST nor any other version
    machine = harvester_app.cfn["Resources"][stack.get_logical_id(stack.state_machine.node.default_child)]
    keys = machine["Properties"]["DefinitionSubstitutions"]
    called = [k[: -len("FunctionArn")].lower() for k in keys if k.endswith("FunctionArn")]
    assert sorted(invoke, key=json.dumps) == sorted(
        ({"Ref": stack.get_logical_id(stack.aliases[n].node.default_child)} for n in called), key=json.dumps)
    assert by_sid["ReadManifests"]["Action"] == "s3:GetObject"
    assert "/runs/*" in json.dumps(by_sid["ReadManifests"]["Resource"])
    name = stack.state_machine_name
    assert by_sid["StartChildExecutions"]["Action"] == "states:StartExecution"
    start = [json.dumps(r) for r in by_sid["StartChildExecutions"]["Resource"]]
    assert len(start) == 2
    assert start[0].endswith(f':stateMachine:{name}"]]}}') and start[1].endswith(f':stateMachine:{name}:*"]]}}')
    assert set(by_sid["ManageChildExecutions"]["Action"]) == {"states:DescribeExecution", "states:StopExecution"}
    assert f":execution:{name}:*" in json.dumps(by_sid["ManageChildExecutions"]["Resource"])
    assert set(by_sid["LedgerWrites"]["Action"]) == {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"}
