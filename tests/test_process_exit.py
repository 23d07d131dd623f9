"""The process-default meter at interpreter exit: the run ends with the right status and nothing
queued is lost, whether the script finished or crashed."""

import subprocess
import sys
import textwrap

import pytest

from greenmaas.analysis import read_ledger

SCRIPT = textwrap.dedent(
    """
    import time, greenmaas
    from greenmaas.testing import StaticSource
    from greenmaas.clock import SystemClock
    from greenmaas.meter import Meter
    import greenmaas.meter as m
    clock = SystemClock()
    m._default_meter = Meter(sources=[StaticSource(clock, {{"cpu:0": {{"power_w": lambda t: 40.0}}}})],
                             clock=clock, accounting=False, period_s=0.01).start()
    with greenmaas.measure("work", model="demo", phase="training"):
        time.sleep(0.1)
    {tail}
    """
)


@pytest.mark.parametrize("tail,status,code", [("pass", "finished", 0), ("raise SystemExit(3)", "finished", 3), ("1/0", "failed", 1)])
def test_default_meter_ends_run_at_exit(tmp_path, tail, status, code):
    db = tmp_path / "g.db"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tail=tail)],
        env={"GREENMAAS_LEDGER": str(db), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == code, proc.stderr
    runs = read_ledger(db, table="runs")
    assert runs["status"].tolist() == [status]
    assert runs["end"].notna().all()
    spans = read_ledger(db, table="spans")
    assert spans["name"].tolist() == ["work"]
    assert spans["energy_j"].iloc[0] == pytest.approx(40.0 * spans["duration_s"].iloc[0], rel=0.2)


def test_default_meter_survives_a_corrupt_ledger(tmp_path):
    db = tmp_path / "g.db"
    db.write_bytes(b"this is not a ledger\n" * 10)
    before = db.read_bytes()
    script = SCRIPT.format(tail="print('ok')").replace(
        "m._default_meter = Meter(", "_unused = dict("
    ).replace(").start()", ")")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env={"GREENMAAS_LEDGER": str(db), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert "measuring without a ledger" in proc.stderr
    assert str(db) in proc.stderr
    assert db.read_bytes() == before  # nothing overwritten
