"""The workflows: each definition in statemachines/ deployed as a state machine with a version and a `live` alias.

A definition is embedded verbatim in the template (`DefinitionString`) with CloudFormation
`DefinitionSubstitutions` for its `${...}` placeholders, exactly the substitutions the local engine applies
(`harvester/definition.py`). A definition loaded from text gets no automatic IAM grants, so every permission a
workflow needs is written out here, scoped to named resources.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from harvester import definition as contract
from harvester.functions import function_of_placeholder
from stacks import nag
from stacks.config import HarvesterConfig
from stacks.logical_ids import Group
from stacks.naming import LIVE, machine_name, stack_suffix

#: S3 prefix each workflow's Distributed Maps read their items from (docs/architecture.md, "S3 layout")
RUNS_PREFIX, QUERIES_PREFIX = "runs/", "queries/"


@dataclass(frozen=True)
class WorkflowDefinition:
    """A definition file, its text and the placeholders CDK fills: the contract's keys plus any other the file
    uses (a function of FUNCTION_CATALOG, BucketName, LedgerTableName; anything else fails the synth)."""

    key: str  # harvest | query: the state machine is `{stack}-{key}`
    path: Path
    text: str
    keys: tuple[str, ...]
    reader_prefix: str

    @classmethod
    def load(cls, key: str, path: Path, contract_keys: tuple[str, ...], reader_prefix: str) -> WorkflowDefinition:
        text = path.read_text(encoding="utf-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:  # a broken file fails the synth here, naming the file
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        keys = (*contract_keys, *sorted(contract.placeholders(text) - set(contract_keys)))
        return cls(key=key, path=path, text=text, keys=keys, reader_prefix=reader_prefix)

    @property
    def functions(self) -> list[str]:
        """The catalog functions it calls (`${PlanFunctionArn}` -> plan)."""
        return [name for name in map(function_of_placeholder, self.keys) if name]

    @property
    def writes_map_results(self) -> bool:
        return '"ResultWriter"' in self.text

    @property
    def map_results_prefix(self) -> str:
        """Where its ResultWriters write (`runs/{source}/{run_id}/map-results/`, `queries/{id}/map-results/`)."""
        return f"{self.reader_prefix}*/map-results/"


def load_definitions(definition_path: Path | str | None,
                     query_definition_path: Path | str | bool | None) -> list[WorkflowDefinition]:
    """The harvest, and the query over the lake: `query_definition_path` None = `statemachines/query.asl.json` if
    it exists, False = none."""
    definitions = [WorkflowDefinition.load("harvest", Path(definition_path or contract.DEFINITION_PATH),
                                           contract.SUBSTITUTION_KEYS, RUNS_PREFIX)]
    if query_definition_path is not False:
        query_path = Path(query_definition_path or contract.QUERY_DEFINITION_PATH)
        if query_path.is_file():
            definitions.append(WorkflowDefinition.load("query", query_path, contract.QUERY_SUBSTITUTION_KEYS,
                                                       QUERIES_PREFIX))
    return definitions


@dataclass(frozen=True)
class WorkflowResources:
    """What the definitions' placeholders name: the functions' `live` aliases, the bucket, the ledger table."""

    aliases: dict[str, lambda_.IAlias]
    bucket: s3.IBucket
    table: dynamodb.ITable
    config: HarvesterConfig
    removal_policy: cdk.RemovalPolicy

    def substitutions(self, keys: tuple[str, ...]) -> dict[str, str]:
        values: dict[str, str] = {}
        for key in keys:
            function = function_of_placeholder(key)
            if function is not None:
                if function not in self.aliases:
                    raise ValueError(f"no function {function!r} for the definition substitution {key}")
                values[key] = self.aliases[function].function_arn
            elif key == "BucketName":
                values[key] = self.bucket.bucket_name
            elif key == "LedgerTableName":
                values[key] = self.table.table_name
            else:
                raise ValueError(f"no value for the definition placeholder ${{{key}}} (CDK can fill *FunctionArn of "
                                 f"FUNCTION_CATALOG, BucketName, LedgerTableName)")
        return values


class Workflow(Group):
    """`machine` (`{stack}-{key}`), its `version` per deploy and the `live` `alias` that schedules and people
    start; `executions_arn`, `qualified_arn` and `map_run_children_arn` are the ARNs its own policy names."""

    def __init__(self, scope: Construct, definition: WorkflowDefinition, resources: WorkflowResources,
                 acks: list[nag.Ack]) -> None:
        cid = definition.key.capitalize()
        super().__init__(scope, cid)
        stack = cdk.Stack.of(self)
        self.definition, self.key, self.name = definition, definition.key, machine_name(stack, definition.key)
        self.definition_path, self.reader_prefix = definition.path, definition.reader_prefix

        # the ARNs of this state machine and its executions, built from the fixed name (no circular dependency)
        def arn(resource: str, resource_name: str) -> str:
            return stack.format_arn(service="states", resource=resource, resource_name=resource_name,
                                    arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)

        self.machine_arn = arn("stateMachine", self.name)
        self.qualified_arn = arn("stateMachine", f"{self.name}:*")
        self.executions_arn = arn("execution", f"{self.name}:*")
        self.map_run_children_arn = arn("execution", f"{self.name}/*")
        self.machine = self._state_machine(cid, resources)
        for statement in self._statements(resources):
            self.machine.add_to_role_policy(statement)
        self.version, self.alias = self._live_alias(cid)
        self._acknowledge(resources, acks)

    def _state_machine(self, cid: str, resources: WorkflowResources) -> sfn.StateMachine:
        stack, config = cdk.Stack.of(self), resources.config
        log_group = logs.LogGroup(
            self,
            # the harvest's id predates the query workflow: kept, a new logical id would replace the log group
            "StateMachineLogs" if self.key == "harvest" else f"{cid}StateMachineLogs",
            # the /aws/vendedlogs/ prefix keeps CloudWatch Logs' resource policy from growing per log group; the
            # suffix (from the stack's id) keeps a retained log group from blocking a re-created stack
            log_group_name=cdk.Fn.join("", [f"/aws/vendedlogs/states/{self.name}-", stack_suffix(stack)]),
            retention=config.log_retention,
            removal_policy=resources.removal_policy,
        )
        return sfn.StateMachine(
            self,
            f"{cid}StateMachine",
            state_machine_name=self.name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_string(self.definition.text),
            definition_substitutions=resources.substitutions(self.definition.keys),
            logs=sfn.LogOptions(destination=log_group, level=getattr(sfn.LogLevel, config.workflowLogLevel),
                                include_execution_data=True),
            tracing_enabled=True,
            # holds no data; a retained one would block re-creating the stack (its name is fixed)
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

    def _statements(self, resources: WorkflowResources) -> list[iam.PolicyStatement]:
        bucket, definition = resources.bucket, self.definition
        statements = [
            iam.PolicyStatement(sid="InvokeFunctions", actions=["lambda:InvokeFunction"],
                                resources=[resources.aliases[name].function_arn for name in definition.functions]),
            # Distributed Map: ItemReader reads the items (manifests, plans, tasks) the previous state wrote
            iam.PolicyStatement(sid="ReadManifests", actions=["s3:GetObject"],
                                resources=[bucket.arn_for_objects(f"{definition.reader_prefix}*")]),
            # Distributed Map: child workflow executions of this very state machine
            # (an execution started through a version or alias starts its children on that qualified ARN)
            iam.PolicyStatement(sid="StartChildExecutions", actions=["states:StartExecution"],
                                resources=[self.machine_arn, self.qualified_arn]),
            iam.PolicyStatement(sid="ManageChildExecutions",
                                actions=["states:DescribeExecution", "states:StopExecution"],
                                resources=[self.executions_arn]),
            # redriving a failed Map Run (console or RedriveExecution of the parent) restarts its failed child
            # executions, arn:...:execution:{name}/{mapRunLabel}:{id}, as this role ("IAM permission to redrive a
            # Map Run", https://docs.aws.amazon.com/step-functions/latest/dg/redrive-map-run.html)
            iam.PolicyStatement(sid="RedriveMapRuns", actions=["states:RedriveExecution"],
                                resources=[self.map_run_children_arn]),
        ]
        if definition.writes_map_results:
            # Distributed Map ResultWriter: every child's result under {prefix}.../map-results/{map run id}/ (the
            # actions of "IAM policies for ResultWriter",
            # https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html)
            statements.append(iam.PolicyStatement(
                sid="WriteMapResults",
                actions=["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                resources=[bucket.arn_for_objects(definition.map_results_prefix + "*")]))
        if "LedgerTableName" in definition.keys:
            # run start/finish and batch failures are written by the workflow itself (direct integration)
            statements.append(iam.PolicyStatement(
                sid="LedgerWrites", actions=["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"],
                resources=[resources.table.table_arn]))
        return statements

    def _live_alias(self, cid: str) -> tuple[sfn.CfnStateMachineVersion, sfn.CfnStateMachineAlias]:
        """A version per deploy that changes the workflow (kept on replacement, so there is one to roll back to)
        and the `live` alias that schedules and people start runs with."""
        version = sfn.CfnStateMachineVersion(
            self, f"{cid}StateMachineVersion", state_machine_arn=self.machine.state_machine_arn,
            state_machine_revision_id=self.machine.state_machine_revision_id, description="published by cdk deploy")
        version.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
        alias = sfn.CfnStateMachineAlias(
            self, f"{cid}StateMachineLiveAlias", name=LIVE,
            description=f"the {self.key} workflow version that schedules and people start",
            routing_configuration=[sfn.CfnStateMachineAlias.RoutingConfigurationVersionProperty(
                state_machine_version_arn=version.attr_arn, weight=100)])
        return version, alias

    def _acknowledge(self, resources: WorkflowResources, acks: list[nag.Ack]) -> None:
        stack, config = cdk.Stack.of(self), resources.config

        def ack(scope, arn: str, reason: str) -> None:
            nag.acknowledge(scope, f"AwsSolutions-IAM5[Resource::{nag.finding_resource(stack, arn)}]", reason, acks)

        if config.workflowLogLevel != "ALL":
            nag.acknowledge(self.machine.node.default_child, "AwsSolutions-SF1",
                            f"logs {config.workflowLogLevel} events with execution data (workflowLogLevel): ALL would "
                            "log every state of every Distributed Map child with its input and output, an ingestion "
                            "cost that grows with the run; every failure is logged, the execution history keeps the "
                            "rest, -c workflowLogLevel=ALL when debugging", acks)
        policy = self.machine.role.node.find_child("DefaultPolicy").node.default_child
        nag.acknowledge(policy, "AwsSolutions-IAM5[Resource::*]",
                        "CloudWatch Logs log-delivery actions (CreateLogDelivery, PutResourcePolicy, ...) and X-Ray do "
                        "not support resource-level permissions; CDK adds them for the state machine's logging and "
                        "tracing", acks)
        ack(policy, resources.bucket.arn_for_objects(f"{self.reader_prefix}*"),
            f"the Distributed Map's ItemReader reads the items a previous state wrote under {self.reader_prefix} "
            "(keys created per run or query); GetObject only")
        if self.definition.writes_map_results:
            ack(policy, resources.bucket.arn_for_objects(f"{self.definition.map_results_prefix}*"),
                "the Distributed Maps' ResultWriter writes each Map Run's results under a folder named by the run or "
                "query and the Map Run id Step Functions assigns, so the keys cannot be listed in advance; only the "
                "object actions the ResultWriter needs")
        ack(policy, self.qualified_arn,
            "an execution started through the live alias or a version starts its Distributed Map children on that "
            "qualified ARN; version numbers are assigned at publish time; only this state machine's versions/aliases")
        ack(policy, self.map_run_children_arn,
            "redriving a failed Map Run restarts its child executions, named by Step Functions under each Distributed "
            "Map's label; RedriveExecution only, on the child executions of this one state machine")
        ack(policy, self.executions_arn,
            "Distributed Map child executions get names chosen by Step Functions; Describe/StopExecution is limited "
            "to the executions of this one state machine")
