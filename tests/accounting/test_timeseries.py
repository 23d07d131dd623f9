"""Time-varying intensity: the hour matters, spans split across intervals, bad CSVs name file and line."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenmaas.accounting.locations import resolve_location
from greenmaas.accounting.timeseries import IntensitySeries, StepFunction, to_epoch_ns
from greenmaas.errors import AccountingError, InputError

KWH = 3.6e6
UTC = timezone.utc
HOURLY = """timestamp,gco2_per_kwh
2024-05-01T00:00:00Z,100
2024-05-01T01:00:00Z,300
2024-05-01T02:00:00+00:00,200
"""


def at(hour: float) -> datetime:
    return datetime(2024, 5, 1, tzinfo=UTC) + timedelta(hours=hour)


@pytest.fixture
def series(write_csv):
    return IntensitySeries.from_csv(write_csv(HOURLY))


def test_same_energy_different_hour_different_carbon(series):
    assert series.carbon_g(KWH, at(0.25), at(0.75)) == pytest.approx(100)
    assert series.carbon_g(KWH, at(1.25), at(1.75)) == pytest.approx(300)


def test_span_straddling_two_intervals_splits_energy(series):
    # 1 kWh over 00:30-01:30: half at 100 g/kWh, half at 300 g/kWh.
    assert series.carbon_g(KWH, at(0.5), at(1.5)) == pytest.approx(0.5 * 100 + 0.5 * 300)
    # A quarter in the first hour, three quarters in the second.
    assert series.carbon_g(KWH, at(0.75), at(1.75)) == pytest.approx(0.25 * 100 + 0.75 * 300)
    # Across three intervals, with the last value holding onward.
    # 4 kWh over 00:30-03:30: 0.5 h at 100, 1 h at 300, 1.5 h at 200 (each hour a third of the energy).
    assert series.carbon_g(4 * KWH, at(0.5), at(3.5)) == pytest.approx(4 * (0.5 * 100 + 1 * 300 + 1.5 * 200) / 3)


def test_not_total_times_average_of_values(series):
    # 1 kWh over 00:00-01:20: three quarters of it at 100, a quarter at 300 -> 150 g, whereas the
    # average of the two values met would say 200.
    assert series.carbon_g(KWH, at(0), at(4 / 3)) == pytest.approx(150)


def test_last_value_holds_onward_and_naive_is_utc(series):
    assert series.carbon_g(KWH, datetime(2030, 1, 1), datetime(2030, 1, 2)) == pytest.approx(200)
    assert series.carbon_g(KWH, datetime(2024, 5, 1, 1, 15), datetime(2024, 5, 1, 1, 45)) == pytest.approx(300)


def test_offsets_are_converted_to_utc(write_csv):
    s = IntensitySeries.from_csv(write_csv("timestamp,gco2_per_kwh\n2024-05-01T02:00:00+02:00,10\n2024-05-01T01:00,20\n"))
    assert s.start == at(0)
    assert s.carbon_g(KWH, at(0.5), at(0.5)) == pytest.approx(10)


def test_before_first_is_an_error_unless_held(series, write_csv):
    with pytest.raises(AccountingError, match="before intensity series .* starts"):
        series.carbon_g(KWH, at(-1), at(0.5))
    held = IntensitySeries.from_csv(write_csv(HOURLY), hold_before_first=True)
    assert held.carbon_g(KWH, at(-1), at(1)) == pytest.approx(100)


def test_zero_length_span_uses_the_value_at_its_start(series):
    assert series.carbon_g(KWH, at(1), at(1)) == pytest.approx(300)


def test_vectorised_matches_one_by_one(series):
    rng = np.random.default_rng(0)
    starts = [at(h) for h in rng.uniform(0, 4, 200)]
    ends = [s + timedelta(hours=float(d)) for s, d in zip(starts, rng.uniform(0, 2, 200))]
    energy = rng.uniform(0, 1e7, 200)
    many = series.carbon_g_many(energy, pd.Series(starts), pd.Series(ends))
    one = [series.carbon_g(e, s, t) for e, s, t in zip(energy, starts, ends)]
    assert many == pytest.approx(one)


def test_end_before_start_raises(series):
    with pytest.raises(AccountingError, match="before it starts"):
        series.carbon_g(KWH, at(2), at(1))


def test_summary(series):
    summary = series.summary()
    assert summary["points"] == 3 and summary["first"] == "2024-05-01T00:00:00Z"
    assert summary["mean_g_per_kwh"] == pytest.approx(200)


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("", 1, "empty file"),
        ("time,gco2_per_kwh\n2024-05-01T00:00Z,1\n", 1, "missing column 'timestamp'"),
        ("timestamp,value\n2024-05-01T00:00Z,1\n", 1, "missing column 'gco2_per_kwh'"),
        ("timestamp,gco2_per_kwh\n", 1, "no data rows"),
        ("timestamp,gco2_per_kwh\n2024-05-01T00:00Z,1\nyesterday,2\n", 3, "bad timestamp 'yesterday'"),
        ("timestamp,gco2_per_kwh\n2024-05-01T00:00Z,-5\n", 2, "must be a finite number >= 0"),
        ("timestamp,gco2_per_kwh\n2024-05-01T00:00Z,lots\n", 2, "'lots' is not a number"),
        ("timestamp,gco2_per_kwh\n2024-05-01T00:00Z,nan\n", 2, "finite"),
        ("timestamp,gco2_per_kwh\n2024-05-01T01:00Z,1\n\n2024-05-01T00:00Z,2\n", 4, "not after the previous one"),
        ("timestamp,gco2_per_kwh\n2024-05-01T01:00Z,1\n2024-05-01T01:00Z,2\n", 3, "not after the previous one"),
        ("timestamp,gco2_per_kwh\n2024-05-01T01:00Z\n", 2, "expected 2 fields"),
    ],
)
def test_malformed_csv_names_file_and_line(write_csv, text, line, problem):
    path = write_csv(text)
    with pytest.raises(InputError) as info:
        IntensitySeries.from_csv(path)
    err = info.value
    assert err.path == str(path) and err.line == line
    assert problem in str(err)
    assert str(err).startswith(f"{path}, line {line}: ")
    assert "\n" not in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        IntensitySeries.from_csv(tmp_path / "absent.csv")


def test_extra_columns_and_bom_are_fine(write_csv):
    s = IntensitySeries.from_csv(write_csv("\ufeffzone,timestamp,gco2_per_kwh\nFR,2024-05-01 00:00,42\n"))
    assert s.values_g_per_kwh.tolist() == [42.0]


def test_to_epoch_ns_kinds():
    ns = 1714521600 * 10**9  # 2024-05-01T00:00Z
    for value in (at(0), datetime(2024, 5, 1), "2024-05-01T02:00:00+02:00", pd.Timestamp("2024-05-01", tz="UTC"),
                  np.datetime64("2024-05-01T00:00:00")):
        assert to_epoch_ns(value).tolist() == [ns]
    assert to_epoch_ns(np.array([ns], dtype=np.int64)).tolist() == [ns]
    with pytest.raises(AccountingError):
        to_epoch_ns(["not a time"])


def test_step_function_rejects_unsorted():
    with pytest.raises(AccountingError, match="strictly increase"):
        StepFunction([2, 1], [1.0, 2.0])


_times = st.integers(min_value=0, max_value=10 * 86400)


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(min_value=0, max_value=2000, allow_nan=False),
    energy_j=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    start_s=_times,
    length_s=st.integers(min_value=0, max_value=3 * 86400),
    points=st.integers(min_value=1, max_value=30),
)
def test_constant_series_equals_fixed_number(value, energy_j, start_s, length_s, points):
    origin = datetime(2024, 1, 1, tzinfo=UTC)
    series = IntensitySeries([origin + timedelta(hours=h) for h in range(points)], [value] * points)
    start = origin + timedelta(seconds=start_s)
    end = start + timedelta(seconds=length_s)
    fixed = resolve_location(value)
    assert series.carbon_g(energy_j, start, end) == pytest.approx(
        energy_j / KWH * fixed.intensity_g_per_kwh, rel=1e-9, abs=1e-9
    )


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=12),
    a=_times, gap1=st.integers(1, 86400), gap2=st.integers(1, 86400),
    power_w=st.floats(min_value=0, max_value=5000, allow_nan=False),
)
def test_carbon_adds_up_over_adjacent_windows(values, a, gap1, gap2, power_w):
    origin = datetime(2024, 1, 1, tzinfo=UTC)
    series = IntensitySeries([origin + timedelta(hours=3 * i) for i in range(len(values))], values)
    t0 = origin + timedelta(seconds=a)
    t1, t2 = t0 + timedelta(seconds=gap1), t0 + timedelta(seconds=gap1 + gap2)
    whole = series.carbon_g(power_w * (gap1 + gap2), t0, t2)
    parts = series.carbon_g(power_w * gap1, t0, t1) + series.carbon_g(power_w * gap2, t1, t2)
    assert whole == pytest.approx(parts, rel=1e-9, abs=1e-6)
