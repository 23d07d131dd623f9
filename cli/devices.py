"""``greenmaas devices``: what can be measured on this machine, how, and what could not."""

from __future__ import annotations

import json
from typing import Any, Callable

import click

from .options import format_option, ledger_option
from .render import Column, render

__all__ = ["devices", "DEVICE_COLUMNS"]

DEVICE_COLUMNS = [
    Column("id", "Device"),
    Column("kind", "Kind"),
    Column("name", "Name"),
    Column("method", "Method"),
    Column("uuid", "UUID"),
    Column("note", "Note"),
]
_UNUSED_COLUMNS = [Column("source", "Not used"), Column("reason", "Why")]


def _default_detect() -> Any:
    try:
        from greenmaas.sources.detect import detect
    except ImportError as exc:
        raise click.ClickException(f"device detection is not available: {exc}") from exc
    return detect()


@click.command("devices")
@ledger_option
@format_option(("table", "json"))
@click.pass_context
def devices(ctx, ledger, fmt):
    """List the devices greenmaas can measure here, with the method for each, and every
    method it could not use with the reason."""
    detect: Callable[[], Any] = (ctx.obj or {}).get("detect", _default_detect)
    detection = detect()
    try:
        found = [
            {
                "id": d.id,
                "kind": d.kind,
                "name": d.name,
                "method": d.method,
                "uuid": d.uuid,
                "note": d.note,
            }
            for source in detection.sources
            for d in source.devices()
        ]
    finally:
        for source in detection.sources:
            source.close()
    unused = [{"source": u.source, "reason": u.reason} for u in detection.unused]
    if fmt == "json":
        click.echo(json.dumps({"devices": found, "unused": unused}, indent=2))
        return
    if found:
        render(found, DEVICE_COLUMNS, "table", title="Devices", total_label=None)
    else:
        click.echo("No measurable devices found.")
    if unused:
        render(unused, _UNUSED_COLUMNS, "table", total_label=None)
