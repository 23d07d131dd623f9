"""Export a recorded run as the two files ``greenmaas attribute`` re-attributes offline: the raw
device reads it recorded (a trace CSV) and its spans (a spans CSV), on the same monotonic clock.

The trace CSV has one row per raw read, by device then time::

    t,device,energy_j,power_w,max_energy_j,error,t_start,method,power_field

The spans CSV has one row per span, by monotonic start::

    id,start,end,devices,weight,model,request_id,tenant,parent,kind,link,status,name

Times (``t``, ``t_start``, ``start``, ``end``) are the recording process's monotonic seconds and
every number is written with ``repr``, so each float reads back bit for bit: attributing the
export offline sees exactly what the live meter saw. A blank field is a NULL. In the trace,
``t`` is when a read returned and ``t_start`` when it began; ``method`` and ``power_field``
(constant per device) are what the run said of the device when it started, which the offline
timelines need to integrate power as the live ones did. In the spans, ``devices``
(``;``-separated) are the span's devices that the trace holds; a span on none of them is left out
(no energy can be attributed to it). ``tenant`` is the stored pseudonym, ``parent`` and ``link``
span ids.

Both files are written whole or not at all: each goes to a temporary file beside it, renamed into
place once both are complete.
"""

from __future__ import annotations

import csv
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TextIO

from .reporting.frames import opened
from .errors import ConfigError, LedgerError

if TYPE_CHECKING:
    from .ledger import Ledger

__all__ = ["TRACE_COLUMNS", "SPAN_COLUMNS", "Export", "export_run"]

TRACE_COLUMNS = ("t", "device", "energy_j", "power_w", "max_energy_j", "error", "t_start", "method",
                 "power_field")
SPAN_COLUMNS = ("id", "start", "end", "devices", "weight", "model", "request_id", "tenant", "parent",
                "kind", "link", "status", "name")


@dataclass(frozen=True)
class Export:
    """What :func:`export_run` wrote: the run, the files, how many reads (over which devices) and
    spans, and how many spans were left out for being on no device of the trace."""

    run_id: str
    trace: Path
    spans: Path
    reads: int
    devices: tuple[str, ...]
    span_rows: int
    spans_left_out: int = 0
    #: Rollup rows among the spans, and how many spans they stand for: a re-attribution sees
    #: each as one span from its first member's start to its last one's end, so its figures
    #: differ from the run's for those rows (record with ``Meter(rollup=False)`` to replay exactly).
    rollups: tuple[int, int] = (0, 0)


def export_run(
    ledger_or_url: Ledger | str | os.PathLike | None,
    *,
    trace: str | os.PathLike,
    spans: str | os.PathLike,
    run: str = "latest",
) -> Export:
    """Write run ``run`` (an id, or ``latest``: the run that started last) of the ledger as a
    trace CSV and a spans CSV (see the module doc). Returns what was written.

    Raises :class:`LedgerError` (no ledger, not a ledger, no such run, a run with no raw reads:
    recorded before schema 2) and :class:`ConfigError` (an output that cannot be written); on
    any error neither file is written or changed.
    """
    from .ledger import query

    targets = [Path(os.fspath(trace)), Path(os.fspath(spans))]
    if targets[0].absolute() == targets[1].absolute():
        raise ConfigError(f"--trace and --spans are the same file: {targets[0]}")
    for target in targets:
        if target.is_dir():
            raise ConfigError(f"cannot write {target}: is a directory")

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        run_id = query.resolve_run(conn, ledger.display, run)
        if not query.has_reads(conn, run_id):
            raise LedgerError(
                f"{ledger.display}: run {run_id} has no raw reads to export (recorded before ledger "
                "schema 2, or without recording reads)"
            )
        temps: list[Path] = []
        try:
            for target in targets:
                temps.append(_temp_for(target))
            described = {d.get("id"): d for d in query.run_devices(conn, run_id)}
            with _open_temp(temps[0], targets[0]) as f:
                reads, devices = _write_trace(f, query.run_reads(conn, run_id), described)
            with _open_temp(temps[1], targets[1]) as f:
                written, left_out = _write_spans(
                    f, query.run_spans(conn, run_id), query.run_span_devices(conn, run_id), devices,
                    where=f"{ledger.display}: run {run_id}",
                )
            rollups = query.run_rollups(conn, run_id)
            for temp, target in zip(temps, targets):
                _replace(temp, target)
        finally:
            for temp in temps:
                if temp.exists():
                    temp.unlink()
    return Export(run_id, targets[0], targets[1], reads, tuple(sorted(devices)), written, left_out, rollups)


def _number(value: Any) -> str:
    return "" if value is None else repr(float(value))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _write_trace(f, rows, described: dict[Any, dict[str, Any]]) -> tuple[int, set[str]]:
    out = csv.writer(f, lineterminator="\n")
    out.writerow(TRACE_COLUMNS)
    n, devices = 0, set()
    for device, t, energy, power, wrap, error, t_start in rows:
        d = described.get(device) or {}
        out.writerow((
            repr(float(t)), device, _number(energy), _number(power), _number(wrap), _text(error),
            _number(t_start), _text(d.get("method")), _text(d.get("power_field")),
        ))
        devices.add(device)
        n += 1
    return n, devices


def _write_spans(f, rows, span_devices: dict[str, list[str]], traced: set[str], *, where: str) -> tuple[int, int]:
    out = csv.writer(f, lineterminator="\n")
    out.writerow(SPAN_COLUMNS)
    written = left_out = 0
    untimed = []
    for r in rows:
        devices = [d for d in span_devices.get(r.span_id, ()) if d in traced]
        if not devices:
            left_out += 1
            continue
        if r.start_mono is None or r.end_mono is None:
            untimed.append(r.span_id)
            continue
        out.writerow((
            r.span_id, repr(float(r.start_mono)), repr(float(r.end_mono)), ";".join(devices),
            _number(r.weight), _text(r.model), _text(r.request_id), _text(r.tenant), _text(r.parent_id),
            _text(r.kind), _text(r.link_id), _text(r.status), _text(r.name),
        ))
        written += 1
    if untimed:
        shown = ", ".join(untimed[:3]) + (f" and {len(untimed) - 3} more" if len(untimed) > 3 else "")
        raise LedgerError(f"{where}: span(s) {shown} have no monotonic times (recorded before ledger schema 2)")
    return written, left_out


def _temp_for(target: Path) -> Path:
    """An empty temporary file beside ``target`` (same file system: the rename is atomic)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.absolute().parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    return Path(name)


@contextmanager
def _open_temp(temp: Path, target: Path) -> Iterator[TextIO]:
    """``temp`` opened for CSV text; an OSError becomes a ConfigError naming ``target``."""
    try:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            yield f
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _replace(temp: Path, target: Path) -> None:
    try:
        os.replace(temp, target)
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from exc
