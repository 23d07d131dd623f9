"""The one time parser: what it accepts (the same on every Python), what it refuses, and how."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from greenmaas.errors import ConfigError, InputError
from greenmaas.period import parse_date, to_utc
from greenmaas.timeparse import parse_time, parse_when

UTC = timezone.utc
NOON = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-05-01T12:00Z", NOON),  # fromisoformat on Python 3.10 refuses this one
        ("2024-05-01T12:00z", NOON),
        ("2024-05-01 12:00", NOON),  # no offset: UTC, never local time
        ("2024-05-01t12:00:00", NOON),
        ("2024-05-01T12:00:00+00:00", NOON),
        ("2024-05-01T14:00+02:00", NOON),
        ("2024-05-01T14:00:00+0200", NOON),
        ("2024-05-01T14:00+02", NOON),
        ("2024-05-01T06:30-05:30", NOON),
        ("2024-05-02T00:00+12:00", NOON),  # the day before, in UTC
        ("  2024-05-01T12:00Z\n", NOON),
        ("2024-05-01T12:00:00.5Z", NOON + timedelta(microseconds=500_000)),
        ("2024-05-01T12:00:00,25", NOON + timedelta(microseconds=250_000)),
        ("2024-05-01T12:00:00.123Z", NOON + timedelta(microseconds=123_000)),
        ("2024-05-01T12:00:00.123456Z", NOON + timedelta(microseconds=123_456)),
        ("2024-05-01T12:00:00.123456789Z", NOON + timedelta(microseconds=123_456)),  # cut, not rounded
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-02-29T23:59:59.999999Z", datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)),
    ],
)
def test_accepted_forms(text, expected):
    got = parse_time(text)
    assert got == expected and got.tzinfo is UTC


def test_parse_when_keeps_a_bare_date_a_date():
    assert parse_when("2024-05-01") == date(2024, 5, 1) and type(parse_when("2024-05-01")) is date
    assert parse_when("2024-05-01T12:00Z") == NOON
    # The bounds built from them: a date as an upper bound includes its day.
    assert to_utc(parse_date("2024-05-01"), upper=True) == datetime(2024, 5, 2, tzinfo=UTC)
    assert to_utc("2024-05-01T14:00+02:00") == NOON


@pytest.mark.parametrize(
    "text, problem",
    [
        ("yesterday", "not a date or an ISO 8601 time"),
        ("", "empty"),
        ("   ", "empty"),
        ("2024-13-01", "month must be in 1..12"),
        ("2024-02-30", "day is out of range for month"),
        ("2024-05-01T25:00Z", "out of range"),
        ("2024-05-01T12:60", "out of range"),
        ("2024-05-01T12", "needs hours and minutes"),
        ("2024-05-01T12Z", "needs hours and minutes"),
        ("2024-05-01T12:00+24:00", "offset out of range"),
        ("2024-05-01Z", "not a date or an ISO 8601 time"),
        ("2024-05-01T12:00 UTC", "not a date or an ISO 8601 time"),
        ("2024/05/01", "not a date or an ISO 8601 time"),
        ("1714564800", "not a date or an ISO 8601 time"),
        ("0001-01-01T00:30+01:00", "out of range"),
        ("２０２４-05-01", "not a date or an ISO 8601 time"),  # full-width digits are not ISO 8601
    ],
)
def test_refused_forms_name_the_text_and_where(text, problem):
    with pytest.raises(ConfigError) as info:
        parse_time(text, where="--since")
    message = str(info.value)
    assert message.startswith(f"--since: invalid time {text!r}: ") and problem in message
    assert "2024-05-01T12:00Z" in message and "UTC" in message and "\n" not in message


def test_errors_in_a_file_name_the_file_and_line():
    with pytest.raises(InputError) as info:
        parse_time("soon", path="series.csv", line=7, lead="bad timestamp")
    assert str(info.value).startswith("series.csv, line 7: bad timestamp 'soon': ")
    assert (info.value.path, info.value.line) == ("series.csv", 7)


def test_a_very_long_text_is_quoted_short():
    with pytest.raises(ConfigError) as info:
        parse_time("2024-05-01" + "x" * 10_000)
    assert len(str(info.value)) < 200


def test_not_text_is_refused():
    with pytest.raises(ConfigError, match="not text"):
        parse_time(20240501)  # type: ignore[arg-type]


@given(
    moment=st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    offset_min=st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
    sep=st.sampled_from(["T", " "]),
    style=st.sampled_from(["colon", "compact", "Z"]),
)
def test_any_time_written_in_any_offset_reads_back(moment, offset_min, sep, style):
    offset = timedelta(minutes=offset_min)
    if style == "Z":
        offset = timedelta(0)
    local = (moment + offset).replace(tzinfo=None)
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    suffix = {"colon": f"{sign}{hh:02d}:{mm:02d}", "compact": f"{sign}{hh:02d}{mm:02d}", "Z": "Z"}[style]
    text = local.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + f".{local.microsecond:06d}" + suffix
    assert parse_time(text) == moment
