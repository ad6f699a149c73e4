"""The local engine runs the definition `cdk synth` deploys: the same JSON, modulo ARNs and names."""

from __future__ import annotations

import json

import pytest

from harvester import definition
from harvester.local.engine import rendered_definition, substitutions


def as_placeholders(text: str, values: dict[str, str]) -> dict:
    """Put `${Key}` back where a substitution's value stands, longest values first."""
    for key, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, "${" + key + "}")
    return json.loads(text)


def deployed(harvester_app, path) -> tuple[dict, set[str]]:
    """(definition, substitution keys) of the stack's state machine whose definition is the file at `path`."""
    file_text = definition.load(path)
    for res in harvester_app.cfn["Resources"].values():
        if res["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        props = res["Properties"]
        deployed_def = json.loads(props["DefinitionString"])
        if deployed_def["StartAt"] == json.loads(file_text)["StartAt"]:
            return deployed_def, set(props.get("DefinitionSubstitutions", {}))
    raise AssertionError(f"no state machine in the template is defined by {path}")


@pytest.mark.parametrize("path", [definition.DEFINITION_PATH, getattr(definition, "QUERY_DEFINITION_PATH", None)],
                         ids=["harvest", "query"])
def test_local_engine_runs_the_deployed_definition(harvester_app, path):
    if path is None:
        pytest.skip("no query workflow yet")
    cdk_def, keys = deployed(harvester_app, path)
    local_def = as_placeholders(rendered_definition(path), substitutions())
    # the same states, the same fields, the same values; only ${...} stands where ARNs and names differ
    assert local_def == cdk_def
    assert keys == definition.placeholders(definition.load(path))
