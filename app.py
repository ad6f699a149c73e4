#!/usr/bin/env python3
"""The CDK app: one harvester stack. `npx cdk synth` / `npx cdk deploy` (see README).

Context (all optional, `-c key=value` or cdk.json; see stacks/config.py): stackName, account, region, retain,
deletionProtection, logRetentionDays, nag, arch, versioning, accessLogs, bucketName, tableName, schedules,
alarmEmail. Synth needs no AWS credentials: without account/region the stack is environment-agnostic.
"""

from __future__ import annotations

import aws_cdk as cdk

from stacks.app import build_app

if __name__ == "__main__":
    app = cdk.App()
    build_app(app)
    app.synth()
