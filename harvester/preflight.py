"""Checks a local command makes before it creates anything: the credential is there and the vendor answers.

The workflow's Plan step makes the same checks (on AWS they are the only ones), but a local run that fails there
has already created its state folder and prints the failed execution; here the command stops with one line
and exit code 2, and nothing is written."""

from __future__ import annotations

from harvester.run import check_reachable
from harvester.secrets import resolve_secret
from harvester.spec import SourceSpec


def check_local(spec: SourceSpec) -> None:
    """Raises SpecError naming the missing variable or the host that does not answer."""
    if spec.auth is not None:
        resolve_secret(spec)
    check_reachable(spec.base_url)
