"""SQL-injection strings through every filter a user types: the CLI's and ``read_ledger``'s.

The ledger holds spans and runs whose names *are* such strings, so a filter must find exactly
those rows (compared with sums over the records written), find nothing for strings not stored,
and leave the ledger as it was (same rows, same file bytes).
"""

from __future__ import annotations

import csv
import inspect
import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from greenmaas.analysis import read_ledger
from greenmaas.errors import GreenmaasError
from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, ReadRecord, RunRecord, SpanRecord
from greenmaas_cli.main import cli

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)

#: Stored as model names and a run id, and typed as filters.
STORED = [
    "'; DROP TABLE spans; --",
    '" OR 1=1 --',
    "bert' OR '1'='1",
    "100%",  # LIKE wildcards must match themselves only
    "a_b",
    "モデル'); DELETE FROM runs; --",
    "\u202eevil\u202c\"",  # bidirectional control characters
    "m" * 5000 + "'",  # very long
]
#: Typed as filters, never stored: each must select nothing.
NOT_STORED = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "%",
    "_",
    "bert'; --",
    "*",
    "1; SELECT * FROM meta",
    "x" * 20_000,
]
PLAIN = "bert"


def _span(span_id, run_id, model, start, energy):
    return SpanRecord(
        span_id=span_id, run_id=run_id, name="step", model=model,
        start=T0 + timedelta(seconds=start), end=T0 + timedelta(seconds=start + 1), duration_s=1.0,
        start_mono=float(start), end_mono=float(start + 1),
        devices=[DeviceEnergy("gpu:0", energy, "counter", energy)],
    )


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The ledger and the spans written to it: {model: [(span_id, run_id, energy_j)]}."""
    path = tmp_path_factory.mktemp("injection") / "ledger.db"
    truth: dict[str, list[tuple[str, str, float]]] = {}
    runs = {"r1": [PLAIN, *STORED], STORED[0]: [PLAIN, STORED[1]]}
    with Ledger.open(path) as led:
        n = 0
        for run_id, models in runs.items():
            led.start_run(RunRecord(run_id, "node-1", 4242, T0, devices=[{"id": "gpu:0", "kind": "gpu"}]))
            led.write_reads([ReadRecord(run_id, "gpu:0", float(t), 100.0 * t) for t in range(0, 40)])
            records = []
            for i, model in enumerate(models):
                for k in range(2):  # two spans per model, different energies
                    n += 1
                    energy = 10.0 * n + k
                    records.append(_span(f"s{n}", run_id, model, 2 * i + k, energy))
                    truth.setdefault(model, []).append((f"s{n}", run_id, energy))
            led.write_spans(records)
            led.end_run(run_id, T0 + timedelta(seconds=60))
    return path, truth


def state(path):
    """Every row of the ledger, as SQL text, and the main file's bytes."""
    raw = sqlite3.connect(path)
    try:
        rows = list(raw.iterdump())
    finally:
        raw.close()
    return rows, path.read_bytes()


def invoke(runner, args):
    result = runner.invoke(cli, args)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize("value", [PLAIN, *STORED, *NOT_STORED])
def test_report_model_filter_selects_exactly_that_model(runner, stored, value):
    path, truth = stored
    before = state(path)
    result = invoke(runner, ["report", "--ledger", str(path), "--model", value, "--by", "model",
                             "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = [r for r in json.loads(result.stdout) if r["group"] != "(idle)"]
    expected = truth.get(value, [])
    if expected:
        (row,) = rows
        assert row["group"] == value and row["spans"] == len(expected)
        assert row["energy_j"] == pytest.approx(sum(e for _, _, e in expected), rel=1e-12)
    else:
        assert rows == []
    assert state(path) == before


@pytest.mark.parametrize("value", STORED[:3] + NOT_STORED[:3])
def test_report_by_request_and_run_with_a_model_filter(runner, stored, value):
    path, truth = stored
    before = state(path)
    for by in ("run", "request", "name"):
        result = invoke(runner, ["report", "--ledger", str(path), "--model", value, "--by", by, "--format", "json"])
        assert result.exit_code == 0, result.output
        rows = [r for r in json.loads(result.stdout) if r["group"] != "(idle)"]
        total = sum(r["energy_j"] for r in rows)
        assert total == pytest.approx(sum(e for _, _, e in truth.get(value, [])), rel=1e-12)
        if by == "run":
            assert {r["group"] for r in rows} == {run for _, run, _ in truth.get(value, [])}
    assert state(path) == before


@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("value", STORED[:3] + NOT_STORED[:2] + ["2024-05-01'; DROP TABLE spans; --"])
def test_time_filters_refuse_injection_strings(runner, stored, option, value):
    path, _ = stored
    before = state(path)
    result = invoke(runner, ["report", "--ledger", str(path), option, value])
    assert result.exit_code == 2 and result.stdout == ""
    assert f"Invalid value for '{option}'" in result.stderr and "invalid date" in result.stderr
    assert state(path) == before


@pytest.mark.parametrize("option", ["--by", "--format", "--location", "--price", "--hardware-price"])
@pytest.mark.parametrize("value", [STORED[0], NOT_STORED[0], STORED[-1]])
def test_other_report_options_refuse_injection_strings(runner, stored, option, value):
    path, _ = stored
    before = state(path)
    result = invoke(runner, ["report", "--ledger", str(path), option, value])
    assert result.exit_code == 2 and result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])  # (click's usage lines before)
    assert option in errors[0]
    assert state(path) == before


@pytest.mark.parametrize("run_id", [STORED[0], "r1"])
def test_export_run_filter_exports_exactly_that_run(runner, stored, tmp_path, run_id):
    path, truth = stored
    before = state(path)
    trace, spans = tmp_path / "trace.csv", tmp_path / "spans.csv"
    result = invoke(runner, ["export", "--ledger", str(path), "--run", run_id, "--trace", str(trace),
                             "--spans", str(spans)])
    assert result.exit_code == 0, result.output
    with open(spans, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    expected = {(sid, model) for model, items in truth.items() for sid, run, _ in items if run == run_id}
    assert {(r["id"], r["model"]) for r in rows} == expected
    assert state(path) == before


@pytest.mark.parametrize("run_id", NOT_STORED[:5] + ["latest' OR 1=1 --"])
def test_export_of_a_run_not_there_is_one_line_and_writes_nothing(runner, stored, tmp_path, run_id):
    path, _ = stored
    before = state(path)
    out = tmp_path / "out"
    out.mkdir()
    result = invoke(runner, ["export", "--ledger", str(path), "--run", run_id, "--trace", str(out / "t.csv"),
                             "--spans", str(out / "s.csv")])
    assert result.exit_code == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert list(out.iterdir()) == []
    assert state(path) == before


def test_runs_lists_an_injection_run_id_verbatim(runner, stored):
    path, _ = stored
    before = state(path)
    result = invoke(runner, ["runs", "--ledger", str(path), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert sorted(r["run_id"] for r in json.loads(result.stdout)) == sorted(["r1", STORED[0]])
    assert state(path) == before


def test_read_ledger_reads_back_every_string_verbatim(stored):
    path, truth = stored
    before = state(path)
    spans = read_ledger(path)
    got = {(r.span_id, r.run_id, r.model, r.self_energy_j) for r in spans.itertuples()}
    assert got == {(sid, run, model, e) for model, items in truth.items() for sid, run, e in items}
    assert state(path) == before


@pytest.mark.parametrize("value", [STORED[0], "spans; DROP TABLE runs", "spans --", NOT_STORED[0]])
def test_read_ledger_table_refuses_anything_but_its_names(stored, value):
    path, _ = stored
    before = state(path)
    with pytest.raises(GreenmaasError, match="unknown table"):
        read_ledger(path, value)
    assert state(path) == before


def _read_ledger_filters():
    params = inspect.signature(read_ledger).parameters
    return [name for name in ("model", "run", "run_id", "since", "until") if name in params]


@pytest.mark.parametrize("name", ["model", "run"])
def test_read_ledger_filters_select_exactly_their_rows(stored, name):
    path, truth = stored
    present = _read_ledger_filters()
    key = name if name in present else ("run_id" if name == "run" and "run_id" in present else None)
    if key is None:
        pytest.skip(f"read_ledger has no {name} filter")
    before = state(path)
    for value in [PLAIN, "r1", *STORED, *NOT_STORED]:
        spans = read_ledger(path, **{key: value})
        if name == "model":
            expected = {sid for sid, _, _ in truth.get(value, [])}
        else:
            expected = {sid for items in truth.values() for sid, run, _ in items if run == value}
        assert set(spans["span_id"]) == expected, value
    assert state(path) == before


@pytest.mark.parametrize("name", ["since", "until"])
def test_read_ledger_time_filters_refuse_injection_strings(stored, name):
    path, _ = stored
    if name not in _read_ledger_filters():
        pytest.skip(f"read_ledger has no {name} filter")
    before = state(path)
    for value in [STORED[0], NOT_STORED[0], "2024-05-01'; --"]:
        with pytest.raises(GreenmaasError):
            read_ledger(path, **{name: value})
    assert state(path) == before
