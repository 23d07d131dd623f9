"""Reading the ledger: the queries the reports and exports run, in one place.

Each function takes an open SQLAlchemy ``Connection`` (from :meth:`Ledger.read`) and returns
rows; none writes. Values travel as bound parameters.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import String, and_, case, func, literal, null, select, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from .models import Read, Run, Span, SpanDevice

__all__ = [
    "latest_run",
    "run_exists",
    "run_devices",
    "has_reads",
    "run_reads",
    "run_spans",
    "run_span_devices",
    "children_uncertainty",
    "ROLLUP_KEYS",
    "group_key",
    "rollup_spans",
    "rollup_crossing",
    "rollup_devices",
]


def latest_run(conn) -> str | None:
    """The run that started last (ties: the greatest id), or None in an empty ledger."""
    query = select(Run.run_id).order_by(Run.start.desc(), Run.run_id.desc()).limit(1)
    return conn.execute(query).scalar_one_or_none()


def run_exists(conn, run_id: str) -> bool:
    return conn.execute(select(literal(1)).where(Run.run_id == run_id)).first() is not None


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
# (per run, method and hour), however many spans there are. ``greenmaas.rollup`` turns them into
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


def group_key(table, by: str, none: str):
    """The report group of each row of ``table`` (the ``spans`` table or an alias): its value for
    ``by``, or ``none`` where it has none (NULL or empty)."""
    if by == "day":
        return utc_text(table.c.start, 10)
    column = table.c[_KEY_COLUMNS[by]]
    return case((and_(column.is_not(None), column != ""), column), else_=literal(none))


def _hour(table):
    """The UTC hour a span lies in, as ``YYYY-MM-DD HH``; NULL where it crosses into another."""
    start, end = utc_text(table.c.start, 13), utc_text(table.c.end, 13)
    return case((start == end, start), else_=null())


def _own_uncertainty(s):
    """A span's own recorded ± J: its ``uncertainty_j`` less its children's (under it, or batch
    shares linked to it), never below 0; NULL where none was recorded."""
    c = Span.__table__.alias("cu")
    children = [
        select(func.coalesce(func.sum(c.c.uncertainty_j), 0.0)).where(on == s.c.span_id).scalar_subquery()
        for on in (c.c.parent_id, c.c.link_id)
    ]
    own = s.c.uncertainty_j - children[0] - children[1]
    return case((s.c.uncertainty_j.is_(None), null()), (own < 0.0, 0.0), else_=own)


def _selection(s, lo, hi, model):
    conditions = []
    if lo is not None:
        conditions.append(s.c.start >= lo)
    if hi is not None:
        conditions.append(s.c.start < hi)
    if model is not None:
        conditions.append(s.c.model == model)
    return conditions


def rollup_spans(conn, by: str, none: str, lo=None, hi=None, model=None) -> Iterable[Any]:
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
    conditions = _selection(s, lo, hi, model)
    g, hour, own_u = group_key(s, by, none), _hour(s), _own_uncertainty(s)
    parent_selected = and_(p.c.span_id == s.c.parent_id, *_selection(p, lo, hi, model))
    top = case((and_(p.c.span_id.is_not(None), group_key(p, by, none) == g), 0.0), else_=s.c.duration_s)
    query = (
        select(
            g.label("grp"), s.c.run_id, s.c.method, hour.label("hour"), func.count().label("spans"),
            func.sum(top).label("duration_s"), func.sum(s.c.self_energy_j).label("energy_j"),
            func.count(s.c.self_energy_j).label("energy_n"), func.sum(own_u).label("own_u"),
            func.count(s.c.uncertainty_j).label("own_u_n"), func.min(s.c.start).label("first"),
            func.max(s.c.end).label("last"),
        )
        .select_from(s.outerjoin(p, parent_selected))
        .where(*conditions)
        .group_by(g, s.c.run_id, s.c.method, hour)
        .order_by(g)
    )
    return conn.execute(query)


def rollup_crossing(conn, by: str, none: str, lo=None, hi=None, model=None) -> list[Any]:
    """The selected spans that cross an hour, which are priced one by one: rows of ``group,
    run_id, start, end, energy_j`` (``self_energy_j``)."""
    s = Span.__table__.alias("s")
    conditions = _selection(s, lo, hi, model)
    query = select(group_key(s, by, none), s.c.run_id, s.c.start, s.c.end, s.c.self_energy_j).where(
        *conditions, utc_text(s.c.start, 13) != utc_text(s.c.end, 13)
    )
    return conn.execute(query).all()


def rollup_devices(conn, by: str, none: str, lo=None, hi=None, model=None) -> Iterable[Any]:
    """The selected spans' devices, summed per group, run, device, the device's method, the
    span's method and whether the span's energy and ± J were recorded.

    Rows of ``group, run_id, device, method, span_method, measured, recorded, rows, device_s,
    stated_j, stated_n``: ``device_s`` the spans' own device time, ``stated_j`` their own energy
    on the device where the span recorded no ± J (``stated_n`` how many such rows had one), for
    the method's stated uncertainty.
    """
    s = Span.__table__.alias("s")
    d = SpanDevice.__table__
    conditions = _selection(s, lo, hi, model)
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
    return conn.execute(query)
