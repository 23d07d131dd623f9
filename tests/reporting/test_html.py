"""The HTML report: what its plots show against figures computed here, thinning and binning done
in the database, every grouping, empty ledgers, and a page that needs nothing from the network."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import pytest

from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SampleRecord, SpanRecord
from greenmaas.report import GROUPS, summary
from greenmaas.reporting import html_report
from greenmaas.reporting.html import collect_plots

from .conftest import record_demo

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def true_power(t: float) -> float:
    """The hand-made device: 100 W, 300 W from 40 s to 70 s, 50 W from 70 s."""
    return 100.0 if t < 40 else 300.0 if t < 70 else 50.0


def true_energy(t: float) -> float:
    return 100.0 * min(t, 40) + 300.0 * max(0.0, min(t, 70) - 40) + 50.0 * max(0.0, t - 70)


REQUEST_J = [0.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0, 233.0, 377.0, 610.0]


@pytest.fixture(scope="module")
def hand_ledger(tmp_path_factory):
    path = tmp_path_factory.mktemp("hand") / "hand.db"
    return build_hand_ledger(str(path))


def build_hand_ledger(path: str) -> str:
    """100 s of 1 s samples on gpu:0, two long training spans, and requests of known energy."""
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r1", "node", 1, T0, devices=[{"id": "gpu:0", "kind": "gpu", "name": "Sim GPU",
                                                                  "method": "counter"}]))
        led.write_samples([SampleRecord("r1", "gpu:0", T0 + timedelta(seconds=t), true_energy(t), None, "counter")
                           for t in range(0, 101)])
        spans = [
            SpanRecord(span_id="train", run_id="r1", name="fit", start=T0 + timedelta(seconds=40),
                       end=T0 + timedelta(seconds=70), duration_s=30.0, model="mlp", phase="training",
                       devices=[DeviceEnergy("gpu:0", 9000.0, "counter", 9000.0)]),
            SpanRecord(span_id="warm", run_id="r1", name="warmup", start=T0 + timedelta(seconds=5),
                       end=T0 + timedelta(seconds=15), duration_s=10.0, model="mlp", phase="training",
                       devices=[DeviceEnergy("gpu:0", 1000.0, "counter", 1000.0)]),
        ]
        for i, e in enumerate(REQUEST_J):
            start = T0 + timedelta(seconds=71 + i)
            # A request span and a child carrying part of its energy: the request's energy is the sum
            # of both spans' own energy, as a report by request counts it.
            spans.append(SpanRecord(span_id=f"q{i}", run_id="r1", name="req", start=start,
                                    end=start + timedelta(seconds=0.5), duration_s=0.5, model="llama",
                                    phase="inference", request_id=f"req-{i}", kind="request",
                                    devices=[DeviceEnergy("gpu:0", e, "counter", e / 2)]))
            spans.append(SpanRecord(span_id=f"q{i}-fwd", run_id="r1", name="forward", start=start,
                                    end=start + timedelta(seconds=0.4), duration_s=0.4, model="llama",
                                    phase="inference", request_id=f"req-{i}", parent_id=f"q{i}",
                                    devices=[DeviceEnergy("gpu:0", e / 2, "counter", e / 2)]))
        led.write_spans(spans)
        led.write_device_totals([DeviceTotals("r1", "gpu:0", "counter", true_energy(100), 10000.0 + sum(REQUEST_J),
                                              true_energy(100) - 10000.0 - sum(REQUEST_J), start=T0)])
        led.end_run("r1", T0 + timedelta(seconds=100))
    return path


def plots_for(path, by="model", **kw):
    return collect_plots(path, summary(path, by=by), **kw)


def test_power_is_the_exact_mean_between_samples(hand_ledger):
    plots = plots_for(hand_ledger)
    ((run, xs, ys),) = plots.power["gpu:0"]
    assert run == "r1" and plots.points_read == plots.points_kept == 101
    t0 = T0.timestamp()
    for x, y in zip(xs[1:], ys[1:]):
        t = x - t0
        assert y == pytest.approx(true_power(t - 0.5)), t  # each level holds over the second before t


def test_thinned_power_keeps_each_level_an_exact_mean(hand_ledger):
    plots = plots_for(hand_ledger, max_points=10)
    ((_, xs, ys),) = plots.power["gpu:0"]
    assert plots.points_read == 101 and plots.points_kept <= 12
    assert xs[-1] - T0.timestamp() == pytest.approx(100.0)  # the last point is always kept
    t0 = T0.timestamp()
    for (a, _), (b, y) in zip(zip(xs, ys), list(zip(xs, ys))[1:]):
        mean = (true_energy(b - t0) - true_energy(a - t0)) / (b - a)
        assert y == pytest.approx(mean)
    assert any("101 cumulative-energy samples" in n for n in plots.notes)


def test_the_longest_top_level_spans_are_shaded(hand_ledger):
    plots = plots_for(hand_ledger, max_bands=3)
    assert plots.bands_total == 2 + len(REQUEST_J)  # children are not shaded
    assert [b[3] for b in plots.bands[:2]] == ["mlp", "mlp"]
    assert plots.bands[0][2] - plots.bands[0][1] == pytest.approx(30.0)
    assert len(plots.bands) == 3 and any("3 longest of 17" in n for n in plots.notes)


def test_request_histogram_is_binned_in_the_database_and_matches_the_report(hand_ledger):
    plots = plots_for(hand_ledger, bins=12)
    h, stats = plots.histogram, plots.requests
    assert stats["requests"] == len(REQUEST_J) and stats["energy_j"] == pytest.approx(sum(REQUEST_J))
    assert h["log"]  # 1 J to 610 J: log-spaced bins
    assert h["below"] == 1  # the 0 J request lies below a log axis, and is counted, not lost
    expected = [0] * 12
    for e in REQUEST_J[1:]:
        i = next(k for k in range(12) if e < h["edges"][k + 1] or k == 11)
        expected[i] += 1
    assert h["counts"] == expected
    by_request = {r["group"]: r["energy_j"] for r in summary(hand_ledger, by="request").rows}
    assert sorted(v for k, v in by_request.items() if k.startswith("req-")) == pytest.approx(sorted(REQUEST_J))


def test_linear_bins_when_requests_are_alike(tmp_path):
    path = tmp_path / "alike.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r", "h", 1, T0))
        led.write_spans([SpanRecord(span_id=f"s{i}", run_id="r", name="q", start=T0 + timedelta(seconds=i),
                                    end=T0 + timedelta(seconds=i + 0.5), duration_s=0.5, request_id=f"r{i}",
                                    devices=[DeviceEnergy("gpu:0", 10.0 + i, "counter", 10.0 + i)])
                         for i in range(5)])
    plots = plots_for(str(path), bins=4)
    assert not plots.histogram["log"] and plots.histogram["counts"] == [1, 1, 1, 2]  # the last bin holds its upper edge
    assert plots.power == {} and plots.bands_total == 5


class Page(HTMLParser):
    """Tags and attributes of a page, and whether every opened tag closed."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "rect", "line", "polyline", "path", "circle"}

    def __init__(self, text):
        super().__init__()
        self.tags, self.stack, self.attrs, self.errors = [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()


def charts(text):
    return re.findall(r'data-chart="([a-z]+)"', text)


def assert_self_contained(text):
    page = Page(text)
    assert page.errors == [] and page.stack == []
    assert not {"script", "link", "img", "iframe", "object"} & set(page.tags)
    urls = [v for k, v in page.attrs if k in ("src", "href") and v]
    assert urls == []
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) <= {"http://www.w3.org/2000/svg"}  # the SVG namespace


@pytest.mark.parametrize("by", GROUPS)
def test_every_grouping_renders_a_self_contained_page_with_its_plots(demo, by):
    text = html_report(demo.path, by=by)
    assert_self_contained(text)
    found = charts(text)
    assert found.count("time") == 2  # one power chart per device
    assert "bars" in found and "histogram" in found
    assert f"by {by}" in text


def test_demo_page_states_its_figures(demo):
    text = html_report(demo.path, by="model")
    assert "24 requests" in text and "France (FRA)" in text and "counter" in text
    total = sum(r["energy_j"] for r in summary(demo.path, by="model").rows)
    assert f"{total:,.1f}" in text  # the table's total line


def test_an_empty_ledger_says_what_is_missing(tmp_path):
    path = tmp_path / "empty.db"
    Ledger.open(path).close()
    text = html_report(str(path))
    assert_self_contained(text)
    assert charts(text) == []
    for missing in ("No spans in the ledger", "No power to plot", "No requests in this selection"):
        assert missing in text


def test_a_tiny_ledger_with_one_span_and_no_samples(tmp_path):
    path = tmp_path / "tiny.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r", "h", 1, T0))
        led.write_spans([SpanRecord(span_id="s", run_id="r", name="x", start=T0, end=T0 + timedelta(seconds=1),
                                    duration_s=1.0, model="m", devices=[DeviceEnergy("gpu:0", 5.0, "counter", 5.0)])])
    text = html_report(str(path), by="model")
    assert_self_contained(text)
    assert charts(text) == ["bars", "bars"] and "No power to plot" in text


def test_carbon_intensity_series_is_drawn_from_the_csv(tmp_path):
    csv = tmp_path / "grid.csv"
    csv.write_text("timestamp,gco2_per_kwh\n2026-01-01T00:00:00Z,120\n2026-01-01T00:00:02Z,480\n")
    rec = record_demo(tmp_path / "series.db", epochs=1, steps=2, requests=3, series_csv=csv)
    result = summary(rec.path, by="model")
    plots = collect_plots(rec.path, result)
    ((label, (t, v)),) = plots.intensity.items()
    assert label == str(csv) and set(v) == {120.0, 480.0}
    first, last = result.period
    assert t[0] == pytest.approx(first.timestamp()) and t[-1] == pytest.approx(last.timestamp())
    text = html_report(rec.path)
    assert "Carbon intensity over time" in text and charts(text).count("time") == 3


def test_progress_hook_sees_each_step(demo):
    seen = []
    html_report(demo.path, progress=seen.append)
    assert seen == ["summary", "plots", "page"]


def test_power_of_a_meter_run_is_the_simulated_power(demo):
    plots = plots_for(demo.path)
    ys = [y for _, _, values in plots.power["gpu:1"] for y in values if not math.isnan(y)]
    assert plots.falling == 0
    assert ys and all(y == pytest.approx(30.0) for y in ys)


def test_a_page_by_request_keeps_the_largest_and_sums_the_rest(demo):
    """By request, the page reads a page of requests at a time: the largest requests, one row for
    every other, and the totals of all of them."""
    rows = summary(demo.path, by="request").rows
    requests = [r for r in rows if r["group"] not in ("(none)", "(idle)")]
    assert len(requests) > 6
    text = html_report(demo.path, by="request", max_rows=6)
    assert_self_contained(text)
    assert f"({len(requests) - 4:,} more requests)" in text
    largest = sorted(requests, key=lambda r: -r["energy_j"])[:4]
    for r in largest:
        assert r["group"] in text
    total = sum(r["energy_j"] for r in rows)
    assert f"{total:,.1f}" in text
