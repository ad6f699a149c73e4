"""The one catalog of the Lambda functions: handler, timeout, memory, ephemeral storage, environment, access.

The CDK stack deploys exactly these (stacks/functions.py), the local engine runs the same handlers with the
same limits (harvester/local/engine.py), and the tests tie the workflow definitions to it (a Task state must
outlive its function: tests/infrastructure/test_catalog.py). Plain Python on purpose: the local engine imports it
without aws_cdk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Lambda's defaults and bounds (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html):
#: memory 128-10,240 MB, timeout up to 900 s, /tmp 512-10,240 MB (512 MB when not configured)
DEFAULT_EPHEMERAL_MB = 512

#: a Task state's TimeoutSeconds must exceed its function's timeout by at least this much: the invoke round trip
#: and a cold start's init phase come on top of the handler's time, and when the function times out first the
#: state machine sees Lambda's `Sandbox.Timedout` (retried as such) instead of its own `States.Timeout`
TASK_TIMEOUT_MARGIN_S = 30

#: the functions' Powertools service name and CloudWatch metrics namespace (the dashboards read this namespace)
SERVICE_NAME = "harvester"
METRICS_NAMESPACE = "Harvester"

#: environment every function gets, on AWS and locally (the stack adds the bucket, table and sources folder)
COMMON_ENVIRONMENT = {
    "POWERTOOLS_SERVICE_NAME": SERVICE_NAME,
    "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
}


@dataclass(frozen=True)
class FunctionAccess:
    """What one function may touch: S3 key prefixes (patterns such as `runs/*/staging/` allowed) it reads, writes
    and deletes, the ledger table (read and write, or read only), the source secrets."""

    s3_read: tuple[str, ...] = ()
    s3_write: tuple[str, ...] = ()
    s3_delete: tuple[str, ...] = ()
    s3_list: tuple[str, ...] = ()  # prefixes it only lists (no object access)
    ledger: bool = True
    ledger_read_only: bool = False
    secrets: bool = False

    @property
    def object_prefixes(self) -> list[str]:
        """Prefixes it has object actions on."""
        return sorted({*self.s3_read, *self.s3_write, *self.s3_delete})

    @property
    def prefixes(self) -> list[str]:
        """Prefixes it may list (s3:ListBucket): every prefix it touches, and the ones it only lists."""
        return sorted({*self.object_prefixes, *self.s3_list})


@dataclass(frozen=True)
class FunctionDef:
    handler: str  # "module.function", as Lambda names it
    access: FunctionAccess
    memory_mb: int
    timeout_s: int
    requirements: str  # file in lambdas/requirements/
    ephemeral_mb: int = DEFAULT_EPHEMERAL_MB
    environment: dict[str, str] = field(default_factory=dict)  # on top of COMMON_ENVIRONMENT

    @property
    def target(self) -> str:
        """The handler as "module:function" (what the local engine imports)."""
        module, func = self.handler.rsplit(".", 1)
        return f"{module}:{func}"


#: every function a workflow may call; a workflow's `${NameFunctionArn}` placeholder creates function `name`.
#: Adding a function is one line here (plus its handler module and requirements file).
FUNCTION_CATALOG: dict[str, FunctionDef] = {
    # plan checks the source's credential before anything is written (harvester.run.plan_run): it reads the secret;
    # a resume lists the run's raw objects to reopen batches whose output is gone
    "plan": FunctionDef("lambdas.plan.handler", FunctionAccess(s3_read=("runs/",), s3_write=("runs/",), s3_list=("raw/",),
                                                               secrets=True),
                        memory_mb=512, timeout_s=120, requirements="plan.txt"),
    "fetch": FunctionDef("lambdas.fetch.handler",
                         FunctionAccess(s3_read=("runs/",), s3_write=("runs/", "raw/"), secrets=True),
                         memory_mb=1024, timeout_s=900, requirements="fetch.txt"),
    "advance": FunctionDef("lambdas.advance.handler", FunctionAccess(s3_read=("runs/",), s3_write=("runs/",)),
                           memory_mb=512, timeout_s=300, requirements="advance.txt"),
    # the lake: raw NDJSON -> Parquet under processed/ (staging under runs/), compaction replaces processed files
    "convert": FunctionDef("lambdas.convert.handler",
                           FunctionAccess(s3_read=("raw/", "runs/", "processed/"), s3_write=("runs/", "processed/"),
                                          s3_delete=("runs/*/staging/", "processed/")),
                           memory_mb=3008, timeout_s=900, requirements="lake.txt"),
    # queries over the lake: the time index (ledger table, read only), tasks/partials under queries/, results/
    "query": FunctionDef("lambdas.query.handler",
                         FunctionAccess(s3_read=("processed/", "queries/"), s3_write=("queries/", "results/"),
                                        s3_delete=("queries/",), ledger_read_only=True),
                         memory_mb=1769, timeout_s=900, requirements="lake.txt"),
}


def function_of_placeholder(key: str) -> str | None:
    """`PlanFunctionArn` -> `plan` (the definition placeholder that calls a catalog function), else None."""
    return key[: -len("FunctionArn")].lower() if key.endswith("FunctionArn") else None
