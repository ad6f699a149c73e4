"""Patches that make moto behave like AWS where the harvester relies on it.

Each patch is an idempotent ``install_*`` function. Its docstring is the record of why it exists, in three parts:
what moto 5.2.5 does, what AWS does (with the documentation page), and the upstream issue where one exists.
moto's Step Functions executor is a port of LocalStack's interpreter (https://github.com/getmoto/moto/issues/3544),
so several gaps are LocalStack's too, and their issues are LocalStack's.
"""

from __future__ import annotations

import functools
import threading
import traceback

# One process-wide lock for every DynamoDB item write/read in moto (install_dynamodb_lock).
_DYNAMODB_LOCK = threading.RLock()
_DYNAMODB_METHODS = (
    "put_item",
    "update_item",
    "delete_item",
    "get_item",
    "transact_write_items",
    "batch_write_item",
    # reads of many items too: moto sizes each item by iterating its attributes, and a write on another thread
    # changed them underneath ("dictionary changed size during iteration", a failed batch on a loaded machine)
    "query",
    "scan",
    "batch_get_item",
    "transact_get_items",
)


def install_dynamodb_lock() -> None:
    """moto: applies a conditional write without a lock, so two threads (moto runs Map children and tasks on
    threads, and ThreadedMotoServer serves each request on one) can both pass the same condition. Seen: 8 threads
    taking 3,000 tokens with `SET tokens = tokens - :one` under `tokens >= :one` were granted 3,069.

    AWS: a conditional PutItem/UpdateItem/DeleteItem checks its condition and writes as one atomic step: it
    succeeds only if the condition holds on the item as it is then
    (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html), so
    the shared rate limiter and the ledger's conditions rely on it.

    Upstream: moto documents that it does not support concurrent access
    (https://github.com/getmoto/moto/issues/4471, https://github.com/getmoto/moto/pull/7166); no fix planned.
    Here: the backend's item operations run under one process-wide lock (3,000 of 3,000 granted). Reads of many
    items (Query, Scan, BatchGetItem) take it too: on AWS each item they return is read whole, in moto a Query beside
    an UpdateItem of one of its items raised RuntimeError (tests/unit/test_moto_dynamodb_lock.py)."""
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


#: Lambda's synchronous invocation payload quota, 6 MB for the request and for the response
#: (https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html); a larger response fails the invocation
#: with errorType `Function.ResponseSizeTooLarge`, "Response payload size exceeded maximum allowed payload size
#: (6291556 bytes)." (the byte count Lambda's message names). The request side cannot be reached from a state
#: machine: a Task's Payload is its input after Parameters, held to 256 KiB first (install_size_quota).
MAX_LAMBDA_RESPONSE_BYTES = 6_291_556


class InvocationRefused(Exception):
    """Raised by a dispatcher when Lambda refuses the invocation itself (e.g. AccessDeniedException: the state
    machine's role may not invoke the function): `error` is the botocore ClientError the Invoke call raises."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def install_lambda_dispatch(dispatch) -> None:
    """moto: a Lambda Task calls moto's Lambda backend, which runs a function's deployment package in Docker (none
    here) and knows nothing of the handlers in this repo.

    AWS: the Task invokes the function; a handler's unhandled exception comes back with `FunctionError` and a
    payload `{"errorType", "errorMessage", "stackTrace"}`, and the state's Error is that errorType
    (https://docs.aws.amazon.com/lambda/latest/api/API_Invoke.html,
    https://docs.aws.amazon.com/lambda/latest/dg/python-exceptions.html); a response over 6 MB fails as
    `Function.ResponseSizeTooLarge`.

    Upstream: none (executing Lambda in-process is this engine's choice, not a moto bug).
    Here: `dispatch(function_arn, event) -> result` runs the real handler and raises on a function error; the
    executor looks `_invoke_lambda_function` up as a module global on every call, so assigning it works.
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
        body = json.dumps(result)
        if len(body.encode()) > MAX_LAMBDA_RESPONSE_BYTES:
            return {"StatusCode": 200, "FunctionError": "Unhandled", "ExecutedVersion": "$LATEST",
                    "Payload": {"errorType": "Function.ResponseSizeTooLarge",
                                "errorMessage": "Response payload size exceeded maximum allowed payload size "
                                                f"({MAX_LAMBDA_RESPONSE_BYTES} bytes)."}}  # fmt: skip
        return {"StatusCode": 200, "ExecutedVersion": "$LATEST", "Payload": json.loads(body)}

    lambda_eval_utils._invoke_lambda_function = invoke


def install_tolerance_check() -> None:
    """moto: parses ToleratedFailureCount/Percentage and ignores them: a Distributed Map whose children fail
    succeeds, with `null` in the failed children's slots (DescribeMapRun counts them right).

    AWS: a Map Run fails with `States.ExceedToleratedFailureThreshold` once the failed items pass the tolerated
    count or percentage, 0 by default
    (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html#maprun-fail-threshold).

    Upstream: LocalStack, whose interpreter moto ported, added the fields to the parser and logs that they "do not
    yet affect the evaluation" (https://github.com/localstack/localstack/issues/10056,
    https://github.com/localstack/localstack/pull/11058). Here: `_map_run` raises that error past the
    thresholds."""
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
    """moto: the Distributed Map's worker pool recurses once per item; past ~985 items per worker thread it hits
    Python's recursion limit, the worker dies silently and the execution stays RUNNING forever.

    AWS: a Distributed Map runs every item, up to 10,000 child executions at once
    (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html).

    Upstream: no issue found (moto or LocalStack). Here: the same logic as a loop. (The workflow has no inline
    Map, whose pool has the same recursion.)"""
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
    """moto: re-parses every JSONPath expression each time a state evaluates it; ~60% of the executor's CPU, about
    250 Map items/s on this kind of machine.

    AWS: not a behaviour, a speed: nothing to match. Upstream: no issue found. Here: the parsers are memoised
    (`functools.lru_cache`), about 900 items/s; results are the same objects jsonpath_ng returns."""
    import jsonpath_ng
    import jsonpath_ng.ext
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    if not hasattr(json_path.parse, "cache_info"):
        json_path.parse = functools.lru_cache(maxsize=4096)(jsonpath_ng.ext.parse)
    if not hasattr(result_path.parse, "cache_info"):
        result_path.parse = functools.lru_cache(maxsize=4096)(jsonpath_ng.parse)



# ---------------------------------------------------------------------------------------------------------------
# Payload limits and Distributed Map results, as AWS enforces and returns them
# ---------------------------------------------------------------------------------------------------------------
#: 256 KiB: the largest input or output of a state, a Task's result, a Map's result
#: (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html, "Maximum input or output size")
MAX_STATE_BYTES = 256 * 1024


def state_size(value) -> int:
    """UTF-8 bytes of a value as Step Functions serialises it (compact JSON; a string counts as itself)."""
    import json

    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return len(text.encode("utf-8"))


def install_size_quota() -> None:
    """moto: checks 256 KiB (States.DataLimitExceeded) on every state's output and every Task's result, but on
    `json.dumps` with spaces after ',' and ':' (a payload AWS accepts can fail locally), with `<` where AWS allows
    exactly 256 KiB, and never on a Lambda Task's Payload after Parameters.

    AWS: 256 KiB as a UTF-8 string for a state's input or output, a task's result and a Task's parameters
    (https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html, "Maximum input or output size").

    Upstream: no issue found. Here: the check as AWS makes it, in every module that imported moto's, and on the
    Payload."""
    from moto.stepfunctions.parser.asl.component.state import state
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_lambda
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service

    def is_within_size_quota(value) -> bool:
        return state_size(value) <= MAX_STATE_BYTES

    for module in (state, state_task_lambda, state_task_service):
        module.is_within_size_quota = is_within_size_quota

    # "After Parameters processing, the input of a state is larger than payload size quota": a Lambda Task's
    # Payload is checked before the invocation (moto checks only outputs)
    cls = state_task_lambda.StateTaskLambda
    if getattr(cls._eval_parameters, "_harvester_patched", False):
        return
    eval_parameters = cls._eval_parameters

    @functools.wraps(eval_parameters)
    def _eval_parameters(self, env):
        parameters = eval_parameters(self, env)
        self._verify_size_quota(env=env, value=parameters["Payload"])
        return parameters

    _eval_parameters._harvester_patched = True  # type: ignore[attr-defined]
    cls._eval_parameters = _eval_parameters


def install_terminal_errors() -> None:
    """moto: `States.ALL` in a Retry or Catch matches every error.

    AWS: `States.ALL` matches neither `States.DataLimitExceeded` nor `States.Runtime`: both are terminal and fail
    the execution whatever the Catch or Retry says, unless the rule names them
    (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html, "States.ALL").

    Upstream: no issue found. Here: a rule matches those two only when it names them."""
    from moto.stepfunctions.parser.asl.component.common.error_name.error_equals_decl import ErrorEqualsDecl
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import StatesErrorName
    from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
        StatesErrorNameType,
    )

    if getattr(ErrorEqualsDecl._eval_body, "_harvester_patched", False):
        return
    terminal = {StatesErrorNameType.StatesStatesDataLimitExceeded, StatesErrorNameType.StatesRuntime}
    original = ErrorEqualsDecl._eval_body

    @functools.wraps(original)
    def _eval_body(self, env):
        error_name = env.stack[-1]
        if isinstance(error_name, StatesErrorName) and error_name.typ in terminal and error_name not in self.error_names:
            env.stack.pop()
            env.stack.append(False)
            return
        original(self, env)

    _eval_body._harvester_patched = True  # type: ignore[attr-defined]
    ErrorEqualsDecl._eval_body = _eval_body


def child_record(map_run_record, index: int, child_input, started, program_state, output=None) -> dict:
    """One child execution as a Distributed Map reports it with Transformation NONE: what a ResultWriter writes
    for every child, and what the Map's own result holds for a failed child when no ResultWriter is set ("If a
    child workflow execution fails, Step Functions returns its execution result unchanged",
    https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html)."""
    import datetime
    import json

    from moto.stepfunctions.parser.asl.eval.program_state import ProgramError

    run_id = map_run_record.map_run_arn.rsplit(":", 1)[-1]
    name = f"{run_id.rsplit('/', 1)[-1]}-{index}"
    record = {
        "ExecutionArn": f"{map_run_record.map_state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}",
        "Input": json.dumps(child_input, separators=(",", ":"), default=str),
        "InputDetails": {"Included": True},
        "Name": name,
        "RedriveCount": 0,
        "StartDate": started.isoformat(),
        "StateMachineArn": map_run_record.map_state_machine_arn,
        "StopDate": datetime.datetime.now(tz=datetime.UTC).isoformat(),
    }
    if isinstance(program_state, ProgramError):
        error = program_state.error or {}
        record.update(Status="FAILED", Error=error.get("error", ""), Cause=error.get("cause", ""),
                      RedriveStatus="REDRIVABLE")  # fmt: skip
    else:
        record.update(Status="SUCCEEDED", Output=json.dumps(output, separators=(",", ":"), default=str),
                      OutputDetails={"Included": True}, RedriveStatus="NOT_REDRIVABLE")  # fmt: skip
    return record


def install_map_results() -> None:
    """moto: returns `null` for a failed child of a Distributed Map and never checks the Map's result against the
    256 KiB limit.

    AWS: returns a failed child's whole execution record (its input included) in the Map's result unless a
    ResultWriter is set, and fails the state with States.DataLimitExceeded when that result passes 256 KiB; with a
    ResultWriter the result goes to S3 and the state's output is the small ResultWriterDetails object
    (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html).

    Upstream: no issue found. Here: each child's record is kept on its map run, for the Map's result and for the
    writer (install_result_writer)."""
    import datetime

    from moto.stepfunctions.parser.asl.component.state.exec.state_map import state_map
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
        distributed_iteration_component as dic,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.itemprocessor import (
        distributed_item_processor_worker as dipw,
    )
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramError

    worker = dipw.DistributedItemProcessorWorker
    if getattr(worker._eval_job, "_harvester_results", False):
        return
    eval_input, eval_job = worker._eval_input, worker._eval_job

    def _eval_input(self, env_frame):
        eval_input(self, env_frame)
        env_frame._harvester_child_input = env_frame.states.get_input()

    def _eval_job(self, env, job):
        started = datetime.datetime.now(tz=datetime.UTC)
        eval_job(self, env, job)
        state = env.program_state()
        if job.job_output is None and not isinstance(state, ProgramError):
            return  # timed out or aborted: not a result
        records = self._map_run_record.__dict__.setdefault("_harvester_children", {})
        records[job.job_index] = child_record(self._map_run_record, job.job_index,
                                              getattr(env, "_harvester_child_input", job.job_input), started, state,
                                              job.job_output)  # fmt: skip

    _eval_job._harvester_results = True  # type: ignore[attr-defined]
    worker._eval_input, worker._eval_job = _eval_input, _eval_job

    map_run = dic.DistributedIterationComponent._map_run

    @functools.wraps(map_run)
    def _map_run(self, env, eval_input):
        map_run(self, env, eval_input)
        # failed children: their record instead of null (the order of the items is kept)
        records = eval_input.map_run_record.__dict__.get("_harvester_children", {})
        env.stack[-1] = [records[i] if out is None and records.get(i, {}).get("Status") == "FAILED" else out
                         for i, out in enumerate(env.stack[-1])]  # fmt: skip

    _map_run._harvester_results = True  # type: ignore[attr-defined]
    dic.DistributedIterationComponent._map_run = _map_run

    eval_execution = state_map.StateMap._eval_execution

    @functools.wraps(eval_execution)
    def _eval_execution(self, env):
        env._harvester_map_input = env.states.get_input()  # what the ResultWriter's paths read (below)
        eval_execution(self, env)
        if self.result_writer is None and isinstance(self.iteration_component, dic.DistributedIterationComponent):
            self._verify_size_quota(env=env, value=env.stack[-1])  # the result, before ResultSelector/ResultPath

    state_map.StateMap._eval_execution = _eval_execution


def install_result_writer() -> None:
    """moto: its ResultWriter writes only a manifest.json with empty ResultFiles, as LocalStack's first version did
    (https://github.com/localstack/localstack/pull/11381: "Generation of individual result json is not supported
    yet"). AWS: writes, under `{Prefix}/{map run id}/`, one file per
    status with every child's record (SUCCEEDED_0.json, FAILED_0.json: JSON arrays, Transformation NONE) and a
    manifest.json listing them; the Map's output is `{"MapRunArn", "ResultWriterDetails": {"Bucket", "Key"}}`
    (https://docs.aws.amazon.com/step-functions/latest/dg/input-output-resultwriter.html). The files are written
    with the state machine's credentials, as AWS does."""
    import json

    from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.resource_eval import (
        resource_eval_s3 as rw,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.result_writer.result_writer_decl import (
        ResultWriter,
    )

    cls = rw.ResourceEvalS3
    if getattr(cls._handle_put_object, "_harvester_patched", False):
        return
    writer_eval = ResultWriter._eval_body

    def _eval_body(self, env):
        # moto evaluates the writer's Parameters ("Prefix.$") against the Map's result; as on AWS, against the
        # Map state's input
        result = env.stack.pop()  # the records carry it (_handle_put_object)
        env.stack.append(getattr(env, "_harvester_map_input", result))  # what the paths read; popped as "results"
        writer_eval(self, env)

    ResultWriter._eval_body = _eval_body

    def _handle_put_object(env, resource_runtime_part, state_credentials):
        parameters = env.stack.pop()
        env.stack.pop()  # the Map state's input (ResultWriter._eval_body above): the records carry the results
        s3 = cls._get_s3_client(resource_runtime_part=resource_runtime_part, state_credentials=state_credentials)
        record = env.map_run_record_pool_manager.get_all().pop()
        prefix = parameters.get("Prefix", "")
        prefix = prefix if prefix in ("",) or prefix.endswith("/") else prefix + "/"
        base = f"{prefix}{record.map_run_arn.rsplit(':', 1)[-1].rsplit('/', 1)[-1]}/"
        children = [c for _, c in sorted(record.__dict__.get("_harvester_children", {}).items())]
        files = {"FAILED": [], "PENDING": [], "SUCCEEDED": []}
        for status in ("SUCCEEDED", "FAILED"):
            body = json.dumps([c for c in children if c["Status"] == status]).encode()
            if body != b"[]":
                key = f"{base}{status}_0.json"
                s3.put_object(Bucket=parameters["Bucket"], Key=key, Body=body)
                files[status].append({"Key": key, "Size": len(body)})
        key = f"{base}manifest.json"
        manifest = {"DestinationBucket": parameters["Bucket"], "MapRunArn": record.map_run_arn, "ResultFiles": files}
        s3.put_object(Bucket=parameters["Bucket"], Key=key, Body=json.dumps(manifest, indent=2).encode())
        env.stack.append({"MapRunArn": record.map_run_arn,
                          "ResultWriterDetails": {"Bucket": parameters["Bucket"], "Key": key}})  # fmt: skip

    _handle_put_object._harvester_patched = True  # type: ignore[attr-defined]
    cls._handle_put_object = staticmethod(_handle_put_object)


def float_tolerances(definition: str) -> str:
    """moto: its ASL grammar rejects an integer ToleratedFailurePercentage ("ASLParserException ... no viable
    alternative at input '"ToleratedFailurePercentage":50'"), which is what CDK emits for 50.0.

    AWS: ToleratedFailurePercentage is a number from 0 to 100, integer or not
    (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html#maprun-fail-threshold).

    Upstream: the same refusal in LocalStack's parser (https://github.com/localstack/localstack/issues/10189, an
    integer 99). Here: integers rewritten to floats in the text handed to moto (tests/integration/
    test_local_engine.py shows the refusal and the fix)."""
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
    install_size_quota()
    install_terminal_errors()
    install_map_results()
    install_result_writer()
