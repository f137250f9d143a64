"""The report's charts, independent of how they are drawn: series, ranges, ticks, and
where things go (:class:`Frame`).

A chart is one metric ("accuracy" or "f1") of the champion and the challenger, sliding
window (solid) and fading factor (dashed), with vertical markers for drift alarms,
promotions, rollbacks and challenger resets. The x axis is the number of labelled
events the engine had seen, which both sources record for every point and every
lifecycle event. :mod:`worker.obs.chart_svg` draws it for the page,
:mod:`worker.obs.chart_png` as a PNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from worker.obs.report_data import ROLES, VIEWS, ReportData
from worker.obs.report_lifecycle import MARKER_NAMES

MAX_POINTS = 2000  # points per series in the charts; longer timelines are thinned evenly
COLORS = {"champion": "#1f77b4", "challenger": "#ff7f0e", "promoted": "#2ca02c", "rolled_back": "#d62728",
          "drift_detected": "#7f7f7f", "challenger_reset": "#9467bd"}
DASHED_MARKERS = ("drift_detected", "challenger_reset")  # what warns, as against what changed a role
TITLES = {"accuracy": "Accuracy", "f1": "F1"}


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

    def legend_markers(self) -> list[tuple[str, str]]:
        """(kind, name) of each kind of marker the chart has, in the legend's order."""
        return [(kind, name) for kind, name in MARKER_NAMES.items()
                if any(m["type"] == kind for m in self.markers)]


def chart(data: ReportData, metric: str) -> Chart:
    """The ``metric`` ("accuracy" or "f1") of both roles and both views over time."""
    points = _thin(data.points, MAX_POINTS)
    series = []
    for role in ROLES:
        for view in VIEWS:
            series.append(Series(f"{role} ({view})", COLORS[role], view == "fading",
                                 _segments(points, role, view, metric)))
    x_max = max([p["labelled"] for p in data.points] + [m["labelled"] for m in data.markers] + [1])
    values = [y for s in series for segment in s.segments for _x, y in segment]
    return Chart(TITLES.get(metric, metric), series, data.markers, float(x_max), _y_range(values))


def _segments(points: list[dict[str, Any]], role: str, view: str,
              metric: str) -> list[list[tuple[float, float]]]:
    """(labelled, value) of one line, broken where the model has no (finite) value."""
    segments: list[list[tuple[float, float]]] = [[]]
    for point in points:
        model = point.get(role)
        value = model.get(view, {}).get(metric) if model else None
        if value is None or not math.isfinite(value):
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append((point["labelled"], value))
    return [s for s in segments if s]


def _y_range(values: list[float]) -> tuple[float, float]:
    """The values' range with a margin, on multiples of 0.05 within [0, 1], at least 0.1 wide."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    lo = max(0.0, math.floor((lo - 0.02) * 20) / 20)
    hi = min(1.0, math.ceil((hi + 0.02) * 20) / 20)
    if hi - lo < 0.1:
        lo = max(0.0, hi - 0.1)
    return lo, hi


def _thin(points: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` points, evenly spaced, the last one kept."""
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


def x_label(value: float) -> str:
    """An x tick's label: ``40k`` from 10 000 on."""
    if value >= 10_000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


class Frame:
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
