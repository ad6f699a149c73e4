"""The convert stage's reader: every raw line becomes exactly one row with its values, whatever the block size,
record length, object boundaries or JSON types. Oracle: Python's own json module over the same lines."""

from __future__ import annotations

import gzip
import json
import random

import pyarrow as pa
import pytest

from harvester.lake import convert
from harvester.lake.convert import convert_partitions, convert_table, split_partitions
from harvester.lake.schema import flatten_record


def gz(records: list[dict]) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode())


def records(n: int, seed: int, long_every: int = 0, long_len: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        rec = {"id": f"{seed}-{i}", "n": rnd.randint(-10**6, 10**6), "x": round(rnd.uniform(-1e3, 1e3), 3),
               "ok": rnd.random() < 0.5, "tags": [rnd.choice("abc") for _ in range(rnd.randint(0, 3))],
               "geo": {"lat": round(rnd.uniform(-90, 90), 4), "name": "é" * rnd.randint(0, 40)},
               "_lineage": {"parents": f"p{i % 7}"}}
        if long_every and i % long_every == 0:
            rec["blob"] = "z" * long_len
        out.append(rec)
    return out


def oracle_rows(objects: list[list[dict]]) -> list[dict]:
    return [flatten_record(r) for recs in objects for r in recs]


def table_rows(table: pa.Table, columns: list[str]) -> list[dict]:
    return [{c: row[c] for c in columns if row.get(c) is not None} for row in table.to_pylist()]


def same_rows(table: pa.Table, objects: list[list[dict]]) -> None:
    want = oracle_rows(objects)
    columns = sorted({c for r in want for c in r})
    assert table.num_rows == len(want)
    assert table_rows(table, columns) == [{c: v for c, v in r.items() if v is not None} for r in want]


@pytest.mark.parametrize("block", [512, 4096, convert.JSON_BLOCK_SIZE])
def test_every_line_once_whatever_the_block_size(monkeypatch, block):
    """Block boundaries fall inside records (lines of 150-300 bytes, blocks of 512 B up to the default): no record
    is lost, split or repeated, in order, object by object."""
    monkeypatch.setattr(convert, "JSON_BLOCK_SIZE", block)
    objects = [records(300, seed) for seed in range(5)]
    table, bad = convert_table([gz(o) for o in objects], [f"k{i}" for i in range(5)], threads=2)
    same_rows(table, objects)
    assert bad.count == 0 and not bad.notes


def test_a_record_longer_than_a_block_is_read_by_arrow_not_row_by_row(monkeypatch):
    """A record longer than the reader's block (Arrow: "straddling object") sent the whole object to the row-by-row
    reader (Python dicts: slow, and several times the memory); it is read again by Arrow with a block that holds
    the longest line."""
    monkeypatch.setattr(convert, "JSON_BLOCK_SIZE", 4096)
    slow = []
    tolerant = convert._tolerant_read
    monkeypatch.setattr(convert, "_tolerant_read", lambda data, name, *a: slow.append(name) or tolerant(data, name, *a))
    objects = [records(50, 1), records(40, 2, long_every=7, long_len=3 * 4096), records(30, 3, long_every=1, long_len=20_000)]
    table, bad = convert_table([gz(o) for o in objects], ["k0", "k1", "k2"], threads=2)
    same_rows(table, objects)
    assert slow == [] and bad.count == 0


def test_mixed_types_across_objects_and_within_one():
    """One object has ints, one floats, one strings for `v`; one object mixes types within itself (read row by row):
    the group is one table, `v` widened to text, noted; the other columns keep their types."""
    objects = [
        [{"v": 1, "w": 1.5}, {"v": 2, "w": 2}],
        [{"v": 2.5, "w": 3.0}],
        [{"v": "x", "w": None}],
        [{"v": 3, "w": 4.0, "u": True}, {"v": "y", "w": 5.0, "s": {"a": 1}}],
    ]
    table, bad = convert_table([gz(o) for o in objects], ["a", "b", "c", "d"], threads=2)
    assert table.num_rows == 6
    assert table.schema.field("w").type == pa.float64()
    assert table["w"].to_pylist() == [1.5, 2.0, 3.0, None, 4.0, 5.0]
    assert table["v"].to_pylist() == ["1", "2", "2.5", "x", "3", "y"]
    assert table["s__a"].to_pylist() == [None] * 5 + [1]
    assert table["u"].to_pylist() == [None] * 4 + [True, None]
    assert "v" in bad.notes and bad.count == 0  # noted by the object that mixes them


def test_bad_values_name_their_object_and_line_across_objects():
    objects = [[{"v": "1"}, {"v": "2"}], [{"v": "3"}, {"v": "3"}, {"v": "no"}], [], [{"v": "x"}]]
    table, bad = convert_table([gz(o) for o in objects], ["k0", "k1", "k2", "k3"], types={"v": "float64"}, threads=2)
    assert table["v"].to_pylist() == [1.0, 2.0, 3.0, 3.0, None, None]
    assert bad.count == 2 and bad.by_field == {"v": 2}
    assert [(e["key"], e["line"], e["value"]) for e in bad.entries] == [("k1", 3, "no"), ("k3", 1, "x")]


def test_partitions_per_object_equal_a_split_of_the_whole_table():
    """`convert_partitions` (each object typed and split on its own) gives the rows, in the order, that splitting
    the whole group's table gives; rows without a time go to the null partition."""
    rnd = random.Random(4)
    objects = [[{"ts": f"2026-11-{rnd.randint(19, 22)}T{rnd.randint(0, 23):02d}:00:00Z" if rnd.random() < 0.95 else None,
                 "v": rnd.random(), "_lineage": {"p": str(o)}} for _ in range(200)] for o in range(6)]
    blobs, names = [gz(o) for o in objects], [f"k{i}" for i in range(6)]
    parts, bad = convert_partitions(blobs, names, time_field="ts", threads=2)
    whole, _ = convert_table(blobs, names, time_field="ts", threads=1)
    expect = split_partitions(whole, time_field="ts")
    assert [p for p, _ in parts] == [p for p, _ in expect]
    assert all(t.equals(e) for (_, t), (_, e) in zip(parts, expect))
    assert sum(t.num_rows for _, t in parts) == 1200 and bad.count == 0
