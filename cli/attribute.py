"""``greenmaas attribute``: re-attribute a recorded trace to spans, offline."""

from __future__ import annotations

import csv
import sys

import click

from greenmaas.errors import GreenmaasError, InputError

from .options import UserError
from .render import progress_steps

_CHUNK = 50_000  # rows written at a time


@click.command("attribute")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False), help="Trace CSV: t,device,energy_j,power_w[,t_start,max_energy_j,error,method,power_field] (as `greenmaas export` writes it).")
@click.option("--spans", "spans_path", required=True, type=click.Path(dir_okay=False), help="Spans CSV: id,start,end,devices[,weight,model,request_id,tenant,parent,kind,link,name].")
@click.option("--policy", type=click.Choice(["time", "weighted"]), default="time", show_default=True, help="How concurrent spans share a device.")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True, help="Output format.")
@click.option("--ledger", "ledger_url", default=None, metavar="PATH_OR_URL",
              help="Also record the attribution in this ledger as a run (method replay), reported like a live run.")
@click.option("--anchor", default=None, metavar="TIME",
              help="With --ledger: the UTC wall time of the trace's first read (ISO 8601, e.g. 2026-12-01T09:00Z); "
                   "default now.")
def attribute(trace_path: str, spans_path: str, policy: str, fmt: str, ledger_url: str | None,
              anchor: str | None) -> None:
    """Divide the measured energy of TRACE among the spans of SPANS, plus idle.

    For every device, the energy of the spans plus idle equals what the trace says the device
    consumed (total_j). The division follows the live meter's rules and code exactly, so a run
    exported with `greenmaas export` gets the figures the meter recorded. Each span's energy
    includes its children's and carries an uncertainty (± J).

    With --ledger, the result is also recorded as a finished run (devices method replay; the
    trace's reads, the spans with their energy, per-device totals), so `greenmaas report` and
    `greenmaas export` see it like a live run; its id is printed on stderr.
    """
    from greenmaas.attribution.offline import attribute_trace, load_spans
    from greenmaas.sources.replay import load_trace

    when = None
    if anchor is not None:
        if ledger_url is None:
            raise UserError("--anchor is only meaningful with --ledger")
        when = _parse_anchor(anchor)
    steps = ("reading the trace", "reading the spans", "attributing") + (("recording",) if ledger_url else ())
    with progress_steps("greenmaas attribute", steps) as step:
        try:
            step(steps[0])
            trace = load_trace(trace_path)
            step(steps[1])
            spans = load_spans(spans_path, set(trace))
            step(steps[2])
            result = attribute_trace(trace, spans, policy=policy)
        except InputError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(2)
        except GreenmaasError as exc:
            raise UserError(str(exc)) from exc
        if ledger_url is not None:
            step(steps[3])
            _record(result, trace, ledger_url, when, trace_path, spans_path)
    if fmt == "json":
        for text in result.json_text():
            sys.stdout.write(text)
        return
    devices = sorted(result.by_device)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(
        ["id", "model", "request_id", "tenant", "energy_j", "uncertainty_j", *[f"{d} energy_j" for d in devices]]
    )
    energy = result.span_energy_j()
    unc = result.span_uncertainty_j()
    t = result.spans
    n = len(t)
    for a in range(0, n, _CHUNK):  # a chunk of rows at a time, as text
        b = min(n, a + _CHUNK)
        out.writerows(zip(
            t.ids[a:b], *([v or "" for v in col[a:b]] for col in (t.model, t.request_id, t.tenant)),
            *(map(repr, arr[a:b].tolist()) for arr in (energy, unc, *(result.by_device[d] for d in devices))),
        ))
    idle_u = sum(result.idle_uncertainty_j.values())
    out.writerow(
        ["(idle)", "", "", "", repr(sum(result.idle_j.values())), repr(idle_u)] + [repr(result.idle_j[d]) for d in devices]
    )
    out.writerow(["(total)", "", "", "", repr(sum(result.total_j.values())), ""] + [repr(result.total_j[d]) for d in devices])


def _parse_anchor(text: str):
    from greenmaas.timeparse import parse_time

    try:
        return parse_time(text, where="--anchor")  # aware UTC: a time without an offset is UTC
    except GreenmaasError as exc:
        raise UserError(str(exc)) from exc


def _record(result, trace, ledger_url, when, trace_path, spans_path) -> None:
    from datetime import datetime, timezone

    from greenmaas.ledger import Ledger
    from greenmaas.recording import record_attribution

    try:
        ledger = Ledger.open(ledger_url)
    except GreenmaasError as exc:
        raise UserError(str(exc)) from exc
    try:
        run_id = record_attribution(
            result, trace, ledger, anchor=when or datetime.now(timezone.utc),
            sources={"trace": str(trace_path), "spans": str(spans_path)},
        )
    except GreenmaasError as exc:
        raise UserError(f"{ledger.display}: not recorded: {exc}") from exc
    finally:
        ledger.close()
    anchored = "" if when is not None else " (times anchored at now; pass --anchor)"
    click.echo(f"Recorded as run {run_id} in {ledger_url}{anchored}.", err=True)
