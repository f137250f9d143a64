"""The report as one self-contained HTML page, and the files `worker report` writes.

The page needs no network: the charts are inline SVG (:mod:`worker.obs.chart_svg`),
there is no script to run (the data is embedded as JSON for other tools, in a
non-executed ``<script type="application/json" id="report-data">``), and the styles
are inline. Beside it, :func:`write_report` writes the accuracy chart as a PNG.
"""

from __future__ import annotations

import html
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from worker.obs.chart_png import render_png
from worker.obs.chart_svg import render_svg
from worker.obs.charts import chart
from worker.obs.report_data import ReportData
from worker.obs.report_format import number_text, value_text, version_text

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#222;max-width:1160px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.sub{color:#666;font-size:13px;margin-bottom:16px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:96px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.note{background:#fff8e1;border:1px solid #f0d98c;padding:8px 12px;border-radius:6px;font-size:13px}
svg.chart{display:block;margin:8px 0 18px;max-width:100%;height:auto}
svg .title{font-size:15px;font-weight:600} svg .legend,svg .tick,svg .axis{font-size:12px;fill:#444}
svg .marker text,svg text.marker{font-size:11px} svg .plot{fill:#fff;stroke:#999}
svg .grid{stroke:#e6e6e6}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #e5e5e5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.role-champion td{background:#eef5fc} tr.role-challenger td{background:#fff4e8}
code{font-size:12px}
"""
ARMS_NOTE = ("Traffic split now: {split} % of entities to the challenger. Since a split was first set, each "
             "arm counts the labelled events whose entity it serves, scored by the model that held its role "
             "then (the challenger arm spans every challenger since); in scale-out these are the trainer's "
             "scores, while scorers serve copies at most a snapshot interval older. The shadow comparison of "
             "both models on every event is in the charts above.")
VERSION_COLUMNS = ("version", "role", "parent", "created at (labelled)", "spec", "reason", "history",
                   "learned", "accuracy", "F1")
VERSION_NUMBER_COLUMNS = {0, 2, 3, 7, 8, 9}  # right-aligned
EVENT_COLUMNS = ("labelled", "event", "what", "champion", "challenger", "reason")
ARM_COLUMNS = ("arm", "view", "served events", "accuracy", "F1", "log-loss")


def write_report(data: ReportData, out: Path, *, title: str = "worker report",
                 png: Path | None = None) -> Path:
    """Write the page to ``out`` and the accuracy chart to ``png`` (default: ``out``
    with ``.png``); returns the PNG's path."""
    png = png or out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    png_name = png.name if png.parent == out.parent else str(png)
    out.write_text(render_html(data, title=title, png_name=png_name))
    png.write_bytes(render_png(chart(data, "accuracy")))
    return png


def render_html(data: ReportData, *, title: str = "worker report", png_name: str | None = None) -> str:
    """The whole page: summary, the accuracy and F1 charts, versions, lifecycle, data."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<div class="sub">{e(data.source)} · generated {time.strftime("%Y-%m-%d %H:%M:%S")}'
        + (f' · chart as PNG: <code>{e(png_name)}</code>' if png_name else "") + "</div>",
        _cards(data.summary),
        *[f'<p class="note">{e(n)}</p>' for n in data.notes],
        "<h2>Champion and challenger over time</h2>",
        '<div class="sub">Solid: sliding window; dashed: fading factor. x: labelled events seen by the '
        "engine. Hover a marker for its reason.</div>",
        render_svg(chart(data, "accuracy")),
        render_svg(chart(data, "f1")),
        *_arms_section(data),
        "<h2>Versions and lineage</h2>",
        *([f'<div class="sub">{e(data.versions_note)}</div>'] if data.versions_note else []),
        _versions_table(data.versions),
        "<h2>Lifecycle</h2>", _events_table(data.events),
        '<script type="application/json" id="report-data">'
        + json.dumps(asdict(data), default=str).replace("</", "<\\/") + "</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _cards(s: dict[str, Any]) -> str:
    """The summary: one card per count."""
    e = html.escape
    cards = [("events", s.get("events")), ("labelled", s.get("labelled")), ("bad inputs", s.get("bad")),
             ("champion", version_text(s.get("champion"))), ("challenger", version_text(s.get("challenger"))),
             ("promotions", s.get("promotions")), ("rollbacks", s.get("rollbacks")),
             ("challenger resets", s.get("challenger_resets")), ("drift alarms", s.get("drift_alarms")),
             ("served accuracy", number_text(s.get("served_accuracy"))),
             ("served F1", number_text(s.get("served_f1")))]
    return ('<div class="cards">' + "".join(f'<div class="card"><b>{e(value_text(v))}</b><span>{e(k)}</span>'
                                            "</div>" for k, v in cards) + "</div>")


def _arms_section(data: ReportData) -> list[str]:
    """The A/B comparison: what each arm served since a split was first set (none before)."""
    if not data.arms:
        return []
    e = html.escape
    rows = [_table_head("arms", ARM_COLUMNS)]
    for arm, views in data.arms.items():
        for view in ("cumulative", "window"):
            m = (views or {}).get(view) or {}
            values = "".join(f'<td class="num">{number_text(m.get(k))}</td>'
                             for k in ("accuracy", "f1", "log_loss"))
            rows.append(f'<tr class="role-{e(arm)}"><td>{e(arm)}</td><td>{view}</td>'
                        f'<td class="num">{value_text(m.get("n"))}</td>{values}</tr>')
    rows.append("</tbody></table>")
    note = ARMS_NOTE.format(split=value_text(data.split))
    return ["<h2>A/B: served traffic per arm</h2>", f'<div class="sub">{e(note)}</div>', "\n".join(rows)]


def _versions_table(rows: list[dict[str, Any]]) -> str:
    """Every version: lineage, history, what it learned and how it scored."""
    e = html.escape
    out = [_table_head("versions", VERSION_COLUMNS)]
    for r in rows:
        cells = [f"v{r['version']}", r.get("role", ""), version_text(r.get("parent")),
                 value_text(r.get("created_labelled")), f"<code>{e(str(r.get('spec') or ''))}</code>",
                 e(str(r.get("reason") or "")), e("; ".join(r.get("history", []))),
                 value_text(r.get("learned")), number_text(r.get("accuracy")), number_text(r.get("f1"))]
        tds = "".join(f'<td class="num">{c}</td>' if i in VERSION_NUMBER_COLUMNS else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        role = str(r.get("role", "")).replace(" ", "-")
        out.append(f'<tr class="role-{e(role)}">{tds}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _events_table(rows: list[dict[str, Any]], limit: int = 1000) -> str:
    """The lifecycle events, newest ``limit`` of them."""
    e = html.escape
    if not rows:
        return "<p>No lifecycle events.</p>"
    out = [_table_head("events", EVENT_COLUMNS)]
    for r in rows[-limit:]:
        out.append(f'<tr class="{e(r["type"])}"><td class="num">{r["labelled"]}</td><td>{e(r["type"])}</td>'
                   f'<td>{e(r["text"])}</td><td>{version_text(r["champion"])}</td>'
                   f'<td>{version_text(r["challenger"])}</td><td>{e(str(r["reason"]))}</td></tr>')
    out.append("</tbody></table>")
    if len(rows) > limit:
        out.append(f"<p>(the last {limit} of {len(rows)} events)</p>")
    return "\n".join(out)


def _table_head(css_class: str, columns: tuple[str, ...]) -> str:
    """A table's opening up to its body (the column names are ours: not escaped)."""
    return (f'<table class="{css_class}"><thead><tr>' + "".join(f"<th>{c}</th>" for c in columns)
            + "</tr></thead><tbody>")
