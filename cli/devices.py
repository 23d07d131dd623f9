"""``greenmaas devices``: what can be measured on this machine, how, and what could not.

Each GPU also shows the processes NVML lists on it now (pids as the host numbers them; a GPU
used by processes that greenmaas does not measure has their work counted in the spans of the
meter that measures it, see :mod:`greenmaas.processes`).

It also says where tenant pseudonyms take their key from (``$GREENMAAS_TENANT_KEY`` or the user's
key file, :mod:`greenmaas.ledger.keys`), never the key itself.

``--probe`` also measures each NVML GPU's readings (:func:`greenmaas.sources.probe.probe_gpu`):
how often the energy counter updates and how regularly, the power field in use and how often it
refreshes, and what an NVML call costs. Tests inject sources and a clock through click's ``obj``
(``{"detect": ..., "clock": ...}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click

from .options import UserError, format_option, ledger_option
from .render import Column, render

__all__ = ["devices", "DEVICE_COLUMNS", "PROBE_COLUMNS"]

DEVICE_COLUMNS = [
    Column("id", "Device"),
    Column("kind", "Kind"),
    Column("name", "Name"),
    Column("method", "Method"),
    Column("power_field", "Power reads", missing="none"),
    Column("uuid", "UUID"),
    Column("measured_by", "Measured now by", missing=""),
    Column("processes", "Processes on it", value=lambda r: _processes_text(r), missing=""),
    Column("note", "Note"),
]
_UNUSED_COLUMNS = [Column("source", "Not used"), Column("reason", "Why")]
PROBE_COLUMNS = [
    Column("id", "Device"),
    Column("counter_period_ms", "Counter period (ms)", "float", 1, missing="n/a"),
    Column("phase_jitter_ms", "Jitter sd/max (ms)", value=lambda r: _pair(r, "phase_jitter_ms", "jitter_max_ms")),
    Column("missed_updates", "Missed", "int", missing="n/a"),
    Column("power_field", "Power field"),
    Column("power_refresh_ms", "Refresh (ms)", "float", 1, missing="n/a"),
    Column("latency_median_us", "Read p50 (µs)", "float", 1, missing="n/a"),
    Column("latency_p99_us", "Read p99 (µs)", "float", 1, missing="n/a"),
    Column("note", "Note"),
]
_NO_GPU = "No NVML GPU to probe."


def _processes_text(row: dict) -> str | None:
    if row.get("kind") != "gpu" or "processes" not in row:
        return None
    pids = row["processes"]
    if pids is None:
        return f"cannot tell ({row.get('processes_note') or 'not listed'})"
    return "none" if not pids else "pid " + ", ".join(str(p) for p in pids)


def _list_processes(source: Any, row: dict[str, Any]) -> None:
    """Add a GPU's ``processes`` (pids as the host numbers them, or None) and why not, where its
    source can list them (NVML)."""
    from greenmaas.processes import list_processes

    if row["kind"] != "gpu" or not callable(getattr(source, "processes", None)):
        return
    row["processes"], reason = list_processes(source, row["id"])
    if reason is not None:
        row["processes_note"] = reason


def _pair(row: dict, a: str, b: str) -> str:
    if row.get(a) is None:
        return "n/a"
    return f"{row[a]:.2f} / {row[b]:.2f}"


def _tenant_key() -> dict[str, Any]:
    """Where the tenant key comes from, as shown: ``{"source": "env"|"file", "path": ...}``."""
    from greenmaas.ledger.keys import tenant_key_source

    source, path = tenant_key_source()
    return {"source": source, "path": None if path is None else str(path)}


def _tenant_key_line(where: dict[str, Any]) -> str:
    if where["source"] == "env":
        from greenmaas.ledger.keys import ENV_TENANT_KEY

        return f"Tenant key: ${ENV_TENANT_KEY}"
    made = "" if Path(where["path"]).exists() else " (made on first use)"
    return f"Tenant key: file {where['path']}{made}"


def _note_claims(found: list[dict[str, Any]]) -> str:
    """Set each device's ``measured_by``: the meter on this host that holds its claim now
    (:mod:`greenmaas.claims`), as ``pid N, run R``, else None. Returns where claims are kept."""
    import os

    from greenmaas.claims import Claims

    probe = Claims(f"greenmaas devices (pid {os.getpid()})")
    try:
        held = {h.device: h for h in probe.take(found)}
    finally:
        probe.release()
    for d in found:
        h = held.get(d["id"])
        d["measured_by"] = None if h is None else f"pid {h.pid if h.pid is not None else '?'}, run {h.run_id or '?'}"
    return str(probe.directory) + (f" ({probe.problem})" if probe.problem else "")


def _default_detect() -> Any:
    try:
        from greenmaas.sources.detect import detect
    except ImportError as exc:
        raise UserError(f"device detection is not available: {exc}") from exc
    return detect()


def _probe_rows(sources: list, seconds: float, clock: Any) -> list[dict]:
    """Probe every GPU of the NVML sources among ``sources``: one row per device (a GPU seen
    twice, e.g. through two MIG instances, is probed once)."""
    from greenmaas.sources.nvml import NvmlSource
    from greenmaas.sources.probe import probe_gpu

    rows = []
    for source in sources:
        if not isinstance(source, NvmlSource):
            continue
        done: dict[str, Any] = {}
        for d in source.devices():
            handle = source.handle(d.id)
            if handle is None:
                rows.append({"id": d.id, "name": d.name, "power_field": None,
                             "note": "not probed: NVML could not open this GPU"})
                continue
            key = d.uuid or d.id
            if key not in done:
                click.echo(f"Probing {d.id} ({d.name}) for about {1.5 * seconds:g} s…", err=True)
                done[key] = probe_gpu(source.nvml, handle, seconds=seconds, clock=clock)
            rows.append(_probe_row(d, done[key]))
    return rows


def _probe_row(device: Any, result: Any) -> dict:
    """One table row (and JSON object) for a probed device."""
    data = result.as_dict()
    counter = data["counter"] or {}
    read = "counter" if "counter" in data["latency"] else result.power_field
    lat = data["latency"].get(read, {}) if read else {}
    notes = [f"{name}: {text}" for name, text in data["support"].items() if text != "ok"]
    power = result.fields.get(result.power_field) if result.power_field else None
    if power is not None and power.changes == 0:
        notes.append(f"{result.power_field}: value did not change while polled")
    if read and read != "counter":
        notes.append(f"read latency is {read}'s")
    return {
        "id": device.id,
        "name": device.name,
        "counter_period_ms": counter.get("period_ms"),
        "phase_jitter_ms": counter.get("jitter_std_ms"),
        "jitter_max_ms": counter.get("jitter_max_ms"),
        "missed_updates": counter.get("missed_updates"),
        "power_field": data["power_field"] or "none",
        "power_refresh_ms": data["power_refresh_ms"],
        "latency_median_us": lat.get("median_us"),
        "latency_p99_us": lat.get("p99_us"),
        "note": "; ".join(notes) or None,
        "probe": data,
    }


@click.command("devices")
@ledger_option
@format_option(("table", "json"))
@click.option("--probe", is_flag=True,
              help="Also measure each NVML GPU's readings: energy counter update period, phase jitter and "
                   "missed updates, the power field in use and its refresh period, NVML read latency.")
@click.option("--probe-seconds", type=click.FloatRange(min=0, min_open=True), default=2.0, show_default=True,
              help="Seconds of energy counter polling per GPU; the power fields are polled half as long.")
@click.pass_context
def devices(ctx, ledger, fmt, probe, probe_seconds):
    """List the devices greenmaas can measure here, with the method for each, and every
    method it could not use with the reason."""
    obj = ctx.obj or {}
    detect: Callable[[], Any] = obj.get("detect", _default_detect)
    detection = detect()
    probed: list[dict] | None = None
    try:
        found = []
        for source in detection.sources:
            for d in source.devices():
                row = {
                    "id": d.id,
                    "kind": d.kind,
                    "name": d.name,
                    "method": d.method,
                    "power_field": d.power_field,
                    "uuid": d.uuid,
                    "note": d.note,
                }
                _list_processes(source, row)
                found.append(row)
        if probe:
            probed = _probe_rows(detection.sources, probe_seconds, obj.get("clock"))
    finally:
        for source in detection.sources:
            source.close()
    claims_at = _note_claims(found)
    unused = [{"source": u.source, "reason": u.reason} for u in detection.unused]
    key_source = _tenant_key()
    if fmt == "json":
        data: dict[str, Any] = {"devices": found, "unused": unused, "tenant_key": key_source, "claims": claims_at}
        if probed is not None:
            data["probe"] = [{k: r[k] for k in ("id", "name")} | r.get("probe", {"note": r["note"]})
                             for r in probed]
            if not probed:
                click.echo(_NO_GPU, err=True)
        click.echo(json.dumps(data, indent=2))
        return
    if found:
        render(found, DEVICE_COLUMNS, "table", title="Devices", total_label=None)
    else:
        click.echo("No measurable devices found.")
    if unused:
        render(unused, _UNUSED_COLUMNS, "table", total_label=None)
    if probed:
        render(probed, PROBE_COLUMNS, "table", title="NVML readings", total_label=None)
    elif probed is not None:
        click.echo(_NO_GPU)
    click.echo(_tenant_key_line(key_source))
    click.echo(f"Device claims: {claims_at}")
