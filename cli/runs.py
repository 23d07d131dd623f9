"""``greenmaas runs``: the runs in a ledger."""

from __future__ import annotations

import click

from greenmaas.reporting.listings import list_runs

from .options import format_option, ledger_option
from .render import Column, render

__all__ = ["runs", "RUN_COLUMNS"]

RUN_COLUMNS = [
    Column("run_id", "Run"),
    Column("host", "Host"),
    Column("pid", "PID", "int"),
    Column("start", "Start (UTC)", "time"),
    Column("end", "End (UTC)", "time"),
    Column("status", "Status"),
    Column("heartbeat", "Last heartbeat (UTC)", "time"),
    Column("spans", "Spans", "int", total=True),
    Column("energy_j", "Energy (J)", "float", digits=1, total=True),
]


@click.command("runs")
@ledger_option
@format_option()
def runs(ledger, fmt):
    """List the runs in the ledger, oldest first, with their span count and energy.

    A run still marked running whose process is gone (its pid, on this host; its heartbeat older
    than 30 s, elsewhere) shows as interrupted, with its last heartbeat.
    """
    rows = list_runs(ledger)
    if fmt in ("table", "markdown") and not rows:
        click.echo("No runs in the ledger.", err=True)
        return
    render(rows, RUN_COLUMNS, fmt, title="Runs", total_label="Total")
