"""`worker report`: one self-contained HTML page (and a PNG) of what the engine did.

Sources, normalised into one :class:`ReportData`:

- a ``worker replay --out DIR`` folder (:func:`load_replay`): ``timeline.jsonl`` gives
  the metrics of both models every N labels, ``lifecycle.jsonl`` the decisions, and
  ``summary.json`` the counts and the version lineage;
- the ``control`` topic of a deployment (:func:`read_control`, then
  :func:`load_control`): the lifecycle events the worker wrote, in log order. The
  metrics over time come from the ``status_report`` events on the topic — the worker
  writes one every ``status_interval_s`` (60 s by default) and one in answer to every
  ``status`` command (``worker control status``, the demo's polling, or this command's
  own ``--ask-status``).

The page needs no network: the charts are inline SVG drawn here, there is no script
to run (the data is embedded as JSON for other tools, in a non-executed
``<script type="application/json" id="report-data">``), and the styles are inline.
The x axis of every chart is the number of labelled events the engine had seen, which
both sources record for every point and every lifecycle event.

Charts: accuracy and F1 of the champion and the challenger, sliding window (solid)
and fading factor (dashed), with vertical markers for drift alarms, promotions,
rollbacks and challenger resets. The PNG (:func:`render_png`) is the accuracy chart,
drawn with the pure-Python canvas of :mod:`worker.obs.png`.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import ConfigError
from worker.obs.png import Canvas, text_width

ROLES = ("champion", "challenger")
VIEWS = ("window", "fading")
MARKER_TYPES = ("drift_detected", "promoted", "rolled_back", "challenger_reset")
TABLE_TYPES = (*MARKER_TYPES, "challenger_created", "command_rejected")
# commands whose only trace is their answer: the table shows them applied
SETTINGS_COMMANDS = {"pause_learning": "learning paused", "resume_learning": "learning resumed",
                     "set_split": "split set to {split} %"}
MAX_POINTS = 2000  # points per series in the charts; longer timelines are thinned evenly

COLORS = {"champion": "#1f77b4", "challenger": "#ff7f0e", "promoted": "#2ca02c", "rolled_back": "#d62728",
          "drift_detected": "#7f7f7f", "challenger_reset": "#9467bd"}
MARKER_NAMES = {"drift_detected": "drift alarm", "promoted": "promotion", "rolled_back": "rollback",
                "challenger_reset": "challenger reset"}


@dataclass
class ReportData:
    """Everything the page shows, in plain JSON-able values."""

    source: str
    points: list[dict[str, Any]] = field(default_factory=list)
    markers: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions_note: str = ""  # where the versions table's metrics come from, when not obvious
    # the A/B comparison of served traffic (arm → view → metrics), once a split was set
    arms: dict[str, dict[str, dict[str, Any]]] | None = None
    split: float | None = None


# ----------------------------------------------------------------------------- sources


def load_replay(folder: Path) -> ReportData:
    """A ``worker replay --out`` folder → :class:`ReportData`."""
    names = ("timeline.jsonl", "lifecycle.jsonl", "summary.json")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ConfigError(f"{folder} is not a `worker replay --out` folder: no {', '.join(missing)}")
    summary = json.loads((folder / "summary.json").read_text())
    lifecycle = _read_jsonl(folder / "lifecycle.jsonl")
    lineage = {int(v): {"version": int(v), **m} for v, m in summary.get("models", {}).items()}
    data = ReportData(source=f"replay folder {folder}")
    for raw in _read_jsonl(folder / "timeline.jsonl"):
        point = {"labelled": raw.get("labelled", 0), "events": raw.get("events")}
        for role in ROLES:
            model = raw.get(role)
            point[role] = None if model is None else {"version": model["version"],
                                                      **{v: _values(model[v]) for v in VIEWS}}
        data.points.append(point)
    _absorb_lifecycle(data, lifecycle, lineage, summary.get("champion"), summary.get("challenger"))
    served = summary.get("served", {})
    data.summary = {
        "events": summary.get("events"), "labelled": summary.get("labelled"), "bad": summary.get("bad"),
        "promotions": summary.get("promotions"), "rollbacks": summary.get("rollbacks"),
        "challenger_resets": summary.get("challenger_resets"),
        "drift_alarms": sum(1 for e in lifecycle if e.get("type") == "drift_detected"),
        "champion": summary.get("champion"), "challenger": summary.get("challenger"),
        "served_accuracy": served.get("accuracy"), "served_f1": served.get("f1"),
    }
    _blank_unscored(data)
    return data


def load_control(messages: Iterable[dict[str, Any]], source: str = "control topic") -> ReportData:
    """Decoded ``control`` messages, in log order → :class:`ReportData`.

    Commands (no ``detail``) are skipped; lifecycle events give the markers, the table
    and the lineage; each ``status_report`` gives a point of the timeline. A worker
    writes one as it starts: one that has seen no event, after one that had, starts a new
    engine (after ``--fresh``, its versions count from 1 again), and what came before is
    left out.
    """
    data = ReportData(source=source)
    lifecycle: list[dict[str, Any]] = []
    lineage: dict[int, dict[str, Any]] = {}
    last_status: dict[str, Any] | None = None
    earlier_engine = False
    for message in messages:
        if not isinstance(message, dict) or "detail" not in message or "type" not in message:
            continue  # a command, or something that is not ours
        if message["type"] != "status_report":
            lifecycle.append(message)
            continue
        status = message["detail"]
        counts = status.get("counts", {})
        if counts.get("events") == 0 and last_status and last_status.get("counts", {}).get("events"):
            earlier_engine = True  # back to no event at all: a new engine, not a restart
            lifecycle, lineage, data.points = [], {}, []
        last_status = status
        point: dict[str, Any] = {"labelled": counts.get("labelled", message.get("labelled", 0)),
                                 "events": counts.get("events")}
        for role, model in status.get("models", {}).items():
            metrics = model.get("metrics", {})
            cumulative = metrics.get("cumulative", {})
            lineage[model["version"]] = {**lineage.get(model["version"], {}),
                                         **{k: v for k, v in model.items() if k != "metrics"},
                                         **_values(cumulative), "labelled": cumulative.get("n")}
            if role in ROLES:
                point[role] = {"version": model["version"], **{v: _values(metrics.get(v, {})) for v in VIEWS}}
        for role in ROLES:
            point.setdefault(role, None)
        if data.points and data.points[-1]["labelled"] == point["labelled"]:
            data.points[-1] = point  # an idle worker answered again: same point
        else:
            data.points.append(point)
    counts = (last_status or {}).get("counts", {})

    def count(kind: str) -> int:
        return sum(1 for e in lifecycle if e.get("type") == kind)

    champion = last_status["champion"] if last_status else _last(lifecycle, "champion", 1)
    challenger = last_status["challenger"] if last_status else _last(lifecycle, "challenger")
    _absorb_lifecycle(data, lifecycle, lineage, champion, challenger)
    served = (last_status or {}).get("served", {}).get("cumulative", {})
    data.arms = (last_status or {}).get("arms")
    # every lifecycle event says the split after it (releases before 0.2: only status reports)
    data.split = _last(lifecycle, "split", (last_status or {}).get("split_percent"))
    data.summary = {
        "events": counts.get("events"), "labelled": counts.get("labelled"), "bad": counts.get("bad"),
        "promotions": counts.get("promotions", count("promoted")),
        "rollbacks": counts.get("rollbacks", count("rolled_back")),
        "challenger_resets": counts.get("resets", count("challenger_reset")),
        "drift_alarms": count("drift_detected"), "champion": champion, "challenger": challenger,
        "served_accuracy": served.get("accuracy"), "served_f1": served.get("f1"),
    }
    if earlier_engine:
        data.notes.append("The control topic also holds an earlier engine's history (before a --fresh "
                          "start): this report shows the current engine only.")
    if last_status is None:
        data.notes.append("No status_report on the control topic: no metrics over time (is the worker "
                          "running? `worker control status` writes one).")
    elif len(data.points) < 3:
        data.notes.append("Few status reports on the control topic, so few points over time: the worker "
                          "writes one every `status_interval_s` (60 s) and one per `status` command.")
    data.versions_note = ("Learned, accuracy and F1 of a version as of the last status report that named "
                          "it: a former champion's stop where it was replaced (`worker models list` has what "
                          "each published version had learned).")
    _blank_unscored(data)
    return data


def read_control(admin_config: dict[str, Any], control_topic: str, timeout_s: float = 30.0) -> list[dict]:
    """Every committed message of the control topic, decoded (undecodable ones skipped)."""
    import orjson
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

    from worker.io import kafka

    reader = kafka.reader({**admin_config, "group.id": "worker-report", "isolation.level": "read_committed"})
    out: list[dict] = []
    try:
        kafka.partitions_of(reader, control_topic)
        reader.assign([TopicPartition(control_topic, 0, OFFSET_BEGINNING)])
        deadline = time.monotonic() + timeout_s
        while True:
            messages = reader.consume(num_messages=10_000, timeout=0.5)
            if not messages and time.monotonic() > deadline:
                raise ConfigError(f"could not read {control_topic} to its end within {timeout_s:g}s")
            done = False
            for msg in messages:
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        done = True
                        continue
                    raise KafkaException(msg.error())
                try:
                    out.append(orjson.loads(msg.value()))
                except orjson.JSONDecodeError:
                    continue
            if done:
                return out
            if messages:
                deadline = time.monotonic() + timeout_s
    finally:
        reader.close()


def _absorb_lifecycle(data: ReportData, lifecycle: list[dict[str, Any]], lineage: dict[int, dict[str, Any]],
                      champion: int | None, challenger: int | None) -> None:
    """Markers, the event table and the version table from the lifecycle events (in
    order) and what is known of each version's lineage."""
    versions: dict[int, dict[str, Any]] = {1: {"version": 1, "reason": "initial champion", "parent": None,
                                               "created_labelled": 0, "history": ["champion"]}}
    for event in lifecycle:
        kind, detail, at = event.get("type"), event.get("detail", {}), event.get("labelled", 0)
        text = _describe(kind, detail, event)
        if kind in MARKER_TYPES:
            data.markers.append({"labelled": at, "type": kind, "text": text,
                                 "title": _title(kind, detail, event)})
        if kind in TABLE_TYPES or (kind == "command_applied" and detail.get("command") in SETTINGS_COMMANDS):
            data.events.append({"labelled": at, "type": kind, "champion": event.get("champion"),
                                "challenger": event.get("challenger"), "text": text,
                                "reason": detail.get("reason", "")})
        if kind == "challenger_created":
            v = detail.get("version")
            reason = detail.get("reason")
            if detail.get("init"):  # as the registry words it
                reason = f"{detail['init']}: {reason}"
            versions[v] = {"version": v, "spec": detail.get("spec"), "reason": reason,
                           "init": detail.get("init"), "created_labelled": at,
                           "parent": event.get("champion") if detail.get("init") == "copy" else None,
                           "history": ["challenger"]}
        elif kind == "promoted":
            _history(versions, detail.get("from_version"), f"replaced at {at}")
            _history(versions, detail.get("to_version"), f"champion at {at}")
        elif kind == "rolled_back":
            _history(versions, detail.get("from_version"), f"rolled back at {at}")
            _history(versions, detail.get("to_version"), f"champion again at {at}")
        elif kind == "challenger_reset":
            _history(versions, detail.get("version"), f"reset at {at}")
    for v, known in lineage.items():
        row = versions.setdefault(v, {"version": v, "history": []})
        for key in ("spec", "parent", "reason", "created_labelled", "learned", "accuracy", "f1", "labelled",
                    "retained"):
            if known.get(key) is not None:
                row[key] = known[key]
    for v, row in versions.items():
        row["role"] = ("champion" if v == champion else "challenger" if v == challenger
                       else "discarded" if any(h.startswith("reset") for h in row["history"])
                       else "former champion" if any("champion" in h for h in row["history"]) else "retired")
    data.versions = [versions[v] for v in sorted(versions)]


def _history(versions: dict[int, dict[str, Any]], version: int | None, what: str) -> None:
    if version is not None:
        versions.setdefault(version, {"version": version, "history": []})["history"].append(what)


def _describe(kind: str | None, detail: dict[str, Any], event: dict[str, Any]) -> str:
    if kind == "drift_detected":
        return f"drift {detail.get('role', '?')} v{detail.get('version', '?')}"
    if kind == "promoted":
        return f"v{detail.get('from_version')}→v{detail.get('to_version')}"
    if kind == "rolled_back":
        return f"rollback v{detail.get('from_version')}→v{detail.get('to_version')}"
    if kind == "challenger_reset":
        return f"reset v{detail.get('version')}"
    if kind == "challenger_created":
        return f"v{detail.get('version')} created ({detail.get('init', '?')})"
    if kind == "command_rejected":
        return f"{detail.get('command', '?')} rejected"
    if kind == "command_applied" and detail.get("command") in SETTINGS_COMMANDS:
        return SETTINGS_COMMANDS[detail["command"]].format(split=_fmt(event.get("split")))
    return str(kind)


def _title(kind: str | None, detail: dict[str, Any], event: dict[str, Any]) -> str:
    parts = [f"{MARKER_NAMES.get(kind, kind)} at {event.get('labelled', 0)} labelled events"]
    if kind == "drift_detected" and detail.get("error_before") is not None:
        parts.append(f"error {detail['error_before']:.3f} → {detail.get('error_after', float('nan')):.3f}")
    if detail.get("reason"):
        parts.append(str(detail["reason"]))
    return ": ".join(parts)


def _last(lifecycle: list[dict[str, Any]], key: str, default: Any = None) -> Any:
    for event in reversed(lifecycle):
        if key in event:
            return event[key]
    return default


def _values(view: dict[str, Any]) -> dict[str, Any]:
    """Accuracy and F1 of one view; None while the model has no labelled prediction
    (``n`` = 0: an empty metric reads 0.0, which is no measurement)."""
    empty = view.get("n", 1) == 0
    return {m: None if empty else view.get(m) for m in ("accuracy", "f1")}


def _blank_unscored(data: ReportData) -> None:
    """A model has no metrics before its first labelled event: its values are None
    there (a gap in the line), not the 0.0 an empty metric reads."""
    born = {row["version"]: row.get("created_labelled", 0) for row in data.versions}
    for point in data.points:
        for role in ROLES:
            model = point.get(role)
            if model and point["labelled"] <= born.get(model["version"], 0):
                for view in VIEWS:
                    model[view] = {"accuracy": None, "f1": None}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{number}: not JSON ({e.msg})") from None
    return out


# ----------------------------------------------------------------------------- charts


@dataclass
class Series:
    name: str
    color: str
    dashed: bool
    segments: list[list[tuple[float, float]]]  # broken where the model has no value


@dataclass
class Chart:
    title: str
    series: list[Series]
    markers: list[dict[str, Any]]
    x_max: float
    y_range: tuple[float, float]


def chart(data: ReportData, metric: str) -> Chart:
    """The ``metric`` ("accuracy" or "f1") of both roles and both views over time."""
    points = _thin(data.points, MAX_POINTS)
    series, values = [], []
    for role in ROLES:
        for view in VIEWS:
            segments: list[list[tuple[float, float]]] = [[]]
            for point in points:
                model = point.get(role)
                value = model.get(view, {}).get(metric) if model else None
                if value is None or not math.isfinite(value):
                    if segments[-1]:
                        segments.append([])
                    continue
                segments[-1].append((point["labelled"], value))
                values.append(value)
            series.append(Series(f"{role} ({view})", COLORS[role], view == "fading",
                                 [s for s in segments if s]))
    x_max = max([p["labelled"] for p in data.points] + [m["labelled"] for m in data.markers] + [1])
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo = max(0.0, math.floor((lo - 0.02) * 20) / 20)
    hi = min(1.0, math.ceil((hi + 0.02) * 20) / 20)
    if hi - lo < 0.1:
        lo = max(0.0, hi - 0.1)
    name = {"accuracy": "Accuracy", "f1": "F1"}.get(metric, metric)
    return Chart(name, series, data.markers, float(x_max), (lo, hi))


def _thin(points: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(i * step)] for i in range(limit - 1)] + [points[-1]]


def ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    """About ``count`` round tick values covering [lo, hi].

    >>> ticks(0, 40000)
    [0.0, 10000.0, 20000.0, 30000.0, 40000.0]
    >>> ticks(0.85, 1.0)
    [0.85, 0.9, 0.95, 1.0]
    """
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, value = [], first
    while value <= hi + 1e-9 * step:
        out.append(float(round(value, 10)))
        value += step
    return out


def _x_label(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


class _Frame:
    """Where the plot area is and how data maps onto it (shared by SVG and PNG)."""

    def __init__(self, c: Chart, width: int, height: int, top: int, left: int = 56, right: int = 16,
                 bottom: int = 36) -> None:
        self.chart, self.width, self.height = c, width, height
        self.x0, self.x1, self.y0, self.y1 = left, width - right, top, height - bottom
        self.lo, self.hi = c.y_range

    def x(self, value: float) -> float:
        return self.x0 + (self.x1 - self.x0) * value / self.chart.x_max

    def y(self, value: float) -> float:
        return self.y1 - (self.y1 - self.y0) * (value - self.lo) / (self.hi - self.lo)

    def marker_rows(self, char_px: float, rows: int = 4) -> list[int | None]:
        """Label row of each marker (None: no room, tooltip only), so labels neither overlap nor
        run off the right edge."""
        ends = [-1e9] * rows
        out: list[int | None] = []
        for m in self.chart.markers:
            x = self.x(m["labelled"])
            end = x + len(m["text"]) * char_px
            row = next((r for r in range(rows) if x > ends[r] + 4), None) if end <= self.width else None
            if row is not None:
                ends[row] = end
            out.append(row)
        return out


def render_svg(c: Chart, width: int = 1100, height: int = 360) -> str:
    """The chart as an inline SVG element (legend, axes, lines, markers with tooltips)."""
    f = _Frame(c, width, height, top=106)
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{e(c.title)} over labelled events">',
           f'<text x="{f.x0}" y="18" class="title">{e(c.title)}</text>']
    lx = f.x0 + 110
    for s in c.series:  # legend: the lines on the title's row, the markers below
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        out.append(f'<line x1="{lx}" y1="14" x2="{lx + 24}" y2="14" stroke="{s.color}" '
                   f'stroke-width="2.5"{dash}/><text x="{lx + 30}" y="18" class="legend">{e(s.name)}</text>')
        lx += 40 + 7 * len(s.name)
    lx = f.x0 + 110
    for kind, name in MARKER_NAMES.items():
        if any(m["type"] == kind for m in c.markers):
            out.append(f'<line x1="{lx + 12}" y1="30" x2="{lx + 12}" y2="42" stroke="{COLORS[kind]}" '
                       f'stroke-width="2"/><text x="{lx + 30}" y="40" class="legend">{e(name)}</text>')
            lx += 40 + 7 * len(name)
    out.append(f'<rect x="{f.x0}" y="{f.y0}" width="{f.x1 - f.x0}" height="{f.y1 - f.y0}" class="plot"/>')
    for value in ticks(f.lo, f.hi):
        y = f.y(value)
        out.append(f'<line x1="{f.x0}" y1="{y:.1f}" x2="{f.x1}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{f.x0 - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{value:.2f}</text>')
    for value in ticks(0, c.x_max):
        x = f.x(value)
        out.append(f'<line x1="{x:.1f}" y1="{f.y0}" x2="{x:.1f}" y2="{f.y1}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{f.y1 + 16}" class="tick" text-anchor="middle">'
                   f'{_x_label(value)}</text>')
    out.append(f'<text x="{(f.x0 + f.x1) / 2:.0f}" y="{height - 4}" class="axis" text-anchor="middle">'
               'labelled events</text>')
    for m, row in zip(c.markers, f.marker_rows(6.5), strict=True):
        x = f.x(m["labelled"])
        kind = m["type"]
        dash = ' stroke-dasharray="3 3"' if kind in ("drift_detected", "challenger_reset") else ""
        label = "" if row is None else (f'<text x="{x + 2:.1f}" y="{f.y0 - 6 - 13 * row}" class="marker" '
                                        f'fill="{COLORS[kind]}">{e(m["text"])}</text>')
        out.append(f'<g class="marker {kind}"><title>{e(m["title"])}</title>'
                   f'<line x1="{x:.1f}" y1="{f.y0 - 4 - 13 * (row or 0)}" x2="{x:.1f}" y2="{f.y1}" '
                   f'stroke="{COLORS[kind]}" stroke-width="1.5"{dash}/>{label}</g>')
    for s in c.series:
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        width_px = 1.6 if s.dashed else 2.2
        for segment in s.segments:
            coords = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in segment)
            out.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{s.color}" '
                       f'stroke-width="{width_px}"{dash}><title>{e(s.name)}</title></polyline>')
            if len(segment) == 1:
                (x, y), = segment
                out.append(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3" fill="{s.color}"/>')
    out.append("</svg>")
    return "\n".join(out)


def render_png(c: Chart, width: int = 1200, height: int = 600) -> bytes:
    """The chart as a PNG, drawn without any plotting library."""
    canvas = Canvas(width, height)
    f = _Frame(c, width, height, top=106, left=64, right=20, bottom=44)
    black, grey, light = (0, 0, 0), (90, 90, 90), (225, 225, 225)
    canvas.text(f.x0, 8, c.title + " over labelled events", black, scale=2)
    lx = f.x0
    for s in c.series:  # legend, first row
        color = _rgb(s.color)
        canvas.line(lx, 38, lx + 24, 38, color, 2, (6, 4) if s.dashed else None)
        lx = canvas.text(lx + 30, 35, s.name, black) + 16
    lx = f.x0
    for kind, name in MARKER_NAMES.items():  # legend, second row
        if any(m["type"] == kind for m in c.markers):
            canvas.line(lx + 4, 50, lx + 4, 60, _rgb(COLORS[kind]), 2)
            lx = canvas.text(lx + 12, 52, name, black) + 16
    for value in ticks(f.lo, f.hi):
        y = round(f.y(value))
        canvas.line(f.x0, y, f.x1, y, light)
        label = f"{value:.2f}"
        canvas.text(f.x0 - 6 - text_width(label), y - 3, label, grey)
    for value in ticks(0, c.x_max):
        x = round(f.x(value))
        canvas.line(x, f.y0, x, f.y1, light)
        label = _x_label(value)
        canvas.text(x - text_width(label) // 2, f.y1 + 6, label, grey)
    canvas.text((f.x0 + f.x1 - text_width("labelled events")) // 2, height - 14, "labelled events", grey)
    for m, row in zip(c.markers, f.marker_rows(6), strict=True):
        x = round(f.x(m["labelled"]))
        color = _rgb(COLORS[m["type"]])
        dash = (3, 3) if m["type"] in ("drift_detected", "challenger_reset") else None
        canvas.line(x, f.y0 - 2 - 10 * (row or 0), x, f.y1, color, 1, dash)
        if row is not None:
            canvas.text(x + 3, f.y0 - 10 - 10 * row, m["text"], color)
    for s in c.series:
        for segment in s.segments:
            canvas.polyline([(f.x(x), f.y(y)) for x, y in segment], _rgb(s.color), 1 if s.dashed else 2,
                            (6, 4) if s.dashed else None)
    for x0, y0, x1, y1 in ((f.x0, f.y0, f.x1, f.y0), (f.x0, f.y1, f.x1, f.y1), (f.x0, f.y0, f.x0, f.y1),
                           (f.x1, f.y0, f.x1, f.y1)):
        canvas.line(x0, y0, x1, y1, grey)
    return canvas.png()


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


# ----------------------------------------------------------------------------- page

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


def render_html(data: ReportData, *, title: str = "worker report", png_name: str | None = None) -> str:
    """The whole page: summary, the accuracy and F1 charts, versions, lifecycle, data."""
    e = html.escape
    s = data.summary
    cards = [("events", s.get("events")), ("labelled", s.get("labelled")), ("bad inputs", s.get("bad")),
             ("champion", _v(s.get("champion"))), ("challenger", _v(s.get("challenger"))),
             ("promotions", s.get("promotions")), ("rollbacks", s.get("rollbacks")),
             ("challenger resets", s.get("challenger_resets")), ("drift alarms", s.get("drift_alarms")),
             ("served accuracy", _num(s.get("served_accuracy"))), ("served F1", _num(s.get("served_f1")))]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<div class="sub">{e(data.source)} · generated {time.strftime("%Y-%m-%d %H:%M:%S")}'
        + (f' · chart as PNG: <code>{e(png_name)}</code>' if png_name else "") + "</div>",
        '<div class="cards">' + "".join(f'<div class="card"><b>{e(_fmt(v))}</b><span>{e(k)}</span></div>'
                                        for k, v in cards) + "</div>",
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


def _arms_section(data: ReportData) -> list[str]:
    """The A/B comparison: what each arm served since a split was first set (none before)."""
    if not data.arms:
        return []
    e = html.escape
    head = ("arm", "view", "served events", "accuracy", "F1", "log-loss")
    rows = ['<table class="arms"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>"]
    for arm, views in data.arms.items():
        for view in ("cumulative", "window"):
            m = (views or {}).get(view) or {}
            values = "".join(f'<td class="num">{_num(m.get(k))}</td>' for k in ("accuracy", "f1", "log_loss"))
            rows.append(f'<tr class="role-{e(arm)}"><td>{e(arm)}</td><td>{view}</td>'
                        f'<td class="num">{_fmt(m.get("n"))}</td>{values}</tr>')
    rows.append("</tbody></table>")
    note = (f"Traffic split now: {_fmt(data.split)} % of entities to the challenger. Since a split was "
            "first set, each arm counts the labelled events whose entity it serves, scored by the model that "
            "held its role then (the challenger arm spans every challenger since); in scale-out these are "
            "the trainer's scores, while scorers serve copies at most a snapshot interval older. The shadow "
            "comparison of both models on every event is in the charts above.")
    return ["<h2>A/B: served traffic per arm</h2>", f'<div class="sub">{e(note)}</div>', "\n".join(rows)]


def _versions_table(rows: list[dict[str, Any]]) -> str:
    e = html.escape
    head = ("version", "role", "parent", "created at (labelled)", "spec", "reason", "history", "learned",
            "accuracy", "F1")
    out = ['<table class="versions"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for r in rows:
        cells = [f"v{r['version']}", r.get("role", ""), _v(r.get("parent")), _fmt(r.get("created_labelled")),
                 f"<code>{e(str(r.get('spec') or ''))}</code>", e(str(r.get("reason") or "")),
                 e("; ".join(r.get("history", []))), _fmt(r.get("learned")), _num(r.get("accuracy")),
                 _num(r.get("f1"))]
        nums = {0, 2, 3, 7, 8, 9}
        tds = "".join(f'<td class="num">{c}</td>' if i in nums else f"<td>{c}</td>"
                      for i, c in enumerate(cells))
        role = str(r.get("role", "")).replace(" ", "-")
        out.append(f'<tr class="role-{e(role)}">{tds}</tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def _events_table(rows: list[dict[str, Any]], limit: int = 1000) -> str:
    e = html.escape
    if not rows:
        return "<p>No lifecycle events.</p>"
    out = ['<table class="events"><thead><tr><th>labelled</th><th>event</th><th>what</th><th>champion</th>'
           "<th>challenger</th><th>reason</th></tr></thead><tbody>"]
    for r in rows[-limit:]:
        out.append(f'<tr class="{e(r["type"])}"><td class="num">{r["labelled"]}</td><td>{e(r["type"])}</td>'
                   f'<td>{e(r["text"])}</td><td>{_v(r["champion"])}</td><td>{_v(r["challenger"])}</td>'
                   f'<td>{e(str(r["reason"]))}</td></tr>')
    out.append("</tbody></table>")
    if len(rows) > limit:
        out.append(f"<p>(the last {limit} of {len(rows)} events)</p>")
    return "\n".join(out)


def _v(version: Any) -> str:
    return "–" if version is None else f"v{version}"


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"


def _fmt(value: Any) -> str:
    return "–" if value is None else str(value)


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
