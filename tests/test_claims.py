"""Two processes on one host measuring one device: each meter claims its devices, a second one
finds the first's claim and says so, a dead holder's claim is gone with it, and a report over
runs that measured one device at once says the device is counted more than once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from greenmaas.analysis import read_ledger
from greenmaas.claims import Claims, claim_key
from greenmaas.clock import SystemClock
from greenmaas.meter import Meter
from greenmaas.reporting.summary import summary
from greenmaas.testing import StaticSource
from greenmaas_cli.main import cli

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="device claims use flock (POSIX)")

GPU = {"id": "gpu:0", "kind": "gpu", "uuid": "GPU-1234", "method": "counter"}
CPU = {"id": "cpu:0", "kind": "cpu", "uuid": None, "method": "estimate"}


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    return d / "greenmaas"


def test_what_identifies_a_device():
    assert claim_key(GPU) == "uuid:GPU-1234"
    assert claim_key(CPU) == "cpu:0"
    # A GPU without a UUID may be another GPU under the same index elsewhere: not claimed.
    assert claim_key({"id": "gpu:0", "kind": "gpu", "method": "counter"}) is None
    assert claim_key({**CPU, "method": "unmeasurable"}) is None


def test_a_second_claim_finds_the_first_until_it_is_released(runtime_dir):
    first, second = Claims("run-a"), Claims("run-b")
    assert first.take([GPU, CPU]) == []
    held = second.take([{**GPU, "id": "gpu:3"}, CPU])  # the same hardware under another index
    assert {(h.device, h.key, h.pid, h.run_id) for h in held} == {
        ("gpu:3", "uuid:GPU-1234", os.getpid(), "run-a"), ("cpu:0", "cpu:0", os.getpid(), "run-a")}
    assert (runtime_dir.stat().st_mode & 0o777) == 0o700
    first.release()
    third = Claims("run-c")
    assert third.take([GPU, CPU]) == []
    third.release()
    second.release()


def test_an_unusable_directory_claims_nothing_and_says_why(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    c = Claims("run-a", directory=blocker / "sub")
    assert c.take([GPU]) == []
    assert c.problem and "cannot create" in c.problem


HOLDER = textwrap.dedent(
    """
    import sys, time
    from greenmaas.clock import SystemClock
    from greenmaas.meter import Meter
    from greenmaas.testing import StaticSource
    clock = SystemClock()
    m = Meter(sources=[StaticSource(clock, {"cpu:0": {"power_w": lambda t: 40.0}})], ledger=sys.argv[1],
              clock=clock, accounting=False, period_s=0.05, handle_signals=False).start()
    print(m.run_id, flush=True)
    time.sleep(60)
    """
)


def cpu_meter(ledger) -> Meter:
    clock = SystemClock()
    return Meter(sources=[StaticSource(clock, {"cpu:0": {"power_w": lambda t: 40.0}})], ledger=ledger,
                 clock=clock, accounting=False, period_s=0.05, handle_signals=False)


def test_a_meter_sees_another_process_measuring_its_device_until_that_process_dies(tmp_path, caplog):
    db = tmp_path / "g.db"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ})
    try:
        holder_run = child.stdout.readline().strip()
        assert holder_run
        deadline = time.monotonic() + 30  # its run in the ledger (written in the background)
        while time.monotonic() < deadline:
            if db.exists() and holder_run in set(read_ledger(db, table="runs")["run_id"]):
                break
            time.sleep(0.05)
        m = cpu_meter(str(db)).start()
        with m.measure("work"):
            time.sleep(0.05)
        m.stop()
        shared = m.run.config["shared_devices"]
        assert shared == [{"device": "cpu:0", "key": "cpu:0", "pid": child.pid, "run_id": holder_run}]
        assert "already measured by another meter" in caplog.text
        # The report over both runs says the device was counted by both.
        notes = summary(str(db), by="model", accounting=False).notes
        assert any("cpu:0 on" in n and "measured by 2 runs at once" in n for n in notes), notes
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    # SIGKILL: the kernel released the dead process's claim; nobody holds the device now.
    again = cpu_meter(False).start()
    again.stop()
    assert "shared_devices" not in again.run.config


def test_the_report_names_runs_that_measured_one_device_at_once_and_only_those(tmp_path):
    db = tmp_path / "g.db"
    a = cpu_meter(str(db)).start()
    b = cpu_meter(str(db)).start()  # another meter in this process: the same double count
    with a.measure("a-work", model="m"):
        time.sleep(0.05)
    with b.measure("b-work", model="m"):
        time.sleep(0.05)
    b.stop()
    a.stop()
    later = cpu_meter(str(db)).start()  # after both: nothing shared
    with later.measure("later-work", model="m"):
        time.sleep(0.05)
    later.stop()
    assert b.run.config["shared_devices"][0]["run_id"] == a.run_id
    assert "shared_devices" not in later.run.config

    r = CliRunner().invoke(cli, ["report", "--ledger", str(db), "--by", "model"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "at once" in line]
    assert len(lines) == 1, r.output
    assert a.run_id in lines[0] and b.run_id in lines[0] and later.run_id not in lines[0]
    # A report of the later run alone has nothing to say about it.
    alone = summary(str(db), by="model", accounting=False, run=later.run_id).notes
    assert not any("at once" in n for n in alone)
    runs = read_ledger(db, table="runs")
    assert len(runs) == 3


def test_devices_names_the_meter_measuring_a_device_now(runtime_dir):
    m = cpu_meter(False).start()
    try:
        clock = SystemClock()

        class Found:
            sources = [StaticSource(clock, {"cpu:0": {"power_w": lambda t: 40.0}})]
            unused: list = []

        r = CliRunner().invoke(cli, ["devices", "--format", "json"], obj={"detect": lambda: Found()})
        assert r.exit_code == 0, r.output
        data = __import__("json").loads(r.output)
        assert data["devices"][0]["measured_by"] == f"pid {os.getpid()}, run {m.run_id}"
        assert data["claims"] == str(runtime_dir)
    finally:
        m.stop()
    # Once it stopped, nobody measures it; and asking took no claim of its own.
    r = CliRunner().invoke(cli, ["devices"], obj={"detect": lambda: Found()})
    assert r.exit_code == 0, r.output
    assert "Device claims: " + str(runtime_dir) in r.output
    assert "run " + m.run_id not in r.output


def test_a_claims_object_dropped_without_release_lets_its_claims_go():
    first = Claims("run-a")
    assert first.take([CPU]) == []
    del first  # collected: its descriptors are closed, its locks released
    import gc

    gc.collect()
    again = Claims("run-b")
    assert again.take([CPU]) == []
    again.release()
