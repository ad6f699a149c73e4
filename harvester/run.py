"""Run-level steps of the workflow: plan a run (validate, write the first manifest) and advance a level.

Both are plain functions over a HarvestBucket, a Ledger and a spec, so tests call them directly; the Lambda handlers
in `lambdas/` only wire AWS clients and Powertools around them.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from harvester import sizing, storage
from harvester import window as windows
from harvester.counters import BATCH_SUMS, RUN_TOTALS
from harvester.ledger import Ledger, batch_sk, expires_at, run_pk, window_pk
from harvester.payloads import LevelState, MapItem
from harvester.spec import SourceSpec, SpecError

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
#: a run's totals (harvester/counters.py)
COUNTERS = RUN_TOTALS


class InputError(ValueError):
    """The execution input is not what the workflow expects."""


class BackfillWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str
    end: str
    step: str | None = None


class RunInput(BaseModel):
    """Execution input: `{"source": "demo"}`, optionally `"run_id"`, or `"resume": "<run_id>"`; a backfill:
    `"window": {"start", "end", "step"}`; `"as_of"`: the time a daily window ends at (minus the settle lag),
    default the execution's start."""

    model_config = ConfigDict(extra="forbid")
    source: str
    run_id: str | None = None
    resume: str | None = None
    window: BackfillWindow | None = None
    as_of: str | None = None

    @field_validator("run_id", "resume")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None and not RUN_ID.match(v):
            raise ValueError(f"{v!r} is not a run id (letters, digits, '_', '.', '-'; at most 80)")
        return v


def parse_input(raw: Any) -> RunInput:
    if not isinstance(raw, dict):
        raise InputError(f'execution input must be a JSON object like {{"source": "demo"}}, got {type(raw).__name__}')
    try:
        parsed = RunInput.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise InputError(f'bad execution input ({problems}); expected {{"source": "<name>"}} '
                         f'with optional "run_id" or "resume"') from None
    if parsed.run_id and parsed.resume:
        raise InputError('give either "run_id" (a new run) or "resume" (an earlier run), not both')
    if parsed.resume and (parsed.window or parsed.as_of):
        raise InputError('a resume keeps its run\'s window: give "resume" without "window" or "as_of"')
    return parsed


def plan_window(req: RunInput, spec: SourceSpec, run_id: str, start_time: str,
                prior: dict[str, Any] | None) -> dict[str, Any] | Callable[[Ledger, storage.HarvestBucket], dict[str, Any]]:
    """The run's window: a resume keeps the one its run item recorded; a backfill takes the input's (and never
    touches the bookmark); a daily run of a windowed spec gets a function that takes the next window from the
    ledger's bookmark, called last (a refused run takes no window). Checks everything before anything is written."""
    if prior is not None:
        return {**windows.NONE, **(prior.get("window") or {})}
    wl = spec.window_level
    if req.window is not None:
        if wl is None:
            raise InputError(f"source {spec.name!r} declares no window: a backfill needs a level with window:")
        step = req.window.step or spec.levels[wl].window.step
        try:
            window = windows.backfill_window(req.window.start, req.window.end, step)
            windows.slices(window)  # at most MAX_SLICES
        except windows.WindowError as exc:
            raise InputError(f"window: {exc}") from None
        return window
    if wl is None:
        if req.as_of:
            raise InputError(f"as_of: source {spec.name!r} declares no window")
        return dict(windows.NONE)
    started = windows.parse_time(start_time)
    try:
        now = windows.parse_time(req.as_of) if req.as_of else started
    except windows.WindowError as exc:
        raise InputError(f"as_of: {exc}") from None
    if now > started:
        raise InputError(f"as_of {req.as_of} is later than the execution's start ({start_time}): a window "
                         "cannot end in the future")
    wspec = spec.levels[wl].window
    if wspec.cursor:
        return lambda ledger, store: cursor_state(spec, wl, run_id, now, ledger, store)
    return lambda ledger, store: ledger.claim_window(
        spec.name, run_id, lambda claimed: windows.daily_window(wspec, claimed, now))


def cursor_state(spec: SourceSpec, level: int, run_id: str, now: datetime, ledger: Ledger,
                 store: storage.HarvestBucket) -> dict[str, Any]:
    """The cursor variant: each parent's largest cursor value from the last run of the source that succeeded
    (its batch items of the windowed level carry them; a parent it did not fetch keeps an older one, since every
    batch carries the cursors it was given forward), written for this run's workers."""
    last = next((r for r in ledger.list_runs(spec.name, limit=50)
                 if r.get("status") == "SUCCEEDED" and (r.get("window") or {}).get("kind") == "cursor"), None)
    cursors: dict[str, Any] = {}
    if last is not None:
        for item in ledger.iter_batches(spec.name, last["run_id"], level):
            cursors.update(item.get("cursors") or {})
    store.put_json(storage.cursors_key(spec.name, run_id), cursors)
    return windows.cursor_window(spec.levels[level].window, now)


def default_run_id(start_time: str, execution_name: str) -> str:
    started = datetime.fromisoformat(start_time.replace("Z", "+00:00")).astimezone(UTC)
    suffix = re.sub(r"[^A-Za-z0-9]", "", execution_name)[:8] or "run"
    return f"{started:%Y%m%dT%H%M%SZ}-{suffix}"


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail early, before anything is written, when the vendor's host does not answer at all."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise SpecError(f"base_url {url} does not answer ({parts.hostname}:{port}: {exc})") from None


def _still_running(prior: dict[str, Any], execution_status: Callable[[str], str | None] | None) -> bool:
    """A run item says RUNNING until the workflow records the end; an execution that was stopped or timed out
    never does. Ask Step Functions whether the execution that owns the run is really still running."""
    arn = prior.get("execution_arn")
    if not arn or execution_status is None:
        return True
    # None: Step Functions has no such execution (e.g. its history expired): not running. Any other error (such
    # as AccessDeniedException) propagates: a guard that cannot ask must not answer "not running"
    return execution_status(arn) == "RUNNING"


def plan_run(
    raw_input: Any,
    execution_name: str,
    start_time: str,
    *,
    load_spec: Callable[[str], SourceSpec],
    resolve_secret: Callable[[SourceSpec], str | None],
    store: storage.HarvestBucket,
    ledger: Ledger,
    check_url: Callable[[str], None] = check_reachable,
    execution_status: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """Validate everything, then write the spec and the level-0 manifest. Nothing is written on a bad input."""
    req = parse_input(raw_input)
    spec = load_spec(req.source)
    if spec.auth is not None:
        resolve_secret(spec)  # raises SpecError naming the variable or secret
    check_url(spec.base_url)

    attempt, prior = 1, None
    if req.resume:
        prior = ledger.get_run(spec.name, req.resume)
        if prior is None:
            raise InputError(f"cannot resume run {req.resume!r} of source {spec.name!r}: the ledger has no such run")
        if prior.get("status") == "RUNNING" and _still_running(prior, execution_status):
            raise InputError(
                f"run {req.resume!r} is still RUNNING in execution {prior.get('execution_arn')}; "
                "wait for it to end (or stop it) first"
            )
        run_id, attempt = req.resume, int(prior.get("attempt", 1)) + 1
        reopen_batches_missing_output(spec, run_id, store=store, ledger=ledger)
    else:
        run_id = req.run_id or default_run_id(start_time, execution_name)
        if ledger.get_run(spec.name, run_id) is not None:
            raise InputError(
                f'run {run_id!r} of source {spec.name!r} already exists; to continue it use {{"resume": "{run_id}"}}'
            )

    started = datetime.now(UTC).isoformat(timespec="seconds")
    window = plan_window(req, spec, run_id, start_time, prior)
    store.put_json(storage.spec_key(spec.name, run_id), spec.model_dump(mode="json"))
    if callable(window):
        window = window(ledger, store)  # the last check passed: take the next daily window
    pieces = windows.slices(window)
    run = {
        "source": spec.name,
        "run_id": run_id,
        "attempt": attempt,
        "resumed": bool(req.resume),
        "spec_key": storage.spec_key(spec.name, run_id),
        "spec_hash": spec.spec_hash(),
        "started_at": started,
        "expires_at": expires_at(spec.ttl_days),
        # precomputed ledger keys, so the workflow's DynamoDB tasks need no string building
        "pk": run_pk(spec.name, run_id),
        "gsi1pk": f"SOURCE#{spec.name}",
        "gsi1sk": f"{started}#{run_id}",
        "expires_at_str": str(expires_at(spec.ttl_days)),
        "attempt_str": str(attempt),
        "window": window,  # recorded on the run item; Commit window moves the bookmark to its end
        "window_pk": window_pk(spec.name),
        "window_end_epoch": str(int(windows.parse_time(window["end"]).timestamp())) if window["end"] else "0",
    }
    if window["kind"] == "cursor":
        run["cursor_key"] = storage.cursors_key(spec.name, run_id)
    if len(pieces) > 1:
        run["slices"] = pieces  # Map items per batch of parents and slice at the windowed level
    manifest = root_manifest(spec, pieces)
    key = storage.manifest_key(spec.name, run_id, 0)
    store.put_json(key, manifest)
    return {
        "run": run,
        "level": _level_state(spec, 0, key, len(manifest), 1),
        "totals": {c: 0 for c in COUNTERS} | {"attempt_calls": 0},
    }


def root_manifest(spec: SourceSpec, pieces: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Level 0's Map items: one batch with the one empty parent, or one per slice when level 0 is windowed."""
    if spec.window_level != 0 or len(pieces) <= 1:
        items = [MapItem(batch_id="root", sk=batch_sk(0, "root"), parents=[{}])]
    else:
        items = [MapItem(batch_id=f"root-{n:04d}", sk=batch_sk(0, f"root-{n:04d}"), parents=[{}], window=piece)
                 for n, piece in enumerate(pieces)]
    return [item.model_dump(exclude_none=True) for item in items]


def reopen_batches_missing_output(spec: SourceSpec, run_id: str, *, store: storage.HarvestBucket, ledger: Ledger) -> int:
    """A resume trusts a finished batch only if every raw part it wrote is still there. A batch with a part gone
    (deleted by hand, lost with a disk) is reopened: its ledger item no longer says SUCCEEDED and its checkpoint
    starts over, so the resume fetches it again and rewrites the same keys. One listing per level. Returns the
    number of batches reopened (also noted on the run item as `reopened_batches`)."""
    reopened = 0
    for index, level in enumerate(spec.levels):
        present: set[str] | None = None
        for item in ledger.iter_batches(spec.name, run_id, index):
            parts = int(item.get("parts") or 0)
            if item.get("status") != "SUCCEEDED" or not parts:
                continue
            if present is None:
                present = set(store.list_keys(storage.raw_prefix(spec.name, run_id, level.name)))
            wanted = [storage.raw_key(spec.name, run_id, level.name, item["batch_id"], p) for p in range(parts)]
            missing = [k for k in wanted if k not in present]
            if not missing:
                continue
            ck_key = storage.checkpoint_key(spec.name, run_id, index, item["batch_id"])
            checkpoint = store.get_json(ck_key, default=None) or {}
            # counters of earlier attempts stay; what was done is forgotten: the batch is fetched from its start
            store.put_json(ck_key, {k: v for k, v in checkpoint.items()
                                    if k not in ("done", "partial", "parts", "records", "children", "failed", "bytes")})
            ledger.reopen_batch(spec.name, run_id, index, item["batch_id"], f"raw objects missing: {missing[:3]}")
            reopened += 1
    if reopened:
        ledger.note_run(spec.name, run_id, {"reopened_batches": reopened})
    return reopened


def _level_state(spec: SourceSpec, index: int, manifest_key: str, batches: int, parents: int) -> dict[str, Any]:
    return LevelState(
        index=index,
        name=spec.levels[index].name,
        count=len(spec.levels),
        manifest_key=manifest_key,
        batches=batches,
        parents=parents,
        max_concurrency=max(1, min(sizing.workers(spec), batches)),
    ).model_dump()


def advance_level(state: dict[str, Any], *, spec: SourceSpec, store: storage.HarvestBucket, ledger: Ledger) -> dict[str, Any]:
    """Total the finished level from the ledger and write the next level's manifest from the batches' children."""
    run, level = state["run"], state["level"]
    source, run_id, index, attempt = run["source"], run["run_id"], level["index"], str(run["attempt"])
    counts, attempt_calls = level_counts(ledger, source, run_id, index, attempt)
    counts = {"parents": level["parents"], "batches": level["batches"], **counts}
    # a batch that died before writing anything has no item
    counts["failed_batches"] += max(0, level["batches"] - counts.pop("batch_items"))
    totals = {c: state["totals"].get(c, 0) + counts.get(c, 0) for c in COUNTERS}
    totals["attempt_calls"] = state["totals"].get("attempt_calls", 0) + attempt_calls
    ledger.record_level(source, run_id, level["name"], counts, totals)
    ledger.record_attempt_calls(source, run_id, run["attempt"], totals["attempt_calls"])

    nxt = index + 1
    done = {**state, "level": {**level, "done": True}, "totals": totals, "last_level": counts}
    if nxt >= len(spec.levels):
        return done
    written = write_manifest(store, source, run_id, nxt)
    if written is None:
        return done
    key, batches, parents = written
    return {**state, "level": _level_state(spec, nxt, key, batches, parents), "totals": totals, "last_level": counts}


def level_counts(ledger: Ledger, source: str, run_id: str, index: int, attempt: str) -> tuple[dict[str, Any], int]:
    """(sums over the level's batch items, calls made by this attempt), reading the items a page at a time."""
    sums: dict[str, Any] = dict.fromkeys(BATCH_SUMS, 0) | {"failed_batches": 0, "batch_items": 0}
    attempt_calls = 0
    for item in ledger.iter_batches(source, run_id, index):
        for name in BATCH_SUMS:
            sums[name] += item.get(name, 0)
        sums["batch_items"] += 1
        sums["failed_batches"] += item.get("status") != "SUCCEEDED"
        attempt_calls += (item.get("calls_by_attempt") or {}).get(attempt, 0)
    sums["token_wait_seconds"] = round(sums["token_wait_seconds"], 3)
    return sums, attempt_calls


def write_manifest(store: storage.HarvestBucket, source: str, run_id: str, level: int) -> tuple[str, int, int] | None:
    """Merge the child lists the batches of level-1 wrote into level's manifest, streaming: one child list read
    at a time (a few ahead), the JSON array uploaded in parts as it grows, so the memory does not grow with the
    level. Returns (key, Map items, parents), or None when the batches found no children (no manifest).

    The Distributed Map reads it with an ItemReader of InputType JSON (AWS also takes JSONL, CSV and MANIFEST,
    https://docs.aws.amazon.com/step-functions/latest/dg/input-output-itemreader.html; moto's executor reads
    JSON and CSV only)."""
    counts = {"batches": 0, "parents": 0}

    def chunks() -> Iterator[bytes]:
        """Each child list's elements as they are (its JSON text without the brackets), counted on the way."""
        for body in store.iter_bytes(store.iter_keys(storage.children_prefix(source, run_id, level))):
            items = json.loads(body)
            if not isinstance(items, list):
                raise ValueError(f"a child list of level {level} is not a JSON array")
            if items:
                counts["batches"] += len(items)
                counts["parents"] += sum(len(item["parents"]) for item in items)
                yield body.strip()[1:-1]

    stream = chunks()
    first = next(stream, None)
    if first is None:
        return None
    key = storage.manifest_key(source, run_id, level)
    store.put_json_array(key, itertools.chain([first], stream))
    return key, counts["batches"], counts["parents"]
