"""Summaries of a ledger: energy, carbon and cost per model, phase, run, day, request, tenant or
span name, re-computed from the recorded energy.

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

Carbon and cost
---------------
Energy is the recorded fact; carbon and cost are computed from it each time a report is made, with
the accounting each run recorded in ``config["accounting"]`` (as used at the time: the stored
grid figure, not a new lookup; see :func:`greenmaas.accounting.recorded`) or with settings
given now (``accounting=``), without re-running anything. Per span:

* ``carbon_g`` (location-based) and ``carbon_market_g`` (only where a market-based intensity is
  set) price ``self_energy_j`` × PUE, spread uniformly over the span and split over time where
  the intensity varies — never the inclusive energy, which would count children twice;
* ``energy_cost`` prices the same energy with the tariff (time-of-use periods split likewise);
* ``hardware_cost`` charges the span's own device time (``span_devices.self_device_s``, shared
  among concurrent spans by the same rules as energy) at the hourly price of each device's kind;
* ``cost = energy_cost + hardware_cost`` in ``currency`` (None where neither is configured).

The ``(idle)`` row prices the idle energy of each device window (``device_totals``) the same way
and charges its idle device time (``idle_s``): the operator's own line. So rows add up to the
devices' totals for energy, carbon and cost alike.

SCI (Green Software Foundation v1.1) per group, with ``sci="request" | "token" | "sample"``:
``(E·I + M) / R``, E the group's energy × PUE, E·I its location-based carbon, M embodied carbon
amortised over the group's device time, R the number of distinct ``request_id``, the output
tokens (``tokens_out``; a group with none counts ``tokens_in + tokens_out``) or the ``items``.
Tokens and items are counted on the top-most span carrying them (a child repeating its parent's
count is not counted again). R = 0 (the ``(idle)`` row) gives ``sci_g`` None: "n/a".

Extra columns plug in through :class:`ExtraColumn`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .analysis import opened
from .errors import ConfigError
from .sources.base import METHOD_UNCERTAINTY, UNMEASURABLE

if TYPE_CHECKING:
    import pandas as pd

    from .accounting.config import AccountingConfig
    from .ledger import Ledger

__all__ = [
    "GROUPS",
    "IDLE",
    "NONE",
    "SCI_UNITS",
    "ExtraColumn",
    "Summary",
    "summary",
    "summarize",
    "priced_spans",
    "totals",
    "list_runs",
    "to_utc",
    "parse_date",
]

#: What ``summarize(by=...)`` accepts.
GROUPS = ("model", "phase", "run", "day", "request", "tenant", "name")
#: Functional units ``summarize(sci=...)`` accepts.
SCI_UNITS = ("request", "token", "sample")
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
_J_PER_KWH = 3.6e6
#: Priced columns, per span and per row.
_MONEY = ("energy_cost", "hardware_cost", "cost")


@dataclass(frozen=True)
class ExtraColumn:
    """A report column computed per span and summed per group (e.g. water, or a custom price).

    ``per_span(spans)`` gets the selected spans as a DataFrame (columns: span_id, parent_id,
    run_id, kind, model, phase, request_id, tenant, name, start, end, duration_s, energy_j,
    self_energy_j, method, tokens_in, tokens_out, items, group, and — when priced — carbon_g,
    carbon_market_g, energy_cost, hardware_cost, cost, currency, embodied_g, facility_energy_j,
    all for the span's own share) and returns one value per span, aligned with its index. To
    avoid double counting, base it on ``self_energy_j``. ``idle(windows)`` gets the device-totals
    windows of the ``(idle)`` row (columns: run_id, device, method, start, end, total_j,
    attributed_j, idle_j, gap_s, idle_s, and the priced columns) and returns the idle row's
    value, or None. ``header`` is the label for tables, with its unit: ``"Water (L)"``.
    """

    key: str
    header: str
    per_span: Callable[["pd.DataFrame"], "pd.Series"]
    idle: Callable[["pd.DataFrame"], float | None] | None = None
    digits: int = 2


@dataclass
class Summary:
    """A report: its rows and what the figures rest on.

    ``rows``: what :func:`summarize` returns. ``sources``: one dict per accounting configuration
    in use (``describe(config)`` plus ``runs`` and ``notes``), in the order rows refer to them.
    ``methods``: ``{"method", "uncertainty", "spans", "energy_j"}`` per measurement method.
    ``period``: first span start and last span end (UTC). ``groups``: per group label, the facts
    a model card states (``sources`` indices, ``methods``, ``devices``, ``first``, ``last``,
    ``runs``). ``notes``: what a reader must know (defaults, fallbacks, what SCI leaves out).
    """

    by: str
    rows: list[dict[str, Any]]
    sources: list[dict[str, Any]] = field(default_factory=list)
    methods: list[dict[str, Any]] = field(default_factory=list)
    period: tuple[datetime | None, datetime | None] = (None, None)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sci: str | None = None
    priced: bool = True

    def to_dict(self) -> dict[str, Any]:
        """The sources, methods, period and notes, JSON-ready (rows are left out)."""
        first, last = self.period
        return {
            "by": self.by,
            "period": {"first": first.isoformat() if first else None, "last": last.isoformat() if last else None},
            "sources": self.sources,
            "methods": self.methods,
            "sci": self.sci,
            "notes": self.notes,
        }


_SPAN_COLUMNS = (
    "span_id", "parent_id", "run_id", "kind", "model", "phase", "request_id", "tenant", "name",
    "start", "end", "duration_s", "energy_j", "self_energy_j", "method", "tokens_in", "tokens_out",
    "items",
)
_DEVICE_COLUMNS = ("span_id", "device", "self_j", "self_device_s", "method")
_WINDOW_COLUMNS = (
    "run_id", "device", "method", "start", "end", "total_j", "attributed_j", "idle_j", "gap_s", "idle_s",
)


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
        elif c.endswith(("_j", "_s", "_g")) or c in ("tokens_in", "tokens_out", "items"):
            df[c] = df[c].astype("float64")
    return df


def _float(value) -> float | None:
    import pandas as pd

    return None if value is None or pd.isna(value) else float(value)


# ----------------------------------------------------------------------------------- loading


@dataclass
class _Selection:
    spans: "pd.DataFrame"
    devices: "pd.DataFrame"  # span_devices of the selected spans
    windows: "pd.DataFrame | None"  # idle windows, when the grouping has an (idle) row
    runs: dict[str, dict[str, Any]]  # run_id -> config, devices, start, end


def _load(ledger_or_url, lo, hi, model, *, idle: bool) -> _Selection:
    import pandas as pd
    from sqlalchemy import func, select

    from .ledger.models import DeviceTotal, Run, Span, SpanDevice

    conditions = []
    if lo is not None:
        conditions.append(Span.start >= lo)
    if hi is not None:
        conditions.append(Span.start < hi)
    if model is not None:
        conditions.append(Span.model == model)
    span_query = select(*(getattr(Span, c) for c in _SPAN_COLUMNS)).where(*conditions)
    device_query = (
        select(*(getattr(SpanDevice, c) for c in _DEVICE_COLUMNS))
        .join(Span, Span.span_id == SpanDevice.span_id)
        .where(*conditions)
    )
    when = func.coalesce(DeviceTotal.start, Run.start)
    window_query = (
        select(*(getattr(DeviceTotal, c) for c in _WINDOW_COLUMNS))
        .join(Run, Run.run_id == DeviceTotal.run_id)
        .where(DeviceTotal.method != UNMEASURABLE)
    )
    if lo is not None:
        window_query = window_query.where(when >= lo)
    if hi is not None:
        window_query = window_query.where(when < hi)
    run_query = select(Run.run_id, Run.config, Run.devices, Run.start, Run.end)

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        spans = _frame(conn.execute(span_query).all(), _SPAN_COLUMNS)
        devices = _frame(conn.execute(device_query).all(), _DEVICE_COLUMNS)
        windows = _frame(conn.execute(window_query).all(), _WINDOW_COLUMNS) if idle else None
        runs = {
            r.run_id: {"config": r.config or {}, "devices": r.devices or [], "start": r.start, "end": r.end}
            for r in conn.execute(run_query)
        }
    described = _device_kinds(runs)
    devices["run_id"] = devices["span_id"].map(dict(zip(spans["span_id"], spans["run_id"])))
    devices["kind"] = _kinds(described, devices["run_id"], devices["device"])
    if windows is not None:
        # A window without times takes its run's.
        starts = pd.to_datetime(windows["run_id"].map({k: r["start"] for k, r in runs.items()}), utc=True)
        ends = pd.to_datetime(windows["run_id"].map({k: r["end"] for k, r in runs.items()}), utc=True)
        windows["start"] = windows["start"].fillna(starts)
        windows["end"] = windows["end"].fillna(ends).fillna(windows["start"])
        windows["kind"] = _kinds(described, windows["run_id"], windows["device"])
    return _Selection(spans, devices, windows, runs)


# ----------------------------------------------------------------------------------- pricing


@dataclass
class _Source:
    config: "AccountingConfig"
    notes: list[str]
    runs: list[str] = field(default_factory=list)


def _resolve_accounting(accounting: Any) -> "AccountingConfig | dict[str, Any] | None":
    """``accounting=`` as a whole configuration, parsed overrides, or None (as recorded)."""
    from .accounting.config import AccountingConfig, parse_setting

    if accounting is None or isinstance(accounting, AccountingConfig):
        return accounting
    if not isinstance(accounting, Mapping):
        raise ConfigError(
            f"accounting={accounting!r}: expected an AccountingConfig, a dict of settings to replace, "
            "None (as recorded) or False (energy only)"
        )
    fields = AccountingConfig.__dataclass_fields__
    unknown = set(accounting) - set(fields)
    if unknown:
        raise ConfigError(
            f"unknown accounting setting(s) {', '.join(sorted(unknown))}; expected {', '.join(fields)}"
        )
    return {
        name: parse_setting(name, value) if isinstance(value, str) else value
        for name, value in accounting.items()
        if value is not None
    }


def _sources_for(runs: Mapping[str, dict], run_ids: Sequence[str], accounting: Any) -> tuple[list[_Source], dict]:
    """The accounting each run is priced with, deduplicated: (sources, run_id -> source index)."""
    from .accounting.config import AccountingConfig, recorded
    from .accounting.locations import NoLocationWarning

    sources: list[_Source] = []
    seen: dict[str, int] = {}
    cache: dict[str, tuple[Any, list[str]]] = {}
    index: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoLocationWarning)  # the report's sources state the default
        for run_id in run_ids:
            if isinstance(accounting, AccountingConfig):
                config, notes = accounting, []
            else:
                stored = (runs.get(run_id) or {}).get("config", {}).get("accounting")
                key = json.dumps(stored, sort_keys=True, default=str)
                if key not in cache:
                    config, notes = recorded(stored)
                    if accounting:
                        config = config.with_overrides(**accounting)
                        if accounting.keys() & {"location", "series"}:
                            notes = []  # they were about the recorded intensity
                    cache[key] = (config, notes)
                config, notes = cache[key]
            key = json.dumps([config.to_dict(), notes], sort_keys=True, default=str)
            if key not in seen:
                seen[key] = len(sources)
                sources.append(_Source(config, list(notes)))
            index[run_id] = seen[key]
            sources[seen[key]].runs.append(run_id)
    return sources, index


def _device_kinds(runs: Mapping[str, dict]) -> dict[tuple[str, str], dict]:
    """(run_id, device id) -> the run's description of that device (kind, name, ...)."""
    out = {}
    for run_id, run in runs.items():
        for d in run.get("devices") or []:
            if isinstance(d, dict) and d.get("id"):
                out[(run_id, d["id"])] = d
    return out


def _kinds(described: dict, run_ids: "pd.Series", devices: "pd.Series") -> list[str]:
    """Device kind of each (run, device): as the run described it, else the id's prefix."""
    out = []
    for run_id, device in zip(run_ids, devices):
        d = described.get((run_id, device))
        out.append(str((d.get("kind") if d else None) or str(device).split(":", 1)[0]).lower())
    return out


def _price_energy(frame: "pd.DataFrame", energy: str, sources: list[_Source], source_of: "pd.Series") -> None:
    """carbon_g, carbon_market_g, energy_cost, facility_energy_j of ``frame[energy]`` (J) spread
    over ``[start, end)``, each row with the accounting ``sources[source_of]``; in place."""
    import numpy as np

    from .accounting.config import price

    for c in ("carbon_g", "carbon_market_g", "energy_cost", "facility_energy_j"):
        frame[c] = np.full(len(frame), np.nan)
    for i, src in enumerate(sources):
        mask = (source_of == i).to_numpy()
        if not mask.any():
            continue
        part = frame.loc[mask, ["start", "end"]].assign(energy_j=frame.loc[mask, energy])
        priced = price(part, src.config)
        for c in ("carbon_g", "carbon_market_g", "energy_cost"):
            frame.loc[mask, c] = priced[c].to_numpy()
        frame.loc[mask, "facility_energy_j"] = part["energy_j"].to_numpy(dtype=np.float64) * src.config.pue


def _price_device_time(seconds: "pd.Series", kinds: "pd.Series", sources: list[_Source],
                       source_of: "pd.Series") -> tuple["np.ndarray", "np.ndarray"]:
    """Hardware cost (NaN where the kind has no price) and embodied grams of device time."""
    import numpy as np

    sec = seconds.fillna(0.0).to_numpy(dtype=np.float64)
    cost, grams = np.full(len(sec), np.nan), np.zeros(len(sec))
    for i, src in enumerate(sources):
        mask = (source_of == i).to_numpy()
        if not mask.any():
            continue
        prices, embodied = src.config.hardware_prices, src.config.embodied
        kind = kinds[mask]
        if prices:
            rate = kind.map(lambda k: prices[k].per_hour if k in prices else np.nan).to_numpy(dtype=np.float64)
            cost[mask] = sec[mask] / 3600.0 * rate
        if embodied:
            per_s = kind.map(lambda k: embodied[k].amortised_g(1.0) if k in embodied else 0.0)
            grams[mask] = sec[mask] * per_s.to_numpy(dtype=np.float64)
    return cost, grams


def _total_cost(frame: "pd.DataFrame", energy: str, sources: list[_Source], source_of: "pd.Series") -> None:
    """cost = energy_cost + hardware_cost (NaN where both are), and its currency; in place.

    Unknown energy under a tariff is an unknown cost, not the hardware share alone.
    """
    import numpy as np

    e, h = frame["energy_cost"], frame["hardware_cost"]
    tariffed = source_of.map({i: s.config.tariff is not None for i, s in enumerate(sources)}).fillna(False)
    known = (e.notna() | h.notna()) & ~(frame[energy].isna() & tariffed.astype(bool))
    frame["cost"] = (e.fillna(0.0) + h.fillna(0.0)).where(known, np.nan)
    currency = source_of.map({i: s.config.currency for i, s in enumerate(sources)})
    frame["currency"] = currency.astype(object).where(frame["cost"].notna(), None)


def _price_selection(sel: _Selection, sources: list[_Source], index: dict[str, int]) -> None:
    """Priced columns on ``sel.spans`` (their own share) and ``sel.windows`` (idle), in place."""
    import pandas as pd

    spans, devices = sel.spans, sel.devices
    source_of_span = spans["run_id"].map(index)
    _price_energy(spans, "self_energy_j", sources, source_of_span)
    # Device time is priced per (span, device) by the device's kind, then summed per span.
    cost, grams = _price_device_time(devices["self_device_s"], devices["kind"], sources,
                                     devices["run_id"].map(index))
    per_span = pd.DataFrame({"hardware_cost": cost, "embodied_g": grams}, index=devices.index)
    per_span = per_span.groupby(devices["span_id"]).sum(min_count=1)
    spans["hardware_cost"] = spans["span_id"].map(per_span["hardware_cost"]).astype("float64")
    spans["embodied_g"] = spans["span_id"].map(per_span["embodied_g"]).fillna(0.0).astype("float64")
    _total_cost(spans, "self_energy_j", sources, source_of_span)

    w = sel.windows
    if w is None:
        return
    source_of_window = w["run_id"].map(index)
    _price_energy(w, "idle_j", sources, source_of_window)
    w["hardware_cost"], w["embodied_g"] = _price_device_time(w["idle_s"], w["kind"], sources, source_of_window)
    _total_cost(w, "idle_j", sources, source_of_window)


def _priced_selection(ledger_or_url, lo, hi, model, *, idle: bool, accounting: Any):
    sel = _load(ledger_or_url, lo, hi, model, idle=idle)
    run_ids = sorted(set(sel.spans["run_id"]) | (set(sel.windows["run_id"]) if sel.windows is not None else set()))
    sources, index = _sources_for(sel.runs, run_ids, _resolve_accounting(accounting))
    _price_selection(sel, sources, index)
    return sel, sources, index


def priced_spans(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    accounting: Any = None,
) -> "pd.DataFrame":
    """The selected spans with carbon and cost of their own share, re-computed from energy.

    One row per span (the columns :class:`ExtraColumn` describes), priced as :func:`summarize`
    prices them: with each run's recorded accounting, or ``accounting`` (an
    :class:`~greenmaas.accounting.AccountingConfig` for every run, or a dict of settings to
    replace, e.g. ``{"location": "FR", "tariff": "0.25EUR/kWh"}``). Unlike the recorded
    ``carbon_g`` of :func:`~greenmaas.analysis.read_ledger` (which covers a span's children too),
    these columns sum over any set of spans without double counting.
    """
    sel, _, _ = _priced_selection(ledger_or_url, to_utc(since), to_utc(until, upper=True), model,
                                  idle=False, accounting=accounting)
    return sel.spans


# ----------------------------------------------------------------------------------- grouping


def summary(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    by: str = "model",
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    extra_columns: Sequence[ExtraColumn] = (),
    accounting: Any = None,
    sci: str | None = None,
) -> Summary:
    """Energy, carbon and cost per group, with the sources they rest on (see the module doc).

    ``accounting``: None prices each run with the accounting it recorded (the world average,
    stated as ``location_source`` "default", where it recorded none); a dict replaces some
    settings for every run (keys are :class:`~greenmaas.accounting.AccountingConfig` fields,
    values objects or the strings ``GREENMAAS_*`` take: ``{"location": "FR", "pue": "1.2"}``);
    an ``AccountingConfig`` replaces them all; False gives energy only. ``sci``: add SCI
    columns per ``request``, ``token`` or ``sample``. Raises ConfigError, AccountingError.
    """
    import pandas as pd

    if by not in GROUPS:
        raise ConfigError(f"cannot group by {by!r}; expected one of {', '.join(GROUPS)}")
    if sci is not None and sci not in SCI_UNITS:
        raise ConfigError(f"unknown SCI functional unit {sci!r}; expected one of {', '.join(SCI_UNITS)}")
    if sci is not None and accounting is False:
        raise ConfigError("SCI needs carbon: do not pass accounting=False with sci=")
    lo, hi = to_utc(since), to_utc(until, upper=True)
    idle = by in _IDLE_GROUPS and model is None
    if accounting is False:
        sel = _load(ledger_or_url, lo, hi, model, idle=idle)
        sources: list[_Source] = []
    else:
        sel, sources, _ = _priced_selection(ledger_or_url, lo, hi, model, idle=idle, accounting=accounting)
    priced = accounting is not False
    market = any(s.config.market_intensity_g_per_kwh is not None for s in sources)
    out = Summary(by=by, rows=[], sci=sci, priced=priced)

    spans = sel.spans
    spans["group"] = _group_keys(spans, by)
    for c in extra_columns:
        spans[f"__{c.key}"] = c.per_span(spans)
    # Time counts only a group's top-most spans: a parent in the same group already covers it.
    parent_group = spans["parent_id"].map(dict(zip(spans["span_id"], spans["group"])))
    spans["top_duration_s"] = spans["duration_s"].where(parent_group != spans["group"], 0.0)
    if sci is not None:
        for name, counts in _unit_counts(spans, sci).items():
            spans[name] = counts
    keys = dict(priced=priced, market=market, extra=[c.key for c in extra_columns], sci=sci, out=out)
    rows = _rows(spans, spans["group"], **keys)
    rows.sort(key=lambda r: (r["energy_j"] is None, -(r["energy_j"] or 0.0), str(r["group"])))

    w = sel.windows
    if w is not None and len(w):
        w = w.assign(self_energy_j=w["idle_j"], top_duration_s=0.0, request_id=None)
        for c in extra_columns:
            w[f"__{c.key}"] = float("nan")
        (row,) = _rows(w, pd.Series(IDLE, index=w.index), **keys, idle=True)
        for c in extra_columns:
            row[c.key] = _float(c.idle(sel.windows)) if c.idle is not None else None
        rows.append(row)
    out.rows = rows
    _describe(out, sel, sources)
    return out


def summarize(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    by: str = "model",
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    extra_columns: Sequence[ExtraColumn] = (),
    accounting: Any = None,
    sci: str | None = None,
) -> list[dict[str, Any]]:
    """Energy, carbon and cost per group, without double counting (see the module docstring).

    Returns rows ``{"group", "spans", "duration_s", "energy_j", "carbon_g", "energy_cost",
    "hardware_cost", "cost", "currency"}`` (``carbon_market_g`` too where a market-based intensity
    is set; one key more per extra column; the SCI keys ``sci_unit``, ``functional_units``,
    ``sci_energy_kwh``, ``sci_operational_g``, ``sci_embodied_g``, ``sci_g`` with ``sci=``),
    largest energy first, ``(idle)`` last. ``since``/``until`` filter on span start (UTC;
    ``until`` exclusive, a bare date included). ``model`` keeps that model's spans only (and
    drops the ``(idle)`` row, which has no model). ``energy_j`` is None for a group none of whose
    spans could be measured. ``accounting`` and ``sci``: see :func:`summary`, which also says
    what the figures rest on.
    """
    return summary(ledger_or_url, by=by, since=since, until=until, model=model,
                   extra_columns=extra_columns, accounting=accounting, sci=sci).rows


def _group_keys(spans: "pd.DataFrame", by: str) -> "pd.Series":
    if spans.empty:
        return spans["span_id"].astype(str)
    key = spans["start"].dt.strftime("%Y-%m-%d") if by == "day" else spans[_GROUP_COLUMN[by]]
    return key.where(key.notna() & (key.astype(str) != ""), NONE).astype(str)


def _rows(frame: "pd.DataFrame", key: "pd.Series", *, priced: bool, market: bool, extra: list[str],
          sci: str | None, out: Summary, idle: bool = False) -> list[dict[str, Any]]:
    """One row per value of ``key``, summed without loops over groups (reports may have 100,000)."""
    import numpy as np
    import pandas as pd

    g = frame.groupby(key, sort=False)
    agg = pd.DataFrame({
        "spans": 0 if idle else g.size(),
        "duration_s": g["top_duration_s"].sum(),
        "energy_j": g["self_energy_j"].sum(min_count=1),
    })
    money = ["carbon_g", *(["carbon_market_g"] if market else []), *_MONEY] if priced else []
    for c in money:
        agg[c] = g[c].sum(min_count=1)
    if priced:
        currencies = g["currency"].nunique()
        agg["currency"] = g["currency"].first().where(currencies == 1, None).astype(object)
        mixed = currencies > 1  # nothing converts currencies; a sum across them means nothing
        agg.loc[mixed, list(_MONEY)] = np.nan
        agg.loc[mixed, "currency"] = "mixed"
    for k in extra:
        agg[k] = g[f"__{k}"].sum(min_count=1)
    if sci is not None:
        _sci_columns(agg, g, sci, out, idle)

    rows = []
    columns = list(agg.columns)
    for group, values in zip(agg.index, agg.itertuples(index=False, name=None)):
        row: dict[str, Any] = {"group": str(group)}
        for c, v in zip(columns, values):
            if c == "spans":
                row[c] = int(v)
            elif c in ("currency", "sci_unit"):
                row[c] = None if v is None or (isinstance(v, float) and np.isnan(v)) else v
            elif c == "functional_units":
                row[c] = int(v) if float(v).is_integer() else float(v)
            else:
                row[c] = _float(v)
        rows.append(row)
    return rows


def _sci_columns(agg: "pd.DataFrame", g: Any, unit: str, out: Summary, idle: bool) -> None:
    """SCI = (E·I + M) / R per row of ``agg``; R = 0 (the idle row) gives None: n/a."""
    import numpy as np

    if idle:
        units = agg["spans"] * 0.0
    elif unit == "request":
        units = g["request_id"].nunique().astype("float64")
    elif unit == "token":
        units = g["__u_tokens_out"].sum()
        inputs = g["__u_tokens_in"].sum()
        fallback = (units == 0) & (inputs > 0)
        if fallback.any():
            units = units.where(~fallback, inputs)
            _note(out, "SCI: groups with no output tokens count tokens_in + tokens_out")
    else:
        units = g["__u_items"].sum()
    operational = g["carbon_g"].sum(min_count=1)
    embodied = g["embodied_g"].sum()
    agg["sci_unit"] = unit
    agg["functional_units"] = units
    agg["sci_energy_kwh"] = g["facility_energy_j"].sum(min_count=1) / _J_PER_KWH
    agg["sci_operational_g"] = operational
    agg["sci_embodied_g"] = embodied
    agg["sci_g"] = ((operational + embodied) / units.where(units > 0, np.nan))


def _unit_counts(spans: "pd.DataFrame", unit: str) -> dict[str, "pd.Series"]:
    """Tokens (out and in) or items per span, counted only on the top-most span carrying them."""
    import pandas as pd

    columns = {"request": (), "token": ("tokens_out", "tokens_in"), "sample": ("items",)}[unit]
    parent_of = dict(zip(spans["span_id"], spans["parent_id"]))
    out = {}
    for col in columns:
        carries = dict(zip(spans["span_id"], spans[col].notna()))
        covered = pd.Series(False, index=spans.index)
        ancestor = spans["parent_id"]
        for _ in range(len(spans)):  # parents in the selection, or outside it (NaN); no cycles
            if not ancestor.notna().any():
                break
            covered |= ancestor.map(carries).fillna(False).astype(bool)
            ancestor = ancestor.map(parent_of)
        out[f"__u_{col}"] = spans[col].where(~covered, 0.0).fillna(0.0)
    return out


def _note(out: Summary, text: str) -> None:
    if text not in out.notes:
        out.notes.append(text)


# ----------------------------------------------------------------------------------- sources


def _describe(out: Summary, sel: _Selection, sources: list[_Source]) -> None:
    """Fill in what a summary's figures rest on: sources, methods, period, per-group facts."""
    from .accounting.config import describe

    spans, devices, windows = sel.spans, sel.devices, sel.windows
    for i, src in enumerate(sources):
        facts = describe(src.config)
        facts.update(runs=sorted(src.runs), notes=list(src.notes))
        out.sources.append(facts)
        for note in src.notes:
            runs = ", ".join(sorted(src.runs)[:3]) + (" …" if len(src.runs) > 3 else "")
            _note(out, f"run {runs}: {note}" if len(src.runs) == 1 else f"runs {runs}: {note}")

    energy = spans.groupby("method")["self_energy_j"].sum(min_count=1) if len(spans) else {}
    counts = spans["method"].value_counts() if len(spans) else {}
    methods = set(spans["method"]) | (set(windows["method"]) if windows is not None else set())
    out.methods = [
        {"method": m, "uncertainty": METHOD_UNCERTAINTY.get(m), "spans": int(counts.get(m, 0)),
         "energy_j": _float(energy.get(m)) if len(spans) else None}
        for m in sorted(methods, key=_method_order)
    ]
    if len(spans):
        out.period = (spans["start"].min().to_pydatetime(), spans["end"].max().to_pydatetime())

    if out.sci is not None and out.priced:
        if not any(s.config.embodied for s in sources):
            _note(out, "SCI: M = 0, no embodied carbon given (--embodied gpu=150kg/4y or GREENMAAS_EMBODIED)")
        else:
            kinds = set(devices["kind"]) - {k for s in sources for k in s.config.embodied}
            if kinds:
                _note(out, f"SCI: M leaves out device kind(s) {', '.join(sorted(kinds))}: no embodied figure given")

    # Per group: the facts a model card states. Distinct (group, value) pairs first, so that a
    # report of 100,000 requests loops over few rows.
    if spans.empty:
        return
    described = _device_kinds(sel.runs)
    index = {run: i for i, s in enumerate(sources) for run in s.runs}
    pairs = spans[["group", "run_id", "method"]].drop_duplicates()
    runs = pairs[["group", "run_id"]].drop_duplicates()
    used = devices.assign(group=devices["span_id"].map(dict(zip(spans["span_id"], spans["group"]))))
    used = used[["group", "run_id", "device"]].drop_duplicates().sort_values("device", kind="stable")
    times = spans.groupby("group", sort=False).agg(first=("start", "min"), last=("end", "max"))
    facts: dict[str, dict[str, Any]] = {
        str(group): {"sources": set(), "methods": set(), "devices": [], "runs": set(),
                     "first": first.to_pydatetime(), "last": last.to_pydatetime()}
        for group, first, last in zip(times.index, times["first"], times["last"])
    }
    for group, run_id in zip(runs["group"], runs["run_id"]):
        facts[group]["runs"].add(run_id)
        if run_id in index:
            facts[group]["sources"].add(index[run_id])
    for group, method in zip(pairs["group"], pairs["method"]):
        facts[group]["methods"].add(method)
    for group, run_id, dev in zip(used["group"], used["run_id"], used["device"]):
        d = described.get((run_id, dev)) or {}
        name = f"{d['name']} ({dev})" if d.get("name") else dev
        if name not in facts[group]["devices"]:
            facts[group]["devices"].append(name)
    for f in facts.values():
        f.update(sources=sorted(f["sources"]), methods=sorted(f["methods"], key=_method_order),
                 runs=sorted(f["runs"]))
    out.groups = facts


def _method_order(method: str) -> int:
    order = ("counter", "replay", "power", "estimate", UNMEASURABLE)
    return order.index(method) if method in order else len(order)


# ----------------------------------------------------------------------------------- devices, runs


def totals(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """What each device consumed: ``{"device", "method", "total_j", "attributed_j", "idle_j",
    "gap_s", "idle_s", "windows"}`` summed over attribution windows (and runs), by device.

    ``method`` lists the distinct methods if a device was measured in several ways. Devices that
    could not be measured have None energies (never 0 J). ``idle_s`` is device time no span used.
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
                "idle_s": float(g["idle_s"].fillna(0.0).sum()),
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
