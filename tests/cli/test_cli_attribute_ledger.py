"""``greenmaas attribute --ledger``: an offline attribution recorded as a run and reported like
a live one. The truth is the live run it was exported from: the same spans, the same energy."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from greenmaas.analysis import read_ledger
from greenmaas.meter import Meter
from greenmaas.testing import FakeClock, StaticSource
from greenmaas_cli.main import cli


def live_run(path):
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 250.0 * t + 3.0 * (t % 0.7)}})
    meter = Meter(sources=[src], ledger=str(path), clock=clock, background=False, accounting=False, period_s=0.01)
    meter.start()
    with meter.measure("epoch", model="bert", phase="training"):
        for i in range(30):
            with meter.measure("step", model="bert"):
                clock.advance(0.013 + 0.001 * (i % 3))
                meter.tick()
            clock.advance(0.004)
    for i in range(5):
        with meter.request(f"r{i}", tenant="acme", model="bert"):
            clock.advance(0.05)
            meter.tick()
    clock.advance(0.3)
    meter.tick()
    meter.stop()


def run_cli(*args):
    return CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)


@pytest.fixture
def exported(tmp_path):
    src = tmp_path / "live.db"
    live_run(src)
    res = run_cli("export", "--ledger", src, "--trace", tmp_path / "t.csv", "--spans", tmp_path / "s.csv")
    assert res.exit_code == 0, res.output
    return src, tmp_path / "t.csv", tmp_path / "s.csv"


def test_a_recorded_attribution_reports_like_the_live_run(exported, tmp_path):
    src, trace, spans = exported
    dst = tmp_path / "replayed.db"
    res = run_cli("attribute", "--trace", trace, "--spans", spans, "--ledger", dst, "--anchor", "2026-12-01T09:00Z")
    assert res.exit_code == 0, res.output
    assert "Recorded as run" in res.stderr
    json.loads(res.stdout)  # the attribution itself still goes to stdout, untouched

    live = read_ledger(src).sort_values("start_mono").reset_index(drop=True)
    again = read_ledger(dst).sort_values("start_mono").reset_index(drop=True)
    assert len(again) == len(live)
    assert list(again["name"]) == list(live["name"])
    assert again["energy_j"].to_numpy() == pytest.approx(live["energy_j"].to_numpy(), rel=1e-9)
    assert again["self_energy_j"].to_numpy() == pytest.approx(live["self_energy_j"].to_numpy(), rel=1e-9)
    assert list(again["tenant"]) == list(live["tenant"])  # pseudonyms kept, not hashed twice
    assert again["start"].min().isoformat().startswith("2026-12-01T09:00")

    runs = read_ledger(dst, "runs")
    assert list(runs["status"]) == ["finished"]
    devices = read_ledger(dst, "devices")
    assert set(devices["method"]) == {"replay"}
    total = devices["total_j"].sum()
    assert total == pytest.approx(read_ledger(src, "devices")["total_j"].sum(), rel=1e-9)
    assert again["self_energy_j"].sum() + devices["idle_j"].sum() == pytest.approx(total, rel=1e-9)

    def by_model(path):
        res = run_cli("report", "--ledger", path, "--by", "model", "--format", "json")
        assert res.exit_code == 0, res.output
        return {r["group"]: (r["spans"], r["energy_j"]) for r in json.loads(res.stdout)}

    replayed, recorded = by_model(dst), by_model(src)
    assert set(replayed) == set(recorded) == {"bert", "(idle)"}
    for group, (n, energy) in recorded.items():
        assert replayed[group][0] == n
        assert replayed[group][1] == pytest.approx(energy, rel=1e-9)

    # Exported again, the recorded run gives back the same files' figures.
    res = run_cli("export", "--ledger", dst, "--trace", tmp_path / "t2.csv", "--spans", tmp_path / "s2.csv")
    assert res.exit_code == 0, res.output
    first = json.loads(run_cli("attribute", "--trace", trace, "--spans", spans).stdout)
    second = json.loads(run_cli("attribute", "--trace", tmp_path / "t2.csv", "--spans", tmp_path / "s2.csv").stdout)
    assert sorted(s["energy_j"] for s in second["spans"]) == pytest.approx(
        sorted(s["energy_j"] for s in first["spans"]), rel=1e-12)


def test_anchor_without_ledger_and_bad_anchor_exit_2(exported, tmp_path):
    _, trace, spans = exported
    res = run_cli("attribute", "--trace", trace, "--spans", spans, "--anchor", "2026-12-01")
    assert res.exit_code == 2 and "--anchor" in res.stderr
    res = run_cli("attribute", "--trace", trace, "--spans", spans, "--ledger", tmp_path / "x.db", "--anchor", "noon")
    assert res.exit_code == 2 and "noon" in res.stderr
    assert not (tmp_path / "x.db").exists()
