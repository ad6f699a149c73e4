"""One module spells every S3 key (harvester/s3keys.py) and one table documents them (docs/architecture.md, "S3
layout"): every key the module makes has its row there, and every prefix is the start of a key it makes."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from harvester import s3keys, storage

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
ARGS = {"source": "src", "run_id": "r1", "batch_id": "b1", "part": 3, "partition": "event_date=2026-01-02",
        "group_id": "0123456789abcdef", "query_id": "q1", "task": 4, "n": 5}


def layout_rows() -> list[re.Pattern]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## S3 layout"):]
    section = section[:section.index("\n## ", 1)]
    patterns = []
    for cell in re.findall(r"^\| (.+?) \| ", section, re.M):
        for key in re.findall(r"`([^`]+)`", cell.replace("\\|", "|")):
            patterns.append(re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(key)) + "$"))
    return patterns


def rendered(fn) -> list[str]:
    params = inspect.signature(fn).parameters
    kwargs = {name: ARGS.get(name, 2 if p.annotation in (int, "int") else "points") for name, p in params.items()}
    out = fn(**kwargs)
    return list(out) if isinstance(out, tuple) else [out]


def key_functions(suffix: str) -> dict:
    return {name: fn for name, fn in inspect.getmembers(s3keys, inspect.isfunction)
            if fn.__module__ == s3keys.__name__ and name.endswith(suffix)}


def test_every_key_has_its_row_in_the_layout_table():
    rows = layout_rows()
    keys = {**key_functions("_key"), **key_functions("_keys")}
    assert len(keys) >= 15
    for name, fn in keys.items():
        for key in rendered(fn):
            assert any(r.match(key) for r in rows), f"{name} -> {key}: no row of docs/architecture.md, 'S3 layout'"


def test_every_prefix_starts_a_key_of_the_module():
    made = [k for fn in {**key_functions("_key"), **key_functions("_keys")}.values() for k in rendered(fn)]
    prefixes = key_functions("_prefix")
    assert len(prefixes) >= 8
    for name, fn in prefixes.items():
        prefix = rendered(fn)[0]
        assert any(k.startswith(prefix) for k in made), f"{name} -> {prefix}: starts no key"


def test_the_harvest_reaches_the_same_functions_through_storage():
    """storage.<key> is the s3keys function itself (imported, not a second definition)."""
    for name in ("raw_key", "raw_prefix", "spec_key", "manifest_key", "children_key", "checkpoint_key", "cursors_key"):
        assert getattr(storage, name) is getattr(s3keys, name)
