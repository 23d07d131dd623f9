"""A report by request, a page of requests at a time, priced with arrays.

A serving team's ledger holds millions of requests; a row per request is what they bill. The
rows are those of ``summary(by="request")`` (:mod:`greenmaas.reporting.rollup` prices one group at a time in
Python); here the same sums, per request, run, method and hour, come from SQL
(:func:`greenmaas.ledger.query.rollup_spans` restricted to a range of request ids) and are grouped
and priced with numpy and pandas for the whole page at once: each hour's figures per kWh once per
accounting source, the few spans that cross an hour one by one, hardware and stated ± J per device
kind and method. :func:`greenmaas.reporting.summary.request_rows` pages through a ledger with it; the tests
compare its rows with :func:`greenmaas.reporting.summary.summary`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from ..sources.base import METHOD_UNCERTAINTY, method_rank

if TYPE_CHECKING:
    from .pricing import AccountingSource

__all__ = ["page_rows"]

_J_PER_KWH = 3.6e6
_SPAN_FIELDS = ("grp", "run_id", "method", "hour", "spans", "duration_s", "energy_j", "energy_n", "own_u",
                "own_u_n")
_DEVICE_FIELDS = ("grp", "run_id", "device", "method", "span_method", "measured", "recorded", "rows", "device_s",
                  "stated_j", "stated_n")


def page_rows(conn, none: str, lo, hi, model, run, requests, runs: dict[str, dict], *, priced: bool,
              sources: Sequence["AccountingSource"], index: dict[str, int]) -> list[dict[str, Any]]:
    """The report rows of the requests in ``requests`` (a range of ids, or ``NO_REQUEST``), by
    group, as :func:`greenmaas.reporting.rollup.rollup` makes them (``carbon_market_g`` included)."""
    import numpy as np
    import pandas as pd

    from ..ledger import query
    from .pricing import _kinds, device_kinds
    from .rollup import report_row

    narrow = {"run": run, "requests": requests, "bounds": False}
    spans = pd.DataFrame.from_records(
        [tuple(r) for r in query.rollup_spans(conn, "request", none, lo, hi, model, **narrow).all()],
        columns=list(_SPAN_FIELDS) + ["first", "last"],
    )
    if spans.empty:
        return []
    spans = spans.drop(columns=["first", "last"])
    for c in ("spans", "energy_n", "own_u_n"):
        spans[c] = spans[c].fillna(0).astype("int64")
    for c in ("duration_s", "energy_j", "own_u"):
        spans[c] = spans[c].astype("float64")
    measured = spans["energy_n"] > 0
    recorded = spans["own_u_n"] > 0
    ranks = {m: method_rank(m) for m in spans["method"].unique()}
    spans["rank"] = spans["method"].map(ranks)
    spans["energy_in"] = spans["energy_j"].where(measured, 0.0)
    spans["u_in"] = spans["own_u"].where(recorded, 0.0)
    spans["measured"], spans["recorded"] = measured, recorded
    g = spans.groupby("grp", sort=True)
    out = pd.DataFrame({
        "spans": g["spans"].sum(),
        "duration_s": g["duration_s"].sum(min_count=1).fillna(0.0),
        "energy_j": g["energy_in"].sum(),
        "energy_n": g["energy_n"].sum(),
        "rank": g["rank"].max(),
        "u": g["u_in"].sum(),
        "recorded": g["recorded"].any(),
    })
    weakest = {r: m for m, r in ranks.items()}
    out["method"] = out["rank"].map(weakest)
    out["stated"] = False
    money = ("carbon_g", "carbon_market_g", "energy_cost", "hardware_cost")
    for c in money:
        out[c] = 0.0
    for c in ("carbon_market_n", "energy_cost_n", "hardware_cost_n"):
        out[c] = 0
    costs: list[pd.DataFrame] = []  # grp, currency, amount

    devices = pd.DataFrame.from_records(
        [tuple(r) for r in query.rollup_devices(conn, "request", none, lo, hi, model, **narrow).all()],
        columns=list(_DEVICE_FIELDS),
    )
    if not devices.empty:
        devices["stated_n"] = devices["stated_n"].fillna(0).astype("int64")
        devices["stated_j"] = devices["stated_j"].astype("float64")
        devices["device_s"] = devices["device_s"].astype("float64")
        fraction = devices["method"].map(METHOD_UNCERTAINTY)
        stated = (devices["stated_n"] > 0) & fraction.notna()
        stated_u = (devices["stated_j"] * fraction).where(stated, 0.0)
        out["u"] = out["u"].add(stated_u.groupby(devices["grp"]).sum(), fill_value=0.0)
        out["stated"] = stated.groupby(devices["grp"]).any().reindex(out.index, fill_value=False)
        if priced:
            pairs = devices[["run_id", "device"]].drop_duplicates()
            kind_of = dict(zip(zip(pairs["run_id"], pairs["device"]),
                               _kinds(device_kinds(runs), pairs["run_id"], pairs["device"])))
            kinds = pd.Series([kind_of[k] for k in zip(devices["run_id"], devices["device"])], index=devices.index)
            source = devices["run_id"].map(index)
            per_hour = pd.Series(np.nan, index=devices.index)
            counts_cost = pd.Series(False, index=devices.index)
            for i, src in enumerate(sources):
                mine = source == i
                if not mine.any():
                    continue
                prices = src.config.hardware_prices
                rate = kinds[mine].map({k: p.per_hour for k, p in prices.items()})
                per_hour[mine] = rate
                counts_cost[mine] = (src.config.tariff is None) | (devices["measured"][mine].astype(bool))
            hardware = devices["device_s"] / 3600.0 * per_hour
            has = hardware.notna()
            out["hardware_cost"] = hardware.where(has, 0.0).groupby(devices["grp"]).sum().reindex(
                out.index, fill_value=0.0)
            out["hardware_cost_n"] = has.groupby(devices["grp"]).sum().reindex(out.index, fill_value=0)
            paid = has & counts_cost
            if paid.any():
                currency = source[paid].map(lambda i: sources[int(i)].config.currency)
                costs.append(pd.DataFrame({"grp": devices["grp"][paid], "currency": currency,
                                           "amount": hardware[paid]}))

    if priced:
        _price_hours(spans[measured & spans["hour"].notna()], sources, index, out, costs)
        crossing = list(query.rollup_crossing(conn, "request", none, lo, hi, model, **narrow))
        if crossing:
            _price_crossing(crossing, sources, index, out, costs)

    cost_of: dict[Any, dict[Any, float]] = {}  # group -> currency -> amount
    if priced and costs:
        all_costs = pd.concat(costs, ignore_index=True)
        all_costs["currency_key"] = all_costs["currency"].map(lambda c: "\x00none" if c is None else str(c))
        per = all_costs.groupby(["grp", "currency_key"], sort=False).agg(
            amount=("amount", "sum"), currency=("currency", "first")).reset_index()
        for grp, currency, amount in zip(per["grp"], per["currency"], per["amount"].tolist()):
            cost_of.setdefault(grp, {})[currency] = amount
    columns = {c: out[c].tolist() for c in out.columns}
    columns["grp"] = out.index.tolist()
    rows = [
        report_row(r["grp"], r["spans"], r["duration_s"], r["energy_j"], r["energy_n"], r["method"], r["u"],
                   bool(r["recorded"]), bool(r["stated"]), priced=priced, market=True, carbon_g=r["carbon_g"],
                   carbon_market_g=r["carbon_market_g"], carbon_market_n=r["carbon_market_n"],
                   energy_cost=r["energy_cost"], energy_cost_n=r["energy_cost_n"], hardware_cost=r["hardware_cost"],
                   hardware_cost_n=r["hardware_cost_n"], cost=cost_of.get(r["grp"], {}))
        for r in (dict(zip(columns, values)) for values in zip(*columns.values()))
    ]
    return rows


def _price_hours(cells, sources, index, out, costs) -> None:
    """Carbon and electricity of the spans lying within one hour: each hour priced once per source."""
    from .rollup import hour_rates

    if cells.empty:
        return
    source = cells["run_id"].map(index)
    for i, src in enumerate(sources):
        part = cells[source == i]
        if part.empty:
            continue
        rates = hour_rates(src.config, sorted(part["hour"].unique()))
        kwh = part["energy_j"].to_numpy() / _J_PER_KWH
        _add(out, costs, part["grp"], src, kwh, *(part["hour"].map({h: r[k] for h, r in rates.items()})
                                                  for k in range(3)))


def _price_crossing(crossing, sources, index, out, costs) -> None:
    """Carbon and electricity of the spans that cross an hour, one by one."""
    import numpy as np

    from .rollup import priced_crossing

    for i, grps, priced in priced_crossing(crossing, sources, index):
        _add(out, costs, grps, sources[i], np.ones(len(grps)), priced["carbon_g"], priced["carbon_market_g"],
             priced["energy_cost"])


def _add(out, costs, grp, src, factor, carbon, market, energy_cost) -> None:
    """Add ``factor`` × the per-unit figures to the rows of ``grp`` (as rollup's ``_add_priced``)."""
    import numpy as np
    import pandas as pd

    carbon = np.asarray(carbon, dtype="float64") * factor
    market = np.asarray(market, dtype="float64")
    energy_cost = np.asarray(energy_cost, dtype="float64")
    keys = np.asarray(grp)
    frame = pd.DataFrame({
        "grp": keys, "carbon_g": carbon,
        "carbon_market_g": np.where(np.isnan(market), 0.0, market * factor), "carbon_market_n": ~np.isnan(market),
        "energy_cost": np.where(np.isnan(energy_cost), 0.0, energy_cost * factor),
        "energy_cost_n": ~np.isnan(energy_cost),
    })
    sums = frame.groupby("grp", sort=False).sum()
    for c in ("carbon_g", "carbon_market_g", "energy_cost"):
        out[c] = out[c].add(sums[c], fill_value=0.0)
    for c in ("carbon_market_n", "energy_cost_n"):
        out[c] = out[c].add(sums[c].astype("int64"), fill_value=0).astype("int64")
    paid = ~np.isnan(energy_cost)
    if paid.any():
        costs.append(pd.DataFrame({"grp": keys[paid], "currency": src.config.currency,
                                   "amount": energy_cost[paid] * np.broadcast_to(factor, paid.shape)[paid]}))
