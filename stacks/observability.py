"""One CloudWatch dashboard per deployment and the alarms, to an SNS topic (e-mail from `-c alarmEmail=...`).

Hand-written with aws_cloudwatch rather than cdk-monitoring-constructs: half of what matters here is the
harvester's own Powertools metrics (namespace `Harvester`, dimensions service/source/level), which need
custom widgets either way, and this keeps the app free of another jsii library to load on every synth.

Alarms: a failed, timed-out or aborted execution; a run longer than `expectedRunMinutes`; sustained 429s per
source; a scheduled start that failed (a message in the schedules' dead-letter queue).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

if TYPE_CHECKING:  # pragma: no cover
    from stacks.harvester_stack import HarvesterStack

NAMESPACE = "Harvester"  # POWERTOOLS_METRICS_NAMESPACE
SERVICE = "harvester"  # POWERTOOLS_SERVICE_NAME: Powertools adds it as the `service` dimension
FIVE_MINUTES = cdk.Duration.minutes(5)
#: CloudWatch alarms accept at most 10 metrics in one math expression
MAX_ALARM_METRICS = 10


def _search(metric: str, stat: str, source: str | None = None, period: int = 60) -> str:
    where = f' source="{source}"' if source else ""
    return f"SEARCH('{{{NAMESPACE},level,service,source}} MetricName=\"{metric}\"{where}', '{stat}', {period})"


class Observability(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, stack: "HarvesterStack") -> None:
        super().__init__(scope, construct_id)
        config = stack.config
        machine_arns = {
            "latest": stack.state_machine.state_machine_arn,
            "live": stack.state_machine_alias.ref,
        }

        # --- the topic -----------------------------------------------------------------------------------
        # a customer-managed key: CloudWatch cannot publish to a topic encrypted with the AWS-managed aws/sns key
        self.key = kms.Key(self, "AlarmTopicKey", description="harvester alarm topic", enable_key_rotation=True,
                           removal_policy=stack.removal_policy)  # fmt: skip
        self.key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        self.topic = sns.Topic(self, "AlarmTopic", display_name=f"{stack.stack_name} alarms", master_key=self.key,
                               enforce_ssl=True)  # fmt: skip
        # the topic policy CDK writes (enforce_ssl) replaces SNS's default one, so CloudWatch needs its own statement,
        # kept to this account's alarms (aws:SourceArn/aws:SourceAccount against the confused deputy: "Amazon SNS
        # access control case examples", https://docs.aws.amazon.com/sns/latest/dg/sns-access-policy-use-cases.html)
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarms", actions=["sns:Publish"], resources=[self.topic.topic_arn],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            conditions={"ArnLike": {"aws:SourceArn": stack.format_arn(service="cloudwatch", resource="alarm",
                                                                     resource_name="*",
                                                                     arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)},
                        "StringEquals": {"aws:SourceAccount": stack.account}}))  # fmt: skip
        if config.alarmEmail:
            self.topic.add_subscription(subs.EmailSubscription(config.alarmEmail))
        self.alarms: dict[str, cw.Alarm] = {}

        # --- executions ----------------------------------------------------------------------------------
        def states_metric(name: str, arn: str, stat: str = "Sum") -> cw.Metric:
            return cw.Metric(namespace="AWS/States", metric_name=name, dimensions_map={"StateMachineArn": arn},
                             statistic=stat, period=FIVE_MINUTES)  # fmt: skip

        failed_terms: dict[str, cw.IMetric] = {}
        for label, arn in machine_arns.items():
            for name in ("ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"):
                failed_terms[f"{name[10:].lower()}_{label}"] = states_metric(name, arn)
        failed = cw.MathExpression(
            expression=" + ".join(f"FILL({k}, 0)" for k in failed_terms), using_metrics=failed_terms,
            label="failed, timed-out or aborted executions", period=FIVE_MINUTES)  # fmt: skip
        self._alarm("ExecutionFailed", failed, threshold=1, periods=1,
                    description="A harvest execution failed, timed out or was aborted (Harvest.Incomplete included: "
                                "see the run in the ledger and resume it)")  # fmt: skip

        duration_terms = {f"time_{label}": states_metric("ExecutionTime", arn, "Maximum")
                          for label, arn in machine_arns.items()}  # fmt: skip
        duration = cw.MathExpression(
            expression=f"MAX([{', '.join(f'FILL({k}, 0)' for k in duration_terms)}]) / 60000",
            using_metrics=duration_terms, label="longest execution (minutes)", period=FIVE_MINUTES)  # fmt: skip
        self._alarm("RunTooLong", duration, threshold=config.expectedRunMinutes, periods=1,
                    description=f"A harvest run took longer than {config.expectedRunMinutes} minutes "
                                "(-c expectedRunMinutes=...)")  # fmt: skip

        # --- 429s per source -----------------------------------------------------------------------------
        for source in stack.sources:
            levels = source.levels[:MAX_ALARM_METRICS] or ()
            if not levels:
                continue
            terms = {
                f"t{i}": cw.Metric(namespace=NAMESPACE, metric_name="Throttled", statistic="Sum", period=FIVE_MINUTES,
                                   dimensions_map={"service": SERVICE, "source": source.name, "level": level})
                for i, level in enumerate(levels)
            }  # fmt: skip
            throttled = cw.MathExpression(expression=" + ".join(f"FILL({k}, 0)" for k in terms), using_metrics=terms,
                                          label=f"429 answers from {source.name}", period=FIVE_MINUTES)  # fmt: skip
            self._alarm(f"Throttled-{source.name}", throttled, threshold=config.throttledAlarmThreshold, periods=3,
                        description=f"Source {source.name!r}: the vendor answered 429 at least "
                                    f"{config.throttledAlarmThreshold} times in each of 3 consecutive 5-minute periods; "
                                    "lower rate_limit in its spec")  # fmt: skip

        # --- scheduled starts ----------------------------------------------------------------------------
        if stack.schedules:
            dlq = stack.schedules.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=FIVE_MINUTES, statistic="Maximum")
            self._alarm("ScheduledStartFailed", dlq, threshold=1, periods=1,
                        description="A scheduled run could not be started (the message in the schedules' dead-letter "
                                    "queue says which source and why)")  # fmt: skip

        # --- the dashboard -------------------------------------------------------------------------------
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{stack.stack_name}-harvester",
                                      default_interval=cdk.Duration.days(1))  # fmt: skip
        minute = cdk.Duration.minutes(1)
        runs = [
            cw.MathExpression(expression="FILL(s_latest, 0) + FILL(s_live, 0)", label="started", period=FIVE_MINUTES,
                              using_metrics={"s_latest": states_metric("ExecutionsStarted", machine_arns["latest"]),
                                             "s_live": states_metric("ExecutionsStarted", machine_arns["live"])}),
            cw.MathExpression(expression="FILL(ok_latest, 0) + FILL(ok_live, 0)", label="succeeded", period=FIVE_MINUTES,
                              using_metrics={"ok_latest": states_metric("ExecutionsSucceeded", machine_arns["latest"]),
                                             "ok_live": states_metric("ExecutionsSucceeded", machine_arns["live"])}),
            failed,
        ]  # fmt: skip
        calls_widgets: list[cw.IWidget] = []
        for source in stack.sources:
            calls = cw.MathExpression(expression=f"SUM({_search('Calls', 'Sum', source.name)}) / 60",
                                      label=f"{source.name} calls/s", period=minute)  # fmt: skip
            limit = [cw.HorizontalAnnotation(value=source.requests_per_second, label="vendor limit",
                                             color=cw.Color.RED)] if source.requests_per_second else []  # fmt: skip
            calls_widgets.append(cw.GraphWidget(title=f"{source.name}: calls per second against the limit",
                                                left=[calls], left_annotations=limit, width=12))  # fmt: skip
        self.dashboard.add_widgets(
            cw.TextWidget(markdown=f"# {stack.stack_name}: harvester\nRuns, vendor calls against each source's limit, "
                                   "429s, latency, Lambda and DynamoDB health. Alarms go to the SNS topic in the stack output "
                                   "`AlarmTopicArn`.", width=24, height=2),
        )  # fmt: skip
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Runs (executions, incl. batch child executions)", left=runs, width=12),
            cw.GraphWidget(title="Longest run (minutes)", left=[duration], width=12,
                           left_annotations=[cw.HorizontalAnnotation(value=config.expectedRunMinutes, label="expected")]),
        )  # fmt: skip
        if calls_widgets:
            self.dashboard.add_widgets(*calls_widgets)
        self.dashboard.add_widgets(
            cw.GraphWidget(title="429 answers and retries (all sources)", width=12, left=[
                cw.MathExpression(expression=f"SUM({_search('Throttled', 'Sum')})", label="429s", period=FIVE_MINUTES),
                cw.MathExpression(expression=f"SUM({_search('Retries', 'Sum')})", label="retries", period=FIVE_MINUTES),
            ]),
            cw.GraphWidget(title="Vendor call latency (ms)", width=12, left=[
                cw.MathExpression(expression=_search("CallLatency", stat, period=300), label=stat, period=FIVE_MINUTES)
                for stat in ("p50", "p90", "p99")
            ]),
        )  # fmt: skip
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Records and rate-limiter waits", width=12, left=[
                cw.MathExpression(expression=f"SUM({_search('Records', 'Sum')})", label="records", period=FIVE_MINUTES),
            ], right=[
                cw.MathExpression(expression=f"SUM({_search('Limiter_waits', 'Sum')})", label="limiter waits",
                                  period=FIVE_MINUTES),
            ]),
            cw.GraphWidget(title="Lambda errors and throttles", width=12, left=[
                m for fn in stack.functions.values()
                for m in (fn.metric_errors(period=FIVE_MINUTES, label=f"{fn.node.id} errors"),
                          fn.metric_throttles(period=FIVE_MINUTES, label=f"{fn.node.id} throttles"))
            ]),
        )  # fmt: skip
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Ledger (DynamoDB) throttles", width=12, left=[
                stack.table.metric("ReadThrottleEvents", statistic="Sum", period=FIVE_MINUTES, label="read throttles"),
                stack.table.metric("WriteThrottleEvents", statistic="Sum", period=FIVE_MINUTES, label="write throttles"),
            ]),
            cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=12),
        )  # fmt: skip

    def _alarm(self, name: str, metric: cw.IMetric, *, threshold: float, periods: int, description: str) -> cw.Alarm:
        alarm = cw.Alarm(
            self,
            f"{name}Alarm",
            metric=metric,
            threshold=threshold,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.alarms[name] = alarm
        return alarm
