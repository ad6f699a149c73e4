"""The Lambda functions: one per entry of the catalog (`harvester/functions.py`) that a workflow calls.

Each has its bundle (stacks/bundling.py), its own log group and role, the grants its catalog entry declares
(S3 prefixes, the ledger, the source secrets) and a `live` alias on its latest version, which the workflows call.
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from harvester.functions import COMMON_ENVIRONMENT, FUNCTION_CATALOG, FunctionAccess, FunctionDef
from stacks import nag
from stacks.bundling import ARCHITECTURES, REQUIREMENTS_DIR, RUNTIME, BundleSpec, lambda_code
from stacks.config import HarvesterConfig
from stacks.logical_ids import Group
from stacks.naming import LIVE
from stacks.secrets import SourceSecrets

#: where the plan function finds the specs inside its bundle (stacks/bundling.py copies sources/ there)
LAMBDA_SOURCES_DIR = "/var/task/sources"

#: why each data prefix a function may touch has a wildcard (cdk-nag IAM5), by prefix
_PREFIX_REASONS = {
    "runs/": "run state under runs/{source}/{run_id}/ (spec, manifests, checkpoints, convert plans) is keyed per run",
    "raw/": "records under raw/{source}/{run_id}/{level}/ are keyed per run and batch",
    "runs/*/staging/": "Parquet staging files under runs/{source}/{run_id}/staging/ are removed once compacted",
    "processed/": "Parquet files under processed/{source}/{level}/{partition}/ are keyed per partition and run "
                  "(compaction replaces them)",
    "queries/": "query tasks and partial aggregates under queries/{query_id}/ are keyed per query",
    "results/": "query results are written as results/{query_id}.json and .csv",
}
_PREFIX_SUFFIX = (", so the keys cannot be listed in advance; the grant is this prefix of the one data bucket, with "
                  "only the object actions this role needs")
_XRAY_REASON = ("X-Ray PutTraceSegments/PutTelemetryRecords do not support resource-level permissions "
                "(Tracing.ACTIVE)")
_RUNTIME_REASON = ("python3.12 is pinned on purpose: stacks/bundling.py installs cp312 wheels for it; a newer runtime "
                   "is a deliberate change of RUNTIME and PYTHON_VERSION together, checked by the packaging test")


@dataclass(frozen=True)
class FunctionResources:
    """What every function is told about and may be granted: the data stores and the source secrets."""

    bucket: s3.IBucket
    table: dynamodb.ITable
    secrets: SourceSecrets
    secret_prefix: str
    config: HarvesterConfig
    removal_policy: cdk.RemovalPolicy


class HarvesterFunction(Group):
    """`function`, its `role`, `log_group` and `alias` (`live`); `access` is what its catalog entry allows."""

    def __init__(self, scope: Construct, name: str, definition: FunctionDef, resources: FunctionResources,
                 acks: list[nag.Ack]) -> None:
        cid = name.capitalize()
        super().__init__(scope, cid)
        self.name, self.access, self._resources = name, definition.access, resources
        self.log_group = logs.LogGroup(self, f"{cid}FunctionLogs", retention=resources.config.log_retention,
                                       removal_policy=resources.removal_policy)
        # an own role instead of CDK's default (AWSLambdaBasicExecutionRole lets it write to any log group)
        self.role = iam.Role(self, f"{cid}FunctionRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description=f"harvester {name} function")
        self.log_group.grant_write(self.role)
        self.function = self._function(cid, definition)
        self._grant(definition.access)
        # every deploy that changes the function publishes a version (old ones are kept, see current_version_options)
        # and moves `live` to it; the workflow calls `live`, so a rollback is one alias update
        self.alias = lambda_.Alias(self, f"{cid}LiveAlias", alias_name=LIVE, version=self.function.current_version,
                                   description=f"the {name} version the workflow calls")
        self._acknowledge(acks)

    def _function(self, cid: str, definition: FunctionDef) -> lambda_.Function:
        """The function with its bundle: wheels of its requirement list, the handler's module and the project
        modules it imports."""
        config, resources = self._resources.config, self._resources
        spec = BundleSpec(name=self.name, requirements=REQUIREMENTS_DIR / definition.requirements,
                          module=definition.handler.rsplit(".", 1)[0], architecture=config.arch)
        return lambda_.Function(
            self,
            f"{cid}Function",
            description=f"harvester {self.name}",
            runtime=RUNTIME,
            architecture=ARCHITECTURES[config.arch],
            handler=definition.handler,
            code=lambda_code(spec),
            memory_size=definition.memory_mb,
            timeout=cdk.Duration.seconds(definition.timeout_s),
            ephemeral_storage_size=cdk.Size.mebibytes(definition.ephemeral_mb) if definition.ephemeral_mb else None,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            # keep every published version when the next deploy publishes a new one: rollback points `live` back at
            # one. CDK's default for current_version is DESTROY, which deletes the old version on each deploy
            # (https://docs.aws.amazon.com/cdk/api/v2/docs/aws-cdk-lib.aws_lambda.VersionOptions.html#removalpolicy)
            current_version_options=lambda_.VersionOptions(removal_policy=cdk.RemovalPolicy.RETAIN),
            environment={
                "HARVESTER_BUCKET": resources.bucket.bucket_name,
                "HARVESTER_TABLE": resources.table.table_name,
                "HARVESTER_SOURCES_DIR": LAMBDA_SOURCES_DIR,
                "HARVESTER_SECRET_PREFIX": resources.secret_prefix,
                **COMMON_ENVIRONMENT,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                **definition.environment,
            },
        )

    def _grant(self, access: FunctionAccess) -> None:
        bucket, table = self._resources.bucket, self._resources.table
        objects = [("ReadObjects", "s3:GetObject", access.s3_read), ("WriteObjects", "s3:PutObject", access.s3_write),
                   ("DeleteObjects", "s3:DeleteObject", access.s3_delete)]
        for sid, action, prefixes in objects:
            if prefixes:
                self.add_to_role_policy(sid, [action], [bucket.arn_for_objects(f"{p}*") for p in prefixes])
        if access.prefixes:
            # lets a missing key answer 404 (NoSuchKey) instead of 403 AccessDenied: S3 decides that with the
            # GetObject/HeadObject request, which has no s3:prefix key, so a plain StringLike on s3:prefix denied it
            # and a batch's first checkpoint read failed (https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html,
            # "If you don't have the s3:ListBucket permission, Amazon S3 returns an HTTP status code 403").
            # ...IfExists: true when the key is absent; a listing that names a prefix stays within these prefixes
            # (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_elements_condition_operators.html#Conditions_IfExists)
            listed = {"StringLikeIfExists": {"s3:prefix": [f"{p}*" for p in access.prefixes]}}
            self.add_to_role_policy("ListPrefixes", ["s3:ListBucket"], [bucket.bucket_arn], conditions=listed)
        ledger = [table.table_arn, f"{table.table_arn}/index/gsi1"]
        if access.ledger_read_only:
            self.add_to_role_policy("LedgerRead", ["dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchGetItem"],
                                    ledger)
        elif access.ledger:
            self.add_to_role_policy("Ledger", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                                               "dynamodb:Query", "dynamodb:BatchGetItem", "dynamodb:BatchWriteItem",
                                               "dynamodb:ConditionCheckItem"], ledger)
        if access.secrets and self._resources.secrets.secrets:
            self.add_to_role_policy("SourceSecrets", ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"],
                                    self._resources.secrets.arns())

    def add_to_role_policy(self, sid: str, actions: list[str], resources: list[str], **kwargs) -> None:
        self.function.add_to_role_policy(iam.PolicyStatement(sid=sid, actions=actions, resources=resources, **kwargs))

    @property
    def policy(self) -> iam.CfnPolicy:
        """The role's policy (the grants above and CDK's X-Ray and log statements): where its findings are."""
        return self.role.node.find_child("DefaultPolicy").node.default_child

    def _acknowledge(self, acks: list[nag.Ack]) -> None:
        stack = cdk.Stack.of(self)
        nag.acknowledge(self.policy, "AwsSolutions-IAM5[Resource::*]", _XRAY_REASON, acks)
        for prefix in self.access.object_prefixes:
            resource = nag.finding_resource(stack, self._resources.bucket.arn_for_objects(f"{prefix}*"))
            nag.acknowledge(self.policy, f"AwsSolutions-IAM5[Resource::{resource}]",
                            _PREFIX_REASONS[prefix] + _PREFIX_SUFFIX, acks)
        nag.acknowledge(self.function.node.default_child, "AwsSolutions-L1", _RUNTIME_REASON, acks)


class Functions(Group):
    """`by_name`: the functions the workflows call (`${PlanFunctionArn}` -> plan), in catalog order."""

    def __init__(self, scope: Construct, construct_id: str, *, names: set[str], resources: FunctionResources,
                 acks: list[nag.Ack]) -> None:
        super().__init__(scope, construct_id)
        unknown = names - set(FUNCTION_CATALOG)
        if unknown:
            raise ValueError(f"the workflow definitions call functions {sorted(unknown)} that FUNCTION_CATALOG "
                             f"(harvester/functions.py) lacks: add one line each")
        self.by_name: dict[str, HarvesterFunction] = {
            name: HarvesterFunction(self, name, definition, resources, acks)
            for name, definition in FUNCTION_CATALOG.items() if name in names
        }
