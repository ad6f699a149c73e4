"""moto's DynamoDB under threads, as the local engine runs it (Map children, tasks and ThreadedMotoServer requests
on threads): the process-wide lock of harvester/local/moto_patches.py makes each item operation one step, as it is
on AWS."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from moto import mock_aws

from harvester.local.moto_patches import install_dynamodb_lock


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    install_dynamodb_lock()
    with mock_aws():
        yield boto3.resource("dynamodb", region_name="us-east-1").create_table(
            TableName="ledger",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                  {"AttributeName": "sk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )


def test_a_query_beside_writes_to_its_items_reads_each_item_whole(table):
    """A fetch worker queries its batch's FAIL# items (ledger.put_failures) while other batches update items of the
    same run: moto sized each item it returned by iterating its attributes while another thread's UpdateItem added
    one, and the query raised "RuntimeError: dictionary changed size during iteration" (a loaded machine: a batch
    of a 30-slice backfill failed for it). On AWS each item a Query returns is read whole
    (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Query.html); here query and scan take the
    lock the writes take."""
    for i in range(20):
        table.put_item(Item={"pk": "RUN#x", "sk": f"BATCH#{i:02d}"})
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                table.update_item(Key={"pk": "RUN#x", "sk": f"BATCH#{n % 20:02d}"},
                                  UpdateExpression="SET #a = :v", ExpressionAttributeNames={"#a": f"a{worker}_{n}"},
                                  ExpressionAttributeValues={":v": n})
                time.sleep(0.001)  # let the readers have the lock too (it is not fair)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(60):
                items = table.query(KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": "RUN#x"})["Items"]
                assert len(items) == 20
                table.scan(Limit=5)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    assert not errors, errors[:3]
