"""Summaries of a ledger: energy per model, phase, run, day, request, tenant or span name.

The counting rule
-----------------
Spans nest (an epoch contains steps, a batch contains requests). A group's ``energy_j`` is the sum
of its spans' ``self_energy_j`` — the energy attributed to each span itself, excluding its
children — so no joule is counted twice however spans nest or however they are grouped.
``duration_s`` sums only the group's top-most spans (those whose parent is not in the same group),
so time is not counted twice either. Concurrent spans (parallel requests) still add up to more
than wall time: durations are span-seconds.

When grouping by model, phase, run, day or tenant, an ``(idle)`` row holds the energy the devices
used while no span ran, so the rows add up to what the devices consumed. Rows are sorted by energy,
largest first, with ``(idle)`` last. A span without a value for the grouping key is in ``(none)``.

Extra columns (carbon, cost) plug in through :class:`ExtraColumn`; values recorded on the spans
(``carbon_g``, ``carbon_market_g``, ``cost``) appear automatically when present.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .analysis import opened
from .errors import ConfigError
from .sources.base import UNMEASURABLE

if TYPE_CHECKING:
    import pandas as pd

    from .ledger import Ledger

__all__ = [
    "GROUPS",
    "IDLE",
    "NONE",
    "ExtraColumn",
    "RECORDED_COLUMNS",
    "summarize",
    "totals",
    "list_runs",
    "to_utc",
    "parse_date",
]

#: What ``summarize(by=...)`` accepts.
GROUPS = ("model", "phase", "run", "day", "request", "tenant", "name")
#: Group label of the row holding energy used while no span ran.
IDLE = "(idle)"
#: Group label for spans without a value for the grouping key.
NONE = "(none)"

_GROUP_COLUMN = {
    "model": "model",
    "phase": "phase",
    "run": "run_id",
    "request": "request_id",
    "tenant": "tenant",
    "name": "name",
}
# Idle energy belongs to no request and no span name; for these it would only mislead.
_IDLE_GROUPS = frozenset({"model", "phase", "run", "day", "tenant"})

@dataclass(frozen=True)
class ExtraColumn:
    """A report column computed per span and summed per group (e.g. carbon or cost).

    ``per_span(spans)`` gets the selected spans as a DataFrame (columns: span_id, parent_id,
    run_id, model, phase, request_id, tenant, name, start, end, duration_s, energy_j,
    self_energy_j, carbon_g, carbon_market_g, cost, currency, group) and returns one value per
    span, aligned with its index. To avoid double counting, base it on ``self_energy_j``.
    ``idle(windows)`` gets the device-totals windows of the ``(idle)`` row (columns: run_id,
    device, method, start, end, idle_j) and returns the idle row's value, or None.
    ``header`` is the label for tables, with its unit: ``"Carbon (gCO2e)"``.
    """

    key: str
    header: str
    per_span: Callable[["pd.DataFrame"], "pd.Series"]
    idle: Callable[["pd.DataFrame"], float | None] | None = None
    digits: int = 2


def _recorded(key: str, header: str) -> ExtraColumn:
    # Recorded values, like energy_j, cover a span and its children; keep the span's own share
    # (self_energy_j / energy_j) so nested spans are not counted twice.
    def per_span(spans):
        share = (spans["self_energy_j"] / spans["energy_j"]).where(spans["energy_j"] > 0, 1.0)
        return spans[key] * share

    return ExtraColumn(key, header, per_span)


#: Columns taken from values the meter recorded on spans; shown only when some span has one.
RECORDED_COLUMNS = (
    _recorded("carbon_g", "Carbon (gCO2e)"),
    _recorded("carbon_market_g", "Carbon, market (gCO2e)"),
    _recorded("cost", "Cost"),
)

_SPAN_COLUMNS = (
    "span_id", "parent_id", "run_id", "model", "phase", "request_id", "tenant", "name", "start",
    "end", "duration_s", "energy_j", "self_energy_j", "carbon_g", "carbon_market_g", "cost",
    "currency",
)
_WINDOW_COLUMNS = ("run_id", "device", "method", "start", "end", "total_j", "attributed_j", "idle_j", "gap_s")


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


def _frame(rows, columns) -> "pd.DataFrame":
    import pandas as pd

    df = pd.DataFrame.from_records(rows, columns=list(columns))
    for c in columns:
        if c in ("start", "end"):
            df[c] = pd.to_datetime(df[c], utc=True)
        elif c.endswith(("_j", "_s", "_g")) or c == "cost":
            df[c] = df[c].astype("float64")
    return df


def _idle_windows(conn, since, until) -> "pd.DataFrame":
    """Device-total windows in the time range (a window without times takes its run's start)."""
    from sqlalchemy import func, select

    from .ledger.models import DeviceTotal, Run

    when = func.coalesce(DeviceTotal.start, Run.start)
    query = (
        select(*(getattr(DeviceTotal, c) for c in _WINDOW_COLUMNS))
        .join(Run, Run.run_id == DeviceTotal.run_id)
        .where(DeviceTotal.method != UNMEASURABLE)
    )
    if since is not None:
        query = query.where(when >= since)
    if until is not None:
        query = query.where(when < until)
    return _frame(conn.execute(query).all(), _WINDOW_COLUMNS)


def _float(value) -> float | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else float(value)


def summarize(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    by: str = "model",
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    extra_columns: Sequence[ExtraColumn] = (),
) -> list[dict[str, Any]]:
    """Energy per group, without double counting (see the module docstring).

    Returns rows ``{"group", "spans", "duration_s", "energy_j", ...}``, one key more per extra
    column (and per recorded carbon/cost column present), largest energy first, ``(idle)`` last.
    ``since``/``until`` filter on span start (UTC; ``until`` exclusive, a bare date included).
    ``model`` keeps that model's spans only (and drops the ``(idle)`` row, which has no model).
    ``energy_j`` is None for a group none of whose spans could be measured.
    """
    if by not in GROUPS:
        raise ConfigError(f"cannot group by {by!r}; expected one of {', '.join(GROUPS)}")
    lo, hi = to_utc(since), to_utc(until, upper=True)
    from sqlalchemy import select

    from .ledger.models import Span

    query = select(*(getattr(Span, c) for c in _SPAN_COLUMNS))
    if lo is not None:
        query = query.where(Span.start >= lo)
    if hi is not None:
        query = query.where(Span.start < hi)
    if model is not None:
        query = query.where(Span.model == model)

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        spans = _frame(conn.execute(query).all(), _SPAN_COLUMNS)
        idle = None
        if by in _IDLE_GROUPS and model is None:
            idle = _idle_windows(conn, lo, hi)

    columns = [c for c in RECORDED_COLUMNS if spans[c.key].notna().any()]
    columns += list(extra_columns)

    rows = _group_rows(spans, by, columns)
    rows.sort(key=lambda r: (r["energy_j"] is None, -(r["energy_j"] or 0.0), str(r["group"])))
    if idle is not None and len(idle):
        row = {
            "group": IDLE,
            "spans": 0,
            "duration_s": 0.0,
            "energy_j": _float(idle["idle_j"].sum(min_count=1)),
        }
        for c in columns:
            row[c.key] = _float(c.idle(idle)) if c.idle is not None else None
        if any(c.key == "cost" for c in columns):
            row["currency"] = None
        rows.append(row)
    return rows


def _group_rows(spans: "pd.DataFrame", by: str, columns: list[ExtraColumn]) -> list[dict]:
    if spans.empty:
        return []
    if by == "day":
        key = spans["start"].dt.strftime("%Y-%m-%d")
    else:
        key = spans[_GROUP_COLUMN[by]]
    spans = spans.assign(group=key.where(key.notna() & (key.astype(str) != ""), NONE).astype(str))
    group_of = dict(zip(spans["span_id"], spans["group"]))
    top = spans["parent_id"].map(group_of) != spans["group"]  # parent elsewhere, or no parent
    spans = spans.assign(top_duration_s=spans["duration_s"].where(top, 0.0))
    for c in columns:
        spans[f"__{c.key}"] = c.per_span(spans)

    rows = []
    for group, g in spans.groupby("group", sort=False):
        row = {
            "group": group,
            "spans": int(len(g)),
            "duration_s": float(g["top_duration_s"].sum()),
            "energy_j": _float(g["self_energy_j"].sum(min_count=1)),
        }
        for c in columns:
            row[c.key] = _float(g[f"__{c.key}"].sum(min_count=1))
        if any(c.key == "cost" for c in columns):
            currencies = set(g.loc[g["cost"].notna(), "currency"].dropna())
            row["currency"] = currencies.pop() if len(currencies) == 1 else None
            if len(currencies) > 1:
                row["cost"], row["currency"] = None, "mixed"
        rows.append(row)
    return rows


def totals(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """What each device consumed: ``{"device", "method", "total_j", "attributed_j", "idle_j",
    "gap_s", "windows"}`` summed over attribution windows (and runs), by device.

    ``method`` lists the distinct methods if a device was measured in several ways. Devices that
    could not be measured have None energies (never 0 J).
    """
    from sqlalchemy import func, select

    from .ledger.models import DeviceTotal, Run

    lo, hi = to_utc(since), to_utc(until, upper=True)
    when = func.coalesce(DeviceTotal.start, Run.start)
    query = select(*(getattr(DeviceTotal, c) for c in _WINDOW_COLUMNS)).join(
        Run, Run.run_id == DeviceTotal.run_id
    )
    if lo is not None:
        query = query.where(when >= lo)
    if hi is not None:
        query = query.where(when < hi)
    if run is not None:
        query = query.where(DeviceTotal.run_id == run)
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        windows = _frame(conn.execute(query).all(), _WINDOW_COLUMNS)

    out = []
    for device, g in windows.groupby("device", sort=True):
        measured = g[g["method"] != UNMEASURABLE]
        out.append(
            {
                "device": device,
                "method": ", ".join(sorted(set(g["method"]))),
                "total_j": _float(measured["total_j"].sum(min_count=1)),
                "attributed_j": _float(measured["attributed_j"].sum(min_count=1)),
                "idle_j": _float(measured["idle_j"].sum(min_count=1)),
                "gap_s": float(g["gap_s"].sum()),
                "windows": int(len(g)),
            }
        )
    return out


def list_runs(ledger_or_url: Ledger | str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per run, oldest first: run_id, host, pid, start, end, status, spans, energy_j.

    ``energy_j`` is what the run's devices consumed (the sum of their totals, spans and idle
    alike); for a run without device totals, the sum of its spans' self energy.
    """
    from sqlalchemy import func, select

    from .ledger.models import DeviceTotal, Run, Span

    span_stats = (
        select(
            Span.run_id,
            func.count().label("spans"),
            func.sum(Span.self_energy_j).label("span_j"),
        )
        .group_by(Span.run_id)
        .subquery()
    )
    device_stats = (
        select(DeviceTotal.run_id, func.sum(DeviceTotal.total_j).label("total_j"))
        .where(DeviceTotal.method != UNMEASURABLE)
        .group_by(DeviceTotal.run_id)
        .subquery()
    )
    query = (
        select(
            Run.run_id,
            Run.host,
            Run.pid,
            Run.start,
            Run.end,
            Run.status,
            span_stats.c.spans,
            span_stats.c.span_j,
            device_stats.c.total_j,
        )
        .outerjoin(span_stats, span_stats.c.run_id == Run.run_id)
        .outerjoin(device_stats, device_stats.c.run_id == Run.run_id)
        .order_by(Run.start, Run.run_id)
    )
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "run_id": r.run_id,
            "host": r.host,
            "pid": r.pid,
            "start": r.start,
            "end": r.end,
            "status": r.status,
            "spans": int(r.spans or 0),
            "energy_j": _float(r.total_j if r.total_j is not None else r.span_j),
        }
        for r in rows
    ]
