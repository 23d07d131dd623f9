"""The report's database reads (thinning, binning, phases, devices) give the same figures on
SQLite and PostgreSQL: the page's plots, the regulator document and the exports."""

from __future__ import annotations

import pytest

from greenmaas.report import summary
from greenmaas.reporting import boamps_report, eu_ai_act, html_report, sci_form
from greenmaas.reporting.html import collect_plots

from .conftest import record_demo
from .test_euaiact import INFER_J, REQUESTS, TRAIN_J
from .test_html import REQUEST_J, T0, build_hand_ledger, true_energy


def test_plots_read_the_same_on_each_backend(ledger_url):
    build_hand_ledger(ledger_url)
    plots = collect_plots(ledger_url, summary(ledger_url, by="phase"), max_points=10, max_bands=3, bins=12)
    ((_, xs, ys),) = plots.power["gpu:0"]
    assert plots.points_read == 101 and plots.points_kept <= 12
    t0 = T0.timestamp()
    for (a, _), (b, y) in zip(zip(xs, ys), list(zip(xs, ys))[1:]):
        assert y == pytest.approx((true_energy(b - t0) - true_energy(a - t0)) / (b - a))
    assert plots.bands_total == 2 + len(REQUEST_J) and [b[3] for b in plots.bands[:2]] == ["training", "training"]
    assert plots.requests["requests"] == len(REQUEST_J) and sum(plots.histogram["counts"]) == len(REQUEST_J) - 1
    assert plots.histogram["below"] == 1
    assert "<svg" in html_report(ledger_url, by="request")


def test_documents_read_the_same_on_each_backend(ledger_url):
    record_demo(ledger_url)
    doc = eu_ai_act(ledger_url).to_dict()
    (mlp,) = [m for m in doc["models"] if m["model"] == "mlp"]
    energy = next(f for f in mlp["fields"] if f["id"] == "training_energy_mwh")
    assert energy["value"] == pytest.approx(TRAIN_J / 3.6e9, rel=1e-6)
    (llama,) = [m for m in doc["models"] if m["model"] == "llama"]
    per_request = next(f for f in llama["fields"] if f["id"] == "inference_energy_per_request_j")
    assert per_request["value"] == pytest.approx(INFER_J / REQUESTS, rel=1e-6)
    assert sci_form(ledger_url)["total"]["R"] == REQUESTS
    report = boamps_report(ledger_url)
    assert report["measures"][0]["powerConsumption"] == pytest.approx((TRAIN_J + INFER_J) / 3.6e6, rel=1e-6)
