"""The period a ledger query covers: ``since``/``until`` bounds as aware UTC datetimes.

Reports, priced spans and device totals all filter on these bounds; the CLI parses its
``--since``/``--until`` with :func:`parse_date` (the package's one time parser,
:mod:`greenmaas.timeparse`). A bound without an offset is UTC.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from .errors import ConfigError
from .timeparse import parse_when

__all__ = ["parse_date", "to_utc"]


def parse_date(text: str, *, where: str | None = None) -> date | datetime:
    """``YYYY-MM-DD`` as a ``date``, or a time (``2024-05-01T12:00Z``; no offset means UTC) as an
    aware UTC ``datetime``: :func:`greenmaas.timeparse.parse_when`.

    Raises :class:`ConfigError` naming the text (and ``where``, e.g. the option) when it is neither.
    """
    return parse_when(text, where=where, lead="invalid date")


def to_utc(value: date | datetime | str | None, *, upper: bool = False) -> datetime | None:
    """A bound for ``since``/``until`` as an aware UTC datetime.

    Accepts a ``date`` or ``datetime`` (naive means UTC) or a string for :func:`parse_date`. A bare
    date used as an upper bound (``upper=True``) includes that whole day.
    """
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_date(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
    if isinstance(value, date):
        start = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        return start + timedelta(days=1) if upper else start
    raise ConfigError(f"invalid date {value!r}; expected a date, a datetime or an ISO 8601 string")
