"""Patches that make moto behave like AWS where the harvester relies on it.

See shared/NOTES.md. Each patch is an idempotent ``install_*`` function.
"""

from __future__ import annotations

import functools
import threading
import traceback

# One process-wide lock for every DynamoDB item write/read in moto (NOTES P6).
_DYNAMODB_LOCK = threading.RLock()
_DYNAMODB_METHODS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "transact_write_items",
    "batch_write_item",
)


def install_dynamodb_lock() -> None:
    """P6: moto applies a conditional write without a lock, so two threads can both pass the
    same condition (lost updates, a rate limiter granting more tokens than exist). On AWS these
    writes are atomic. Wrap the backend's item operations in one process-wide lock."""
    from moto.dynamodb.models import DynamoDBBackend

    for name in _DYNAMODB_METHODS:
        original = getattr(DynamoDBBackend, name)
        if getattr(original, "_harvester_locked", False):
            continue

        def make(fn):
            @functools.wraps(fn)
            def locked(self, *args, **kwargs):
                with _DYNAMODB_LOCK:
                    return fn(self, *args, **kwargs)

            locked._harvester_locked = True  # type: ignore[attr-defined]
            return locked

        setattr(DynamoDBBackend, name, make(original))


# ---------------------------------------------------------------------------------------------------------------
# Step Functions executor (moto 5.2.5, a port of LocalStack's): where it differs from AWS, make it behave like AWS.
# ---------------------------------------------------------------------------------------------------------------
_SFN = "moto.stepfunctions.parser.asl"


class LambdaKilled(Exception):
    """Raised (by tests) inside a handler to stand for Lambda killing the invocation at its timeout: the state
    machine sees what AWS reports then, the error `Sandbox.Timedout`."""

    error_type = "Sandbox.Timedout"


def lambda_error(exc: BaseException) -> dict:
    """A handler's error as Lambda reports it (errorType, errorMessage, stackTrace): the type is the exception's
    `error_type` if it names one (e.g. Sandbox.Timedout), else its class name; an error that already carries the
    stack of the process it was raised in (a worker process) keeps that stack."""
    return {
        "errorType": getattr(exc, "error_type", type(exc).__name__),
        "errorMessage": str(exc),
        "stackTrace": getattr(exc, "stack", None) or traceback.format_tb(exc.__traceback__)[-4:],
    }


class InvocationRefused(Exception):
    """Raised by a dispatcher when Lambda refuses the invocation itself (e.g. AccessDeniedException: the state
    machine's role may not invoke the function): `error` is the botocore ClientError the Invoke call raises."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def install_lambda_dispatch(dispatch) -> None:
    """P1: Lambda tasks run in-process. `dispatch(function_arn, event) -> result` raises on a function error.

    The executor looks `_invoke_lambda_function` up as a module global on every call, so assigning it works.
    A raised exception becomes the task's Error (its class name) and Cause, as on AWS.
    """
    import json

    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    def invoke(parameters, region, state_credentials):
        raw = parameters.get("Payload") or b"{}"
        event = json.loads(raw.decode() if isinstance(raw, (bytes, bytearray)) else raw)
        try:
            result = dispatch(parameters["FunctionName"], event)
        except InvocationRefused as refused:  # not a function error: the task fails with Lambda.<code>
            raise refused.error from None
        except Exception as exc:  # noqa: BLE001 - every error is reported to the state machine
            # as Lambda reports an unhandled error: the Cause the state machine sees is this JSON
            return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST",
                    "Payload": lambda_error(exc)}
        # a JSON round trip, as Lambda serialises the result (tuples become lists, no Python objects leak)
        return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": json.loads(json.dumps(result))}

    lambda_eval_utils._invoke_lambda_function = invoke


def install_tolerance_check() -> None:
    """P3: moto ignores ToleratedFailureCount/Percentage and lets a Map whose children fail succeed. AWS fails
    the Map with States.ExceedToleratedFailureThreshold (default tolerance 0); so must local runs."""
    from moto.stepfunctions.parser.api import HistoryEventType, MapRunFailedEventDetails
    from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
        FailureEvent,
        FailureEventException,
    )
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
        distributed_iteration_component as dic,
    )
    from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails

    cls = dic.DistributedIterationComponent
    if getattr(cls._map_run, "_harvester_patched", False):
        return
    original = cls._map_run

    def _map_run(self, env, eval_input):
        original(self, env, eval_input)
        counter = eval_input.map_run_record.item_counter
        failed = counter.failed.get() + counter.timed_out.get()
        total = counter.total.get()
        if not failed:
            return
        count = eval_input.tolerated_failure_count or 0
        pct = float(eval_input.tolerated_failure_percentage or 0.0)
        exceeded = (count == 0 and pct == 0.0) or (count and failed > count) or (pct and failed * 100.0 / total > pct)
        if not exceeded:
            return
        env.stack.pop()  # the partial results
        err = StatesErrorNameType.StatesExceedToleratedFailureThreshold
        raise FailureEventException(
            failure_event=FailureEvent(
                env=env,
                error_name=StatesErrorName(typ=err),
                event_type=HistoryEventType.MapRunFailed,
                event_details=EventDetails(
                    mapRunFailedEventDetails=MapRunFailedEventDetails(
                        error=err.to_name(),
                        cause=f"The specified tolerated failure threshold was exceeded: {failed}/{total} items failed",
                    )
                ),
            )
        )

    _map_run._harvester_patched = True  # type: ignore[attr-defined]
    cls._map_run = _map_run


def install_iterative_pools() -> None:
    """P5: the Distributed Map's worker pool recurses once per item; past ~985 items per worker thread it hits
    the recursion limit and the execution stays RUNNING forever. The same logic as a loop. (The workflow has no
    inline Map, whose pool has the same flaw.)"""
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (
        distributed_item_processor_worker as dipw,
    )

    def _eval_pool(self, job, worker_frame):
        while True:
            if job is None:
                self._env.delete_frame(worker_frame)
                return
            job_frame = worker_frame.open_inner_frame()
            self._eval_job(env=job_frame, job=job)
            worker_frame.delete_frame(job_frame)
            if isinstance(job.job_output, Exception) or self.stopped():
                self._env.delete_frame(worker_frame)
                self._job_pool.close_job(job)
                return
            next_job = self._job_pool.next_job()
            if next_job is None:
                self._env.delete_frame(worker_frame)
                self._job_pool.close_job(job)
                return
            self._job_pool.close_job(job)
            job = next_job

    _eval_pool._harvester_patched = True  # type: ignore[attr-defined]
    cls = dipw.DistributedItemProcessorWorker
    if not getattr(cls._eval_pool, "_harvester_patched", False):
        cls._eval_pool = _eval_pool


def install_jsonpath_cache() -> None:
    """P4: most of the executor's CPU re-parses the same JSONPath expressions; memoise the parsers."""
    import jsonpath_ng
    import jsonpath_ng.ext
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    if not hasattr(json_path.parse, "cache_info"):
        json_path.parse = functools.lru_cache(maxsize=4096)(jsonpath_ng.ext.parse)
    if not hasattr(result_path.parse, "cache_info"):
        result_path.parse = functools.lru_cache(maxsize=4096)(jsonpath_ng.parse)


def float_tolerances(definition: str) -> str:
    """moto's ASL grammar rejects an integer ToleratedFailurePercentage (what CDK emits for 50.0); AWS accepts
    both. Rewrite integers to floats in the text handed to moto."""
    import json

    def walk(node):
        if isinstance(node, dict):
            return {
                k: (float(v) if k == "ToleratedFailurePercentage" and isinstance(v, int) else walk(v))
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return json.dumps(walk(json.loads(definition)))


def install_all(dispatch) -> None:
    install_dynamodb_lock()
    install_lambda_dispatch(dispatch)
    install_tolerance_check()
    install_iterative_pools()
    install_jsonpath_cache()
