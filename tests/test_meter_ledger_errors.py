"""The ledger writer's troubles reach the meter: failures in ``meter.errors`` (at flush and at
stop), records dropped for a full queue counted, warned about once and written with the run."""

import logging
import os
import stat

import pytest

from greenmaas.analysis import read_ledger
from greenmaas.clock import SystemClock
from greenmaas.ledger import Ledger
from greenmaas.meter import Meter
from greenmaas.testing import StaticSource


def _meter(ledger, **kw):
    clock = SystemClock()
    source = StaticSource(clock, {"cpu:0": {"power_w": lambda t: 10.0}})
    return Meter(sources=[source], clock=clock, ledger=ledger, accounting=False, period_s=0.02,
                 handle_signals=False, **kw)


def _ledger_errors(meter):
    return [m for _, m in meter.errors if m.startswith("ledger: ")]


def test_a_ledger_closed_under_the_writer_shows_in_meter_errors(tmp_path):
    ledger = Ledger.open(tmp_path / "g.db")
    meter = _meter(ledger).start()
    with meter.measure("before"):
        pass
    meter.flush()
    assert _ledger_errors(meter) == []
    ledger.close()  # every later write fails, as on a vanished or unwritable ledger
    with meter.measure("after"):
        pass
    meter.flush()
    at_flush = _ledger_errors(meter)
    assert at_flush and "ledger is closed" in at_flush[0]
    meter.stop()
    assert len(_ledger_errors(meter)) >= len(at_flush)  # the run's end failed too, and says so
    assert len(set(meter.errors)) == len(meter.errors)  # each failure once


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_a_ledger_made_read_only_mid_run_shows_in_meter_errors(tmp_path):
    db = tmp_path / "g.db"
    meter = _meter(db).start()
    with meter.measure("before"):
        pass
    meter.flush()
    for p in tmp_path.iterdir():
        p.chmod(stat.S_IRUSR)
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        meter.ledger.engine.dispose()  # connections already open would go on writing
        with meter.measure("after"):
            pass
        meter.flush()
        assert _ledger_errors(meter)
        meter.stop()
    finally:
        tmp_path.chmod(stat.S_IRWXU)
        for p in tmp_path.iterdir():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_full_writer_queue_drops_counts_and_says_so_once(tmp_path, caplog):
    db = tmp_path / "g.db"
    meter = _meter(db, max_queue=50).start()
    caplog.set_level(logging.WARNING, logger="greenmaas")
    for i in range(3000):
        with meter.measure(f"s{i}"):
            pass
    meter.stop()
    dropped = meter._writer.stats["dropped"]
    assert dropped > 0
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1
    assert any(f"dropped {dropped} record" in m for _, m in meter.errors)
    (run,) = read_ledger(db, "runs").to_dict("records")
    assert run["status"] == "finished"  # the run's end is never dropped
    assert run["config"]["dropped_records"] == dropped
    assert len(read_ledger(db, "spans")) < 3000
