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


def fails(runner, args, code=1):
    result = runner.invoke(cli, args)
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    return lines


def test_version(runner):
    assert __version__ in ok(runner, ["--version"]).output


ROW_KEYS = ["group", "spans", "duration_s", "energy_j", "carbon_g", "energy_cost", "hardware_cost", "cost",
            "currency"]
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
            assert set(run) == {"run_id", "host", "pid", "start", "end", "status", "spans", "energy_j"}
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
                                      "method": "counter", "uuid": "GPU-123", "note": "MIG parent"}
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
