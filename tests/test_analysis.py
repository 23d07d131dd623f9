"""read_ledger: every table as a DataFrame, with UTC times and stable columns."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from greenmaas.analysis import TABLES, read_ledger
from greenmaas.errors import ConfigError, LedgerError
from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, DeviceTotals, ReadRecord, RunRecord, SampleRecord, SpanRecord

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
SPAN_COLUMNS = [
    "run_id", "span_id", "parent_id", "kind", "name", "model", "phase", "request_id", "tenant",
    "start", "end", "duration_s", "energy_j", "self_energy_j", "method", "weight", "tokens_in",
    "tokens_out", "items", "status", "carbon_g", "carbon_market_g", "cost", "currency",
]


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "l.db"
    with Ledger.open(p) as led:
        led.start_run(RunRecord("r1", "host", 1, T0))
        led.write_spans([
            SpanRecord("p", "r1", "epoch", T0, T0 + timedelta(seconds=10), 10.0, kind="epoch",
                       model="bert", carbon_g=10.0, cost=0.5, currency="EUR",
                       start_mono=1000.125, end_mono=1010.125, link_id="q",
                       devices=[DeviceEnergy("gpu:0", 100.0, "counter", 40.0, self_device_s=5.0,
                                             uncertainty_j=2.5)]),
            SpanRecord("c", "r1", "step", T0, T0 + timedelta(seconds=5), 5.0, parent_id="p",
                       model="bert", tokens_in=3, carbon_g=6.0,
                       devices=[DeviceEnergy("gpu:0", 60.0, "counter", 60.0, self_device_s=5.0)]),
            SpanRecord("u", "r1", "cpu", T0, T0 + timedelta(seconds=1), 1.0,
                       devices=[DeviceEnergy("cpu:0", 0.0, "unmeasurable")]),
        ])
        led.write_samples([SampleRecord("r1", "gpu:0", T0 + timedelta(seconds=i), 10.0 * i, 10.0, "counter")
                           for i in range(3)])
        led.write_device_totals([DeviceTotals("r1", "gpu:0", "counter", 150.0, 100.0, 50.0, start=T0, idle_s=4.0,
                                              uncertainty_j=1.25)])
        led.write([ReadRecord("r1", "gpu:0", 1000.1 + 0.2, 5.0, 300.0), ReadRecord("r1", "cpu:0", 1000.0, 7.0, None, 262144.0),
                   ReadRecord("r1", "gpu:0", 1000.0, error="lost")])
    return p


def test_spans_columns_and_values(path):
    df = read_ledger(path)
    assert list(df.columns[: len(SPAN_COLUMNS)]) == SPAN_COLUMNS
    assert len(df) == 3
    assert str(df["start"].dt.tz) == "UTC" and str(df["end"].dt.tz) == "UTC"
    by_id = df.set_index("span_id")
    assert by_id.loc["p", "energy_j"] == 100.0 and by_id.loc["p", "self_energy_j"] == 40.0
    assert by_id.loc["c", "parent_id"] == "p" and by_id.loc["c", "tokens_in"] == 3
    assert pd.isna(by_id.loc["u", "energy_j"])  # unmeasurable: NaN, never 0 J
    assert by_id.loc["p", "start"] == pd.Timestamp(T0)
    assert df["self_energy_j"].sum() == 100.0  # self energy sums without double counting


@pytest.mark.parametrize("table", list(TABLES))
def test_every_table_has_its_columns_full_or_empty(path, tmp_path, table):
    full = read_ledger(path, table)
    empty_path = tmp_path / "empty.db"
    Ledger.open(empty_path).close()
    empty = read_ledger(empty_path, table)
    assert list(full.columns) == list(empty.columns) == list(TABLES[table][1])
    assert len(full) > 0 and len(empty) == 0
    for c in ("start", "end", "t"):
        if c in full.columns:
            assert str(full[c].dt.tz) == "UTC" and str(empty[c].dt.tz) == "UTC"


def test_runs_samples_and_devices(path):
    runs = read_ledger(path, "runs")
    assert runs.loc[0, "run_id"] == "r1" and runs.loc[0, "host"] == "host"
    samples = read_ledger(path, "samples")
    assert list(samples["energy_j"]) == [0.0, 10.0, 20.0]
    devices = read_ledger(path, "devices")
    assert devices.loc[0, "idle_j"] == 50.0 and devices.loc[0, "total_j"] == 150.0
    assert devices.loc[0, "idle_s"] == 4.0
    per_device = read_ledger(path, "span_devices").set_index("span_id")
    assert set(per_device["device"]) == {"gpu:0", "cpu:0"}
    assert per_device.loc["p", "self_device_s"] == 5.0 and per_device.loc["c", "self_device_s"] == 5.0


def test_schema_2_columns_and_the_raw_reads(path):
    df = read_ledger(path).set_index("span_id")
    assert (df.loc["p", "start_mono"], df.loc["p", "end_mono"], df.loc["p", "link_id"]) == (1000.125, 1010.125, "q")
    assert df.loc["p", "uncertainty_j"] == 2.5 and pd.isna(df.loc["c", "uncertainty_j"])
    assert pd.isna(df.loc["u", "start_mono"])
    assert read_ledger(path, "span_devices").set_index("span_id").loc["p", "uncertainty_j"] == 2.5
    assert read_ledger(path, "devices").loc[0, "uncertainty_j"] == 1.25
    reads = read_ledger(path, "reads")
    assert list(reads.columns) == ["run_id", "device", "t_mono", "energy_j", "power_w", "max_energy_j", "error",
                                   "t_start_mono"]
    assert list(zip(reads["device"], reads["t_mono"])) == [("cpu:0", 1000.0), ("gpu:0", 1000.0),
                                                           ("gpu:0", 1000.1 + 0.2)]  # by device, then time
    assert reads.loc[1, "error"] == "lost" and pd.isna(reads.loc[1, "energy_j"])
    assert reads.loc[0, "max_energy_j"] == 262144.0 and pd.isna(reads.loc[0, "power_w"])


def test_carbon_and_cost_come_back_as_recorded(path):
    df = read_ledger(path).set_index("span_id")
    assert {"carbon_g", "carbon_market_g", "cost", "currency"} <= set(df.columns)
    # As the meter recorded them: a parent's figure covers its children (like energy_j).
    assert df.loc["p", "carbon_g"] == 10.0 and df.loc["c", "carbon_g"] == 6.0
    assert df.loc["p", "cost"] == 0.5 and df.loc["p", "currency"] == "EUR"
    assert pd.isna(df.loc["c", "cost"]) and pd.isna(df.loc["u", "carbon_market_g"])


def test_accepts_an_open_ledger_and_the_environment(path, monkeypatch):
    with Ledger.open(path) as led:
        assert len(read_ledger(led)) == 3
    monkeypatch.setenv("GREENMAAS_LEDGER", str(path))
    assert len(read_ledger()) == 3


def test_unknown_table_lists_the_valid_ones(path):
    with pytest.raises(ConfigError, match="spans, runs, samples, devices, span_devices"):
        read_ledger(path, "bogus")


def test_missing_ledger_is_not_created(tmp_path):
    with pytest.raises(LedgerError, match="no ledger at"):
        read_ledger(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()


@pytest.fixture
def two_runs(path):
    with Ledger.open(path) as led:
        later = T0 + timedelta(days=2)
        led.start_run(RunRecord("r2", "host", 2, later))
        led.write_spans([
            SpanRecord(f"s{i}", "r2", "step", later + timedelta(seconds=i), later + timedelta(seconds=i + 1), 1.0,
                       model="gpt" if i % 2 else "bert", devices=[DeviceEnergy("gpu:0", 1.0 + i, "counter", 1.0 + i)])
            for i in range(25)
        ])
        led.write_device_totals([DeviceTotals("r2", "gpu:0", "counter", 400.0, 325.0, 75.0, start=later)])
    return path


def test_filters_select_in_the_database(two_runs):
    everything = read_ledger(two_runs)
    assert len(everything) == 28
    assert set(read_ledger(two_runs, run="r1")["span_id"]) == {"p", "c", "u"}
    assert set(read_ledger(two_runs, run="latest")["run_id"]) == {"r2"}
    assert len(read_ledger(two_runs, model="gpt")) == 12 and len(read_ledger(two_runs, model="bert")) == 15
    assert set(read_ledger(two_runs, since="2024-05-02")["run_id"]) == {"r2"}
    assert set(read_ledger(two_runs, until="2024-05-01")["run_id"]) == {"r1"}  # a bare date: its whole day
    assert read_ledger(two_runs, run="r2", model="gpt", since=T0 + timedelta(days=2, seconds=10))["span_id"].tolist() == [
        f"s{i}" for i in range(11, 25, 2)]
    devices = read_ledger(two_runs, "span_devices", model="bert", run="r2")
    assert devices["energy_j"].sum() == pytest.approx(sum(1.0 + i for i in range(0, 25, 2)))
    assert read_ledger(two_runs, "devices", run="latest")["total_j"].tolist() == [400.0]
    assert read_ledger(two_runs, "runs", since="2024-05-03")["run_id"].tolist() == ["r2"]


def test_chunks_stream_the_same_rows(two_runs):
    whole = read_ledger(two_runs)
    parts = list(read_ledger(two_runs, chunksize=4))
    assert [len(p) for p in parts] == [4] * 7
    joined = pd.concat(parts, ignore_index=True)

    def plain(df):  # None and NaN alike (concat keeps one where a frame had the other)
        return df.astype(object).where(df.notna(), None)

    pd.testing.assert_frame_equal(plain(joined), plain(whole))
    assert [len(p) for p in read_ledger(two_runs, "span_devices", model="gpt", chunksize=5)] == [5, 5, 2]


@pytest.mark.parametrize("kw", [
    {"table": "reads", "since": "2024-05-01"}, {"table": "runs", "model": "bert"}, {"since": "noon"},
    {"chunksize": 0}, {"until": "2024-02-30"},
])
def test_a_filter_a_table_cannot_take_is_one_clear_error(two_runs, kw):
    with pytest.raises(ConfigError):
        read_ledger(two_runs, **kw)
