"""A selection of the ledger, priced: the spans (and idle device windows) a report covers, with
carbon and cost computed from their recorded energy.

This is what :mod:`greenmaas.reporting.summary` groups into rows, and what :func:`priced_spans` returns one
row per span of.

Carbon and cost
---------------
Energy is the recorded fact; carbon and cost are computed from it each time, with the accounting
each run recorded in ``config["accounting"]`` (as used at the time: the stored grid figure, not a
new lookup; see :func:`greenmaas.accounting.recorded`) or with settings given now
(``accounting=``), without re-running anything. Per span:

* ``carbon_g`` (location-based) and ``carbon_market_g`` (only where a market-based intensity is
  set) price ``self_energy_j`` × PUE, spread uniformly over the span and split over time where
  the intensity varies — never the inclusive energy, which would count children twice;
* ``energy_cost`` prices the same energy with the tariff (time-of-use periods split likewise);
* ``hardware_cost`` charges the span's own device time (``span_devices.self_device_s``, shared
  among concurrent spans by the same rules as energy) at the hourly price of each device's kind;
* ``cost = energy_cost + hardware_cost`` in ``currency`` (None where neither is configured);
* ``embodied_g`` amortises each device kind's embodied carbon over that device time, and
  ``facility_energy_j`` is ``self_energy_j`` × PUE (both for SCI).

Idle device windows (``device_totals``) are priced the same way: their idle energy (``idle_j``)
and their idle device time (``idle_s``), so a report's ``(idle)`` row is the operator's own line.

Uncertainty
-----------
Each span's own ± J (``self_uncertainty_j``) follows the counting rule of its energy: the
recorded ``uncertainty_j`` covers the span and its children (like ``energy_j``), so its own share
is that less its children's (the spans under it and, for a request, the batch shares linked to
it). Where none was recorded (ledgers written before schema 2), it is the method's stated
relative uncertainty (:data:`~greenmaas.sources.base.METHOD_UNCERTAINTY`) × its own energy on
each device, and ``uncertainty_source`` says ``stated`` rather than ``recorded``. Idle windows
likewise: their recorded ± J of ``idle_j``, else the method's stated figure.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .frames import opened
from ..errors import ConfigError
from ..period import to_utc
from ..sources.base import METHOD_UNCERTAINTY

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from ..accounting.config import AccountingConfig
    from ..ledger import Ledger

__all__ = ["priced_spans", "RECORDED", "STATED"]

#: ``uncertainty_source`` of a figure recorded with the spans (or windows) it is about.
RECORDED = "recorded"
#: ``uncertainty_source`` of the method's stated relative uncertainty × energy (none recorded).
STATED = "stated"


# ----------------------------------------------------------------------------------- loading


_SPAN_COLUMNS = (
    "span_id", "parent_id", "run_id", "kind", "model", "phase", "request_id", "tenant", "name",
    "start", "end", "duration_s", "energy_j", "self_energy_j", "method", "tokens_in", "tokens_out",
    "items", "uncertainty_j", "count",
)
_DEVICE_COLUMNS = ("span_id", "device", "self_j", "self_device_s", "method")
WINDOW_COLUMNS = (
    "run_id", "device", "method", "start", "end", "total_j", "attributed_j", "idle_j", "gap_s", "idle_s",
    "uncertainty_j",
)


def ledger_frame(rows, columns) -> "pd.DataFrame":
    """Ledger rows as a DataFrame: times as UTC timestamps, ``*_j``/``*_s``/``*_g`` and counts as floats."""
    import pandas as pd

    df = pd.DataFrame.from_records(rows, columns=list(columns))
    for c in columns:
        if c in ("start", "end"):
            df[c] = pd.to_datetime(df[c], utc=True)
        elif c.endswith(("_j", "_s", "_g")) or c in ("tokens_in", "tokens_out", "items"):
            df[c] = df[c].astype("float64")
    return df


def as_float(value) -> float | None:
    """A pandas or numpy number as a float, or None where it is missing (never NaN in a row)."""
    import pandas as pd

    return None if value is None or pd.isna(value) else float(value)


@dataclass
class Selection:
    """What a report covers, as read from the ledger (priced in place by :func:`priced_selection`)."""

    spans: "pd.DataFrame"
    devices: "pd.DataFrame"  # span_devices of the selected spans
    windows: "pd.DataFrame | None"  # idle windows, when the grouping has an (idle) row
    runs: dict[str, dict[str, Any]]  # run_id -> config, devices, start, end, status, heartbeat


def load_selection(ledger_or_url, lo, hi, model, *, idle: bool, run: str | None = None) -> Selection:
    """The spans starting in ``[lo, hi)`` (of ``model`` and ``run``, if given), their devices and
    the runs' configs; with ``idle``, the measured device windows in that period too. Not priced.

    Spans and windows carry their own ± J, ``self_uncertainty_j``, and ``uncertainty_source``
    (see the module doc)."""
    import pandas as pd

    from ..ledger import query

    conditions = query.span_conditions(lo, hi, model, run)
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        spans = ledger_frame(query.selected_spans(conn, _SPAN_COLUMNS, conditions), _SPAN_COLUMNS)
        devices = ledger_frame(query.selected_span_devices(conn, _DEVICE_COLUMNS, conditions), _DEVICE_COLUMNS)
        windows = ledger_frame(query.device_windows(conn, WINDOW_COLUMNS, lo, hi, run), WINDOW_COLUMNS) if idle else None
        children_u = query.children_uncertainty(conn, *conditions)
        runs = _runs(conn)
    described = device_kinds(runs)
    devices["run_id"] = devices["span_id"].map(dict(zip(spans["span_id"], spans["run_id"])))
    devices["kind"] = _kinds(described, devices["run_id"], devices["device"])
    if windows is not None:
        # A window without times takes its run's.
        starts = pd.to_datetime(windows["run_id"].map({k: r["start"] for k, r in runs.items()}), utc=True)
        ends = pd.to_datetime(windows["run_id"].map({k: r["end"] for k, r in runs.items()}), utc=True)
        windows["start"] = windows["start"].fillna(starts)
        windows["end"] = windows["end"].fillna(ends).fillna(windows["start"])
        windows["kind"] = _kinds(described, windows["run_id"], windows["device"])
    _span_uncertainty(spans, devices, children_u)
    if windows is not None:
        stated = windows["idle_j"] * _stated_fraction(windows["method"])
        _own_uncertainty(windows, windows["uncertainty_j"], stated)
    return Selection(spans, devices, windows, runs)


def _stated_fraction(methods: "pd.Series") -> "pd.Series":
    """The relative uncertainty stated for each method (NaN where none is: replay, unmeasurable)."""
    fractions = {m: (f if f is not None else float("nan")) for m, f in METHOD_UNCERTAINTY.items()}
    return methods.map(fractions).astype("float64")  # a method not listed maps to NaN too


def _span_uncertainty(spans: "pd.DataFrame", devices: "pd.DataFrame", children_u: dict[str, float]) -> None:
    """Each span's own ± J, recorded or stated (see the module doc); in place."""
    own = spans["uncertainty_j"] - spans["span_id"].map(children_u).astype("float64").fillna(0.0)
    stated = (devices["self_j"] * _stated_fraction(devices["method"])).groupby(devices["span_id"]).sum(min_count=1)
    _own_uncertainty(spans, own.clip(lower=0.0), spans["span_id"].map(stated).astype("float64"))


def _own_uncertainty(frame: "pd.DataFrame", recorded: "pd.Series", stated: "pd.Series") -> None:
    """``self_uncertainty_j``: ``recorded`` where there is one, else ``stated``; and which it is."""
    import numpy as np
    import pandas as pd

    has = recorded.notna()
    frame["self_uncertainty_j"] = recorded.where(has, stated).astype("float64")
    source = np.full(len(frame), None, dtype=object)
    source[stated.notna().to_numpy()] = STATED
    source[has.to_numpy()] = RECORDED
    frame["uncertainty_source"] = pd.Series(source, index=frame.index, dtype=object)


# ----------------------------------------------------------------------------------- pricing


@dataclass
class AccountingSource:
    """One accounting configuration in use, what a reader must know about it, and the runs it prices."""

    config: "AccountingConfig"
    notes: list[str]
    runs: list[str] = field(default_factory=list)


def _resolve_accounting(accounting: Any) -> "AccountingConfig | dict[str, Any] | None":
    """``accounting=`` as a whole configuration, parsed overrides, or None (as recorded)."""
    from ..accounting.config import AccountingConfig, parse_setting

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


def _sources_for(
    runs: Mapping[str, dict], run_ids: Sequence[str], accounting: Any
) -> tuple[list[AccountingSource], dict]:
    """The accounting each run is priced with, deduplicated: (sources, run_id -> source index)."""
    from ..accounting.config import AccountingConfig, recorded
    from ..accounting.locations import NoLocationWarning

    sources: list[AccountingSource] = []
    seen: dict[str, int] = {}
    cache: dict[str, tuple[Any, list[str]]] = {}
    index: dict[str, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoLocationWarning)  # the report's sources state the default
        for run_id in run_ids:
            notes: list[str]
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
                sources.append(AccountingSource(config, list(notes)))
            index[run_id] = seen[key]
            sources[seen[key]].runs.append(run_id)
    return sources, index


def device_kinds(runs: Mapping[str, dict]) -> dict[tuple[str, str], dict]:
    """(run_id, device id) -> the run's description of that device (kind, name, ...)."""
    out = {}
    for run_id, run in runs.items():
        for d in run.get("devices") or []:
            if isinstance(d, dict) and d.get("id"):
                out[(run_id, d["id"])] = d
    return out


def _kinds(described: dict, run_ids: Iterable[str], devices: Iterable[str]) -> list[str]:
    """Device kind of each (run, device): as the run described it, else the id's prefix."""
    out = []
    for run_id, device in zip(run_ids, devices):
        d = described.get((run_id, device))
        out.append(str((d.get("kind") if d else None) or str(device).split(":", 1)[0]).lower())
    return out


def _price_energy(
    frame: "pd.DataFrame", energy: str, sources: list[AccountingSource], source_of: "pd.Series"
) -> None:
    """carbon_g, carbon_market_g, energy_cost, facility_energy_j of ``frame[energy]`` (J) spread
    over ``[start, end)``, each row with the accounting ``sources[source_of]``; in place."""
    import numpy as np

    from ..accounting.config import price

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


def _price_device_time(seconds: "pd.Series", kinds: "pd.Series", sources: list[AccountingSource],
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


def _total_cost(
    frame: "pd.DataFrame", energy: str, sources: list[AccountingSource], source_of: "pd.Series"
) -> None:
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


def _price_selection(sel: Selection, sources: list[AccountingSource], index: dict[str, int]) -> None:
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


def priced_selection(
    ledger_or_url, lo, hi, model, *, idle: bool, accounting: Any, run: str | None = None
) -> tuple[Selection, list[AccountingSource], dict[str, int]]:
    """:func:`load_selection`, priced: (selection, accounting sources, run_id -> source index)."""
    sel = load_selection(ledger_or_url, lo, hi, model, idle=idle, run=run)
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

    One row per span (the columns :class:`~greenmaas.reporting.summary.ExtraColumn` describes), priced as
    :func:`~greenmaas.reporting.summary.summarize` prices them: with each run's recorded accounting, or
    ``accounting`` (an :class:`~greenmaas.accounting.AccountingConfig` for every run, or a dict of
    settings to replace, e.g. ``{"location": "FR", "tariff": "0.25EUR/kWh"}``). Unlike the recorded
    ``carbon_g`` of :func:`~greenmaas.reporting.frames.read_ledger` (which covers a span's children too),
    these columns sum over any set of spans without double counting.
    """
    sel, _, _ = priced_selection(ledger_or_url, to_utc(since), to_utc(until, upper=True), model,
                                 idle=False, accounting=accounting)
    return sel.spans




def load_runs_and_windows(conn, lo, hi, *, idle: bool,
                          run: str | None = None) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]] | None]:
    """The runs (as :class:`Selection` holds them) and, with ``idle``, the measured device windows
    starting in ``[lo, hi)``: what a report summed in SQL (:mod:`greenmaas.reporting.rollup`)
    still reads row by row, as dicts (no DataFrame: such a report never loads pandas). A window
    has :data:`WINDOW_COLUMNS` (times its run's where it has none), ``kind``, and its own ± J as
    :func:`load_selection` gives it (``self_uncertainty_j``, ``uncertainty_source``). Not priced."""
    from ..ledger import query

    runs = _runs(conn)
    if not idle:
        return runs, None
    described = device_kinds(runs)
    windows = []
    for values in query.device_windows(conn, WINDOW_COLUMNS, lo, hi, run):
        w = dict(zip(WINDOW_COLUMNS, values))
        r = runs.get(w["run_id"]) or {}
        if w["start"] is None:
            w["start"] = r.get("start")
        if w["end"] is None:
            w["end"] = r.get("end") if r.get("end") is not None else w["start"]
        for c in ("total_j", "attributed_j", "idle_j", "gap_s", "idle_s", "uncertainty_j"):
            w[c] = _number(w[c])
        (w["kind"],) = _kinds(described, [w["run_id"]], [w["device"]])
        fraction = METHOD_UNCERTAINTY.get(w["method"])
        stated = w["idle_j"] * fraction if fraction is not None else math.nan
        recorded = w["uncertainty_j"]
        w["self_uncertainty_j"] = recorded if recorded == recorded else stated
        w["uncertainty_source"] = RECORDED if recorded == recorded else (STATED if stated == stated else None)
        windows.append(w)
    return runs, windows


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def price_windows(windows: list[dict[str, Any]], sources: list[AccountingSource], index: dict[str, int]) -> None:
    """Priced fields on idle device windows (from :func:`load_runs_and_windows`), as
    :func:`priced_selection` prices its windows: ``carbon_g``, ``carbon_market_g``,
    ``energy_cost``, ``hardware_cost`` (NaN where there is no such figure), ``cost`` and
    ``currency``; in place."""
    import numpy as np

    from ..accounting.config import energy_prices
    from ..accounting.timeseries import _datetime_ns
    from ..errors import AccountingError

    by_source: dict[int, list[dict[str, Any]]] = {}
    for w in windows:
        by_source.setdefault(index[w["run_id"]], []).append(w)
    for i, part in by_source.items():
        config = sources[i].config
        if any(w["start"] is None or w["end"] is None for w in part):
            bad = next(w for w in part if w["start"] is None or w["end"] is None)
            raise AccountingError(f"cannot price the idle window of {bad['device']} in run {bad['run_id']}: "
                                  "no time recorded for it or its run")
        energy = np.asarray([w["idle_j"] for w in part], dtype=np.float64)
        start = np.asarray([_datetime_ns(w["start"]) for w in part], dtype=np.int64)
        end = np.asarray([_datetime_ns(w["end"]) for w in part], dtype=np.int64)
        if (energy < 0).any() or (end < start).any():
            bad = next(w for w, e, a, b in zip(part, energy, start, end) if e < 0 or b < a)
            raise AccountingError(f"cannot price the idle window of {bad['device']} in run {bad['run_id']}: "
                                  "negative energy, or it ends before it starts")
        carbon, market, energy_cost, _ = energy_prices(energy, start, end, config)
        prices = config.hardware_prices
        for k, w in enumerate(part):
            w["carbon_g"], w["carbon_market_g"], w["energy_cost"] = (
                float(carbon[k]), float(market[k]), float(energy_cost[k]))
            price = prices.get(w["kind"]) if prices else None
            idle_s = w["idle_s"] if w["idle_s"] == w["idle_s"] else 0.0
            w["hardware_cost"] = idle_s / 3600.0 * price.per_hour if price is not None else math.nan
            e, h = w["energy_cost"], w["hardware_cost"]
            # Unknown energy under a tariff is an unknown cost, not the hardware share alone.
            known = (e == e or h == h) and not (w["idle_j"] != w["idle_j"] and config.tariff is not None)
            w["cost"] = ((e if e == e else 0.0) + (h if h == h else 0.0)) if known else math.nan
            w["currency"] = config.currency if known else None


def _runs(conn) -> dict[str, dict[str, Any]]:
    """Every run as :class:`Selection` holds them, its status as liveness reads it."""
    from ..ledger import query
    from ..ledger.liveness import run_status

    return {
        r.run_id: {
            "config": r.config or {}, "devices": r.devices or [], "start": r.start, "end": r.end,
            "status": run_status(r.status, r.host, r.pid, r.heartbeat), "heartbeat": r.heartbeat, "host": r.host,
        }
        for r in query.run_rows(conn)
    }
