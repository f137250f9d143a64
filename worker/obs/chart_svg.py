"""A :class:`~worker.obs.charts.Chart` as an inline SVG element, for the page: legend,
axes, lines, and markers whose tooltips say why (no script: the page runs none)."""

from __future__ import annotations

import html

from worker.obs.charts import COLORS, DASHED_MARKERS, Chart, Frame, ticks, x_label

CHAR_PX = 6.5  # about the width of a marker label's character at 11 px
LINE_DASH = ' stroke-dasharray="6 4"'
MARKER_DASH = ' stroke-dasharray="3 3"'


def render_svg(c: Chart, width: int = 1100, height: int = 360) -> str:
    """The chart as an inline SVG element (legend, axes, lines, markers with tooltips)."""
    f = Frame(c, width, height, top=106)
    e = html.escape
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{e(c.title)} over labelled events">',
           f'<text x="{f.x0}" y="18" class="title">{e(c.title)}</text>',
           *_legend(f),
           f'<rect x="{f.x0}" y="{f.y0}" width="{f.x1 - f.x0}" height="{f.y1 - f.y0}" class="plot"/>',
           *_grid(f),
           *_markers(f),
           *_series(f),
           "</svg>"]
    return "\n".join(out)


def _legend(f: Frame) -> list[str]:
    """The lines on the title's row, the kinds of marker below."""
    e = html.escape
    out = []
    lx = f.x0 + 110
    for s in f.chart.series:
        dash = LINE_DASH if s.dashed else ""
        out.append(f'<line x1="{lx}" y1="14" x2="{lx + 24}" y2="14" stroke="{s.color}" '
                   f'stroke-width="2.5"{dash}/><text x="{lx + 30}" y="18" class="legend">{e(s.name)}</text>')
        lx += 40 + 7 * len(s.name)
    lx = f.x0 + 110
    for kind, name in f.chart.legend_markers():
        out.append(f'<line x1="{lx + 12}" y1="30" x2="{lx + 12}" y2="42" stroke="{COLORS[kind]}" '
                   f'stroke-width="2"/><text x="{lx + 30}" y="40" class="legend">{e(name)}</text>')
        lx += 40 + 7 * len(name)
    return out


def _grid(f: Frame) -> list[str]:
    """Grid lines with their tick labels, and the x axis' name."""
    out = []
    for value in ticks(f.lo, f.hi):
        y = f.y(value)
        out.append(f'<line x1="{f.x0}" y1="{y:.1f}" x2="{f.x1}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{f.x0 - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{value:.2f}</text>')
    for value in ticks(0, f.chart.x_max):
        x = f.x(value)
        out.append(f'<line x1="{x:.1f}" y1="{f.y0}" x2="{x:.1f}" y2="{f.y1}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{f.y1 + 16}" class="tick" text-anchor="middle">'
                   f'{x_label(value)}</text>')
    out.append(f'<text x="{(f.x0 + f.x1) / 2:.0f}" y="{f.height - 4}" class="axis" text-anchor="middle">'
               'labelled events</text>')
    return out


def _markers(f: Frame) -> list[str]:
    """One vertical line per marker with its tooltip, labelled where there is room."""
    e = html.escape
    out = []
    for m, row in zip(f.chart.markers, f.marker_rows(CHAR_PX), strict=True):
        x = f.x(m["labelled"])
        kind = m["type"]
        dash = MARKER_DASH if kind in DASHED_MARKERS else ""
        label = "" if row is None else (f'<text x="{x + 2:.1f}" y="{f.y0 - 6 - 13 * row}" class="marker" '
                                        f'fill="{COLORS[kind]}">{e(m["text"])}</text>')
        out.append(f'<g class="marker {kind}"><title>{e(m["title"])}</title>'
                   f'<line x1="{x:.1f}" y1="{f.y0 - 4 - 13 * (row or 0)}" x2="{x:.1f}" y2="{f.y1}" '
                   f'stroke="{COLORS[kind]}" stroke-width="1.5"{dash}/>{label}</g>')
    return out


def _series(f: Frame) -> list[str]:
    """A polyline per segment of each series; a lone point as a dot, which a line cannot show."""
    e = html.escape
    out = []
    for s in f.chart.series:
        dash = LINE_DASH if s.dashed else ""
        width_px = 1.6 if s.dashed else 2.2
        for segment in s.segments:
            coords = " ".join(f"{f.x(x):.1f},{f.y(y):.1f}" for x, y in segment)
            out.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{s.color}" '
                       f'stroke-width="{width_px}"{dash}><title>{e(s.name)}</title></polyline>')
            if len(segment) == 1:
                (x, y), = segment
                out.append(f'<circle cx="{f.x(x):.1f}" cy="{f.y(y):.1f}" r="3" fill="{s.color}"/>')
    return out
