"""``greenmaas report``: energy per model, phase, run, day, request, tenant or span name.

Extension point for carbon and cost: add options to :func:`report` and turn them into
:class:`greenmaas.report.ExtraColumn` objects in :func:`extra_columns`; :func:`build_report`
passes them to :func:`greenmaas.report.summarize` and adds a column for each to the output.
"""

from __future__ import annotations

from typing import Any, Sequence

import click

from greenmaas.report import GROUPS, ExtraColumn, summarize

from .options import DateParam, format_option, ledger_option
from .render import Column, render

__all__ = ["report", "build_report", "report_columns", "extra_columns"]

_GROUP_HEADERS = {
    "model": "Model",
    "phase": "Phase",
    "run": "Run",
    "day": "Day (UTC)",
    "request": "Request",
    "tenant": "Tenant",
    "name": "Span name",
}
_KWH_J = 3.6e6


def extra_columns(**options: Any) -> list[ExtraColumn]:
    """Extra columns asked for by the report's options (carbon, cost: none yet)."""
    return []


def report_columns(by: str, rows: Sequence[dict], extra: Sequence[ExtraColumn] = ()) -> list[Column]:
    """The columns to show for ``rows``: the base ones, then each extra column present."""
    total_energy = sum(r["energy_j"] or 0.0 for r in rows)

    def share(row: dict) -> float | None:
        if row["energy_j"] is None or total_energy <= 0:
            return None
        return 100.0 * row["energy_j"] / total_energy

    columns = [
        Column("group", _GROUP_HEADERS[by]),
        Column("spans", "Spans", "int", total=True),
        Column("duration_s", "Duration (s)", "float", digits=1),
        Column("energy_j", "Energy (J)", "float", digits=1, total=True),
        Column(
            "energy_kwh",
            "Energy (kWh)",
            "float",
            digits=4,
            total=True,
            value=lambda r: None if r["energy_j"] is None else r["energy_j"] / _KWH_J,
        ),
        Column("share_pct", "Share (%)", "float", digits=1, total=True, value=share),
    ]
    known = {c.key: c for c in extra}
    from greenmaas.report import RECORDED_COLUMNS

    known.update({c.key: c for c in RECORDED_COLUMNS if c.key not in known})
    present = {k for r in rows for k in r}
    for key, c in known.items():
        if key in present:
            columns.append(Column(key, c.header, "float", digits=c.digits, total=True))
    if "currency" in present:
        columns.append(Column("currency", "Currency"))
    return columns


def build_report(
    ledger: Any,
    *,
    by: str = "model",
    since: Any = None,
    until: Any = None,
    model: str | None = None,
    extra: Sequence[ExtraColumn] = (),
) -> tuple[list[dict], list[Column]]:
    """The report's rows (from :func:`greenmaas.report.summarize`) and the columns to show."""
    rows = summarize(ledger, by=by, since=since, until=until, model=model, extra_columns=extra)
    return rows, report_columns(by, rows, extra)


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
@format_option()
def report(ledger, by, since, until, model, fmt, **options):
    """Energy per model, phase, run, day, request, tenant or span name.

    Nested spans are never double counted: each group sums its spans' own energy (children
    excluded). An (idle) row holds energy used while no span ran.
    """
    rows, columns = build_report(
        ledger, by=by, since=since, until=until, model=model, extra=extra_columns(**options)
    )
    if fmt in ("table", "markdown") and not rows:
        click.echo("No spans in the ledger for this selection.", err=True)
        return
    title = f"Energy by {by}" + (f" (model {model})" if model else "")
    render(rows, columns, fmt, title=title, total_label="Total")

