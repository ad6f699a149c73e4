"""Building the app (shared by app.py and the infrastructure tests, which build it once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import aws_cdk as cdk

from stacks import nag
from stacks.config import HarvesterConfig
from stacks.harvester_stack import HarvesterStack
from stacks.settings import DEFAULT_STACK_NAME, env_name

#: feature flags the stack depends on, set here too so the app is right even without cdk.json (tests, scripts)
REQUIRED_FLAGS = {
    # server access logs delivered through the log bucket's policy (ACLs are off: BucketOwnerEnforced)
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    # Distributed Map ResultWriter is silently dropped from a CDK-built Map without it
    "@aws-cdk/aws-stepfunctions:useDistributedMapResultWriterV2": True,
}


def build_app(
    app: cdk.App,
    *,
    definition_path: Path | str | None = None,
    sources_dir: Path | str | None = None,
) -> HarvesterStack:
    """Add the harvester stack to `app` and return it."""
    for flag, value in REQUIRED_FLAGS.items():
        if app.node.try_get_context(flag) is None:
            app.node.set_context(flag, value)
    config = HarvesterConfig.from_node(app.node)
    # deliberately not CDK_DEFAULT_ACCOUNT/REGION: without `-c account/region` the template is environment-agnostic
    # (deployable to whatever account the CLI's credentials name) and identical on every machine
    account = app.node.try_get_context("account") or os.environ.get(env_name("account"))
    region = app.node.try_get_context("region") or os.environ.get(env_name("region"))
    env = cdk.Environment(account=account, region=region) if account or region else None
    stack_name = app.node.try_get_context("stackName") or os.environ.get(env_name("stackName")) or DEFAULT_STACK_NAME
    stack = HarvesterStack(
        app,
        stack_name,
        config=config,
        env=env,
        definition_path=definition_path,
        sources_dir=sources_dir,
        description="harvester: rate-limited harvesting of hierarchical REST APIs into S3 (Step Functions)",
    )
    cdk.Tags.of(stack).add("project", "harvester")
    if config.nag:
        nag.enable(app)
    return stack
