"""Notebook rendering: summaries, span results and runs as HTML tables; ``Summary.to_frame()``.

A meter on a :class:`FakeClock` over a constant 300 W device records known spans into a real
ledger: 2 s of model ``alpha`` (600 J), 1 s of a model whose name is markup (300 J), 0.5 s idle
(150 J). The tables are read back with an HTML parser, as a browser would see them.
"""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from greenmaas.accounting import AccountingConfig
from greenmaas.meter import Meter
from greenmaas.notebook import RunList, runs, span_result_html, summary_html
from greenmaas.report import summary
from greenmaas.testing import FakeClock, StaticSource

POWER_W = 300.0
ODD = "<b>beta</b> & co"


class Tables(HTMLParser):
    """Every table's rows, as lists of cell texts (header rows included)."""

    def __init__(self, html: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.items: list[str] = []
        self._cell: list[str] | None = None
        self._in_li = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "li":
            self._in_li = True
            self.items.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "li":
            self._in_li = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_li:
            self.items[-1] += data


def _record(path, clock, *, accounting):
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
    meter = Meter(sources=[src], ledger=str(path), clock=clock, background=False, accounting=accounting,
                  handle_signals=False)
    with meter:
        clock.advance(0.5)
        with meter.measure("train", model="alpha", phase="training"):
            clock.advance(2.0)
        with meter.measure("serve", model=ODD, phase="inference"):
            clock.advance(1.0)
    return meter


@pytest.fixture
def ledger(tmp_path):
    path = tmp_path / "greenmaas.db"
    _record(path, FakeClock(), accounting=AccountingConfig(location="FR", tariff="0.25EUR/kWh"))
    return str(path)


def test_a_summary_renders_its_rows_sources_and_notes(ledger):
    s = summary(ledger, by="model")
    html = s._repr_html_()
    assert html == summary_html(s)
    assert ODD not in html and "&lt;b&gt;beta&lt;/b&gt; &amp; co" in html  # escaped, never markup
    (table,) = Tables(html).tables
    header, *rows = table
    assert header[:4] == ["Model", "Spans", "Duration (s)", "Energy (J)"]
    assert "Carbon (gCO2e)" in header and "Cost (EUR)" in header
    cells = {r[0]: dict(zip(header, r)) for r in rows}
    assert list(cells) == ["alpha", ODD, "(idle)"]  # largest first, idle last
    assert [cells[g]["Energy (J)"] for g in cells] == ["600.0", "300.0", "150.0"]
    assert cells["alpha"]["Duration (s)"] == "2.0"
    by_group = {r["group"]: r for r in s.rows}
    from greenmaas.modelcard import format_amount

    assert cells["alpha"]["Carbon (gCO2e)"] == format_amount(by_group["alpha"]["carbon_g"])
    assert cells[ODD]["Cost (EUR)"] == format_amount(by_group[ODD]["cost"])
    items = Tables(html).items
    assert any("France" in item for item in items)  # what the carbon rests on
    assert any(item.startswith("Method: counter") for item in items)


def test_jupyter_picks_the_html_table():
    formatters = pytest.importorskip("IPython.core.formatters")
    from greenmaas.report import Summary

    s = Summary(by="phase", rows=[{"group": "training", "spans": 1, "duration_s": 1.0, "energy_j": 5.0,
                                   "method": "counter", "uncertainty_j": 0.5}], priced=False)
    data, _ = formatters.DisplayFormatter().format(s)
    assert data["text/html"] == summary_html(s)
    (table,) = Tables(data["text/html"]).tables
    assert table[0] == ["Phase", "Spans", "Duration (s)", "Energy (J)", "Energy (kWh)", "± J", "Method"]
    assert table[1] == ["training", "1", "1.0", "5.0", "0.00000139", "0.5", "counter"]


def test_to_frame_holds_the_rows_indexed_by_group(ledger):
    s = summary(ledger, by="model")
    frame = s.to_frame()
    assert frame.index.name == "model"
    assert list(frame.index) == ["alpha", ODD, "(idle)"]
    assert frame["energy_j"].tolist() == pytest.approx([POWER_W * 2.0, POWER_W * 1.0, POWER_W * 0.5])
    assert frame.loc["alpha", "spans"] == 1
    assert frame["carbon_g"].sum() == pytest.approx(sum(r["carbon_g"] for r in s.rows))
    assert set(frame.columns) == {k for r in s.rows for k in r} - {"group"}


def test_an_empty_summary_says_so(tmp_path):
    path = tmp_path / "empty.db"
    Meter(sources=[], ledger=str(path), clock=FakeClock(), background=False, accounting=False,
          handle_signals=False).start().stop()
    s = summary(str(path), by="phase")
    assert "No spans in this selection." in s._repr_html_()
    assert s.to_frame().empty and s.to_frame().index.name == "phase"


def test_a_span_result_renders_with_its_devices(tmp_path):
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}, "cpu:0": {"energy_j": lambda t: 50.0 * t}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False,
                  handle_signals=False)
    with meter:
        with meter.measure("<step>") as span:
            clock.advance(2.0)
        meter.tick()
        result = span.result
    html = span_result_html(result, span.name)
    assert "&lt;step&gt;" in html and "<step>" not in html
    head, devices = Tables(html).tables
    facts = dict(head)
    assert facts["Duration"] == "2.000 s"
    assert facts["Energy"] == "700.000 ± 0.000 J"
    assert facts["Method"] == "counter"
    assert devices[1:] == [["cpu:0", "100.000", "counter", "2.000"], ["gpu:0", "600.000", "counter", "2.000"]]


def test_runs_render_as_a_table_and_a_frame(tmp_path):
    path = tmp_path / "greenmaas.db"
    clock = FakeClock()
    first = _record(path, clock, accounting=False)
    second = _record(path, clock, accounting=False)
    found = runs(str(path))
    assert isinstance(found, RunList)
    assert [r["run_id"] for r in found] == [first.run_id, second.run_id]
    (table,) = Tables(found._repr_html_()).tables
    assert table[0] == ["Run", "Host", "Start (UTC)", "End (UTC)", "Status", "Spans", "Energy (J)"]
    assert [row[0] for row in table[1:]] == [first.run_id, second.run_id]
    assert [row[-1] for row in table[1:]] == ["1,050.0", "1,050.0"]  # 3.5 s at 300 W each
    frame = found.to_frame()
    assert list(frame.index) == [first.run_id, second.run_id]
    assert frame["energy_j"].tolist() == pytest.approx([POWER_W * 3.5] * 2)
    assert str(frame["start"].dt.tz) == "UTC"


@pytest.mark.skipif(not hasattr(__import__("greenmaas.spans").spans.SpanResult, "_repr_html_"),
                    reason="SpanResult._repr_html_ is not in greenmaas/spans.py yet")
def test_jupyter_shows_a_span_result_as_its_table():
    formatters = pytest.importorskip("IPython.core.formatters")
    from greenmaas.spans import SpanResult

    result = SpanResult(duration_s=1.5, energy_j=42.0, by_device_j={"gpu:0": 42.0}, self_energy_j=42.0,
                        method="counter", uncertainty_j=0.25, final=False)
    data, _ = formatters.DisplayFormatter().format(result)
    assert data["text/html"] == span_result_html(result)
    facts = dict(Tables(data["text/html"]).tables[0])
    assert facts["Energy"] == "42.000 ± 0.250 J"
    assert facts["Final"].startswith("no: provisional")
