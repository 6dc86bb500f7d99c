"""The report page's charts as inline SVG, drawn here so the page needs no network, no script and no
chart library: horizontal bars (stacked, with an interval whisker), intervals on a 0..1 scale, and
lines through points. One row per layout, so a chart of twenty layouts is as readable as one of
two; every mark carries a <title> (the browser shows it on hover). Every text is escaped.

    python -m evaluator.report results/ --compare --html
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#79706e")
DASHES = ("", "6 3", "2 3")           # after ten colours, the same colours dashed
ROW = 24                              # px per layout row
GAP = 12                              # px between a row's label and the plot (a marker at 0 stays clear of it)
TAGGED_POINTS = 24                    # up to this many points, each is named beside it (beyond: on hover only)
FONT = 12


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def dash(i: int) -> str:
    return DASHES[(i // len(PALETTE)) % len(DASHES)]


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """0 and round steps (1, 2, 2.5, 5 x 10^k) up to at least top."""
    if not top > 0 or math.isinf(top):
        return [0.0, 1.0]
    raw = top / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def num(v: float) -> str:
    """A tick or value label: 0.25, 12, 1,250, 3.4k, 12M."""
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _text(x: float, y: float, s: str, anchor: str = "start", cls: str = "", extra: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{c}{extra}>{escape(s)}</text>'


def _label_width(labels: list[str]) -> int:
    return max(90, min(280, 7 * max((len(s) for s in labels), default=8) + 12))


def _short(s: str, width_px: int) -> str:
    n = max(4, (width_px - 12) // 7)
    return s if len(s) <= n else s[:n - 1] + "…"


@dataclass(frozen=True)
class Segment:
    value: float
    color: str
    title: str                        # the hover text


@dataclass(frozen=True)
class BarRow:
    label: str
    segments: tuple[Segment, ...]     # stacked left to right
    low: float | None = None          # an interval whisker (None: none)
    high: float | None = None         # None with a low: open to the right (">")
    text: str = ""                    # the value written after the bar
    note: str = ""                    # hover text of the row's label


def hbars(rows: list[BarRow], unit: str, width: int = 560, legend: list[tuple[str, str]] = ()) -> str:
    """Horizontal bars, one row per layout, sharing one axis from 0 (in `unit`)."""
    lw = _label_width([r.label for r in rows]) + GAP
    right = 90                                      # room for the value written after the bar
    plot = width - lw - right
    tops = [sum(s.value for s in r.segments) for r in rows] + [r.high or r.low or 0 for r in rows]
    ticks = nice_ticks(max([t for t in tops if t is not None and math.isfinite(t)] + [0]) or 1.0)
    scale = plot / ticks[-1]
    top_pad, legend_h = 8, (22 if legend else 0)
    height = top_pad + ROW * len(rows) + 34 + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img">']
    axis_y = top_pad + ROW * len(rows)
    for t in ticks:
        x = lw + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top_pad}" x2="{x:.1f}" y2="{axis_y}" class="grid"/>')
        out.append(_text(x, axis_y + 14, num(t), "middle", "tick"))
    out.append(_text(lw + plot / 2, axis_y + 29, unit, "middle", "axis"))
    for i, r in enumerate(rows):
        y = top_pad + i * ROW
        out.append(f'<g class="row"><title>{escape(r.note or r.label)}</title>'
                   + _text(lw - GAP, y + ROW / 2 + 4, _short(r.label, lw - GAP), "end", "label") + "</g>")
        x = lw
        for s in r.segments:
            w = max(0.0, s.value * scale) if math.isfinite(s.value) else 0.0
            out.append(f'<rect class="mark" x="{x:.1f}" y="{y + 5}" width="{max(w, 0.8):.1f}" height="{ROW - 10}" '
                       f'fill="{s.color}"><title>{escape(s.title)}</title></rect>')
            x += w
        if r.low is not None:
            lo = lw + r.low * scale
            hi = lw + (r.high if r.high is not None else ticks[-1]) * scale
            mid = y + ROW / 2
            open_end = "" if r.high is not None else ' stroke-dasharray="3 2"'
            out.append(f'<g class="whisker"><title>{escape(r.note or r.label)}</title>'
                       f'<line x1="{lo:.1f}" y1="{mid}" x2="{hi:.1f}" y2="{mid}"{open_end}/>'
                       f'<line x1="{lo:.1f}" y1="{mid - 5}" x2="{lo:.1f}" y2="{mid + 5}"/>'
                       + (f'<line x1="{hi:.1f}" y1="{mid - 5}" x2="{hi:.1f}" y2="{mid + 5}"/>' if r.high is not None
                          else "") + "</g>")
            x = max(x, hi)
        out.append(_text(min(x + 5, width - right + 5), y + ROW / 2 + 4, r.text, "start", "value"))
    out += _legend(legend, lw, height - 6)
    out.append("</svg>")
    return "".join(out)


def _legend(items, x0: float, y: float) -> list[str]:
    out, x = [], x0
    for name, col in items:
        out.append(f'<rect x="{x:.1f}" y="{y - 10}" width="12" height="12" fill="{col}"/>')
        out.append(_text(x + 16, y, name, "start", "legend"))
        x += 28 + 7 * len(name)
    return out


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float
    color: str
    shape: str                        # "circle" | "diamond"
    title: str


def intervals(rows: list[tuple[str, list[Interval]]], unit: str, width: int = 560, lo: float = 0.0,
              hi: float = 1.0, legend: list[tuple[str, str]] = ()) -> str:
    """Points with interval whiskers on a fixed scale (accuracy 0..1), one row per layout, the
    markers of one row side by side."""
    lw = _label_width([label for label, _ in rows]) + GAP
    plot = width - lw - 20
    top_pad = 8
    height = top_pad + ROW * len(rows) + 34 + (22 if legend else 0)
    scale = plot / (hi - lo)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img">']
    axis_y = top_pad + ROW * len(rows)
    for k in range(11):
        t = lo + (hi - lo) * k / 10
        x = lw + (t - lo) * scale
        out.append(f'<line x1="{x:.1f}" y1="{top_pad}" x2="{x:.1f}" y2="{axis_y}" class="grid"/>')
        if k % 2 == 0:
            out.append(_text(x, axis_y + 14, f"{t:g}", "middle", "tick"))
    out.append(_text(lw + plot / 2, axis_y + 29, unit, "middle", "axis"))
    for i, (label, marks) in enumerate(rows):
        y = top_pad + i * ROW
        out.append(f'<g class="row"><title>{escape(label)}</title>'
                   + _text(lw - GAP, y + ROW / 2 + 4, _short(label, lw - GAP), "end", "label") + "</g>")
        for j, m in enumerate(marks):
            cy = y + 7 + j * max(1, (ROW - 14)) / max(1, len(marks) - 1) if len(marks) > 1 else y + ROW / 2
            x0, x1, xv = (lw + (v - lo) * scale for v in (m.low, m.high, m.value))
            shape = (f'<circle class="mark" cx="{xv:.1f}" cy="{cy:.1f}" r="4.5" fill="{m.color}"/>'
                     if m.shape == "circle" else
                     f'<path class="mark" d="M{xv:.1f} {cy - 5:.1f} L{xv + 5:.1f} {cy:.1f} L{xv:.1f} {cy + 5:.1f} '
                     f'L{xv - 5:.1f} {cy:.1f} Z" fill="none" stroke="{m.color}" stroke-width="2"/>')
            out.append(f'<g class="mark"><title>{escape(m.title)}</title>'
                       f'<line x1="{x0:.1f}" y1="{cy:.1f}" x2="{x1:.1f}" y2="{cy:.1f}" stroke="{m.color}" '
                       f'stroke-width="2"/>{shape}</g>')
    out += _legend(legend, lw, height - 6)
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    title: str
    tag: str = ""                     # written beside the point ("c=16") while few points share the chart


@dataclass(frozen=True)
class Line:
    label: str
    points: tuple[Point, ...]


def lines(series: list[Line], x_unit: str, y_unit: str, width: int = 560, height: int = 380) -> str:
    """Lines through points (a layout through its load levels), both axes from 0; a hover on a point
    names the layout and the level."""
    left, bottom, top, right = 64, 44, 12, 16
    pts = [p for s in series for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)]
    xt = nice_ticks(max([p.x for p in pts] + [0]) or 1.0)
    yt = nice_ticks(max([p.y for p in pts] + [0]) or 1.0)
    pw, ph = width - left - right, height - top - bottom
    sx, sy = pw / xt[-1], ph / yt[-1]

    def px(x):
        return left + x * sx

    def py(y):
        return top + ph - y * sy
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img">']
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" class="grid"/>')
        out.append(_text(px(t), top + ph + 15, num(t), "middle", "tick"))
    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" class="grid"/>')
        out.append(_text(left - 6, py(t) + 4, num(t), "end", "tick"))
    out.append(_text(left + pw / 2, height - 8, x_unit, "middle", "axis"))
    out.append(_text(14, top + ph / 2, y_unit, "middle", "axis", f' transform="rotate(-90 14 {top + ph / 2:.1f})"'))
    tagged = len(pts) <= TAGGED_POINTS
    for i, s in enumerate(series):
        good = [p for p in s.points if math.isfinite(p.x) and math.isfinite(p.y)]
        d = dash(i)
        out.append(f'<g class="series"><title>{escape(s.label)}</title>')
        if len(good) > 1:
            path = " ".join(f"{px(p.x):.1f},{py(p.y):.1f}" for p in good)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color(i)}" stroke-width="2"'
                       + (f' stroke-dasharray="{d}"' if d else "") + "/>")
        for p in good:
            out.append(f'<circle class="mark" cx="{px(p.x):.1f}" cy="{py(p.y):.1f}" r="4.5" fill="{color(i)}">'
                       f'<title>{escape(p.title)}</title></circle>')
            if tagged and p.tag:
                out.append(_text(px(p.x) + 6, py(p.y) - 6, p.tag, "start", "tag"))
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
