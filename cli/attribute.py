"""``greenmaas attribute``: re-attribute a recorded trace to spans, offline."""

from __future__ import annotations

import csv
import json
import sys

import click

from greenmaas.errors import GreenmaasError, InputError

from .options import UserError


@click.command("attribute")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False), help="Trace CSV: t,device,energy_j,power_w[,t_start,max_energy_j,error,method,power_field] (as `greenmaas export` writes it).")
@click.option("--spans", "spans_path", required=True, type=click.Path(dir_okay=False), help="Spans CSV: id,start,end,devices[,weight,model,request_id,tenant,parent,kind,link,name].")
@click.option("--policy", type=click.Choice(["time", "weighted"]), default="time", show_default=True, help="How concurrent spans share a device.")
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True, help="Output format.")
def attribute(trace_path: str, spans_path: str, policy: str, fmt: str) -> None:
    """Divide the measured energy of TRACE among the spans of SPANS, plus idle.

    For every device, the energy of the spans plus idle equals what the trace says the device
    consumed (total_j). The division follows the live meter's rules and code exactly, so a run
    exported with `greenmaas export` gets the figures the meter recorded. Each span's energy
    includes its children's and carries an uncertainty (± J).
    """
    from greenmaas.attribution.offline import attribute_trace

    try:
        result = attribute_trace(trace_path, spans_path, policy=policy)
    except InputError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(2)
    except GreenmaasError as exc:
        raise UserError(str(exc)) from exc
    if fmt == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    devices = sorted(result.by_device)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(
        ["id", "model", "request_id", "tenant", "energy_j", "uncertainty_j", *[f"{d} energy_j" for d in devices]]
    )
    energy = result.span_energy_j()
    unc = result.span_uncertainty_j()
    t = result.spans
    for i, sid in enumerate(t.ids):
        out.writerow(
            [sid, t.model[i] or "", t.request_id[i] or "", t.tenant[i] or "", repr(float(energy[i])), repr(float(unc[i]))]
            + [repr(float(result.by_device[d][i])) for d in devices]
        )
    idle_u = sum(result.idle_uncertainty_j.values())
    out.writerow(
        ["(idle)", "", "", "", repr(sum(result.idle_j.values())), repr(idle_u)] + [repr(result.idle_j[d]) for d in devices]
    )
    out.writerow(["(total)", "", "", "", repr(sum(result.total_j.values())), ""] + [repr(result.total_j[d]) for d in devices])
