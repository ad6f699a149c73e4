"""Advance level on a large level: its memory must not grow with the level (the advance function has 512 MB; a
level of a few hundred thousand parents merged in memory is several times its manifest's size in Python objects:
Lambda stops it with Runtime.OutOfMemory and the run fails).

S3 and DynamoDB are moto's, served by a moto server in a process of its own, so that the memory traced here is
advance's alone (moto in this process would hold every object it stores)."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import boto3
import pytest
from moto import mock_aws

from harvester import storage
from harvester.ledger import Ledger, batch_sk, create_table_kwargs, expires_at, run_pk
from harvester.run import advance_level
from harvester.spec import parse_spec

BUCKET = "advance-mem"


@pytest.fixture(scope="module")
def moto_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def clients(endpoint: str):
    kw = dict(region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x")
    return boto3.client("s3", **kw), boto3.resource("dynamodb", **kw)


def spec():
    return parse_spec({
        "name": "big", "base_url": "http://127.0.0.1:1/v1",
        "levels": [
            {"name": "warriors", "alias": "warrior", "path": "/warriors", "primary_key": "id"},
            {"name": "datagroups", "alias": "datagroup", "path": "/warriors/{warrior.id}/datagroups", "primary_key": "id"},
            {"name": "points", "path": "/datagroups/{datagroup.id}/points"},
        ],
    })


def child_list(n: int, items: int, parents: int) -> list[dict[str, Any]]:
    """What one batch of level 1 writes: Map items of level 2, each a batch of datagroup parents."""
    out = []
    for i in range(items):
        cid = f"{n:05d}{i:04d}"
        out.append({"batch_id": cid, "sk": batch_sk(2, cid), "parents": [
            {"warriors": {"id": f"w{n:06d}"}, "datagroups": {"id": f"g{n:06d}{i:04d}{p:02d}", "kind": "cpu"}}
            for p in range(parents)]})
    return out


def big_level(endpoint: str, lists: int, items: int, parents: int) -> tuple[dict, storage.HarvestBucket, Ledger]:
    s3, ddb = clients(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    table = ddb.create_table(**create_table_kwargs(f"ledger-{lists}"))
    store, ledger = storage.HarvestBucket(s3, BUCKET), Ledger(table)
    run_id = f"r{lists}"
    for n in range(lists):
        store.put_json(storage.children_key("big", run_id, 2, f"b{n:05d}", 0), child_list(n, items, parents))
    table.put_item(Item={"pk": run_pk("big", run_id), "sk": "RUN", "status": "RUNNING", "levels": {},
                         "attempt_calls": {}})  # what "Record run start" writes, as far as advance reads it
    state = {"run": {"source": "big", "run_id": run_id, "attempt": 1, "expires_at": expires_at(1)},
             "level": {"index": 1, "name": "datagroups", "count": 3, "batches": lists, "parents": lists},
             "totals": {}}
    return state, store, ledger


def measure(state, store, ledger) -> tuple[dict, int]:
    tracemalloc.start()
    try:
        out = advance_level(state, spec=spec(), store=store, ledger=ledger)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_advance_streams_a_large_level_into_its_manifest(moto_endpoint):
    """1,000 child lists of 100 Map items of 5 parents (100,000 items, 500,000 parents, a manifest of ~44 MiB).
    The old advance held every child list and the whole manifest text: 474 MiB traced at its peak (Python's own
    allocations only), nearly all of the function's 512 MB. Streamed, the peak is about one multipart part,
    whatever the level's size."""
    lists, items, parents = 1000, 100, 5
    state, store, ledger = big_level(moto_endpoint, lists, items, parents)
    out, peak = measure(state, store, ledger)
    key = out["level"]["manifest_key"]
    size = store.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    print(f"manifest {size / 2**20:.1f} MiB, peak traced memory of advance {peak / 2**20:.1f} MiB")
    assert peak < size / 4, f"advance held {peak / 2**20:.1f} MiB for a manifest of {size / 2**20:.1f} MiB"
    assert peak < 2 * storage.PART_BYTES

    assert out["level"]["batches"] == lists * items and out["level"]["parents"] == lists * items * parents
    assert out["level"]["index"] == 2 and out["level"]["max_concurrency"] >= 1
    # the manifest is one JSON array of every child list's items in key order (compared by digest: parsed, the
    # 100,000 items would take half a GB here too)
    expected = hashlib.sha256(b"[")
    for n in range(lists):
        expected.update((b"," if n else b"") + json.dumps(child_list(n, items, parents), separators=(",", ":")).encode()[1:-1])
    expected.update(b"]")
    body = store.s3.get_object(Bucket=BUCKET, Key=key)["Body"]
    got = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        got.update(chunk)
    assert got.hexdigest() == expected.hexdigest()


def test_advance_reads_the_level_s_batch_items_a_page_at_a_time():
    """A finished level of 1,200 batches: advance adds their ledger items up one query page (500 items,
    ledger.BATCH_PAGE) at a time, so a level of 100,000 batches is never one list in memory. (moto answers a query from the
    whole partition in memory, so the bound itself is not measurable here; the pages it is asked for are.)"""
    n = 1_200
    with mock_aws():
        table = boto3.resource("dynamodb", region_name="us-east-1").create_table(**create_table_kwargs("ledger"))
        ledger = Ledger(table)
        table.put_item(Item={"pk": run_pk("big", "rb"), "sk": "RUN", "status": "RUNNING", "levels": {},
                             "attempt_calls": {}})
        with table.batch_writer() as writer:
            for i in range(n):
                writer.put_item(Item={"pk": run_pk("big", "rb"), "sk": batch_sk(2, f"{i:016x}"), "records": 1000,
                                      "status": "SUCCEEDED" if i % 100 else "FAILED", "calls": 12,
                                      "calls_by_attempt": {"1": 10, "2": 2}})
        pages: list[int] = []
        table.meta.client.meta.events.register(
            "after-call.dynamodb.Query", lambda parsed, **_: pages.append(len(parsed.get("Items", []))))
        state = {"run": {"source": "big", "run_id": "rb", "attempt": 2, "expires_at": expires_at(1)},
                 "level": {"index": 2, "name": "points", "count": 3, "batches": n + 5, "parents": 100 * n},
                 "totals": {}}
        out = advance_level(state, spec=spec(), store=storage.HarvestBucket(boto3.client("s3", region_name="us-east-1"), BUCKET),
                            ledger=ledger)
    assert sum(pages) == n and max(pages) <= 500, f"the level's batch items came in pages of {pages}"
    last = out["last_level"]
    assert out["level"]["done"] and last["records"] == 1000 * n and last["calls"] == 12 * n
    assert last["failed_batches"] == n // 100 + 5 and out["totals"]["attempt_calls"] == 2 * n
