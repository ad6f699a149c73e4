"""Logical ids that do not depend on how the stack groups its resources into constructs.

CloudFormation replaces a resource whose logical id changes: a new bucket, table or secret (the data stays
behind in the retained old one), and a resource with a fixed name (state machine, log group, dashboard,
secret) fails the deploy with "already exists". CDK derives a logical id from the construct path, so moving a
resource into a construct would change it. A `Group` is a construct whose id is left out of its resources'
logical ids: the stack is organised in groups (storage, secrets, functions, workflows) while every resource
keeps the logical id it had when it sat directly in the stack. `tests/infrastructure/test_logical_ids.py` pins
the ids of the stateful resources.
"""

from __future__ import annotations

import hashlib
import re

import aws_cdk as cdk
from constructs import Construct

# CDK's makeUniqueId (aws-cdk-lib core/lib/private/uniqueid.ts), which Stack.allocateLogicalId applies to the
# construct path below the stack; the test module checks this copy against CDK's own `Names.unique_id`
_HIDDEN_ID = "Default"  # left out of the path entirely
_HIDDEN_FROM_HUMAN_ID = "Resource"  # left out of the readable part, kept in the hash
_HASH_LEN, _MAX_HUMAN_LEN, _MAX_ID_LEN = 8, 240, 255


class Group(Construct):
    """A construct that organises resources without being part of their logical ids."""


def unique_id(components: list[str]) -> str:
    """CDK's logical id of a construct path: the path's readable part plus an 8-digit hash of the path."""
    components = [c for c in components if c != _HIDDEN_ID]
    if not components:
        raise ValueError("a logical id needs at least one path component")
    if len(components) == 1:
        candidate = _alphanumeric(components[0])
        if len(candidate) <= _MAX_ID_LEN:
            return candidate
    digest = hashlib.md5("/".join(components).encode(), usedforsecurity=False).hexdigest()
    human = "".join(_alphanumeric(c) for c in _without_repeats(components) if c != _HIDDEN_FROM_HUMAN_ID)
    return human[:_MAX_HUMAN_LEN] + digest[:_HASH_LEN].upper()


class LogicalIds:
    """The logical ids of one stack: CDK's, of the path without the `Group`s; two elements never get one id."""

    def __init__(self, stack: cdk.Stack) -> None:
        self._stack = stack
        self._owners: dict[str, str] = {}  # logical id -> construct path

    def allocate(self, element: cdk.CfnElement) -> str:
        scopes = element.node.scopes
        below = scopes[scopes.index(self._stack) + 1 :]
        allocated = unique_id([scope.node.id for scope in below if not isinstance(scope, Group)])
        owner = self._owners.setdefault(allocated, element.node.path)
        if owner != element.node.path:
            raise ValueError(f"{element.node.path} and {owner} would both have the logical id {allocated}: "
                             "give one of them another construct id")
        return allocated


def _alphanumeric(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def _without_repeats(path: list[str]) -> list[str]:
    """A component that ends the one before it is dropped (`Bucket/Bucket` -> `Bucket`), as CDK does."""
    kept: list[str] = []
    for component in path:
        if not kept or not kept[-1].endswith(component):
            kept.append(component)
    return kept
