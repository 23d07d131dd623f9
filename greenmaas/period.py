"""The period a ledger query covers: ``since``/``until`` bounds as aware UTC datetimes.

Reports, priced spans and device totals all filter on these bounds; the CLI parses its
``--since``/``--until`` with :func:`parse_date`.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from .errors import ConfigError

__all__ = ["parse_date", "to_utc"]


def parse_date(text: str) -> date | datetime:
    """``YYYY-MM-DD`` as a ``date``, or an ISO 8601 time (``2024-05-01T12:00Z``) as a ``datetime``.

    Raises :class:`ConfigError` naming the text when it is neither.
    """
    text = text.strip()
    try:
        return date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"invalid date {text!r}; use YYYY-MM-DD or an ISO 8601 time like 2024-05-01T12:00Z"
        ) from None


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
