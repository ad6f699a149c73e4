"""One day of dlt's ``incremental`` on the simulated vendor: the peer of a windowed daily harvest (bench_daily.py).

Runs ONLY in the benchmark's own virtualenv (bench/.venv-dlt, dlt==1.31.0; never a product dependency):

    bench/.venv-dlt/bin/python bench/_dlt_daily.py --base-url URL --key KEY --out DIR --variant start_param

The hierarchy and paginators are bench/_dlt_harvest.py's; the points resource gets dlt's incremental cursor on the
points' ``ts``. ``--out`` is kept from day to day: the pipeline's state (the cursor's last value) lives in it, and so
does the loaded data (filesystem destination, jsonl, append). Four ways dlt's rest_api documentation offers to send
the cursor as the vendor's ``from`` (and ``to``) parameter:

- ``start_param``: ``"incremental": {"start_param": "from", "cursor_path": "ts", "initial_value": FIRST_DAY}`` on
  the endpoint, the resource-level form; dlt keeps the last value in its state from run to run;
- ``placeholder``: ``"params": {"from": "{incremental.start_value}"}`` with the same ``incremental`` minus the
  param;
- ``range``: ``start_param`` and ``end_param`` with ``initial_value`` and ``end_value`` given for the day (a fixed
  ``end_value`` means dlt keeps no state: the caller keeps the bookmark);
- ``window``: ``"params": {"from": "{incremental.initial_value}", "to": "{incremental.end_value}"}`` with the
  day's ``initial_value`` and ``end_value`` (the caller's bookmark, as an external scheduler passes an interval).

dlt keeps one cursor per resource, not per parent: the points of every datagroup share it. In the first three forms
the value sent moves on while the run goes from parent to parent (the datagroups fetched after the first ones are
asked only for what is newer than the newest point seen so far, and dlt drops their older points), so most points
are never loaded (https://github.com/dlt-hub/dlt/issues/2429, open). ``window`` sends a fixed range. Prints one
JSON line: seconds, points loaded by this run, and the points in the destination so far (rows, unique by datagroup
and ts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _dlt_harvest as base  # noqa: E402  (sets dlt's environment before importing it)
import dlt  # noqa: E402
from dlt.sources.rest_api import rest_api_source  # noqa: E402

DATASET = "daily"


def config(base_url: str, key: str, variant: str, initial_value: str, end_value: str | None) -> dict:
    cfg = base.config(base_url, key)
    endpoint = next(r for r in cfg["resources"] if r["name"] == "points")["endpoint"]
    incremental = {"cursor_path": "ts", "initial_value": initial_value}
    if variant == "start_param":
        endpoint["incremental"] = {"start_param": "from", **incremental}
    elif variant == "range":
        endpoint["incremental"] = {"start_param": "from", "end_param": "to", **incremental, "end_value": end_value}
    elif variant == "window":
        endpoint["params"].update({"from": "{incremental.initial_value}", "to": "{incremental.end_value}"})
        endpoint["incremental"] = {**incremental, "end_value": end_value}
    else:
        endpoint["params"]["from"] = "{incremental.start_value}"
        endpoint["incremental"] = incremental
    return cfg


def points(out: Path) -> dict[str, int]:
    found = base.count(out / "lake", DATASET)["points"] if (out / "lake" / DATASET).exists() else {}
    return {"rows": found.get("records", 0), "unique": found.get("unique", 0)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--variant", choices=("start_param", "placeholder", "range", "window"), default="start_param")
    p.add_argument("--initial-value", required=True)
    p.add_argument("--end-value", help="range: the window's end")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_daily_{args.variant}", pipelines_dir=str(args.out / "_pipelines"),
        destination=dlt.destinations.filesystem(bucket_url=str(args.out / "lake")), dataset_name=DATASET,
    )
    before = points(args.out)
    out: dict = {"dlt": dlt.__version__, "variant": args.variant}
    t0 = time.time()
    try:
        source = rest_api_source(config(args.base_url, args.key, args.variant, args.initial_value, args.end_value))
        pipeline.run(source, loader_file_format="jsonl")
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - reported, the benchmark goes on
        out["ok"] = False
        out["error"] = f"{type(exc).__name__}: {exc}"[:600]
    out["seconds"] = round(time.time() - t0, 3)
    after = points(args.out)
    out["records"] = after["rows"] - before["rows"]
    out["lake_rows"], out["lake_unique"] = after["rows"], after["unique"]
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
