"""Deploy-time configuration: CDK context (`-c key=value` or cdk.json) with safe defaults.

Every key can also come from the environment as `HARVESTER_` + the key in upper snake case
(`alarmEmail` -> `HARVESTER_ALARM_EMAIL`; `stackName` -> `HARVESTER_STACK_NAME`, read in stacks/app.py). Order:
CDK context (`-c`, and cdk.json, which CDK merges into it), then the environment, then the default (the settings,
their defaults and their environment variables are in stacks/settings.py, which has no CDK in it). So
cdk.json carries only feature flags: a setting written there would hide the environment variable. Nothing here
needs AWS credentials.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from typing import Any

from aws_cdk import aws_logs as logs
from constructs import Node

from stacks.bundling import PLATFORMS
from stacks.settings import Settings, env_name

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"context {key!r} must be true or false, got {value!r}")


#: CloudWatch Logs' retention periods (jsii enums carry names, not numbers)
RETENTION_DAYS = {
    1: logs.RetentionDays.ONE_DAY, 3: logs.RetentionDays.THREE_DAYS, 5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK, 14: logs.RetentionDays.TWO_WEEKS, 30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS, 90: logs.RetentionDays.THREE_MONTHS, 120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS, 180: logs.RetentionDays.SIX_MONTHS, 365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS, 545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS, 1096: logs.RetentionDays.THREE_YEARS, 1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


#: Step Functions' log levels (https://docs.aws.amazon.com/step-functions/latest/dg/cloudwatch-log-level.html)
WORKFLOW_LOG_LEVELS = ("ALL", "ERROR", "FATAL", "OFF")


def _retention(key: str, value: Any) -> int:
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"context {key!r} must be a number of days, got {value!r}") from None
    allowed = sorted(RETENTION_DAYS)
    if days not in RETENTION_DAYS:
        raise ValueError(f"context {key!r} must be one of CloudWatch Logs' retention periods {allowed}, got {days}")
    return days


@dataclass(frozen=True)
class HarvesterConfig(Settings):
    """The deploy settings (stacks/settings.py), read from the CDK context and the environment, checked."""

    @classmethod
    def from_node(cls, node: Node) -> HarvesterConfig:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = node.try_get_context(f.name)
            if raw is None:
                raw = os.environ.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = raw
        return cls.parse(values)

    @classmethod
    def parse(cls, values: dict[str, Any]) -> HarvesterConfig:
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "extra" or f.name not in values:
                continue
            raw = values[f.name]
            default = f.default
            if isinstance(default, bool):
                out[f.name] = _bool(f.name, raw)
            elif f.name == "logRetentionDays":
                out[f.name] = _retention(f.name, raw)
            elif isinstance(default, int):
                try:
                    out[f.name] = int(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"context {f.name!r} must be an integer, got {raw!r}") from None
            else:
                out[f.name] = str(raw).strip().upper() if f.name == "workflowLogLevel" else str(raw).strip()
        cfg = cls(**out)
        if cfg.arch not in PLATFORMS:
            raise ValueError(f"context 'arch' must be one of {sorted(PLATFORMS)}, got {cfg.arch!r}")
        if cfg.workflowLogLevel not in WORKFLOW_LOG_LEVELS:
            raise ValueError(f"context 'workflowLogLevel' must be one of {WORKFLOW_LOG_LEVELS}, got {cfg.workflowLogLevel!r}")
        if cfg.alarmEmail and not re.match(r"^[^@\s]+@[^@\s]+\.[^@\s]+$", cfg.alarmEmail):
            raise ValueError(f"context 'alarmEmail' is not an e-mail address: {cfg.alarmEmail!r}")
        return cfg

    @property
    def log_retention(self) -> logs.RetentionDays:
        return RETENTION_DAYS[self.logRetentionDays]
