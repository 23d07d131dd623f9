"""The chart helpers: axis ticks always cover the data, and charts are well-formed SVG."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from hypothesis import given
from hypothesis import strategies as st

from greenmaas.reporting import svg

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(finite, finite)
def test_ticks_cover_the_range_in_round_steps(a, b):
    lo, hi = min(a, b), max(a, b)
    ticks = svg.nice_ticks(lo, hi)
    assert 2 <= len(ticks) <= 50
    assert all(x < y for x, y in zip(ticks, ticks[1:]))
    if hi > lo:
        span = ticks[-1] - ticks[0]
        assert ticks[0] <= lo + 1e-9 * span and ticks[-1] >= hi - 1e-9 * span
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


def test_charts_are_well_formed_svg_with_their_marks():
    line = svg.time_chart("p", [svg.Series("gpu", [0, 1, 2, 3], [None, 5.0, float("nan"), 7.0], step=True)], "W",
                          [svg.Band(0.5, 1.5, "a <b>", svg.PALETTE[1])])
    bars = svg.bar_chart("e", ["a & b", "c"], [3.0, None], "J", errors=[1.0, None])
    hist = svg.histogram("h", [1, 10, 100], [3, 0], "J", log_x=True)
    for text, marks in ((line, 2), (bars, 1), (hist, 1)):
        root = ET.fromstring(text)
        found = [e for e in root.iter() if e.get("class") in ("line", "bar", "band")]
        assert len(found) >= marks
    assert "a &lt;b&gt;" in line and "not measured" in bars
