"""Span summaries: what reports read instead of every span, kept as spans are written.

A report groups spans by model, phase, run, day, tenant or name, filters them by time and model,
and sums them per UTC hour (so that each hour's energy is priced once). The ledger keeps those
sums as it writes spans, in the same transaction (:class:`Summariser`, called by
:meth:`Ledger.write_spans <greenmaas.ledger.Ledger.write_spans>`), in four tables
(:mod:`greenmaas.ledger.models`): ``span_hours`` (per run, hour of the span's start, method, kind,
model, phase, tenant and name), ``span_hour_devices`` (the same per device), ``span_nesting``
(time spent in spans under a parent, by both sides' values) and ``span_crossings`` (the few spans
that end in a later hour, priced one by one). Their size grows with hours and distinct groups,
not with spans, so a report's cost does not grow with the ledger.

Two figures of a span depend on other spans, which may be written before or after it:

* its own ± J is its ``uncertainty_j`` less its children's and its linked batch shares' (never
  below 0);
* a group's time leaves out children whose parent is in the same group.

Children are written before their parents (they finish first), but not always (an offline
attribution writes in start order). So the summariser remembers, in memory, the recent spans it
wrote (their summary key and own ± J left) and, for spans not yet written, what their children
contributed; a parent or child it does not remember is looked up in the ledger. What it
remembers changes only when the transaction commits.

:func:`rebuild` computes the same tables from the spans in SQL: the upgrade to schema 4 runs it,
and the tests compare the two.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Sequence, cast

from .models import SUMMARY_KEY, Span, SpanCrossing, SpanDevice, SpanHour, SpanHourDevice, SpanNesting

if TYPE_CHECKING:
    from sqlalchemy import Table

__all__ = ["Summariser", "hour_of", "rebuild", "SUMMARY_TABLES"]

logger = logging.getLogger("greenmaas.ledger")

_UTC = timezone.utc
#: The summary tables, in the order they are rebuilt.
SUMMARY_TABLES = (SpanHour.__tablename__, SpanHourDevice.__tablename__, SpanNesting.__tablename__,
                  SpanCrossing.__tablename__)
#: Spans remembered as possible parents of spans written later (then looked up in the ledger).
RECENT = 100_000
#: Parents not yet written whose children are remembered. Beyond this the oldest are forgotten
#: (their children's time then counts in their parent's group too, and their ± J is not taken
#: off the parent's), and a warning says so once.
PENDING = 1_000_000
_LOOKUP_CHUNK = 500

_HOUR_SUMS = ("spans", "duration_s", "hour_j", "hour_n", "cross_j", "cross_n", "own_u", "own_u_n")
_DEVICE_KEY = SUMMARY_KEY + ("device", "device_method", "measured", "recorded")
_DEVICE_SUMS = ("rows", "device_s", "stated_j", "stated_n")
_NEST = ("hour", "kind", "model", "phase", "tenant", "name")
_NESTING_KEY = ("run_id",) + tuple(f"c_{c}" for c in _NEST) + tuple(f"p_{c}" for c in _NEST)


def _table(model: Any) -> "Table":
    return cast("Table", model.__table__)


def hour_of(t: datetime) -> str:
    """The UTC hour of ``t`` as summaries key it: ``YYYY-MM-DD HH`` (naive ``t`` is UTC)."""
    if t.tzinfo is not None and t.utcoffset():
        t = t.astimezone(_UTC)
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d} {t.hour:02d}"


class Summariser:
    """Keeps a ledger's summaries as its spans are written (see the module doc). One per
    :class:`~greenmaas.ledger.Ledger`; :meth:`add` runs inside the write transaction, and
    :meth:`commit` / :meth:`rollback` follow it."""

    def __init__(self) -> None:
        # span id -> (summary key, own ± J left or None)
        self._recent: dict[str, tuple] = {}
        # parent id not yet written -> (run id, children's ± J, {child's nesting side: seconds})
        self._pending: dict[str, tuple] = {}
        # Runs started through this ledger object: it wrote all their spans, so what their spans'
        # children contributed is in ``_pending``; for other runs it is looked up in the ledger.
        self._runs: set[str] = set()
        self._local = threading.local()  # this thread's transaction: (recent, pending) overlays
        self._lock = threading.Lock()
        self._warned = False

    # ------------------------------------------------------------------ transaction overlays

    def _overlay(self) -> tuple[dict, dict]:
        overlay = getattr(self._local, "overlay", None)
        if overlay is None:
            overlay = self._local.overlay = ({}, {})
        return overlay

    def commit(self) -> None:
        """Keep what the committed transaction's spans taught (called after it commits)."""
        overlay = getattr(self._local, "overlay", None)
        self._local.overlay = None
        if not overlay:
            return
        recent, pending = overlay
        with self._lock:
            self._recent.update(recent)
            excess = len(self._recent) - RECENT
            if excess > 0:
                for key in list(self._recent)[:excess]:
                    del self._recent[key]
            for key, value in pending.items():
                if value is None:
                    self._pending.pop(key, None)
                else:
                    self._pending[key] = value
            excess = len(self._pending) - PENDING
            if excess > 0:
                for key in list(self._pending)[:excess]:
                    del self._pending[key]
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "ledger summaries: more than %d parents still open; the oldest are forgotten, so "
                        "their children's time and ± J are not nested under them in reports", PENDING)

    def rollback(self) -> None:
        """Forget what the failed transaction's spans taught."""
        self._local.overlay = None

    def start_run(self, run_id: str) -> None:
        """The run starts through this ledger object (called as its start is written)."""
        with self._lock:
            self._runs.add(run_id)

    def end_run(self, run_id: str) -> None:
        """The run ended: the parents it never wrote will not come (their children stay top-level)."""
        with self._lock:
            for key in [k for k, v in self._pending.items() if v[0] == run_id]:
                del self._pending[key]

    def _get_recent(self, span_id: str, recent: dict) -> tuple | None:
        node = recent.get(span_id)
        return node if node is not None else self._recent.get(span_id)

    def _get_pending(self, span_id: str, pending: dict) -> tuple | None:
        if span_id in pending:
            return pending[span_id]
        return self._pending.get(span_id)

    # ------------------------------------------------------------------------------ adding

    def add(self, conn, spans: Sequence[Any], span_rows: Sequence[tuple], device_rows: Sequence[tuple],
            null: Any) -> Callable[[Any], None]:
        """What ``spans`` (records, with the rows the ledger is about to insert for them) add to
        the summaries, worked out on ``conn`` (the write transaction) before they are inserted:
        call what this returns with ``conn`` once they are (so that a span that cannot be stored
        fails there first)."""
        recent, pending = self._overlay()
        hours: dict[tuple, list] = {}
        devices: dict[tuple, list] = {}
        nesting: dict[tuple, float] = {}
        crossings: list[dict[str, Any]] = []
        looked_up = self._look_up(conn, span_rows, recent, pending)
        runs = self._runs
        # Children of spans of other runs: those already in the ledger, then those of this batch.
        stored_children = self._children(conn, [row[0] for row in span_rows if row[1] not in runs])
        batch_children: dict[str, tuple] = {}

        committed_pending, committed_recent = self._pending, self._recent
        at = 0
        for s, row in zip(spans, span_rows):
            span_id, run_id = row[0], row[1]
            kind, name, model, phase, tenant = row[3], row[4], row[5], row[6], row[8]
            energy, method, u, count = row[19], row[20], row[28], row[29]
            start, end = s.start, s.end
            if start.tzinfo is None:  # naive times are UTC (as the ledger stores them)
                start = start.replace(tzinfo=_UTC)
            if end.tzinfo is None:
                end = end.replace(tzinfo=_UTC)
            stored = row[9]
            if type(stored) is str:  # SQLite: the row holds the UTC text already
                hour = stored[:13]
                crossing = row[10][:13] != hour
            else:
                hour = hour_of(start)
                crossing = hour_of(end) != hour
            if model is null or model is None:
                model = ""
            if phase is null or phase is None:
                phase = ""
            if tenant is null or tenant is None:
                tenant = ""
            if energy is null:
                energy = None
            if u is null:
                u = None
            duration = float(row[11] or 0.0)
            key = (run_id, hour, method, kind, model, phase, tenant, name)

            acc = hours.get(key)
            if acc is None:
                acc = hours[key] = [0, 0.0, 0.0, 0, 0.0, 0, 0.0, 0, start, end]
            acc[0] += count
            acc[1] += duration
            if energy is not None:
                if crossing:
                    acc[4] += energy
                    acc[5] += 1
                else:
                    acc[2] += energy
                    acc[3] += 1
            if acc[8] is None or start < acc[8]:  # (None: a row that only took a child's ± J off)
                acc[8] = start
            if acc[9] is None or end > acc[9]:
                acc[9] = end
            # As a parent: what its children written before it contributed.
            if run_id in runs:
                if span_id in pending:
                    waiting = pending[span_id]
                    if waiting is not None:
                        pending[span_id] = None
                else:
                    waiting = committed_pending.get(span_id)
                    if waiting is not None:
                        pending[span_id] = None
            else:
                waiting = _merged(stored_children.get(span_id), batch_children.pop(span_id, None))
            if waiting is not None:
                side = (hour, kind, model, phase, tenant, name)
                for child_side, seconds in waiting[2].items():
                    k = (run_id, *child_side, *side)
                    nesting[k] = nesting.get(k, 0.0) + seconds
            own = None
            if u is not None:
                own = u - waiting[1] if waiting is not None else u
                if own < 0.0:
                    own = 0.0
                acc[6] += own
                acc[7] += 1
            recent[span_id] = (key, own)
            if crossing:
                crossings.append({
                    "run_id": run_id, "hour": hour, "method": method, "kind": kind, "model": model,
                    "phase": phase, "tenant": tenant, "name": name, "start": start, "end": end,
                    "energy_j": energy,
                })
            # Its devices (rows of span_id, device, energy_j, self_j, method, gap_s, self_device_s, u).
            n = len(s.devices)
            measured, recorded = int(energy is not None), int(u is not None)
            for j in range(at, at + n):
                d = device_rows[j]
                dk = key + (d[1], d[4], measured, recorded)
                dacc = devices.get(dk)
                if dacc is None:
                    dacc = devices[dk] = [0, 0.0, 0.0, 0]
                dacc[0] += 1
                dacc[1] += d[6] or 0.0
                if u is None and d[3] is not null and d[3] is not None:
                    dacc[2] += d[3]
                    dacc[3] += 1
            at += n
            # As a child: of its parent (time and ± J) and of the request its share is linked to (± J).
            for target, nested in ((row[2], True), (row[27], False)):
                if target is null or target is None:
                    continue
                node = recent.get(target) or committed_recent.get(target) or looked_up.get(target)
                if node is not None:
                    p_key, p_own = node
                    if nested:
                        k = (run_id, hour, kind, model, phase, tenant, name, p_key[1], *p_key[3:])
                        nesting[k] = nesting.get(k, 0.0) + duration
                    if u is not None and p_own is not None:
                        left = p_own - u
                        if left < 0.0:
                            left = 0.0
                        if left != p_own:
                            p_acc = hours.get(p_key)
                            if p_acc is None:
                                p_acc = hours[p_key] = [0, 0.0, 0.0, 0, 0.0, 0, 0.0, 0, None, None]
                            p_acc[6] += left - p_own
                            recent[target] = (p_key, left)
                    continue
                owned = run_id in runs
                waiting = self._get_pending(target, pending) if owned else batch_children.get(target)
                if waiting is None:
                    waiting = (run_id, 0.0, {})
                children_u = waiting[1] + (u if u is not None else 0.0)
                durations = waiting[2]
                if nested:
                    side = (hour, kind, model, phase, tenant, name)
                    durations = dict(durations)
                    durations[side] = durations.get(side, 0.0) + duration
                (pending if owned else batch_children)[target] = (waiting[0], children_u, durations)

        def write(conn) -> None:
            _upsert(conn, _table(SpanHour), SUMMARY_KEY, _HOUR_SUMS,
                    [{**dict(zip(SUMMARY_KEY, k)), **dict(zip(_HOUR_SUMS, v[:8])), "first": v[8], "last": v[9]}
                     for k, v in hours.items()], bounds=True)
            _upsert(conn, _table(SpanHourDevice), _DEVICE_KEY, _DEVICE_SUMS,
                    [{**dict(zip(_DEVICE_KEY, k)), **dict(zip(_DEVICE_SUMS, v))} for k, v in devices.items()])
            _upsert(conn, _table(SpanNesting), _NESTING_KEY, ("duration_s",),
                    [{**dict(zip(_NESTING_KEY, k)), "duration_s": v} for k, v in nesting.items()])
            if crossings:
                conn.execute(_table(SpanCrossing).insert(), crossings)

        return write

    def _children(self, conn, span_ids: list[str]) -> dict[str, tuple]:
        """What the children (and linked shares) already in the ledger of ``span_ids``
        contributed: span id -> (run id, their ± J, {child's nesting side: seconds})."""
        from sqlalchemy import select

        out: dict[str, tuple] = {}
        child = Span.__table__.alias("child")
        for i in range(0, len(span_ids), _LOOKUP_CHUNK):
            ids = span_ids[i:i + _LOOKUP_CHUNK]
            for on, nested in ((child.c.parent_id, True), (child.c.link_id, False)):
                rows = conn.execute(select(
                    on, child.c.run_id, child.c.start, child.c.kind, child.c.model, child.c.phase, child.c.tenant,
                    child.c.name, child.c.duration_s, child.c.uncertainty_j,
                ).where(on.in_(ids))).all()
                for target, run_id, start, kind, model, phase, tenant, name, duration, u in rows:
                    run, children_u, durations = out.get(target) or (run_id, 0.0, {})
                    if nested:
                        side = (hour_of(start), kind, model or "", phase or "", tenant or "", name)
                        durations[side] = durations.get(side, 0.0) + (duration or 0.0)
                    out[target] = (run, children_u + (u if u is not None else 0.0), durations)
        return out

    def _look_up(self, conn, span_rows: Sequence[tuple], recent: dict, pending: dict) -> dict[str, tuple]:
        """Parents and linked requests of ``span_rows`` that are neither in this batch nor
        remembered, from the ledger: span id -> (summary key, own ± J left)."""
        from sqlalchemy import func, select, union_all

        batch = {row[0] for row in span_rows}
        wanted = set()
        for row in span_rows:
            for target in (row[2], row[27]):
                if (isinstance(target, str) and target not in batch and self._get_recent(target, recent) is None
                        and self._get_pending(target, pending) is None):
                    wanted.add(target)
        found: dict[str, tuple] = {}
        wanted_list = sorted(wanted)
        for i in range(0, len(wanted_list), _LOOKUP_CHUNK):
            ids = wanted_list[i:i + _LOOKUP_CHUNK]
            rows = conn.execute(
                select(Span.span_id, Span.run_id, Span.start, Span.method, Span.kind, Span.model, Span.phase,
                       Span.tenant, Span.name, Span.uncertainty_j).where(Span.span_id.in_(ids))
            ).all()
            if not rows:
                continue
            child = Span.__table__.alias("child")
            children = union_all(*(
                select(on.label("span_id"), child.c.uncertainty_j.label("u")).where(on.in_([r.span_id for r in rows]))
                for on in (child.c.parent_id, child.c.link_id)
            )).subquery()
            taken = dict(conn.execute(
                select(children.c.span_id, func.coalesce(func.sum(children.c.u), 0.0)).group_by(children.c.span_id)
            ).all())
            for r in rows:
                hour = hour_of(r.start)
                model, phase, tenant = r.model or "", r.phase or "", r.tenant or ""
                own = None
                if r.uncertainty_j is not None:
                    own = max(r.uncertainty_j - float(taken.get(r.span_id, 0.0)), 0.0)
                node = ((r.run_id, hour, r.method, r.kind, model, phase, tenant, r.name), own)
                found[r.span_id] = recent[r.span_id] = node
        return found


def _merged(a: tuple | None, b: tuple | None) -> tuple | None:
    """Two records of what a span's children contributed, as one."""
    if a is None or b is None:
        return a if b is None else b
    durations = dict(a[2])
    for side, seconds in b[2].items():
        durations[side] = durations.get(side, 0.0) + seconds
    return (a[0], a[1] + b[1], durations)


def _upsert(conn, table, key: Sequence[str], sums: Sequence[str], rows: list[dict[str, Any]], *,
            bounds: bool = False) -> None:
    """Insert ``rows`` into ``table``, adding ``sums`` to a row already there with the same
    ``key`` (and keeping the earliest ``first`` and latest ``last`` where ``bounds``)."""
    if not rows:
        return
    from sqlalchemy import case

    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    new = stmt.excluded
    values: dict[str, Any] = {c: table.c[c] + new[c] for c in sums}
    if bounds:
        for column, earlier in (("first", True), ("last", False)):
            old, got = table.c[column], new[column]
            better = got < old if earlier else got > old
            values[column] = case((got.is_(None), old), (old.is_(None), got), (better, got), else_=old)
    conn.execute(stmt.on_conflict_do_update(index_elements=list(key), set_=values), rows)


def rebuild(conn) -> None:
    """Compute the summaries of every span in the ledger, in SQL, replacing what is there."""
    from sqlalchemy import case, delete, func, null, select

    from .query import own_uncertainty, utc_text

    for table in (SpanHour, SpanHourDevice, SpanNesting, SpanCrossing):
        conn.execute(delete(_table(table)))
    s = Span.__table__.alias("s")

    def key_of(t) -> list:
        return [utc_text(t.c.start, 13), t.c.kind, func.coalesce(t.c.model, ""), func.coalesce(t.c.phase, ""),
                func.coalesce(t.c.tenant, ""), t.c.name]

    hour, kind, model, phase, tenant, name = key_of(s)
    crossing = utc_text(s.c.start, 13) != utc_text(s.c.end, 13)
    within = case((crossing, null()), else_=s.c.self_energy_j)
    across = case((crossing, s.c.self_energy_j), else_=null())
    own = own_uncertainty(s)
    grouping = [s.c.run_id, hour, s.c.method, kind, model, phase, tenant, name]
    conn.execute(_table(SpanHour).insert().from_select(
        list(SUMMARY_KEY) + list(_HOUR_SUMS) + ["first", "last"],
        select(*grouping, func.sum(func.coalesce(s.c.count, 1)), func.sum(s.c.duration_s),
               func.coalesce(func.sum(within), 0.0), func.count(within), func.coalesce(func.sum(across), 0.0),
               func.count(across), func.coalesce(func.sum(own), 0.0), func.count(s.c.uncertainty_j),
               func.min(s.c.start), func.max(s.c.end)).group_by(*grouping),
    ))

    d = _table(SpanDevice)
    measured = case((s.c.self_energy_j.is_(None), 0), else_=1)
    recorded = case((s.c.uncertainty_j.is_(None), 0), else_=1)
    stated = case((s.c.uncertainty_j.is_(None), d.c.self_j), else_=null())
    device_grouping = grouping + [d.c.device, d.c.method, measured, recorded]
    conn.execute(_table(SpanHourDevice).insert().from_select(
        list(_DEVICE_KEY) + list(_DEVICE_SUMS),
        select(*device_grouping, func.count(), func.sum(func.coalesce(d.c.self_device_s, 0.0)),
               func.coalesce(func.sum(stated), 0.0), func.count(stated))
        .select_from(d.join(s, s.c.span_id == d.c.span_id)).group_by(*device_grouping),
    ))

    p = Span.__table__.alias("p")
    nest_grouping = [s.c.run_id, *key_of(s), *key_of(p)]
    conn.execute(_table(SpanNesting).insert().from_select(
        list(_NESTING_KEY) + ["duration_s"],
        select(*nest_grouping, func.sum(s.c.duration_s))
        .select_from(s.join(p, p.c.span_id == s.c.parent_id))
        .group_by(*nest_grouping),
    ))

    conn.execute(_table(SpanCrossing).insert().from_select(
        ["run_id", "hour", "method", "kind", "model", "phase", "tenant", "name", "start", "end", "energy_j"],
        select(s.c.run_id, hour, s.c.method, kind, model, phase, tenant, name, s.c.start, s.c.end,
               s.c.self_energy_j).where(crossing).order_by(s.c.start, s.c.span_id),
    ))
