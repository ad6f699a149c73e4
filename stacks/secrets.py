"""One Secrets Manager secret per source: created by the stack, or an existing one the spec names."""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from stacks import nag
from stacks.logical_ids import Group
from stacks.sources import SourceInfo


class SourceSecrets(Group):
    """`secrets`: source name -> its secret. The stack creates `{prefix}{name}` with a random placeholder value
    (put the vendor's API key in it after deploy: output SourceSecrets names them); a spec naming another secret
    (`auth.secret`) refers to an existing one, which the stack only grants read access to."""

    def __init__(self, scope: Construct, construct_id: str, *, sources: list[SourceInfo], prefix: str,
                 removal_policy: cdk.RemovalPolicy, acks: list[nag.Ack]) -> None:
        super().__init__(scope, construct_id)
        self.secrets: dict[str, secretsmanager.ISecret] = {}
        for source in sources:
            cid = f"Secret-{source.name}"
            if not source.default_secret:
                self.secrets[source.name] = secretsmanager.Secret.from_secret_name_v2(self, cid, source.secret_name)
                continue
            secret = secretsmanager.Secret(
                self,
                cid,
                secret_name=cdk.Fn.join("", [prefix, source.name]),
                description=f"API credential of harvester source {source.name!r} (replace the generated value)",
                removal_policy=removal_policy,
            )
            self.secrets[source.name] = secret
            nag.acknowledge(secret.node.default_child, "AwsSolutions-SMG4",
                            f"holds the API key the vendor of source {source.name!r} issues; only the vendor can "
                            "issue a new one, so no rotation Lambda can rotate it: rotate by putting the new key "
                            "(stacks/README.md)", acks)

    def arns(self) -> list[str]:
        """ARNs of the secrets; one referenced by name gets Secrets Manager's 6-character suffix pattern."""
        return [s.secret_arn if s.secret_full_arn else f"{s.secret_arn}-??????" for s in self.secrets.values()]
