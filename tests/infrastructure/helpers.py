"""Helpers of the infrastructure tests: building the app as `cdk synth` does, minus bundling and cdk-nag."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

#: a minimal source spec for stacks built from a test's own sources folder
SPEC = """\
name: {name}
base_url: https://api.example.com
{extra}
levels:
  - name: items
    path: /items
"""


def cdk_json_context() -> dict[str, Any]:
    """The context in cdk.json (feature flags included), so tests synthesize what `cdk synth` does."""
    return json.loads((ROOT / "cdk.json").read_text())["context"]


def make_app(extra_context: dict[str, Any] | None = None, **build_kwargs):
    import aws_cdk as cdk

    from stacks.app import build_app

    context = {**cdk_json_context(), "nag": False, "aws:cdk:bundling-stacks": [], **(extra_context or {})}
    app = cdk.App(context=context)
    stack = build_app(app, **build_kwargs)
    return app, stack


def resource(template: dict, type_: str) -> list[tuple[str, dict]]:
    return [(k, v) for k, v in template["Resources"].items() if v["Type"] == type_]


def render_definition(state_machine: dict) -> dict:
    """The state machine's definition with `${Key}` replaced by placeholder values, parsed."""
    props = state_machine["Properties"]
    text = props["DefinitionString"]
    assert isinstance(text, str), "the definition is embedded verbatim (substitutions carry the tokens)"
    for key in props.get("DefinitionSubstitutions", {}):
        placeholder = (
            f"arn:aws:lambda:us-east-1:123456789012:function:{key}"
            if key.endswith("FunctionArn")
            else f"placeholder-{key}"
        )
        text = text.replace("${" + key + "}", placeholder)
    return json.loads(text)


@dataclass
class HarvesterApp:
    app: Any
    stack: Any
    template: Any  # aws_cdk.assertions.Template
    cfn: dict
    definition: dict
