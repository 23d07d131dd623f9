"""``greenmaas export``: a recorded run as the trace and spans files ``greenmaas attribute`` reads."""

from __future__ import annotations

import sys

import click

from greenmaas.errors import GreenmaasError

from .options import ledger_option

__all__ = ["export"]


@click.command("export")
@ledger_option
@click.option("--run", "run", default="latest", show_default=True, metavar="ID|latest",
              help="The run to export: its id (see `greenmaas runs`), or latest (the run that started last).")
@click.option("--trace", "trace_path", required=True, type=click.Path(),
              help="Trace CSV to write: t,device,energy_j,power_w,max_energy_j,error,t_start,method,power_field; "
                   "one row per raw read.")
@click.option("--spans", "spans_path", required=True, type=click.Path(),
              help="Spans CSV to write: id,start,end,devices,weight,model,request_id,tenant,parent,kind,link,status,name.")
def export(ledger, run, trace_path, spans_path):
    """Write a recorded run's raw device reads and its spans as CSV files, on the run's own
    monotonic clock, so that `greenmaas attribute --trace ... --spans ...` re-attributes it
    offline and finds the energies the meter recorded. Floats are written exactly (repr).

    Both files are written whole or not at all. Errors (no such run, a run recorded before
    ledger schema 2, an output that cannot be written) are one line on stderr, exit status 2.
    """
    from greenmaas.export import export_run

    try:
        done = export_run(ledger, run=run, trace=trace_path, spans=spans_path)
    except GreenmaasError as exc:
        click.echo(f"Error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    left_out = f" ({done.spans_left_out} on no traced device left out)" if done.spans_left_out else ""
    click.echo(
        f"Exported run {done.run_id}: {done.reads:,} reads of {len(done.devices)} device(s) to "
        f"{done.trace}, {done.span_rows:,} spans to {done.spans}{left_out}."
    )
    rows, spans = done.rollups
    if rows:
        click.echo(
            f"Note: {rows:,} of the rows are rollups standing for {spans:,} spans; re-attributed, each "
            "counts as one span from its first member's start to its last one's end, so those rows' "
            "figures differ from the run's (record with Meter(rollup=False) to replay exactly).",
            err=True,
        )
