"""The harvester stack: data bucket, ledger table, one secret per source, Lambda functions, the workflow.

The workflow definition is the lead's `statemachines/harvest.asl.json`, embedded verbatim in the template
(`DefinitionString`) with CloudFormation `DefinitionSubstitutions` for the `${...}` placeholders, exactly the
substitutions the local engine applies (see `harvester/definition.py`). A definition loaded from text gets no
automatic IAM grants, so every permission the workflow needs is written out below, scoped to named resources.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from harvester.functions import COMMON_ENVIRONMENT, FUNCTION_CATALOG, FunctionAccess, FunctionDef  # noqa: F401 - re-exported
from stacks import nag
from stacks.bundling import ARCHITECTURES, REQUIREMENTS_DIR, ROOT, RUNTIME, BundleSpec, lambda_code
from stacks.config import HarvesterConfig
from stacks.observability import Observability
from stacks.schedules import SourceSchedules
from stacks.sources import SOURCES_DIR, SourceInfo, discover

try:  # the lead's contract: the definition files and the placeholders CDK must fill
    from harvester import definition as _definition
except ImportError:  # pragma: no cover - only before harvester/definition.py exists
    _definition = None
DEFINITION_PATH = getattr(_definition, "DEFINITION_PATH", ROOT / "statemachines" / "harvest.asl.json")
SUBSTITUTION_KEYS = tuple(getattr(_definition, "SUBSTITUTION_KEYS", (
    "PlanFunctionArn", "FetchFunctionArn", "AdvanceFunctionArn", "BucketName", "LedgerTableName")))  # fmt: skip
#: the query workflow over the Parquet lake (optional: deployed when the file exists)
QUERY_DEFINITION_PATH = getattr(_definition, "QUERY_DEFINITION_PATH", ROOT / "statemachines" / "query.asl.json")
QUERY_SUBSTITUTION_KEYS = tuple(getattr(_definition, "QUERY_SUBSTITUTION_KEYS", ("QueryFunctionArn", "BucketName")))

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")

#: where the plan function finds the specs inside its bundle (stacks/bundling.py copies sources/ there)
LAMBDA_SOURCES_DIR = "/var/task/sources"

#: the alias name of the Lambda functions and of the state machine that callers use
LIVE = "live"

#: S3 prefixes (docs/architecture.md, "S3 layout")
RUNS_PREFIX = "runs/"




@dataclass
class Workflow:
    """One deployed state machine with its version, `live` alias and the ARNs its own policy needs."""

    key: str
    definition_path: Path
    machine: sfn.StateMachine
    version: sfn.CfnStateMachineVersion
    alias: sfn.CfnStateMachineAlias
    name: str
    qualified_arn: str
    executions_arn: str
    reader_prefix: str
    map_run_children_arn: str = ""


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
        self.config = config or HarvesterConfig.from_node(self.node)
        self.definition_path = Path(definition_path or DEFINITION_PATH)
        self.sources: list[SourceInfo] = discover(Path(sources_dir or SOURCES_DIR))
        self.removal_policy = cdk.RemovalPolicy.RETAIN if self.config.retain else cdk.RemovalPolicy.DESTROY

        self.bucket = self._data_bucket()
        self.table = self._ledger_table()
        self.secrets = self._source_secrets()

        self.functions: dict[str, lambda_.Function] = {}
        self.function_access: dict[str, FunctionAccess] = {}
        self.aliases: dict[str, lambda_.Alias] = {}

        # the workflows: the harvest, and the query over the lake once its definition exists
        specs = [("harvest", self.definition_path, SUBSTITUTION_KEYS, RUNS_PREFIX)]
        if query_definition_path is not False:
            query_path = Path(query_definition_path) if query_definition_path else QUERY_DEFINITION_PATH
            if query_path and Path(query_path).is_file():
                specs.append(("query", Path(query_path), QUERY_SUBSTITUTION_KEYS, "queries/"))
        texts = {key: self.definition_text(path) for key, path, _, _ in specs}
        # the substitutions: the contract's keys plus any other placeholder the file uses, if CDK can fill it
        # (a function of FUNCTION_CATALOG, BucketName, LedgerTableName; anything else fails in substitutions())
        specs = [(key, path, tuple(dict.fromkeys([*keys, *_PLACEHOLDER.findall(texts[key])])), prefix)
                 for key, path, keys, prefix in specs]  # fmt: skip
        # the functions the definitions call (`${PlanFunctionArn}` -> plan), created in catalog order
        needed = {k[: -len("FunctionArn")].lower() for _, _, keys, _ in specs for k in keys if k.endswith("FunctionArn")}
        unknown = needed - set(FUNCTION_CATALOG)
        if unknown:
            raise ValueError(f"the workflow definitions call functions {sorted(unknown)} that FUNCTION_CATALOG "
                             f"(harvester/functions.py) lacks: add one line each")
        for name, fdef in FUNCTION_CATALOG.items():
            if name in needed:
                self.add_function(name, fdef.handler, fdef.access, memory_mb=fdef.memory_mb, timeout_s=fdef.timeout_s,
                                  requirements=REQUIREMENTS_DIR / fdef.requirements, ephemeral_mb=fdef.ephemeral_mb,
                                  environment=fdef.environment)  # fmt: skip

        self.workflows: dict[str, Workflow] = {}
        for key, path, keys, reader_prefix in specs:
            self.workflows[key] = self._workflow(key, path, texts[key], keys, reader_prefix)
        harvest = self.workflows["harvest"]
        self._grant_run_guard(harvest)
        self.state_machine, self.state_machine_version, self.state_machine_alias = (
            harvest.machine, harvest.version, harvest.alias)  # fmt: skip
        self.schedules: SourceSchedules | None = None
        if self.config.schedules and any(source.schedule for source in self.sources):
            self.schedules = SourceSchedules(self, "Schedules", sources=self.sources,
                                             target_arn=self.state_machine_alias.ref,
                                             state_machine_arn=self.state_machine.state_machine_arn, qualifier=LIVE,
                                             removal_policy=self.removal_policy)  # fmt: skip
        self.observability = Observability(self, "Observability", stack=self)
        self._outputs()
        self.nag_acknowledgments: list[nag.Ack] = []
        self._acknowledge_nag_findings()

    # ------------------------------------------------------------------------------------------------------
    # storage
    # ------------------------------------------------------------------------------------------------------
    def _data_bucket(self) -> s3.Bucket:
        access_logs = None
        if self.config.accessLogs:
            access_logs = s3.Bucket(
                self,
                "AccessLogsBucket",
                encryption=s3.BucketEncryption.S3_MANAGED,  # the only encryption S3 server access logging supports
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs",
                                                  expiration=cdk.Duration.days(max(self.config.logRetentionDays, 1)))],
                removal_policy=self.removal_policy,
                auto_delete_objects=False,
            )  # fmt: skip
        lifecycle = [s3.LifecycleRule(id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=cdk.Duration.days(1))]
        if self.config.versioning:
            lifecycle.append(s3.LifecycleRule(id="expire-old-versions", noncurrent_version_expiration=cdk.Duration.days(30)))
        return s3.Bucket(
            self,
            "DataBucket",
            bucket_name=self.config.bucketName or None,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=self.config.versioning,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="data-bucket/" if access_logs else None,
            lifecycle_rules=lifecycle,
            removal_policy=self.removal_policy,
        )

    def _ledger_table(self) -> dynamodb.Table:
        table = dynamodb.Table(
            self,
            "LedgerTable",
            table_name=self.config.tableName or None,
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expires_at",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            deletion_protection=self.config.deletionProtection,
            removal_policy=self.removal_policy,
        )
        table.add_global_secondary_index(
            index_name="gsi1",
            partition_key=dynamodb.Attribute(name="gsi1pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="gsi1sk", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        return table

    @property
    def secret_prefix(self) -> str:
        """`{stack name}-{stack id}/`: secret names are unique per account and region and the stack retains its
        secrets, so a fixed name would make a second stack, or this one created again, fail with "already exists"."""
        return cdk.Fn.join("", [self.stack_name, "-", self._stack_suffix(), "/"])

    def _source_secrets(self) -> dict[str, secretsmanager.ISecret]:
        """One Secrets Manager secret per source. The stack creates `{secret_prefix}{name}` with a random placeholder
        value (put the vendor's API key in it after deploy: output SourceSecrets names them); a spec naming another
        secret (`auth.secret`) refers to an existing one, which the stack only grants read access to."""
        secrets: dict[str, secretsmanager.ISecret] = {}
        for source in self.sources:
            cid = f"Secret-{source.name}"
            if source.default_secret:
                secrets[source.name] = secretsmanager.Secret(
                    self,
                    cid,
                    secret_name=cdk.Fn.join("", [self.secret_prefix, source.name]),
                    description=f"API credential of harvester source {source.name!r} (replace the generated value)",
                    removal_policy=self.removal_policy,
                )
            else:
                secrets[source.name] = secretsmanager.Secret.from_secret_name_v2(self, cid, source.secret_name)
        return secrets

    # ------------------------------------------------------------------------------------------------------
    # functions
    # ------------------------------------------------------------------------------------------------------
    def add_function(
        self,
        name: str,
        handler: str,
        access: FunctionAccess,
        *,
        memory_mb: int = 512,
        timeout_s: int = 300,
        requirements: Path | None = None,
        ephemeral_mb: int | None = None,
        environment: dict[str, str] | None = None,
    ) -> lambda_.Function:
        """One Lambda function with its bundle (wheels of `lambdas/requirements/{name}.txt`, the handler's module and
        the project modules it imports), log group, grants and `live` alias."""
        spec = BundleSpec(name=name, requirements=requirements or REQUIREMENTS_DIR / f"{name}.txt",
                          module=handler.rsplit(".", 1)[0], architecture=self.config.arch)  # fmt: skip
        cid = name.capitalize()
        log_group = logs.LogGroup(
            self,
            f"{cid}FunctionLogs",
            retention=self.config.log_retention,
            removal_policy=self.removal_policy,
        )
        # an own role instead of CDK's default (AWSLambdaBasicExecutionRole lets it write to any log group)
        role = iam.Role(self, f"{cid}FunctionRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                        description=f"harvester {name} function")  # fmt: skip
        log_group.grant_write(role)
        fn = lambda_.Function(
            self,
            f"{cid}Function",
            description=f"harvester {name}",
            runtime=RUNTIME,
            architecture=ARCHITECTURES[self.config.arch],
            handler=handler,
            code=lambda_code(spec),
            memory_size=memory_mb,
            timeout=cdk.Duration.seconds(timeout_s),
            ephemeral_storage_size=cdk.Size.mebibytes(ephemeral_mb) if ephemeral_mb else None,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            role=role,
            # keep every published version when the next deploy publishes a new one: rollback points `live` back at
            # one. CDK's default for current_version is DESTROY, which deletes the old version on each deploy
            # (https://docs.aws.amazon.com/cdk/api/v2/docs/aws-cdk-lib.aws_lambda.VersionOptions.html#removalpolicy)
            current_version_options=lambda_.VersionOptions(removal_policy=cdk.RemovalPolicy.RETAIN),
            environment={
                "HARVESTER_BUCKET": self.bucket.bucket_name,
                "HARVESTER_TABLE": self.table.table_name,
                "HARVESTER_SOURCES_DIR": LAMBDA_SOURCES_DIR,
                "HARVESTER_SECRET_PREFIX": self.secret_prefix,
                **COMMON_ENVIRONMENT,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **(environment or {}),
            },
        )
        self._grant(fn, access)
        # every deploy that changes the function publishes a version (old ones are kept, see current_version_options)
        # and moves `live` to it; the workflow calls `live`, so a rollback is one alias update
        self.aliases[name] = lambda_.Alias(self, f"{cid}LiveAlias", alias_name=LIVE, version=fn.current_version,
                                           description=f"the {name} version the workflow calls")  # fmt: skip
        self.functions[name] = fn
        self.function_access[name] = access
        return fn

    def _grant(self, fn: lambda_.Function, access: FunctionAccess) -> None:
        if access.s3_read:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="ReadObjects", actions=["s3:GetObject"],
                resources=[self.bucket.arn_for_objects(f"{p}*") for p in access.s3_read]))  # fmt: skip
        if access.s3_write:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="WriteObjects", actions=["s3:PutObject"],
                resources=[self.bucket.arn_for_objects(f"{p}*") for p in access.s3_write]))  # fmt: skip
        if access.s3_delete:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="DeleteObjects", actions=["s3:DeleteObject"],
                resources=[self.bucket.arn_for_objects(f"{p}*") for p in access.s3_delete]))  # fmt: skip
        if access.prefixes:
            # lets a missing key answer 404 (NoSuchKey) instead of 403 AccessDenied: S3 decides that with the
            # GetObject/HeadObject request, which has no s3:prefix key, so a plain StringLike on s3:prefix denied it
            # and a batch's first checkpoint read failed (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html,
            # "If you don't have the s3:ListBucket permission, Amazon S3 returns an HTTP status code 403").
            # ...IfExists: true when the key is absent; a listing that names a prefix stays within these prefixes
            # (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_IfExists)
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="ListPrefixes", actions=["s3:ListBucket"], resources=[self.bucket.bucket_arn],
                conditions={"StringLikeIfExists": {"s3:prefix": [f"{p}*" for p in access.prefixes]}}))  # fmt: skip
        if access.ledger_read_only:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="LedgerRead", actions=["dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchGetItem"],
                resources=[self.table.table_arn, f"{self.table.table_arn}/index/gsi1"]))  # fmt: skip
        elif access.ledger:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="Ledger",
                actions=["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
                         "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem", "dynamodb:ConditionCheckItem"],
                resources=[self.table.table_arn, f"{self.table.table_arn}/index/gsi1"]))  # fmt: skip
        if access.secrets and self.secrets:
            fn.add_to_role_policy(iam.PolicyStatement(
                sid="SourceSecrets", actions=["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                resources=self._secret_arns()))  # fmt: skip

    def _grant_run_guard(self, workflow: Workflow) -> None:
        """The plan step refuses to resume a run whose execution is still running: it asks Step Functions
        (DescribeExecution on the `execution` resource type, arn:...:execution:{StateMachineName}:{ExecutionId},
        https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsstepfunctions.html)."""
        if "plan" in self.functions:
            self.functions["plan"].add_to_role_policy(iam.PolicyStatement(
                sid="RunGuard", actions=["states:DescribeExecution"], resources=[workflow.executions_arn]))  # fmt: skip

    def _secret_arns(self) -> list[str]:
        """ARNs of the source secrets; one referenced by name gets Secrets Manager's 6-character suffix pattern."""
        return [s.secret_arn if s.secret_full_arn else f"{s.secret_arn}-??????" for s in self.secrets.values()]

    # ------------------------------------------------------------------------------------------------------
    # the workflow
    # ------------------------------------------------------------------------------------------------------
    @property
    def state_machine_name(self) -> str:
        return self.machine_name("harvest")

    def machine_name(self, key: str) -> str:
        return f"{self.stack_name}-{key}"[:80]

    def _stack_suffix(self) -> str:
        """The first group of the stack id's UUID: differs between two creations of the same stack."""
        return cdk.Fn.select(0, cdk.Fn.split("-", cdk.Fn.select(2, cdk.Fn.split("/", self.stack_id))))

    @staticmethod
    def definition_text(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:  # a broken file fails the synth here, naming the file
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        return text

    def substitutions(self, keys: tuple[str, ...]) -> dict[str, str]:
        values: dict[str, str] = {}
        for key in keys:
            if key.endswith("FunctionArn"):
                name = key[: -len("FunctionArn")].lower()
                if name not in self.aliases:
                    raise ValueError(f"no function {name!r} for the definition substitution {key}")
                values[key] = self.aliases[name].function_arn
            elif key == "BucketName":
                values[key] = self.bucket.bucket_name
            elif key == "LedgerTableName":
                values[key] = self.table.table_name
            else:
                raise ValueError(f"no value for the definition placeholder ${{{key}}} (CDK can fill *FunctionArn of "
                                 f"FUNCTION_CATALOG, BucketName, LedgerTableName)")
        return values

    @staticmethod
    def map_results_prefix(reader_prefix: str) -> str:
        """Where a workflow's ResultWriters write (`runs/{source}/{run_id}/map-results/`, `queries/{id}/map-results/`)."""
        return f"{reader_prefix}*/map-results/"

    def _workflow(self, key: str, path: Path, text: str, keys: tuple[str, ...], reader_prefix: str) -> Workflow:
        name = self.machine_name(key)
        cid = key.capitalize()
        log_group = logs.LogGroup(
            self,
            "StateMachineLogs" if key == "harvest" else f"{cid}StateMachineLogs",
            # the /aws/vendedlogs/ prefix keeps CloudWatch Logs' resource policy from growing per log group; the
            # suffix (from the stack's id) keeps a retained log group from blocking a re-created stack
            log_group_name=cdk.Fn.join("", [f"/aws/vendedlogs/states/{name}-", self._stack_suffix()]),
            retention=self.config.log_retention,
            removal_policy=self.removal_policy,
        )
        substitutions = self.substitutions(keys)
        machine = sfn.StateMachine(
            self,
            f"{cid}StateMachine",
            state_machine_name=name,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_string(text),
            definition_substitutions=substitutions,
            logs=sfn.LogOptions(destination=log_group, level=getattr(sfn.LogLevel, self.config.workflowLogLevel),
                                include_execution_data=True),
            tracing_enabled=True,
            # holds no data; a retained one would block re-creating the stack (its name is fixed)
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

        # the ARNs of this state machine and its executions, built from the fixed name (no circular dependency)
        def arn(resource: str, resource_name: str) -> str:
            return self.format_arn(service="states", resource=resource, resource_name=resource_name,
                                   arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)  # fmt: skip

        qualified_arn, executions_arn = arn("stateMachine", f"{name}:*"), arn("execution", f"{name}:*")
        map_run_children_arn = arn("execution", f"{name}/*")
        called = [self.aliases[k[: -len("FunctionArn")].lower()] for k in keys if k.endswith("FunctionArn")]
        statements = [
            iam.PolicyStatement(sid="InvokeFunctions", actions=["lambda:InvokeFunction"],
                                resources=[alias.function_arn for alias in called]),
            # Distributed Map: ItemReader reads the items (manifests, plans, tasks) the previous state wrote
            iam.PolicyStatement(sid="ReadManifests", actions=["s3:GetObject"],
                                resources=[self.bucket.arn_for_objects(f"{reader_prefix}*")]),
            # Distributed Map: child workflow executions of this very state machine
            # (an execution started through a version or alias starts its children on that qualified ARN)
            iam.PolicyStatement(sid="StartChildExecutions", actions=["states:StartExecution"],
                                resources=[arn("stateMachine", name), qualified_arn]),
            iam.PolicyStatement(sid="ManageChildExecutions", actions=["states:DescribeExecution", "states:StopExecution"],
                                resources=[executions_arn]),
            # redriving a failed Map Run (console or RedriveExecution of the parent) restarts its failed child
            # executions, arn:...:execution:{name}/{mapRunLabel}:{id}, as this role ("IAM permission to redrive a
            # Map Run", https://docs.aws.amazon.com/step-functions/latest/dg/redrive-map-run.html)
            iam.PolicyStatement(sid="RedriveMapRuns", actions=["states:RedriveExecution"],
                                resources=[map_run_children_arn]),
        ]  # fmt: skip
        if '"ResultWriter"' in text:
            # Distributed Map ResultWriter: every child's result under {prefix}.../map-results/{map run id}/ (the
            # actions of "IAM policies for ResultWriter",
            # https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html)
            statements.append(iam.PolicyStatement(
                sid="WriteMapResults",
                actions=["s3:PutObject", "s3:GetObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                resources=[self.bucket.arn_for_objects(self.map_results_prefix(reader_prefix) + "*")]))  # fmt: skip
        if "LedgerTableName" in keys:
            # run start/finish and batch failures are written by the workflow itself (direct integration)
            statements.append(iam.PolicyStatement(
                sid="LedgerWrites", actions=["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:GetItem"],
                resources=[self.table.table_arn]))  # fmt: skip
        for statement in statements:
            machine.add_to_role_policy(statement)

        # a version per deploy that changes the workflow (kept on replacement, so there is one to roll back to)
        # and the `live` alias that schedules and people start runs with
        version = sfn.CfnStateMachineVersion(
            self, f"{cid}StateMachineVersion", state_machine_arn=machine.state_machine_arn,
            state_machine_revision_id=machine.state_machine_revision_id,
            description="published by cdk deploy")  # fmt: skip
        version.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
        alias = sfn.CfnStateMachineAlias(
            self, f"{cid}StateMachineLiveAlias", name=LIVE,
            description=f"the {key} workflow version that schedules and people start",
            routing_configuration=[sfn.CfnStateMachineAlias.RoutingConfigurationVersionProperty(
                state_machine_version_arn=version.attr_arn, weight=100)])  # fmt: skip
        return Workflow(key=key, definition_path=path, machine=machine, version=version, alias=alias, name=name,
                        qualified_arn=qualified_arn, executions_arn=executions_arn, reader_prefix=reader_prefix,
                        map_run_children_arn=map_run_children_arn)  # fmt: skip

    # ------------------------------------------------------------------------------------------------------
    # cdk-nag: what is accepted, where, and why (listed in the README by scripts/nag_acknowledgments.py)
    # ------------------------------------------------------------------------------------------------------
    def _acknowledge_nag_findings(self) -> None:
        def ack(scope, rule: str, reason: str) -> None:
            nag.acknowledge(scope, rule, reason, self.nag_acknowledgments)

        def objects(prefix: str) -> str:
            return nag.finding_resource(self, self.bucket.arn_for_objects(f"{prefix}*"))

        prefix_reasons = {
            "runs/": "run state under runs/{source}/{run_id}/ (spec, manifests, checkpoints, convert plans) is keyed per run",
            "raw/": "records under raw/{source}/{run_id}/{level}/ are keyed per run and batch",
            "runs/*/staging/": "Parquet staging files under runs/{source}/{run_id}/staging/ are removed once compacted",
            "processed/": "Parquet files under processed/{source}/{level}/{partition}/ are keyed per partition and run "
                          "(compaction replaces them)",
            "queries/": "query tasks and partial aggregates under queries/{query_id}/ are keyed per query",
            "results/": "query results are written as results/{query_id}.json and .csv",
        }  # fmt: skip
        suffix = ", so the keys cannot be listed in advance; the grant is this prefix of the one data bucket, with only the object actions this role needs"
        xray_reason = "X-Ray PutTraceSegments/PutTelemetryRecords do not support resource-level permissions (Tracing.ACTIVE)"
        for name, fn in self.functions.items():
            policy = fn.role.node.find_child("DefaultPolicy").node.default_child
            ack(policy, "AwsSolutions-IAM5[Resource::*]", xray_reason)
            for prefix in self.function_access[name].object_prefixes:
                ack(policy, f"AwsSolutions-IAM5[Resource::{objects(prefix)}]", prefix_reasons[prefix] + suffix)
            ack(fn.node.default_child, "AwsSolutions-L1",
                "python3.12 is pinned on purpose: stacks/bundling.py installs cp312 wheels for it; a newer runtime is a "
                "deliberate change of RUNTIME and PYTHON_VERSION together, checked by the packaging test")  # fmt: skip

        if "plan" in self.functions:
            harvest = self.workflows["harvest"]
            ack(self.functions["plan"].role.node.find_child("DefaultPolicy").node.default_child,
                f"AwsSolutions-IAM5[Resource::{nag.finding_resource(self, harvest.executions_arn)}]",
                "the plan step asks whether the execution that owns a run being resumed still runs; execution names "
                "are chosen per run; DescribeExecution only, on the executions of this one state machine")  # fmt: skip
        for workflow in self.workflows.values():
            if self.config.workflowLogLevel != "ALL":
                ack(workflow.machine.node.default_child, "AwsSolutions-SF1",
                    f"logs {self.config.workflowLogLevel} events with execution data (workflowLogLevel): ALL would log "
                    "every state of every Distributed Map child with its input and output, an ingestion cost that grows "
                    "with the run; every failure is logged, the execution history keeps the rest, -c workflowLogLevel=ALL "
                    "when debugging")  # fmt: skip
            sm_policy = workflow.machine.role.node.find_child("DefaultPolicy").node.default_child
            ack(sm_policy, "AwsSolutions-IAM5[Resource::*]",
                "CloudWatch Logs log-delivery actions (CreateLogDelivery, PutResourcePolicy, ...) and X-Ray do not "
                "support resource-level permissions; CDK adds them for the state machine's logging and tracing")  # fmt: skip
            ack(sm_policy, f"AwsSolutions-IAM5[Resource::{objects(workflow.reader_prefix)}]",
                f"the Distributed Map's ItemReader reads the items a previous state wrote under {workflow.reader_prefix} "
                "(keys created per run or query); GetObject only")  # fmt: skip
            if '"ResultWriter"' in workflow.definition_path.read_text(encoding="utf-8"):
                ack(sm_policy, f"AwsSolutions-IAM5[Resource::{objects(self.map_results_prefix(workflow.reader_prefix))}]",
                    "the Distributed Maps' ResultWriter writes each Map Run's results under a folder named by the run "
                    "or query and the Map Run id Step Functions assigns, so the keys cannot be listed in advance; only "
                    "the object actions the ResultWriter needs")  # fmt: skip
            ack(sm_policy, f"AwsSolutions-IAM5[Resource::{nag.finding_resource(self, workflow.qualified_arn)}]",
                "an execution started through the live alias or a version starts its Distributed Map children on that "
                "qualified ARN; version numbers are assigned at publish time; only this state machine's versions/aliases")  # fmt: skip
            ack(sm_policy, f"AwsSolutions-IAM5[Resource::{nag.finding_resource(self, workflow.map_run_children_arn)}]",
                "redriving a failed Map Run restarts its child executions, named by Step Functions under each "
                "Distributed Map's label; RedriveExecution only, on the child executions of this one state machine")  # fmt: skip
            ack(sm_policy, f"AwsSolutions-IAM5[Resource::{nag.finding_resource(self, workflow.executions_arn)}]",
                "Distributed Map child executions get names chosen by Step Functions; Describe/StopExecution is "
                "limited to the executions of this one state machine")  # fmt: skip

        for source in self.sources:
            secret = self.secrets[source.name]
            if isinstance(secret, secretsmanager.Secret):
                ack(secret.node.default_child, "AwsSolutions-SMG4",
                    f"holds the API key the vendor of source {source.name!r} issues; only the vendor can issue a new "
                    "one, so no rotation Lambda can rotate it: rotate by putting the new key (stacks/README.md)")  # fmt: skip

        if not self.config.accessLogs:
            ack(self.bucket.node.default_child, "AwsSolutions-S1",
                "server access logs switched off by the deployer with -c accessLogs=false (on by default); object-level "
                "activity can still be audited with CloudTrail data events")  # fmt: skip
        if self.schedules:
            ack(self.schedules.dead_letter_queue.node.default_child, "AwsSolutions-SQS3",
                "this queue is itself the dead-letter queue of the schedules (failed run starts); it is alarmed on, "
                "not re-driven automatically")  # fmt: skip

    def _outputs(self) -> None:
        example = self.sources[0].name if self.sources else "demo"
        cdk.CfnOutput(self, "StateMachineArn", value=self.state_machine.state_machine_arn,
                      description="The workflow (latest revision); the console shows its runs here")  # fmt: skip
        cdk.CfnOutput(self, "StateMachineAliasArn", value=self.state_machine_alias.ref,
                      description="Start runs here (the live alias; schedules use it too)")  # fmt: skip
        if "query" in self.workflows:
            cdk.CfnOutput(self, "QueryStateMachineAliasArn", value=self.workflows["query"].alias.ref,
                          description="Start queries over the Parquet lake here (results under results/)")  # fmt: skip
        cdk.CfnOutput(self, "BucketName", value=self.bucket.bucket_name,
                      description="raw/{source}/{run_id}/... records, runs/... run state")  # fmt: skip
        cdk.CfnOutput(self, "LedgerTableName", value=self.table.table_name, description="DynamoDB run ledger")
        cdk.CfnOutput(self, "ExampleExecutionInput", value=json.dumps({"source": example}),
                      description='Execution input; optional "run_id", or "resume": "<run_id>"')  # fmt: skip
        cdk.CfnOutput(self, "AlarmTopicArn", value=self.observability.topic.topic_arn,
                      description="Alarms are sent here (subscribe with -c alarmEmail=... or in the console)")  # fmt: skip
        cdk.CfnOutput(self, "DashboardName", value=self.observability.dashboard.dashboard_name)
        cdk.CfnOutput(self, "Sources", value=",".join(s.name for s in self.sources) or "(none)",
                      description="Deployed sources (each one's API key goes in its secret: SourceSecrets)")  # fmt: skip
        if self.secrets:
            cdk.CfnOutput(self, "SourceSecrets",
                          value=cdk.Fn.join(",", [cdk.Fn.join("=", [name, secret.secret_name])
                                                  for name, secret in self.secrets.items()]),
                          description="source=secret name: put each vendor's API key in its secret "
                                      "(aws secretsmanager put-secret-value --secret-id NAME --secret-string KEY)")  # fmt: skip
