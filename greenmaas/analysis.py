"""Read a ledger into pandas for your own analysis.

>>> from greenmaas.analysis import read_ledger
>>> spans = read_ledger("greenmaas.db")                 # one row per span
>>> spans.groupby("model")["self_energy_j"].sum()       # self energy: sums without double counting

Times come back as timezone-aware UTC pandas timestamps; units are in the column names.

Carbon and cost columns of ``spans`` (``carbon_g``, ``carbon_market_g``, ``cost``, ``currency``)
are as the meter recorded them, with the accounting configured at the time; like ``energy_j``
they cover a span's children too, and ``cost`` there is electricity only. For figures on each
span's own share (which sum without double counting), with hardware time, or priced again with
other settings, use :func:`greenmaas.report.priced_spans`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from .errors import ConfigError

if TYPE_CHECKING:  # pandas is imported where first used: `import greenmaas` stays cheap
    import pandas as pd

    from .ledger import Ledger

__all__ = ["read_ledger", "TABLES"]

#: Table name accepted by :func:`read_ledger` → (ledger table, columns in order).
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "spans": (
        "spans",
        (
            "run_id", "span_id", "parent_id", "kind", "name", "model", "phase", "request_id",
            "tenant", "start", "end", "duration_s", "energy_j", "self_energy_j", "method",
            "weight", "tokens_in", "tokens_out", "items", "status", "carbon_g",
            "carbon_market_g", "cost", "currency", "start_mono", "end_mono", "link_id",
            "uncertainty_j", "count", "attrs",
        ),
    ),
    "runs": (
        "runs",
        (
            "run_id", "host", "pid", "start", "end", "status", "config", "devices", "greenmaas_version",
            "heartbeat",
        ),
    ),
    "samples": ("samples", ("run_id", "device", "t", "energy_j", "power_w", "method")),
    "devices": (
        "device_totals",
        (
            "run_id", "device", "method", "start", "end", "total_j", "attributed_j", "idle_j", "gap_s",
            "idle_s", "uncertainty_j",
        ),
    ),
    "span_devices": (
        "span_devices",
        ("span_id", "device", "energy_j", "self_j", "method", "gap_s", "self_device_s", "uncertainty_j"),
    ),
    "reads": (
        "reads",
        ("run_id", "device", "t_mono", "energy_j", "power_w", "max_energy_j", "error", "t_start_mono"),
    ),
}


@contextmanager
def opened(ledger_or_url: Ledger | str | os.PathLike | None) -> Iterator[Ledger]:
    """A ledger to read from: the one given, or one opened read-only (and closed afterwards)."""
    from .ledger import Ledger

    if isinstance(ledger_or_url, Ledger):
        yield ledger_or_url
        return
    ledger = Ledger.open(ledger_or_url, readonly=True)
    try:
        yield ledger
    finally:
        ledger.close()


def read_ledger(
    path_or_url: Ledger | str | os.PathLike | None = None, table: str = "spans"
) -> pd.DataFrame:
    """One ledger table as a DataFrame.

    ``table`` is ``spans`` (default), ``runs``, ``samples``, ``devices`` (per-device totals:
    consumed, attributed to spans, idle, and ``idle_s``, device time no span used),
    ``span_devices`` (per-span, per-device energy, and ``self_device_s``, the span's own share of
    the device's time) or ``reads`` (every raw device read: ``t_mono`` on the recording process's
    monotonic clock, the counter as read, by run, device and time).
    ``uncertainty_j`` (spans, span_devices, devices) is ± J, NaN where none was recorded;
    ``start_mono``/``end_mono`` are span times on the clock of ``reads.t_mono``.
    In ``runs``, ``heartbeat`` is a run's last sign of life (UTC) and a ``running`` run whose
    process is gone shows ``interrupted`` (:func:`greenmaas.ledger.liveness.run_status`).
    ``path_or_url`` is a path, a SQLAlchemy URL, an open :class:`~greenmaas.ledger.Ledger`, or
    None for ``$GREENMAAS_LEDGER`` / ``./greenmaas.db``. The ledger is opened read-only.
    An empty ledger gives an empty DataFrame with the same columns.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    from sqlalchemy import select

    from .ledger.models import Base

    name, columns = TABLES[table]
    sql_table = Base.metadata.tables[name]
    query = select(*(sql_table.c[c] for c in columns))
    if table == "samples":
        query = query.order_by(sql_table.c.run_id, sql_table.c.device, sql_table.c.t)
    elif table == "reads":
        query = query.order_by(sql_table.c.run_id, sql_table.c.device, sql_table.c.t_mono, sql_table.c.id)
    elif "start" in columns:
        query = query.order_by(sql_table.c.start)
    with opened(path_or_url) as ledger, ledger.read() as conn:
        rows = conn.execute(query).all()
    if table == "runs":
        from .ledger.liveness import run_status

        i = columns.index("status")
        rows = [
            (*r[:i], run_status(r.status, r.host, r.pid, r.heartbeat), *r[i + 1 :]) for r in rows
        ]
    return _frame(rows, sql_table, columns)


def _frame(rows, sql_table, columns) -> pd.DataFrame:
    import pandas as pd
    from sqlalchemy import Float, Integer

    from .ledger.models import UTCDateTime

    df = pd.DataFrame.from_records(rows, columns=list(columns))
    for c in columns:
        col_type = sql_table.c[c].type
        if isinstance(col_type, UTCDateTime):
            df[c] = pd.to_datetime(df[c], utc=True)
        elif isinstance(col_type, Float):
            df[c] = df[c].astype("float64")
        elif isinstance(col_type, Integer):
            df[c] = df[c].astype("Int64")
        else:
            df[c] = df[c].astype(object)
    return df
