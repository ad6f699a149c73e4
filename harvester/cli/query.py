"""`harvest query`: the query workflow over the Parquet lake, the same in both modes (the query `live` alias of the
local engine or of the deployed stack; the result is read back from results/{query_id}.json in the bucket)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from harvester.cli import view
from harvester.cli.backend import Backend, engine_backend
from harvester.cli.codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from harvester.lake.querymodel import COMPARE_OPS, WORD_OPS, QueryError, validate_query
from harvester.spec import SpecError

# --- query ----------------------------------------------------------------------------------------------------
#: the query model's operators (longest first, so <= is not read as <)
_COMPARE = "|".join(re.escape(op) for op in sorted(COMPARE_OPS, key=len, reverse=True))
_FILTER = re.compile(rf"^\s*(?P<col>[A-Za-z_][\w.]*)\s*(?P<op>{_COMPARE})\s*(?P<val>.*?)\s*$")
_FILTER_WORD = re.compile(rf"^\s*(?P<col>[A-Za-z_][\w.]*)\s+(?P<op>{'|'.join(WORD_OPS)})\b\s*(?P<val>.*?)\s*$")


def _value(text: str) -> Any:
    """A filter or `share` value: JSON when it parses as a number, true/false or null, else the text itself
    (so 1.3.1, up and 007 stay text; 5 and 2.5 are numbers; quote with "..." to force text)."""
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, (int, float, bool, str)) or v is None else text


def parse_agg(text: str) -> dict[str, Any]:
    """`OP[:COLUMN[=VALUE]][ as NAME]`: count, count:value, sum:value, mean:value, min:ts, max:ts, share:status=up."""
    body, _, name = text.partition(" as ")
    op, _, rest = body.strip().partition(":")
    agg: dict[str, Any] = {"op": op.strip()}
    if rest:
        column, eq, value = rest.partition("=")
        agg["column"] = column.strip()
        if eq:
            agg["equals"] = _value(value.strip())
    if name.strip():
        agg["as"] = name.strip()
    return agg


def parse_filter(text: str) -> dict[str, Any]:
    """`COL=VALUE`, `COL!=VALUE`, `COL<VALUE` (<=, >, >=), `COL in A,B`, `COL not_in A,B`, `COL is_null`, `COL not_null`."""
    m = _FILTER_WORD.match(text)
    if m:
        op = m["op"]
        if op in ("in", "not_in"):
            return {"column": m["col"], "op": op, "value": [_value(v.strip()) for v in m["val"].split(",") if v.strip()]}
        return {"column": m["col"], "op": op}
    m = _FILTER.match(text)
    if not m:
        raise SpecError(f"--filter {text!r}: expected COLUMN OP VALUE (ops = != < <= > >=, in, not_in, is_null, not_null)")
    return {"column": m["col"], "op": m["op"], "value": _value(m["val"])}


def resolve_columns(bucket_dir: Path, query: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Local convenience: a bare column the queried level does not have but exactly one ancestor level has becomes
    LEVEL.COLUMN (`firmware` -> `warriors.firmware` for points). Reads the Parquet footers in the state folder
    (every file: a column may exist in some runs only). Returns (a note per rewrite, problems with columns)."""
    import pyarrow.parquet as pq

    from harvester import s3keys
    from harvester.lake.schema import SEP

    def columns(level: str) -> set[str]:
        files = sorted((bucket_dir / s3keys.processed_prefix(query["source"], level)).glob("*/*.parquet"))
        return {name for f in files for name in pq.read_schema(f).names}

    if not query.get("source") or not query.get("level"):
        return [], []
    own = columns(query["level"])
    if not own:
        return [], []
    ancestors = {c.removeprefix("_lineage" + SEP): set() for c in own if c.startswith("_lineage" + SEP)}
    for lv in ancestors:
        ancestors[lv] = columns(lv)
    notes: list[str] = []
    problems: list[str] = []

    def fix(ref: Any) -> Any:
        if not isinstance(ref, str):
            return ref
        level, _, column = ref.rpartition(".")
        if level:
            if level in ancestors and column.replace(".", SEP) not in ancestors[level]:
                problems.append(f"{ref}: level {level} has no column {column!r}")
            return ref
        if ref in own:
            return ref
        having = [lv for lv, cols in ancestors.items() if ref in cols]
        if len(having) == 1:
            notes.append(f"{ref} -> {having[0]}.{ref} (not a column of {query['level']})")
            return f"{having[0]}.{ref}"
        problems.append(f"{ref}: not a column of {query['level']}" + (
            f" (ambiguous: {', '.join(having)} have it; write LEVEL.{ref})" if having else
            f"; its columns: {', '.join(sorted(c for c in own if not c.startswith('_')))}"))
        return ref

    query["group_by"] = [fix(g) for g in query.get("group_by") or []]
    for f in query.get("filters") or []:
        f["column"] = fix(f.get("column"))
    for a in query.get("aggregates") or []:
        if a.get("column") and a["column"].replace(".", SEP) not in own:
            problems.append(f"aggregate {a.get('op')}:{a['column']}: not a column of {query['level']}")
    return notes, problems


def query_from_args(args) -> dict[str, Any]:
    query: dict[str, Any] = _query_file(args.query_file) if args.query_file else {}
    for name in ("source", "level", "start", "end"):
        if getattr(args, name):
            query[name] = getattr(args, name)
    if args.group_by:
        query["group_by"] = [c.strip() for g in args.group_by for c in g.split(",") if c.strip()]
    if args.filter:
        query["filters"] = [parse_filter(f) for f in args.filter]
    if args.agg:
        query["aggregates"] = [parse_agg(a) for a in args.agg]
    return query


def _query_file(path: str) -> dict[str, Any]:
    try:
        query = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"--query-file {path}: cannot read it ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"--query-file {path}: not JSON ({str(exc)[:200]})") from None
    if not isinstance(query, dict):
        raise SpecError(f"--query-file {path}: expected a JSON object, got {type(query).__name__}")
    return query


def query_on(backend: Backend, query: dict[str, Any], *, timeout: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One execution of the query workflow; returns (execution description, result or None when it failed)."""
    import uuid

    arn = backend.sfn.start_execution(stateMachineArn=backend.query_arn, name=uuid.uuid4().hex,
                                      input=json.dumps(query))["executionArn"]
    deadline = time.monotonic() + timeout
    while (desc := backend.describe(arn))["status"] == "RUNNING":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the query did not end within {timeout:g} s")
        time.sleep(backend.poll / 2)
    if desc["status"] != "SUCCEEDED":
        return desc, None
    key = json.loads(desc["output"])["json_key"]
    return desc, json.loads(backend.s3.get_object(Bucket=backend.bucket, Key=key)["Body"].read())


def run_query(state: Path, query: dict[str, Any], *, timeout: float,
              iam: bool = True) -> tuple[dict[str, Any], dict[str, Any] | None, float]:
    """One execution of the query workflow on the local engine over the state folder's lake."""
    from harvester.local.engine import LocalEngine

    with LocalEngine(state, lock=False, iam=iam) as engine:  # a reader: works during a run in the same folder
        t0 = time.monotonic()
        desc, result = query_on(engine_backend(engine, state), query, timeout=timeout)
        return desc, result, time.monotonic() - t0


def query_lines(result: dict[str, Any], seconds: float, where: Path | str) -> list[str]:
    from harvester.lake.query import format_table

    stats = result.get("stats", {})
    place = f"{where / 'bucket' / 'results' / result['query_id']}" if isinstance(where, Path) else \
        f"s3://{where}/results/{result['query_id']}"
    return [
        *format_table(result).splitlines(),
        f"{len(result['rows'])} rows; {stats.get('files', 0)} files, {stats.get('rows_scanned', 0)} rows scanned, "
        f"{stats.get('tasks', 0)} tasks, {seconds:.1f} s (query workflow)",
        f"result: {place}.json and .csv",
    ]


def cmd_query(args, backend_factory) -> int:
    query = query_from_args(args)
    if args.local:
        notes, problems = resolve_columns(args.state / "bucket", query)
        for note in notes:
            print(f"note: {note}", file=sys.stderr, flush=True)
        if problems:
            print("error: " + "\n       ".join(problems), file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.print_query:
        print(json.dumps(query, indent=1))
    try:  # the workflow's own validation, before an execution is started
        validate_query(query)
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.local:
        desc, result, seconds = run_query(args.state, query, timeout=args.timeout, iam=not args.no_iam)
        where: Path | str = args.state
    else:
        backend = backend_factory()
        if not backend.query_arn:
            print(f"error: {backend.where} has no query workflow (output QueryStateMachineAliasArn)", file=sys.stderr)
            return EXIT_BAD_INPUT
        t0 = time.monotonic()
        desc, result = query_on(backend, query, timeout=args.timeout)
        seconds, where = time.monotonic() - t0, backend.bucket
    if result is None:
        cause = desc.get("cause", "")
        try:
            cause = json.loads(cause).get("errorMessage", cause)
        except (ValueError, AttributeError):
            pass
        print(f"error: query {desc['status']}: {desc.get('error', '')}: {cause}"[:2000], file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        view.emit_json({k: result[k] for k in ("query_id", "columns", "rows", "stats")})
    else:
        print("\n".join(query_lines(result, seconds, where)), flush=True)
    return EXIT_OK
