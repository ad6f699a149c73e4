"""State machine versions and the `live` alias in the local engine, as the stack deploys them.

moto creates versions and aliases but cannot start an execution through an alias ARN (StateMachineDoesNotExist),
nor through a version ARN. On AWS a schedule, a person or a script starts runs through `live`; a start through an
alias runs the version its routing configuration picks ("Associate executions with a version or alias",
https://docs.aws.amazon.com/step-functions/latest/dg/execution-alias-version-associate.html). The local engine
publishes one version, the definition it created the state machine with, so a start through `live` runs the
state machine itself (after the alias and the version it routes to have been looked up, as AWS does).
"""

from __future__ import annotations

import random
import uuid

LIVE = "live"


def version_of(backend, arn: str) -> str:
    """The version ARN an alias ARN routes to (by the routing weights); any other ARN unchanged."""
    parts = arn.split(":")
    if len(parts) != 8 or parts[7].isdigit():
        return arn
    routes = backend.describe_state_machine_alias(arn).routing_configuration
    weights = [int(r.get("weight", 0)) for r in routes]
    return random.choices([r["stateMachineVersionArn"] for r in routes], weights=weights)[0]


def runnable(backend, arn: str) -> str:
    """The ARN moto can start for `arn`: an alias or version ARN -> its state machine (the version must exist)."""
    version = version_of(backend, arn)
    if version == arn and len(arn.split(":")) == 7:
        return arn
    backend.describe_state_machine(version)  # StateMachineDoesNotExist for an unknown version
    return version.rsplit(":", 1)[0]


def install_alias_start() -> None:
    """Idempotent: StartExecution accepts an alias ARN and runs the version it routes to, and names an unnamed
    execution."""
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    original = StepFunctionsParserBackend.start_execution
    if getattr(original, "_harvester_alias", False):
        return

    def start_execution(self, state_machine_arn, name=None, *args, **kwargs):
        # a start without a name (e.g. EventBridge Scheduler's) gets a UUID ("If you don't provide a name for the
        # execution, Step Functions automatically generates a universally unique identifier (UUID)",
        # https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html); moto leaves None
        return original(self, runnable(self, state_machine_arn), name or str(uuid.uuid4()), *args, **kwargs)

    start_execution._harvester_alias = True  # type: ignore[attr-defined]
    StepFunctionsParserBackend.start_execution = start_execution


def publish_live(sfn, state_machine_arn: str, version_arn: str) -> str:
    """The `live` alias on `version_arn` (what the stack's CfnStateMachineAlias is); returns the alias ARN."""
    return sfn.create_state_machine_alias(
        name=LIVE, routingConfiguration=[{"stateMachineVersionArn": version_arn, "weight": 100}]
    )["stateMachineAliasArn"]
