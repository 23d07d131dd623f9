"""The CLI, command by command and format by format, through click's CliRunner."""

from __future__ import annotations

import csv
import io
import json

import pytest

from greenmaas import __version__
from greenmaas.sources.base import Detection, Device, Source, Unused
from greenmaas_cli.main import cli


def ok(runner, args, **kw):
    result = runner.invoke(cli, args, catch_exceptions=False, **kw)
    assert result.exit_code == 0, result.output
    return result


def fails(runner, args, code=2):
    result = runner.invoke(cli, args)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    return lines


def test_version(runner):
    assert __version__ in ok(runner, ["--version"]).output


ROW_KEYS = ["group", "spans", "duration_s", "energy_j", "method", "uncertainty_j", "uncertainty_source",
            "carbon_g", "energy_cost", "hardware_cost", "cost", "currency"]
WORLD = 475.0  # codecarbon's world average, g/kWh: what a run that recorded no location gets


class TestReport:
    def test_json_has_numbers_and_the_keys(self, runner, ledger_path):
        data = json.loads(ok(runner, ["report", "--ledger", str(ledger_path), "--format", "json"]).stdout)
        assert [r["group"] for r in data] == ["bert", "llama|7b", "(idle)"]
        assert all(list(r) == ROW_KEYS for r in data)
        bert = data[0]
        assert {k: bert[k] for k in ROW_KEYS[:4]} == {"group": "bert", "spans": 2, "duration_s": 100.0,
                                                       "energy_j": 1000.0}
        assert isinstance(bert["energy_j"], float) and isinstance(bert["spans"], int)
        assert bert["carbon_g"] == pytest.approx(1000.0 / 3.6e6 * WORLD)
        assert bert["cost"] is None and bert["currency"] is None  # nothing priced it

    def test_csv(self, runner, ledger_path):
        out = ok(runner, ["report", "--ledger", str(ledger_path), "--format", "csv", "--by", "phase"]).stdout
        rows = list(csv.DictReader(io.StringIO(out)))
        assert list(rows[0]) == ROW_KEYS
        assert {r["group"]: float(r["energy_j"]) for r in rows} == {
            "training": 1000.0, "inference": 200.0, "(idle)": 300.0,
        }

    def test_markdown(self, runner, ledger_path):
        out = ok(runner, ["report", "--ledger", str(ledger_path), "--format", "markdown"]).stdout
        lines = [l for l in out.splitlines() if l.startswith("|")]
        assert lines[0].startswith("| Model | Spans | Duration (s) | Energy (J)")
        assert set(lines[1]) <= set("|-: ")
        assert "llama\\|7b" in out  # pipes in values are escaped
        assert lines[-1].startswith("| **Total** | **3** |") and "**1,500.0**" in lines[-1]

    def test_table_has_units_and_a_total(self, runner, ledger_path):
        out = ok(runner, ["report", "--ledger", str(ledger_path)]).stdout
        for text in ("Energy (J)", "Duration (s)", "Total", "1,500.0", "bert", "(idle)", "llama|7b"):
            assert text in out

    def test_filters(self, runner, ledger_path):
        args = ["report", "--ledger", str(ledger_path), "--format", "json"]
        data = json.loads(ok(runner, args + ["--model", "bert"]).stdout)
        assert [r["group"] for r in data] == ["bert"]
        data = json.loads(ok(runner, args + ["--since", "2024-05-02"]).stdout)
        assert data == []
        data = json.loads(ok(runner, args + ["--by", "day", "--until", "2024-05-01"]).stdout)
        assert [r["group"] for r in data] == ["2024-05-01", "(idle)"]
        data = json.loads(ok(runner, args + ["--by", "request", "--since", "2024-05-01T10:01:00Z"]).stdout)
        assert [{k: r[k] for k in ROW_KEYS[:4]} for r in data] == [
            {"group": "req-1", "spans": 1, "duration_s": 10.0, "energy_j": 200.0}
        ]

    def test_empty_selection_in_a_table_says_so(self, runner, ledger_path):
        result = ok(runner, ["report", "--ledger", str(ledger_path), "--model", "nope"])
        assert "No spans" in result.stderr

    def test_default_ledger_comes_from_the_environment(self, runner, ledger_path):
        result = ok(runner, ["report", "--format", "json"], env={"GREENMAAS_LEDGER": str(ledger_path)})
        assert json.loads(result.stdout)[0]["group"] == "bert"


class TestRuns:
    @pytest.mark.parametrize("fmt", ["table", "csv", "json", "markdown"])
    def test_every_format(self, runner, ledger_path, fmt):
        out = ok(runner, ["runs", "--ledger", str(ledger_path), "--format", fmt]).stdout
        assert "r1" in out and "node-1" in out
        if fmt == "json":
            (run,) = json.loads(out)
            assert set(run) == {"run_id", "host", "pid", "start", "end", "status", "heartbeat", "spans", "energy_j"}
            assert run["spans"] == 3 and run["energy_j"] == 1500.0 and run["status"] == "finished"
            assert run["start"] == "2024-05-01T10:00:00+00:00"
        if fmt == "csv":
            (run,) = csv.DictReader(io.StringIO(out))
            assert run["energy_j"] == "1500.0"


class FakeSource(Source):
    name = "fake"

    def __init__(self):
        self.closed = False

    def devices(self):
        return [Device("gpu:0", "gpu", "NVIDIA H100 [80GB]", "counter", "GPU-123", "MIG parent"),
                Device("cpu:0", "cpu", "Xeon", "estimate")]

    def close(self):
        self.closed = True


class TestDevices:
    def detection(self):
        return Detection([FakeSource()], [Unused("rapl", "no /sys/class/powercap here")])

    def test_table_lists_devices_and_unused_methods(self, runner):
        det = self.detection()
        out = ok(runner, ["devices"], obj={"detect": lambda: det}).stdout
        for text in ("gpu:0", "NVIDIA H100 [80GB]", "counter", "GPU-123", "MIG parent", "cpu:0",
                     "rapl", "no /sys/class/powercap here"):
            assert text in out
        assert det.sources[0].closed

    def test_json(self, runner):
        out = ok(runner, ["devices", "--format", "json"], obj={"detect": self.detection}).stdout
        data = json.loads(out)
        assert data["devices"][0] == {"id": "gpu:0", "kind": "gpu", "name": "NVIDIA H100 [80GB]",
                                      "method": "counter", "power_field": None, "uuid": "GPU-123",
                                      "measured_by": None, "note": "MIG parent"}
        assert data["unused"] == [{"source": "rapl", "reason": "no /sys/class/powercap here"}]

    def test_nothing_found(self, runner):
        out = ok(runner, ["devices"], obj={"detect": lambda: Detection([], [Unused("nvml", "no driver")])})
        assert "No measurable devices" in out.stdout and "no driver" in out.stdout


class TestErrors:
    def test_missing_ledger(self, runner, tmp_path):
        missing = tmp_path / "missing.db"
        for cmd in (["report"], ["runs"]):
            (line,) = fails(runner, cmd + ["--ledger", str(missing)])
            assert line == f"Error: no ledger at {missing}"
        assert not missing.exists()

    def test_not_a_ledger(self, runner, tmp_path):
        junk = tmp_path / "junk.db"
        junk.write_text("not sqlite at all\n")
        (line,) = fails(runner, ["report", "--ledger", str(junk)])
        assert line.startswith("Error: ") and "not a greenmaas ledger" in line
        assert junk.read_text() == "not sqlite at all\n"

    def test_bad_date(self, runner, ledger_path):
        lines = fails(runner, ["report", "--ledger", str(ledger_path), "--since", "last tuesday"], code=2)
        assert "Invalid value for '--since'" in lines[-1] and "last tuesday" in lines[-1]

    def test_unknown_group(self, runner, ledger_path):
        lines = fails(runner, ["report", "--ledger", str(ledger_path), "--by", "colour"], code=2)
        assert "Invalid value for '--by'" in lines[-1]

    def test_bad_url(self, runner):
        (line,) = fails(runner, ["runs", "--ledger", "nosuchdialect://x"])
        assert line.startswith("Error: nosuchdialect://x")


class TestUncertainty:
    """± J beside the method, in every format: recorded with the spans, or the method's stated."""

    @pytest.fixture
    def measured(self, tmp_path):
        from datetime import datetime, timedelta, timezone

        from greenmaas.ledger import Ledger
        from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord

        t0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)

        def s(span_id, energy, self_j, u, **kw):
            return SpanRecord(span_id, "r1", "step", t0, t0 + timedelta(seconds=10), 10.0, devices=[
                DeviceEnergy("gpu:0", energy, "counter", self_j, uncertainty_j=u)], **kw)

        path = tmp_path / "m.db"
        with Ledger.open(path) as led:
            led.start_run(RunRecord("r1", "node-1", 1, t0))
            led.write_spans([s("p", 1000.0, 400.0, 12.5, model="bert"),
                             s("c", 600.0, 600.0, 7.25, model="bert", parent_id="p"),
                             s("q", 200.0, 200.0, 2.0, model="llama")])
            led.write_device_totals([DeviceTotals("r1", "gpu:0", "counter", 1500.0, 1200.0, 300.0,
                                                  start=t0, uncertainty_j=3.0)])
        return path

    def test_json_and_csv_carry_method_uncertainty_and_its_source(self, runner, measured):
        args = ["report", "--ledger", str(measured)]
        data = {r["group"]: r for r in json.loads(ok(runner, args + ["--format", "json"]).stdout)}
        assert {g: (r["method"], r["uncertainty_j"], r["uncertainty_source"]) for g, r in data.items()} == {
            "bert": ("counter", 12.5, "recorded"), "llama": ("counter", 2.0, "recorded"),
            "(idle)": ("counter", 3.0, "recorded")}
        rows = {r["group"]: r for r in csv.DictReader(io.StringIO(ok(runner, args + ["--format", "csv"]).stdout))}
        assert (rows["bert"]["method"], rows["bert"]["uncertainty_j"], rows["bert"]["uncertainty_source"]) == (
            "counter", "12.5", "recorded")

    def test_table_shows_a_plus_minus_column_beside_the_method(self, runner, measured):
        out = ok(runner, ["report", "--ledger", str(measured)]).stdout
        header = next(line for line in out.splitlines() if "Model" in line)
        assert header.index("Method") < header.index("± J")
        bert = next(line for line in out.splitlines() if "bert" in line)
        assert "counter" in bert and "12.5" in bert
        assert "17.5" in out  # the total line: 12.5 + 2.0 + 3.0
        assert "(3 spans; ± 14.5 J)" in out and "stated uncertainty ×" not in out

    def test_markdown_has_the_column_and_the_card_states_it(self, runner, measured):
        out = ok(runner, ["report", "--ledger", str(measured), "--format", "markdown"]).stdout
        header = next(line for line in out.splitlines() if line.startswith("| Model"))
        assert "| Method | ± J |" in header
        assert "(1,000.0 J) ± 12.5 J of IT energy" in out
        assert "**17.5**" in out.splitlines()[[i for i, l in enumerate(out.splitlines()) if "**Total**" in l][0]]

    def test_an_old_ledger_says_the_figure_is_the_methods_stated_one(self, runner, ledger_path):
        out = ok(runner, ["report", "--ledger", str(ledger_path)]).stdout
        assert "± J" in out and "50.0" in out  # bert: 1,000 J × 5%
        assert "Note: ± J is the measurement method's stated uncertainty × energy" in out
        data = json.loads(ok(runner, ["report", "--ledger", str(ledger_path), "--format", "json"]).stdout)
        assert {r["uncertainty_source"] for r in data} == {"stated"}
        md = ok(runner, ["report", "--ledger", str(ledger_path), "--format", "markdown"]).stdout
        assert "± 50.0 J (the method's stated uncertainty: none recorded)" in md
        assert "**Note:** ± J is the measurement method's stated uncertainty" in md
