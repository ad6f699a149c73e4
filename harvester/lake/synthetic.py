"""Synthetic harvests for tests and benchmarks: troops -> warriors -> datagroups -> points."""

from __future__ import annotations

import gzip
import json
import random
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa

from .schema import lineage_column

FIRMWARES = ["1.2.0", "1.3.1", "2.0.0", "2.1.4"]
LEVELS = ["troops", "warriors", "datagroups", "points"]


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def demo_records(
    run_id: str,
    *,
    source: str = "demo",
    troops: int = 2,
    warriors_per_troop: int = 3,
    groups_per_warrior: int = 2,
    points_per_group: int = 40,
    start: str = "2026-11-20T22:00:00Z",
    step_seconds: int = 300,
    seed: int = 0,
    fetched_at: str = "2026-11-25T20:00:00.123456Z",
    firmware_offset: int = 0,
) -> dict[str, list[dict]]:
    """Records per level as the harvest writes them (vendor fields + _source, _run_id, _level, _lineage, _fetched_at)."""
    rnd = random.Random(seed)
    t0 = datetime.fromisoformat(start.replace("Z", "+00:00"))
    out = {lv: [] for lv in LEVELS}

    def meta(level, lineage):
        return {"_source": source, "_run_id": run_id, "_level": level, "_lineage": dict(lineage), "_fetched_at": fetched_at}

    w = g = 0
    for ti in range(1, troops + 1):
        tid = f"t{ti:04d}"
        out["troops"].append({"id": tid, "name": f"troop {ti}", "region": rnd.choice(["north", "south"]), **meta("troops", {})})
        for _ in range(warriors_per_troop):
            w += 1
            wid = f"w{w:06d}"
            fw = FIRMWARES[(w + firmware_offset) % len(FIRMWARES)]
            out["warriors"].append({"id": wid, "troop_id": tid, "name": f"warrior {w}", "firmware": fw,
                                    "specs": {"mass": rnd.randint(50, 90), "model": f"m{w % 3}"},
                                    **meta("warriors", {"troops": tid})})
            p_up = 0.6 + 0.1 * FIRMWARES.index(fw)
            for _ in range(groups_per_warrior):
                g += 1
                gid = f"g{g:06d}"
                out["datagroups"].append({"id": gid, "warrior_id": wid, "kind": rnd.choice(["temp", "load"]),
                                          **meta("datagroups", {"troops": tid, "warriors": wid})})
                for k in range(points_per_group):
                    out["points"].append({
                        "ts": _iso(t0 + timedelta(seconds=step_seconds * k + g)),
                        "value": round(rnd.uniform(0, 100), 2),
                        "status": "up" if rnd.random() < p_up else rnd.choice(["down", "degraded"]),
                        **meta("points", {"troops": tid, "warriors": wid, "datagroups": gid}),
                    })
    return out


def ndjson_gz(records: list[dict], level: int = 6) -> bytes:
    return gzip.compress("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode(), compresslevel=level)


def write_raw(store, source: str, run_id: str, records: dict[str, list[dict]], batch_size: int = 100) -> list[str]:
    """Write records as raw objects ``raw/{source}/{run_id}/{level}/{batch_id}-{part:03d}.jsonl.gz``."""
    keys = []
    for level, recs in records.items():
        for b in range(0, len(recs), batch_size):
            key = f"raw/{source}/{run_id}/{level}/b{b // batch_size:05d}-000.jsonl.gz"
            store.put(key, ndjson_gz(recs[b : b + batch_size]))
            keys.append(key)
    return keys


def point_table(n: int, *, warriors: int = 2000, run_id: str = "r1", start: str = "2026-11-20T00:00:00Z",
                seconds: int = 86_400, seed: int = 0) -> pa.Table:
    """``n`` points in the converted layout (sorted by ts), straight from numpy: for the query benchmark."""
    rng = np.random.default_rng(seed)
    t0 = int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000)
    ts = np.sort(rng.integers(t0, t0 + seconds * 1000, n))
    w = rng.integers(0, warriors, n).astype(np.int32)
    fw = w % len(FIRMWARES)
    up = rng.random(n) < (0.6 + 0.1 * fw)
    status_idx = np.where(up, 0, 1 + (rng.random(n) < 0.5)).astype(np.int32)
    wids = pa.array([f"w{i + 1:06d}" for i in range(warriors)])
    return pa.table({
        "ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "value": rng.random(n) * 100,
        "status": pa.DictionaryArray.from_arrays(pa.array(status_idx), pa.array(["up", "down", "degraded"])).dictionary_decode(),
        "_source": pa.array(["demo"] * 1).take(pa.array(np.zeros(n, dtype=np.int32))),
        "_run_id": pa.array([run_id]).take(pa.array(np.zeros(n, dtype=np.int32))),
        "_level": pa.array(["points"]).take(pa.array(np.zeros(n, dtype=np.int32))),
        lineage_column("troops"): pa.array([f"t{i // 50 + 1:04d}" for i in range(warriors)]).take(pa.array(w)),
        lineage_column("warriors"): wids.take(pa.array(w)),
        lineage_column("datagroups"): pa.array([f"g{i + 1:06d}" for i in range(warriors)]).take(pa.array(w)),
        "_fetched_at": pa.array(np.full(n, t0 * 1000 + 86_400_000_000), pa.timestamp("us", tz="UTC")),
    })


def warrior_table(warriors: int = 2000, run_id: str = "r1") -> pa.Table:
    return pa.table({
        "id": [f"w{i + 1:06d}" for i in range(warriors)],
        "troop_id": [f"t{i // 50 + 1:04d}" for i in range(warriors)],
        "firmware": [FIRMWARES[i % len(FIRMWARES)] for i in range(warriors)],
        "_run_id": [run_id] * warriors,
        "_level": ["warriors"] * warriors,
    })


def create_ledger_table(dynamodb, name: str) -> None:
    """The single table's key schema (pk/sk strings) for tests on moto."""
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
