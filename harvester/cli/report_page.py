"""The run report's page: matplotlib charts (inline SVG in one self-contained HTML file, and a PNG of each) and
HTML tables, from `report_data` (harvester/cli/report.py). No script, no stylesheet or font from the network: the
file opens anywhere, offline. matplotlib is a CLI-only dependency (the `report` extra); no Lambda bundle has it."""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path
from typing import Any

#: one colour per level (matplotlib's default cycle, tab10)
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
LIMIT_COLOUR, FAILED_COLOUR = "#d62728", "#d62728"
WIDTH = 10.0  # inches


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "harvester-report", "font.size": 9,
                                "axes.spines.top": False, "axes.spines.right": False})
    import matplotlib.pyplot as plt

    return plt


def _elapsed(series: dict[str, Any], n: int) -> list[float]:
    return [i * series["step"] for i in range(n)]


def _steps(series: dict[str, Any], values: list[float]) -> tuple[list[float], list[float]]:
    """x, y of a per-bucket step line whose last bucket is drawn too (steps-post ends at its last point)."""
    if not values:  # nothing sent yet (a run just started, or refused before its first call)
        return [], []
    return _elapsed(series, len(values) + 1), [*values, *values[-1:]]


def chart_rate(ax, data: dict[str, Any]) -> None:
    series, rate = data["series"], data["rate"]
    ax.plot(*_steps(series, series["sent"]), drawstyle="steps-post", color=COLOURS[0], linewidth=1.0, zorder=3,
            gid="measured-rate", label="sent per second (all workers)")
    if rate.get("limit"):
        ax.axhline(rate["limit"], color=LIMIT_COLOUR, linewidth=1.5, gid="limit-line",
                   label=f"rate limit {rate['limit']:g}/s")
        ax.axhline(rate["limit"] + rate["burst"], color=LIMIT_COLOUR, linewidth=1.0, linestyle=":", gid="burst-line",
                   label=f"limit + burst ({rate['burst']})")
    ax.set_ylabel("requests per second")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)


def chart_throttles(ax, data: dict[str, Any]) -> None:
    series = data["series"]
    ax.plot(*_steps(series, series["throttled"]), drawstyle="steps-post", color=LIMIT_COLOUR, gid="throttled",
            label=f"429s ({data['rate']['throttled']})")
    ax.plot(*_steps(series, series["retries"]), drawstyle="steps-post", color=COLOURS[1], linestyle="--", gid="retries",
            label=f"retries ({data['rate']['retries']})")
    ax.set_ylabel("per second")
    ax.set_ylim(bottom=0, top=max([1.0, *series["throttled"], *series["retries"]]) * 1.15)
    ax.legend(loc="upper right", fontsize=8)


def chart_progress(ax, data: dict[str, Any]) -> None:
    series = data["series"]
    for i, (name, sent) in enumerate(series["levels"].items()):
        total, done, y = sum(sent) or 1.0, 0.0, []
        for v in sent:
            done += v
            y.append(100.0 * done / total)
        ax.plot(_elapsed(series, len(y)), y, color=COLOURS[i % len(COLOURS)], gid=f"progress-{i}",
                label=f"{name} ({round(sum(sent) * series['step']):,} calls)")
    ax.set_ylabel("% of the level's calls sent")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower right", fontsize=8)


def chart_batches(ax, data: dict[str, Any]) -> None:
    rows = data["batches"]
    ok = [(r["spans"], i) for i, r in enumerate(rows) if r["status"] != "FAILED"]
    failed = [(r["spans"], i) for i, r in enumerate(rows) if r["status"] == "FAILED"]
    for _k, (group, colour, gid) in enumerate(((ok, None, "batch-bars"), (failed, FAILED_COLOUR, "failed-batch-bars"))):
        for spans, i in group:
            ax.broken_barh([(s, max(e - s, 0.5)) for s, e in spans], (i - 0.4, 0.8),
                           facecolors=colour or COLOURS[rows[i]["level_index"] % len(COLOURS)], gid=f"{gid}-{i}")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ticks, labels = [], []
    for level in dict.fromkeys(r["level"] for r in rows):
        idx = [i for i, r in enumerate(rows) if r["level"] == level]
        ticks.append(sum(idx) / len(idx))
        labels.append(f"{level} ({len(idx)})")
    ax.set_yticks(ticks, labels)
    ax.set_ylabel("batches (red: failed)")


def chart_records(ax, data: dict[str, Any]) -> None:
    rows = data["records"]
    y = list(range(len(rows)))
    prev = data.get("previous")
    this = ax.barh([v - 0.2 for v in y], [r["this"] or 0 for r in rows], height=0.4, color=COLOURS[0],
                   label=f"this run ({data['run_id']})")
    for k, patch in enumerate(this):
        patch.set_gid(f"records-this-{k}")
    if prev:
        before = ax.barh([v + 0.2 for v in y], [r["previous"] or 0 for r in rows], height=0.4, color="#aaaaaa",
                         label=f"previous run ({prev['run_id']})")
        for k, patch in enumerate(before):
            patch.set_gid(f"records-previous-{k}")
    for v, r in zip(y, rows):
        ax.annotate(f"{r['this'] or 0:,}", (r["this"] or 0, v - 0.2), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(y, [r["level"] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_xlabel("records (log scale)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)


def chart_cost(ax, data: dict[str, Any]) -> None:
    from harvester.cli.costs import LABELS

    usd = (data.get("cost") or {}).get("usd", {})
    parts = sorted(usd.items(), key=lambda kv: kv[1])
    bars = ax.barh([LABELS.get(k, k) for k, _ in parts], [v for _, v in parts], color=COLOURS[2])
    for k, patch in enumerate(bars):
        patch.set_gid(f"cost-part-{k}")
    for i, (_, v) in enumerate(parts):
        ax.annotate(f"${v:.4f}", (v, i), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlabel("USD")
    ax.margins(x=0.15)


CHARTS = [  # key, title, draw, height (inches), time axis
    ("rate", "Requests sent per second against the rate limit", chart_rate, 3.2, True),
    ("throttles", "429s and retries over time", chart_throttles, 2.2, True),
    ("progress", "Each level's progress", chart_progress, 2.6, True),
    ("batches", "Batches over time (one bar per invocation)", chart_batches, None, True),
    ("records", "Records per level against the previous run", chart_records, 2.4, False),
    ("cost", "Cost of the run", chart_cost, 2.4, False),
]


def _scoped(svg: str, key: str) -> str:
    """A matplotlib SVG made fit to sit inline beside others: its ids prefixed (each figure numbers its own from
    1), its width the page's."""
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{key}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{key}-{m.group(1)})", svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{key}-{m.group(1)}"', svg)
    return re.sub(r'<svg([^>]*?) width="[^"]+" height="[^"]+"', r'<svg\1 width="100%"', svg, count=1)


def render_charts(data: dict[str, Any], out: Path) -> dict[str, tuple[str, Path]]:
    """{key: (inline SVG, PNG path)} for every chart."""
    plt = _pyplot()
    result = {}
    for key, title, draw, height, timed in CHARTS:
        if height is None:
            height = min(1.2 + 0.12 * max(len(data["batches"]), 1), 12.0)
        fig, ax = plt.subplots(figsize=(WIDTH, height), layout="constrained")
        draw(ax, data)
        ax.set_title(title, loc="left", fontsize=10)
        if timed:
            ax.set_xlabel(f"seconds since {data['t0_utc'] or 'the first request'}")
            ax.set_xlim(left=0)
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        png = out / f"{key}.png"
        fig.savefig(png, format="png", dpi=100)
        plt.close(fig)
        result[key] = (_scoped(buf.getvalue(), key), png)
    return result


def _cell(value: Any) -> str:
    return html.escape("" if value is None else f"{value:,}" if isinstance(value, int) else str(value))


def _table(columns: list[str], rows: list[list[Any]], numeric: set[str] = frozenset()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if c in numeric else ''}>{_cell(v)}</td>"
                                    for c, v in zip(columns, row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1040px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}figure{margin:8px 0}table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}td.num{text-align:right}
.facts{color:#444}.SUCCEEDED{color:#2ca02c}.INCOMPLETE{color:#b8860b}.FAILED{color:#d62728}td.url{word-break:break-all}"""


def _facts(data: dict[str, Any]) -> str:
    rate = data["rate"]
    parts = [f"{rate['requests']:,} requests over {rate['active_seconds']:,} s",
             f"mean {rate['mean_per_second']:g}/s, busiest second {rate['peak_per_second']:g}"]
    if rate.get("limit"):
        parts.append(f"limit {rate['limit']:g}/s + burst {rate['burst']}, utilisation {rate['utilisation']:.2f}, "
                     f"seconds over limit + burst: {rate['seconds_over_limit']}")
    parts.append(f"{rate['throttled']} 429s, {rate['retries']} retries")
    cost = data.get("cost")
    if cost:
        parts.append(f"cost ${cost['total_usd']:.4f} ({cost['region']}, Lambda {cost['arch']})")
    return "; ".join(html.escape(p) for p in parts)


def render_html(data: dict[str, Any], charts: dict[str, tuple[str, Path]]) -> str:
    from harvester.cli.costs import LABELS

    title = f"Run {data['run_id']} of {data['source']}"
    sections = []
    for key, heading, *_ in CHARTS:
        sections.append(f'<section id="chart-{key}"><h2>{html.escape(heading)}</h2><figure>{charts[key][0]}</figure>'
                        f"{_extra(key, data, LABELS)}</section>")
    blob = json.dumps(data, default=str).replace("</", "<\\/")
    status = html.escape(data["status"])
    when = (f"attempt {data['attempt']}, started {str(data['started_at'])[:19]}, finished "
            f"{str(data['finished_at'])[:19]} UTC ({data['where']})")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}: <span class={status}>{status}</span></h1>"
            f'<p class="facts">{html.escape(when)}</p><p class=facts>{_facts(data)}</p>'
            + "".join(sections)
            + f'<script type="application/json" id="report-data">{blob}</script></body></html>')


def _extra(key: str, data: dict[str, Any], labels: dict[str, str]) -> str:
    """The tables under a chart."""
    if key == "progress":
        cols = ["level", "batches", "calls", "records", "429s", "failed calls", "failed batches"]
        rows = [[lv["name"], lv["batches"], lv["calls"], lv["records"], lv["throttled"], lv["failures"],
                 lv["failed_batches"]] for lv in data["levels"]]
        return _table(cols, rows, set(cols[1:]))
    if key == "batches":
        rows = data["failures"]
        if not rows:
            return '<h2 id="failures">Failures</h2><p id="no-failures">No failed calls or batches.</p>'
        return (f'<h2 id="failures">Failures ({len(rows)})</h2>' + _table(
            ["level", "batch", "status", "url", "reason"],
            [[r["level"], r["batch"], r["status"], r["url"], r["reason"]] for r in rows]).replace(
            "<td>http", "<td class=url>http"))
    if key == "records":
        cols = ["level", "this run", "previous run"]
        return _table(cols, [[r["level"], r["this"], r["previous"]] for r in data["records"]], set(cols[1:]))
    if key == "cost" and data.get("cost"):
        cost = data["cost"]
        rows = [[labels.get(k, k), f"${v:.4f}"] for k, v in cost["usd"].items()] + [["total", f"${cost['total_usd']:.4f}"]]
        return _table(["part", "USD"], rows, {"USD"}) + (
            f"<p class=facts>prices of {html.escape(str(cost.get('prices_taken')))}; counted from the run's METER "
            "ledger item and the workflow's definition (harvester/cost.py)</p>")
    return ""


def write_report(data: dict[str, Any], out: Path) -> dict[str, Path]:
    """DIR/report.html and DIR/{chart}.png; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    charts = render_charts(data, out)
    page = out / "report.html"
    page.write_text(render_html(data, charts), encoding="utf-8")
    return {"html": page, **{key: png for key, (_, png) in charts.items()}}
