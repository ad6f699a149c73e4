"""Run-level steps: execution input parsing, plan_run (validate everything, write nothing on a bad input) and
advance_level (totals from the ledger, the next manifest from the batches' children), on moto S3/DynamoDB with
the simulated vendor behind the worker."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from harvester import storage
from harvester.ledger import Ledger, batch_sk, create_table_kwargs, run_pk
from harvester.ratelimit import limiter_for
from harvester.run import COUNTERS, InputError, advance_level, default_run_id, parse_input, plan_run
from harvester.secrets import resolve_secret
from harvester.simulator.server import VendorServer
from harvester.spec import SpecError, find_spec
from harvester.worker import harvest_batch

BUCKET = "harvest-test"
KEY = "run-key"
START = "2026-03-04T05:06:07.123Z"




# ---------------------------------------------------------------------------------------------------------------
# parse_input
# ---------------------------------------------------------------------------------------------------------------
def test_parse_input_accepts_the_three_forms():
    assert parse_input({"source": "demo"}).model_dump() == {"source": "demo", "run_id": None, "resume": None,
                                                            "window": None, "as_of": None}
    assert parse_input({"source": "demo", "run_id": "nightly-2026.03_04"}).run_id == "nightly-2026.03_04"
    assert parse_input({"source": "demo", "resume": "r1"}).resume == "r1"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({}, "source: Field required"),
        ({"run_id": "r1"}, "source: Field required"),
        ({"source": "demo", "sources": "x"}, "sources: Extra inputs are not permitted"),
        ({"source": "demo", "run_id": "bad id!"}, "run_id: 'bad id!' is not a run id"),
        ({"source": "demo", "run_id": "-starts-with-dash"}, "is not a run id"),
        ({"source": "demo", "run_id": "x" * 81}, "at most 80"),
        ({"source": "demo", "resume": "../etc"}, "resume: '../etc' is not a run id"),
        ({"source": 3}, "source: Input should be a valid string"),
    ],
)
def test_parse_input_errors_name_the_problem(raw: Any, expected: str):
    with pytest.raises(InputError) as info:
        parse_input(raw)
    msg = str(info.value)
    assert msg.startswith("bad execution input (") and expected in msg
    assert '{"source": "<name>"}' in msg  # and what is expected


def test_parse_input_both_run_id_and_resume():
    with pytest.raises(InputError) as info:
        parse_input({"source": "demo", "run_id": "a", "resume": "b"})
    assert str(info.value) == 'give either "run_id" (a new run) or "resume" (an earlier run), not both'


@pytest.mark.parametrize("raw, kind", [(["demo"], "list"), ("demo", "str"), (None, "NoneType"), (7, "int")])
def test_parse_input_not_an_object(raw: Any, kind: str):
    with pytest.raises(InputError) as info:
        parse_input(raw)
    assert str(info.value) == f'execution input must be a JSON object like {{"source": "demo"}}, got {kind}'


def test_default_run_id():
    assert default_run_id(START, "a1b2-c3d4-e5f6-0000") == "20260304T050607Z-a1b2c3d4"
    assert default_run_id("2026-03-04T07:06:07+02:00", "!!!") == "20260304T050607Z-run"


# ---------------------------------------------------------------------------------------------------------------
# plan_run
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def aws() -> Iterator[tuple[storage.HarvestBucket, Ledger, Any]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        table = boto3.resource("dynamodb", region_name="us-east-1").create_table(**create_table_kwargs("ledger"))
        yield storage.HarvestBucket(s3, BUCKET), Ledger(table), table


@pytest.fixture
def vendor() -> Iterator[VendorServer]:
    with VendorServer(troops=3, warriors_per_troop=4, datagroups_per_warrior=2, variation=0, page_size=2,
                      api_key=KEY) as server:
        yield server


def write_source(folder: Path, base_url: str, name: str = "mini", **changes: Any) -> Path:
    data = {
        "name": name,
        "base_url": base_url,
        "auth": {"type": "header", "name": "X-Api-Key", "env": "MINI_API_KEY"},
        "max_concurrency": 3,
        "retries": {"max_attempts": 2, "base_delay": 0.01},
        "levels": [
            {"name": "troops", "alias": "troop", "path": "/troops", "records": "data", "primary_key": "id",
             "pagination": {"type": "page_number", "size": 2, "total_path": "total"}},
            {"name": "warriors", "alias": "warrior", "path": "/troops/{troop.id}/warriors", "records": "items",
             "primary_key": "id", "batch_size": 2, "pagination": {"type": "offset", "limit": 2, "total_path": "total"}},
            {"name": "datagroups", "path": "/warriors/{warrior.id}/datagroups", "records": "results",
             "batch_size": 5, "pagination": {"type": "cursor", "cursor_path": "next_cursor"}},
        ],
        **changes,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def mini_source(vendor, tmp_path, monkeypatch) -> Path:
    """The `mini` spec in tmp_path, pointed at the vendor, with its credential in the environment."""
    monkeypatch.setenv("MINI_API_KEY", KEY)
    return write_source(tmp_path, vendor.url + "/v1")


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/v1"


def plan(raw: Any, aws, folder: Path, **kwargs: Any) -> dict[str, Any]:
    store, ledger, _ = aws
    return plan_run(raw, "exec-0001-abcd", START, load_spec=lambda source: find_spec(folder, source),
                    resolve_secret=resolve_secret, store=store, ledger=ledger, **kwargs)


def nothing_written(aws, except_items: int = 0) -> bool:
    store, _, table = aws
    return store.list_keys("") == [] and table.scan()["Count"] == except_items


def record_run_start(table, state: dict[str, Any], status: str = "RUNNING") -> None:
    """What the workflow's "Record run start" putItem writes."""
    run = state["run"]
    table.put_item(Item={"pk": run["pk"], "sk": "RUN", "status": status, "source": run["source"],
                         "run_id": run["run_id"], "attempt": run["attempt"], "levels": {}, "attempt_calls": {},
                         "gsi1pk": run["gsi1pk"], "gsi1sk": run["gsi1sk"], "expires_at": run["expires_at"]})


def test_plan_run_writes_the_spec_and_the_first_manifest(aws, vendor, tmp_path, monkeypatch, mini_source):
    store, ledger, table = aws
    state = plan({"source": "mini"}, aws, tmp_path)
    spec = find_spec(tmp_path, "mini")
    run = state["run"]
    assert run["run_id"] == "20260304T050607Z-exec0001"
    assert run["source"] == "mini" and run["attempt"] == 1 and run["resumed"] is False
    assert run["spec_key"] == "runs/mini/20260304T050607Z-exec0001/spec.json"
    assert run["spec_hash"] == spec.spec_hash()
    assert run["pk"] == run_pk("mini", run["run_id"]) and run["gsi1pk"] == "SOURCE#mini"
    assert run["gsi1sk"] == f"{run['started_at']}#{run['run_id']}"
    assert run["expires_at_str"] == str(run["expires_at"]) and run["attempt_str"] == "1"
    assert store.get_json(run["spec_key"]) == json.loads(json.dumps(spec.model_dump(mode="json")))
    manifest = store.get_json(state["level"]["manifest_key"])
    assert manifest == [{"batch_id": "root", "sk": batch_sk(0, "root"), "parents": [{}]}]
    assert state["level"] == {"index": 0, "name": "troops", "count": 3,
                              "manifest_key": f"runs/mini/{run['run_id']}/manifests/0.json",
                              "batches": 1, "parents": 1, "max_concurrency": 1, "done": False}
    assert state["totals"] == {**{c: 0 for c in COUNTERS}, "attempt_calls": 0}
    assert table.scan()["Count"] == 0  # the run item is the workflow's own write, not plan's
    assert len(json.dumps(state)) < 4096  # keys, never data


def test_plan_run_with_a_given_run_id(aws, vendor, tmp_path, monkeypatch, mini_source):
    assert plan({"source": "mini", "run_id": "nightly-1"}, aws, tmp_path)["run"]["run_id"] == "nightly-1"


@pytest.mark.parametrize(
    "raw, error, words",
    [
        ({"source": "mini", "extra": 1}, InputError, "extra: Extra inputs are not permitted"),
        (["mini"], InputError, "must be a JSON object"),
        ({"source": "nope"}, SpecError, "unknown source 'nope'"),
        ({"source": "mini", "run_id": "a", "resume": "b"}, InputError, "not both"),
    ],
)
def test_plan_run_bad_input_writes_nothing(aws, vendor, tmp_path, monkeypatch, raw, error, words, mini_source):
    with pytest.raises(error) as info:
        plan(raw, aws, tmp_path)
    assert words in str(info.value)
    assert nothing_written(aws)


def test_plan_run_bad_spec_writes_nothing(aws, vendor, tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_API_KEY", KEY)
    path = write_source(tmp_path, vendor.url + "/v1", max_concurrency=0)
    with pytest.raises(SpecError) as info:
        plan({"source": "mini"}, aws, tmp_path)
    assert str(info.value).startswith(f"{path}: max_concurrency: Input should be greater than or equal to 1")
    assert nothing_written(aws)


def test_plan_run_missing_secret_writes_nothing(aws, vendor, tmp_path, monkeypatch):
    monkeypatch.delenv("MINI_API_KEY", raising=False)
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    write_source(tmp_path, vendor.url + "/v1")
    with pytest.raises(SpecError) as info:
        plan({"source": "mini"}, aws, tmp_path)
    assert "auth.env MINI_API_KEY is not set" in str(info.value) and "harvester/mini" in str(info.value)
    assert nothing_written(aws)


def test_plan_run_base_url_that_does_not_answer_writes_nothing(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_API_KEY", KEY)
    url = closed_port_url()
    write_source(tmp_path, url)
    with pytest.raises(SpecError) as info:
        plan({"source": "mini"}, aws, tmp_path)
    assert f"base_url {url} does not answer" in str(info.value)
    assert nothing_written(aws)


def test_plan_run_refuses_an_existing_run_id(aws, vendor, tmp_path, monkeypatch, mini_source):
    store, ledger, table = aws
    state = plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
    record_run_start(table, state, status="SUCCEEDED")
    keys = store.list_keys("")
    with pytest.raises(InputError) as info:
        plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
    assert "run 'r1' of source 'mini' already exists" in str(info.value) and '{"resume": "r1"}' in str(info.value)
    assert store.list_keys("") == keys and table.scan()["Count"] == 1


def test_resume_of_an_unknown_run_writes_nothing(aws, vendor, tmp_path, monkeypatch, mini_source):
    with pytest.raises(InputError) as info:
        plan({"source": "mini", "resume": "never-ran"}, aws, tmp_path)
    assert str(info.value) == "cannot resume run 'never-ran' of source 'mini': the ledger has no such run"
    assert nothing_written(aws)


def test_resume_of_a_finished_run_is_the_next_attempt(aws, vendor, tmp_path, monkeypatch, mini_source):
    store, ledger, table = aws
    first = plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
    record_run_start(table, first, status="INCOMPLETE")
    again = plan({"source": "mini", "resume": "r1"}, aws, tmp_path)
    assert again["run"]["run_id"] == "r1" and again["run"]["attempt"] == 2 and again["run"]["resumed"] is True
    assert again["run"]["attempt_str"] == "2" and again["run"]["spec_key"] == first["run"]["spec_key"]


def test_resume_of_a_running_run_is_refused(aws, vendor, tmp_path, monkeypatch, mini_source):
    store, ledger, table = aws
    record_run_start(table, plan({"source": "mini", "run_id": "r1"}, aws, tmp_path), status="RUNNING")
    with pytest.raises(InputError) as info:
        plan({"source": "mini", "resume": "r1"}, aws, tmp_path)
    assert "still RUNNING" in str(info.value)


def test_resume_guard_that_cannot_ask_step_functions_fails_instead_of_resuming(aws, vendor, tmp_path, monkeypatch,
                                                                               mini_source):
    """Only "no such execution" means not running; an AccessDeniedException (the plan role without
    states:DescribeExecution on AWS) must not turn the guard off."""
    from botocore.exceptions import ClientError

    store, ledger, table = aws
    first = plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
    record_run_start(table, first, status="RUNNING")
    table.update_item(Key={"pk": first["run"]["pk"], "sk": "RUN"}, UpdateExpression="SET execution_arn = :a",
                      ExpressionAttributeValues={":a": "arn:aws:states:us-east-1:123456789012:execution:sm:e1"})

    def denied(arn):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "not authorized"}}, "DescribeExecution")

    with pytest.raises(ClientError):
        plan({"source": "mini", "resume": "r1"}, aws, tmp_path, execution_status=denied)
    with pytest.raises(InputError, match="still RUNNING"):
        plan({"source": "mini", "resume": "r1"}, aws, tmp_path, execution_status=lambda arn: "RUNNING")
    again = plan({"source": "mini", "resume": "r1"}, aws, tmp_path, execution_status=lambda arn: None)
    assert again["run"]["attempt"] == 2


# ---------------------------------------------------------------------------------------------------------------
# advance_level: a whole small run, level by level, with the real worker between the steps
# ---------------------------------------------------------------------------------------------------------------
def harvest_level(state: dict[str, Any], spec, aws) -> None:
    store, ledger, _ = aws
    for batch in store.get_json(state["level"]["manifest_key"]):
        asyncio.run(harvest_batch(spec, state["run"], state["level"]["index"], batch, store=store, ledger=ledger,
                                  limiter=limiter_for("mini", None, 0), secret=KEY, time_budget=60))


def test_advance_level_totals_and_next_manifests_through_a_whole_run(aws, vendor, tmp_path, monkeypatch, mini_source):
    store, ledger, table = aws
    spec = find_spec(tmp_path, "mini")
    state = plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
    record_run_start(table, state)
    counts = vendor.data.counts()  # 3 troops, 12 warriors, 24 datagroups

    # level 0 -> level 1
    harvest_level(state, spec, aws)
    state = advance_level(state, spec=spec, store=store, ledger=ledger)
    assert state["last_level"] == {"parents": 1, "batches": 1, "calls": 2, "records": 3, "pages": 2, "throttled": 0,
                                   "retries": 0, "failures": 0, "failed_batches": 0,
                                   "token_wait_seconds": 0, "limiter_writes": 0,
                                   "tokens_expired": 0}
    level = state["level"]
    assert level["index"] == 1 and level["name"] == "warriors" and level["done"] is False
    assert level["manifest_key"] == "runs/mini/r1/manifests/1.json"
    manifest = store.get_json(level["manifest_key"])
    assert [len(i["parents"]) for i in manifest] == [2, 1]  # warriors' batch_size is 2
    assert [p["troops"]["id"] for i in manifest for p in i["parents"]] == vendor.data.ids("troops")
    assert level["batches"] == 2 and level["parents"] == 3 and level["max_concurrency"] == 2
    assert state["totals"]["records"] == 3 and state["totals"]["calls"] == 2 and state["totals"]["attempt_calls"] == 2

    # level 1 -> level 2
    harvest_level(state, spec, aws)
    state = advance_level(state, spec=spec, store=store, ledger=ledger)
    assert state["last_level"]["records"] == counts["warriors"] == 12
    assert state["last_level"]["calls"] == 3 * 2  # 4 warriors per troop in pages of 2
    level = state["level"]
    assert level["index"] == 2 and level["parents"] == 12 and level["batches"] == 3 and level["max_concurrency"] == 3
    manifest = store.get_json(level["manifest_key"])
    assert sorted(p["warriors"]["id"] for i in manifest for p in i["parents"]) == vendor.data.ids("warriors")
    assert all(len(i["parents"]) <= 5 for i in manifest)

    # level 2 (the leaf) -> done
    harvest_level(state, spec, aws)
    state = advance_level(state, spec=spec, store=store, ledger=ledger)
    assert state["level"]["done"] is True and state["level"]["index"] == 2
    assert state["last_level"]["records"] == counts["datagroups"] == 24
    assert state["totals"]["records"] == 3 + 12 + 24
    assert state["totals"]["calls"] == 2 + 6 + 12 and state["totals"]["attempt_calls"] == 20
    assert state["totals"]["failures"] == 0 and state["totals"]["failed_batches"] == 0

    item = ledger.get_run("mini", "r1")
    assert item["levels"]["troops"]["records"] == 3 and item["levels"]["warriors"]["records"] == 12
    assert item["levels"]["datagroups"]["records"] == 24
    assert item["totals"]["records"] == 39 and item["attempt_calls"] == {"1": 20}
    assert store.list_keys("runs/mini/r1/manifests/") == [f"runs/mini/r1/manifests/{i}.json" for i in range(3)]


def test_advance_level_counts_a_batch_that_never_wrote_as_failed(aws, vendor, tmp_path, monkeypatch, mini_source):
    store, ledger, table = aws
    spec = find_spec(tmp_path, "mini")
    state = plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
    record_run_start(table, state)
    harvest_level(state, spec, aws)
    state = advance_level(state, spec=spec, store=store, ledger=ledger)
    # level 1 has two batches; only the first one runs (the second died before writing anything)
    first = store.get_json(state["level"]["manifest_key"])[0]
    asyncio.run(harvest_batch(spec, state["run"], 1, first, store=store, ledger=ledger, limiter=limiter_for("mini", None, 0),
                              secret=KEY, time_budget=60))
    state = advance_level(state, spec=spec, store=store, ledger=ledger)
    assert state["last_level"]["batches"] == 2 and state["last_level"]["failed_batches"] == 1
    assert state["last_level"]["records"] == 8 and state["totals"]["failed_batches"] == 1
    # the next level holds only what the surviving batch produced
    assert sum(len(i["parents"]) for i in store.get_json(state["level"]["manifest_key"])) == 8


def test_advance_level_with_no_children_ends_the_run(aws, tmp_path, monkeypatch):
    monkeypatch.setenv("MINI_API_KEY", KEY)
    with VendorServer(troops=0, api_key=KEY) as empty:
        write_source(tmp_path, empty.url + "/v1")
        store, ledger, table = aws
        spec = find_spec(tmp_path, "mini")
        state = plan({"source": "mini", "run_id": "r1"}, aws, tmp_path)
        record_run_start(table, state)
        harvest_level(state, spec, aws)
        state = advance_level(state, spec=spec, store=store, ledger=ledger)
    assert state["level"]["done"] is True and state["level"]["index"] == 0
    assert state["last_level"]["records"] == 0 and store.list_keys("runs/mini/r1/manifests/") == [
        "runs/mini/r1/manifests/0.json"]
