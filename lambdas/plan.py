"""Plan run: validate the execution input and the source spec, write the first manifest."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.parser import BaseModel, event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from harvester import aws
from harvester.metering import metered
from harvester.payloads import RunState
from harvester.run import InputError, plan_run
from harvester.secrets import resolve_secret
from harvester.spec import SpecError

logger = Logger()
tracer = Tracer()

__all__ = ["handler", "InputError", "SpecError"]  # the errors are the workflow's Error names


class PlanEvent(BaseModel):
    input: Any
    execution_name: str
    start_time: str


@metered("plan")  # duration, memory and AWS calls of the invocation, for the run's cost
@logger.inject_lambda_context
@tracer.capture_lambda_handler
@event_parser(model=PlanEvent)
def handler(event: PlanEvent, context: LambdaContext) -> dict:
    state = plan_run(
        event.input,
        event.execution_name,
        event.start_time,
        load_spec=aws.source_spec,
        resolve_secret=resolve_secret,
        store=aws.store(),
        ledger=aws.ledger(),
        execution_status=aws.execution_status,
    )
    logger.append_keys(run_id=state["run"]["run_id"], source=state["run"]["source"])
    logger.info("run planned", extra={"levels": state["level"]["count"], "attempt": state["run"]["attempt"]})
    return RunState.model_validate(state).model_dump()  # the state the workflow's loop starts from, checked
