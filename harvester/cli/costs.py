"""A run's cost (harvester/cost.py) in the CLI: printed at the end of every run, stored on the run item, a column of
`harvest runs`, and `harvest cost SPEC --calls N` before a run exists."""

from __future__ import annotations

from typing import Any

from harvester import cost
from harvester.cli import view
from harvester.cli.backend import Backend
from harvester.cli.codes import EXIT_OK
from harvester.spec import load_spec

#: the stack's defaults (stacks/config.py: arch, workflowLogLevel); a test keeps them equal
DEFAULT_ARCH = "arm64"
DEFAULT_LOG_LEVEL = "ERROR"

LABELS = {"step_functions": "Step Functions (state transitions)", "lambda_requests": "Lambda requests",
          "lambda_compute": "Lambda compute (GB-s)", "dynamodb": "DynamoDB (read/write units)",
          "s3_requests": "S3 requests", "secrets_manager": "Secrets Manager calls",
          "cloudwatch_logs": "CloudWatch Logs (ingested)", "cloudwatch_metrics": "CloudWatch custom metrics (metric-hours)"}
COUNT_OF = {"step_functions": "transitions", "lambda_requests": "lambda_requests", "lambda_compute": "lambda_gb_seconds",
            "dynamodb": None, "s3_requests": None, "secrets_manager": "secrets_calls", "cloudwatch_logs": "log_bytes",
            "cloudwatch_metrics": "metric_series_hours"}


def run_cost(backend: Backend, run: dict[str, Any], *, region: str, store: bool = True) -> dict[str, Any] | None:
    """The cost of a run that has ended (stored on its run item the first time), or None while it runs."""
    if run.get("cost"):
        return run["cost"]
    if run.get("status") in (None, "RUNNING", "STARTING"):
        return None
    usage = cost.usage_of_run(run, backend.ledger.meter(run["source"], run["run_id"]), log_level=DEFAULT_LOG_LEVEL)
    result = cost.breakdown(usage, region if region in cost.PRICES else "us-east-1", DEFAULT_ARCH)
    if store:
        try:
            backend.ledger.record_cost(run["source"], run["run_id"], result)
            run["cost"] = result
        except Exception:  # noqa: BLE001 - a reader (a local folder in use, a read-only role) still shows it
            pass
    return result


def cost_table(result: dict[str, Any], title: str):
    counts = result["counts"]

    def count(part: str) -> str:
        if part == "dynamodb":
            return f"{counts['ddb_write_units']:,.0f} WRU, {counts['ddb_read_units']:,.0f} RRU"
        if part == "s3_requests":
            return f"{counts['s3_tier1_requests']:,.0f} PUT/LIST, {counts['s3_tier2_requests']:,.0f} GET"
        key = COUNT_OF[part]
        return f"{counts[key]:,.1f}" if key == "lambda_gb_seconds" else f"{counts[key]:,.0f}"

    rows = [[LABELS[k], count(k), f"${v:.4f}"] for k, v in result["usd"].items()]
    rows.append(["total", "", f"${result['total_usd']:.4f}"])
    head = (f"{title}: ${result['total_usd']:.4f} ({result['region']}, Lambda {result['arch']}, "
            f"prices of {result['prices_taken']})")
    return view.table(head, ["part", "count", "USD"], rows, numeric={"USD"})


def cmd_cost(args) -> int:
    spec = load_spec(args.spec)
    usage = cost.estimate(spec, args.calls, log_level=args.log_level)
    result = cost.breakdown(usage, args.region or "us-east-1", args.arch)
    if args.json:
        view.emit_json(result)
    else:
        out = view.console()
        out.print(cost_table(result, f"estimated cost of a run of {spec.name} with {args.calls:,} calls"))
        for note in result["notes"]:
            out.print(f"note: {note}", markup=False)
    return EXIT_OK
