"""One vocabulary of batch counts (harvester/counters.py): the worker writes it on the batch item, the advance step
adds exactly those up into the run's totals."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws
from pydantic import ValidationError

from harvester.counters import BATCH_SUMS, RUN_TOTALS, BatchCounts
from harvester.ledger import Ledger, create_table_kwargs
from harvester.run import COUNTERS, level_counts

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)


def test_a_count_the_vocabulary_does_not_know_is_refused():
    with pytest.raises(ValidationError, match="token_waits"):
        BatchCounts(calls=3, token_waits=1.0)


def test_the_run_totals_add_up_every_count_a_batch_writes():
    assert COUNTERS == RUN_TOTALS == (*BATCH_SUMS, "failed_batches")
    with mock_aws():
        table = boto3.resource("dynamodb", region_name="us-east-1").create_table(**create_table_kwargs("t"))
        ledger = Ledger(table)
        one = BatchCounts(**{name: i + 1 for i, name in enumerate(BATCH_SUMS)})
        two = BatchCounts(calls=10, records=5, token_wait_seconds=0.25)
        ledger.put_batch("s", "r", 1, "b1", {"status": "SUCCEEDED", **one.model_dump()}, 2_000_000_000)
        ledger.put_batch("s", "r", 1, "b2", {"status": "FAILED", **two.model_dump()}, 2_000_000_000)
        sums, _ = level_counts(ledger, "s", "r", 1, "1")
    for name in BATCH_SUMS:
        assert sums[name] == getattr(one, name) + getattr(two, name), name
    assert sums["failed_batches"] == 1
