"""A :class:`~worker.obs.charts.Chart` as a PNG, drawn on the pure-Python canvas of
:mod:`worker.obs.png` (no plotting library: the PNG must be written wherever the
project's pip dependencies are)."""

from __future__ import annotations

from worker.obs.charts import COLORS, DASHED_MARKERS, Chart, Frame, ticks, x_label
from worker.obs.png import GLYPH_W, Canvas, Color, text_width

BLACK: Color = (0, 0, 0)
GREY: Color = (90, 90, 90)
LIGHT: Color = (225, 225, 225)
LINE_DASH = (6, 4)
MARKER_DASH = (3, 3)


def render_png(c: Chart, width: int = 1200, height: int = 600) -> bytes:
    """The chart as a PNG, drawn without any plotting library."""
    canvas = Canvas(width, height)
    f = Frame(c, width, height, top=106, left=64, right=20, bottom=44)
    canvas.text(f.x0, 8, c.title + " over labelled events", BLACK, scale=2)
    _legend(canvas, f)
    _grid(canvas, f)
    _markers(canvas, f)
    _series(canvas, f)
    _border(canvas, f)
    return canvas.png()


def _legend(canvas: Canvas, f: Frame) -> None:
    """The lines on the first row, the kinds of marker on the second."""
    lx = f.x0
    for s in f.chart.series:
        canvas.line(lx, 38, lx + 24, 38, _rgb(s.color), 2, LINE_DASH if s.dashed else None)
        lx = canvas.text(lx + 30, 35, s.name, BLACK) + 16
    lx = f.x0
    for kind, name in f.chart.legend_markers():
        canvas.line(lx + 4, 50, lx + 4, 60, _rgb(COLORS[kind]), 2)
        lx = canvas.text(lx + 12, 52, name, BLACK) + 16


def _grid(canvas: Canvas, f: Frame) -> None:
    """Grid lines with their tick labels, and the x axis' name."""
    for value in ticks(f.lo, f.hi):
        y = round(f.y(value))
        canvas.line(f.x0, y, f.x1, y, LIGHT)
        label = f"{value:.2f}"
        canvas.text(f.x0 - 6 - text_width(label), y - 3, label, GREY)
    for value in ticks(0, f.chart.x_max):
        x = round(f.x(value))
        canvas.line(x, f.y0, x, f.y1, LIGHT)
        label = x_label(value)
        canvas.text(x - text_width(label) // 2, f.y1 + 6, label, GREY)
    canvas.text((f.x0 + f.x1 - text_width("labelled events")) // 2, f.height - 14, "labelled events", GREY)


def _markers(canvas: Canvas, f: Frame) -> None:
    """One vertical line per marker, labelled where there is room."""
    for m, row in zip(f.chart.markers, f.marker_rows(GLYPH_W), strict=True):
        x = round(f.x(m["labelled"]))
        color = _rgb(COLORS[m["type"]])
        dash = MARKER_DASH if m["type"] in DASHED_MARKERS else None
        canvas.line(x, f.y0 - 2 - 10 * (row or 0), x, f.y1, color, 1, dash)
        if row is not None:
            canvas.text(x + 3, f.y0 - 10 - 10 * row, m["text"], color)


def _series(canvas: Canvas, f: Frame) -> None:
    for s in f.chart.series:
        for segment in s.segments:
            canvas.polyline([(f.x(x), f.y(y)) for x, y in segment], _rgb(s.color), 1 if s.dashed else 2,
                            LINE_DASH if s.dashed else None)


def _border(canvas: Canvas, f: Frame) -> None:
    """The plot area's outline, drawn last so no line covers it."""
    for x0, y0, x1, y1 in ((f.x0, f.y0, f.x1, f.y0), (f.x0, f.y1, f.x1, f.y1), (f.x0, f.y0, f.x0, f.y1),
                           (f.x1, f.y0, f.x1, f.y1)):
        canvas.line(x0, y0, x1, y1, GREY)


def _rgb(color: str) -> Color:
    """``#rrggbb`` → an (r, g, b) of the canvas."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)
