"""Every spec in sources/ is a deployed source with its own secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import ROOT, SPEC, make_app, resource


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    from aws_cdk.assertions import Template

    folder = tmp_path_factory.mktemp("sources")
    (folder / "alpha.yaml").write_text(SPEC.format(name="alpha", extra="auth: {env: ALPHA_KEY}"))
    (folder / "beta.yml").write_text(SPEC.format(name="beta", extra="auth: {env: BETA_KEY, secret: shared/beta-key}"))
    (folder / "gamma.yaml").write_text(SPEC.format(name="gamma", extra=""))
    _, stack = make_app({"stackName": "HarvesterSources"}, sources_dir=folder)
    return stack, Template.from_stack(stack).to_json()


def test_one_secret_per_source_in_the_repo(harvester_app):
    specs = [*(ROOT / "sources").glob("*.yaml"), *(ROOT / "sources").glob("*.yml")]
    assert len(harvester_app.stack.sources) == len(specs)
    created = [s for s in harvester_app.stack.sources if s.default_secret]
    secrets = resource(harvester_app.cfn, "AWS::SecretsManager::Secret")
    assert sorted(secret_name(s) for _, s in secrets) == sorted(f"Harvester-<stack id>/{s.name}" for s in created)


def secret_name(secret: dict) -> str:
    """The Name of a secret the stack creates, with the stack-id part of its Fn::Join shown as <stack id>."""
    name = secret["Properties"]["Name"]
    if isinstance(name, str):
        return name
    parts = name["Fn::Join"][1]
    return "".join(p if isinstance(p, str) else "<stack id>" if "AWS::StackId" in json.dumps(p) else "?" for p in parts)


def test_secret_names_differ_per_stack_and_per_creation():
    """A secret's name is unique in its account and region, and the stack keeps its secrets when deleted (retain):
    a fixed name such as `harvester/demo` makes a second stack in the same account, or the same stack created again
    after a delete, fail with "already exists". The name carries the stack's name and the id of this creation of it,
    and the functions find it through HARVESTER_SECRET_PREFIX."""
    from aws_cdk.assertions import Template

    names = {}
    for stack_name in ("HarvesterA", "HarvesterB"):
        _, stack = make_app({"stackName": stack_name})
        cfn = Template.from_stack(stack).to_json()
        secrets = resource(cfn, "AWS::SecretsManager::Secret")
        names[stack_name] = sorted(secret_name(s) for _, s in secrets)
        assert all("<stack id>" in n for n in names[stack_name]), names[stack_name]
        env = next(iter(resource(cfn, "AWS::Lambda::Function")))[1]["Properties"]["Environment"]["Variables"]
        prefix = env["HARVESTER_SECRET_PREFIX"]
        assert "AWS::StackId" in json.dumps(prefix) and stack_name in json.dumps(prefix)
    assert not set(names["HarvesterA"]) & set(names["HarvesterB"])


def test_one_secret_per_source(two_sources):
    stack, cfn = two_sources
    assert [s.name for s in stack.sources] == ["alpha", "beta", "gamma"]
    names = sorted(secret_name(s) for _, s in resource(cfn, "AWS::SecretsManager::Secret"))
    # beta names an existing secret: referenced, not created
    assert names == ["HarvesterSources-<stack id>/alpha", "HarvesterSources-<stack id>/gamma"]
    fetch_role = stack.get_logical_id(stack.functions["fetch"].role.node.default_child)
    [policy] = [p for _, p in resource(cfn, "AWS::IAM::Policy") if {"Ref": fetch_role} in p["Properties"]["Roles"]]
    [stmt] = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s.get("Sid") == "SourceSecrets"]
    text = json.dumps(stmt["Resource"])
    assert len(stmt["Resource"]) == 3
    assert ":secret:shared/beta-key-??????" in text
    for name in ("alpha", "gamma"):
        assert {"Ref": stack.get_logical_id(stack.secrets[name].node.default_child)} in stmt["Resource"]
    assert json.loads(cfn["Outputs"]["ExampleExecutionInput"]["Value"]) == {"source": "alpha"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("base_url: https://x\n", "name"),
        (SPEC.format(name="Bad_Name", extra=""), "name"),
        (SPEC.format(name="other", extra=""), "file is named"),
        (SPEC.format(name="src", extra="schedule: {timezone: UTC}"), "schedule.cron: Field required"),
        ("- a list\n", "mapping"),
    ],
)
def test_a_spec_that_cannot_be_deployed_fails_the_synth_naming_the_file(tmp_path: Path, text, message):
    from harvester.spec import SpecError
    from stacks.sources import discover

    (tmp_path / "src.yaml").write_text(text)
    with pytest.raises(SpecError, match=message) as err:
        discover(tmp_path)
    assert "src.yaml" in str(err.value)


def test_duplicate_names_are_refused(tmp_path: Path):
    from stacks.sources import SourceConfigError, discover

    (tmp_path / "dup.yaml").write_text(SPEC.format(name="dup", extra=""))
    (tmp_path / "dup.yml").write_text(SPEC.format(name="dup", extra=""))
    with pytest.raises(SourceConfigError, match="also defined"):
        discover(tmp_path)


@pytest.mark.parametrize(
    "extra, field",
    [
        ("rate_limit: {requests_per_second: -5}", "rate_limit.requests_per_second"),
        ("auth: {type: header}", "auth.env"),
        ("schedule: {cron: '0 3 * * *'}", "schedule.cron"),
        ("max_concurrency: lots", "max_concurrency"),
    ],
)
def test_a_bad_spec_fails_the_synth_with_the_error_harvest_run_prints(tmp_path: Path, capsys, extra, field):
    """One parser: the stack reads sources/ with harvester/spec.py, so `cdk synth` refuses a spec `harvest run`
    refuses, with the same message (the file, the field, the problem)."""
    from harvester.cli.main import main
    from harvester.spec import SpecError

    path = tmp_path / "broken.yaml"
    path.write_text(SPEC.format(name="broken", extra=extra))
    with pytest.raises(SpecError) as synth:
        make_app({"stackName": "HarvesterBroken"}, sources_dir=tmp_path)
    assert f"{path}: {field}:" in str(synth.value)

    assert main(["run", str(path), "--local", "--state", str(tmp_path / "state")]) != 0
    printed = capsys.readouterr().err.strip()
    assert printed == f"error: {synth.value.one_line()}"
