"""What runs inside a worker process of the local engine (a Lambda container; harvester/local/workers.py starts
them, harvester/local/sandbox.py holds each to its function's limits): set up the process, import the handler
(warm), run one invocation and report its result or its error by name."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import time
import warnings
from typing import Any

from harvester.local.iam import as_function
from harvester.local.moto_patches import lambda_error
from harvester.local.names import FakeContext


def _engine_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie is dead, only not reaped yet
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux): ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _watch_engine(engine_pid: int, parent_pid: int) -> None:
    """A worker never outlives the engine: if the engine is killed (even SIGKILL, which it cannot catch), its
    workers would go on calling the vendor for a run nobody is recording. Checked twice a second."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid or not _engine_alive(engine_pid):
            os._exit(1)


def _stop_or_exit(signum, frame) -> None:
    """SIGTERM from the engine (Ctrl-C, SIGTERM or --timeout of a local run): a fetch batch in progress writes
    what it fetched and its checkpoint, then ends as BatchIncomplete (harvester.worker.STOP); any other function
    has nothing to keep and exits at once, as the default action would."""
    import sys  # noqa: PLC0415

    worker = sys.modules.get("harvester.worker")
    if worker is None or not worker.ACTIVE:
        os._exit(128 + signum)
    worker.STOP.set()


def init_worker(endpoint: str, engine_pid: int | None = None) -> None:
    import threading

    if engine_pid is not None:
        threading.Thread(target=_watch_engine, args=(engine_pid, os.getppid()), name="watch-engine",
                         daemon=True).start()
    signal.signal(signal.SIGTERM, _stop_or_exit)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    logging.getLogger("botocore").setLevel(logging.WARNING)
    # as in the engine's process: module-level Powertools objects warn about re-added dimensions when metrics are
    # disabled locally (nothing flushes them)
    warnings.filterwarnings("ignore", module="aws_lambda_powertools")


def drop_metrics() -> None:
    """After each local invocation, what the flush at the end of a Lambda invocation does to the process's metrics,
    without printing them. Locally metrics are disabled (POWERTOOLS_METRICS_DISABLED) and Powertools then skips the
    flush's clear as well, so the one set every Metrics of a process shares grew over the invocations, and the 100th
    value of a metric was printed as an EMF document on stdout all the same (AmazonCloudWatchEMFProvider.add_metric,
    aws-lambda-powertools 3.x), into the progress display or a `--json` document."""
    from aws_lambda_powertools import Metrics  # noqa: PLC0415 - the handlers' dependency, loaded with them

    Metrics().clear_metrics()


def warm(targets: list[str]) -> int:
    """Import the handlers (a warm container); returns the worker's pid."""
    from harvester.client import ssl_context  # noqa: PLC0415

    for target in targets:
        importlib.import_module(target.split(":")[0])
    ssl_context()  # what a warm container built on its first invocation
    return os.getpid()


def invoke(target: str, name: str, timeout: float, event: dict[str, Any], env: dict[str, str],
            memory_mb: int = 1024) -> tuple[str, Any]:
    # the engine's environment at the time of the call (a spec's credential variable may be set after the pool
    # started), the way a function's configuration reaches a Lambda container
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    os.environ.update(env)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    module, func = target.split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        with as_function(name):  # the function's role, when the engine enforces IAM
            return "ok", handler(event, FakeContext(name, timeout, memory_mb))
    except Exception as exc:  # noqa: BLE001 - every error goes back to the state machine, by name
        report = lambda_error(exc)
        return "error", (report["errorType"], report["errorMessage"], report["stackTrace"])
    finally:
        drop_metrics()
