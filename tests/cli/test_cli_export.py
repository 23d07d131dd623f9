"""``greenmaas export``: a run's raw reads and spans as the CSV files ``greenmaas attribute`` reads,
floats bit for bit; every error a user can cause is one line, exit 2, and no file written."""

from __future__ import annotations

import csv
import io
import struct
from datetime import datetime, timedelta, timezone

import pytest

from greenmaas.export import SPAN_COLUMNS, TRACE_COLUMNS, export_run
from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, ReadRecord, RunRecord, SpanRecord
from greenmaas_cli.main import cli

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
#: Monotonic seconds far from 0, with every digit mattering.
M0 = 81234.56789012345

READS = [  # as submitted: interleaved devices, not in order
    ReadRecord("r2", "gpu:0", M0, 123456789.123456789, 301.25, None),  # began at M0 - 1e-4 (below)
    ReadRecord("r2", "cpu:0", M0 + 0.001, 262143.99993896484, None, 262143.999939),
    ReadRecord("r2", "gpu:0", M0 + 0.1 + 0.2, 123456789.123456789 + 30.000000000000004, 299.9, None),
    ReadRecord("r2", "cpu:0", M0 + 0.101, 5.9604644775390625e-08, None, 262143.999939),
    ReadRecord("r2", "gpu:0", M0 + 0.2, error="NVML_ERROR_GPU_IS_LOST, try again"),
    ReadRecord("r2", "gpu:0", M0 + 1 / 3, 2.0**53 + 2, 5e-324, None),
]
READS[0].t_start_mono = M0 - 1e-4  # when the read began (set so, whether or not the record has it yet)
DEVICES = [{"id": "gpu:0", "kind": "gpu", "method": "counter", "power_field": "average_1s"},
           {"id": "cpu:0", "kind": "cpu", "method": "counter"}, {"id": "npu:0", "method": "unmeasurable"}]


def span(span_id, start, end, devices, **kw):
    return SpanRecord(
        span_id=span_id, run_id=kw.pop("run_id", "r2"), name=kw.pop("name", "step"),
        start=T0 + timedelta(seconds=start), end=T0 + timedelta(seconds=end), duration_s=end - start,
        start_mono=M0 + start, end_mono=M0 + end,
        devices=[DeviceEnergy(d, 1.0, "unmeasurable" if d == "npu:0" else "counter", 1.0) for d in devices],
        **kw,
    )


SPANS = [
    span("batch", 0.05, 0.3, ["gpu:0"], kind="batch", model="llama", weight=1.0),
    span("req-a", 0.01, 0.31, ["gpu:0", "cpu:0", "npu:0"], kind="request", model="llama",
         request_id="a", tenant="acme", tokens_out=30),
    span("share-a", 0.05, 0.3, ["gpu:0"], kind="share", parent_id="batch", link_id="req-a",
         weight=2.0 / 3.0, model="llama, \"quoted\"", request_id="a", status="error"),
    span("npu-only", 0.1, 0.2, ["npu:0"]),  # on no device of the trace: left out
]


@pytest.fixture
def ledger_path(tmp_path):
    path = tmp_path / "runs.db"
    with Ledger.open(path) as led:
        led.write([RunRecord("r1", "node", 1, T0),
                   RunRecord("r2", "node", 2, T0 + timedelta(hours=1), devices=DEVICES)])
        led.write(READS[:3] + SPANS[:2] + READS[3:] + SPANS[2:])
        led.write([span("old", 0, 1, ["gpu:0"], run_id="r1")])  # r1: no reads, as before schema 2
        led.end_run("r2", T0 + timedelta(hours=2))
        tenant = led.pseudonymise("acme")
    return path, tenant


def run_export(runner, ledger, tmp_path, *extra, trace="trace.csv", spans="spans.csv"):
    args = ["export", "--ledger", str(ledger), "--trace", str(tmp_path / trace), "--spans",
            str(tmp_path / spans), *extra]
    return runner.invoke(cli, args)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_exports_reads_and_spans_exactly(runner, ledger_path, tmp_path):
    ledger, tenant = ledger_path
    result = run_export(runner, ledger, tmp_path)
    assert result.exit_code == 0, result.output
    assert "run r2" in result.stdout and "6 reads of 2 device(s)" in result.stdout
    assert "3 spans" in result.stdout and "1 on no traced device left out" in result.stdout

    trace = (tmp_path / "trace.csv").read_text()
    r = {i: rec for i, rec in enumerate(READS)}
    assert trace == "\n".join([
        "t,device,energy_j,power_w,max_energy_j,error,t_start,method,power_field",
        f"{r[1].t_mono!r},cpu:0,262143.99993896484,,262143.999939,,,counter,",
        f"{r[3].t_mono!r},cpu:0,5.960464477539063e-08,,262143.999939,,,counter,",
        f"{r[0].t_mono!r},gpu:0,123456789.12345679,301.25,,,{M0 - 1e-4!r},counter,average_1s",
        f"{r[4].t_mono!r},gpu:0,,,,\"NVML_ERROR_GPU_IS_LOST, try again\",,counter,average_1s",
        f"{r[2].t_mono!r},gpu:0,{r[2].energy_j!r},299.9,,,,counter,average_1s",
        f"{r[5].t_mono!r},gpu:0,9007199254740994.0,5e-324,,,,counter,average_1s",
    ]) + "\n"
    rows = list(csv.DictReader(io.StringIO(trace)))
    got = {(row["device"], bits(float(row["t"]))) for row in rows}
    assert got == {(rec.device, bits(rec.t_mono)) for rec in READS}  # every time bit for bit
    for row, rec in zip(rows, [READS[i] for i in (1, 3, 0, 4, 2, 5)]):
        assert row["energy_j"] == ("" if rec.energy_j is None else repr(rec.energy_j))
        if rec.energy_j is not None:
            assert bits(float(row["energy_j"])) == bits(rec.energy_j)

    spans = (tmp_path / "spans.csv").read_text()
    by_id = {s.span_id: s for s in SPANS}
    a, b, sh = by_id["req-a"], by_id["batch"], by_id["share-a"]
    assert spans == "\n".join([
        "id,start,end,devices,weight,model,request_id,tenant,parent,kind,link,status,name",
        f"req-a,{a.start_mono!r},{a.end_mono!r},cpu:0;gpu:0,1.0,llama,a,{tenant},,request,,ok,step",
        f"batch,{b.start_mono!r},{b.end_mono!r},gpu:0,1.0,llama,,,,batch,,ok,step",
        f"share-a,{sh.start_mono!r},{sh.end_mono!r},gpu:0,{2.0 / 3.0!r},\"llama, \"\"quoted\"\"\",a,,batch,"
        "share,req-a,error,step",
    ]) + "\n"
    for row in csv.DictReader(io.StringIO(spans)):
        s = by_id[row["id"]]
        assert bits(float(row["start"])) == bits(s.start_mono) and bits(float(row["end"])) == bits(s.end_mono)
        assert bits(float(row["weight"])) == bits(s.weight)


def test_columns_are_what_attribute_reads():
    assert TRACE_COLUMNS[:6] == ("t", "device", "energy_j", "power_w", "max_energy_j", "error")
    assert SPAN_COLUMNS[:12] == ("id", "start", "end", "devices", "weight", "model", "request_id", "tenant",
                                 "parent", "kind", "link", "status")


def test_latest_is_the_run_that_started_last_and_a_run_can_be_named(runner, ledger_path, tmp_path):
    ledger, _ = ledger_path
    assert export_run(ledger, trace=tmp_path / "t.csv", spans=tmp_path / "s.csv").run_id == "r2"
    done = export_run(ledger, run="r2", trace=tmp_path / "t2.csv", spans=tmp_path / "s2.csv")
    assert (done.reads, done.devices, done.span_rows, done.spans_left_out) == (6, ("cpu:0", "gpu:0"), 3, 1)
    assert (tmp_path / "t.csv").read_bytes() == (tmp_path / "t2.csv").read_bytes()


def test_the_export_loads_as_a_trace_and_spans(runner, tmp_path):
    """What `greenmaas attribute` needs of the files: its loaders take them as written."""
    from greenmaas.attribution.offline import load_spans
    from greenmaas.sources.replay import load_trace

    path = tmp_path / "ok.db"
    with Ledger.open(path) as led:
        led.write([RunRecord("r", "node", 1, T0)]
                  + [ReadRecord("r", "gpu:0", M0 + i / 10, 1000.0 + 30.0 * i, 300.0) for i in range(10)]
                  + [span("x", 0.1, 0.5, ["gpu:0"], run_id="r"), span("y", 0.3, 0.7, ["gpu:0"], run_id="r")])
    export_run(path, trace=tmp_path / "t.csv", spans=tmp_path / "s.csv")
    trace = load_trace(tmp_path / "t.csv")
    assert [bits(t) for t in trace["gpu:0"].t] == [bits(M0 + i / 10) for i in range(10)]
    table = load_spans(tmp_path / "s.csv", set(trace))
    assert table.ids == ["x", "y"] and bits(table.start[0]) == bits(M0 + 0.1)


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ")
    return line


class TestErrors:
    def test_no_such_run(self, runner, ledger_path, tmp_path):
        ledger, _ = ledger_path
        line = error_line(run_export(runner, ledger, tmp_path, "--run", "nope"))
        assert "'nope'" in line and str(ledger) in line
        assert not (tmp_path / "trace.csv").exists() and not (tmp_path / "spans.csv").exists()

    def test_a_run_recorded_before_schema_2_has_no_reads(self, runner, ledger_path, tmp_path):
        ledger, _ = ledger_path
        line = error_line(run_export(runner, ledger, tmp_path, "--run", "r1"))
        assert "r1" in line and "no raw reads" in line and str(ledger) in line
        assert not (tmp_path / "trace.csv").exists()

    def test_an_empty_ledger_has_no_latest_run(self, runner, tmp_path):
        Ledger.open(tmp_path / "empty.db").close()
        line = error_line(run_export(runner, tmp_path / "empty.db", tmp_path))
        assert "no runs" in line

    def test_missing_and_corrupt_ledgers(self, runner, tmp_path):
        line = error_line(run_export(runner, tmp_path / "missing.db", tmp_path))
        assert line == f"Error: no ledger at {tmp_path / 'missing.db'}"
        assert not (tmp_path / "missing.db").exists()
        junk = tmp_path / "junk.db"
        junk.write_text("not a database\n")
        line = error_line(run_export(runner, junk, tmp_path))
        assert str(junk) in line and "not a greenmaas ledger" in line
        assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.db"]

    def test_an_output_in_a_missing_directory(self, runner, ledger_path, tmp_path):
        ledger, _ = ledger_path
        line = error_line(run_export(runner, ledger, tmp_path, spans="no/such/dir/spans.csv"))
        assert str(tmp_path / "no/such/dir/spans.csv") in line
        assert not (tmp_path / "trace.csv").exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def test_an_output_that_is_a_directory(self, runner, ledger_path, tmp_path):
        ledger, _ = ledger_path
        (tmp_path / "out").mkdir()
        line = error_line(run_export(runner, ledger, tmp_path, trace="out"))
        assert str(tmp_path / "out") in line and "directory" in line

    def test_existing_files_are_left_whole_when_the_export_fails(self, runner, ledger_path, tmp_path):
        ledger, _ = ledger_path
        (tmp_path / "trace.csv").write_text("old trace\n")
        (tmp_path / "spans.csv").write_text("old spans\n")
        error_line(run_export(runner, ledger, tmp_path, "--run", "r1"))
        assert (tmp_path / "trace.csv").read_text() == "old trace\n"
        assert (tmp_path / "spans.csv").read_text() == "old spans\n"
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    def test_spans_without_monotonic_times_fail_after_the_trace_was_written(self, runner, tmp_path):
        path = tmp_path / "mixed.db"
        untimed = span("untimed", 0, 1, ["gpu:0"], run_id="r")
        untimed.start_mono = untimed.end_mono = None
        with Ledger.open(path) as led:
            led.write([RunRecord("r", "node", 1, T0), ReadRecord("r", "gpu:0", M0, 1.0), untimed])
        line = error_line(run_export(runner, path, tmp_path))
        assert "untimed" in line and "monotonic" in line
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("mixed.db")) == []

    def test_the_same_file_for_both(self, runner, ledger_path, tmp_path):
        ledger, _ = ledger_path
        line = error_line(run_export(runner, ledger, tmp_path, spans="trace.csv"))
        assert "same file" in line and not (tmp_path / "trace.csv").exists()


def test_a_live_run_re_attributed_from_its_export_gives_the_recorded_energies(runner, tmp_path):
    """The point of the export: the meter records a run in the ledger; `greenmaas export` then
    `greenmaas attribute` on the two files give every span the energy (and ± J) the meter
    recorded, to 1e-9 relative. A simulated GPU behind the fake NVML, requests served in batches."""
    import contextvars
    import json

    import numpy as np

    from greenmaas.analysis import read_ledger
    from greenmaas.meter import Meter
    from greenmaas.sources.nvml import NvmlSource
    from greenmaas.testing import FakeClock
    from greenmaas.testing.nvml import FakeNVML
    from greenmaas.testing.sim import PowerTrace, SimulatedGPU

    clock = FakeClock()
    clock.advance(10.0)
    power = PowerTrace.from_bursts(80.0, [(10.5, 10.62, 400.0), (10.7, 10.75, 300.0), (11.0, 11.4, 250.0)])
    gpu = SimulatedGPU(power, counter_phase_s=0.0371, start_mj=10**9, power_field="instant", power_noise=0.02)
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    db = tmp_path / "live.db"
    meter = Meter(sources=[src], ledger=str(db), clock=clock, background=False, accounting=False)
    meter.start()
    rng = np.random.default_rng(5)

    def until(t):
        while clock.monotonic() < t - 1e-12:
            clock.advance(min(rng.uniform(0.0005, 0.004), t - clock.monotonic()))
            meter.tick()

    until(10.48)
    reqs = [meter.request(f"r{i}", tokens_out=n, tenant="acme") for i, n in enumerate((10, 30, 60))]
    ctxs = [contextvars.copy_context() for _ in reqs]
    for r, c in zip(reqs, ctxs):
        c.run(r.__enter__)
    until(10.5)
    with meter.batch(reqs):
        until(10.62)
    until(10.7)
    with meter.measure("step", weight=2.0):
        until(10.75)
    for r, c in zip(reqs, ctxs):
        c.run(r.__exit__, None, None, None)
    until(11.6)
    meter.stop()

    trace, spans = tmp_path / "trace.csv", tmp_path / "spans.csv"
    exported = runner.invoke(cli, ["export", "--ledger", str(db), "--trace", str(trace), "--spans", str(spans)])
    assert exported.exit_code == 0, exported.output
    attributed = runner.invoke(cli, ["attribute", "--trace", str(trace), "--spans", str(spans), "--format", "json"])
    assert attributed.exit_code == 0, attributed.output
    offline = {s["id"]: s["energy_j"] for s in json.loads(attributed.stdout)["spans"]}
    live = read_ledger(db).set_index("span_id")["energy_j"]
    assert len(offline) == len(live) == 8 and set(offline) == set(live.index)
    for span_id, energy in offline.items():
        assert energy == pytest.approx(live[span_id], rel=1e-9), span_id
