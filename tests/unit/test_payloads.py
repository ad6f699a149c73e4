"""The workflow's payloads and the checkpoint as models (harvester/payloads.py, harvester/checkpoint.py): the keys
the real definition reads are fields, a malformed payload is refused where it comes in, a checkpoint keeps its
JSON."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from harvester.checkpoint import Checkpoint
from harvester.payloads import FetchEvent, LevelState, MapItem, RunState

pytestmark = pytest.mark.fast  # no server, no fleet: `pytest -m fast` (README, Tests)

DEFINITION = Path(__file__).resolve().parents[2] / "statemachines" / "harvest.asl.json"


def paths_read(prefix: str) -> set[str]:
    return set(re.findall(rf"\$\.{prefix}\.([a-z_0-9]+)", DEFINITION.read_text()))


def test_every_key_the_definition_reads_is_a_field():
    assert paths_read("level") <= set(LevelState.model_fields)
    assert paths_read("batch") <= set(MapItem.model_fields)
    assert {"run", "level", "batch", "workers"} == set(FetchEvent.model_fields)
    item_selector = json.loads(DEFINITION.read_text())["States"]["Harvest level"]["ItemSelector"]
    assert {k.removesuffix(".$") for k in item_selector} == set(FetchEvent.model_fields)


def test_a_state_dumps_to_the_json_it_was_read_from():
    state = {"run": {"source": "s", "run_id": "r", "pk": "RUN#s#r"}, "totals": {"calls": 3}, "last_level": {"x": 1},
             "level": {"index": 1, "name": "b", "count": 3, "manifest_key": "runs/s/r/manifests/1.json",
                       "batches": 2, "parents": 7, "max_concurrency": 2, "done": False}}
    assert RunState.model_validate(state).model_dump() == state
    assert json.dumps(RunState.model_validate(state).model_dump(), sort_keys=True) == json.dumps(state, sort_keys=True)


def test_a_malformed_level_or_fetch_event_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="manifest_key"):
        RunState.model_validate({"run": {}, "level": {"index": 0, "name": "a", "count": 1, "batches": 1,
                                                      "parents": 1, "max_concurrency": 1}})
    with pytest.raises(ValidationError, match="parents"):
        FetchEvent.model_validate({"run": {}, "level": 0, "batch": {"batch_id": "b1"}, "workers": 2})


def test_harvest_batch_refuses_a_map_item_without_parents_before_any_call():
    from harvester.worker import harvest_batch

    with pytest.raises(ValidationError, match="parents"):
        asyncio.run(harvest_batch(None, {"source": "s", "run_id": "r"}, 0, {"batch_id": "b1"}, store=None,
                                  ledger=None, limiter=None, secret=None, time_budget=1.0))


def test_a_checkpoint_keeps_its_json_and_refuses_a_misspelt_key():
    stored = {"done": ["a"], "parts": 2, "records": 40, "children": 3, "calls_by_attempt": {"1": 5}, "pages": 5,
              "throttled": 1, "retries": 0, "invocations": 1, "failed": {}, "bytes": 900,
              "partial": {"b": {"next": {"url": "u", "params": {}, "number": 2}, "fetched": 20, "parts": [1],
                                "recent_keys": []}},
              "token_wait_seconds": 0.5, "limiter_writes": 2, "tokens_expired": 0, "bad_records": 0, "duplicates": 0,
              "cpu_seconds": 1.25}
    assert Checkpoint.load(stored).dump() == stored
    assert Checkpoint.load(None).dump()["parts"] == 0  # the first attempt's
    assert Checkpoint.load({**stored, "cursors": {"a": "2026"}}).dump()["cursors"] == {"a": "2026"}
    with pytest.raises(ValidationError, match="recrods"):
        Checkpoint.load({"recrods": 3})
