"""Where a source's credential comes from: an environment variable locally, Secrets Manager on AWS."""

from __future__ import annotations

import os

from harvester.spec import SourceSpec, SpecError


def resolve_secret(spec: SourceSpec) -> str | None:
    """The credential for `spec`, or None when the source needs none. Raises SpecError saying where to put it."""
    if spec.auth is None:
        return None
    value = os.environ.get(spec.auth.env)
    if value:
        return value
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        from aws_lambda_powertools.utilities.parameters import get_secret
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        try:
            value = get_secret(spec.secret_name(), max_age=300)
        except GetParameterError as exc:
            raise SpecError(f"source {spec.name}: cannot read secret {spec.secret_name()!r}: {exc}") from None
        if not value:
            raise SpecError(f"source {spec.name}: secret {spec.secret_name()!r} is empty; put the API key in it")
        return value if isinstance(value, str) else value.decode()
    raise SpecError(
        f"source {spec.name}: auth.env {spec.auth.env} is not set; export it with the vendor's credential "
        f"(on AWS the secret {spec.secret_name()!r} is used instead)"
    )
