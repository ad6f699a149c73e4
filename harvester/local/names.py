"""The local engine's names (region, account, bucket, table, state machines, function ARNs) and the Lambda
context object its handlers get: what the engine, its worker processes and the IAM guard share, in a module that
imports none of them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = "harvester-local"
TABLE = "harvester-ledger"
STATE_MACHINE = "harvester-harvest"
QUERY_STATE_MACHINE = "harvester-query"


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:harvester-{name}"


#: the alias the workflow invokes: CDK substitutes each function's `live` alias ARN (`alias.function_arn`)
LIVE = "live"


@dataclass
class FakeContext:
    """The parts of Lambda's context object the handlers and Powertools use."""

    function_name: str
    timeout: float
    memory_limit_in_mb: int = 1024

    def __post_init__(self):
        self._deadline = time.monotonic() + self.timeout
        self.aws_request_id = uuid.uuid4().hex
        self.invoked_function_arn = function_arn(self.function_name.removeprefix("harvester-"))
        self.function_version = "$LATEST"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))
