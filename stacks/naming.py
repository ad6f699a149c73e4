"""Names the stack's constructs share: the `live` alias, state machine names, the stack's creation suffix."""

from __future__ import annotations

import aws_cdk as cdk

#: the alias name of the Lambda functions and of the state machines that callers use
LIVE = "live"


def machine_name(stack: cdk.Stack, key: str) -> str:
    """`{stack}-{key}` (`Harvester-harvest`): the local engine gives its state machines the same names."""
    return f"{stack.stack_name}-{key}"[:80]


def stack_suffix(stack: cdk.Stack) -> str:
    """The first group of the stack id's UUID: differs between two creations of the same stack."""
    return cdk.Fn.select(0, cdk.Fn.split("-", cdk.Fn.select(2, cdk.Fn.split("/", stack.stack_id))))


def secret_prefix(stack: cdk.Stack) -> str:
    """`{stack name}-{stack id}/`: secret names are unique per account and region and the stack retains its
    secrets, so a fixed name would make a second stack, or this one created again, fail with "already exists"."""
    return cdk.Fn.join("", [stack.stack_name, "-", stack_suffix(stack), "/"])
