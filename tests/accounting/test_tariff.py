"""Prices, time-of-use tariffs and hardware prices, checked against sums done by hand."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenmaas.accounting.tariff import (
    EnergyPrice,
    HourlyPrice,
    parse_energy_price,
    parse_hardware_prices,
    parse_hourly_price,
    parse_tariff,
    split_hardware_cost,
)
from greenmaas.errors import AccountingError

KWH = 3.6e6
UTC = timezone.utc
TOU = "0.30EUR/kWh@08-20@mon-fri,0.18EUR/kWh"
WED = datetime(2024, 5, 1, tzinfo=UTC)  # a Wednesday
SAT = datetime(2024, 5, 4, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, per_kwh, currency",
    [("0.25EUR/kWh", 0.25, "EUR"), ("0.25 EUR/kWh", 0.25, "EUR"), (" 0.25 eur / kwh ", 0.25, "EUR"),
     ("180USD/MWh", 0.18, "USD"), (".5GBP/kWh", 0.5, "GBP"), ("2e-1CHF/kWh", 0.2, "CHF")],
)
def test_energy_prices(text, per_kwh, currency):
    price = parse_energy_price(text)
    assert price.per_kwh == pytest.approx(per_kwh) and price.currency == currency


@pytest.mark.parametrize("text", ["0.25EUR", "EUR0.25/kWh", "0.25EURO/kWh", "-0.1EUR/kWh", "0.25EUR/kW", "25ct/kWh",
                                  "", "0.25EUR/h"])
def test_malformed_energy_prices_name_the_string(text):
    with pytest.raises(AccountingError) as info:
        parse_energy_price(text)
    message = str(info.value)
    assert repr(text) in message and "expected" in message and "\n" not in message


def test_hourly_price():
    price = parse_hourly_price("2.50USD/h")
    assert price == HourlyPrice(2.5, "USD")
    assert price.cost(1800) == pytest.approx(1.25)
    with pytest.raises(AccountingError, match="2.50USD/kWh"):
        parse_hourly_price("2.50USD/kWh")


def test_flat_tariff():
    tariff = parse_tariff("0.25EUR/kWh")
    assert tariff.is_flat and tariff.currency == "EUR"
    assert tariff.energy_cost(2 * KWH, WED, WED + timedelta(hours=5)) == pytest.approx(0.5)


def test_time_of_use_span_crossing_20h_on_a_weekday():
    tariff = parse_tariff(TOU)
    # 3 kWh spread over 19:00-22:00 on a Wednesday: 1 kWh at peak, 2 kWh off-peak.
    cost = tariff.energy_cost(3 * KWH, WED + timedelta(hours=19), WED + timedelta(hours=22))
    assert cost == pytest.approx(1 * 0.30 + 2 * 0.18)
    # 19:30-20:30: half and half.
    assert tariff.energy_cost(KWH, WED + timedelta(hours=19.5), WED + timedelta(hours=20.5)) == pytest.approx(0.24)


def test_time_of_use_weekend_and_night():
    tariff = parse_tariff(TOU)
    assert tariff.energy_cost(KWH, SAT + timedelta(hours=10), SAT + timedelta(hours=11)) == pytest.approx(0.18)
    assert tariff.energy_cost(KWH, WED + timedelta(hours=3), WED + timedelta(hours=4)) == pytest.approx(0.18)
    # Friday 19:00 to Saturday 09:00 (14 h, 1 kWh each hour): only Friday 19-20 is peak.
    fri = SAT - timedelta(days=1)
    cost = tariff.energy_cost(14 * KWH, fri + timedelta(hours=19), SAT + timedelta(hours=9))
    assert cost == pytest.approx(0.30 + 13 * 0.18)


def test_time_zone_moves_the_peak():
    paris = parse_tariff(TOU + ",tz=Europe/Paris")
    # 19:00 UTC in May is 21:00 in Paris: off-peak there, peak in UTC.
    assert paris.energy_cost(KWH, WED + timedelta(hours=19), WED + timedelta(hours=19.5)) == pytest.approx(0.18)
    assert paris.energy_cost(KWH, WED + timedelta(hours=17), WED + timedelta(hours=18)) == pytest.approx(0.30)
    # In January Paris is UTC+1: peak starts 07:00 UTC.
    jan = datetime(2024, 1, 10, 7, tzinfo=UTC)  # a Wednesday
    assert paris.energy_cost(KWH, jan, jan + timedelta(hours=1)) == pytest.approx(0.30)
    assert parse_tariff(TOU, timezone="Asia/Kolkata").timezone == "Asia/Kolkata"


def test_half_hour_offset_zone_splits_at_the_half_hour():
    india = parse_tariff(TOU + ",tz=Asia/Kolkata")  # UTC+05:30: 08:00 local is 02:30 UTC
    cost = india.energy_cost(KWH, WED + timedelta(hours=2), WED + timedelta(hours=3))
    assert cost == pytest.approx(0.5 * 0.18 + 0.5 * 0.30)


def test_wrapping_hours_and_day_lists():
    tariff = parse_tariff("0.10EUR/kWh@22-06,0.20EUR/kWh@sat+sun,0.25EUR/kWh")
    assert tariff.price_per_kwh_at([WED + timedelta(hours=h) for h in (23, 2, 6, 12)]).tolist() == [0.1, 0.1, 0.25, 0.25]
    assert tariff.price_per_kwh_at(SAT + timedelta(hours=12)).tolist() == [0.2]
    assert tariff.price_per_kwh_at(SAT + timedelta(hours=23)).tolist() == [0.1]  # first match wins
    assert parse_tariff("0.1EUR/kWh@fri-mon,0.2EUR/kWh").rules[0].weekdays == frozenset({4, 5, 6, 0})
    assert parse_tariff("0.1EUR/kWh@weekends@00-24,0.2EUR/kWh").price_per_kwh_at(SAT).tolist() == [0.1]


def test_dict_and_json_forms_match_the_string():
    as_dict = {"timezone": "Europe/Paris",
               "rules": [{"price": "0.30EUR/kWh", "hours": "08-20", "days": "mon-fri"}, {"price": "0.18EUR/kWh"}]}
    from_string = parse_tariff(TOU + ",tz=Europe/Paris")
    assert parse_tariff(as_dict) == from_string
    assert parse_tariff(json.dumps(as_dict)) == from_string
    listed = {"timezone": "Europe/Paris",
              "rules": [{"price": "0.3EUR/kWh", "hours": [8, 20], "days": ["mon", "tue", "wed", "thu", "fri"]},
                        {"price": "0.18EUR/kWh"}]}
    assert parse_tariff(listed) == from_string
    assert parse_tariff(from_string.to_dict()) == from_string
    assert parse_tariff(from_string.to_string()) == from_string


def test_json_file(tmp_path):
    path = tmp_path / "tariff.json"
    path.write_text(json.dumps({"rules": [{"price": "0.2EUR/kWh"}]}))
    assert parse_tariff(str(path)).currency == "EUR"
    path.write_text("{not json")
    with pytest.raises(AccountingError, match="tariff file"):
        parse_tariff(str(path))


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("0.30EUR/kWh@08-20", "last rule must have no conditions"),
        ("0.30EUR/kWh,0.18EUR/kWh", "never apply"),
        ("0.30EUR/kWh@8-20@mon-fry,0.18EUR/kWh", "malformed days 'mon-fry'"),
        ("0.30EUR/kWh@25-03,0.18EUR/kWh", "malformed hours '25-03'"),
        ("0.30EUR/kWh@08:30-20,0.18EUR/kWh", "whole local hours"),
        ("0.30EUR/kWh@08-08,0.18EUR/kWh", "start != end"),
        ("0.30EUR/kWh@08-20@09-10,0.18EUR/kWh", "two hour ranges"),
        ("0.30EUR/kWh@08-20,0.18USD/kWh", "mixed currencies"),
        ("0.30EUR/kWh@08-20,,0.18EUR/kWh", "empty rule"),
        ("0.30EUR/kWh@08-20,0.18EUR/kWh,tz=Europe/Lutetia", "unknown time zone"),
        ("0.30EURkWh@08-20,0.18EUR/kWh", "malformed price '0.30EURkWh'"),
        ({"rules": [{"price": "0.1EUR/kWh", "hour": "08-20"}]}, "unknown keys"),
        ({"prices": []}, "'rules' list"),
        (42, "expected a string"),
    ],
)
def test_malformed_tariffs(spec, fragment):
    with pytest.raises(AccountingError) as info:
        parse_tariff(spec)
    message = str(info.value)
    assert fragment in message and "\n" not in message
    if isinstance(spec, str):
        assert repr(spec) in message or "malformed price" in message


def test_vectorised_costs_match_scalar_ones():
    tariff = parse_tariff(TOU + ",tz=America/New_York")
    rng = np.random.default_rng(1)
    starts = [WED + timedelta(hours=float(h)) for h in rng.uniform(-48, 200, 300)]
    ends = [s + timedelta(hours=float(d)) for s, d in zip(starts, rng.uniform(0, 30, 300))]
    energy = rng.uniform(0, 5e7, 300)
    many = tariff.energy_cost(energy, starts, ends)
    assert many == pytest.approx([tariff.energy_cost(e, s, t) for e, s, t in zip(energy, starts, ends)])


def test_hardware_prices_and_idle_line():
    prices = parse_hardware_prices("gpu=2.50USD/h, cpu=0.10USD/h")
    assert prices == {"gpu": HourlyPrice(2.5, "USD"), "cpu": HourlyPrice(0.1, "USD")}
    # Two GPUs reserved for an hour (7200 device-seconds); spans used 3600 + 1800.
    spans, idle = split_hardware_cost(prices["gpu"], 7200, [3600, 1800])
    assert spans.tolist() == pytest.approx([2.5, 1.25])
    assert idle == pytest.approx(1.25)
    assert spans.sum() + idle == pytest.approx(5.0)
    with pytest.raises(AccountingError, match="only 100 were reserved"):
        split_hardware_cost(prices["gpu"], 100, [90, 20])


@pytest.mark.parametrize("spec, fragment", [("gpu:2.50USD/h", "expected <kind>=<price>"),
                                            ("gpu=2.50USD/h,cpu=0.1EUR/h", "mixed currencies"),
                                            ("gpu=2.50USD", "malformed price '2.50USD'")])
def test_malformed_hardware_prices(spec, fragment):
    with pytest.raises(AccountingError, match=fragment):
        parse_hardware_prices(spec)


_hours = st.floats(min_value=-200, max_value=400, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(a=_hours, d1=st.floats(min_value=0.001, max_value=60), d2=st.floats(min_value=0.001, max_value=60),
       power_kw=st.floats(min_value=0, max_value=100, allow_nan=False),
       zone=st.sampled_from(["UTC", "Europe/Paris", "Asia/Kolkata", "America/New_York"]))
def test_cost_is_additive_over_adjacent_windows(a, d1, d2, power_kw, zone):
    tariff = parse_tariff(f"0.40EUR/kWh@17-21@mon-fri,0.05EUR/kWh@00-06,0.20EUR/kWh,tz={zone}")
    t0 = WED + timedelta(hours=a)
    t1, t2 = t0 + timedelta(hours=d1), t0 + timedelta(hours=d1 + d2)
    whole = tariff.energy_cost(power_kw * KWH * (d1 + d2), t0, t2)
    parts = tariff.energy_cost(power_kw * KWH * d1, t0, t1) + tariff.energy_cost(power_kw * KWH * d2, t1, t2)
    assert whole == pytest.approx(parts, rel=1e-6, abs=1e-9)


def test_energy_price_str_round_trips():
    assert parse_energy_price(str(EnergyPrice(0.3, "EUR"))) == EnergyPrice(0.3, "EUR")


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata",
                                  "Australia/Lord_Howe", "Pacific/Chatham"])
def test_local_hours_match_the_time_zone_database_across_changes_of_offset(zone):
    """Day and hour on the zone's clocks, at every quarter hour of two years (every change of
    offset in them, half-hour and 45-minute ones included), as pandas' conversion gives them."""
    import numpy as np
    import pandas as pd

    from greenmaas.accounting.tariff import _GRID_NS, _local_week_hours

    lo = (1_640_995_200 * 10**9 // _GRID_NS) * _GRID_NS  # 2022-01-01
    grid = np.arange(lo, lo + 2 * 366 * 86_400 * 10**9, _GRID_NS, dtype=np.int64)
    local = pd.DatetimeIndex(grid.view("datetime64[ns]"), tz="UTC").tz_convert(zone)
    weekday, hour = _local_week_hours(grid, zone)
    assert np.array_equal(weekday, np.asarray(local.day_of_week))
    assert np.array_equal(hour, np.asarray(local.hour))
