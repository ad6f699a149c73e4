"""Offline IAM enforcement: every AWS call of a local run is authorized as the role that makes it on AWS.

- Who calls: `CALLER` (a context variable) holds the role. The Lambda dispatcher sets it to the function's role
  around each handler call (also inside the fetch worker processes); the state machine's own calls (its DynamoDB
  and S3 integrations, its ItemReader, the Lambda invocations, the Distributed Map's child executions) run while
  a state of that machine is evaluated: a patch of moto's executor sets it to the machine's role there.
- What is asked: botocore event hooks on every client. `before-parameter-build` keeps the API parameters,
  `before-call` maps the operation to its authorization requests (requests.py) and decides them (evaluate.py);
  a denied call gets the error AWS answers instead of reaching moto: `AccessDenied` (403) from S3,
  `AccessDeniedException` elsewhere, so a state's Catch sees e.g. `DynamoDB.AccessDeniedException`.
- S3 answers a GetObject/HeadObject of a missing key with 404 only if the caller may s3:ListBucket the bucket,
  otherwise 403 AccessDenied ("If you don't have the s3:ListBucket permission, Amazon S3 returns an HTTP status
  code 403", https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetObject.html); the request that decides it
  is the GetObject request, whose context has no `s3:prefix` key.

Calls made with no caller (the test harness, the engine creating and saving its bucket and table) are not
checked. A thread pool a handler starts inherits its caller (as every thread of a Lambda container has the
function's credentials): `ThreadPoolExecutor.submit` runs the callable in a copy of the submitter's context.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from harvester.local.iam.evaluate import ALLOWED, decide
from harvester.local.iam.policies import IamModel
from harvester.local.iam.requests import Request, requests_for, s3_bucket, state_machine_request

#: the role making the current AWS call (None: not a simulated AWS principal, not checked)
CALLER: contextvars.ContextVar[str | None] = contextvars.ContextVar("harvester_iam_caller", default=None)
#: the environment variable that tells a worker process where the engine's IAM model is
MODEL_ENV = "HARVESTER_LOCAL_IAM"
_EXECUTOR_KEY = "ak"  # moto's Step Functions executor signs every service call with this access key
_PARAMS = "harvester_iam_params"
_ROLE = "harvester_iam_role"


class Authorizer:
    """Decides requests for the roles of one IAM model (decisions cached; thread-safe)."""

    def __init__(self, model: IamModel, region: str, account: str):
        self.model, self.region, self.account = model, region, account
        self.denials: list[dict] = []
        self.checked = 0
        self.unattributed = 0  # executor calls outside any state of a modelled state machine (not checked)
        self._lock = threading.Lock()
        self._decide = functools.lru_cache(maxsize=16384)(self._decide_uncached)  # per authorizer (per engine)

    def principal(self, role: str) -> dict:
        return {"AWS": f"arn:aws:iam::{self.account}:role/{role}", "Account": self.account}

    def _decide_uncached(self, role: str, action: str, resource: str, context: tuple) -> str:
        policies = list(self.model.roles.get(role, []))
        # same account: the resource's own policy can allow too, and its Deny counts (bucket and topic policies)
        target = s3_bucket(resource[len("arn:aws:s3:::"):].split("/", 1)[0]) if resource.startswith("arn:aws:s3:::") else resource
        policies += self.model.resource_policies.get(target, [])
        ctx = {"aws:SecureTransport": "true", "aws:PrincipalAccount": self.account, **dict(context)}
        return decide(policies, action, resource, ctx, self.principal(role))

    def decide(self, role: str, request: Request) -> str:
        context = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in request.context.items()))
        return self._decide(role, request.action, request.resource, context)

    def first_denied(self, role: str, requests: list[Request]) -> Request | None:
        with self._lock:
            self.checked += len(requests)
        for request in requests:
            if self.decide(role, request) != ALLOWED:
                with self._lock:
                    self.denials.append({"role": role, **request._asdict()})
                return request
        return None

    def error(self, service: str, role: str, request: Request) -> dict:
        """The error response AWS gives for a denied request (parsed form)."""
        code, status = {"s3": ("AccessDenied", 403), "sns": ("AuthorizationError", 403),
                        "lambda": ("AccessDeniedException", 403)}.get(service, ("AccessDeniedException", 400))  # fmt: skip
        message = (f"User: arn:aws:sts::{self.account}:assumed-role/{role}/local is not authorized to perform: "
                   f"{request.action} on resource: {request.resource} because no identity-based policy allows the "
                   f"{request.action} action (local IAM enforcement)")  # fmt: skip
        return {"Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {}, "RequestId": "local-iam"}}  # fmt: skip

    def client_error(self, service: str, operation: str, role: str, request: Request) -> ClientError:
        return ClientError(self.error(service, role, request), operation)

    def check(self, role: str | None, service: str, operation: str, request: Request) -> None:
        """Raise the ClientError AWS would raise if `role` may not make `request` (checks made outside botocore:
        the executor's Lambda invocations and Distributed Map child executions)."""
        if role is not None and self.first_denied(role, [request]) is not None:
            raise self.client_error(service, operation, role, request)


_active: Authorizer | None = None


def active() -> Authorizer | None:
    """The authorizer of this process: the engine's, or in a worker process the one its environment names."""
    global _active
    if _active is None and os.environ.get(MODEL_ENV):
        from harvester.local.names import ACCOUNT, REGION  # noqa: PLC0415

        _active = Authorizer(IamModel.from_file(os.environ[MODEL_ENV]), REGION, ACCOUNT)
    return _active


def activate(authorizer: Authorizer | None) -> None:
    global _active
    _active = authorizer


@contextmanager
def acting_as(role: str | None) -> Iterator[None]:
    token = CALLER.set(role)
    try:
        yield
    finally:
        CALLER.reset(token)


@contextmanager
def as_function(name: str) -> Iterator[None]:
    """Run a handler of function `name` (plan, fetch, `harvester-fetch`) as its role, when IAM is enforced."""
    auth = active()
    if auth is None:
        yield
        return
    with acting_as(auth.model.functions[name.removeprefix("harvester-")]):
        yield


def state_machine_role(state_machine_arn: str) -> str | None:
    auth = active()
    match = re.search(r":stateMachine:([^:/]+)", state_machine_arn or "")
    return auth.model.state_machines.get(match.group(1)) if auth and match else None


# ------------------------------------------------------------------------------------------------------------
# botocore hooks (registered once per process; inert while no authorizer is active)
# ------------------------------------------------------------------------------------------------------------
def _caller(request_signer) -> str | None:
    role = CALLER.get()
    if role is None and getattr(getattr(request_signer, "_credentials", None), "access_key", None) == _EXECUTOR_KEY:
        # the executor outside any state of a known state machine (e.g. a test's own machine): not modelled
        if _active is not None:
            _active.unattributed += 1
        return None
    return role


def _before_parameter_build(params, context, **_):
    if _active is not None:
        context[_PARAMS] = dict(params)


def _before_call(model, params, request_signer=None, context=None, **_):
    auth = _active
    role = _caller(request_signer) if auth is not None else None
    if role is None or context is None:
        return None
    service = model.service_model.signing_name
    context[_ROLE] = role
    denied = auth.first_denied(role, requests_for(service, model.name, context.get(_PARAMS, {}), auth.region,
                                                  auth.account))  # fmt: skip
    if denied is None:
        return None
    parsed = auth.error(service, role, denied)
    status = parsed["ResponseMetadata"]["HTTPStatusCode"]
    if model.name == "HeadObject":  # a HEAD answer has no body: botocore reports the status code
        parsed["Error"] = {"Code": "403", "Message": "Forbidden"}
    return AWSResponse("https://local-iam.invalid", status, {}, None), parsed


def _after_call(http_response, parsed, model, context, **_):
    auth, role = _active, context.get(_ROLE)
    if (auth is None or role is None or model.service_model.signing_name != "s3"
            or model.name not in ("GetObject", "HeadObject") or http_response.status_code != 404):
        return
    bucket = context[_PARAMS]["Bucket"]
    if auth.decide(role, Request("s3:ListBucket", s3_bucket(bucket), {})) == ALLOWED:
        return
    with auth._lock:
        auth.denials.append({"role": role, "action": "s3:ListBucket", "resource": s3_bucket(bucket),
                             "context": {}, "note": f"{model.name} of a missing key answers 403"})  # fmt: skip
    http_response.status_code = 403
    parsed["Error"] = ({"Code": "AccessDenied", "Message": "Access Denied"} if model.name == "GetObject"
                       else {"Code": "403", "Message": "Forbidden"})  # fmt: skip
    parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = 403


_HOOKS = (("before-parameter-build", _before_parameter_build), ("before-call", _before_call),
          ("after-call", _after_call))  # fmt: skip


def register_hooks() -> None:
    """On every botocore session created from now on, and on boto3's default session if it exists."""
    import boto3  # noqa: PLC0415
    from botocore.handlers import BUILTIN_HANDLERS  # noqa: PLC0415

    for hook in _HOOKS:
        if hook not in BUILTIN_HANDLERS:
            BUILTIN_HANDLERS.append(hook)
    if boto3.DEFAULT_SESSION is not None:
        for event, fn in _HOOKS:
            boto3.DEFAULT_SESSION.events.register(event, fn, unique_id=f"harvester-iam-{event}")


# ------------------------------------------------------------------------------------------------------------
# threads: a handler's thread pool keeps its caller; moto's executor knows which state machine is calling
# ------------------------------------------------------------------------------------------------------------
_original_submit = concurrent.futures.ThreadPoolExecutor.submit


def _submit_in_context(self, fn, /, *args, **kwargs):
    return _original_submit(self, contextvars.copy_context().run, fn, *args, **kwargs)


class _ContextThread(threading.Thread):
    """A thread that runs in a copy of its creator's context (moto runs a state with a timeout in a thread)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._harvester_context = contextvars.copy_context()

    def run(self):
        self._harvester_context.run(super().run)


def install_executor_patches() -> None:
    """Idempotent. Each state of a modelled state machine is evaluated as the machine's role; a Distributed Map
    first checks states:StartExecution for its child executions (moto runs them in-process, without the call)."""
    from moto.stepfunctions.parser.asl.component.state.exec import execute_state  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.state.exec.state_map import state_map  # noqa: PLC0415
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.distributed_iteration_component import (  # noqa: E501, PLC0415
        DistributedIterationComponent,
    )

    concurrent.futures.ThreadPoolExecutor.submit = _submit_in_context
    execute_state.Thread = _ContextThread
    from moto.stepfunctions.parser.asl.component.state.state import CommonStateField  # noqa: PLC0415

    if getattr(CommonStateField._eval_body, "_harvester_iam", False):
        return
    original_state = CommonStateField._eval_body
    original_map = state_map.StateMap._eval_execution

    def _eval_body(self, env):
        role = state_machine_role(env.states.context_object.context_object_data["StateMachine"]["Id"])
        with acting_as(role):
            return original_state(self, env)

    def _eval_map(self, env):
        if isinstance(self.iteration_component, DistributedIterationComponent):
            _check_child_executions(CALLER.get(), env.states.context_object.context_object_data["StateMachine"]["Id"])
        return original_map(self, env)

    _eval_body._harvester_iam = True  # type: ignore[attr-defined]
    CommonStateField._eval_body = _eval_body
    state_map.StateMap._eval_execution = _eval_map


def _check_child_executions(role: str | None, machine_arn: str) -> None:
    """Distributed Map children are executions of the same state machine: AWS needs states:StartExecution on it
    ("IAM policies for Distributed Map states",
    https://docs.aws.amazon.com/step-functions/latest/dg/iam-policies-eg-dist-map.html)."""
    auth = active()
    if auth is not None:
        auth.check(role, "states", "StartExecution", state_machine_request("states:StartExecution", machine_arn))


def uninstall_thread_patch() -> None:
    concurrent.futures.ThreadPoolExecutor.submit = _original_submit
