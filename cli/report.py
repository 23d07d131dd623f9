"""``greenmaas report``: energy, carbon and cost per model, phase, run, day, request, tenant or
span name, re-priced from the recorded energy.

Without accounting options each run is priced as it recorded (``config["accounting"]``); each of
``--location``, ``--price``, ``--pue``, ``--intensity-csv``, ``--market-intensity``,
``--hardware-price`` and ``--embodied`` replaces that one setting for every run, without
re-running anything. Tables end with a short sources footer; markdown adds a sources section
(and a model card per model with ``--by model``); JSON and CSV stay a plain list of rows, and
``--sources`` prints what the figures rest on instead of the rows.

Documents (:mod:`greenmaas.reporting`): ``html`` is one self-contained page with plots;
``eu-ai-act`` the energy and compute fields of EU AI Act Annex XI §2(d)–(e) and the GPAI Code of
Practice model documentation form, per model (markdown; JSON with ``eu-ai-act-json`` or an
``--output`` ending in ``.json``); ``sci`` the GSF SCI with its terms (JSON, per ``--sci`` unit,
default request); ``boamps`` a BoAmps energy report (JSON), validated against its schema.
``--output FILE`` writes any format to a file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from itertools import chain
from typing import Any, Mapping, Sequence

import click

from greenmaas.errors import GreenmaasError
from greenmaas.period import to_utc
from greenmaas.reporting.summary import GROUP_HEADERS, GROUPS, SCI_UNITS, ExtraColumn, Summary, request_rows, summary

from .options import (
    ACCOUNTING_OPTIONS,
    FORMATS,
    DateParam,
    UserError,
    accounting_options,
    format_option,
    ledger_option,
)
from .render import Column, output_to, progress_steps, render, render_stream, write_document

__all__ = ["report", "build_report", "report_columns", "accounting_overrides", "DOCUMENT_FORMATS"]

#: Formats that are documents rather than a table of rows (see :mod:`greenmaas.reporting`).
DOCUMENT_FORMATS = ("html", "eu-ai-act", "eu-ai-act-json", "sci", "boamps")

_KWH_J = 3.6e6
_UNIT_PLURAL = {"request": "requests", "token": "tokens", "sample": "samples"}


def accounting_overrides(**options: Any) -> dict[str, Any]:
    """The accounting options given, parsed: ``{AccountingConfig field: value}``.

    A bad value raises :class:`UserError` naming the option: one line, exit 2.
    """
    from greenmaas.accounting.config import parse_setting

    out = {}
    for option, dest, _, _ in ACCOUNTING_OPTIONS:
        raw = options.get(dest)
        if raw is None:
            continue
        try:
            out[dest] = parse_setting(dest, raw)
        except GreenmaasError as exc:
            raise UserError(f"{option}: {' '.join(str(exc).split())}") from exc
    return out


def report_columns(
    by: str, rows: Sequence[dict], extra: Sequence[ExtraColumn] = (), sci: str | None = None,
    total_energy: float | None = None,
) -> list[Column]:
    """The columns to show for ``rows``: the base ones, the method and its ± J, carbon and cost,
    extras, SCI.

    Machine formats get every key (``uncertainty_source`` says whether ± J was recorded or is the
    method's stated figure; tables say so in their notes); tables leave out money columns nobody
    priced, name the currency in the header when there is one, and show the cost breakdown when
    hardware is priced.
    """
    if total_energy is None:
        total_energy = sum(r["energy_j"] or 0.0 for r in rows)

    def share(row: dict) -> float | None:
        if row["energy_j"] is None or total_energy <= 0:
            return None
        return 100.0 * row["energy_j"] / total_energy

    columns = [
        Column("group", GROUP_HEADERS[by]),
        Column("spans", "Spans", "int", total=True),
        Column("duration_s", "Duration (s)", "float", digits=1),
        Column("energy_j", "Energy (J)", "float", digits=1, total=True),
        Column(
            "energy_kwh",
            "Energy (kWh)",
            "amount",
            total=True,
            value=lambda r: None if r["energy_j"] is None else r["energy_j"] / _KWH_J,
        ),
        Column("share_pct", "Share (%)", "float", digits=1, total=True, value=share),
        Column("method", "Method"),
        Column("uncertainty_j", "± J", "float", digits=1, total=True),
        Column("uncertainty_source", "± from", show="machine"),
    ]
    present = {k for r in rows for k in r}
    if "carbon_g" in present:
        columns.append(Column("carbon_g", "Carbon (gCO2e)", "amount", total=True))
    if "carbon_market_g" in present:
        columns.append(Column("carbon_market_g", "Carbon, market-based (gCO2e)", "amount", total=True))
    if "cost" in present:
        columns += _money_columns(rows)
    if by == "request" and "prefill_j" in present:
        columns += [
            Column("prompt_tokens", "Prompt tokens", "int", total=True),
            Column("output_tokens", "Output tokens", "int", total=True),
            Column("prefill_j", "Prefill (J)", "float", digits=2, total=True),
            Column("decode_j", "Decode (J)", "float", digits=2, total=True),
            Column("j_per_output_token", "J/output token", "float", digits=4),
            Column("ttft_s", "TTFT (s)", "float", digits=3),
        ]
    for c in extra:
        if c.key in present:
            columns.append(Column(c.key, c.header, "float", digits=c.digits, total=True))
    if sci is not None and "sci_g" in present:
        # Tables show the SCI view: its terms and result; CSV and JSON keep every column.
        keep = {"group", "spans", "energy_j", "uncertainty_j"}
        columns = [c if c.key in keep else replace(c, show="machine") for c in columns if c.show != "human"
                   or c.key in keep]
        unit, units = sci, _UNIT_PLURAL[sci]
        columns += [
            Column("sci_unit", "SCI unit", show="machine"),
            Column("sci_energy_kwh", "E (kWh, with PUE)", "amount", total=True),
            Column("sci_operational_g", "E·I (gCO2e)", "amount", total=True),
            Column("sci_embodied_g", "M (gCO2e)", "amount", total=True),
            Column("functional_units", f"R ({units})", "amount", total=True, missing="0"),
            Column("sci_g", f"SCI (gCO2e/{unit})", "amount", missing="n/a"),
        ]
    return columns


def _money_columns(rows: Sequence[dict]) -> list[Column]:
    currencies = {r.get("currency") for r in rows if r.get("cost") is not None or r.get("currency") == "mixed"}
    single = next(iter(currencies)) if len(currencies) == 1 and None not in currencies else None
    unit = f" ({single})" if single and single != "mixed" else ""
    priced = any(r.get("cost") is not None for r in rows) or "mixed" in currencies
    hardware = any(r.get("hardware_cost") for r in rows)
    # Sums across currencies mean nothing: no total line for money unless there is one currency.
    total = bool(unit)
    human = "all" if priced else "machine"
    return [
        Column("energy_cost", f"Electricity{unit}", "amount", total=total, show=human if hardware else "machine"),
        Column("hardware_cost", f"Hardware{unit}", "amount", total=total, show=human if hardware else "machine"),
        Column("cost", f"Cost{unit}", "amount", total=total, show=human),
        Column("currency", "Currency", show="all" if priced and not unit else "machine"),
    ]


def _device_kinds_present(ledger: Any) -> set[str]:
    """The device kinds a ledger has recorded, as reports price them: each run's description of
    its devices, else the device id's prefix (``gpu:0`` -> ``gpu``); lower case."""
    from greenmaas.reporting.frames import read_ledger

    kinds: set[str] = set()
    described: set[tuple[str, str]] = set()
    runs = read_ledger(ledger, "runs")
    for run_id, devices in zip(runs["run_id"], runs["devices"]):
        for d in devices if isinstance(devices, list) else []:
            if isinstance(d, dict) and d.get("id"):
                described.add((run_id, str(d["id"])))
                kinds.add(str(d.get("kind") or str(d["id"]).split(":", 1)[0]).lower())
    totals = read_ledger(ledger, "devices")
    for run_id, device in zip(totals["run_id"], totals["device"]):
        if (run_id, str(device)) not in described:
            kinds.add(str(device).split(":", 1)[0].lower())
    return kinds


def _warn_unused_hardware_prices(ledger: Any, prices: Mapping[str, Any]) -> None:
    """One warning line per ``--hardware-price`` kind the ledger has no device of (a typo, or
    the wrong ledger): that price prices nothing."""
    present = _device_kinds_present(ledger)
    for kind in sorted(set(prices) - present):
        have = ", ".join(sorted(present)) or "none"
        click.echo(
            f"Warning: --hardware-price: the ledger has no device of kind {kind!r} "
            f"(kinds present: {have}); its price is not used.",
            err=True,
        )


def build_report(
    ledger: Any,
    *,
    by: str = "model",
    since: Any = None,
    until: Any = None,
    model: str | None = None,
    extra: Sequence[ExtraColumn] = (),
    accounting: Mapping[str, Any] | None = None,
    sci: str | None = None,
    run: str | None = None,
) -> tuple[Summary, list[Column]]:
    """The report (from :func:`greenmaas.reporting.summary.summary`) and the columns to show."""
    result = summary(ledger, by=by, since=since, until=until, model=model, extra_columns=extra,
                     accounting=accounting or None, sci=sci, run=run)
    return result, report_columns(by, result.rows, extra, sci)


@click.command("report")
@ledger_option
@click.option(
    "--by",
    type=click.Choice(GROUPS),
    default="model",
    show_default=True,
    help="Group spans by this tag (day: UTC date of span start).",
)
@click.option("--since", type=DateParam(), help="Only spans starting at or after this UTC date/time.")
@click.option(
    "--until", type=DateParam(), help="Only spans starting before this UTC time (a date includes that day)."
)
@click.option("--model", help="Only this model's spans.")
@click.option("--run", "run", metavar="ID|latest",
              help="Only this run's spans and idle time (latest: the run that started last).")
@accounting_options
@click.option(
    "--sci",
    type=click.Choice(SCI_UNITS),
    default=None,
    help="Add the Software Carbon Intensity (E·I + M) / R per request, output token or sample.",
)
@click.option(
    "--sources",
    "sources_only",
    is_flag=True,
    help="Print what the figures rest on (location, intensity, PUE, prices, methods) instead of the rows.",
)
@format_option(FORMATS + DOCUMENT_FORMATS)
@click.option(
    "--output",
    "output",
    metavar="FILE",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to FILE instead of standard output (eu-ai-act: JSON when FILE ends in .json).",
)
def report(ledger, by, since, until, model, run, sci, sources_only, fmt, output, **options):
    """Energy, carbon and cost per model, phase, run, day, request, tenant, span name, host, job or rank.

    Nested spans are never double counted: each group sums its spans' own energy (children
    excluded), and carbon and cost are computed on that energy. An (idle) row, in every grouping,
    holds energy and device time used while no span ran. By request, CSV and JSON give every
    request (in request-id order), a table the 50 that used the most. Each run is priced with the
    accounting it recorded;
    the accounting options replace one setting each, for every run, without re-running.

    Documents: --format html (one page with plots), eu-ai-act (EU AI Act / GPAI Code of
    Practice energy fields per model), sci (GSF SCI form, JSON), boamps (BoAmps JSON).
    """
    lo, hi = to_utc(since), to_utc(until, upper=True)  # a bare --until date includes its day
    if lo is not None and hi is not None and hi <= lo:
        raise UserError(f"--until {until.isoformat()} is not after --since {since.isoformat()}: nothing to report")
    overrides = accounting_overrides(**options)
    if overrides.get("hardware_prices"):
        _warn_unused_hardware_prices(ledger, overrides["hardware_prices"])
    if fmt in DOCUMENT_FORMATS:
        if run is not None:
            raise UserError(f"--run selects the rows of table, csv, json or markdown; {fmt} documents the whole "
                            "selection (narrow it with --since, --until, --model)")
        if sources_only:
            raise UserError(f"--sources prints the sources as table, csv, json or markdown, not {fmt}")
        if fmt == "eu-ai-act" and output is not None and output.lower().endswith(".json"):
            fmt = "eu-ai-act-json"
        write_document(_document(fmt, ledger, by=by, since=since, until=until, model=model,
                                 accounting=overrides, sci=sci), output)
        return
    if output is not None:
        click.get_current_context().with_resource(output_to(output))
    if by == "request" and fmt in ("csv", "json") and sci is None and not sources_only:
        # A row per request: written as they are computed, a page of requests at a time, in
        # request id order (then the spans of no request, then idle), so memory stays bounded.
        rows = request_rows(ledger, since=since, until=until, model=model, run=run, accounting=overrides or None)
        first = next(rows, None)
        columns = report_columns(by, [first] if first is not None else [])
        render_stream(chain([first] if first is not None else [], rows), columns, fmt)
        return
    if by == "request" and fmt in ("table", "markdown") and sci is None and not sources_only:
        _request_table(ledger, fmt, since=since, until=until, model=model, run=run, overrides=overrides)
        return
    with progress_steps("Reading the ledger", ("grouping and pricing",)) as step:
        step("grouping and pricing")
        result, columns = build_report(
            ledger, by=by, since=since, until=until, model=model, accounting=overrides, sci=sci, run=run
        )
    if sources_only:
        _render_sources(result, fmt)
        return
    rows = result.rows
    if fmt in ("table", "markdown") and not rows:
        click.echo("No spans in the ledger for this selection.", err=True)
        return
    from greenmaas.reporting.modelcard import model_cards, source_lines, sources_markdown

    after = None
    if fmt == "table":
        after = "\n".join(source_lines(result))
    elif fmt == "markdown":
        after = (model_cards(result) + "\n" if by == "model" else "") + sources_markdown(result)
    what = "Energy, carbon and cost" if result.priced else "Energy"
    title = f"{what} by {by}" + (f" (model {model})" if model else "") + (f" (run {result.run})" if result.run else "")
    render(rows, columns, fmt, title=title, total_label="Total", after=after)


#: Requests a table or markdown report by request shows: those that used the most energy.
REQUEST_TABLE_ROWS = 50
_TOTALLED = ("spans", "duration_s", "energy_j", "uncertainty_j", "carbon_g", "carbon_market_g", "energy_cost",
             "hardware_cost", "cost", "prompt_tokens", "output_tokens", "prefill_j", "decode_j")


def _request_table(ledger: Any, fmt: str, *, since: Any, until: Any, model: str | None, run: str | None,
                   overrides: Mapping[str, Any]) -> None:
    """A table (or markdown) by request that holds few rows at a time however many requests
    there are: the :data:`REQUEST_TABLE_ROWS` that used the most energy, then ``(none)`` and
    ``(idle)``, and a total line over every request."""
    from greenmaas.reporting.modelcard import source_lines, sources_markdown
    from greenmaas.reporting.summary import IDLE, NONE, largest_requests

    total: dict[str, Any] = {}
    kinds: dict[tuple, dict] = {}  # one row per kind of money columns, for the columns' choice
    counted = {"requests": 0}

    def seen(row: dict) -> None:
        for key in _TOTALLED:
            value = row.get(key)
            if value is not None:
                total[key] = total.get(key, 0) + value
            elif key in row:
                total.setdefault(key, None)
        kinds.setdefault((row.get("currency"), row.get("cost") is None, bool(row.get("hardware_cost"))), row)
        counted["requests"] += row["group"] not in (NONE, IDLE)

    with progress_steps("Reading the ledger", ("requests",)) as step:
        step("requests")
        rows = request_rows(ledger, since=since, until=until, model=model, run=run, accounting=overrides or None)
        largest, tail = largest_requests(rows, REQUEST_TABLE_ROWS, seen=seen)
        # What the figures rest on: the same selection's sources, read from the summaries.
        context = summary(ledger, by="run", since=since, until=until, model=model, run=run,
                          accounting=overrides or None)
    requests = counted["requests"]
    if not requests and not tail:
        click.echo("No spans in the ledger for this selection.", err=True)
        return
    shown = largest + tail
    total_row = {"group": "Total", **total, "currency": None}
    columns = report_columns("request", shown + list(kinds.values()), total_energy=total.get("energy_j") or 0.0)
    what = "Energy, carbon and cost" if context.priced else "Energy"
    title = f"{what} by request" + (f" (model {model})" if model else "") + (f" (run {context.run})" if run else "")
    if requests > REQUEST_TABLE_ROWS:
        title += f": the {REQUEST_TABLE_ROWS} of {requests:,} requests that used the most energy"
    note = (f"{requests:,} requests in all; the total line adds up every one. --format csv or json gives a row "
            "for each." if requests > REQUEST_TABLE_ROWS else "")
    if fmt == "table":
        after = "\n".join([*source_lines(context), *([note] if note else [])])
    else:
        after = sources_markdown(context) + (f"\n{note}\n" if note else "")
    render(shown, columns, fmt, title=title, total_label="Total", after=after, totals_of=[total_row])


def _document(fmt: str, ledger: Any, *, by: str, since: Any, until: Any, model: str | None,
              accounting: Mapping[str, Any], sci: str | None) -> str:
    """The text of a document format (:data:`DOCUMENT_FORMATS`)."""
    from greenmaas import reporting

    common: dict[str, Any] = dict(since=since, until=until, model=model, accounting=accounting or None)
    if fmt == "html":
        with progress_steps("Reading the ledger", ("summary", "plots", "page")) as step:
            return reporting.html_report(ledger, by=by, progress=step, **common)
    if fmt == "eu-ai-act":
        return reporting.eu_ai_act(ledger, **common).to_markdown()
    if fmt == "eu-ai-act-json":
        return json.dumps(reporting.eu_ai_act(ledger, **common).to_dict(), indent=2, default=str) + "\n"
    if fmt == "sci":
        form = reporting.sci_form(ledger, unit=sci or "request", by=by, **common)
        return json.dumps(form, indent=2, default=str) + "\n"
    doc = reporting.boamps_report(ledger, **common)
    reporting.validate_boamps(doc)
    return json.dumps(doc, indent=2) + "\n"


def _render_sources(result: Summary, fmt: str) -> None:
    from greenmaas.reporting.modelcard import source_lines, sources_markdown

    if fmt == "json":
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    elif fmt == "markdown":
        sys.stdout.write(sources_markdown(result))
    elif fmt == "csv":
        keys = ("location", "location_spec", "location_source", "intensity_g_per_kwh", "intensity_source",
                "intensity_year", "market_intensity_g_per_kwh", "pue", "price", "currency")
        rows = [
            {**{k: src.get(k) for k in keys},
             "hardware_prices": ",".join(f"{k}={v}" for k, v in (src.get("hardware_prices") or {}).items()),
             "embodied": ",".join(f"{k}={e['kg_co2e']:g}kg/{e['lifetime_years']:g}y"
                                  for k, e in (src.get("embodied") or {}).items()),
             "runs": " ".join(src.get("runs") or [])}
            for src in result.sources
        ]
        columns = [Column(k, k) for k in (*keys, "hardware_prices", "embodied", "runs")]
        render(rows, columns, "csv")
    else:
        sys.stdout.write("\n".join(source_lines(result)) + "\n")
