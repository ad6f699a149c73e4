"""Deploy-time configuration from context: defaults and refusals."""

from __future__ import annotations

import pytest

from stacks.config import HarvesterConfig


def test_safe_defaults():
    cfg = HarvesterConfig.parse({})
    assert cfg.retain and cfg.deletionProtection and cfg.nag and cfg.accessLogs
    assert cfg.logRetentionDays == 30 and cfg.arch == "arm64"
    assert cfg.alarmEmail == "" and cfg.bucketName == "" and cfg.tableName == ""


def test_strings_from_the_command_line():
    cfg = HarvesterConfig.parse({"retain": "false", "nag": "0", "logRetentionDays": "14", "arch": "x86_64"})
    assert (cfg.retain, cfg.nag, cfg.logRetentionDays, cfg.arch) == (False, False, 14, "x86_64")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"retain": "maybe"}, "retain"),
        ({"logRetentionDays": "10"}, "retention periods"),
        ({"logRetentionDays": "a month"}, "number of days"),
        ({"arch": "sparc"}, "arch"),
        ({"alarmEmail": "not-an-address"}, "e-mail"),
    ],
)
def test_bad_values_are_refused_with_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        HarvesterConfig.parse(values)


def test_environment_fallback(monkeypatch):
    import aws_cdk as cdk

    monkeypatch.setenv("HARVESTER_LOG_RETENTION_DAYS", "90")
    monkeypatch.setenv("HARVESTER_ALARM_EMAIL", "ops@example.com")
    app = cdk.App(context={"logRetentionDays": 60})
    cfg = HarvesterConfig.from_node(app.node)
    assert cfg.logRetentionDays == 60  # context wins
    assert cfg.alarmEmail == "ops@example.com"
