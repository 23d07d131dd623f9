"""Other processes on a measured GPU: NVML lists them, the meter warns once per GPU, the run
records what it saw, reports say so, and ``greenmaas devices`` shows them; a GPU whose driver does
not list processes is recorded as unknown; in a container (own pid namespace) this process cannot
be told apart, so only two or more listed processes make another one certain."""

from __future__ import annotations

import json
import logging
import os

import pytest
from click.testing import CliRunner

from greenmaas.meter import Meter
from greenmaas.processes import ProcessWatch, notes_for_run, own_pid_is_hosts
from greenmaas.reporting.summary import summary
from greenmaas.sources.nvml import NvmlSource
from greenmaas.testing import FakeClock
from greenmaas.testing.nvml import NVML_ERROR_GPU_IS_LOST, FakeGPU, FakeNVML, NVMLError
from greenmaas_cli.main import cli

ME = os.getpid()


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))


def run_meter(gpu, clock, ledger, seconds=25.0, **kw):
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    m = Meter(sources=[src], ledger=ledger, clock=clock, background=False, accounting=False,
              handle_signals=False, **kw).start()
    t_end = clock.monotonic() + seconds
    with m.measure("work", model="m"):
        while clock.monotonic() < t_end:
            clock.advance(0.05)
            m.tick()
    m.stop()
    return m


def test_own_pid_namespace():
    assert own_pid_is_hosts(lambda p: "pid:[4026531836]") is True
    assert own_pid_is_hosts(lambda p: "pid:[4026532517]") is False

    def missing(p):
        raise FileNotFoundError(p)

    assert own_pid_is_hosts(missing) is None


def test_nvml_lists_the_processes_of_a_gpu():
    clock = FakeClock()
    src = NvmlSource(nvml=FakeNVML([FakeGPU(processes=[30, 10, 30]), FakeGPU(uuid="GPU-2", processes=None)],
                                   clock=clock), visible_devices=None)
    assert src.processes("gpu:0") == [10, 30]
    assert src.processes("gpu:1") is None  # NOT_SUPPORTED: cannot tell
    lost = NvmlSource(nvml=FakeNVML([FakeGPU(fail=lambda t: NVML_ERROR_GPU_IS_LOST if t > 1 else None)],
                                    clock=clock), visible_devices=None)
    clock.advance(2)
    with pytest.raises(Exception, match="gpu:0: listing its processes failed"):
        lost.processes("gpu:0")


def test_a_meter_warns_once_records_and_reports_other_processes(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("greenmaas.processes.own_pid_is_hosts", lambda: True)
    clock = FakeClock()
    clock.advance(1.0)
    # Another process joins 5 s in and leaves at 15 s; this process is listed throughout.
    gpu = FakeGPU(processes=lambda t: [ME, 4242] if 6.0 <= t < 16.0 else [ME])
    db = tmp_path / "g.db"
    with caplog.at_level(logging.WARNING, logger="greenmaas"):
        m = run_meter(gpu, clock, str(db))
    warned = [r.getMessage() for r in caplog.records if "also used by" in r.getMessage()]
    assert len(warned) == 1 and "gpu:0 is also used by 1 other process(es) (pid 4242)" in warned[0], warned
    rec = m.run.config["gpu_processes"]["gpu:0"]
    # Checks at start, every 10 s of the meter's clock, and at stop: 1, 11 (other there), 21, 26.
    assert rec["checks"] == 4 and rec["listed"] == 4 and rec["with_others"] == 1
    assert rec["pids"] == [4242] and rec["most_others"] == 1 and "own_pid_unknown" not in rec
    notes = summary(str(db), by="model", accounting=False).notes
    assert any(f"run {m.run_id}: gpu:0 on" in n and "pid 4242; seen at 1 of 4 checks" in n for n in notes), notes
    r = CliRunner().invoke(cli, ["report", "--ledger", str(db), "--by", "model"])
    assert r.exit_code == 0 and "processes greenmaas did not measure (pid 4242" in r.output, r.output


def test_a_gpu_used_by_this_process_alone_says_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr("greenmaas.processes.own_pid_is_hosts", lambda: True)
    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="greenmaas"):
        m = run_meter(FakeGPU(processes=[ME]), clock, str(tmp_path / "g.db"), seconds=3.0)
    assert "also used by" not in caplog.text
    rec = m.run.config["gpu_processes"]["gpu:0"]
    assert rec == {"checks": 2, "listed": 2, "with_others": 0, "activity": "not given"}
    assert not [n for n in summary(str(tmp_path / "g.db"), by="model", accounting=False).notes if "processes" in n]


def test_in_a_container_only_two_or_more_make_another_certain(monkeypatch):
    monkeypatch.setattr("greenmaas.processes.own_pid_is_hosts", lambda: False)
    clock = FakeClock()
    listed = {"pids": [777]}
    gpu = FakeGPU(processes=lambda t: listed["pids"])
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    watch = ProcessWatch([("gpu:0", src)], own_pid=None)
    from datetime import datetime, timezone

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert watch.check(now) == []  # one process listed: it may be this one
    listed["pids"] = [777, 888]
    (warning,) = watch.check(now)
    assert "2 processes (host pids 777, 888; this process runs in its own pid namespace, so at least 1" in warning
    assert watch.check(now) == []  # once per GPU
    rec = watch.record()["gpu:0"]
    assert rec["with_others"] == 2 and rec["most_others"] == 1 and rec["own_pid_unknown"] is True


def test_a_gpu_that_does_not_list_processes_is_recorded_as_unknown(tmp_path, monkeypatch):
    clock = FakeClock()
    m = run_meter(FakeGPU(processes=None), clock, str(tmp_path / "g.db"), seconds=1.0)
    rec = m.run.config["gpu_processes"]["gpu:0"]
    assert rec["listed"] == 0 and rec["checks"] == 2
    assert rec["not_listed"] == "NVML does not list the processes on this GPU"
    notes = summary(str(tmp_path / "g.db"), by="model", accounting=False).notes
    assert any("whether other processes used gpu:0" in n and "is unknown" in n for n in notes), notes


def test_a_failing_listing_never_stops_measuring(tmp_path):
    clock = FakeClock()

    def processes(t):
        raise NVMLError(NVML_ERROR_GPU_IS_LOST)

    m = run_meter(FakeGPU(processes=processes), clock, str(tmp_path / "g.db"), seconds=12.0)
    rec = m.run.config["gpu_processes"]["gpu:0"]
    assert rec["listed"] == 0 and "listing its processes failed" in rec["not_listed"]
    assert m.totals["gpu:0"]["total_j"] > 0


def test_notes_skip_what_they_cannot_read():
    assert notes_for_run("r", "h", {"gpu:0": "junk", "gpu:1": {}}) == []


def test_devices_shows_the_processes_on_each_gpu():
    clock = FakeClock()

    class Found:
        sources = [NvmlSource(nvml=FakeNVML([FakeGPU(processes=[5, 6]), FakeGPU(uuid="GPU-2", processes=None),
                                             FakeGPU(uuid="GPU-3")], clock=clock), visible_devices=None)]
        unused: list = []

    r = CliRunner().invoke(cli, ["devices", "--format", "json"], obj={"detect": lambda: Found()})
    assert r.exit_code == 0, r.output
    devs = {d["id"]: d for d in json.loads(r.output)["devices"]}
    assert devs["gpu:0"]["processes"] == [5, 6]
    assert devs["gpu:1"]["processes"] is None and "does not list" in devs["gpu:1"]["processes_note"]
    assert devs["gpu:2"]["processes"] == []
    Found.sources = [NvmlSource(nvml=FakeNVML([FakeGPU(processes=[5, 6]), FakeGPU(uuid="GPU-2", processes=None)],
                                              clock=clock), visible_devices=None)]
    r = CliRunner().invoke(cli, ["devices"], obj={"detect": lambda: Found()})
    assert r.exit_code == 0, r.output
    assert "Processes on it" in r.output and "pid 5, 6" in r.output and "cannot tell" in r.output


def test_nvml_gives_what_each_process_did_in_its_last_sample_period():
    clock = FakeClock()
    clock.advance(1.0)
    gpu = FakeGPU(activity=lambda t: {10: 40, 20: 0, 30: 25})
    src = NvmlSource(nvml=FakeNVML([gpu, FakeGPU(uuid="GPU-2")], clock=clock), visible_devices=None)
    samples = src.process_activity("gpu:0")
    assert [(pid, sm) for pid, _, sm in samples] == [(10, 40), (30, 25)]  # idle processes are not sampled
    ts = samples[0][1]
    assert src.process_activity("gpu:0", ts) == []  # nothing newer yet (NOT_FOUND)
    clock.advance(0.2)
    assert src.process_activity("gpu:0", ts)[0][1] > ts
    assert src.process_activity("gpu:1") is None  # NOT_SUPPORTED


def test_the_run_records_the_share_of_sm_activity_that_was_other_processes(tmp_path, monkeypatch):
    monkeypatch.setattr("greenmaas.processes.own_pid_is_hosts", lambda: True)
    clock = FakeClock()
    clock.advance(1.0)
    gpu = FakeGPU(processes=[ME, 4242], activity=lambda t: {ME: 60, 4242: 20})
    db = tmp_path / "g.db"
    m = run_meter(gpu, clock, str(db), seconds=5.0)
    rec = m.run.config["gpu_processes"]["gpu:0"]
    # Read at start and every second of the meter's clock (1, 2, … 6 s); the read at stop finds
    # no period newer than the last one.
    assert rec["activity_periods"] == 6
    assert rec["others_sm_share"] == pytest.approx(0.25)
    notes = summary(str(db), by="model", accounting=False).notes
    assert any("25% of the SM activity in 6 NVML samples" in n for n in notes), notes


def test_in_a_container_the_share_of_others_is_not_claimed(monkeypatch):
    from datetime import datetime, timezone

    clock = FakeClock()
    clock.advance(1.0)
    gpu = FakeGPU(processes=[777, 888], activity=lambda t: {777: 50, 888: 50})
    watch = ProcessWatch([("gpu:0", NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None))],
                         own_pid=None)
    watch.sample_activity()
    watch.check(datetime(2026, 1, 1, tzinfo=timezone.utc))
    rec = watch.record()["gpu:0"]
    assert rec["activity_periods"] == 1 and "others_sm_share" not in rec
    unsupported = ProcessWatch([("gpu:0", NvmlSource(nvml=FakeNVML([FakeGPU()], clock=clock),
                                                     visible_devices=None))], own_pid=1)
    unsupported.sample_activity()
    assert unsupported.record()["gpu:0"]["activity"] == "not given"


def test_without_proc_the_pid_is_the_systems_outside_linux(monkeypatch):
    clock = FakeClock()
    src = NvmlSource(nvml=FakeNVML([FakeGPU()], clock=clock), visible_devices=None)

    class Sampler:
        _channels = [type("Ch", (), {"source": src, "device": src.devices()[0]})()]

    monkeypatch.setattr("greenmaas.processes.own_pid_is_hosts", lambda: None)
    monkeypatch.setattr("greenmaas.processes.sys.platform", "win32")
    assert ProcessWatch.for_sampler(Sampler).own_pid == ME
    monkeypatch.setattr("greenmaas.processes.sys.platform", "linux")
    assert ProcessWatch.for_sampler(Sampler).own_pid is None
    monkeypatch.setattr("greenmaas.processes.own_pid_is_hosts", lambda: True)
    assert ProcessWatch.for_sampler(Sampler).own_pid == ME
