"""EventBridge Scheduler: one schedule per source whose spec has a `schedule:` block.

Each schedule starts the workflow's `live` alias with `{"source": "<name>"}` at the spec's cron and time zone,
flexible window off; a start that still fails after Scheduler's retries lands in an encrypted SQS dead-letter
queue (alarmed in stacks/observability.py). Nothing polls while idle: Scheduler is the only clock.
"""

from __future__ import annotations

import json

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks import nag
from stacks.sources import SourceInfo


class SourceSchedules(Construct):
    """The dead-letter queue, the role Scheduler assumes, and one schedule per scheduled source."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        sources: list[SourceInfo],
        target_arn: str,
        state_machine_arn: str,
        qualifier: str,
        retention_days: int = 14,
        removal_policy: cdk.RemovalPolicy = cdk.RemovalPolicy.RETAIN,
        acks: list[nag.Ack] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        scheduled = [s for s in sources if s.schedule]  # each checked by the spec parser (harvester/spec.py)
        self.schedules: dict[str, scheduler.CfnSchedule] = {}

        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(min(max(retention_days, 1), 14)),
            removal_policy=removal_policy,
        )
        account = cdk.Stack.of(self).account
        self.role = iam.Role(
            self,
            "SchedulerRole",
            description="EventBridge Scheduler: start harvester runs",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": account}}
            ),
        )
        # Step Functions authorizes a start through an alias on the state machine's own ARN, never on the alias ARN;
        # states:StateMachineQualifier keeps the grant to the alias the schedules target ("Authorization for
        # versions and aliases", https://docs.aws.amazon.com/step-functions/latest/dg/auth-version-alias.html). The
        # key is multivalued (ArrayOfString), so ForAnyValue: as in that page's example; a plain StringEquals never
        # matches it
        self.role.add_to_policy(iam.PolicyStatement(
            sid="StartRuns", actions=["states:StartExecution"], resources=[state_machine_arn],
            conditions={"ForAnyValue:StringEquals": {"states:StateMachineQualifier": [qualifier]}}))
        self.dead_letter_queue.grant_send_messages(self.role)
        nag.acknowledge(self.dead_letter_queue.node.default_child, "AwsSolutions-SQS3",
                        "this queue is itself the dead-letter queue of the schedules (failed run starts); it is "
                        "alarmed on, not re-driven automatically", acks)

        for source in scheduled:
            schedule = source.schedule
            assert schedule is not None
            self.schedules[source.name] = scheduler.CfnSchedule(
                self,
                f"Schedule-{source.name}",
                description=f"harvest source {source.name!r} ({schedule.cron}, {schedule.timezone})",
                schedule_expression=schedule.expression,
                schedule_expression_timezone=schedule.timezone,
                flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
                state="ENABLED" if schedule.enabled else "DISABLED",
                target=scheduler.CfnSchedule.TargetProperty(
                    arn=target_arn,
                    role_arn=self.role.role_arn,
                    input=json.dumps({"source": source.name}),
                    retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                        maximum_event_age_in_seconds=3600, maximum_retry_attempts=5
                    ),
                    dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(
                        arn=self.dead_letter_queue.queue_arn
                    ),
                ),
            )
