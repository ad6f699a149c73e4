"""Advance level: total the finished level in the ledger, write the next level's manifest."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from harvester import aws
from harvester.metering import metered
from harvester.payloads import RunState
from harvester.run import advance_level

logger = Logger()
tracer = Tracer()


@metered("advance")  # duration, memory and AWS calls of the invocation, for the run's cost
@logger.inject_lambda_context(correlation_id_path="run.run_id")
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    current = RunState.model_validate(event)  # the workflow's state, checked where it comes in
    spec = aws.run_spec(current.run)
    state = advance_level(current.model_dump(), spec=spec, store=aws.store(), ledger=aws.ledger())
    logger.info("level done", extra={"level": current.level.name, "counts": state["last_level"]})
    return RunState.model_validate(state).model_dump()  # and where it goes out
