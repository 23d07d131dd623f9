"""The one parser for times a user writes: command-line bounds, intensity series, trace files.

Accepted, the same on every Python the package supports (``datetime.fromisoformat`` on 3.10
rejects ``Z`` and fractional seconds other than 3 or 6 digits)::

    2024-05-01                      a date: midnight UTC (parse_time), or the day (parse_when)
    2024-05-01T12:00Z               T or one space between date and time; z as Z
    2024-05-01 12:00:30             seconds optional; a time alone needs hours and minutes
    2024-05-01T12:00:30.123456789   any number of fractional digits (. or ,), cut to microseconds
    2024-05-01T14:00+02:00          offsets +HH:MM, +HHMM or +HH (also -); converted to UTC

**A time without an offset is UTC** (never the machine's local time: a ledger is read on other
machines than the one that wrote it). Every result is an aware ``datetime`` in UTC, or a
``date`` for a bare date where a caller asks for one (:func:`parse_when`).

A text that is not one of these raises :class:`~greenmaas.errors.ConfigError` naming the text
and where it came from (``where``, e.g. ``--since``), or, for a file (``path`` and ``line``),
an :class:`~greenmaas.errors.InputError` naming the file and line. Either is one line.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import NoReturn

from .errors import ConfigError, InputError

__all__ = ["parse_time", "parse_when", "EXAMPLE"]

#: An example shown in error messages.
EXAMPLE = "2024-05-01 or 2024-05-01T12:00Z"

_PATTERN = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    (?:
        [Tt\ ]
        (?P<hour>\d{2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d+))?)?)?
        (?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?
    )?
    """,
    re.VERBOSE | re.ASCII,
)
_LONGEST = 64  # characters of the offending text quoted back in an error


def _fail(problem: str, text: str, how: tuple) -> NoReturn:
    where, path, line, lead = how
    shown = text if len(text) <= _LONGEST else text[: _LONGEST - 3] + "..."
    message = f"{lead} {shown!r}: {problem}; use {EXAMPLE} (no offset means UTC)"
    if path is not None:
        raise InputError(f"{where}: {message}" if where else message, path=path, line=line)
    raise ConfigError(f"{where}: {message}" if where else message)


def parse_when(
    text: str,
    *,
    where: str | None = None,
    path: str | None = None,
    line: int | None = None,
    lead: str = "invalid time",
) -> date | datetime:
    """``text`` as a ``date`` when it is a bare ``YYYY-MM-DD``, else as an aware UTC ``datetime``.

    For bounds, where a bare date may stand for its whole day (``--until 2024-05-01``).
    ``where`` names the option or column in the error; ``path`` and ``line`` name the file;
    ``lead`` begins the error's problem (``invalid time 'yesterday': ...``).
    """
    how = (where, path, line, lead)
    if not isinstance(text, str):
        _fail("not text", repr(text), how)
    stripped = text.strip()
    match = _PATTERN.fullmatch(stripped)
    if match is None:
        hint = "not a date or an ISO 8601 time" if stripped else "empty"
        _fail(hint, text, how)
    g = match.groupdict()
    try:
        day = date(int(g["year"]), int(g["month"]), int(g["day"]))
    except ValueError as exc:
        _fail(str(exc), text, how)
    if g["hour"] is None:
        return day
    if g["minute"] is None:
        _fail("a time needs hours and minutes (HH:MM)", text, how)
    hour, minute, second = int(g["hour"]), int(g["minute"] or 0), int(g["second"] or 0)
    micro = int((g["fraction"] or "0")[:6].ljust(6, "0"))
    if hour > 23 or minute > 59 or second > 59:
        # 24:00 and leap seconds are valid ISO 8601 but name no Python time; say so plainly.
        _fail("hour, minute or second out of range", text, how)
    zone = g["zone"]
    offset = timedelta(0)
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:] or 0)
        if hours > 23 or minutes > 59:
            _fail("offset out of range", text, how)
        offset = timedelta(hours=hours, minutes=minutes) * (-1 if zone[0] == "-" else 1)
    try:
        moment = datetime(day.year, day.month, day.day, hour, minute, second, micro, tzinfo=timezone.utc)
        return moment - offset
    except OverflowError:
        _fail("out of range", text, how)


def parse_time(
    text: str,
    *,
    where: str | None = None,
    path: str | None = None,
    line: int | None = None,
    lead: str = "invalid time",
) -> datetime:
    """``text`` as an aware UTC ``datetime`` (a bare date is its midnight, UTC).

    Arguments as for :func:`parse_when`.
    """
    value = parse_when(text, where=where, path=path, line=line, lead=lead)
    if isinstance(value, datetime):
        return value
    return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
