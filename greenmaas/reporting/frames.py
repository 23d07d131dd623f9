"""Read a ledger into pandas for your own analysis.

>>> from greenmaas.reporting.frames import read_ledger
>>> spans = read_ledger("greenmaas.db")                 # one row per span
>>> spans.groupby("model")["self_energy_j"].sum()       # self energy: sums without double counting

Times come back as timezone-aware UTC pandas timestamps; units are in the column names.

Carbon and cost columns of ``spans`` (``carbon_g``, ``carbon_market_g``, ``cost``, ``currency``)
are as the meter recorded them, with the accounting configured at the time; like ``energy_j``
they cover a span's children too, and ``cost`` there is electricity only. For figures on each
span's own share (which sum without double counting), with hardware time, or priced again with
other settings, use :func:`greenmaas.reporting.summary.priced_spans`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import date, datetime
from typing import TYPE_CHECKING, Iterator

from ..errors import ConfigError

if TYPE_CHECKING:  # pandas is imported where first used: `import greenmaas` stays cheap
    import pandas as pd

    from ..ledger import Ledger

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
    from ..ledger import Ledger

    if isinstance(ledger_or_url, Ledger):
        yield ledger_or_url
        return
    ledger = Ledger.open(ledger_or_url, readonly=True)
    try:
        yield ledger
    finally:
        ledger.close()


def read_ledger(
    path_or_url: Ledger | str | os.PathLike | None = None,
    table: str = "spans",
    *,
    run: str | None = None,
    since: date | datetime | str | None = None,
    until: date | datetime | str | None = None,
    model: str | None = None,
    chunksize: int | None = None,
) -> pd.DataFrame | Iterator[pd.DataFrame]:
    """One ledger table as a DataFrame (or, with ``chunksize``, an iterator of DataFrames of at
    most that many rows, read as they are needed: for ledgers larger than memory).

    ``table`` is ``spans`` (default), ``runs``, ``samples``, ``devices`` (per-device totals:
    consumed, attributed to spans, idle, and ``idle_s``, device time no span used),
    ``span_devices`` (per-span, per-device energy, and ``self_device_s``, the span's own share of
    the device's time) or ``reads`` (every raw device read: ``t_mono`` on the recording process's
    monotonic clock, the counter as read, by run, device and time).

    Filters, done by the database: ``run`` (a run id, or ``latest``: the run that started last),
    ``since``/``until`` (UTC start at or after / before; a date, datetime or ISO 8601 text, a bare
    ``until`` date covering its day; ``reads`` cannot take them: its times are monotonic) and
    ``model`` (``spans`` and ``span_devices`` only). A filter a table cannot take, or a time that
    is not one, raises :class:`~greenmaas.errors.ConfigError`.

    ``uncertainty_j`` (spans, span_devices, devices) is ± J, NaN where none was recorded;
    ``start_mono``/``end_mono`` are span times on the clock of ``reads.t_mono``; ``count`` is how
    many spans a row stands for (a rollup's count; 1, or NA before schema 3).
    In ``runs``, ``heartbeat`` is a run's last sign of life (UTC) and a ``running`` run whose
    process is gone shows ``interrupted`` (:func:`greenmaas.ledger.liveness.run_status`).
    ``path_or_url`` is a path, a SQLAlchemy URL, an open :class:`~greenmaas.ledger.Ledger`, or
    None for ``$GREENMAAS_LEDGER`` / ``./greenmaas.db``. The ledger is opened read-only.
    An empty ledger gives an empty DataFrame with the same columns.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}")
    if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
        raise ConfigError(f"chunksize must be a positive whole number, not {chunksize!r}")
    from ..ledger.models import Base
    from ..period import to_utc

    lo, hi = to_utc(since), to_utc(until, upper=True)
    name, columns = TABLES[table]
    sql_table = Base.metadata.tables[name]
    if chunksize is None:
        with opened(path_or_url) as ledger, ledger.read() as conn:
            rows = conn.execute(_query(conn, ledger, sql_table, columns, run, lo, hi, model)).all()
        return _frame(_statuses(rows, columns) if table == "runs" else rows, sql_table, columns)
    return _chunks(path_or_url, sql_table, columns, run, lo, hi, model, chunksize, table == "runs")


def _query(conn, ledger, sql_table, columns, run, lo, hi, model):
    from ..ledger import query as q

    run_id = run
    if run == "latest":
        run_id = q.latest_run(conn)
        if run_id is None:
            run_id = ""  # no runs: nothing matches
    c = sql_table.c
    if sql_table.name == "samples":
        order = (c.run_id, c.device, c.t)
    elif sql_table.name == "reads":
        order = (c.run_id, c.device, c.t_mono, c.id)
    elif "start" in columns:
        order = (c.start,)
    else:
        order = ()
    try:
        return q.table_rows(sql_table, columns, run_id=run_id, lo=lo, hi=hi, model=model, order=order)
    except ValueError as exc:
        raise ConfigError(f"{ledger.display}: {exc}") from None


def _chunks(path_or_url, sql_table, columns, run, lo, hi, model, size, runs) -> Iterator["pd.DataFrame"]:
    with opened(path_or_url) as ledger, ledger.read() as conn:
        result = conn.execution_options(yield_per=size).execute(
            _query(conn, ledger, sql_table, columns, run, lo, hi, model)
        )
        for part in result.partitions(size):
            yield _frame(_statuses(part, columns) if runs else part, sql_table, columns)


def _statuses(rows, columns):
    from ..ledger.liveness import run_status

    i = columns.index("status")
    return [(*r[:i], run_status(r.status, r.host, r.pid, r.heartbeat), *r[i + 1 :]) for r in rows]


def _frame(rows, sql_table, columns) -> pd.DataFrame:
    import pandas as pd
    from sqlalchemy import Float, Integer

    from ..ledger.models import UTCDateTime

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
