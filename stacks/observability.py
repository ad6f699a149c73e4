"""One CloudWatch dashboard per deployment and the alarms, to an SNS topic (e-mail from `-c alarmEmail=...`).

Hand-written with aws_cloudwatch rather than cdk-monitoring-constructs: half of what matters here is the
harvester's own Powertools metrics (namespace `Harvester`, dimensions service/source), which need
custom widgets either way, and this keeps the app free of another jsii library to load on every synth.

Alarms: a failed, timed-out or aborted execution; a run longer than `expectedRunMinutes`; sustained 429s per
source; a scheduled start that failed (a message in the schedules' dead-letter queue).
"""

from __future__ import annotations

from dataclasses import dataclass

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from harvester.functions import METRICS_NAMESPACE, SERVICE_NAME
from stacks.config import HarvesterConfig
from stacks.sources import SourceInfo

NAMESPACE = METRICS_NAMESPACE  # the functions' Powertools metrics namespace
SERVICE = SERVICE_NAME  # Powertools adds it as the `service` dimension
FIVE_MINUTES = cdk.Duration.minutes(5)


def _search(metric: str, stat: str, source: str | None = None, period: int = 60) -> str:
    where = f' source="{source}"' if source else ""
    return f"SEARCH('{{{NAMESPACE},service,source}} MetricName=\"{metric}\"{where}', '{stat}', {period})"


@dataclass(frozen=True)
class ObservedResources:
    """What the alarms and the dashboard watch: the harvest workflow (its latest revision and its `live` alias),
    the sources, the functions, the ledger table and, when there are schedules, their dead-letter queue."""

    stack_name: str
    machine_arn: str
    alias_arn: str
    sources: list[SourceInfo]
    functions: list[lambda_.IFunction]
    table: dynamodb.ITable
    dead_letter_queue: sqs.IQueue | None = None


def _states_metric(name: str, arn: str, stat: str = "Sum") -> cw.Metric:
    return cw.Metric(namespace="AWS/States", metric_name=name, dimensions_map={"StateMachineArn": arn},
                     statistic=stat, period=FIVE_MINUTES)


def _sum(terms: dict[str, cw.IMetric], label: str) -> cw.MathExpression:
    return cw.MathExpression(expression=" + ".join(f"FILL({k}, 0)" for k in terms), using_metrics=terms,
                             label=label, period=FIVE_MINUTES)


class Observability(Construct):
    """`topic` (KMS-encrypted, `key`), `alarms` by name, `dashboard`."""

    def __init__(self, scope: Construct, construct_id: str, *, config: HarvesterConfig, watched: ObservedResources,
                 removal_policy: cdk.RemovalPolicy) -> None:
        super().__init__(scope, construct_id)
        self._config, self._watched = config, watched
        self._machine_arns = {"latest": watched.machine_arn, "live": watched.alias_arn}
        self.alarms: dict[str, cw.Alarm] = {}
        self._topic(removal_policy)
        failed, duration = self._execution_alarms()
        self._throttle_alarms()
        if watched.dead_letter_queue:
            dlq = watched.dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=FIVE_MINUTES, statistic="Maximum")
            self._alarm("ScheduledStartFailed", dlq, threshold=1, periods=1,
                        description="A scheduled run could not be started (the message in the schedules' dead-letter "
                                    "queue says which source and why)")
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"{watched.stack_name}-harvester",
                                      default_interval=cdk.Duration.days(1))
        self._dashboard(failed, duration)

    def _topic(self, removal_policy: cdk.RemovalPolicy) -> None:
        stack = cdk.Stack.of(self)
        # a customer-managed key: CloudWatch cannot publish to a topic encrypted with the AWS-managed aws/sns key
        self.key = kms.Key(self, "AlarmTopicKey", description="harvester alarm topic", enable_key_rotation=True,
                           removal_policy=removal_policy)
        self.key.grant(iam.ServicePrincipal("cloudwatch.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        self.topic = sns.Topic(self, "AlarmTopic", display_name=f"{self._watched.stack_name} alarms",
                               master_key=self.key, enforce_ssl=True)
        # the topic policy CDK writes (enforce_ssl) replaces SNS's default one, so CloudWatch needs its own statement,
        # kept to this account's alarms (aws:SourceArn/aws:SourceAccount against the confused deputy: "Amazon SNS
        # access control case examples", https://docs.aws.amazon.com/sns/latest/dg/sns-access-policy-use-cases.html)
        alarms_arn = stack.format_arn(service="cloudwatch", resource="alarm", resource_name="*",
                                      arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarms", actions=["sns:Publish"], resources=[self.topic.topic_arn],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            conditions={"ArnLike": {"aws:SourceArn": alarms_arn},
                        "StringEquals": {"aws:SourceAccount": stack.account}}))
        if self._config.alarmEmail:
            self.topic.add_subscription(subs.EmailSubscription(self._config.alarmEmail))

    def _execution_alarms(self) -> tuple[cw.MathExpression, cw.MathExpression]:
        failed_terms: dict[str, cw.IMetric] = {}
        for label, arn in self._machine_arns.items():
            for name in ("ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"):
                failed_terms[f"{name[10:].lower()}_{label}"] = _states_metric(name, arn)
        failed = _sum(failed_terms, "failed, timed-out or aborted executions")
        self._alarm("ExecutionFailed", failed, threshold=1, periods=1,
                    description="A harvest execution failed, timed out or was aborted (Harvest.Incomplete included: "
                                "see the run in the ledger and resume it)")
        duration_terms = {f"time_{label}": _states_metric("ExecutionTime", arn, "Maximum")
                          for label, arn in self._machine_arns.items()}
        duration = cw.MathExpression(
            expression=f"MAX([{', '.join(f'FILL({k}, 0)' for k in duration_terms)}]) / 60000",
            using_metrics=duration_terms, label="longest execution (minutes)", period=FIVE_MINUTES)
        minutes = self._config.expectedRunMinutes
        self._alarm("RunTooLong", duration, threshold=minutes, periods=1,
                    description=f"A harvest run took longer than {minutes} minutes (-c expectedRunMinutes=...)")
        return failed, duration

    def _throttle_alarms(self) -> None:
        """429s per source: its `Throttled` metric (all levels: the fetch handler publishes no level dimension)."""
        threshold = self._config.throttledAlarmThreshold
        for source in self._watched.sources:
            if not source.levels:
                continue
            throttled = cw.Metric(namespace=NAMESPACE, metric_name="Throttled", statistic="Sum", period=FIVE_MINUTES,
                                  dimensions_map={"service": SERVICE, "source": source.name},
                                  label=f"429 answers from {source.name}")
            self._alarm(f"Throttled-{source.name}", throttled, threshold=threshold, periods=3,
                        description=f"Source {source.name!r}: the vendor answered 429 at least {threshold} times in "
                                    "each of 3 consecutive 5-minute periods; lower rate_limit in its spec")

    def _dashboard(self, failed: cw.IMetric, duration: cw.IMetric) -> None:
        arns = self._machine_arns
        runs = [
            _sum({"s_latest": _states_metric("ExecutionsStarted", arns["latest"]),
                  "s_live": _states_metric("ExecutionsStarted", arns["live"])}, "started"),
            _sum({"ok_latest": _states_metric("ExecutionsSucceeded", arns["latest"]),
                  "ok_live": _states_metric("ExecutionsSucceeded", arns["live"])}, "succeeded"),
            failed,
        ]
        self.dashboard.add_widgets(cw.TextWidget(
            markdown=f"# {self._watched.stack_name}: harvester\nRuns, vendor calls against each source's limit, 429s, "
                     "latency, Lambda and DynamoDB health. Alarms go to the SNS topic in the stack output "
                     "`AlarmTopicArn`.", width=24, height=2))
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Runs (executions, incl. batch child executions)", left=runs, width=12),
            cw.GraphWidget(title="Longest run (minutes)", left=[duration], width=12, left_annotations=[
                cw.HorizontalAnnotation(value=self._config.expectedRunMinutes, label="expected")]),
        )
        calls_widgets = [self._calls_widget(source) for source in self._watched.sources]
        if calls_widgets:
            self.dashboard.add_widgets(*calls_widgets)
        self._health_widgets()

    @staticmethod
    def _calls_widget(source: SourceInfo) -> cw.GraphWidget:
        calls = cw.MathExpression(expression=f"SUM({_search('Calls', 'Sum', source.name)}) / 60",
                                  label=f"{source.name} calls/s", period=cdk.Duration.minutes(1))
        rate = source.requests_per_second
        limit = [cw.HorizontalAnnotation(value=rate, label="vendor limit", color=cw.Color.RED)] if rate else []
        return cw.GraphWidget(title=f"{source.name}: calls per second against the limit", left=[calls],
                              left_annotations=limit, width=12)

    def _health_widgets(self) -> None:
        def total(metric: str, label: str) -> cw.MathExpression:
            return cw.MathExpression(expression=f"SUM({_search(metric, 'Sum')})", label=label, period=FIVE_MINUTES)

        self.dashboard.add_widgets(
            cw.GraphWidget(title="429 answers and retries (all sources)", width=12,
                           left=[total("Throttled", "429s"), total("Retries", "retries")]),
            cw.GraphWidget(title="Vendor call latency (ms)", width=12, left=[
                cw.MathExpression(expression=_search("CallLatency", stat, period=300), label=stat, period=FIVE_MINUTES)
                for stat in ("p50", "p90", "p99")
            ]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Records and rate-limiter waits", width=12, left=[total("Records", "records")],
                           right=[total("Limiter_waits", "limiter waits")]),
            cw.GraphWidget(title="Lambda errors and throttles", width=12, left=[
                m for fn in self._watched.functions
                for m in (fn.metric_errors(period=FIVE_MINUTES, label=f"{fn.node.id} errors"),
                          fn.metric_throttles(period=FIVE_MINUTES, label=f"{fn.node.id} throttles"))
            ]),
        )
        table = self._watched.table
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Ledger (DynamoDB) throttles", width=12, left=[
                table.metric("ReadThrottleEvents", statistic="Sum", period=FIVE_MINUTES, label="read throttles"),
                table.metric("WriteThrottleEvents", statistic="Sum", period=FIVE_MINUTES, label="write throttles"),
            ]),
            cw.AlarmStatusWidget(title="Alarms", alarms=list(self.alarms.values()), width=12),
        )

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
