"""Report rows computed where the data is: the ledger groups, filters and sums spans in SQL
(:func:`greenmaas.ledger.query.rollup_spans` and friends) and this module prices the sums.

The figures are those of the span-by-span path of :mod:`greenmaas.reporting.summary` and
:mod:`greenmaas.reporting.pricing` (the reference the tests compare against), summed in another order:

* Every price is linear in energy (carbon = kWh × PUE × intensity, electricity = kWh × PUE ×
  tariff) and constant within an hour when the intensity series and the tariff change only on
  whole UTC hours. So the energy of the spans lying within one hour is summed in SQL and priced
  once with that hour's figures; the few spans that cross an hour are priced one by one as before.
  Accounting whose figures change within an hour (a half-hourly series, a tariff in a zone offset
  by half an hour) is left to the span-by-span path: :func:`supported` says so.
* Hardware cost and embodied carbon are linear in device time, summed per device.
* A span's cost leaves out its hardware share where its energy is unknown under a tariff; the
  device sums are split by whether the span's energy was measured, so that rule holds per group.

The ``(idle)`` row (few device windows) is priced as before, by :func:`greenmaas.reporting.summary`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

from .pricing import RECORDED, STATED, AccountingSource, device_kinds
from ..sources.base import METHOD_UNCERTAINTY, method_rank

if TYPE_CHECKING:
    from ..accounting.config import AccountingConfig

__all__ = ["Rollup", "supported", "rollup"]

_J_PER_KWH = 3.6e6
_HOUR_NS = 3600 * 1_000_000_000
_MONEY = ("energy_cost", "hardware_cost", "cost")


def supported(config: "AccountingConfig", lo_ns: int, hi_ns: int) -> bool:
    """Whether ``config``'s intensity and tariff hold still within every UTC hour of
    ``[lo_ns, hi_ns]``, so an hour's energy can be priced at once."""
    import numpy as np

    if config.series is not None:
        b = config.series.timestamps_ns
        if np.any(b % _HOUR_NS):
            return False
    tariff = config.tariff
    if tariff is not None and not tariff.is_flat:
        s = np.array([lo_ns], dtype=np.int64)
        e = np.array([hi_ns + _HOUR_NS], dtype=np.int64)
        if np.any(tariff._steps(s, e).breakpoints_ns[1:] % _HOUR_NS):
            return False
    return True


@dataclass(slots=True)
class _Group:
    spans: int = 0
    duration_s: float = 0.0
    energy_j: float = 0.0
    energy_n: int = 0
    rank: int = -1
    method: str | None = None
    u: float = 0.0
    recorded: bool = False
    stated: bool = False
    carbon_g: float = 0.0
    carbon_market_g: float = 0.0
    carbon_market_n: int = 0
    energy_cost: float = 0.0
    energy_cost_n: int = 0
    hardware_cost: float = 0.0
    hardware_cost_n: int = 0
    # cost per currency: (sum, known)
    cost: dict[str | None, float] = field(default_factory=dict)  # None: prices without a currency
    embodied_g: float = 0.0
    first: datetime | None = None
    last: datetime | None = None
    runs: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    devices: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Rollup:
    """What the SQL sums give a report: rows (without ``(idle)``) and the facts it describes."""

    rows: list[dict[str, Any]]
    run_ids: set[str]
    methods: dict[str, dict[str, Any]]  # span method -> spans, energy_j, uncertainty_j (None where none)
    period: tuple[datetime | None, datetime | None]
    groups: dict[str, dict[str, Any]]
    kinds: set[str]


def _utc(value: Any) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def rollup(conn, by: str, none: str, lo, hi, model, runs: dict[str, dict], *, priced: bool, market: bool,
           sources: list[AccountingSource] | None, index: dict[str, int] | None, run: str | None = None,
           requests: Any = None, facts: bool = True, regroup: dict[str, str] | None = None) -> Rollup:
    """The report rows of the selected spans, grouped ``by`` (see the module doc).

    ``sources``/``index`` (run_id -> source) price them; None with ``priced`` False; ``run``
    selects one run's spans, ``requests`` a range of request ids (see
    :func:`greenmaas.ledger.query.rollup_spans`; never from the summaries). Read from
    the ledger's span summaries where the time filter falls on whole hours (it may, or be
    absent), else from the spans themselves; both give the same figures. Without ``facts``, the
    rows alone (no period, per-group facts or devices: a report by request, page by page).
    ``regroup`` (with ``by="run"``) merges the runs' groups into the groups it maps them to (a
    run's host, job or rank), once priced."""
    from ..ledger import query
    from .pricing import _kinds

    summaries = requests is None and query.summaries_apply(lo, hi)
    read_spans: Callable[..., Any]
    read_devices: Callable[..., Any]
    read_crossing: Callable[..., Any]
    if summaries:
        read_spans, read_devices, read_crossing = query.summary_spans, query.summary_devices, query.summary_crossing
    else:
        read_spans, read_devices, read_crossing = query.rollup_spans, query.rollup_devices, query.rollup_crossing
    groups: dict[str, _Group] = {}
    methods: dict[str, dict[str, Any]] = {}
    cells = []  # (group, source index, hour, energy_j) for pricing
    narrow: dict[str, Any] = {} if summaries else {"requests": requests, "bounds": facts}
    ranks: dict[str, int] = {}
    # Rows unpacked by position (a report by request reads one or two per request: attribute
    # access on each row cost as much as the sums).
    for (grp, run_id, method, hour, spans, duration_s, energy_j, energy_n, own_u, own_u_n, first,
         last) in read_spans(conn, by, none, lo, hi, model, run=run, **narrow):
        g = groups.get(grp)
        if g is None:
            g = groups[grp] = _Group()
        g.spans += spans
        g.duration_s += duration_s or 0.0
        if energy_n:
            g.energy_j += energy_j
            g.energy_n += energy_n
        rank = ranks.get(method)
        if rank is None:
            rank = ranks[method] = method_rank(method)
        if rank > g.rank:
            g.rank, g.method = rank, method
        if own_u_n:
            g.u += own_u
            g.recorded = True
        if facts:
            first, last = _utc(first), _utc(last)
            g.first = first if g.first is None else min(g.first, first)
            g.last = last if g.last is None else max(g.last, last)
        g.runs.add(run_id)
        g.methods.add(method)
        m = methods.get(method)
        if m is None:
            m = methods[method] = {"spans": 0, "energy_j": None, "uncertainty_j": None}
        m["spans"] += spans
        if energy_n:
            m["energy_j"] = (m["energy_j"] or 0.0) + energy_j
        if own_u_n:
            m["uncertainty_j"] = (m["uncertainty_j"] or 0.0) + own_u
        if priced and hour is not None and energy_n:
            assert index is not None  # given whenever priced
            cells.append((grp, index[run_id], hour, energy_j))

    if summaries:  # their time counts every span: take off what nests in the same group
        for grp, _run_id, seconds in query.summary_nested(conn, by, none, lo, hi, model, run=run):
            groups[grp].duration_s -= seconds
    described = device_kinds(runs)
    device_rows = read_devices(conn, by, none, lo, hi, model, run=run, **narrow)
    kinds = _kinds(described, [d[1] for d in device_rows], [d[2] for d in device_rows])
    for (grp, run_id, device, method, span_method, measured, _recorded, _rows, device_s, stated_j,
         stated_n), kind in zip(device_rows, kinds):
        g = groups[grp]
        if facts and (run_id, device) not in g.devices:
            g.devices.append((run_id, device))
        fraction = METHOD_UNCERTAINTY.get(method)
        if stated_n and fraction is not None:
            g.u += stated_j * fraction
            g.stated = True
            m = methods[span_method]
            m["uncertainty_j"] = (m["uncertainty_j"] or 0.0) + stated_j * fraction
        if not priced:
            continue
        assert sources is not None and index is not None  # given whenever priced
        src = sources[index[run_id]]
        config = src.config
        prices, embodied = config.hardware_prices, config.embodied
        if kind in embodied:
            g.embodied_g += device_s * embodied[kind].amortised_g(1.0)
        if kind in prices:
            h = device_s / 3600.0 * prices[kind].per_hour
            g.hardware_cost += h
            g.hardware_cost_n += 1
            # Unknown energy under a tariff is an unknown cost, not the hardware share alone.
            if config.tariff is None or measured:
                _add_cost(g, src, h)

    if priced:
        _price_energy(groups, cells, sources, list(read_crossing(conn, by, none, lo, hi, model, run=run, **narrow)),
                      index)
    if regroup is not None:
        groups = _merged_groups(groups, regroup)

    rows = [
        report_row(key, g.spans, g.duration_s, g.energy_j, g.energy_n, g.method, g.u, g.recorded, g.stated,
                   priced=priced, market=market, carbon_g=g.carbon_g, carbon_market_g=g.carbon_market_g,
                   carbon_market_n=g.carbon_market_n, energy_cost=g.energy_cost, energy_cost_n=g.energy_cost_n,
                   hardware_cost=g.hardware_cost, hardware_cost_n=g.hardware_cost_n, cost=g.cost)
        for key, g in groups.items()
    ]

    run_ids = {r for g in groups.values() for r in g.runs}
    if not facts:
        return Rollup(rows, run_ids, methods, (None, None), {}, set(kinds))
    period_first = min((g.first for g in groups.values() if g.first), default=None)
    period_last = max((g.last for g in groups.values() if g.last), default=None)
    described_groups = {
        str(key): {"methods": sorted(g.methods, key=method_rank),
                   "devices": _device_names(g.devices, described), "runs": sorted(g.runs),
                   "first": g.first, "last": g.last}
        for key, g in groups.items()
    }
    return Rollup(rows, run_ids, methods, (period_first, period_last), described_groups, set(kinds))


def report_row(group: Any, spans: int, duration_s: float, energy_j: float, energy_n: int, method: str | None,
               u: float, recorded: bool, stated: bool, *, priced: bool, market: bool, carbon_g: float,
               carbon_market_g: float, carbon_market_n: int, energy_cost: float, energy_cost_n: int,
               hardware_cost: float, hardware_cost_n: int, cost: dict[str | None, float]) -> dict[str, Any]:
    """A report row from a group's sums (the span-by-span path's rules): energy and carbon None
    where no span was measured, ± J None where none was recorded or stated (and which it was),
    money None where nothing was priced, ``cost`` (per currency) ``mixed`` across currencies."""
    row: dict[str, Any] = {
        "group": str(group),
        "spans": int(spans),
        "duration_s": float(duration_s),
        "energy_j": float(energy_j) if energy_n else None,
        "method": method,
        "uncertainty_j": float(u) if (recorded or stated) else None,
        "uncertainty_source": "mixed" if recorded and stated else RECORDED if recorded
        else STATED if stated else None,
    }
    if priced:
        row["carbon_g"] = float(carbon_g) if energy_n else None
        if market:
            row["carbon_market_g"] = float(carbon_market_g) if carbon_market_n else None
        row["energy_cost"] = float(energy_cost) if energy_cost_n else None
        row["hardware_cost"] = float(hardware_cost) if hardware_cost_n else None
        currencies = sorted(cost, key=str)
        if len(currencies) > 1:
            row.update(energy_cost=None, hardware_cost=None, cost=None, currency="mixed")
        elif currencies:
            row["cost"], row["currency"] = float(cost[currencies[0]]), currencies[0]
        else:
            row["cost"], row["currency"] = None, None
    return row


def _merged_groups(groups: dict[str, _Group], regroup: dict[str, str]) -> dict[str, _Group]:
    """The groups merged into those ``regroup`` maps their keys to (sums added, the weakest
    method kept, costs added per currency, times widened)."""
    out: dict[str, _Group] = {}
    for key, g in groups.items():
        target = regroup[key]
        m = out.get(target)
        if m is None:
            out[target] = g
            continue
        for name in ("spans", "duration_s", "energy_j", "energy_n", "u", "carbon_g", "carbon_market_g",
                     "carbon_market_n", "energy_cost", "energy_cost_n", "hardware_cost", "hardware_cost_n",
                     "embodied_g"):
            setattr(m, name, getattr(m, name) + getattr(g, name))
        if g.rank > m.rank:
            m.rank, m.method = g.rank, g.method
        m.recorded, m.stated = m.recorded or g.recorded, m.stated or g.stated
        for currency, amount in g.cost.items():
            m.cost[currency] = m.cost.get(currency, 0.0) + amount
        if g.first is not None and (m.first is None or g.first < m.first):
            m.first = g.first
        if g.last is not None and (m.last is None or g.last > m.last):
            m.last = g.last
        m.runs |= g.runs
        m.methods |= g.methods
        m.devices += [d for d in g.devices if d not in m.devices]
    return out


def _device_names(devices: list[tuple[str, str]], described: dict) -> list[str]:
    names: list[str] = []
    for run_id, dev in sorted(devices, key=lambda rd: rd[1]):
        d = described.get((run_id, dev)) or {}
        name = f"{d['name']} ({dev})" if d.get("name") else dev
        if name not in names:
            names.append(name)
    return names


def _add_cost(g: _Group, src: AccountingSource, amount: float) -> None:
    currency = src.config.currency
    g.cost[currency] = g.cost.get(currency, 0.0) + amount


def hour_rates(config: "AccountingConfig", hours: list[str]) -> dict[str, tuple[float, float, float]]:
    """Per UTC hour (``YYYY-MM-DD HH``): carbon, market-based carbon and electricity cost of one
    kWh of IT energy used in it, under ``config`` (NaN where there is no such figure)."""
    import numpy as np

    from ..accounting.config import energy_prices

    t = np.asarray([_hour_ns(h) for h in hours], dtype=np.int64)
    carbon, market, cost, _ = energy_prices(np.full(len(t), _J_PER_KWH), t, t, config)
    return {h: (c, m, e) for h, c, m, e in zip(hours, carbon.tolist(), market.tolist(), cost.tolist())}


def _hour_ns(hour: str) -> int:
    """The start of a summaries' hour (``YYYY-MM-DD HH``, UTC) in epoch ns."""
    from ..accounting.timeseries import _datetime_ns

    return _datetime_ns(datetime.strptime(hour, "%Y-%m-%d %H").replace(tzinfo=timezone.utc))


def priced_crossing(crossing: list, sources: list[AccountingSource], index: dict[str, int]):
    """The spans that cross an hour (rows of ``group, run_id, start, end, energy_j``), priced one
    by one with their run's accounting: per source, ``(source index, groups, priced frame)``
    (carbon_g, carbon_market_g, energy_cost of each span's whole energy). Unmeasured spans are
    left out."""
    import numpy as np

    from ..accounting.config import energy_prices
    from ..accounting.timeseries import _datetime_ns

    by_source: dict[int, list[tuple]] = {}
    for grp, run_id, start, end, energy_j in crossing:
        if energy_j is not None:
            by_source.setdefault(index[run_id], []).append((grp, start, end, energy_j))
    for i, src in enumerate(sources):
        part = by_source.get(i)
        if not part:
            continue
        energy = np.asarray([float(r[3]) for r in part], dtype=np.float64)
        start_ns = np.asarray([_datetime_ns(r[1]) for r in part], dtype=np.int64)
        end_ns = np.asarray([_datetime_ns(r[2]) for r in part], dtype=np.int64)
        carbon, market, cost, _ = energy_prices(energy, start_ns, end_ns, src.config)
        yield i, [r[0] for r in part], {"carbon_g": carbon, "carbon_market_g": market, "energy_cost": cost}


def _price_energy(groups, cells, sources, crossing, index) -> None:
    """Carbon and electricity of each group: hours priced once, crossing spans one by one."""
    by_source: dict[int, list] = {}
    for grp, i, hour, energy in cells:
        by_source.setdefault(i, []).append((grp, hour, energy))
    for i, items in by_source.items():
        rates = hour_rates(sources[i].config, sorted({h for _, h, _ in items}))
        for grp, hour, energy in items:
            c, m, e = rates[hour]
            _add_priced(groups[grp], sources[i], energy / _J_PER_KWH, c, m, e)
    if crossing:
        for i, grps, priced in priced_crossing(crossing, sources, index):
            for grp, c, m, e in zip(grps, priced["carbon_g"], priced["carbon_market_g"], priced["energy_cost"]):
                _add_priced(groups[grp], sources[i], 1.0, c, m, e)


def _add_priced(g: _Group, src: AccountingSource, factor: float, carbon, market, cost) -> None:
    g.carbon_g += factor * carbon
    if market == market:  # NaN without a market-based intensity
        g.carbon_market_g += factor * market
        g.carbon_market_n += 1
    if cost == cost:  # NaN without a tariff
        g.energy_cost += factor * cost
        g.energy_cost_n += 1
        _add_cost(g, src, factor * cost)
