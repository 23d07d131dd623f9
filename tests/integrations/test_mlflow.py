"""MLflow: a run's energy, carbon and cost as metrics, its report as artifacts, in a real MLflow
tracking store (SQLite, in a temporary directory).

The meter runs on a :class:`FakeClock` over a constant 250 W device, priced at a grid intensity of
420 gCO2e/kWh and 0.25 EUR/kWh, so the truth is arithmetic: 1 s idle, 2 s of training, 1 s of
inference and 0.5 s idle are 4.5 s × 250 W = 1,125 J, of which 375 J idle.
"""

from __future__ import annotations

import json

import pytest

mlflow = pytest.importorskip("mlflow")

from greenmaas.accounting import AccountingConfig  # noqa: E402
from greenmaas.errors import ConfigError  # noqa: E402
from greenmaas.integrations.mlflow import log_run, logged  # noqa: E402
from greenmaas.meter import Meter  # noqa: E402
from greenmaas.testing import FakeClock, StaticSource  # noqa: E402

# MLflow's SQL store uses a SQLAlchemy option SQLAlchemy has deprecated; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*:DeprecationWarning")
POWER_W = 250.0
G_PER_KWH = 420.0
EUR_PER_KWH = 0.25
J_PER_KWH = 3.6e6


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One tracking store for the module (creating its schema is the slow part)."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)  # MLflow's default artifact root is relative to the working directory
        yield mlflow.MlflowClient()


@pytest.fixture
def store(tracking):
    yield tracking
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _meter(tmp_path, clock):
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: POWER_W * t}})
    accounting = AccountingConfig(location=str(G_PER_KWH), tariff=f"{EUR_PER_KWH}EUR/kWh")
    return Meter(sources=[src], ledger=str(tmp_path / "greenmaas.db"), clock=clock, background=False,
                 accounting=accounting, handle_signals=False)


def _work(meter, clock):
    clock.advance(1.0)
    with meter.measure("fit", model="tiny", phase="training"):
        clock.advance(2.0)
    with meter.measure("serve", model="tiny", phase="inference"):
        clock.advance(1.0)
    clock.advance(0.5)


def test_log_run_logs_metrics_tags_and_the_report(tmp_path, store):
    clock = FakeClock()
    meter = _meter(tmp_path, clock)
    with mlflow.start_run() as active:
        with meter:
            _work(meter, clock)
        logged_metrics = log_run(meter)
    run = store.get_run(active.info.run_id)
    energy_j = POWER_W * 4.5
    expected = {
        "greenmaas.energy_j": energy_j,
        "greenmaas.energy_kwh": energy_j / J_PER_KWH,
        "greenmaas.idle_energy_j": POWER_W * 1.5,
        "greenmaas.uncertainty_j": 0.0,
        "greenmaas.carbon_g": energy_j / J_PER_KWH * G_PER_KWH,
        "greenmaas.energy_cost": energy_j / J_PER_KWH * EUR_PER_KWH,
        "greenmaas.cost": energy_j / J_PER_KWH * EUR_PER_KWH,
        "greenmaas.energy_j.training": POWER_W * 2.0,
        "greenmaas.energy_j.inference": POWER_W * 1.0,
    }
    assert run.data.metrics == pytest.approx(expected)
    assert logged_metrics == pytest.approx(expected)
    tags = run.data.tags
    assert tags["greenmaas.run_id"] == meter.run_id
    assert (tags["greenmaas.currency"], tags["greenmaas.method"], tags["greenmaas.status"]) == ("EUR", "counter", "finished")

    artifacts = {a.path for a in store.list_artifacts(active.info.run_id, "greenmaas")}
    assert artifacts == {"greenmaas/report.md", "greenmaas/report.json"}
    md = open(store.download_artifacts(active.info.run_id, "greenmaas/report.md", str(tmp_path))).read()
    assert f"# greenmaas run {meter.run_id}" in md
    assert "| training | 1 | 500.00 |" in md and "| (idle) | | 375.00 |" in md
    assert "420" in md  # the intensity the carbon rests on
    report = json.loads(open(store.download_artifacts(active.info.run_id, "greenmaas/report.json", str(tmp_path))).read())
    assert report["metrics"]["energy_j"] == pytest.approx(energy_j)
    assert report["by_model"]["tiny"]["energy_j"] == pytest.approx(POWER_W * 3.0)


def test_logged_logs_when_the_block_ends(tmp_path, store):
    clock = FakeClock()
    with mlflow.start_run() as active:
        with logged(_meter(tmp_path, clock), artifact=False, prefix="energy/") as meter:
            _work(meter, clock)
    run = store.get_run(active.info.run_id)
    assert run.data.metrics["energy/energy_j"] == pytest.approx(POWER_W * 4.5)
    assert run.data.tags["energy/run_id"] == meter.run_id
    assert store.list_artifacts(active.info.run_id) == []


def test_without_an_active_run_logged_does_nothing_and_log_run_says_why(tmp_path, store):
    clock = FakeClock()
    before = len(mlflow.search_runs(search_all_experiments=True))
    with logged(_meter(tmp_path, clock)) as meter:  # no MLflow run: nothing to log to, no error
        _work(meter, clock)
    assert len(mlflow.search_runs(search_all_experiments=True)) == before
    with pytest.raises(ConfigError, match="no active MLflow run"):
        log_run(meter)


def test_runs_are_chosen_by_id_prefix_or_latest(tmp_path, store):
    clock = FakeClock()
    first = _meter(tmp_path, clock)
    with first:
        _work(first, clock)
    second = _meter(tmp_path, clock)
    with second:
        clock.advance(2.0)  # idle only
    ledger = str(tmp_path / "greenmaas.db")
    with mlflow.start_run():
        assert log_run(first.run_id[:10], ledger=ledger, artifact=False)["greenmaas.energy_j"] == pytest.approx(1125.0)
    with mlflow.start_run():
        latest = log_run(ledger=ledger, artifact=False)
    assert latest["greenmaas.energy_j"] == pytest.approx(POWER_W * 2.0)
    assert latest["greenmaas.idle_energy_j"] == pytest.approx(POWER_W * 2.0)
    with mlflow.start_run(), pytest.raises(ConfigError, match="no run with id 'nope'"):
        log_run("nope", ledger=ledger)
    with mlflow.start_run(), pytest.raises(ConfigError, match="no ledger"):
        log_run(Meter(sources=[], ledger=False, clock=clock, background=False, handle_signals=False))


def test_a_running_meter_is_logged_as_it_stands(tmp_path, store):
    clock = FakeClock()
    meter = _meter(tmp_path, clock)
    with mlflow.start_run() as active, meter:
        _work(meter, clock)
        so_far = log_run(meter, artifact=False)
        clock.advance(10.0)
    assert so_far["greenmaas.energy_j"] == pytest.approx(POWER_W * 4.5)
    assert store.get_run(active.info.run_id).data.tags["greenmaas.status"] == "running"
