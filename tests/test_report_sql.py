"""The report summed in SQL (greenmaas.rollup) equals the span-by-span reference path."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from compare import same

from greenmaas.accounting.config import AccountingConfig
from greenmaas.ledger import Ledger
from greenmaas.records import DeviceEnergy, DeviceTotals, RunRecord, SpanRecord
from greenmaas.report import GROUPS, IDLE, NONE, summary
from greenmaas.rollup import supported

T0 = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)  # a Wednesday
GPUS = [{"id": "gpu:0", "kind": "gpu", "name": "H100"}, {"id": "gpu:1", "kind": "gpu", "name": "H100"},
        {"id": "cpu:0", "kind": "cpu", "name": "Xeon"}]


def _span(span_id, run_id, start_s, dur_s, devices, **kw):
    start = T0 + timedelta(seconds=start_s)
    return SpanRecord(span_id=span_id, run_id=run_id, name=kw.pop("name", "step"), start=start,
                      end=start + timedelta(seconds=dur_s), duration_s=float(dur_s), devices=devices, **kw)


def _dev(device, energy, self_j, method="counter", device_s=1.0, u=None):
    return DeviceEnergy(device, energy, method, self_j, device_s, 0.0, u)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """Two runs (EUR with an hourly series, a time-of-use tariff, PUE, GPU price, embodied and
    market carbon; USD flat) with nested spans, batch shares, several devices and methods, spans
    crossing hours, unmeasured spans, spans with and without a recorded ± J, and idle windows."""
    d = tmp_path_factory.mktemp("sql")
    csv = d / "grid.csv"
    csv.write_text("timestamp,gco2_per_kwh\n" + "".join(
        f"{(T0.replace(minute=0) + timedelta(hours=h)):%Y-%m-%dT%H:%M:%SZ},{100 + 37 * (h % 5)}\n"
        for h in range(-2, 40)))
    eur = AccountingConfig(series=str(csv), tariff="0.30EUR/kWh@08-20@mon-fri,0.10EUR/kWh", pue=1.3,
                           hardware_prices="gpu=3.60EUR/h", embodied="gpu=150kg/4y",
                           market_intensity_g_per_kwh=50.0).to_dict()
    usd = AccountingConfig(location="FR", tariff="0.2USD/kWh", hardware_prices="gpu=2USD/h,cpu=0.1USD/h").to_dict()
    path = d / "l.db"
    with Ledger.open(path) as led:
        led.start_run(RunRecord("r1", "node", 1, T0, config={"accounting": eur}, devices=GPUS))
        led.start_run(RunRecord("r2", "node", 2, T0, config={"accounting": usd}, devices=GPUS))
        spans = []
        for i in range(300):
            run = "r1" if i % 3 else "r2"
            t = i * 97.0  # crosses several hours and a day
            model = ("llama", "bert", "", None)[i % 4]
            u = None if i % 7 == 0 else 0.5 + i % 3
            tenant = led.pseudonymise(f"t{i % 5}") if i % 6 else None
            spans.append(_span(f"p{i}", run, t, 30 + i % 50, [
                _dev("gpu:0", 100.0 + i, 40.0 + i, "counter", 3.0, u),
                _dev("cpu:0", 10.0, 5.0 + i % 4, ("power", "estimate", "replay")[i % 3], 1.5,
                     None if i % 5 == 0 else 0.2),
            ], model=model, phase=("training", "inference", None)[i % 3], tenant=tenant,
                request_id=f"req-{i // 2}", name=("step", "generate")[i % 2], kind="request",
                tokens_out=i % 9))
            # a child in the same group, and one in another (its own model)
            spans.append(_span(f"c{i}", run, t + 1, 10, [_dev("gpu:0", 60.0, 60.0, "counter", 1.0,
                                                               None if i % 4 == 0 else 0.3)],
                               parent_id=f"p{i}", model=model if i % 2 else "child-model",
                               phase="inference", request_id=f"req-{i // 2}"))
            if i % 10 == 0:  # a batch whose share is linked to the request p{i}
                spans.append(_span(f"b{i}", run, t + 2, 5, [_dev("gpu:1", 20.0, 0.0, "power", 0.5, 0.4)],
                                   kind="batch", model=model))
                spans.append(_span(f"s{i}", run, t + 2, 5, [_dev("gpu:1", 20.0, 20.0, "power", 0.5, 0.4)],
                                   kind="share", parent_id=f"b{i}", link_id=f"p{i}", model=model))
            if i % 25 == 0:  # nothing measured: no energy rather than 0 J
                spans.append(_span(f"u{i}", run, t + 3, 2, [DeviceEnergy("gpu:1", 0.0, "unmeasurable")],
                                   model="ghost"))
        led.write_spans(spans)
        led.write_device_totals([
            DeviceTotals(run, dev, "counter", 9e5, 8e5, 1e5 + h, start=T0 + timedelta(hours=h),
                         end=T0 + timedelta(hours=h + 1), idle_s=600.0, uncertainty_j=None if h % 2 else 50.0)
            for h in range(9) for run in ("r1", "r2") for dev in ("gpu:0", "cpu:0")
        ])
        led.end_run("r1", T0 + timedelta(hours=9))
        led.end_run("r2", T0 + timedelta(hours=9))
    return path


def _equal(ledger, **kw):
    new, old = summary(ledger, **kw), summary(ledger, in_sql=False, **kw)
    for name in ("rows", "sources", "methods", "period", "groups", "notes", "priced"):
        same(getattr(new, name), getattr(old, name), name)
    return new


@pytest.mark.parametrize("by", [g for g in GROUPS if g != "request"])
@pytest.mark.parametrize("accounting", [None, False, {"pue": "1.1", "embodied": "gpu=100kg/3y"}])
def test_sql_and_reference_paths_agree(ledger, by, accounting):
    s = _equal(ledger, by=by, accounting=accounting)
    if by in ("model", "phase", "run", "day", "tenant"):
        assert s.rows[-1]["group"] == IDLE  # the conservation line is in every such grouping
    if accounting is None:
        assert any(r.get("currency") == "mixed" for r in s.rows) or by in ("run", "day")


@pytest.mark.parametrize("by", ["model", "day", "tenant"])
def test_filters_agree(ledger, by):
    _equal(ledger, by=by, since=T0 + timedelta(hours=2), until=T0 + timedelta(hours=5))
    _equal(ledger, by=by, model="llama")


def test_accounting_changing_within_an_hour_is_priced_span_by_span(tmp_path):
    csv = tmp_path / "half.csv"
    csv.write_text("timestamp,gco2_per_kwh\n2024-05-01T09:00:00Z,100\n2024-05-01T09:30:00Z,200\n")
    lo, hi = int(T0.timestamp() * 1e9), int(T0.timestamp() * 1e9) + 2 * 86400 * 10**9
    assert not supported(AccountingConfig(series=str(csv)), lo, hi)
    assert not supported(AccountingConfig(location="FR", tariff="0.3EUR/kWh@08-20,0.1EUR/kWh,tz=Asia/Kolkata"),
                         lo, hi)
    assert supported(AccountingConfig(location="FR", tariff="0.3EUR/kWh@08-20,0.1EUR/kWh,tz=Europe/Paris"),
                     lo, hi)


@pytest.mark.parametrize("accounting", [None, False, {"pue": "1.1", "embodied": "gpu=100kg/3y"}])
def test_requests_page_by_page_agree_with_the_report_by_request(ledger, accounting):
    """Two currencies (a request spread over both runs is ``mixed``), nested spans, batch shares,
    unmeasured spans, stated and recorded ± J, crossing hours: the paged rows are the report's."""
    from greenmaas.report import request_rows

    reference = {r["group"]: r for r in summary(ledger, by="request", accounting=accounting).rows}
    for page in (1, 13, 10_000):
        paged = list(request_rows(ledger, accounting=accounting, page=page))
        assert len(paged) == len(reference)
        same({r["group"]: r for r in paged}, reference, f"page={page}")
    if accounting is None:
        assert any(r.get("currency") == "mixed" for r in reference.values())


def test_requests_under_accounting_that_changes_within_an_hour(tmp_path, ledger):
    from greenmaas.report import request_rows

    csv = tmp_path / "half.csv"
    csv.write_text("timestamp,gco2_per_kwh\n" + "".join(
        f"{(T0 + timedelta(minutes=30 * h)):%Y-%m-%dT%H:%M:%SZ},{100 + 7 * h}\n" for h in range(-4, 40)))
    accounting = {"series": str(csv)}
    reference = {r["group"]: r for r in summary(ledger, by="request", accounting=accounting).rows}
    same({r["group"]: r for r in request_rows(ledger, accounting=accounting)}, reference)


def test_by_host_job_and_rank(tmp_path):
    """Runs grouped by where they ran, as they recorded it (greenmaas.distributed): both paths
    agree, runs outside a job have no job or rank, and the groups add up to the runs'."""
    path = tmp_path / "ranks.db"
    layout = [("a0", "host-a", {"rank": 0, "local_rank": 0, "world_size": 2, "job_id": "j1"}),
              ("b1", "host-b", {"rank": 1, "local_rank": 0, "world_size": 2, "job_id": "j1"}),
              ("a-solo", "host-a", None)]
    with Ledger.open(path) as led:
        for n, (run, host, dist) in enumerate(layout):
            config = {"accounting": AccountingConfig(location="FR", hardware_prices="gpu=2EUR/h").to_dict(),
                      **({"distributed": dist} if dist else {})}
            led.start_run(RunRecord(run, host, 1, T0, config=config, devices=GPUS))
            led.write_spans([_span(f"{run}-{i}", run, i * 600.0 + n, 30.0 + i, [_dev("gpu:0", 10.0 * (n + 1), 10.0 * (n + 1),
                                                                            device_s=30.0, u=0.5)], model="m")
                             for i in range(12)])
            led.write_device_totals([DeviceTotals(run, "gpu:0", "counter", 500.0, 120.0 * (n + 1), 500.0 - 120.0 * (n + 1),
                                                  start=T0, end=T0 + timedelta(hours=2), idle_s=100.0)])
            led.end_run(run, T0 + timedelta(hours=2))
    by_run = {r["group"]: r for r in _equal(path, by="run").rows}
    for by, expected in (("host", {"host-a": ("a0", "a-solo"), "host-b": ("b1",)}),
                         ("job", {"j1": ("a0", "b1"), NONE: ("a-solo",)}),
                         ("rank", {"0": ("a0",), "1": ("b1",), NONE: ("a-solo",)})):
        rows = {r["group"]: r for r in _equal(path, by=by).rows}
        assert set(rows) == set(expected) | {IDLE}
        for group, runs in expected.items():
            for key in ("spans", "energy_j", "carbon_g", "hardware_cost", "cost", "uncertainty_j"):
                assert rows[group][key] == pytest.approx(sum(by_run[r][key] for r in runs)), (by, group, key)


def test_a_report_summed_in_sql_never_loads_pandas(ledger):
    """What keeps ``greenmaas report`` quick on a large ledger: the command summed in SQL and
    priced with arrays, pandas (a fifth of a second to import) never imported; by request too,
    page by page."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from greenmaas_cli.main import cli\n"
        "for by in ('model', 'phase', 'day', 'tenant', 'run', 'name', 'host', 'job', 'rank', 'request'):\n"
        "    try:\n"
        f"        cli(['report', '--ledger', {str(ledger)!r}, '--by', by, '--format', 'json'], standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        "print('PANDAS' if 'pandas' in sys.modules else 'NO-PANDAS', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "NO-PANDAS"
