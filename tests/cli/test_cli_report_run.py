"""``greenmaas report --run ID|latest``: one run's rows and idle time, from a real ledger."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord
from greenmaas_cli.main import cli

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def two_runs(tmp_path):
    path = tmp_path / "l.db"
    devices = [{"id": "gpu:0", "kind": "gpu", "name": "H100"}]
    with Ledger.open(path) as led:
        for n, run in enumerate(("first", "second")):
            start = T0 + timedelta(hours=n)
            led.start_run(RunRecord(run, "node", 1, start, config={}, devices=devices))
            led.write_spans([
                SpanRecord(f"{run}-{i}", run, "step", start + timedelta(seconds=i), start + timedelta(seconds=i + 1),
                           1.0, model=("llama", "bert")[n], devices=[DeviceEnergy("gpu:0", 10.0 + n, "counter", 10.0 + n)])
                for i in range(5)
            ])
            led.write_device_totals([DeviceTotals(run, "gpu:0", "counter", 100.0, 50.0 + 5 * n, 50.0 - 5 * n,
                                                  start=start, end=start + timedelta(minutes=1))])
            led.end_run(run, start + timedelta(minutes=1))
    return path


def _json(path, *args):
    r = CliRunner().invoke(cli, ["report", "--ledger", str(path), "--format", "json", *args])
    assert r.exit_code == 0, r.output
    return {row["group"]: row for row in json.loads(r.stdout)}


def test_run_selects_one_run_and_its_idle_time(two_runs):
    both = _json(two_runs, "--by", "model")
    first = _json(two_runs, "--by", "model", "--run", "first")
    latest = _json(two_runs, "--by", "model", "--run", "latest")
    assert set(both) == {"llama", "bert", "(idle)"}
    assert set(first) == {"llama", "(idle)"} and first["llama"]["energy_j"] == pytest.approx(50.0)
    assert first["(idle)"]["energy_j"] == pytest.approx(50.0)
    assert set(latest) == {"bert", "(idle)"} and latest["bert"]["energy_j"] == pytest.approx(55.0)
    assert latest["(idle)"]["energy_j"] == pytest.approx(45.0)


def test_an_unknown_run_is_one_line_and_exit_2(two_runs):
    r = CliRunner().invoke(cli, ["report", "--ledger", str(two_runs), "--run", "nope"])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no run 'nope'" in lines[0]


def test_documents_refuse_a_run(two_runs):
    r = CliRunner().invoke(cli, ["report", "--ledger", str(two_runs), "--run", "first", "--format", "sci"])
    assert r.exit_code == 2 and "--run" in r.output


def test_latest_in_an_empty_ledger_is_an_error(tmp_path):
    path = tmp_path / "empty.db"
    Ledger.open(path).close()
    r = CliRunner().invoke(cli, ["report", "--ledger", str(path), "--run", "latest"])
    assert r.exit_code == 2 and "no runs in the ledger yet" in r.output


@pytest.mark.parametrize("by", ["request", "name"])
def test_every_grouping_ends_with_the_conservation_line(two_runs, by):
    rows = _json(two_runs, "--by", by)
    spans = sum(r["energy_j"] for g, r in rows.items() if g != "(idle)")
    assert spans + rows["(idle)"]["energy_j"] == pytest.approx(200.0)  # both devices' totals


@pytest.fixture
def requests_ledger(tmp_path):
    path = tmp_path / "req.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r", "node", 1, T0, config={}, devices=[{"id": "gpu:0", "kind": "gpu"}]))
        led.write_spans([
            SpanRecord(f"s{i}", "r", "generate", T0 + timedelta(seconds=i), T0 + timedelta(seconds=i + 1), 1.0,
                       kind="request", request_id=f"req-{i:02d}", model="llama",
                       devices=[DeviceEnergy("gpu:0", 10.0 + (i * 7) % 11, "counter", 10.0 + (i * 7) % 11)])
            for i in range(12)
        ] + [SpanRecord("bg", "r", "other", T0, T0 + timedelta(seconds=5), 5.0,
                        devices=[DeviceEnergy("gpu:0", 3.0, "counter", 3.0)])])
        led.write_device_totals([DeviceTotals("r", "gpu:0", "counter", 400.0, 0.0, 0.0, start=T0,
                                              end=T0 + timedelta(minutes=1))])
    return path


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_a_table_by_request_shows_the_largest_and_totals_every_request(requests_ledger, fmt, monkeypatch):
    import greenmaas_cli.report as report_cli

    monkeypatch.setattr(report_cli, "REQUEST_TABLE_ROWS", 3)
    everything = _json(requests_ledger, "--by", "request")
    r = CliRunner().invoke(cli, ["report", "--ledger", str(requests_ledger), "--by", "request", "--format", fmt])
    assert r.exit_code == 0, r.output
    largest = sorted((g for g in everything if g.startswith("req-")), key=lambda g: -everything[g]["energy_j"])[:3]
    shown = [g for g in everything if g.startswith("req-") and g in r.stdout]
    assert sorted(shown) == sorted(largest)
    assert "(none)" in r.stdout and "(idle)" in r.stdout and "the 3 of 12 requests" in r.stdout
    total = sum(row["energy_j"] for row in everything.values())
    assert f"{total:,.1f}" in r.stdout  # the total line adds up every request, not only those shown
