"""cdk-nag acknowledgments are narrow: one rule (with its appliesTo for IAM4/IAM5) on one low-level construct.

The checks themselves run in `scripts/check_infra.sh` (cdk synth with nag on fails on any new finding).
"""

from __future__ import annotations

import re

from .helpers import cdk_json_context


def test_every_acknowledgment_is_specific(harvester_app):
    acks = harvester_app.stack.nag_acknowledgments
    assert acks
    for ack in acks:
        assert ack.path.endswith("/Resource"), f"{ack.rule} acknowledged on a whole construct tree: {ack.path}"
        assert re.match(r"^AwsSolutions-[A-Z]+\d+", ack.rule), ack.rule
        if ack.rule.startswith(("AwsSolutions-IAM5", "AwsSolutions-IAM4")):
            assert re.search(r"\[(Resource|Action|Policy)::.+\]$", ack.rule), f"blanket {ack.rule} on {ack.path}"
        assert len(ack.reason) >= 40, f"{ack.rule} on {ack.path}: reason too vague"
    pairs = [(a.path, a.rule) for a in acks]
    assert len(pairs) == len(set(pairs))


def test_default_stack_needs_no_access_log_or_encryption_acknowledgment(harvester_app):
    rules = {a.rule.split("[")[0] for a in harvester_app.stack.nag_acknowledgments}
    assert not rules & {"AwsSolutions-S1", "AwsSolutions-S10", "AwsSolutions-DDB3",
                        "AwsSolutions-SF2", "AwsSolutions-SNS2", "AwsSolutions-SNS3", "AwsSolutions-SQS4"}
    # SF1 (log ALL events): the workflows log ERROR by default for cost, acknowledged with the setting named
    sf1 = [a for a in harvester_app.stack.nag_acknowledgments if a.rule == "AwsSolutions-SF1"]
    assert len(sf1) == len(harvester_app.stack.workflows) and all("workflowLogLevel" in a.reason for a in sf1)


def test_data_wildcards_only_on_declared_prefixes(harvester_app):
    stack = harvester_app.stack
    declared = {p for access in stack.function_access.values() for p in access.prefixes}
    declared |= {w.reader_prefix for w in stack.workflows.values()}
    declared |= {w.definition.map_results_prefix for w in stack.workflows.values()}  # ResultWriter
    for ack in stack.nag_acknowledgments:
        if "DataBucket" in ack.rule:
            prefix = ack.rule.split(".Arn>/", 1)[1].removesuffix("*]")
            assert prefix in declared, ack.rule


def _synth_with_an_unacknowledged_bucket(tmp_path, **context):
    """The app as `cdk synth` builds it (the nag setting from the context, default on), plus one bucket nobody
    acknowledged anything for; returns the validation report's violations, or None when the synth passed."""
    import json

    import aws_cdk as cdk
    from aws_cdk import aws_s3 as s3

    from stacks.app import build_app

    base = {k: v for k, v in cdk_json_context().items() if k != "nag"}
    app = cdk.App(outdir=str(tmp_path), context={**base, "aws:cdk:bundling-stacks": [], **context})
    s3.Bucket(build_app(app), "Unacknowledged")
    try:
        app.synth()
    except RuntimeError as exc:
        assert str(exc).startswith("ValidationFailed"), exc
        report = json.loads((tmp_path / "validation-report.json").read_text())
        return [(v["ruleName"], r["constructPath"]) for p in report["pluginReports"] for v in p["violations"]
                for r in v["violatingConstructs"]]
    return None


def test_synth_runs_cdk_nag_by_default_and_only_the_unacknowledged_fail_it(tmp_path):
    """With no `nag` context a synth runs cdk-nag: the planted bucket's findings fail it, and they are the only
    findings (every one of the real stack's is acknowledged). `-c nag=false` synthesizes the same app."""
    violations = _synth_with_an_unacknowledged_bucket(tmp_path / "on")
    assert violations, "cdk-nag did not run"
    assert {path for _, path in violations} == {"Harvester/Unacknowledged/Resource"}, violations
    assert {"AwsSolutions-S1", "AwsSolutions-S10"} <= {rule for rule, _ in violations}
    assert _synth_with_an_unacknowledged_bucket(tmp_path / "off", nag=False) is None


def test_stacks_readme_lists_every_acknowledgment(harvester_app):
    from stacks import nag
    from stacks.bundling import ROOT

    text = (ROOT / "stacks" / "README.md").read_text()
    begin, end = "<!-- nag-acknowledgments:begin -->", "<!-- nag-acknowledgments:end -->"
    documented = text[text.index(begin) + len(begin) : text.index(end)].strip() + "\n"
    stack = harvester_app.stack
    rows = nag.ack_table(stack, [s.name for s in stack.sources]).splitlines()
    undocumented = [row for row in rows if row not in documented.splitlines()]
    assert not undocumented, f"stacks/README.md lacks: {undocumented}; run python3 scripts/nag_acknowledgments.py --write"


def test_nag_stays_green_for_the_other_configurations(tmp_path):
    """cdk-nag in full (CI runs it on the default configuration): a spec naming an existing secret, a
    scheduled source, no access logs, x86_64, nothing retained."""
    import json

    import aws_cdk as cdk

    from stacks.app import build_app

    from .helpers import cdk_json_context

    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "beta.yaml").write_text(
        "name: beta\nbase_url: https://api.example.com\nauth: {env: BETA_KEY, secret: shared/beta-key}\n"
        "schedule: {cron: '0 3 * * ? *', timezone: Europe/Paris}\nlevels:\n  - name: items\n    path: /items\n"
    )
    (sources / "gamma.yaml").write_text("name: gamma\nbase_url: https://x.example.com\nlevels:\n  - {name: a, path: /a}\n")
    out = tmp_path / "cdk.out"
    context = {**cdk_json_context(), "aws:cdk:bundling-stacks": [], "nag": "true", "accessLogs": "false",
               "arch": "x86_64", "retain": "false", "alarmEmail": "ops@example.com", "stackName": "HarvesterNag"}
    app = cdk.App(context=context, outdir=str(out))
    build_app(app, sources_dir=sources)
    app.synth()
    report = json.loads((out / "validation-report.json").read_text())
    [plugin] = report["pluginReports"]
    assert plugin["pluginName"] == "AwsSolutions"
    assert not plugin["violations"], [(v["ruleName"], [c["constructPath"] for c in v["violatingConstructs"]])
                                      for v in plugin["violations"]]
    assert plugin["suppressedViolations"]
