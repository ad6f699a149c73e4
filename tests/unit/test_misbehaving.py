"""Issue 11: real APIs misbehave. Each numbered case of the issue against a GitHub-shaped API that misbehaves on
demand (harvester/simulator/rogue.py, real HTTP on 127.0.0.1), through the real batch worker with S3 and DynamoDB
on moto, level by level as the workflow runs them (`write_manifest` builds each next level's items). Every test
checks the harvest against the API's books: the records, none twice, the failures in the ledger naming URL and
reason, and a resume after the API is fixed."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from harvester import storage
from harvester.ledger import Ledger, create_table_kwargs, expires_at
from harvester.ratelimit import limiter_for
from harvester.run import write_manifest
from harvester.simulator.rogue import TOKEN, Recorder, Rogue, RogueApp, Serving
from harvester.spec import SourceSpec, SpecError, parse_spec
from harvester.worker import BatchFailed, BatchIncomplete, harvest_batch

SOURCE, BUCKET = "gh", "rogue-test"


@pytest.fixture
def aws() -> Iterator[tuple[storage.HarvestBucket, Ledger]]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        table = boto3.resource("dynamodb", region_name="us-east-1").create_table(**create_table_kwargs("ledger"))
        yield storage.HarvestBucket(s3, BUCKET), Ledger(table)


@pytest.fixture
def api() -> Iterator[tuple[Rogue, Serving]]:
    rogue = Rogue()
    with Serving(RogueApp(rogue).app) as server:
        yield rogue, server


def gh_spec(url: str, issues: dict | None = None, **top: Any) -> SourceSpec:
    """orgs -> repos -> issues, GitHub style (Link pagination, `Authorization: token ...`)."""
    link = {"type": "link_header", "size_param": "per_page", "size": 3}
    issue_level = {"name": "issues", "path": "/repos/{org.login}/{repo.name}/issues", "pagination": link,
                   "primary_key": "id", **(issues or {})}
    return parse_spec({
        "name": SOURCE, "base_url": url,
        "auth": {"type": "header", "name": "Authorization", "env": "UNUSED"},
        "retries": {"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05},
        "timeouts": {"connect": 2, "read": 5},
        "levels": [
            {"name": "orgs", "alias": "org", "path": "/orgs", "primary_key": "login", "pagination": link},
            {"name": "repos", "alias": "repo", "path": "/orgs/{org.login}/repos", "primary_key": "name",
             "pagination": link, "batch_size": 2},
            issue_level,
        ],
        **top,
    })


def run_levels(spec: SourceSpec, aws, run_id: str = "r1", attempt: int = 1, *, secret: str = f"token {TOKEN}",
               budget: float = 30.0) -> dict[str, Any]:
    """Every level's batches in order, as the workflow runs them; a batch that ran out of time is run again (the
    state's Retry). Returns {"failed": batch ids that failed, "errors": their messages}."""
    store, ledger = aws
    run = {"source": SOURCE, "run_id": run_id, "attempt": attempt, "expires_at": expires_at(1)}
    out: dict[str, Any] = {"failed": [], "errors": []}
    for index in range(len(spec.levels)):
        if index == 0:
            items = [{"batch_id": "root", "parents": [{}]}]
        else:
            written = write_manifest(store, SOURCE, run_id, index)
            items = store.get_json(written[0]) if written else []
        for item in items:
            for _ in range(5):
                try:
                    asyncio.run(harvest_batch(spec, run, index, item, store=store, ledger=ledger,
                                              limiter=limiter_for(SOURCE, None, 0), secret=secret,
                                              time_budget=budget))
                    break
                except BatchIncomplete:
                    continue
                except BatchFailed as exc:
                    out["failed"].append(item["batch_id"])
                    out["errors"].append(str(exc))
                    break
    return out


def raw(store: storage.HarvestBucket, level: str, run_id: str = "r1") -> list[dict[str, Any]]:
    return [r for key in store.list_keys(storage.raw_prefix(SOURCE, run_id, level)) for r in store.read_records(key)]


def issue_ids(store: storage.HarvestBucket, run_id: str = "r1") -> Counter:
    return Counter(r["id"] for r in raw(store, "issues", run_id))


def assert_books(rogue: Rogue, store: storage.HarvestBucket, run_id: str = "r1") -> None:
    books = rogue.books()
    repos = Counter(r["full_name"] for r in raw(store, "repos", run_id))
    assert set(repos) == books["repos"] and max(repos.values()) == 1, repos
    got = issue_ids(store, run_id)
    assert set(got) == books["issues"], sorted(set(got) ^ books["issues"])[:10]
    assert max(got.values()) == 1, [k for k, v in got.items() if v > 1][:10]


def failures(ledger: Ledger, run_id: str = "r1") -> list[dict[str, Any]]:
    return ledger.failures(SOURCE, run_id)


# --- the API as it should be -------------------------------------------------------------------------------------
def test_a_well_behaved_github_shaped_api_is_harvested_exactly(api, aws):
    rogue, server = api
    out = run_levels(gh_spec(server.url), aws)
    assert out["failed"] == [] and failures(aws[1]) == []
    assert_books(rogue, aws[0])


# --- case 1: pagination loops ------------------------------------------------------------------------------------
LOOPS = {  # style of the issues route -> (misbehaviour, the issues level's pagination)
    "self_link": ("link", {}),
    "cursor_cycle": ("cursor", {"records": "data", "pagination": {"type": "cursor", "cursor_path": "next",
                                                                   "size_param": "per_page", "size": 3}}),
    "ignore_page": ("page", {"records": "data", "pagination": {"type": "page_number", "size": 3}}),
}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_pagination_loop_is_an_error_naming_parent_and_page_and_nothing_of_it_is_kept(loop, api, aws, monkeypatch):
    """Case 1: a next link to itself, a cursor cycle A->B->A, a vendor ignoring `page` without a total. Today each
    loops until the time budget ends and every attempt writes what it got. The flush size of 2 records makes the
    worker write the looping list's first pages before the loop shows: they must be taken out again."""
    monkeypatch.setenv("HARVESTER_FLUSH_RECORDS", "2")
    rogue, server = api
    rogue.issue_style, issues = LOOPS[loop]
    rogue.loops = {"acme/r02": loop}
    store, ledger = aws
    started = time.monotonic()
    out = run_levels(gh_spec(server.url, issues), aws, budget=8.0)
    assert time.monotonic() - started < 8.0, "bounded: no waiting for the time budget"
    fails = failures(ledger)
    assert [f["parent"] for f in fails] == ["acme/r02"] and len(out["failed"]) == 1
    reason = fails[0]["reason"]
    assert "pagination loop" in reason and "acme/r02" in reason and ("page 2" in reason or "page 3" in reason)
    acme_r02 = {i["id"] for i in rogue.issues("acme/r02")}
    got = issue_ids(store)
    assert not acme_r02 & set(got), "nothing of the looping list is kept"
    assert set(got) == rogue.books()["issues"] - acme_r02 and max(got.values()) == 1
    assert sum(b["records"] for b in ledger.batches(SOURCE, "r1", 2)) == sum(got.values()), "the ledger agrees"

    rogue.loops = {}  # the vendor is fixed: a resume completes the run, no duplicates
    assert run_levels(gh_spec(server.url, issues), aws, attempt=2)["failed"] == []
    assert_books(rogue, store)


# --- case 2: statuses that mean "no records" ---------------------------------------------------------------------
def test_a_410_is_permanent_by_default_and_a_level_may_say_it_means_no_records(api, aws):
    """Case 2: GitHub answers 410 Gone for a repo with issues disabled; today no spec option lets a level take a
    status for "no records" and every resume repeats the call and fails again."""
    rogue, server = api
    rogue.gone = {"acme/r01", "globex/g03"}
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws)
    assert sorted(f["parent"] for f in failures(ledger)) == ["acme/r01", "globex/g03"] and out["failed"]
    assert all(f["status"] == 410 and f["url"].startswith(server.url) for f in failures(ledger))

    out = run_levels(gh_spec(server.url, {"status": {"empty": [410]}}), aws, run_id="r2")
    assert out["failed"] == [] and failures(ledger, "r2") == []
    assert_books(rogue, store, "r2")


def test_status_rules_are_checked_by_the_spec():
    with pytest.raises(SpecError, match=r"levels\[2\]\.status"):
        gh_spec("http://x", {"status": {"empty": [410], "throttle": [410]}})
    with pytest.raises(SpecError, match=r"levels\[2\]\.status"):
        gh_spec("http://x", {"status": {"empty": [200]}})


# --- case 3: 403 on a few parents; 403 as a rate limit -----------------------------------------------------------
def test_a_forbidden_parent_never_stops_its_siblings(api, aws):
    """Case 3: two forbidden repos; today the first 403 stops the whole batch (the other parents are left for a
    resume, which stops at the next 403 again)."""
    rogue, server = api
    rogue.forbidden = {"acme/r00", "acme/r03"}
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws)
    fails = failures(ledger)
    assert sorted(f["parent"] for f in fails) == ["acme/r00", "acme/r03"] and all(f["status"] == 403 for f in fails)
    forbidden_ids = {i["id"] for full in rogue.forbidden for i in rogue.issues(full)}
    assert set(issue_ids(store)) == rogue.books()["issues"] - forbidden_ids
    rogue.forbidden = set()
    assert run_levels(gh_spec(server.url), aws, attempt=2)["failed"] == [] and out["failed"]
    assert_books(rogue, store)


def test_a_wrong_credential_stops_the_batch_after_the_first_parents_fail_in_a_row(api, aws):
    rogue, server = api
    spec = gh_spec(server.url, max_in_flight=1)
    out = run_levels(spec, aws, secret="token wrong")
    assert out["failed"] == ["root"] and len(rogue.requests) == 1  # the root has one parent


def test_a_github_rate_limit_403_is_a_throttle_not_an_auth_failure(api, aws):
    """Case 3: GitHub rate limits with 403 and X-RateLimit-Remaining: 0 (reset time in X-RateLimit-Reset)."""
    rogue, server = api
    rogue.throttle_every, rogue.throttle_reset = 5, 0.2
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws)
    assert out["failed"] == [] and failures(ledger) == []
    assert_books(rogue, store)
    throttled = sum(b.get("throttled", 0) for b in ledger.batches(SOURCE, "r1"))
    assert throttled >= 5


# --- case 4: 429 forever ------------------------------------------------------------------------------------------
def test_endless_throttling_gives_up_within_a_bound_with_a_failure_naming_the_url(api, aws):
    """Case 4: today a 429 forever is waited out until the time budget ends, attempt after attempt, and no
    failed call names the URL."""
    rogue, server = api
    rogue.always_429 = {"globex/g01"}
    store, ledger = aws
    started = time.monotonic()
    out = run_levels(gh_spec(server.url, retries={"max_attempts": 3, "base_delay": 0.01, "max_delay": 0.05,
                                                  "max_throttle_seconds": 2}), aws, budget=20.0)
    assert time.monotonic() - started < 15
    fails = failures(ledger)
    assert [f["parent"] for f in fails] == ["globex/g01"] and out["failed"]
    assert fails[0]["status"] == 429 and "/repos/globex/g01/issues" in fails[0]["url"]
    assert "throttled" in fails[0]["reason"]


# --- case 5: one bad record or page loses only itself ------------------------------------------------------------
def test_a_parent_record_without_its_key_is_counted_and_its_siblings_are_harvested(api, aws):
    rogue, server = api
    rogue.keyless = {"acme"}
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws)
    assert out["failed"] == []
    repos = [r["full_name"] for r in raw(store, "repos")]
    assert sorted(repos) == sorted(rogue.books()["repos"] | {"acme/(no name)"})  # the bad record is kept as sent
    assert set(issue_ids(store)) == rogue.books()["issues"]  # every repo with a name and its issues
    assert sum(b.get("bad_records", 0) for b in ledger.batches(SOURCE, "r1", 1)) == 1


def test_a_record_with_a_lone_surrogate_is_kept_escaped_and_loses_nothing(api, aws):
    rogue, server = api
    rogue.surrogate = {"acme/r04"}
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws)
    assert out["failed"] == [] and failures(ledger) == []
    assert_books(rogue, store)
    titles = [r["title"] for r in raw(store, "issues") if r["id"] == rogue.issues("acme/r04")[0]["id"]]
    assert titles == ["\ud83d"]  # as the vendor sent it: the line holds the JSON escape


def test_a_parent_listed_twice_by_offset_drift_is_harvested_once(api, aws):
    rogue, server = api
    rogue.drift = {"acme", "globex"}
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws)
    assert out["failed"] == [] and failures(ledger) == []
    assert_books(rogue, store)


def test_pages_fetched_before_a_failing_page_are_kept_and_the_resume_fetches_only_the_rest(api, aws):
    rogue, server = api
    rogue.fail_page = {"acme/r05": (2, 404)}
    store, ledger = aws
    run_levels(gh_spec(server.url), aws)
    first = {i["id"] for i in rogue.issues("acme/r05")[:3]}
    assert first <= set(issue_ids(store))
    rogue.fail_page = {}
    rogue.requests.clear()
    assert run_levels(gh_spec(server.url), aws, attempt=2)["failed"] == []
    assert_books(rogue, store)
    assert [r["query"].get("page") for r in rogue.requests] == ["2", "3"]


# --- case 6: an error inside a 200 --------------------------------------------------------------------------------
def test_an_error_inside_a_200_is_a_failed_call_when_the_level_names_its_field(api, aws):
    rogue, server = api
    rogue.issue_style = "page"
    rogue.error_page = {"globex/g02": 2}
    store, ledger = aws
    level = {"records": "data", "error_path": "error", "pagination": {"type": "page_number", "size": 3}}
    out = run_levels(gh_spec(server.url, level), aws)
    fails = failures(ledger)
    assert [f["parent"] for f in fails] == ["globex/g02"] and out["failed"]
    assert "backend timeout" in fails[0]["reason"] and "page=2" in fails[0]["url"]
    rogue.error_page = {}
    assert run_levels(gh_spec(server.url, level), aws, attempt=2)["failed"] == []
    assert_books(rogue, store)


# --- case 7: credentials only go to the spec's origin ------------------------------------------------------------
@pytest.mark.parametrize("auth", ["header", "query"])
def test_credentials_never_go_to_another_origin(auth, api, aws):
    rogue, server = api
    recorder = Recorder()
    with Serving(recorder.app) as other:
        rogue.redirect = {"acme/r00": other.url}
        top = {"auth": {"type": "query", "name": "api_key", "env": "UNUSED"}} if auth == "query" else {}
        secret = TOKEN if auth == "query" else f"token {TOKEN}"
        out = run_levels(gh_spec(server.url, **top), aws, secret=secret)
        assert out["failed"] == []
        assert recorder.requests, "the redirect was followed"
        for req in recorder.requests:
            assert TOKEN not in json.dumps(req), req

        recorder.requests.clear()  # an origin the spec allows gets the credential
        run_levels(gh_spec(server.url, allowed_origins=[other.url], **top), aws, run_id="r2", secret=secret)
        assert any(TOKEN in json.dumps(req) for req in recorder.requests)


def test_a_redirect_loop_is_a_failed_call_naming_the_url_not_the_path_template(api, aws):
    """Case 8: a redirect loop was reported against the level's path template ({org.login}/...)."""
    rogue, server = api
    rogue.redirect = {"globex/g00": server.url}  # the issues URL redirects to itself
    out = run_levels(gh_spec(server.url), aws)
    fails = failures(aws[1])
    assert [f["parent"] for f in fails] == ["globex/g00"] and out["failed"]
    assert fails[0]["url"].startswith(server.url + "/repos/globex/g00/issues") and "redirect" in fails[0]["reason"]
    assert TOKEN not in json.dumps(fails)


def test_offset_drift_across_invocations_keeps_each_parent_once(api, aws):
    """The repo list is cut by the time budget after its first page; the next invocation's first page repeats
    the last repo of the page before (a repo created meanwhile): it is kept once, with its issues."""
    rogue, server = api
    rogue.drift, rogue.repos_latency = {"acme"}, 1.0
    store, ledger = aws
    out = run_levels(gh_spec(server.url), aws, budget=1.0)
    assert out["failed"] == [] and failures(ledger) == []
    assert max(b.get("invocations", 1) for b in ledger.batches(SOURCE, "r1", 1)) >= 2, "the list was cut"
    assert_books(rogue, store)
