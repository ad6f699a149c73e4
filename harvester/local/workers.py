"""Lambda containers as processes: the local engine's fetch workers, each in its own Python process.

On AWS every fetch invocation has a CPU of its own; in one Python process the whole fleet shares one GIL with
moto's executor, and a worker's wake-ups come late enough that leased rate-limit tokens expire unused (the
rate-limit benchmark measured utilisation 0.77 at 50 r/s that way). Here the fetch handler runs in a pool of
worker processes, as a Lambda container would:

- the parent (the engine) keeps moto in memory and serves it over HTTP on 127.0.0.1 (moto's
  `ThreadedMotoServer`, which shares the in-process backends), so workers read and write the same bucket and
  ledger table, and the shared rate limiter's bucket item, through plain boto3 with `AWS_ENDPOINT_URL`;
- a worker process runs the real handler (`lambdas.fetch:handler`) with a Lambda-like context whose clock
  starts when the invocation starts in the worker (a busy pool queues invocations, as reserved concurrency
  would);
- the handler's result, or its error's type and message, comes back to the executor, which sees exactly what
  it sees from an in-process handler (a raised error becomes the task's Error and Cause).

Processes come from a forkserver that imported the heavy libraries once, so a new worker costs a fork, not a
Python start-up. A worker process that dies (killed, out of memory) fails its invocation with the error AWS
reports when a Lambda runtime exits, `Runtime.ExitError`: the batch is recorded as failed and a resume continues
it from its checkpoint.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from harvester.local.iam import as_function
from harvester.local.moto_patches import lambda_error

#: libraries a worker needs, imported once by the forkserver instead of once per worker process
PRELOAD = ["boto3", "botocore.session", "httpx", "pydantic", "aws_lambda_powertools", "yaml"]


class RemoteError(Exception):
    """A handler's error raised in a worker process, with the name the state machine sees."""

    def __init__(self, error_type: str, message: str, stack: list[str]):
        super().__init__(message)
        self.error_type = error_type
        self.stack = stack


def _init_worker(endpoint: str) -> None:
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # as in the engine's process: module-level Powertools objects warn about re-added dimensions when metrics are
    # disabled locally (nothing flushes them)
    warnings.filterwarnings("ignore", module="aws_lambda_powertools")


def _warm(targets: list[str]) -> int:
    """Import the handlers (a warm container); returns the worker's pid."""
    import harvester.local.engine  # noqa: F401, PLC0415 - FakeContext
    from harvester.client import ssl_context  # noqa: PLC0415

    for target in targets:
        importlib.import_module(target.split(":")[0])
    ssl_context()  # what a warm container built on its first invocation
    return os.getpid()


def _invoke(target: str, name: str, timeout: float, event: dict[str, Any], env: dict[str, str]) -> tuple[str, Any]:
    from harvester.local.engine import FakeContext  # noqa: PLC0415 - the worker imports only what it runs

    # the engine's environment at the time of the call (a spec's credential variable may be set after the pool
    # started), the way a function's configuration reaches a Lambda container
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    os.environ.update(env)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    module, func = target.split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        with as_function(name):  # the function's role, when the engine enforces IAM
            return "ok", handler(event, FakeContext(name, timeout))
    except Exception as exc:  # noqa: BLE001 - every error goes back to the state machine, by name
        report = lambda_error(exc)
        return "error", (report["errorType"], report["errorMessage"], report["stackTrace"])


class WorkerPool:
    """Runs handlers in up to `size` worker processes that talk to moto at `endpoint`."""

    def __init__(self, size: int, endpoint: str, targets: list[str]):
        self.size = size
        self.endpoint = endpoint
        self.targets = targets
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(PRELOAD)
            else:  # Windows: each worker starts Python (slower start, same behaviour)
                ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(max_workers=self.size, mp_context=ctx, initializer=_init_worker,
                                             initargs=(self.endpoint,))
        return self._pool

    def start(self) -> None:
        """Start every worker and import the handlers now (warm containers): a worker that starts in the middle
        of a level would hold its share of the rate for its start-up time."""
        pool = self._executor()
        for future in [pool.submit(_warm, self.targets) for _ in range(self.size)]:
            future.result()

    def invoke(self, target: str, name: str, timeout: float, event: dict[str, Any]) -> Any:
        try:
            status, value = self._executor().submit(_invoke, target, name, timeout, event, dict(os.environ)).result()
        except BrokenProcessPool as exc:
            broken, self._pool = self._pool, None  # a worker died: the next invocation gets a fresh pool
            if broken is not None:
                broken.shutdown(wait=False, cancel_futures=True)
            raise RemoteError("Runtime.ExitError", f"the worker process running {name} exited: {exc}", []) from None
        if status == "error":
            raise RemoteError(*value)
        return value

    def pids(self) -> list[int]:
        """The worker processes running now."""
        return list(self._pool._processes) if self._pool is not None else []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
