"""AccountingConfig from the environment, stored and rebuilt, and the vectorised price()."""

from __future__ import annotations

import json
import runpy
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import greenmaas.accounting as accounting
from greenmaas.accounting import AccountingConfig, describe, price
from greenmaas.accounting.config import PRICE_COLUMNS
from greenmaas.accounting.locations import NoLocationWarning, resolve_location
from greenmaas.errors import AccountingError, ConfigError

KWH = 3.6e6
HOURLY = "timestamp,gco2_per_kwh\n2024-05-01T00:00:00Z,100\n2024-05-01T01:00:00Z,300\n"


def spans(**extra) -> pd.DataFrame:
    df = pd.DataFrame({
        "energy_j": [KWH, 2 * KWH, 3 * KWH],
        "start": pd.to_datetime(["2024-05-01T00:00Z", "2024-05-01T00:30Z", "2024-05-01T19:00Z"]),
        "end": pd.to_datetime(["2024-05-01T01:00Z", "2024-05-01T01:30Z", "2024-05-01T22:00Z"]),
    })
    for k, v in extra.items():
        df[k] = v
    return df


def test_package_all_is_the_public_names():
    assert sorted(accounting.__all__) == accounting.__all__
    for name in accounting.__all__:
        assert getattr(accounting, name) is not None


def test_from_env_reads_every_variable(write_csv):
    path = write_csv(HOURLY)
    env = {
        "GREENMAAS_LOCATION": "FR",
        "GREENMAAS_PRICE": "0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh",
        "GREENMAAS_PUE": "1.2",
        "GREENMAAS_INTENSITY_CSV": str(path),
        "GREENMAAS_HARDWARE_PRICE": "gpu=2.50EUR/h",
        "GREENMAAS_MARKET_INTENSITY": "20",
    }
    config = AccountingConfig.from_env(environ=env)
    assert config.location.spec == "FRA" and config.location.location_source == "env"
    assert config.tariff.currency == config.currency == "EUR"
    assert config.pue == 1.2
    assert config.series.source == str(path)
    assert config.hardware_prices["gpu"].per_hour == 2.5
    assert config.market_intensity_g_per_kwh == 20.0


def test_overrides_win_and_are_marked_configured():
    config = AccountingConfig.from_env(environ={"GREENMAAS_LOCATION": "FR", "GREENMAAS_PUE": "1.5"},
                                       location="DEU", pue=1.1)
    assert config.location.spec == "DEU" and config.location.location_source == "configured"
    assert config.pue == 1.1


def test_no_location_anywhere_is_the_default(fresh_caches):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = AccountingConfig.from_env(environ={})
    assert config.location.location_source == "default"
    assert describe(config)["location_source"] == "default"
    assert [w.category for w in caught].count(NoLocationWarning) == 1


def test_series_without_location_does_not_warn(write_csv, fresh_caches):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = AccountingConfig.from_env(environ={"GREENMAAS_INTENSITY_CSV": str(write_csv(HOURLY))})
    assert config.location is None
    assert describe(config)["intensity_source"].startswith("intensity series")


@pytest.mark.parametrize(
    "var, value, fragment",
    [
        ("GREENMAAS_LOCATION", "FRR", "did you mean FRA"),
        ("GREENMAAS_PRICE", "0.25EURO/kWh", "malformed price '0.25EURO/kWh'"),
        ("GREENMAAS_PUE", "0.8", "must be a number from 1.0 to 10"),
        ("GREENMAAS_PUE", "high", "not a number"),
        ("GREENMAAS_HARDWARE_PRICE", "gpu 2.5USD/h", "expected <kind>=<price>"),
        ("GREENMAAS_MARKET_INTENSITY", "-1", ">= 0"),
    ],
)
def test_bad_variables_raise_config_error_naming_the_variable(var, value, fragment):
    with pytest.raises(ConfigError) as info:
        AccountingConfig.from_env(environ={"GREENMAAS_LOCATION": "FR", var: value})
    message = str(info.value)
    assert message.startswith(f"{var}: ") and fragment in message and "\n" not in message


def test_unknown_override():
    with pytest.raises(ConfigError, match="unknown accounting setting"):
        AccountingConfig.from_env(environ={}, locaton="FR")


def test_mixed_currencies_raise():
    with pytest.raises(AccountingError, match="mixed currencies: EUR .*USD"):
        AccountingConfig(location="FR", tariff="0.25EUR/kWh", hardware_prices={"gpu": "2USD/h"})
    with pytest.raises(AccountingError, match="mixed currencies"):
        AccountingConfig(location="FR", tariff="0.25EUR/kWh", currency="USD")


def test_to_dict_round_trip_keeps_figures_as_used(write_csv):
    config = AccountingConfig(location="aws:us-east-1", tariff="0.3USD/kWh@08-20,0.2USD/kWh,tz=America/New_York",
                              pue=1.3, hardware_prices="gpu=2.5USD/h", market_intensity_g_per_kwh=5,
                              embodied={"gpu": {"kg_co2e": 150, "lifetime_years": 5}})
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["location"]["intensity_g_per_kwh"] == pytest.approx(244.758, abs=5e-4)
    assert stored["location"]["location_source"] == "configured"
    assert stored["price"] == "0.3USD/kWh@08-20,0.2USD/kWh,tz=America/New_York"
    assert stored["currency"] == "USD" and stored["pue"] == 1.3 and stored["codecarbon_version"]
    # A stored figure is kept even if the data would now say otherwise.
    stored["location"]["intensity_g_per_kwh"] = 250.0
    rebuilt = AccountingConfig.from_dict(stored)
    assert rebuilt.location.intensity_g_per_kwh == 250.0
    assert rebuilt.tariff == config.tariff and rebuilt.embodied == config.embodied

    path = write_csv(HOURLY)
    with_series = AccountingConfig(location="FR", series=str(path)).to_dict()
    assert AccountingConfig.from_dict(with_series).series.summary() == with_series["intensity_series"]
    path.unlink()
    with pytest.raises(AccountingError, match="no longer exists"):
        AccountingConfig.from_dict(with_series)
    assert AccountingConfig.from_dict(with_series, load_series=False).series is None


def test_price_with_a_location():
    config = AccountingConfig(location="FR", pue=1.5)
    out = price(spans(), config)
    assert list(out.columns[-len(PRICE_COLUMNS):]) == list(PRICE_COLUMNS)
    fra = resolve_location("FR").intensity_g_per_kwh
    assert out.carbon_g.tolist() == pytest.approx([1.5 * fra, 3 * fra, 4.5 * fra])
    assert out.carbon_market_g.isna().all() and out.energy_cost.isna().all() and out.cost.isna().all()
    assert out.currency.isna().all()
    assert (out.intensity_source == config.location.source).all()
    assert "carbon_g" not in spans().columns  # the input is left alone


def test_price_with_series_tariff_hardware_and_market(write_csv):
    config = AccountingConfig(location="FR", series=str(write_csv(HOURLY)), market_intensity_g_per_kwh=10,
                              tariff="0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh", hardware_prices="gpu=2EUR/h", pue=1.0)
    df = spans(device_kind=["gpu", "cpu", "GPU"], device_seconds=[3600.0, 3600.0, 1800.0])
    out = price(df, config)
    # Span 2 straddles the 01:00 change: 1 kWh at 100, 1 kWh at 300.
    assert out.carbon_g.tolist() == pytest.approx([100, 400, 900])
    assert out.intensity_g_per_kwh.tolist() == pytest.approx([100, 200, 300])
    assert out.carbon_market_g.tolist() == pytest.approx([10, 20, 30])
    # 2024-05-01 is a Wednesday: span 3 has 1 kWh before 20:00 and 2 after.
    assert out.energy_cost.tolist() == pytest.approx([0.18, 0.36, 0.30 + 2 * 0.18])
    assert out.hardware_cost.tolist()[0] == pytest.approx(2.0) and np.isnan(out.hardware_cost[1])
    assert out.hardware_cost[2] == pytest.approx(1.0)
    assert out.cost.tolist() == pytest.approx([2.18, 0.36, 1.66])
    assert (out.currency == "EUR").all()


def test_pue_multiplies_carbon_and_cost():
    base = price(spans(), AccountingConfig(location=300, tariff="0.2EUR/kWh"))
    pue = price(spans(), AccountingConfig(location=300, tariff="0.2EUR/kWh", pue=1.25))
    assert (pue.carbon_g / base.carbon_g).tolist() == pytest.approx([1.25] * 3)
    assert (pue.energy_cost / base.energy_cost).tolist() == pytest.approx([1.25] * 3)


def test_price_edge_cases():
    config = AccountingConfig(location="FR", tariff="0.2EUR/kWh")
    empty = price(spans().iloc[:0], config)
    assert len(empty) == 0 and set(PRICE_COLUMNS) <= set(empty.columns)
    unknown = spans()
    unknown.loc[1, "energy_j"] = np.nan
    out = price(unknown, config)
    assert np.isnan(out.carbon_g[1]) and np.isnan(out.cost[1]) and not np.isnan(out.cost[0])
    naive = spans()
    naive["start"] = naive["start"].dt.tz_localize(None)
    naive["end"] = naive["end"].dt.tz_localize(None)
    tou = AccountingConfig(location="FR", tariff="0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh")
    assert price(naive, tou).energy_cost.tolist() == pytest.approx(price(spans(), tou).energy_cost.tolist())


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda df: df.drop(columns=["end"]), "missing column(s) end"),
        (lambda df: df.assign(energy_j=[1.0, -1.0, 1.0]), "row 1 has negative energy_j"),
        (lambda df: df.assign(end=df.start - pd.Timedelta(seconds=1)), "row 0 ends before it starts"),
    ],
)
def test_price_rejects_bad_frames(change, fragment):
    with pytest.raises(AccountingError) as info:
        price(change(spans()), AccountingConfig(location="FR"))
    assert fragment in str(info.value)


def test_price_is_fast_on_many_spans():
    import time

    n = 20_000
    start = pd.Timestamp("2024-01-01T00:00Z") + pd.to_timedelta(np.arange(n) * 97, unit="s")
    df = pd.DataFrame({"energy_j": np.full(n, 5e3), "start": start, "end": start + pd.Timedelta(seconds=60),
                       "device_kind": "gpu", "device_seconds": 60.0})
    config = AccountingConfig(location="FR", tariff="0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh,tz=Europe/Paris",
                              hardware_prices="gpu=2EUR/h")
    t0 = time.perf_counter()
    out = price(df, config)
    assert time.perf_counter() - t0 < 1.0
    assert out.cost.notna().all()


def test_describe_and_sci():
    config = AccountingConfig(location="gcp:us-central1", tariff="0.1USD/kWh", pue=1.1,
                              embodied={"gpu": {"kg_co2e": 1000, "lifetime_years": 4}})
    facts = describe(config)
    assert facts["location"].startswith("gcp:us-central1") and facts["intensity_g_per_kwh"] == 430
    assert facts["price"] == "0.1USD/kWh" and facts["currency"] == "USD" and facts["pue"] == 1.1
    assert facts["location_source"] == "configured" and facts["codecarbon_version"]
    m = config.embodied_g("GPU", 3600)
    assert m == pytest.approx(28.5, abs=0.05)
    result = config.sci(energy_j=KWH, functional_units=100, embodied_g=m)
    assert result.sci_g == pytest.approx((1.1 * 430 + m) / 100)
    with pytest.raises(AccountingError, match="no embodied carbon configured for device kind 'tpu'"):
        config.embodied_g("tpu", 1)


def test_market_intensity_never_enters_sci():
    config = AccountingConfig(location=400, market_intensity_g_per_kwh=0)
    assert config.sci(energy_j=KWH, functional_units=1).sci_g == pytest.approx(400)


def test_example_measures_once_and_prices_the_ledger_in_two_places(capsys, tmp_path):
    from greenmaas.clock import SystemClock
    from greenmaas.report import summarize
    from greenmaas.testing import StaticSource

    example = Path(__file__).resolve().parents[2] / "examples" / "carbon_two_locations.py"
    main = runpy.run_path(str(example), run_name="not_main")["main"]
    ledger = tmp_path / "two.db"
    # A GPU whose energy follows the real clock: the example's timing is real, its power fixed.
    gpu = StaticSource(SystemClock(), {"gpu:0": {"energy_j": lambda t: 300.0 * t}})
    args = ["FR", "US-VA", "--ledger", str(ledger), "--epochs", "2", "--epoch-seconds", "0", "--samples", "200"]
    assert main(args, sources=[gpu]) == 0
    out = capsys.readouterr().out
    assert "FR " in out and "US-VA " in out and "carbon (g)" in out and "global_energy_mix.json" in out
    fr, va = (summarize(ledger, model="logreg-demo", accounting={"location": spec})[0] for spec in ("FR", "US-VA"))
    assert fr["energy_j"] == va["energy_j"] > 0  # one measurement, two prices
    assert va["carbon_g"] / fr["carbon_g"] == pytest.approx(
        resolve_location("US-VA").intensity_g_per_kwh / resolve_location("FR").intensity_g_per_kwh)


def test_default_location_warning_points_at_the_caller(fresh_caches):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AccountingConfig()
    assert [w.filename for w in caught if w.category is NoLocationWarning] == [__file__]


def test_price_records_for_the_meter():
    from datetime import datetime, timezone

    from greenmaas.accounting.config import price_records
    from greenmaas.records import DeviceEnergy, SpanRecord

    t0 = datetime(2024, 5, 1, 19, tzinfo=timezone.utc)
    t1 = datetime(2024, 5, 1, 21, tzinfo=timezone.utc)

    def record(span_id, devices):
        return SpanRecord(span_id=span_id, run_id="r", name=span_id, start=t0, end=t1, duration_s=7200.0,
                          devices=devices)

    measured = record("a", [DeviceEnergy("gpu:0", 2 * KWH, "counter"), DeviceEnergy("dram:0", 0.0, "unmeasurable")])
    blind = record("b", [DeviceEnergy("gpu:1", 0.0, "unmeasurable")])
    config = AccountingConfig(location=100, market_intensity_g_per_kwh=10,
                              tariff="0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh", pue=1.5)
    price_records([measured, blind], config)
    assert measured.carbon_g == pytest.approx(300) and measured.carbon_market_g == pytest.approx(30)
    assert measured.cost == pytest.approx(1.5 * (0.30 + 0.18)) and measured.currency == "EUR"
    assert blind.carbon_g is None and blind.cost is None and blind.currency is None
    price_records([], config)


# ----------------------------------------------------------------- re-pricing a run's stored settings


def test_embodied_from_the_environment_and_in_every_form():
    env = {"GREENMAAS_LOCATION": "FR", "GREENMAAS_EMBODIED": "gpu=150kg/4y,CPU=1.2tCO2e/5years"}
    config = AccountingConfig.from_env(environ=env)
    assert config.embodied["gpu"].kg_co2e == 150.0 and config.embodied["gpu"].lifetime_years == 4.0
    assert config.embodied["cpu"].kg_co2e == 1200.0 and config.embodied["cpu"].lifetime_years == 5.0
    assert AccountingConfig(location=1, embodied="gpu=150kg/4y").embodied["gpu"] == config.embodied["gpu"]
    assert AccountingConfig.from_dict(config.to_dict()).embodied == config.embodied
    assert accounting.parse_embodied({"gpu": "150kg/4y"})["gpu"] == config.embodied["gpu"]
    with pytest.raises(ConfigError, match="GREENMAAS_EMBODIED: malformed embodied carbon 'gpu=150'"):
        AccountingConfig.from_env(environ={"GREENMAAS_LOCATION": "FR", "GREENMAAS_EMBODIED": "gpu=150"})


@pytest.mark.parametrize(
    ("name", "raw", "check"),
    [
        ("location", "US-CA", lambda v: v.spec == "US-CA" and v.location_source == "configured"),
        ("tariff", "0.30EUR/kWh@08-20,0.10EUR/kWh", lambda v: v.currency == "EUR" and not v.is_flat),
        ("pue", " 1.25 ", lambda v: v == 1.25),
        ("market_intensity_g_per_kwh", "45 g/kWh", lambda v: v == 45.0),
        ("hardware_prices", "gpu=2.5USD/h", lambda v: v["gpu"].per_hour == 2.5),
        ("embodied", "gpu=150kg/4y", lambda v: v["gpu"].kg_co2e == 150.0),
    ],
)
def test_parse_setting_reads_what_users_type(name, raw, check):
    assert check(accounting.parse_setting(name, raw))


def test_with_overrides_replaces_one_setting_and_keeps_the_rest(write_csv):
    base = AccountingConfig(location="FR", tariff="0.2EUR/kWh", pue=1.1, series=write_csv(HOURLY))
    moved = base.with_overrides(location="DE")
    assert moved.location.spec == "DEU" and moved.series is None  # a new place drops the old series
    assert (moved.tariff, moved.pue, moved.currency) == (base.tariff, 1.1, "EUR")
    repriced = base.with_overrides(tariff="0.1USD/kWh")
    assert repriced.currency == "USD" and repriced.series is base.series
    assert base.with_overrides() is base and base.with_overrides(pue=None) is base
    with pytest.raises(ConfigError, match="unknown accounting setting"):
        base.with_overrides(colour="green")


def test_recorded_rebuilds_the_settings_as_used(write_csv, fresh_caches):
    stored = AccountingConfig(location="FR", tariff="0.2EUR/kWh", embodied="gpu=150kg/4y").to_dict()
    stored["location"]["intensity_g_per_kwh"] = 60.0  # as it was then, not as the data say now
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rebuilding, even the default, never warns
        config, notes = accounting.recorded(stored)
        default, default_notes = accounting.recorded(None)
    assert config.location.intensity_g_per_kwh == 60.0 and notes == []
    assert config.embodied["gpu"].lifetime_years == 4.0 and config.currency == "EUR"
    assert default.location.location_source == "default" and "no accounting settings" in default_notes[0]
    broken, broken_notes = accounting.recorded({"location": {"spec": "x"}, "pue": "high"})
    assert broken.location.location_source == "default" and "unusable" in broken_notes[0]


def test_recorded_series_is_re_read_only_while_unchanged(write_csv):
    path = write_csv(HOURLY)
    stored = AccountingConfig(series=path).to_dict()
    config, notes = accounting.recorded(stored)
    assert config.series is not None and notes == []
    path.write_text(HOURLY + "2024-05-01T02:00:00Z,500\n")  # changed since: not what was used
    config, notes = accounting.recorded(stored)
    # The recorded mean (over first..last timestamp) stands in: 100 g/kWh here.
    assert config.series is None and config.location.intensity_g_per_kwh == pytest.approx(100.0)
    assert "gone or changed" in notes[0]
