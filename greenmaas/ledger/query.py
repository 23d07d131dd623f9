"""Reading the ledger: the queries the reports and exports run, in one place.

Each function takes an open SQLAlchemy ``Connection`` (from :meth:`Ledger.read`) and returns
rows; none writes. Values travel as bound parameters.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from sqlalchemy import Integer, String, and_, case, func, literal, null, or_, select, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .models import (
    DeviceTotal,
    Read,
    Run,
    Sample,
    Span,
    SpanCrossing,
    SpanDevice,
    SpanHour,
    SpanHourDevice,
    SpanNesting,
)

__all__ = [
    "latest_run",
    "run_exists",
    "resolve_run",
    "run_devices",
    "has_reads",
    "run_reads",
    "run_spans",
    "run_rollups",
    "table_rows",
    "run_span_devices",
    "children_uncertainty",
    "ROLLUP_KEYS",
    "group_key",
    "spans_counted",
    "rollup_spans",
    "rollup_crossing",
    "rollup_devices",
    "summaries_apply",
    "NO_REQUEST",
    "request_pages",
    "runs_with_spans",
    "summary_spans",
    "summary_nested",
    "summary_crossing",
    "summary_devices",
    "SERVING_PHASES",
    "serving_iterations",
    "serving_requests",
    "sample_counts",
    "sample_series",
    "top_level_spans",
    "request_energy_stats",
    "request_energy_histogram",
    "phase_runs",
    "runs_described",
    "run_rows",
    "span_conditions",
    "selected_spans",
    "selected_span_devices",
    "device_windows",
    "run_stats",
]


def latest_run(conn) -> str | None:
    """The run that started last (ties: the greatest id), or None in an empty ledger."""
    query = select(Run.run_id).order_by(Run.start.desc(), Run.run_id.desc()).limit(1)
    return conn.execute(query).scalar_one_or_none()


def run_exists(conn, run_id: str) -> bool:
    return conn.execute(select(literal(1)).where(Run.run_id == run_id)).first() is not None


def resolve_run(conn, display: str, run: str) -> str:
    """``run`` as stored: an existing run's id, or for ``latest`` the run that started last.
    Raises :class:`~greenmaas.errors.LedgerError` naming the ledger (``display``) where there is
    no such run."""
    from ..errors import LedgerError

    if run == "latest":
        run_id = latest_run(conn)
        if run_id is None:
            raise LedgerError(f"{display}: no runs in the ledger yet, so no latest run")
        return run_id
    if not run_exists(conn, run):
        raise LedgerError(f"{display}: no run {run!r} (see `greenmaas runs`)")
    return run


def run_devices(conn, run_id: str) -> list[dict[str, Any]]:
    """The devices the run described when it started (id, kind, name, method, power_field, ...)."""
    devices = conn.execute(select(Run.devices).where(Run.run_id == run_id)).scalar_one_or_none()
    return [d for d in devices or [] if isinstance(d, dict)]


def has_reads(conn, run_id: str) -> bool:
    """Whether the run recorded any raw read (runs recorded before schema 2 have none)."""
    return conn.execute(select(literal(1)).where(Read.run_id == run_id).limit(1)).first() is not None


def run_reads(conn, run_id: str) -> Iterable[Any]:
    """The run's raw reads, by device then time (then order of writing): rows of ``device,
    t_mono, energy_j, power_w, max_energy_j, error, t_start_mono``. Streamed: a run may hold
    millions."""
    query = (
        select(Read.device, Read.t_mono, Read.energy_j, Read.power_w, Read.max_energy_j, Read.error,
               Read.t_start_mono)
        .where(Read.run_id == run_id)
        .order_by(Read.device, Read.t_mono, Read.id)
    )
    return conn.execution_options(yield_per=10_000).execute(query)


#: The UTC time column each ``read_ledger`` table is filtered by (``since``/``until``); tables
#: without one take their spans' (``span_devices``) or none (``reads``: monotonic times only).
_TIME_COLUMN = {"spans": "start", "runs": "start", "samples": "t", "device_totals": "start"}


def table_rows(table, columns, *, run_id=None, lo=None, hi=None, model=None, order=()):
    """``select`` of ``columns`` of ``table`` (a ledger ``Table``) with the filters of
    :func:`greenmaas.reporting.frames.read_ledger`: run, UTC start in ``[lo, hi)``, model. Raises
    :class:`ValueError` naming a filter that the table cannot take."""
    name = table.name
    query = select(*(table.c[c] for c in columns))
    spans = Span.__table__
    via_spans = name == "span_devices" and (lo is not None or hi is not None or model is not None or run_id is not None)
    if via_spans:
        query = query.join(spans, spans.c.span_id == table.c.span_id)
    if run_id is not None:
        query = query.where((spans.c.run_id if name == "span_devices" else table.c.run_id) == run_id)
    if lo is not None or hi is not None:
        if name == "span_devices":
            when = spans.c.start
        elif name in _TIME_COLUMN:
            when = table.c[_TIME_COLUMN[name]]
        else:
            raise ValueError(f"since/until: the {name} table holds monotonic times only; filter it by run")
        if lo is not None:
            query = query.where(when >= lo)
        if hi is not None:
            query = query.where(when < hi)
    if model is not None:
        if name == "spans":
            query = query.where(table.c.model == model)
        elif name == "span_devices":
            query = query.where(spans.c.model == model)
        else:
            raise ValueError(f"model: the {name} table has no model; filter spans or span_devices")
    return query.order_by(*order) if order else query


def run_rollups(conn, run_id: str) -> tuple[int, int]:
    """The run's rollup rows (``count`` above 1) and how many spans they stand for."""
    rows, spans = conn.execute(
        select(func.count(), func.coalesce(func.sum(Span.count), 0)).where(Span.run_id == run_id, Span.count > 1)
    ).one()
    return int(rows), int(spans)


def run_spans(conn, run_id: str) -> list[Any]:
    """The run's spans, by monotonic start, end and id: rows of ``span_id, start_mono, end_mono,
    weight, model, request_id, tenant, parent_id, kind, link_id, status, name``."""
    query = (
        select(
            Span.span_id, Span.start_mono, Span.end_mono, Span.weight, Span.model, Span.request_id,
            Span.tenant, Span.parent_id, Span.kind, Span.link_id, Span.status, Span.name,
        )
        .where(Span.run_id == run_id)
        .order_by(Span.start_mono, Span.end_mono, Span.span_id)
    )
    return conn.execute(query).all()


def run_span_devices(conn, run_id: str) -> dict[str, list[str]]:
    """The devices of each of the run's spans (span id → device ids, sorted)."""
    query = (
        select(SpanDevice.span_id, SpanDevice.device)
        .join(Span, Span.span_id == SpanDevice.span_id)
        .where(Span.run_id == run_id)
        .order_by(SpanDevice.span_id, SpanDevice.device)
    )
    out: dict[str, list[str]] = {}
    for span_id, device in conn.execute(query):
        out.setdefault(span_id, []).append(device)
    return out


def children_uncertainty(conn, *conditions) -> dict[str, float]:
    """For each span meeting ``conditions`` (on :class:`~greenmaas.ledger.models.Span`) that has
    children with a recorded ``uncertainty_j``: the sum of theirs.

    A span's children are the spans under it (``parent_id``) and, for a request, the batch
    shares linked to it (``link_id``): the spans whose inclusive figures its inclusive figures
    add up, so that its own ± J is its ``uncertainty_j`` less this sum.
    """
    parent = Span.__table__.alias("p")
    child = Span.__table__.alias("c")
    per_relation = [
        select(parent.c.span_id.label("span_id"), child.c.uncertainty_j.label("u"))
        .select_from(parent.join(child, on))
        .where(child.c.uncertainty_j.is_not(None), *(_on(parent, c) for c in conditions))
        for on in (child.c.parent_id == parent.c.span_id, child.c.link_id == parent.c.span_id)
    ]
    both = union_all(*per_relation).subquery()
    query = select(both.c.span_id, func.sum(both.c.u)).group_by(both.c.span_id)
    return {span_id: float(u) for span_id, u in conn.execute(query)}


def _on(alias, condition):
    """``condition`` (on the ``spans`` table) applied to ``alias`` of it instead."""
    from sqlalchemy.sql.util import ClauseAdapter

    return ClauseAdapter(alias).traverse(condition)


# ------------------------------------------------------------------------------ report roll-ups
#
# Reports group, filter and sum where the data is: each query below returns a few rows per group
# (per run, method and hour), however many spans there are. ``greenmaas.reporting.rollup`` turns them into
# report rows and prices each hour's energy (see its module doc for why that equals pricing span
# by span).

#: What a report can group spans by, as SQL (``day`` is the UTC date of the span's start).
ROLLUP_KEYS = ("model", "phase", "run", "day", "tenant", "name", "request")
_KEY_COLUMNS = {"model": "model", "phase": "phase", "run": "run_id", "tenant": "tenant", "name": "name",
                "request": "request_id"}


class utc_text(FunctionElement):
    """The first ``width`` characters (10: date, 13: to the hour) of a UTC time as text,
    ``YYYY-MM-DD HH``: SQLite stores times as naive UTC text; PostgreSQL formats them."""

    type = String()
    inherit_cache = True

    def __init__(self, column, width: int):
        self.width = width
        super().__init__(column)


@compiles(utc_text)
def _utc_text_default(element, compiler, **kw):
    (column,) = element.clauses
    return f"substr({compiler.process(column, **kw)}, 1, {int(element.width)})"


@compiles(utc_text, "postgresql")
def _utc_text_postgresql(element, compiler, **kw):
    (column,) = element.clauses
    fmt = "YYYY-MM-DD" if element.width == 10 else "YYYY-MM-DD HH24"
    return f"to_char({compiler.process(column, **kw)} AT TIME ZONE 'UTC', '{fmt}')"


#: Batch shares a serving engine names after the work they paid for (:mod:`greenmaas.serving`):
#: by phase, each is a group of its own.
SERVING_PHASES = ("prefill", "decode")


def spans_counted(table):
    """How many spans the rows stand for: a rollup row counts its ``count`` (NULL, in rows
    stored before schema 3, counts 1)."""
    return func.coalesce(func.sum(func.coalesce(table.c.count, 1)), 0)


def group_key(table, by: str, none: str, prefix: str = ""):
    """The report group of each row of ``table`` (the ``spans`` table or an alias, or a summary
    table, whose span values may carry a ``prefix``): its value for ``by``, or ``none`` where it
    has none (NULL or empty). By phase, serving shares named ``prefill`` or ``decode`` are groups
    of their own."""
    columns = table.c
    if by == "day":
        if f"{prefix}hour" in columns:  # a summary: the UTC hour as text
            return func.substr(columns[f"{prefix}hour"], 1, 10)
        return utc_text(columns.start, 10)
    column = columns.run_id if by == "run" else columns[prefix + _KEY_COLUMNS[by]]
    present = (and_(column.is_not(None), column != ""), column)
    if by == "phase":
        kind, name = columns[f"{prefix}kind"], columns[f"{prefix}name"]
        serving = (and_(kind == "share", name.in_(SERVING_PHASES)), name)
        return case(serving, present, else_=literal(none))
    return case(present, else_=literal(none))


def _hour(table):
    """The UTC hour a span lies in, as ``YYYY-MM-DD HH``; NULL where it crosses into another."""
    start, end = utc_text(table.c.start, 13), utc_text(table.c.end, 13)
    return case((start == end, start), else_=null())


def own_uncertainty(s):
    """A span's own recorded ± J: its ``uncertainty_j`` less its children's (under it, or batch
    shares linked to it), never below 0; NULL where none was recorded."""
    c = Span.__table__.alias("cu")
    children = [
        select(func.coalesce(func.sum(c.c.uncertainty_j), 0.0)).where(on == s.c.span_id).scalar_subquery()
        for on in (c.c.parent_id, c.c.link_id)
    ]
    own = s.c.uncertainty_j - children[0] - children[1]
    return case((s.c.uncertainty_j.is_(None), null()), (own < 0.0, 0.0), else_=own)


#: ``requests=`` of the span selections below: the spans of no request (the ``(none)`` group).
NO_REQUEST = "(no request)"


def _selection(s, lo, hi, model, run=None, requests=None):
    """Conditions selecting spans of ``s`` starting in ``[lo, hi)``, of ``model`` and ``run``,
    and of request ids in ``requests`` (an inclusive range ``(first, last)``, or
    :data:`NO_REQUEST`), each where given."""
    conditions = [] if run is None else [s.c.run_id == run]
    if requests is not None:
        column = s.c.request_id
        if requests == NO_REQUEST:
            conditions.append(or_(column.is_(None), column == ""))
        else:
            conditions += [column >= requests[0], column <= requests[1]]
    if lo is not None:
        conditions.append(s.c.start >= lo)
    if hi is not None:
        conditions.append(s.c.start < hi)
    if model is not None:
        conditions.append(s.c.model == model)
    return conditions


def rollup_spans(conn, by: str, none: str, lo=None, hi=None, model=None, run=None, requests=None,
                 bounds: bool = True) -> Any:
    """Spans starting in ``[lo, hi)`` (of ``model``), summed per group, run, method and hour.

    Rows of ``group, run_id, method, hour, spans, duration_s, energy_j, energy_n, own_u, own_u_n,
    first, last``: ``hour`` the UTC hour (``YYYY-MM-DD HH``) holding the spans whole, NULL for
    those that cross an hour (see :func:`rollup_crossing`); ``duration_s`` only of spans whose
    parent is not selected in the same group; ``energy_j`` the sum of ``self_energy_j`` (NULL if
    none was measured), ``energy_n`` how many were; ``own_u`` each span's own recorded ± J summed,
    ``own_u_n`` how many recorded one; ``first``/``last`` the earliest start and latest end.
    Ordered by group.
    """
    s = Span.__table__.alias("s")
    p = Span.__table__.alias("p")
    conditions = _selection(s, lo, hi, model, run, requests)
    g, hour, own_u = group_key(s, by, none), _hour(s), own_uncertainty(s)
    parent_selected = and_(p.c.span_id == s.c.parent_id, *_selection(p, lo, hi, model, run, requests))
    top = case((and_(p.c.span_id.is_not(None), group_key(p, by, none) == g), 0.0), else_=s.c.duration_s)
    query = (
        select(
            g.label("grp"), s.c.run_id, s.c.method, hour.label("hour"), spans_counted(s).label("spans"),
            func.sum(top).label("duration_s"), func.sum(s.c.self_energy_j).label("energy_j"),
            func.count(s.c.self_energy_j).label("energy_n"), func.sum(own_u).label("own_u"),
            func.count(s.c.uncertainty_j).label("own_u_n"),
            (func.min(s.c.start) if bounds else null()).label("first"),
            (func.max(s.c.end) if bounds else null()).label("last"),
        )
        .select_from(s.outerjoin(p, parent_selected))
        .where(*conditions)
        .group_by(g, s.c.run_id, s.c.method, hour)
        .order_by(g)
    )
    return conn.execute(query).all()


def rollup_crossing(conn, by: str, none: str, lo=None, hi=None, model=None, run=None, requests=None,
                    bounds=True) -> list[Any]:
    """The selected spans that cross an hour, which are priced one by one: rows of ``group,
    run_id, start, end, energy_j`` (``self_energy_j``)."""
    s = Span.__table__.alias("s")
    conditions = _selection(s, lo, hi, model, run, requests)
    query = select(group_key(s, by, none), s.c.run_id, s.c.start, s.c.end, s.c.self_energy_j).where(
        *conditions, utc_text(s.c.start, 13) != utc_text(s.c.end, 13)
    )
    return conn.execute(query).all()


def rollup_devices(conn, by: str, none: str, lo=None, hi=None, model=None, run=None, requests=None,
                   bounds=True) -> Any:
    """The selected spans' devices, summed per group, run, device, the device's method, the
    span's method and whether the span's energy and ± J were recorded.

    Rows of ``group, run_id, device, method, span_method, measured, recorded, rows, device_s,
    stated_j, stated_n``: ``device_s`` the spans' own device time, ``stated_j`` their own energy
    on the device where the span recorded no ± J (``stated_n`` how many such rows had one), for
    the method's stated uncertainty.
    """
    s = Span.__table__.alias("s")
    d = SpanDevice.__table__
    conditions = _selection(s, lo, hi, model, run, requests)
    g = group_key(s, by, none)
    measured = case((s.c.self_energy_j.is_(None), 0), else_=1)
    recorded = case((s.c.uncertainty_j.is_(None), 0), else_=1)
    stated = case((s.c.uncertainty_j.is_(None), d.c.self_j), else_=null())
    query = (
        select(
            g.label("grp"), s.c.run_id, d.c.device, d.c.method, s.c.method.label("span_method"),
            measured.label("measured"), recorded.label("recorded"), func.count().label("rows"),
            func.sum(func.coalesce(d.c.self_device_s, 0.0)).label("device_s"),
            func.sum(stated).label("stated_j"), func.count(stated).label("stated_n"),
        )
        .select_from(d.join(s, s.c.span_id == d.c.span_id))
        .where(*conditions)
        .group_by(g, s.c.run_id, d.c.device, d.c.method, s.c.method, measured, recorded)
    )
    return conn.execute(query).all()


def runs_with_spans(conn, lo=None, hi=None, model=None, run=None) -> list[str]:
    """The runs that have selected spans."""
    s = Span.__table__
    query = select(s.c.run_id).where(*_selection(s, lo, hi, model, run)).group_by(s.c.run_id)
    return list(conn.execute(query).scalars())


def request_pages(conn, size: int, lo=None, hi=None, model=None, run=None) -> Iterable[tuple[str, str]]:
    """The request ids of the selected spans in order, ``size`` at a time: ``(first, last)`` of
    each page (read through the request id index, a page at a time)."""
    s = Span.__table__
    last = None
    while True:
        query = select(s.c.request_id).where(*_selection(s, lo, hi, model, run), s.c.request_id != "")
        if last is not None:
            query = query.where(s.c.request_id > last)
        ids = conn.execute(query.group_by(s.c.request_id).order_by(s.c.request_id).limit(size)).scalars().all()
        if not ids:
            return
        yield ids[0], ids[-1]
        last = ids[-1]


# ------------------------------------------------------------------------------ from the summaries
#
# The same rows as the three roll-ups above, read from the span summaries the ledger keeps as it
# writes spans (greenmaas.ledger.summary): a few rows per run, hour and group, however many spans.
# They select spans by the hour they start in, so a time filter must fall on whole UTC hours.


def summaries_apply(lo, hi) -> bool:
    """Whether a selection from ``lo`` to ``hi`` (UTC, None: open) can be read from the
    summaries: both fall on whole UTC hours."""
    return all(t is None or (t.minute == 0 and t.second == 0 and t.microsecond == 0) for t in (lo, hi))


def _summary_selection(table, lo, hi, model, prefix: str = "", run=None) -> list:
    from .summary import hour_of

    hour = table.c[f"{prefix}hour"]
    conditions = [] if run is None else [table.c.run_id == run]
    if lo is not None:
        conditions.append(hour >= hour_of(lo))
    if hi is not None:
        conditions.append(hour < hour_of(hi))
    if model is not None:
        conditions.append(table.c[f"{prefix}model"] == model)
    return conditions


def summary_spans(conn, by: str, none: str, lo=None, hi=None, model=None, run=None) -> list[Any]:
    """:func:`rollup_spans` from the summaries, except ``duration_s``, which sums every span's
    time (:func:`summary_nested` gives what to take off). Crossing spans' energy comes in rows
    of their own (``hour`` NULL, ``spans`` 0)."""
    h = SpanHour.__table__
    g = group_key(h, by, none)
    conditions = _summary_selection(h, lo, hi, model, run=run)
    within = (
        select(
            g.label("grp"), h.c.run_id, h.c.method, h.c.hour.label("hour"), func.sum(h.c.spans).label("spans"),
            func.sum(h.c.duration_s).label("duration_s"), func.sum(h.c.hour_j).label("energy_j"),
            func.sum(h.c.hour_n).label("energy_n"), func.sum(h.c.own_u).label("own_u"),
            func.sum(h.c.own_u_n).label("own_u_n"), func.min(h.c.first).label("first"),
            func.max(h.c.last).label("last"),
        )
        .where(*conditions)
        .group_by(g, h.c.run_id, h.c.method, h.c.hour)
    )
    across = (
        select(
            g.label("grp"), h.c.run_id, h.c.method, null().label("hour"), literal(0).label("spans"),
            literal(0.0).label("duration_s"), func.sum(h.c.cross_j).label("energy_j"),
            func.sum(h.c.cross_n).label("energy_n"), literal(0.0).label("own_u"), literal(0).label("own_u_n"),
            func.min(h.c.first).label("first"), func.max(h.c.last).label("last"),
        )
        .where(*conditions, h.c.cross_n > 0)
        .group_by(g, h.c.run_id, h.c.method)
    )
    return conn.execute(within).all() + conn.execute(across).all()


def summary_nested(conn, by: str, none: str, lo=None, hi=None, model=None, run=None) -> list[Any]:
    """Time of the selected spans whose parent is selected too and in the same group, which the
    group's time does not count again: rows of ``group, run_id, duration_s``."""
    n = SpanNesting.__table__
    child, parent = group_key(n, by, none, "c_"), group_key(n, by, none, "p_")
    query = (
        select(child.label("grp"), n.c.run_id, func.sum(n.c.duration_s))
        .where(*_summary_selection(n, lo, hi, model, "c_", run), *_summary_selection(n, lo, hi, model, "p_"),
               child == parent)
        .group_by(child, n.c.run_id)
    )
    return conn.execute(query).all()


def summary_crossing(conn, by: str, none: str, lo=None, hi=None, model=None, run=None) -> list[Any]:
    """:func:`rollup_crossing` from the summaries."""
    c = SpanCrossing.__table__
    query = select(group_key(c, by, none), c.c.run_id, c.c.start, c.c.end, c.c.energy_j).where(
        *_summary_selection(c, lo, hi, model, run=run)
    )
    return conn.execute(query).all()


def summary_devices(conn, by: str, none: str, lo=None, hi=None, model=None, run=None) -> list[Any]:
    """:func:`rollup_devices` from the summaries."""
    d = SpanHourDevice.__table__
    g = group_key(d, by, none)
    grouping = (g, d.c.run_id, d.c.device, d.c.device_method, d.c.method, d.c.measured, d.c.recorded)
    query = (
        select(
            g.label("grp"), d.c.run_id, d.c.device, d.c.device_method.label("method"),
            d.c.method.label("span_method"), d.c.measured, d.c.recorded, func.sum(d.c.rows).label("rows"),
            func.sum(d.c.device_s).label("device_s"), func.sum(d.c.stated_j).label("stated_j"),
            func.sum(d.c.stated_n).label("stated_n"),
        )
        .where(*_summary_selection(d, lo, hi, model, run=run))
        .group_by(*grouping)
    )
    return conn.execute(query).all()


# ------------------------------------------------------------------------------ serving


def serving_iterations(conn, name: str, run_id: str | None = None, model: str | None = None) -> list[Any]:
    """A serving engine's iterations: batch spans named ``name`` (of ``run_id`` and ``model``
    where given), by start: rows of ``energy_j, attrs``."""
    conditions = [Span.kind == "batch", Span.name == name]
    if run_id is not None:
        conditions.append(Span.run_id == run_id)
    if model is not None:
        conditions.append(Span.model == model)
    query = select(Span.energy_j, Span.attrs).where(*conditions).order_by(Span.start_mono, Span.span_id)
    return conn.execute(query).all()


def serving_requests(conn, lo=None, hi=None, model=None, run=None, requests=None) -> list[Any]:
    """Per request and run, what serving recorded for it (:mod:`greenmaas.serving`), from the
    selected spans: rows of ``request_id, run_id, prompt_tokens, output_tokens, prefill_j,
    decode_j, start_mono, first_token_mono``. Prompt and output tokens are the request span's;
    prefill and decode joules sum its shares named so; ``first_token_mono`` is the end of its last
    prefill share (monotonic s of the run, as is ``start_mono``, the request span's start)."""
    s = Span.__table__.alias("s")
    conditions = _selection(s, lo, hi, model, run, requests)
    is_request = s.c.kind == "request"
    is_share = s.c.kind == "share"

    def share_of(phase: str, column):
        return case((and_(is_share, s.c.name == phase), column), else_=null())

    query = (
        select(
            s.c.request_id, s.c.run_id,
            func.max(case((is_request, s.c.tokens_in), else_=null())).label("prompt_tokens"),
            func.max(case((is_request, s.c.tokens_out), else_=null())).label("output_tokens"),
            func.sum(share_of("prefill", s.c.self_energy_j)).label("prefill_j"),
            func.sum(share_of("decode", s.c.self_energy_j)).label("decode_j"),
            func.min(case((is_request, s.c.start_mono), else_=null())).label("start_mono"),
            func.max(share_of("prefill", s.c.end_mono)).label("first_token_mono"),
        )
        .where(*conditions, s.c.request_id.is_not(None), s.c.request_id != "")
        .group_by(s.c.request_id, s.c.run_id)
    )
    return conn.execute(query).all()


# ------------------------------------------------------------------------------ report plots
#
# What the HTML report draws, read so that its cost does not grow with the ledger: power series
# thinned in SQL to a bounded number of points per device, the longest spans only, and the
# per-request energy distribution binned in SQL.


def _sample_selection(lo, hi, run_ids):
    conditions = []
    if lo is not None:
        conditions.append(Sample.t >= lo)
    if hi is not None:
        conditions.append(Sample.t < hi)
    if run_ids is not None:
        conditions.append(Sample.run_id.in_(list(run_ids)))
    return conditions


def sample_counts(conn, lo=None, hi=None, run_ids=None) -> list[Any]:
    """How many samples each run and device holds in ``[lo, hi)`` (of ``run_ids`` where given):
    rows of ``run_id, device, method, points, first, last``, by run and device."""
    query = (
        select(Sample.run_id, Sample.device, func.min(Sample.method), func.count(), func.min(Sample.t),
               func.max(Sample.t))
        .where(*_sample_selection(lo, hi, run_ids))
        .group_by(Sample.run_id, Sample.device)
        .order_by(Sample.run_id, Sample.device)
    )
    return conn.execute(query).all()


class _time_bucket(FunctionElement):
    """Which of the ``width``-second buckets counted from ``origin`` (POSIX s) a UTC time falls
    in, as an integer: SQLite keeps times as text (julianday), PostgreSQL as timestamps."""

    type = Integer()
    inherit_cache = True


@compiles(_time_bucket)
def _time_bucket_default(element, compiler, **kw):
    column, origin, width = (compiler.process(c, **kw) for c in element.clauses)
    # Times are at or after the origin, so truncation is the floor.
    return f"CAST(((julianday({column}) - 2440587.5) * 86400.0 - {origin}) / {width} AS INTEGER)"


@compiles(_time_bucket, "postgresql")
def _time_bucket_postgresql(element, compiler, **kw):
    column, origin, width = (compiler.process(c, **kw) for c in element.clauses)
    return f"CAST(floor((extract(epoch from {column}) - {origin}) / {width}) AS INTEGER)"


def sample_series(conn, max_points: int, lo=None, hi=None, run_ids=None, counts=None) -> list[Any]:
    """Each run's and device's samples in ``[lo, hi)``, thinned in the database to at most about
    ``max_points`` per series: the series' time is cut into ``max_points // 2`` equal buckets and
    the first and last sample of each is kept (a series with fewer samples is read whole).

    Rows of ``run_id, device, t, energy_j, power_w``, by run, device and time. The samples'
    ``energy_j`` is cumulative, so the mean power between two kept points (ΔE / Δt) is exact over
    that interval however many points were skipped. ``counts``: what :func:`sample_counts` gave
    for the same selection, when the caller has it already.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    buckets = max_points // 2
    out: list[Any] = []
    if counts is None:
        counts = sample_counts(conn, lo, hi, run_ids)
    for run_id, device, _method, n, first, last in counts:
        where = [Sample.run_id == run_id, Sample.device == device, *_sample_selection(lo, hi, None)]
        columns = (Sample.run_id, Sample.device, Sample.t, Sample.energy_j, Sample.power_w)
        if n <= max_points or first is None or last is None or last <= first:
            query = select(*columns).where(*where).order_by(Sample.t, Sample.id)
            out += conn.execute(query).all()
            continue
        origin = first.timestamp()
        width = (last.timestamp() - origin) / buckets * (1 + 1e-9)
        bucket = _time_bucket(Sample.t, literal(origin), literal(width))
        edges = select(func.min(Sample.t), func.max(Sample.t)).where(*where).group_by(bucket)
        times = sorted({t for pair in conn.execute(edges) for t in pair})
        query = (
            select(*columns)
            .where(Sample.run_id == run_id, Sample.device == device, Sample.t.in_(times))
            .order_by(Sample.t, Sample.id)
        )
        rows = conn.execute(query).all()
        out += [r for i, r in enumerate(rows) if i == 0 or r[2] != rows[i - 1][2]]
    return out


def top_level_spans(conn, by: str, none: str, limit: int, lo=None, hi=None, model=None) -> tuple[int, list[Any]]:
    """The ``limit`` longest selected spans with no parent (NULL or empty), on each of their
    devices; and how many selected spans have no parent in all.

    Rows of ``span_id, run_id, device, start, end, grp`` (``grp`` the span's report group for
    ``by``, as :func:`group_key`), longest first. The spans are chosen in the ``spans`` table
    alone; only the chosen ones are joined to their devices.
    """
    s = Span.__table__.alias("s")
    d = SpanDevice.__table__
    # Read as a scan of the table: through the parent index, SQLite would visit most rows out of
    # order (ten times slower on a million spans).
    conditions = [*_selection(s, lo, hi, model), func.coalesce(s.c.parent_id, "") == ""]
    total = conn.execute(select(func.count()).select_from(s).where(*conditions)).scalar_one()
    longest = (
        select(s.c.span_id, s.c.run_id, s.c.start, s.c.end, s.c.duration_s, group_key(s, by, none).label("grp"))
        .where(*conditions)
        .order_by(s.c.duration_s.desc(), s.c.span_id)
        .limit(limit)
        .subquery()
    )
    query = (
        select(longest.c.span_id, longest.c.run_id, d.c.device, longest.c.start, longest.c.end, longest.c.grp)
        .select_from(longest.join(d, d.c.span_id == longest.c.span_id))
        .order_by(longest.c.duration_s.desc(), longest.c.span_id, d.c.device)
    )
    return int(total or 0), conn.execute(query).all()


def _request_energy(lo, hi, model):
    """Per request id of the selected spans: the sum of their own energy (``energy_j``), as a
    report by request counts it; requests none of whose spans was measured are left out."""
    s = Span.__table__.alias("s")
    return (
        select(s.c.request_id, func.sum(s.c.self_energy_j).label("energy_j"))
        .where(*_selection(s, lo, hi, model), s.c.request_id.is_not(None), s.c.request_id != "",
               s.c.self_energy_j.is_not(None))
        .group_by(s.c.request_id)
        .subquery()
    )


def request_energy_stats(conn, lo=None, hi=None, model=None) -> Any:
    """Count, sum, minimum and maximum of the energy per request (J), and how many requests
    have a positive figure and their minimum: a row of ``requests, energy_j, min_j, max_j,
    positive, min_positive_j``."""
    r = _request_energy(lo, hi, model)
    positive = case((r.c.energy_j > 0, r.c.energy_j), else_=null())
    query = select(
        func.count().label("requests"), func.sum(r.c.energy_j).label("energy_j"),
        func.min(r.c.energy_j).label("min_j"), func.max(r.c.energy_j).label("max_j"),
        func.count(positive).label("positive"), func.min(positive).label("min_positive_j"),
    )
    return conn.execute(query).one()


def request_energy_histogram(conn, edges, lo=None, hi=None, model=None) -> list[Any]:
    """How many requests' energy falls in each bin ``[edges[i], edges[i+1])`` (the last bin
    includes its upper edge), counted in the database: rows of ``bin, requests, energy_j``
    (``bin`` -1 below the first edge, ``len(edges) - 1`` above the last), by bin."""
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError("edges must be at least two increasing numbers")
    r = _request_energy(lo, hi, model)
    whens = [(r.c.energy_j < edges[0], literal(-1))]
    whens += [(r.c.energy_j < e, literal(i)) for i, e in enumerate(edges[1:-1])]
    whens.append((r.c.energy_j <= edges[-1], literal(len(edges) - 2)))
    bin_ = case(*whens, else_=literal(len(edges) - 1)).label("bin")
    query = select(bin_, func.count().label("requests"), func.sum(r.c.energy_j).label("energy_j")).group_by(
        bin_).order_by(bin_)
    return conn.execute(query).all()


def phase_runs(conn, lo=None, hi=None, model=None) -> list[Any]:
    """Per phase (as a report by phase groups them, :func:`group_key`) and run, of the selected
    spans: rows of ``phase, run_id, spans, first, last, requests, tokens_in, tokens_out, items``.

    ``first``/``last`` are the earliest start and latest end (UTC); ``requests`` the distinct
    request ids; ``tokens_in``/``tokens_out`` summed over request spans (``kind = 'request'``, where
    serving records them); ``items`` summed over top-level spans.
    """
    s = Span.__table__.alias("s")
    g = group_key(s, "phase", "(none)")
    is_request = s.c.kind == "request"
    query = (
        select(
            g.label("phase"), s.c.run_id, spans_counted(s).label("spans"), func.min(s.c.start).label("first"),
            func.max(s.c.end).label("last"), func.count(func.distinct(s.c.request_id)).label("requests"),
            func.sum(case((is_request, s.c.tokens_in), else_=null())).label("tokens_in"),
            func.sum(case((is_request, s.c.tokens_out), else_=null())).label("tokens_out"),
            func.sum(case((s.c.parent_id.is_(None), s.c["items"]), else_=null())).label("items"),
        )
        .where(*_selection(s, lo, hi, model))
        .group_by(g, s.c.run_id)
        .order_by(g, s.c.run_id)
    )
    return conn.execute(query).all()


def runs_described(conn, run_ids) -> list[Any]:
    """The given runs as they described themselves: rows of ``run_id, host, start, end, status,
    greenmaas_version, devices`` (the device list recorded at start), by start."""
    query = (
        select(Run.run_id, Run.host, Run.start, Run.end, Run.status, Run.greenmaas_version, Run.devices)
        .where(Run.run_id.in_(list(run_ids)))
        .order_by(Run.start, Run.run_id)
    )
    return conn.execute(query).all()


# ------------------------------------------------------------------------------ selections and runs
#
# What the span-by-span report path (greenmaas.reporting.pricing), the run and device listings
# (greenmaas.reporting.listings) and the DataFrames read.


def run_rows(conn) -> list[Any]:
    """Every run: rows of ``run_id, config, devices, start, end, status, host, pid, heartbeat``."""
    query = select(Run.run_id, Run.config, Run.devices, Run.start, Run.end, Run.status, Run.host, Run.pid,
                   Run.heartbeat)
    return conn.execute(query).all()


def span_conditions(lo=None, hi=None, model=None, run=None) -> list:
    """Conditions on :class:`~greenmaas.ledger.models.Span` selecting spans of ``run`` and
    ``model`` starting in ``[lo, hi)``, each where given."""
    return _selection(Span.__table__, lo, hi, model, run)


def selected_spans(conn, columns: Sequence[str], conditions: Sequence) -> list[Any]:
    """``columns`` of the spans meeting ``conditions`` (:func:`span_conditions`)."""
    return conn.execute(select(*(Span.__table__.c[c] for c in columns)).where(*conditions)).all()


def selected_span_devices(conn, columns: Sequence[str], conditions: Sequence) -> list[Any]:
    """``columns`` of the span devices of the spans meeting ``conditions``."""
    d = SpanDevice.__table__
    query = select(*(d.c[c] for c in columns)).join(Span, Span.span_id == d.c.span_id).where(*conditions)
    return conn.execute(query).all()


def device_windows(conn, columns: Sequence[str], lo=None, hi=None, run=None, *, measured_only: bool = True,
                   host: bool = False) -> list[Any]:
    """``columns`` of the device-total windows starting in ``[lo, hi)`` (a window without a start
    takes its run's), of ``run`` where given, of measured devices only unless ``measured_only``
    is false; with ``host``, the run's host last."""
    t = DeviceTotal.__table__
    when = func.coalesce(t.c.start, Run.start)
    query = select(*(t.c[c] for c in columns), *([Run.host] if host else [])).join(Run, Run.run_id == t.c.run_id)
    if measured_only:
        from ..sources.base import UNMEASURABLE

        query = query.where(t.c.method != UNMEASURABLE)
    if run is not None:
        query = query.where(t.c.run_id == run)
    if lo is not None:
        query = query.where(when >= lo)
    if hi is not None:
        query = query.where(when < hi)
    return conn.execute(query).all()


def run_stats(conn) -> list[Any]:
    """Per run, oldest first: ``run_id, host, pid, start, end, status, heartbeat, spans, span_j,
    total_j``: the spans it recorded (rollups count theirs) and their own energy (NULL where
    none was measured), from the span summaries, and what its measured devices consumed."""
    from ..sources.base import UNMEASURABLE

    h = SpanHour.__table__
    measured = h.c.hour_n + h.c.cross_n
    span_stats = (
        select(
            h.c.run_id, func.sum(h.c.spans).label("spans"),
            case((func.sum(measured) > 0, func.sum(h.c.hour_j + h.c.cross_j)), else_=null()).label("span_j"),
        )
        .group_by(h.c.run_id)
        .subquery()
    )
    t = DeviceTotal.__table__
    device_stats = (
        select(t.c.run_id, func.sum(t.c.total_j).label("total_j"))
        .where(t.c.method != UNMEASURABLE)
        .group_by(t.c.run_id)
        .subquery()
    )
    query = (
        select(Run.run_id, Run.host, Run.pid, Run.start, Run.end, Run.status, Run.heartbeat, span_stats.c.spans,
               span_stats.c.span_j, device_stats.c.total_j)
        .outerjoin(span_stats, span_stats.c.run_id == Run.run_id)
        .outerjoin(device_stats, device_stats.c.run_id == Run.run_id)
        .order_by(Run.start, Run.run_id)
    )
    return conn.execute(query).all()
