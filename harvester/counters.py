"""What a batch counts: one vocabulary for the worker that writes the counts on its batch item
(harvester/worker.py), the advance step that adds a level's batch items up into the run's totals
(harvester/run.py), and the progress and cost views that read them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class BatchCounts(BaseModel):
    """The figures of a batch item that a level's and a run's totals add up."""

    model_config = ConfigDict(extra="forbid")

    calls: int = 0  # every attempt's calls
    records: int = 0
    pages: int = 0
    throttled: int = 0  # 429s and the spec's throttle statuses
    retries: int = 0
    failures: int = 0  # parents whose call failed in the latest attempt (FAIL items)
    token_wait_seconds: float = 0.0  # waiting for the shared rate limiter's send slots
    limiter_writes: int = 0  # the shared limiter's DynamoDB writes
    tokens_expired: int = 0  # tokens leased and never used


#: the batch item's summed figures, in order
BATCH_SUMS: tuple[str, ...] = tuple(BatchCounts.model_fields)
#: a run's (and a level's) totals: the batch sums and the batches that failed
RUN_TOTALS: tuple[str, ...] = (*BATCH_SUMS, "failed_batches")
