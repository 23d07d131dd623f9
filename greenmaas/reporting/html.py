"""One self-contained HTML page for a ledger: the report's table and what it rests on, with plots.

>>> from greenmaas.reporting import html_report
>>> Path("report.html").write_text(html_report("greenmaas.db", by="model"))

The page holds everything it shows (inline CSS and SVG, no script, no font or image to fetch), so
it opens offline and can be mailed or archived as one file. It draws:

* power over time per device — the mean power between consecutive points of the ledger's
  cumulative-energy samples (ΔE/Δt, exact over each interval), with the longest top-level spans
  shaded in their group's colour;
* energy (with its ± J) and carbon per group of the chosen grouping;
* the distribution of energy per request (a histogram; log-spaced bins when the energies spread
  over more than a factor 20);
* the grid's carbon intensity over time, where a run was priced with an hourly series.

Its cost does not grow with the ledger: the table comes from :func:`greenmaas.reporting.summary.summary`
(summed in SQL), power series are thinned in the database to at most ``max_points`` points per
run and device (the first and last cumulative point of each time bucket, so each plotted level
is still an exact mean), only the ``max_bands`` longest top-level spans are shaded, and requests
are binned in the database (:mod:`greenmaas.ledger.query`): no span or sample is loaded one by
one. The page says what it thinned and what it lacks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .modelcard import format_amount, method_text, source_lines
from .summary import GROUP_HEADERS, IDLE, NONE, RUN_GROUPS, Summary, summary
from . import svg

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["html_report", "ReportPlots", "collect_plots"]

_J_PER_KWH = 3.6e6
_TOP_GROUPS = 12
_OTHERS = "(others)"
_IDLE_COLOUR = "#BBBBBB"


@dataclass
class ReportPlots:
    """What the plots of a page show, as numbers (tests and other renderers read these).

    ``power``: per device, ``[(run_id, [t (POSIX s)], [mean W over the interval ending at t])]``
    and the points read/kept. ``bands``: ``(device, start, end, group)`` of the shaded spans,
    ``bands_total`` how many top-level spans the selection has. ``histogram``: edges (J),
    counts, ``log``; ``requests`` stats (count, sum, min, max). ``intensity``: per series label,
    ``([t], [g/kWh])``. ``notes``: what the page must say it left out or could not draw;
    ``falling``: intervals left blank because the cumulative energy fell.
    """

    power: dict[str, list[tuple[str, list[float], list[float]]]] = field(default_factory=dict)
    points_read: int = 0
    points_kept: int = 0
    bands: list[tuple[str, float, float, str]] = field(default_factory=list)
    bands_total: int = 0
    histogram: dict[str, Any] | None = None
    requests: dict[str, Any] | None = None
    intensity: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    falling: int = 0


def _ts(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def collect_plots(
    ledger_or_url: Ledger | str | os.PathLike | None,
    result: Summary,
    *,
    since: Any = None,
    until: Any = None,
    model: str | None = None,
    max_points: int = 1500,
    max_bands: int = 400,
    bins: int = 40,
) -> ReportPlots:
    """Read what the plots of ``result``'s page need from the ledger (see the module doc)."""
    from .frames import opened
    from ..ledger import query
    from ..period import to_utc

    lo, hi = to_utc(since), to_utc(until, upper=True)
    out = ReportPlots()
    run_ids = None
    if model is not None:
        run_ids = sorted({r for facts in result.groups.values() for r in facts.get("runs") or []})
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        if run_ids != []:
            counts = query.sample_counts(conn, lo, hi, run_ids)
            out.points_read = sum(int(c[3]) for c in counts)
            rows = query.sample_series(conn, max_points, lo, hi, run_ids, counts=counts) if counts else []
            out.points_kept = len(rows)
            _power(out, rows)
        by, group_of_run = result.by, None
        if by in RUN_GROUPS:  # where a run ran: its spans take their run's group
            by = "run"
            group_of_run = {r: str(g) for g, facts in result.groups.items() for r in facts.get("runs") or []}
        out.bands_total, found = query.top_level_spans(conn, by, NONE, max_bands, lo, hi, model)
        out.bands = [(d, _ts(start), _ts(end), str(g) if group_of_run is None else group_of_run.get(g, NONE))
                     for _, _, d, start, end, g in found]
        stats = query.request_energy_stats(conn, lo, hi, model)
        if stats.requests:
            out.requests = {"requests": int(stats.requests), "energy_j": float(stats.energy_j or 0.0),
                            "min_j": float(stats.min_j), "max_j": float(stats.max_j),
                            "positive": int(stats.positive)}
            out.histogram = _histogram(conn, stats, bins, lo, hi, model)
    _intensity(out, result, max_points)
    if out.points_read > out.points_kept:
        out.notes.append(
            f"Power: {out.points_kept:,} of {out.points_read:,} cumulative-energy samples plotted (the first and "
            "last of each time bucket per device, chosen in the database); each level is the exact mean power "
            "between two plotted points.")
    if out.falling:
        out.notes.append(f"Power: {out.falling:,} intervals where the recorded cumulative energy fell (a counter "
                         "reset or a recording fault) are left blank rather than drawn as negative power.")
    if out.bands_total > max_bands:
        shaded = len({(b[1], b[2], b[3]) for b in out.bands})
        out.notes.append(f"Spans shaded: the {max_bands:,} longest of {out.bands_total:,} top-level spans "
                         f"({shaded:,} distinct intervals); shorter ones would be narrower than a pixel.")
    return out


def _power(out: ReportPlots, rows: Sequence[Any]) -> None:
    """Mean power between consecutive kept points of each run and device (ΔE / Δt)."""
    last: tuple[str, str] | None = None
    prev: tuple[float, float] | None = None
    for run_id, device, t, energy_j, _power_w in rows:
        key = (run_id, device)
        if key != last:
            out.power.setdefault(device, []).append((run_id, [], []))
            last, prev = key, None
        x = _ts(t)
        if energy_j is None:
            continue
        _, xs, ys = out.power[device][-1]
        if prev is not None and x > prev[0]:
            if not xs:
                xs.append(prev[0])
                ys.append(float("nan"))
            delta = float(energy_j) - prev[1]
            xs.append(x)
            if delta < -1e-9 * max(1.0, abs(prev[1])):
                # Cumulative energy cannot fall: a reset or a recording fault. No power is drawn there.
                ys.append(float("nan"))
                out.falling += 1
            else:
                ys.append(max(delta, 0.0) / (x - prev[0]))
        prev = (x, float(energy_j))


def _histogram(conn, stats, bins: int, lo, hi, model) -> dict[str, Any] | None:
    from ..ledger import query

    vmin, vmax = float(stats.min_j), float(stats.max_j)
    pos_min = float(stats.min_positive_j) if stats.min_positive_j is not None else None
    log = pos_min is not None and vmax > 0 and vmax / pos_min > 20
    if log:
        assert pos_min is not None
        a, b = math.log10(pos_min), math.log10(vmax)
        edges = [10 ** (a + (b - a) * i / bins) for i in range(bins + 1)]
        edges[0], edges[-1] = pos_min, vmax
    else:
        if vmax <= vmin:
            width = abs(vmin) * 0.05 or 1.0
            vmin, vmax, bins = vmin - width, vmax + width, 1
        edges = [vmin + (vmax - vmin) * i / bins for i in range(bins + 1)]
        edges[-1] = vmax
    counts = [0] * bins
    below = 0
    for b, n, _ in query.request_energy_histogram(conn, edges, lo, hi, model):
        if 0 <= b < bins:
            counts[b] += int(n)
        elif b < 0:
            below += int(n)
        else:  # rounding at the top edge: the last bin includes its upper edge
            counts[-1] += int(n)
    return {"edges": edges, "counts": counts, "log": log, "below": below}


def _intensity(out: ReportPlots, result: Summary, max_points: int) -> None:
    """Each time-varying intensity series a run was priced with, over the report's period."""
    from ..accounting.timeseries import IntensitySeries
    from ..errors import GreenmaasError

    first, last = result.period
    for src in result.sources:
        series = src.get("intensity_series")
        if not series:
            continue
        path = series.get("source")
        try:
            loaded = IntensitySeries.from_csv(path)
        except (GreenmaasError, OSError, TypeError) as exc:
            out.notes.append(f"Carbon intensity series {path}: cannot be read now ({' '.join(str(exc).split())}); "
                             "its mean is in the sources")
            continue
        t = [ns / 1e9 for ns in loaded.timestamps_ns.tolist()]
        v = [float(x) for x in loaded.values_g_per_kwh.tolist()]
        if first is not None and last is not None:
            a, b = first.timestamp(), last.timestamp()
            keep = [i for i in range(len(t)) if a <= t[i] <= b]
            before = [i for i in range(len(t)) if t[i] < a]
            if before:
                keep.insert(0, before[-1])
            t, v = [max(t[i], a) for i in keep], [v[i] for i in keep]
            if t:
                t.append(b)
                v.append(v[-1])
        if len(t) > max_points:
            k = math.ceil(len(t) / max_points)
            t, v = t[::k], v[::k]
            out.notes.append(f"Carbon intensity {path}: every {k}th point plotted")
        if t:
            out.intensity[str(path)] = (t, v)


# ------------------------------------------------------------------------------------ page


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1000px;
color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde1e8;
padding-bottom:4px}h3{font-size:14px;margin:16px 0 4px}
.sub{color:#5a6475;margin:0 0 16px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:4px 8px;border-bottom:1px solid #eceef2;text-align:left}th{background:#f5f6f8;font-weight:600}
td.n,th.n{text-align:right}tr.total td{font-weight:600;border-top:2px solid #c9ced8}
tr.idle td{color:#5a6475}.missing{fill:#888;font-style:italic}
.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:8px 0 4px}.kpi{background:#f5f6f8;border-radius:6px;
padding:8px 12px;min-width:150px}.kpi b{display:block;font-size:18px}
svg.chart{display:block;margin:6px 0 2px;background:#fff}
svg .grid{stroke:#eceef2;stroke-width:1}svg .tick,svg .label,svg .value,svg .unit{font-size:11px;fill:#3a4352}
svg .unit{fill:#5a6475}svg .line{stroke-width:1.6}svg .band{opacity:.22}svg .whisker{stroke:#1d2330;stroke-width:1.2}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:#3a4352;margin:2px 0 10px}
.legend i{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:4px;vertical-align:-2px}
.note{color:#5a6475;font-size:13px}.empty{background:#fff8e6;border:1px solid #f0dca8;border-radius:6px;
padding:8px 12px;color:#5c4a12}
ul.sources{padding-left:18px}ul.sources li{margin:2px 0}
"""



def html_report(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    by: str = "model",
    since: Any = None,
    until: Any = None,
    model: str | None = None,
    accounting: Any = None,
    title: str | None = None,
    max_rows: int = 50,
    max_points: int = 1500,
    max_bands: int = 400,
    bins: int = 40,
    progress: Callable[[str], None] | None = None,
) -> str:
    """The page for a report by ``by`` (see the module doc); ``since``, ``until``, ``model`` and
    ``accounting`` as :func:`greenmaas.reporting.summary.summary` takes them. Tables show the ``max_rows``
    largest groups and sum the rest in one line. ``progress(step)`` is called as each part is
    read (a progress bar's hook)."""
    step = progress or (lambda _what: None)
    step("summary")
    if by == "request":
        result = _by_request(ledger_or_url, since, until, model, accounting, max_rows)
    else:
        result = summary(ledger_or_url, by=by, since=since, until=until, model=model, accounting=accounting)
    step("plots")
    plots = collect_plots(ledger_or_url, result, since=since, until=until, model=model, max_points=max_points,
                          max_bands=max_bands, bins=bins)
    step("page")
    return render_page(result, plots, title=title, model=model, max_rows=max_rows)


def _by_request(ledger_or_url: Any, since: Any, until: Any, model: str | None, accounting: Any,
                keep: int) -> Summary:
    """The summary by request a page shows, read a page of requests at a time whatever their
    number: the ``keep - 2`` requests that used the most energy, ``(none)``, one row summing every
    other request, and ``(idle)``; sources, methods and period as the report by run states them."""
    from dataclasses import replace

    from .summary import largest_requests, request_rows

    context = summary(ledger_or_url, by="run", since=since, until=until, model=model, accounting=accounting)
    spill: dict[str, Any] = {"spans": 0, "requests": 0}
    costs: dict[Any, float] = {}

    def fold(row: dict) -> None:
        spill["spans"] += row["spans"]
        spill["requests"] += 1
        for key in ("duration_s", "energy_j", "uncertainty_j", "carbon_g"):
            if row.get(key) is not None:
                spill[key] = spill.get(key, 0.0) + row[key]
        if row.get("cost") is not None or row.get("currency") == "mixed":
            costs[row.get("currency")] = costs.get(row.get("currency"), 0.0) + (row.get("cost") or 0.0)

    rows, tail = largest_requests(request_rows(ledger_or_url, since=since, until=until, model=model,
                                               accounting=accounting), max(keep - 2, 1), dropped=fold)
    rows += [r for r in tail if r["group"] == NONE]
    if spill["requests"]:
        merged = {"group": f"({spill['requests']:,} more requests)", "method": "", **spill}
        merged.pop("requests")
        if len(costs) == 1:
            (merged["currency"], merged["cost"]), = costs.items()
        elif costs:
            merged["currency"], merged["cost"] = "mixed", None
        rows.append(merged)
    rows += [r for r in tail if r["group"] == IDLE]
    return replace(context, by="request", rows=rows)


def render_page(result: Summary, plots: ReportPlots, *, title: str | None = None, model: str | None = None,
                max_rows: int = 50) -> str:
    """The HTML page of a summary and its plots."""
    what = "Energy, carbon and cost" if result.priced else "Energy"
    heading = title or f"{what} by {result.by}" + (f" (model {model})" if model else "")
    first, last = result.period
    period = (f"{first:%Y-%m-%d %H:%M:%S} – {last:%Y-%m-%d %H:%M:%S} UTC" if first and last
              else "no spans in this selection")
    colours = _group_colours(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(heading)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(heading)}</h1>",
        f'<p class="sub">greenmaas report · measured {escape(period)}</p>',
    ]
    parts += _kpis(result, plots)
    parts += _table_section(result, max_rows)
    parts += _power_section(result, plots, colours)
    parts += _group_section(result, colours)
    parts += _request_section(plots)
    parts += _intensity_section(result, plots)
    parts += _sources_section(result, plots)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _group_colours(result: Summary) -> dict[str, str]:
    named = [r["group"] for r in result.rows if r["group"] != IDLE][: len(svg.PALETTE) - 1]
    out = {g: svg.PALETTE[i] for i, g in enumerate(named)}
    out[IDLE] = _IDLE_COLOUR
    return out


def _colour(colours: dict[str, str], group: str) -> str:
    return colours.get(group, svg.PALETTE[-1])


def _total(rows: Sequence[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def _kpis(result: Summary, plots: ReportPlots) -> list[str]:
    rows = result.rows
    if not rows:
        return ['<p class="empty">No spans in the ledger for this selection: nothing was measured here yet. '
                "Record a run with <code>greenmaas.Meter</code>, or widen <code>--since</code>/<code>--until</code>"
                "/<code>--model</code>.</p>"]
    energy = _total(rows, "energy_j")
    u = _total(rows, "uncertainty_j")
    kpis = [("Energy", "not measured" if energy is None else
             f"{format_amount(energy / _J_PER_KWH)} kWh" + (f" ± {format_amount(u / _J_PER_KWH)}" if u else ""))]
    carbon = _total(rows, "carbon_g")
    if result.priced:
        kpis.append(("Carbon (location-based)", "not computed" if carbon is None else f"{format_amount(carbon)} gCO2e"))
    currencies = {r.get("currency") for r in rows if r.get("cost") is not None}
    if len(currencies) == 1:
        cost = _total(rows, "cost")
        kpis.append(("Cost", f"{format_amount(cost)} {next(iter(currencies)) or ''}".rstrip()))
    kpis.append(("Spans", f"{sum(r['spans'] for r in rows):,}"))
    if plots.requests:
        kpis.append(("Requests", f"{plots.requests['requests']:,}"))
    cells = "".join(f'<div class="kpi">{escape(k)}<b>{escape(v)}</b></div>' for k, v in kpis)
    return [f'<div class="kpis">{cells}</div>']


def _table_section(result: Summary, max_rows: int) -> list[str]:
    rows = result.rows
    if not rows:
        return []
    named = [r for r in rows if r["group"] != IDLE]
    idle = [r for r in rows if r["group"] == IDLE]
    shown, rest = named[:max_rows], named[max_rows:]
    total_energy = _total(rows, "energy_j") or 0.0
    currencies = {r.get("currency") for r in rows if r.get("cost") is not None}
    money = len(currencies) == 1
    cur = next(iter(currencies)) if money else None
    head = [GROUP_HEADERS[result.by], "Spans", "Duration (s)", "Energy (J)", "± J", "Share (%)", "Method"]
    if result.priced:
        head.append("Carbon (gCO2e)")
    if money:
        head.append(f"Cost ({cur})" if cur else "Cost")

    def cells(r: dict, label: str | None = None) -> list[tuple[str, bool]]:
        e = r.get("energy_j")
        share = None if e is None or total_energy <= 0 else 100 * e / total_energy
        out = [
            (label or ("(spans without a value)" if r["group"] == NONE else str(r["group"])), False),
            (f"{r['spans']:,}", True),
            ("" if r.get("duration_s") is None else f"{r['duration_s']:,.1f}", True),
            ("not measured" if e is None else f"{e:,.1f}", True),
            ("" if r.get("uncertainty_j") is None else f"{r['uncertainty_j']:,.1f}", True),
            ("" if share is None else f"{share:.1f}", True),
            (str(r.get("method") or ""), False),
        ]
        if result.priced:
            out.append((format_amount(r.get("carbon_g"), missing="n/a"), True))
        if money:
            out.append((format_amount(r.get("cost"), missing=""), True))
        return out

    def tr(c: list[tuple[str, bool]], cls: str = "") -> str:
        klass = f' class="{cls}"' if cls else ""
        return f"<tr{klass}>" + "".join(f'<td class="n">{escape(v)}</td>' if n else f"<td>{escape(v)}</td>"
                                        for v, n in c) + "</tr>"

    body = [tr(cells(r)) for r in shown]
    if rest:
        merged = {"group": _OTHERS, "spans": sum(r["spans"] for r in rest),
                  "duration_s": _total(rest, "duration_s"), "energy_j": _total(rest, "energy_j"),
                  "uncertainty_j": _total(rest, "uncertainty_j"), "method": "", "carbon_g": _total(rest, "carbon_g"),
                  "cost": _total(rest, "cost")}
        body.append(tr(cells(merged, f"{len(rest):,} more groups"), "idle"))
    body += [tr(cells(r, "(idle: no span running)"), "idle") for r in idle]
    totals = {"group": "Total", "spans": sum(r["spans"] for r in rows), "duration_s": None,
              "energy_j": _total(rows, "energy_j"), "uncertainty_j": _total(rows, "uncertainty_j"), "method": "",
              "carbon_g": _total(rows, "carbon_g"), "cost": _total(rows, "cost") if money else None}
    total_cells = cells(totals, "Total")
    total_cells[5] = ("100.0" if total_energy > 0 else "", True)
    body.append(tr(total_cells, "total"))
    header = "".join(f'<th class="n">{escape(h)}</th>' if i not in (0, 6) else f"<th>{escape(h)}</th>"
                     for i, h in enumerate(head))
    return ["<h2>Summary</h2>", f'<table id="summary"><thead><tr>{header}</tr></thead><tbody>',
            *body, "</tbody></table>",
            '<p class="note">Each group sums its spans\' own energy (children excluded), so nothing is counted '
            "twice; (idle) is device energy while no span ran, and the rows add up to what the devices consumed."
            "</p>"]


def _legend(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(f'<span><i style="background:{c}"></i>{escape(label)}</span>'
                                            for label, c in items) + "</div>"


def _power_section(result: Summary, plots: ReportPlots, colours: dict[str, str]) -> list[str]:
    out = ["<h2>Power over time</h2>"]
    if not plots.power:
        out.append('<p class="empty">No power to plot: the ledger holds no samples for this selection (runs '
                   "recorded with <code>sample_interval_s=0</code>, or nothing recorded yet).</p>")
        return out
    bands_by_device: dict[str, list[svg.Band]] = {}
    used: dict[str, str] = {}
    for device, start, end, group in plots.bands:
        c = _colour(colours, group)
        used.setdefault(group, c)
        label = "(spans without a value)" if group == NONE else group
        tip = f"{label}: {datetime.fromtimestamp(start, tz=timezone.utc):%H:%M:%S.%f}"[:-3] + f" +{end - start:.3f} s"
        bands_by_device.setdefault(device, []).append(svg.Band(start, end, label, c, tip))
    for device in sorted(plots.power):
        series = []
        for i, (run_id, xs, ys) in enumerate(plots.power[device]):
            if len(xs) < 2:
                continue
            series.append(svg.Series(f"{device}, run {run_id}", xs, ys, colour="#1d2330", step=True))
        if not series:
            out.append(f'<p class="note">{escape(device)}: fewer than two samples, no power to draw.</p>')
            continue
        xs_all = [x for s in series for x in s.x]
        out.append(f"<h3>{escape(device)}</h3>")
        out.append(svg.time_chart(f"Power of {device} (W)", series, "W", bands_by_device.get(device, []),
                                  x_range=(min(xs_all), max(xs_all))))
    if used:
        named = [("(spans without a value)" if g == NONE else g, c) for g, c in used.items() if g in colours]
        if any(g not in colours for g in used):
            named.append(("other groups", svg.PALETTE[-1]))
        out.append(_legend(named))
        out.append(f'<p class="note">Shaded: top-level spans by {escape(result.by)}. The line is the mean power '
                   "between consecutive cumulative-energy samples.</p>")
    return out


def _top(rows: Sequence[dict], key: str) -> tuple[list[str], list[float | None], list[float | None]]:
    named = [r for r in rows if r["group"] != IDLE]
    idle = [r for r in rows if r["group"] == IDLE]
    head, rest = named[:_TOP_GROUPS], named[_TOP_GROUPS:]
    labels = ["(spans without a value)" if r["group"] == NONE else r["group"] for r in head]
    values = [r.get(key) for r in head]
    errors = [r.get("uncertainty_j") if key == "energy_j" else None for r in head]
    if rest:
        labels.append(f"{len(rest):,} more groups")
        values.append(_total(rest, key))
        errors.append(_total(rest, "uncertainty_j") if key == "energy_j" else None)
    for r in idle:
        labels.append("(idle)")
        values.append(r.get(key))
        errors.append(r.get("uncertainty_j") if key == "energy_j" else None)
    return labels, values, errors


def _group_section(result: Summary, colours: dict[str, str]) -> list[str]:
    rows = result.rows
    out = [f"<h2>Energy and carbon by {escape(result.by)}</h2>"]
    if not rows:
        out.append('<p class="empty">No groups to compare: no spans in this selection.</p>')
        return out
    labels, values, errors = _top(rows, "energy_j")
    bar_colours = [colours.get(g, svg.PALETTE[-1]) if g != "(idle)" else _IDLE_COLOUR
                   for g in [r["group"] for r in rows if r["group"] != IDLE][:_TOP_GROUPS]]
    bar_colours += [svg.PALETTE[-1]] * (len(labels) - len(bar_colours))
    if labels and labels[-1] == "(idle)":
        bar_colours[-1] = _IDLE_COLOUR
    out.append(svg.bar_chart(f"Energy by {result.by} (J)", labels, values, "J", colours=bar_colours, errors=errors))
    if result.priced:
        c_labels, c_values, _ = _top(rows, "carbon_g")
        if any(v is not None for v in c_values):
            out.append(svg.bar_chart(f"Carbon by {result.by} (gCO2e)", c_labels, c_values, "gCO2e, location-based",
                                     colours=bar_colours))
        else:
            out.append('<p class="note">Carbon: not computed for these groups.</p>')
    else:
        out.append('<p class="note">Carbon: not computed (energy only).</p>')
    return out


def _request_section(plots: ReportPlots) -> list[str]:
    out = ["<h2>Energy per request</h2>"]
    stats, h = plots.requests, plots.histogram
    if not stats or not h:
        out.append('<p class="empty">No requests in this selection: no span carries a <code>request_id</code> with '
                   "a measured energy (serve with <code>meter.request(...)</code> to see this distribution).</p>")
        return out
    n = stats["requests"]
    mean = stats["energy_j"] / n
    out.append(svg.histogram(f"Energy per request, {n:,} requests", h["edges"], h["counts"], "J", log_x=h["log"]))
    extra = f"; {h['below']:,} requests with 0 J are not on the log axis" if h["log"] and h["below"] else ""
    out.append(f'<p class="note">{n:,} requests: mean {mean:,.3g} J, min {stats["min_j"]:,.3g} J, max '
               f'{stats["max_j"]:,.3g} J (exact, from the database). Binned in the database into {len(h["counts"])} '
               f'{"log-spaced" if h["log"] else "equal"} bins{extra}. A request\'s energy is the sum of its '
               "spans' own energy, as in a report by request.</p>")
    return out


def _intensity_section(result: Summary, plots: ReportPlots) -> list[str]:
    if not plots.intensity:
        has = any(src.get("intensity_series") for src in result.sources)
        if has:
            return []  # the note says why it could not be drawn
        fixed = sorted({f"{src['intensity_g_per_kwh']:.4g}" for src in result.sources})
        if not fixed:
            return []
        return ["<h2>Carbon intensity</h2>",
                f'<p class="note">No time-varying intensity series was given: carbon uses a fixed '
                f'{escape(", ".join(fixed))} gCO2e/kWh (see the sources). Pass <code>--intensity-csv</code> for '
                "hourly figures.</p>"]
    out = ["<h2>Carbon intensity over time</h2>"]
    series = [svg.Series(label, t, v, colour=svg.PALETTE[i % 7], step=True)
              for i, (label, (t, v)) in enumerate(plots.intensity.items())]
    out.append(svg.time_chart("Grid carbon intensity (gCO2e/kWh)", series, "gCO2e/kWh", y_min=0.0))
    out.append(_legend([(label, svg.PALETTE[i % 7]) for i, label in enumerate(plots.intensity)]))
    return out


def _sources_section(result: Summary, plots: ReportPlots) -> list[str]:
    out = ["<h2>What these figures rest on</h2>"]
    lines = source_lines(result)
    if not lines and not plots.notes:
        out.append('<p class="note">Nothing measured in this selection.</p>')
        return out
    items = [line.strip() for line in lines]
    out.append('<ul class="sources">' + "".join(f"<li>{escape(i)}</li>" for i in items) +
               "".join(f"<li>Plot: {escape(n)}</li>" for n in plots.notes) + "</ul>")
    methods = [m["method"] for m in result.methods]
    if methods:
        out.append('<p class="note">Methods: ' + escape("; ".join(method_text(m) for m in methods)) + ".</p>")
    return out
