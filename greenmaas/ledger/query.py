"""Reading the ledger: the queries the reports and exports run, in one place.

Each function takes an open SQLAlchemy ``Connection`` (from :meth:`Ledger.read`) and returns
rows; none writes. Values travel as bound parameters.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy import func, literal, select, union_all

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
