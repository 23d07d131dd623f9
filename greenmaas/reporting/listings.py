"""What the ledger holds per device and per run: device totals and the list of runs.

Energy only, as recorded (nothing is priced here; see :mod:`greenmaas.reporting.pricing`). ``greenmaas
runs`` lists :func:`list_runs`; :func:`totals` adds up each device's attribution windows.
"""

from __future__ import annotations

import os
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from .frames import opened
from ..period import to_utc
from .pricing import WINDOW_COLUMNS, as_float, ledger_frame
from ..sources.base import UNMEASURABLE

if TYPE_CHECKING:
    from ..ledger import Ledger

__all__ = ["totals", "list_runs"]


def totals(
    ledger_or_url: Ledger | str | os.PathLike | None = None,
    *,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    run: str | None = None,
) -> list[dict[str, Any]]:
    """What each device of each host consumed: ``{"host", "device", "method", "total_j", "attributed_j", "idle_j",
    "gap_s", "idle_s", "uncertainty_j", "windows"}`` summed over attribution windows (and runs), by
    device.

    ``method`` lists the distinct methods if a device was measured in several ways. Devices that
    could not be measured have None energies (never 0 J). ``idle_s`` is device time no span used.
    ``uncertainty_j`` is the ± J of ``idle_j`` (and so of ``attributed_j``: ``total_j`` is known
    better than its split) as recorded, summed; None where no window recorded one.
    """
    from ..ledger import query

    lo, hi = to_utc(since), to_utc(until, upper=True)
    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        rows = query.device_windows(conn, WINDOW_COLUMNS, lo, hi, run, measured_only=False, host=True)
        windows = ledger_frame(rows, (*WINDOW_COLUMNS, "host"))
    windows["host"] = windows["host"].fillna("")

    out = []
    # By host, then device: gpu:0 of one host is not gpu:0 of another.
    for (host, device), g in windows.groupby(["host", "device"], sort=True):
        measured = g[g["method"] != UNMEASURABLE]
        out.append(
            {
                "host": host or None,
                "device": device,
                "method": ", ".join(sorted(set(g["method"]))),
                "total_j": as_float(measured["total_j"].sum(min_count=1)),
                "attributed_j": as_float(measured["attributed_j"].sum(min_count=1)),
                "idle_j": as_float(measured["idle_j"].sum(min_count=1)),
                "gap_s": float(g["gap_s"].sum()),
                "idle_s": float(g["idle_s"].fillna(0.0).sum()),
                "uncertainty_j": as_float(measured["uncertainty_j"].sum(min_count=1)),
                "windows": int(len(g)),
            }
        )
    return out


def list_runs(ledger_or_url: Ledger | str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per run, oldest first: run_id, host, pid, start, end, status, heartbeat, spans,
    energy_j.

    ``status`` is as recorded, except that a ``running`` run whose process is gone shows
    ``interrupted`` (:func:`greenmaas.ledger.liveness.run_status`); ``heartbeat`` is the run's last
    sign of life (UTC; None for runs recorded before schema 2).

    ``energy_j`` is what the run's devices consumed (the sum of their totals, spans and idle
    alike); for a run without device totals, the sum of its spans' self energy.
    """
    from ..ledger import query
    from ..ledger.liveness import run_status

    with opened(ledger_or_url) as ledger, ledger.read() as conn:
        rows = query.run_stats(conn)
    return [
        {
            "run_id": r.run_id,
            "host": r.host,
            "pid": r.pid,
            "start": r.start,
            "end": r.end,
            "status": run_status(r.status, r.host, r.pid, r.heartbeat),
            "heartbeat": r.heartbeat,
            "spans": int(r.spans or 0),
            "energy_j": as_float(r.total_j if r.total_j is not None else r.span_j),
        }
        for r in rows
    ]
