"""Small inline SVG charts for the HTML report: time series with shaded intervals, horizontal
bars and histograms.

Each function returns one ``<svg>`` element as text, with its own axes, labels and ``<title>``
tooltips, escaped for HTML; nothing is fetched at view time. Colours come from one palette
chosen to stay distinct for readers with the common colour-vision deficiencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import Sequence

__all__ = ["PALETTE", "Series", "Band", "time_chart", "bar_chart", "histogram", "nice_ticks"]

#: Okabe–Ito colours (without black), then greys for "others".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#999999")

_W, _H = 900, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 14, 40


@dataclass
class Series:
    """One line: x as POSIX seconds (UTC), y in the chart's unit; ``None`` in y breaks the line.
    ``step`` draws each value as a level held until the next x."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    colour: str = PALETTE[0]
    step: bool = False


@dataclass
class Band:
    """A shaded interval of x (POSIX seconds), with its legend label and tooltip."""

    x0: float
    x1: float
    label: str
    colour: str
    tooltip: str = ""


@dataclass
class _Frame:
    x0: float
    x1: float
    y0: float
    y1: float
    width: int = _W
    height: int = _H
    ticks_y: list[float] = field(default_factory=list)

    def px(self, x: float) -> float:
        span = self.x1 - self.x0 or 1.0
        return _LEFT + (x - self.x0) / span * (self.width - _LEFT - _RIGHT)

    def py(self, y: float) -> float:
        span = self.y1 - self.y0 or 1.0
        return self.height - _BOTTOM - (y - self.y0) / span * (self.height - _TOP - _BOTTOM)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``: steps of 1, 2 or 5 × 10^n."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi - lo <= max(1e-9 * max(abs(lo), abs(hi)), 1e-200):  # no visible range: show one around the value
        width = max(abs(lo), abs(hi))
        lo, hi = (0.0, 1.0) if width <= 1e-200 else (lo - width / 2, hi + width / 2)
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step

    def tick(i: int) -> float:
        return float(f"{start + i * step:.12g}") + 0.0  # + 0.0: no "-0"

    ticks = [tick(0)]
    while ticks[-1] < hi - step * 1e-9 and len(ticks) < 50:
        ticks.append(tick(len(ticks)))
    return ticks


def _fmt(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e6 or a < 1e-3:
        return f"{v:.2g}"
    if a >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _time_label(t: float, span_s: float) -> str:
    dt = datetime.fromtimestamp(t, tz=timezone.utc)
    if span_s < 120:
        return dt.strftime("%H:%M:%S.%f")[:-4]
    if span_s < 2 * 86400:
        return dt.strftime("%H:%M:%S")
    return dt.strftime("%m-%d %H:%M")


def _open(title: str, frame: _Frame, kind: str) -> list[str]:
    return [
        f'<svg class="chart" data-chart="{escape(kind)}" role="img" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {frame.width} {frame.height}" width="100%" preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]


def _y_axis(frame: _Frame, unit: str) -> list[str]:
    out = []
    for v in frame.ticks_y:
        y = frame.py(v)
        out.append(f'<line class="grid" x1="{_LEFT}" x2="{frame.width - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(_fmt(v))}</text>')
    out.append(f'<text class="unit" x="12" y="{_TOP + 4}" transform="rotate(-90 12 {_TOP + 4})" '
               f'text-anchor="end">{escape(unit)}</text>')
    return out


def time_chart(title: str, series: Sequence[Series], unit: str, bands: Sequence[Band] = (),
               *, x_range: tuple[float, float] | None = None, y_min: float | None = 0.0) -> str:
    """Lines over UTC time, with ``bands`` shaded behind them."""
    xs = [x for s in series for x in s.x]
    ys = [y for s in series for y in s.y if y is not None and math.isfinite(y)]
    if x_range is None:
        x_range = (min(xs + [b.x0 for b in bands]), max(xs + [b.x1 for b in bands]))
    lo = min(ys) if ys else 0.0
    lo = min(lo, y_min) if y_min is not None else lo
    hi = max(ys) if ys else 1.0
    ticks = nice_ticks(lo, hi)
    frame = _Frame(x_range[0], x_range[1], ticks[0], ticks[-1], ticks_y=ticks)
    span_s = frame.x1 - frame.x0
    out = _open(title, frame, "time")
    out += _y_axis(frame, unit)
    for b in bands:
        x0, x1 = max(frame.x0, b.x0), min(frame.x1, b.x1)
        if x1 < x0:
            continue
        px0, px1 = frame.px(x0), frame.px(x1)
        tip = escape(b.tooltip or b.label)
        out.append(f'<rect class="band" x="{px0:.2f}" y="{_TOP}" width="{max(px1 - px0, 0.6):.2f}" '
                   f'height="{frame.height - _TOP - _BOTTOM}" fill="{b.colour}"><title>{tip}</title></rect>')
    for s in series:
        out.append(_polyline(s, frame))
    for x in nice_ticks(frame.x0, frame.x1, 6):
        if frame.x0 <= x <= frame.x1:
            px = frame.px(x)
            out.append(f'<text class="tick" x="{px:.1f}" y="{frame.height - _BOTTOM + 16}" text-anchor="middle">'
                       f'{escape(_time_label(x, span_s))}</text>')
    out.append(f'<text class="unit" x="{frame.width - _RIGHT}" y="{frame.height - 4}" text-anchor="end">'
               "time (UTC)</text>")
    out.append("</svg>")
    return "\n".join(out)


def _polyline(s: Series, frame: _Frame) -> str:
    paths: list[list[str]] = []
    current: list[str] = []
    for i, (x, y) in enumerate(zip(s.x, s.y)):
        if y is None or not math.isfinite(y):
            if current:
                paths.append(current)
            current = []
            continue
        px, py = frame.px(x), frame.py(y)
        if s.step and current and i + 1 < len(s.x):
            current.append(f"{px:.2f},{current[-1].split(',')[1]}")
        current.append(f"{px:.2f},{py:.2f}")
        if s.step and i + 1 < len(s.x):
            current.append(f"{frame.px(s.x[i + 1]):.2f},{py:.2f}")
    if current:
        paths.append(current)
    return "\n".join(
        f'<polyline class="line" fill="none" stroke="{s.colour}" points="{" ".join(p)}">'
        f"<title>{escape(s.label)}</title></polyline>"
        for p in paths
    )


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float | None], unit: str,
              *, colours: Sequence[str] | None = None, errors: Sequence[float | None] | None = None) -> str:
    """Horizontal bars, one per label, with an optional ± error whisker."""
    n = len(labels)
    row = 24
    height = _TOP + n * row + _BOTTOM
    finite = [v + ((errors[i] or 0.0) if errors else 0.0) for i, v in enumerate(values)
              if v is not None and math.isfinite(v)]
    hi = max(finite + [0.0]) or 1.0
    label_w = 220
    frame = _Frame(0.0, hi, 0.0, 1.0, height=height)
    ticks = nice_ticks(0.0, hi, 5)
    frame.x1 = ticks[-1]

    def px(v: float) -> float:
        return label_w + v / (frame.x1 or 1.0) * (frame.width - label_w - _RIGHT - 60)

    out = _open(title, frame, "bars")
    for t in ticks:
        x = px(t)
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" y2="{height - _BOTTOM}"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{height - _BOTTOM + 16}" text-anchor="middle">'
                   f"{escape(_fmt(t))}</text>")
    for i, (label, v) in enumerate(zip(labels, values)):
        y = _TOP + i * row
        short = label if len(label) <= 30 else label[:29] + "…"
        out.append(f'<text class="label" x="{label_w - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">'
                   f"<title>{escape(label)}</title>{escape(short)}</text>")
        if v is None or not math.isfinite(v):
            out.append(f'<text class="missing" x="{label_w + 4}" y="{y + row / 2 + 4:.1f}">not measured</text>')
            continue
        colour = colours[i] if colours else PALETTE[0]
        w = max(px(v) - label_w, 0.0)
        err = errors[i] if errors else None
        tip = f"{label}: {_fmt(v)} {unit}" + (f" ± {_fmt(err)}" if err else "")
        out.append(f'<rect class="bar" x="{label_w}" y="{y + 4}" width="{w:.2f}" height="{row - 8}" '
                   f'fill="{colour}"><title>{escape(tip)}</title></rect>')
        if err:
            a, b = px(max(v - err, 0.0)), px(v + err)
            mid = y + row / 2
            out.append(f'<line class="whisker" x1="{a:.2f}" x2="{b:.2f}" y1="{mid:.1f}" y2="{mid:.1f}"/>')
        out.append(f'<text class="value" x="{px(v) + 6:.1f}" y="{y + row / 2 + 4:.1f}">{escape(_fmt(v))}</text>')
    out.append(f'<text class="unit" x="{frame.width - _RIGHT}" y="{height - 4}" text-anchor="end">'
               f"{escape(unit)}</text>")
    out.append("</svg>")
    return "\n".join(out)


def histogram(title: str, edges: Sequence[float], counts: Sequence[int], unit: str, *, log_x: bool) -> str:
    """Bars over the bins ``[edges[i], edges[i+1])`` with their counts; a log x axis for
    ``log_x`` (edges must then be positive)."""
    tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
    hi = max(list(counts) + [1])
    ticks = nice_ticks(0, hi, 4)
    ticks = [t for t in ticks if float(t).is_integer()] or [0.0, float(hi)]
    frame = _Frame(tx(edges[0]), tx(edges[-1]), 0.0, ticks[-1], ticks_y=ticks)
    out = _open(title, frame, "histogram")
    out += _y_axis(frame, "requests")
    for a, b, c in zip(edges, edges[1:], counts):
        if c <= 0:
            continue
        x0, x1, y = frame.px(tx(a)), frame.px(tx(b)), frame.py(c)
        tip = f"{_fmt(a)}–{_fmt(b)} {unit}: {c:,} requests"
        out.append(f'<rect class="bar" x="{x0:.2f}" y="{y:.2f}" width="{max(x1 - x0 - 1, 0.8):.2f}" '
                   f'height="{frame.py(0) - y:.2f}" fill="{PALETTE[0]}"><title>{escape(tip)}</title></rect>')
    if log_x:
        lo_e, hi_e = math.floor(tx(edges[0])), math.ceil(tx(edges[-1]))
        marks = [10.0 ** e for e in range(lo_e, hi_e + 1)]
        if len(marks) < 3:
            marks = sorted({m * f for m in marks for f in (1, 2, 5)})
    else:
        marks = nice_ticks(edges[0], edges[-1], 6)
    inside = [m for m in marks if edges[0] <= m <= edges[-1]]
    width = frame.px(tx(edges[-1])) - frame.px(tx(edges[0]))
    for end in (edges[0], edges[-1]):  # the range's ends, where no round mark is near them
        if all(abs(frame.px(tx(m)) - frame.px(tx(end))) > 0.08 * width for m in inside):
            inside.append(end)
    for m in inside:
        if edges[0] <= m <= edges[-1]:
            px = frame.px(tx(m))
            out.append(f'<text class="tick" x="{px:.1f}" y="{frame.height - _BOTTOM + 16}" text-anchor="middle">'
                       f"{escape(_fmt(m))}</text>")
    scale = "log scale" if log_x else "linear scale"
    out.append(f'<text class="unit" x="{frame.width - _RIGHT}" y="{frame.height - 4}" text-anchor="end">'
               f"{escape(unit)} per request ({scale})</text>")
    out.append("</svg>")
    return "\n".join(out)
