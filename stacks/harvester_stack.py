"""The harvester stack: storage, source secrets, functions, workflows, schedules, observability, outputs.

Each part is a construct with explicit inputs and properties (`stacks/storage.py`, `secrets.py`,
`functions.py`, `workflows.py`, `schedules.py`, `observability.py`); this module wires them together. The
parts that group resources are `Group`s (`stacks/logical_ids.py`): they are left out of the logical ids, so
every resource keeps the logical id it had when the stack was one class, and a refactor never replaces a
bucket, a table or a secret on deploy.
"""

from __future__ import annotations

import json
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from harvester.functions import FunctionAccess
from stacks import logical_ids, nag
from stacks.config import HarvesterConfig
from stacks.functions import FunctionResources, Functions
from stacks.naming import LIVE, machine_name, secret_prefix
from stacks.observability import Observability, ObservedResources
from stacks.schedules import SourceSchedules
from stacks.secrets import SourceSecrets
from stacks.sources import SOURCES_DIR, SourceInfo, discover
from stacks.storage import Storage
from stacks.workflows import Workflow, WorkflowResources, load_definitions


class HarvesterStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: HarvesterConfig | None = None,
        definition_path: Path | str | None = None,
        query_definition_path: Path | str | bool | None = None,
        sources_dir: Path | str | None = None,
        **kwargs,
    ) -> None:
        """`query_definition_path`: None = `statemachines/query.asl.json` if it exists, False = no query workflow."""
        super().__init__(scope, construct_id, **kwargs)
        self._logical_ids = logical_ids.LogicalIds(self)
        self.config = config or HarvesterConfig.from_node(self.node)
        self.sources: list[SourceInfo] = discover(Path(sources_dir or SOURCES_DIR))
        self.removal_policy = cdk.RemovalPolicy.RETAIN if self.config.retain else cdk.RemovalPolicy.DESTROY
        #: every cdk-nag finding this stack accepts, with its reason (listed in stacks/README.md)
        self.nag_acknowledgments: list[nag.Ack] = []
        acks = self.nag_acknowledgments

        self.storage = Storage(self, "Storage", config=self.config, removal_policy=self.removal_policy, acks=acks)
        self.source_secrets = SourceSecrets(self, "Secrets", sources=self.sources, prefix=self.secret_prefix,
                                            removal_policy=self.removal_policy, acks=acks)
        definitions = load_definitions(definition_path, query_definition_path)
        self.definition_path = definitions[0].path
        resources = FunctionResources(bucket=self.bucket, table=self.table, secrets=self.source_secrets,
                                      secret_prefix=self.secret_prefix, config=self.config,
                                      removal_policy=self.removal_policy)
        called = {name for definition in definitions for name in definition.functions}
        self.lambdas = Functions(self, "Functions", names=called, resources=resources, acks=acks)
        workflow_resources = WorkflowResources(aliases=self.aliases, bucket=self.bucket, table=self.table,
                                               config=self.config, removal_policy=self.removal_policy)
        workflows = logical_ids.Group(self, "Workflows")
        self.workflows: dict[str, Workflow] = {
            d.key: Workflow(workflows, d, workflow_resources, acks) for d in definitions
        }
        self._grant_run_guard(self.workflows["harvest"])
        self.schedules = self._schedules()
        self.observability = Observability(
            self, "Observability", config=self.config, removal_policy=self.removal_policy,
            watched=ObservedResources(
                stack_name=self.stack_name, machine_arn=self.state_machine.state_machine_arn,
                alias_arn=self.state_machine_alias.ref, sources=self.sources,
                functions=list(self.functions.values()), table=self.table,
                dead_letter_queue=self.schedules.dead_letter_queue if self.schedules else None))
        self._outputs()

    def _allocate_logical_id(self, cfn_element: cdk.CfnElement) -> str:
        """CDK's logical id of the element's path without the `Group`s (stacks/logical_ids.py)."""
        return self._logical_ids.allocate(cfn_element)

    # --- the parts, as properties ------------------------------------------------------------------------
    @property
    def bucket(self) -> s3.Bucket:
        return self.storage.bucket

    @property
    def table(self) -> dynamodb.Table:
        return self.storage.table

    @property
    def secrets(self) -> dict[str, secretsmanager.ISecret]:
        return self.source_secrets.secrets

    @property
    def secret_prefix(self) -> str:
        """`{stack name}-{stack id}/`, the prefix of the secrets the stack creates (HARVESTER_SECRET_PREFIX)."""
        return secret_prefix(self)

    @property
    def functions(self) -> dict[str, lambda_.Function]:
        return {name: f.function for name, f in self.lambdas.by_name.items()}

    @property
    def aliases(self) -> dict[str, lambda_.Alias]:
        return {name: f.alias for name, f in self.lambdas.by_name.items()}

    @property
    def function_access(self) -> dict[str, FunctionAccess]:
        return {name: f.access for name, f in self.lambdas.by_name.items()}

    @property
    def state_machine(self) -> sfn.StateMachine:
        return self.workflows["harvest"].machine

    @property
    def state_machine_version(self) -> sfn.CfnStateMachineVersion:
        return self.workflows["harvest"].version

    @property
    def state_machine_alias(self) -> sfn.CfnStateMachineAlias:
        return self.workflows["harvest"].alias

    @property
    def state_machine_name(self) -> str:
        return machine_name(self, "harvest")

    # --- wiring ------------------------------------------------------------------------------------------
    def _grant_run_guard(self, workflow: Workflow) -> None:
        """The plan step refuses to resume a run whose execution is still running: it asks Step Functions
        (DescribeExecution on the `execution` resource type, arn:...:execution:{StateMachineName}:{ExecutionId},
        https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsstepfunctions.html)."""
        plan = self.lambdas.by_name.get("plan")
        if plan is None:
            return
        plan.add_to_role_policy("RunGuard", ["states:DescribeExecution"], [workflow.executions_arn])
        executions = nag.finding_resource(self, workflow.executions_arn)
        nag.acknowledge(plan.policy, f"AwsSolutions-IAM5[Resource::{executions}]",
                        "the plan step asks whether the execution that owns a run being resumed still runs; execution "
                        "names are chosen per run; DescribeExecution only, on the executions of this one state machine",
                        self.nag_acknowledgments)

    def _schedules(self) -> SourceSchedules | None:
        if not self.config.schedules or not any(source.schedule for source in self.sources):
            return None
        return SourceSchedules(self, "Schedules", sources=self.sources, target_arn=self.state_machine_alias.ref,
                               state_machine_arn=self.state_machine.state_machine_arn, qualifier=LIVE,
                               removal_policy=self.removal_policy, acks=self.nag_acknowledgments)

    def _outputs(self) -> None:
        example = self.sources[0].name if self.sources else "demo"
        outputs = {
            "StateMachineArn": (self.state_machine.state_machine_arn,
                                "The workflow (latest revision); the console shows its runs here"),
            "StateMachineAliasArn": (self.state_machine_alias.ref,
                                     "Start runs here (the live alias; schedules use it too)"),
        }
        if "query" in self.workflows:
            outputs["QueryStateMachineAliasArn"] = (self.workflows["query"].alias.ref,
                                                    "Start queries over the Parquet lake here (results under results/)")
        outputs |= {
            "BucketName": (self.bucket.bucket_name, "raw/{source}/{run_id}/... records, runs/... run state"),
            "LedgerTableName": (self.table.table_name, "DynamoDB run ledger"),
            "ExampleExecutionInput": (json.dumps({"source": example}),
                                      'Execution input; optional "run_id", or "resume": "<run_id>"'),
            "AlarmTopicArn": (self.observability.topic.topic_arn,
                              "Alarms are sent here (subscribe with -c alarmEmail=... or in the console)"),
            "DashboardName": (self.observability.dashboard.dashboard_name, None),
            "Sources": (",".join(s.name for s in self.sources) or "(none)",
                        "Deployed sources (each one's API key goes in its secret: SourceSecrets)"),
        }
        if self.secrets:
            pairs = [cdk.Fn.join("=", [name, secret.secret_name]) for name, secret in self.secrets.items()]
            outputs["SourceSecrets"] = (cdk.Fn.join(",", pairs),
                                        "source=secret name: put each vendor's API key in its secret "
                                        "(aws secretsmanager put-secret-value --secret-id NAME --secret-string KEY)")
        for output_id, (value, description) in outputs.items():
            cdk.CfnOutput(self, output_id, value=value, description=description)
