"""Rollups and the bulk path: many short spans, every joule and every span accounted for.

The truth is computed independently: a device drawing a constant 300 W, spans that never overlap,
so each span's energy is 300 W x its duration and the device's total is 300 W x the run.
"""

import json
import logging
import threading
import tracemalloc

import pytest
import sqlalchemy as sa

from greenmaas.meter import Meter
from greenmaas.testing import FakeClock, StaticSource

WATTS = 300.0


def fake_meter(ledger, **kw):
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: WATTS * t}})
    meter = Meter(sources=[src], ledger=ledger, clock=clock, background=False, accounting=False, **kw)
    meter.start()
    return meter, clock


def rows(path):
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            spans = [dict(r._mapping) for r in conn.execute(sa.text(
                "SELECT span_id, parent_id, kind, name, model, energy_j, self_energy_j, duration_s, attrs, "
                "start_mono, end_mono FROM spans"))]
            totals = conn.execute(sa.text(
                "SELECT SUM(total_j), SUM(attributed_j), SUM(idle_j) FROM device_totals")).one()
            runs = [dict(r._mapping) for r in conn.execute(sa.text("SELECT config FROM runs"))]
    finally:
        engine.dispose()
    for s in spans:
        s["attrs"] = json.loads(s["attrs"]) if isinstance(s["attrs"], str) else (s["attrs"] or {})
    for r in runs:
        r["config"] = json.loads(r["config"]) if isinstance(r["config"], str) else r["config"]
    return spans, totals, runs


def count_of(row):
    return row["attrs"].get("rollup", {}).get("count", 1)


def run_loop(meter, clock, n, dt=0.001, gap=0.0005, tick_every=50, name="forward"):
    durations = []
    with meter.measure("epoch", model="mlp", phase="training") as epoch:
        for i in range(n):
            with meter.measure(name, kind="forward"):
                clock.advance(dt)
            durations.append(dt)
            clock.advance(gap)
            if i % tick_every == 0:
                meter.tick()
        clock.advance(0.2)
    for _ in range(5):
        clock.advance(0.1)
        meter.tick()
    return epoch, durations


@pytest.mark.parametrize("mode", [True, "auto", False])
def test_rollups_keep_every_joule_and_count_every_span(tmp_path, mode):
    path = tmp_path / "l.db"
    meter, clock = fake_meter(str(path), rollup=mode)
    n = 3000  # 1.5 ms per span: ~670 spans/s, past the automatic threshold
    epoch, durations = run_loop(meter, clock, n)
    meter.stop()
    spans, (total, attributed, idle), runs = rows(path)
    fwd = [s for s in spans if s["kind"] == "forward"]
    rolled = [s for s in fwd if "rollup" in s["attrs"]]
    assert sum(count_of(s) for s in fwd) == n  # every span: a row or in a rollup's count
    if mode is False:
        assert not rolled and len(fwd) == n
    else:
        assert rolled and len(fwd) < n / 10
    # Energy: each span drew 300 W for 1 ms, and nothing else ran outside the epoch.
    assert sum(s["energy_j"] for s in fwd) == pytest.approx(WATTS * sum(durations), rel=1e-9)
    ep = next(s for s in spans if s["name"] == "epoch")
    assert ep["energy_j"] == pytest.approx(WATTS * (epoch.end - epoch.start), rel=1e-9)
    assert ep["energy_j"] == pytest.approx(ep["self_energy_j"] + sum(s["energy_j"] for s in fwd), rel=1e-9)
    assert total == pytest.approx(attributed + idle, rel=1e-12)
    assert sum(s["self_energy_j"] for s in spans) == pytest.approx(attributed, rel=1e-9)
    for s in rolled:  # parent, duration statistics
        assert s["parent_id"] == ep["span_id"]
        st = s["attrs"]["rollup"]
        assert st["duration_s"]["min"] == pytest.approx(0.001) and st["duration_s"]["p99"] == pytest.approx(0.001)
        assert s["duration_s"] == pytest.approx(0.001 * st["count"])
        assert s["start_mono"] <= s["end_mono"]
    if mode is not False:
        assert runs[0]["config"]["rollups"]["spans"] == sum(count_of(s) for s in rolled)


def test_auto_rolls_up_only_classes_past_the_rate_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "l.db"
    meter, clock = fake_meter(str(path))
    with caplog.at_level(logging.WARNING, logger="greenmaas"):
        with meter.measure("slow-loop"):
            for _ in range(20):  # 10 per second: a row each
                with meter.measure("validate", kind="eval"):
                    clock.advance(0.05)
                clock.advance(0.05)
                meter.tick()
        run_loop(meter, clock, 2000)
        run_loop(meter, clock, 2000, name="backward")
        meter.stop()
    spans, _, runs = rows(path)
    val = [s for s in spans if s["name"] == "validate"]
    assert len(val) == 20 and all("rollup" not in s["attrs"] for s in val)
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert sum("rollups" in r.message for r in caplog.records) == 1  # said once for the run
    assert len(runs[0]["config"]["rollups"]["classes"]) == 2


def test_a_rolled_up_span_still_has_its_result(tmp_path):
    meter, clock = fake_meter(False, rollup=True)
    kept = []
    with meter.measure("epoch"):
        for i in range(500):
            with meter.measure("step") as s:
                clock.advance(0.002)
            kept.append(s)
            clock.advance(0.001)
            if i % 20 == 0:
                meter.tick()
    for _ in range(5):
        clock.advance(0.1)
        meter.tick()
    for s in kept[::50]:
        r = s.result
        assert r.final
        assert r.energy_j == pytest.approx(WATTS * 0.002, rel=1e-9)
    meter.stop()


def test_a_hot_loop_on_real_threads_stays_bounded_and_stops_promptly(tmp_path):
    """Spans as fast as the loop can go, the meter on its own threads with a SQLite ledger:
    memory stays bounded, stop() does not drag, and every span is in the ledger (a row or a
    rollup's count) or counted as dropped."""
    path = tmp_path / "hot.db"
    from greenmaas.clock import SystemClock

    clock = SystemClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: WATTS * t}})
    meter = Meter(sources=[src], ledger=str(path), clock=clock, accounting=False, period_s=0.01)
    n = 200_000
    tracemalloc.start()
    try:
        meter.start()
        with meter.measure("loop"):
            for _ in range(n):
                with meter.measure("step"):
                    pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stopper = threading.Thread(target=meter.stop)
    stopper.start()
    stopper.join(30.0)
    assert not stopper.is_alive(), "stop() did not return"
    spans, (total, attributed, idle), runs = rows(path)
    steps = [s for s in spans if s["name"] == "step"]
    dropped = runs[0]["config"].get("dropped_spans", 0)
    assert sum(count_of(s) for s in steps) + dropped == n
    assert total == pytest.approx(attributed + idle, rel=1e-9)
    assert peak < 400e6  # bytes: the intake is bounded (see Meter(max_pending=...))


def test_reports_count_the_spans_a_rollup_stands_for(tmp_path):
    from click.testing import CliRunner

    from greenmaas.analysis import read_ledger
    from greenmaas.report import summary
    from greenmaas_cli.main import cli

    path = tmp_path / "l.db"
    meter, clock = fake_meter(str(path), rollup=True)
    run_loop(meter, clock, 1500)
    meter.stop()
    spans = read_ledger(path)
    assert spans["count"].sum() == 1500 + 1  # the rollups' members, and the epoch
    runner = CliRunner()
    res = runner.invoke(cli, ["report", "--ledger", str(path), "--by", "name", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = {r["group"]: r for r in json.loads(res.stdout)}
    assert rows["forward"]["spans"] == 1500 and rows["epoch"]["spans"] == 1
    assert {r["group"]: r["spans"] for r in summary(path, by="name").rows if r["group"] != "(idle)"} == {
        "forward": 1500, "epoch": 1}
    res = runner.invoke(cli, ["export", "--ledger", str(path), "--trace", str(tmp_path / "t.csv"),
                              "--spans", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert "rollups standing for 1,500 spans" in res.stderr
