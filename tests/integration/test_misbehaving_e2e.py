"""Issue 11 on the real workflow (the local engine, IAM and Lambda limits enforced): a GitHub-shaped API
(orgs -> repos -> issues, a repo answering 410 Gone, 403 rate limiting with X-RateLimit-Remaining/Reset) ends
SUCCEEDED with a spec that says how to treat 410, and Harvest.Incomplete (the 410s listed) without it. A batch
that crashed leaves a ledger item without `level` (written by "Record batch failure"): the progress report and a
resume read it."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import yaml

from harvester import storage
from harvester.local.report import Progress, summary_lines
from harvester.simulator.rogue import TOKEN, Rogue, RogueApp, Serving
from harvester.spec import load_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def github():
    rogue = Rogue(throttle_every=7, throttle_reset=0.2)
    rogue.gone = {"acme/r03"}
    rogue.surrogate = {"globex/g01"}  # a lone "\ud83d" in one issue: kept, converted, nothing lost
    with Serving(RogueApp(rogue).app) as server:
        yield rogue, server


def add_spec(engine, tmp_path, url, name, issues_extra=None):
    os.environ["GH_TOKEN_E2E"] = f"token {TOKEN}"
    link = {"type": "link_header", "size_param": "per_page", "size": 3}
    spec = {
        "name": name, "base_url": url,
        "auth": {"type": "header", "name": "Authorization", "env": "GH_TOKEN_E2E"},
        "retries": {"max_attempts": 4, "base_delay": 0.02, "max_delay": 0.2},
        "timeouts": {"connect": 2, "read": 5},
        "levels": [
            {"name": "orgs", "alias": "org", "path": "/orgs", "primary_key": "login", "pagination": link},
            {"name": "repos", "alias": "repo", "path": "/orgs/{org.login}/repos", "primary_key": "name",
             "pagination": link, "batch_size": 3},
            {"name": "issues", "path": "/repos/{org.login}/{repo.name}/issues", "primary_key": "id",
             "pagination": link, **(issues_extra or {})},
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    loaded = load_spec(path)
    engine.add_source(path, loaded)
    return loaded


def issues_of(engine, spec, run_id) -> Counter:
    bucket = engine.state.bucket_dir
    out: Counter = Counter()
    for path in (bucket / storage.raw_prefix(spec.name, run_id, "issues")).glob("*.jsonl.gz"):
        out.update(r["id"] for r in storage.decode_ndjson_gz(path.read_bytes()))
    return out


def test_a_github_shaped_api_succeeds_with_a_spec_that_says_410_means_no_issues(github, engine, tmp_path):
    rogue, server = github
    strict = add_spec(engine, tmp_path, server.url, "gh-strict")
    desc = engine.run({"source": strict.name, "run_id": "r1"}, timeout=240)
    assert desc["status"] == "FAILED" and desc["error"] == "Harvest.Incomplete"
    fails = engine.ledger.failures(strict.name, "r1")
    assert [(f["parent"], f["status"]) for f in fails] == [("acme/r03", 410)]
    run = engine.ledger.get_run(strict.name, "r1")
    assert summary_lines(run, strict, 1.0, tmp_path, execution_error=desc["error"])[0].split(": ")[1].startswith(
        "INCOMPLETE")

    rogue.requests.clear()
    lenient = add_spec(engine, tmp_path, server.url, "gh", {"status": {"empty": [410]}})
    desc = engine.run({"source": lenient.name, "run_id": "r1"}, timeout=240)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    got = issues_of(engine, lenient, "r1")
    assert set(got) == rogue.books()["issues"] and max(got.values()) == 1
    run = engine.ledger.get_run(lenient.name, "r1")
    assert run["totals"]["throttled"] >= 3, "the 403 rate limits happened and were waited out"
    assert run["lake"]["levels"]["issues"]["bad_values"] == 1  # the lone surrogate: null in Parquet, counted
    assert engine.ledger.failures(lenient.name, "r1") == []


def test_a_crashed_batch_is_reported_and_resumed(github, engine, tmp_path, monkeypatch):
    rogue, server = github
    rogue.gone = set()
    spec = add_spec(engine, tmp_path, server.url, "gh")
    original, crashed = storage.HarvestBucket.put_records, []

    def put_records(self, key, records):
        if "/issues/" in key and not crashed:
            crashed.append(key)
            raise RuntimeError("a bug in the writer")
        return original(self, key, records)

    monkeypatch.setattr(storage.HarvestBucket, "put_records", put_records)
    desc = engine.run({"source": spec.name, "run_id": "rc"}, timeout=240)
    assert crashed and desc["error"] == "Harvest.Incomplete"
    progress = Progress(engine.ledger, spec, stream=open(os.devnull, "w"), every=0)
    progress.run_id = "rc"
    progress()  # KeyError: 'level' before the fix
    desc = engine.run({"source": spec.name, "resume": "rc"}, timeout=240)
    assert desc["status"] == "SUCCEEDED", desc.get("cause")
    got = issues_of(engine, spec, "rc")
    assert set(got) == rogue.books()["issues"] and max(got.values()) == 1
