"""The query: one pydantic model, the one validation. The query workflow's Plan query step (lambdas/query.py) and
`harvest query` (harvester/cli/query.py) both call `validate_query`; a bad query is a `QueryError` naming the field.

The CLI validates a query before it starts an execution. The normalized query (a dict, JSON in the state machine) is
what the workers of harvester/lake/query.py receive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .naming import KEY, SEP
from .timeutil import iso, parse_instant

AGG_OPS = ("count", "sum", "min", "max", "mean", "share")
#: comparison filters (COLUMN OP VALUE) and word filters (COLUMN OP [VALUES])
COMPARE_OPS = ("=", "==", "!=", "<", "<=", ">", ">=")
WORD_OPS = ("in", "not_in", "is_null", "not_null")
FILTER_OPS = frozenset(COMPARE_OPS + WORD_OPS)
FilterOp = Literal["=", "==", "!=", "<", "<=", ">", ">=", "in", "not_in", "is_null", "not_null"]
AggOp = Literal["count", "sum", "min", "max", "mean", "share"]


class QueryError(ValueError):
    """The query is malformed (names the field and the problem). Its class name is the workflow's Error name."""


def _op_among(kind: str, ops: Iterable[str]):
    """The `op` field's check: one of `ops`, or an error that lists them (pydantic's own Literal error is longer)."""
    known = sorted(ops)

    def known_op(cls, op: Any) -> Any:
        if op not in known:
            raise ValueError(f"{kind} op {op!r} is not one of {known}")
        return op

    return field_validator("op", mode="before")(classmethod(known_op))


class ColumnRef(BaseModel):
    """``column`` of the queried level, or of the ancestor ``level`` joined on its ``key``."""

    model_config = ConfigDict(extra="forbid")
    level: str | None = None
    column: str = Field(min_length=1)
    key: str | None = None


Column = str | ColumnRef


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: Column
    op: FilterOp = "="
    value: Any = None

    _known_op = _op_among("filter", FILTER_OPS)

    @model_validator(mode="after")
    def _list_for_in(self) -> Filter:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"filter op {self.op!r} needs a list value")
        return self


class Aggregate(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    op: AggOp
    column: str | None = None
    equals: Any = None
    as_: str | None = Field(default=None, alias="as")

    _known_op = _op_among("aggregate", AGG_OPS)

    @model_validator(mode="after")
    def _needs(self) -> Aggregate:
        if self.op != "count" and not self.column:
            raise ValueError(f"aggregate {self.op!r} needs a 'column'")
        if self.op == "share" and "equals" not in self.model_fields_set:
            raise ValueError("aggregate 'share' needs 'equals'")
        if self.column and "." in self.column:
            raise ValueError(f"aggregate column {self.column!r}: aggregates read the queried level's own columns")
        return self


class Query(BaseModel):
    """What a query may say (harvester/lake/README.md, "Query"); anything else is a typo and refused."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(min_length=1)
    level: str = Field(min_length=1)
    start: str | None = None
    end: str | None = None
    filters: list[Filter] | None = None
    group_by: list[Column] | None = None
    aggregates: list[Aggregate] | None = None
    ancestor_keys: dict[str, str] | None = None
    time_column: str | None = None
    query_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _an_object_of_known_fields(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise ValueError(f"the query must be a JSON object like {{\"source\": \"demo\", \"level\": \"points\"}}, "
                             f"got {type(raw).__name__}")
        unknown = sorted(set(raw) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"unknown query field(s) {unknown}; a query has {sorted(cls.model_fields)}")
        return raw


def validate_query(raw: Any) -> dict:
    """The query as the workers receive it (columns resolved, defaults filled, a deterministic ``query_id``, the
    partial columns), or QueryError naming the problem. An already normalized query passes as it is."""
    if isinstance(raw, dict) and raw.get("normalized"):
        return json.loads(json.dumps(raw))
    try:
        model = Query.model_validate(raw)
    except ValidationError as exc:
        raise QueryError(_message(exc)) from None
    try:
        start, end = parse_instant(model.start), parse_instant(model.end)
    except ValueError as exc:
        raise QueryError(f"bad query: {exc}") from None
    if start and end and end < start:
        raise QueryError("'end' is before 'start'")
    return _normalized(model, iso(start), iso(end))


def _message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors()[:10]:
        msg = err["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-"))
        problems.append(msg if err["type"] == "value_error" else f"{where or 'query'}: {msg}")
    return "; ".join(dict.fromkeys(problems))


def _colref(ref: Column, ancestor_keys: dict[str, str]) -> dict:
    if isinstance(ref, ColumnRef):
        level, column, key = ref.level, ref.column, ref.key
    else:
        level, _, column = ref.rpartition(".")
        level, key = level or None, None
    if not column:
        raise QueryError(f"bad column reference {ref!r}")
    column = column.replace(".", SEP)
    out = {"name": f"{level}.{column}" if level else column, "level": level, "column": column}
    if level:
        out["key"] = key or ancestor_keys.get(level, KEY)
    return out


def _normalized(model: Query, start: str | None, end: str | None) -> dict:
    keys = model.ancestor_keys or {}
    group_by = [_colref(g, keys) for g in model.group_by or []]
    filters = [{**_colref(f.column, keys), "op": "=" if f.op == "==" else f.op, "value": f.value}
               for f in model.filters or []]
    aggregates = []
    for a in model.aggregates or [Aggregate(op="count")]:
        col = a.column.replace(".", SEP) if a.column else None
        default = a.op if not col else f"{a.op}_{col}" + (f"_{a.equals}" if a.op == "share" else "")
        aggregates.append({"op": a.op, "column": col, "equals": a.equals, "as": a.as_ or default})
    names = [g["name"] for g in group_by] + [a["as"] for a in aggregates]
    if len(set(names)) != len(names):
        raise QueryError(f"output column names collide: {names}")
    q = {"source": model.source, "level": model.level, "start": start, "end": end, "time_column": model.time_column,
         "filters": filters, "group_by": group_by, "aggregates": aggregates}
    q["query_id"] = model.query_id or hashlib.sha256(json.dumps(q, sort_keys=True, default=str).encode()).hexdigest()[:20]
    q["parts"] = _parts(q)
    q["normalized"] = True
    return q


def _parts(q: dict) -> list[dict]:
    """Mergeable partial columns the aggregates need (deduplicated)."""
    parts: dict[tuple, dict] = {}

    def need(kind, column=None, equals=None):
        k = (kind, column, json.dumps(equals))
        if k not in parts:
            parts[k] = {"name": f"__p{len(parts)}", "kind": kind, "column": column, "equals": equals}
        return parts[k]["name"]

    for a in q["aggregates"]:
        op, c = a["op"], a["column"]
        if op == "count":
            a["_parts"] = [need("count", c)] if c else [need("count_all")]
        elif op in ("sum", "min", "max"):
            a["_parts"] = [need(op, c)]
        elif op == "mean":
            a["_parts"] = [need("sum", c), need("count", c)]
        else:  # share
            a["_parts"] = [need("eqsum", c, a["equals"]), need("count", c)]
    return list(parts.values())
