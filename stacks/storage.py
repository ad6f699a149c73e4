"""The data stores: the data bucket (with its access-log bucket) and the ledger table.

Their logical ids are pinned (tests/infrastructure/test_logical_ids.py): a new one would make CloudFormation
create an empty bucket or table and leave the data in the retained old one.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks import nag
from stacks.config import HarvesterConfig
from stacks.logical_ids import Group


class Storage(Group):
    """`bucket`: raw records, run state, the lake, queries (docs/architecture.md, "S3 layout"); `table`: the
    ledger (runs, batches, the time index, rate buckets); `access_logs_bucket`: the bucket's server access logs."""

    def __init__(self, scope: Construct, construct_id: str, *, config: HarvesterConfig,
                 removal_policy: cdk.RemovalPolicy, acks: list[nag.Ack]) -> None:
        super().__init__(scope, construct_id)
        self._config, self._removal_policy = config, removal_policy
        self.access_logs_bucket = self._access_logs_bucket() if config.accessLogs else None
        self.bucket = self._data_bucket()
        self.table = self._ledger_table()
        if not config.accessLogs:
            nag.acknowledge(self.bucket.node.default_child, "AwsSolutions-S1",
                            "server access logs switched off by the deployer with -c accessLogs=false (on by "
                            "default); object-level activity can still be audited with CloudTrail data events", acks)

    def _access_logs_bucket(self) -> s3.Bucket:
        return s3.Bucket(
            self,
            "AccessLogsBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,  # the only encryption S3 server access logging supports
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs",
                                              expiration=cdk.Duration.days(max(self._config.logRetentionDays, 1)))],
            removal_policy=self._removal_policy,
            auto_delete_objects=False,
        )

    def _data_bucket(self) -> s3.Bucket:
        lifecycle = [s3.LifecycleRule(id="abort-incomplete-uploads",
                                      abort_incomplete_multipart_upload_after=cdk.Duration.days(1))]
        if self._config.versioning:
            lifecycle.append(s3.LifecycleRule(id="expire-old-versions",
                                              noncurrent_version_expiration=cdk.Duration.days(30)))
        return s3.Bucket(
            self,
            "DataBucket",
            bucket_name=self._config.bucketName or None,
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=self._config.versioning,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs_bucket,
            server_access_logs_prefix="data-bucket/" if self.access_logs_bucket else None,
            lifecycle_rules=lifecycle,
            removal_policy=self._removal_policy,
        )

    def _ledger_table(self) -> dynamodb.Table:
        table = dynamodb.Table(
            self,
            "LedgerTable",
            table_name=self._config.tableName or None,
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expires_at",
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            deletion_protection=self._config.deletionProtection,
            removal_policy=self._removal_policy,
        )
        table.add_global_secondary_index(
            index_name="gsi1",
            partition_key=dynamodb.Attribute(name="gsi1pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="gsi1sk", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        return table
