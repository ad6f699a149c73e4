"""cdk-nag's AwsSolutions checks, and every finding this app accepts, each on the narrowest construct with a reason.

Switched by the `nag` context flag (default on: `cdk synth` and `cdk deploy` run it; the unit tests switch it off
because it is the slow part of a synth). Any unacknowledged finding makes `cdk synth` exit 1, so a new finding
fails CI (`scripts/check_infra.sh`) until it is fixed or acknowledged here with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks
from constructs import IConstruct

PACK = "AwsSolutions"


@dataclass(frozen=True)
class Ack:
    path: str  # construct path, e.g. Harvester/FetchFunctionRole/DefaultPolicy/Resource
    rule: str  # e.g. AwsSolutions-IAM5[Resource::*]
    reason: str


def enable(app: cdk.App) -> None:
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(verbose=True))


def acknowledge(scope: IConstruct, rule: str, reason: str, register: list[Ack] | None = None) -> Ack:
    """Acknowledge one finding (`AwsSolutions-IAM5[Resource::...]`) on one construct."""
    if not reason or len(reason) < 20:
        raise ValueError(f"{rule} on {scope.node.path}: give a specific reason")
    cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=f"{PACK}::{rule}", reason=reason))
    ack = Ack(path=scope.node.path, rule=rule, reason=reason)
    if register is not None:
        register.append(ack)
    return ack


def finding_resource(stack: cdk.Stack, value: Any) -> str:
    """A resource ARN as cdk-nag prints it in a finding id: `Ref` -> `<X>`, `Fn::GetAtt` -> `<X.Attr>`."""

    def flatten(node: Any) -> str:
        if isinstance(node, str):
            return node
        if isinstance(node, dict) and len(node) == 1:
            (key, arg), = node.items()
            if key == "Ref":
                return f"<{arg}>"
            if key == "Fn::GetAtt":
                return f"<{arg[0]}.{arg[1]}>"
            if key == "Fn::Join":
                return arg[0].join(flatten(part) for part in arg[1])
        raise ValueError(f"cannot render {node!r} as cdk-nag does")

    return flatten(stack.resolve(value))


def ack_rows(stack: cdk.Stack, sources: list[str]) -> list[tuple[str, str, str]]:
    """(construct, finding, reason) per acknowledgment, with a source's name written `{source}` so the table
    does not change when a source is added; sorted, deduplicated."""

    def generic(text: str) -> str:
        for name in sorted(sources, key=len, reverse=True):
            text = text.replace(f"Secret-{name}/", "Secret-{source}/").replace(f"source {name!r}", "source '{source}'")
        return text

    rows = {
        (generic(a.path.removeprefix(f"{stack.node.id}/")), a.rule, generic(a.reason))
        for a in getattr(stack, "nag_acknowledgments", [])
    }
    return sorted(rows)


def ack_table(stack: cdk.Stack, sources: list[str]) -> str:
    lines = ["| construct | finding | reason |", "| --- | --- | --- |"]
    lines += [f"| `{path}` | `{rule}` | {reason} |" for path, rule, reason in ack_rows(stack, sources)]
    return "\n".join(lines) + "\n"
