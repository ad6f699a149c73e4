"""Offline IAM for the local engine: each AWS call of a local run is authorized against the policies `cdk synth`
writes for this app, as the role that makes it on AWS (see guard.py)."""

from __future__ import annotations

import os

from harvester.local.iam.guard import (
    CALLER,
    MODEL_ENV,
    Authorizer,
    acting_as,
    activate,
    active,
    as_function,
    install_executor_patches,
    register_hooks,
    uninstall_thread_patch,
)
from harvester.local.iam.policies import IamModel, model_file
from harvester.local.iam.requests import Request

__all__ = ["CALLER", "Authorizer", "IamModel", "Request", "acting_as", "active", "as_function", "check_invoke",
           "disable", "enable"]  # fmt: skip

register_hooks()


def enable(names: dict[str, str]) -> Authorizer:
    """Enforce IAM in this process (and in the worker processes it starts from now on, through MODEL_ENV).
    `names`: the engine's REGION, ACCOUNT, BUCKET, TABLE."""
    path = model_file(names)
    auth = Authorizer(IamModel.from_file(path), names["REGION"], names["ACCOUNT"])
    os.environ[MODEL_ENV] = str(path)
    install_executor_patches()
    activate(auth)
    return auth


def disable() -> None:
    activate(None)
    os.environ.pop(MODEL_ENV, None)
    uninstall_thread_patch()


def check_invoke(function: str) -> None:
    """The calling state machine's role must have lambda:InvokeFunction on `function` (the ARN the task names):
    the local engine dispatches the executor's invocations itself, so no botocore call is made to check."""
    auth = active()
    if auth is not None:
        auth.check(CALLER.get(), "lambda", "Invoke", Request("lambda:InvokeFunction", function, {}))
