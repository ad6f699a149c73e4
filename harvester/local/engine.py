"""The local engine: the very same workflow definitions, run by moto's Step Functions executor.

- the definitions are `statemachines/harvest.asl.json` and `statemachines/query.asl.json` after the
  substitutions CDK makes (same keys);
- Lambda tasks are dispatched to the real handlers in `lambdas/` with the limits of the function catalog
  (harvester/functions.py): in-process, or, with `processes=N`, every handler in worker processes (up to N per
  function, harvester/local/workers.py) that reach moto over HTTP, so each worker has a CPU of its own as on
  Lambda and is stopped at its function's timeout, memory and ephemeral storage (what `harvest run --local` and
  `harvest demo` use);
- payloads are held to Step Functions' 256 KiB and Lambda's 6 MB (harvester/local/moto_patches.py);
- S3, DynamoDB (and Secrets Manager) are moto's, in memory; every write to the bucket or the ledger is written
  through to the state folder as it happens (harvester/local/state.py) and loaded back by the next command, so a
  failed, interrupted or killed run can be resumed later.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from harvester import definition
from harvester.functions import COMMON_ENVIRONMENT, FUNCTION_CATALOG, FunctionDef
from harvester.ledger import Ledger, create_table_kwargs
from harvester.local import aliases, iam, moto_patches
from harvester.local import state as state_store
from harvester.local.container import drop_metrics
from harvester.local.names import (  # noqa: F401 - the engine's names, as callers have always imported them
    ACCOUNT,
    BUCKET,
    LIVE,
    QUERY_STATE_MACHINE,
    REGION,
    STATE_MACHINE,
    TABLE,
    FakeContext,
    function_arn,
)
from harvester.local.state import LocalState
from harvester.local.workers import WorkerPool
from harvester.spec import SourceSpec

#: function name -> (handler "module:function", timeout seconds), from the one catalog the stack deploys
FUNCTIONS = {name: (f.target, f.timeout_s) for name, f in FUNCTION_CATALOG.items()}


def substitutions() -> dict[str, str]:
    """What CDK substitutes on AWS, with local names (the functions by their `live` alias ARN, as on AWS, so the
    state machine's lambda:InvokeFunction grant is checked against the ARN AWS checks)."""
    return {
        "PlanFunctionArn": f"{function_arn('plan')}:{LIVE}",
        "FetchFunctionArn": f"{function_arn('fetch')}:{LIVE}",
        "AdvanceFunctionArn": f"{function_arn('advance')}:{LIVE}",
        "ConvertFunctionArn": f"{function_arn('convert')}:{LIVE}",
        "QueryFunctionArn": f"{function_arn('query')}:{LIVE}",
        "BucketName": BUCKET,
        "LedgerTableName": TABLE,
    }


def rendered_definition(path: Path = definition.DEFINITION_PATH) -> str:
    return moto_patches.float_tolerances(definition.render(definition.load(path), substitutions()))


class Dispatcher:
    """Routes a Lambda ARN to the real handler, in the worker pool (every function, each held to its limits) or,
    without a pool, in-process; counts invocations (tests read them). In-process a function is held to its
    timeout only after the fact (a thread cannot be stopped: the state machine sees Sandbox.Timedout, but the
    handler's writes happened) and not to its memory or ephemeral storage."""

    def __init__(self, pool: WorkerPool | None = None, functions: dict[str, FunctionDef] | None = None):
        self.functions = functions or FUNCTION_CATALOG
        self.handlers: dict[str, tuple[Callable, float]] = {}
        self.invocations: dict[str, int] = {}
        self.pool = pool
        self._lock = threading.Lock()
        self.hooks: list[Callable[[str, dict], None]] = []  # tests inject faults here (e.g. a killed worker)
        for name, fdef in self.functions.items():
            module, func = fdef.target.split(":")
            self.handlers[function_arn(name)] = (getattr(importlib.import_module(module), func), fdef.timeout_s)

    def __call__(self, arn: str, event: dict) -> Any:
        try:
            iam.check_invoke(arn)  # as the calling state machine's role, when IAM is enforced
        except ClientError as refused:
            raise moto_patches.InvocationRefused(refused) from None
        name = arn.split(":")[6]  # arn:aws:lambda:region:account:function:name[:qualifier]
        handler, timeout = self.handlers[function_arn(name.removeprefix("harvester-"))]
        with self._lock:
            self.invocations[name] = self.invocations.get(name, 0) + 1
        for hook in self.hooks:
            hook(name, event)
        fdef = self.functions[name.removeprefix("harvester-")]
        if self.pool is not None:
            return self.pool.invoke(fdef.target, name, timeout, event)
        started = time.monotonic()
        try:
            with iam.as_function(name):
                result = handler(event, FakeContext(name, timeout, fdef.memory_mb))
        finally:
            drop_metrics()
        if time.monotonic() - started > timeout:
            raise moto_patches.LambdaKilled(f"Task timed out after {timeout:.2f} seconds")
        return result


class LocalEngine:
    """Context manager: moto up, patches in, bucket/table/state machine created, state loaded and written through.

    ``lock``: take the state folder for this engine (runs: a second harvest into the same folder is refused with
    StateBusy); False for readers such as the query workflow, which only add their own result objects."""

    def __init__(self, state_dir: str | Path, *, batch_seconds: float | None = None, quiet: bool = True,
                 processes: int = 0, functions: dict[str, dict[str, Any]] | None = None, lock: bool = True,
                 command: str = "harvest", iam: bool = True, log_level: str | None = None):
        """`processes`: run every function in worker processes, up to this many per function, each held to its
        function's limits (0: all in this process); `functions`: catalog values to change for this engine, e.g.
        `{"fetch": {"timeout_s": 2}}` (tests); `iam`: authorize every AWS call of the run as the role that makes it
        on AWS (harvester/local/iam/), False only to measure what the enforcement costs."""
        self.functions = {name: dataclasses.replace(f, **(functions or {}).get(name, {}))
                          for name, f in FUNCTION_CATALOG.items()}  # fmt: skip
        self.iam = iam
        self.authorizer = None  # the engine's iam.Authorizer while it runs with IAM enforced
        self.state = LocalState(Path(state_dir))
        self.lock = lock
        self.command = command
        self.batch_seconds = batch_seconds
        self.processes = processes
        self.quiet = quiet
        self.log_level = log_level  # the handlers' POWERTOOLS_LOG_LEVEL (default: WARNING when quiet)
        self._stack = ExitStack()
        self._sources_dir = Path(tempfile.mkdtemp(prefix="harvester-sources-"))
        self.dispatcher: Dispatcher | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> LocalEngine:
        from moto import mock_aws

        if self.lock:
            self.state.acquire(self.command)  # before anything else: a busy folder is refused untouched
            self._stack.callback(self.state.release)

        env = {
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_SESSION_TOKEN": "local",
            "HARVESTER_BUCKET": BUCKET,
            "HARVESTER_TABLE": TABLE,
            "HARVESTER_SOURCES_DIR": str(self._sources_dir),
            **COMMON_ENVIRONMENT,
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_TRACE_DISABLED": "true",
            # Map children run on moto's threads in this one process: two at a time use both cores of a laptop
            "HARVESTER_LAKE_CONCURRENCY": "2",
            "HARVESTER_QUERY_CONCURRENCY": "2",
        }
        if self.quiet or self.log_level:
            env["POWERTOOLS_LOG_LEVEL"] = self.log_level or "WARNING"
        if self.batch_seconds:
            env["HARVESTER_BATCH_SECONDS"] = str(self.batch_seconds)
        self._saved_env = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        self._stack.callback(self._restore_env)
        self._stack.enter_context(mock_aws(config={"stepfunctions": {"execute_state_machine": True}}))
        # entered before the worker pool, so it ends after the pool's last write
        self._stack.enter_context(state_store.writing_through(self.state, BUCKET, TABLE))
        if self.iam:  # before the worker pool starts: its processes read the model's path from the environment
            self.authorizer = iam.enable(
                {"REGION": REGION, "ACCOUNT": ACCOUNT, "BUCKET": BUCKET, "TABLE": TABLE})
            self._stack.callback(iam.disable)
        # handlers share module-level Powertools objects across moto's threads; their warnings are noise here
        warnings.filterwarnings("ignore", module="aws_lambda_powertools")
        logging.getLogger("moto").setLevel(logging.CRITICAL)  # the executor logs every caught error at length
        pool = None
        if self.processes:
            from moto.server import ThreadedMotoServer

            # one line per request otherwise, and a traceback for every request a stopped worker leaves half-done
            logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # shares mock_aws's state
            server.start()
            self._stack.callback(server.stop)
            host, port = server.get_host_and_port()
            pool = WorkerPool(self.processes, f"http://{host}:{port}", self.functions)
            self._stack.callback(pool.close)  # runs before server.stop: workers finish their writes first
            pool.start()
        self.dispatcher = Dispatcher(pool, self.functions)
        moto_patches.install_all(self.dispatcher)
        aliases.install_alias_start()
        self.s3 = boto3.client("s3", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.dynamodb = boto3.client("dynamodb", region_name=REGION)
        self.s3.create_bucket(Bucket=BUCKET)
        self.dynamodb.create_table(**create_table_kwargs(TABLE))
        self.table = boto3.resource("dynamodb", region_name=REGION).Table(TABLE)
        self.ledger = Ledger(self.table)
        self.state.load(self.s3, BUCKET, self.dynamodb, TABLE)
        self.state_machine_arn, self.alias_arn = self._create_workflow(STATE_MACHINE, rendered_definition())
        self.query_state_machine_arn, self.query_alias_arn = self._create_workflow(
            QUERY_STATE_MACHINE, rendered_definition(definition.QUERY_DEFINITION_PATH))
        return self

    def _create_workflow(self, name: str, text: str) -> tuple[str, str]:
        """The state machine with a published version and its `live` alias, as the stack deploys it; returns
        (state machine ARN, alias ARN)."""
        made = self.sfn.create_state_machine(name=name, definition=text, type="STANDARD", publish=True,
                                             roleArn=f"arn:aws:iam::{ACCOUNT}:role/harvester-local")
        return made["stateMachineArn"], aliases.publish_live(self.sfn, made["stateMachineArn"],
                                                             made["stateMachineVersionArn"])

    def __exit__(self, *exc) -> None:
        try:
            self._stack.close()
        finally:
            shutil.rmtree(self._sources_dir, ignore_errors=True)

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    # --- runs -------------------------------------------------------------------------------------------------
    def add_source(self, spec_path: Path, spec: SourceSpec) -> None:
        """Make a spec file visible to the plan step under its source name, wherever the file lives."""
        shutil.copyfile(spec_path, self._sources_dir / f"{spec.name}.yaml")

    def add_spec(self, spec: SourceSpec) -> None:
        """Make a parsed spec visible to the plan step (a resume with the spec its run was planned with)."""
        (self._sources_dir / f"{spec.name}.yaml").write_text(json.dumps(spec.model_dump(mode="json")))

    def start(self, execution_input: dict[str, Any]) -> str:
        return self.sfn.start_execution(
            stateMachineArn=self.state_machine_arn, name=uuid.uuid4().hex, input=json.dumps(execution_input)
        )["executionArn"]

    def wait(
        self, execution_arn: str, *, timeout: float = 3600, poll: float = 0.5, progress: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            desc = self.sfn.describe_execution(executionArn=execution_arn)
            if desc["status"] != "RUNNING":
                if desc["status"] == "SUCCEEDED" and "output" not in desc:
                    time.sleep(poll)  # moto says SUCCEEDED a moment before the output is set
                    desc = self.sfn.describe_execution(executionArn=execution_arn)
                return desc
            if time.monotonic() > deadline:
                self.sfn.stop_execution(executionArn=execution_arn, error="Local.Timeout", cause=f"over {timeout}s")
                raise TimeoutError(f"execution did not finish within {timeout} s")
            if progress:
                progress()
            time.sleep(poll)

    def stop(self, execution_arn: str, *, error: str, cause: str, grace: float = 3.0) -> None:
        """Stop an execution and its fleet now (Ctrl-C, SIGTERM, --timeout): the execution is aborted and the
        worker processes are stopped within `grace` seconds, their in-flight batches left for a resume."""
        self.sfn.stop_execution(executionArn=execution_arn, error=error, cause=cause)
        if self.dispatcher is not None and self.dispatcher.pool is not None:
            self.dispatcher.pool.terminate(grace)

    def run(self, execution_input: dict[str, Any], **wait_kwargs) -> dict[str, Any]:
        return self.wait(self.start(execution_input), **wait_kwargs)

    def query(self, query: dict[str, Any], *, timeout: float = 600) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Run the query workflow; returns (execution description, the result read from results/{query_id}.json,
        or None when the execution did not succeed)."""
        arn = self.sfn.start_execution(
            stateMachineArn=self.query_state_machine_arn, name=uuid.uuid4().hex, input=json.dumps(query)
        )["executionArn"]
        desc = self.wait(arn, timeout=timeout)
        if desc["status"] != "SUCCEEDED":
            return desc, None
        summary = json.loads(desc["output"])
        body = self.s3.get_object(Bucket=BUCKET, Key=summary["json_key"])["Body"].read()
        return desc, json.loads(body)

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        events, kwargs = [], {}
        while True:
            resp = self.sfn.get_execution_history(executionArn=execution_arn, **kwargs)
            events.extend(resp["events"])
            if not resp.get("nextToken"):
                return events
            kwargs["nextToken"] = resp["nextToken"]

    def run_id_of(self, execution_arn: str, source: str) -> str | None:
        """The run id an execution worked on: from the ledger item that names the execution."""
        for run in self.ledger.list_runs(source, limit=100):
            if run.get("execution_arn") == execution_arn:
                return run["run_id"]
        return None
