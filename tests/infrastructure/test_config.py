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
        ({"workflowLogLevel": "VERBOSE"}, "workflowLogLevel"),
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


def test_every_setting_from_the_environment_under_cdk_json(monkeypatch):
    """stacks/README.md: every key can come from the environment as HARVESTER_KEY_NAME. With `cdk synth` the
    context always holds cdk.json's keys, so a key written there (retain, nag, arch, ...) silently ignored the
    environment; the stack name never read it. cdk.json now carries only feature flags; -c still beats the
    environment."""
    from dataclasses import fields

    from .helpers import cdk_json_context, make_app

    values = {"retain": "false", "deletionProtection": "false", "logRetentionDays": "7", "nag": "false",
              "arch": "x86_64", "versioning": "true", "accessLogs": "false", "schedules": "false",
              "alarmEmail": "ops@example.com", "expectedRunMinutes": "60", "throttledAlarmThreshold": "3",
              "bucketName": "my-harvest-bucket", "tableName": "my-harvest-ledger", "workflowLogLevel": "FATAL"}
    keys = {f.name for f in fields(HarvesterConfig)} - {"extra"}
    assert keys == set(values), "a new setting needs a line here"
    for key, value in values.items():
        monkeypatch.setenv("HARVESTER_" + "".join("_" + c if c.isupper() else c.upper() for c in key), value)
    monkeypatch.setenv("HARVESTER_STACK_NAME", "HarvesterFromEnv")
    assert not keys & set(cdk_json_context()), "cdk.json context would hide the environment"
    _, stack = make_app({"nag": False})  # what the tests' helper must pass; the environment says false too
    cfg = stack.config
    assert stack.stack_name == "HarvesterFromEnv"
    assert (cfg.retain, cfg.deletionProtection, cfg.logRetentionDays, cfg.arch, cfg.versioning, cfg.accessLogs,
            cfg.schedules, cfg.alarmEmail, cfg.expectedRunMinutes, cfg.throttledAlarmThreshold, cfg.bucketName,
            cfg.tableName, cfg.workflowLogLevel) == (False, False, 7, "x86_64", True, False, False, "ops@example.com",
                                                     60, 3, "my-harvest-bucket", "my-harvest-ledger", "FATAL")


def test_one_rule_names_the_deploy_settings_for_the_app_and_the_local_iam_cache(monkeypatch):
    """stacks/settings.py is the one list of deploy settings and their environment variables: the app reads them
    (HarvesterConfig, stacks/app.py) and the local engine's cache of the synthesized policies is keyed on them,
    so a setting given in the environment never serves a stale template's policies."""
    import subprocess
    import sys
    from dataclasses import fields

    from harvester.local.iam import policies
    from stacks.settings import env_name, environment_variables

    names = environment_variables()
    assert {env_name(f.name) for f in fields(HarvesterConfig) if f.name != "extra"} < set(names)
    assert {"HARVESTER_ALARM_EMAIL", "HARVESTER_WORKFLOW_LOG_LEVEL", "HARVESTER_STACK_NAME", "HARVESTER_ACCOUNT",
            "HARVESTER_REGION"} < set(names)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    base = policies.inputs_hash()
    for name in names:
        monkeypatch.setenv(name, "x")
        assert policies.inputs_hash() != base, f"{name} does not key the local IAM cache"
        monkeypatch.delenv(name)
    # the local engine imports it on every run: it must not start the CDK (jsii's Node runtime)
    probe = "import sys, stacks.settings; sys.exit('aws_cdk' in sys.modules or 'jsii' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0
