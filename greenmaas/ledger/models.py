"""The ledger schema: every table greenmaas stores, in one place.

SQLAlchemy 2.0 declarative models. The same schema serves SQLite (the default, one file) and
PostgreSQL. Times are timezone-aware UTC ``datetime`` objects in Python; SQLite, which has no
time zones, stores them as naive UTC text and :class:`UTCDateTime` puts the zone back on read.
Units are in the column names (``energy_j``, ``duration_s``, ``power_w``, ``carbon_g``).

Bump :data:`SCHEMA_VERSION` whenever a table or column changes, and add an Alembic revision
``schema<N>`` (with ``schema_version = N``) under ``greenmaas/ledger/alembic/versions/`` (columns
added to an existing table go last, where ``ALTER TABLE ... ADD COLUMN`` puts them, so an upgraded
ledger and a new one are the same). A ledger written by a newer greenmaas is refused rather than half-understood.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    PrimaryKeyConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "SCHEMA_VERSION",
    "APPLICATION",
    "UTCDateTime",
    "Base",
    "Meta",
    "Run",
    "Span",
    "SpanDevice",
    "Sample",
    "DeviceTotal",
    "Read",
    "SUMMARY_KEY",
    "SpanHour",
    "SpanHourDevice",
    "SpanNesting",
    "SpanCrossing",
]

#: Version of the tables below. Ledgers with a higher version are refused; lower ones are upgraded
#: (see :mod:`greenmaas.ledger.migrations`). 2: raw reads, monotonic span times, uncertainty,
#: run heartbeats. 3: rollup rows (``spans.count``). 4: the span summaries reports read
#: (``span_hours`` and its companions, :mod:`greenmaas.ledger.summary`).
SCHEMA_VERSION = 4
#: Names users give (span names, models, request ids): at most 255 characters where the database
#: enforces a length, which SQLite does not; unbounded text on PostgreSQL (schema 4), so a long
#: request id is stored there too rather than refused.
NAME_TEXT = String(255).with_variant(Text(), "postgresql")
#: Value of ``meta.application``; tells a greenmaas ledger from another app's ``meta`` table.
APPLICATION = "greenmaas"


class UTCDateTime(TypeDecorator):
    """A timestamp that is always timezone-aware UTC in Python.

    Naive values are taken to be UTC already (the meter only produces aware ones).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            # SQLite keeps text; naive UTC sorts and compares correctly as text.
            value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    """Key/value facts about the ledger: application, schema_version, created_at, greenmaas_version
    (and, in ledgers made before tenant keys moved out of the ledger, the old ``tenant_salt``)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Run(Base):
    """One process session of a Meter (see :class:`greenmaas.records.RunRecord`)."""

    __tablename__ = "runs"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    start: Mapped[datetime]
    end: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    devices: Mapped[list[Any]] = mapped_column(JSON, default=list)
    greenmaas_version: Mapped[str | None] = mapped_column(String(32))
    # Schema 2. The run's last sign of life (UTC, its last sample time), written at least once a
    # second while it runs: a ``running`` run whose heartbeat stopped was interrupted (see
    # :mod:`greenmaas.ledger.liveness`). NULL for runs recorded before schema 2.
    heartbeat: Mapped[datetime | None]


class Span(Base):
    """One finished span (see :class:`greenmaas.records.SpanRecord`).

    ``energy_j`` includes the span's descendants; ``self_energy_j`` excludes them, so summing
    ``self_energy_j`` over any set of spans never double counts. Both are NULL when no device
    of the span could be measured (never reported as 0 J).
    """

    __tablename__ = "spans"
    # Schema 2. A span's children, by parent or batch link, with their ± J: a report reads a
    # span's own ± J through these (see greenmaas.ledger.query.rollup_spans).
    __table_args__ = (
        Index("ix_spans_parent_id", "parent_id", "uncertainty_j"),
        Index("ix_spans_link_id", "link_id", "uncertainty_j"),
        # Schema 4. A report by request reads its spans a page of request ids at a time.
        Index("ix_spans_request_id", "request_id"),
    )

    span_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.run_id"), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(64))  # no FK: children finish first
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(NAME_TEXT)
    model: Mapped[str | None] = mapped_column(NAME_TEXT)
    phase: Mapped[str | None] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(NAME_TEXT)
    tenant: Mapped[str | None] = mapped_column(String(64))  # pseudonym, never the raw identity
    start: Mapped[datetime] = mapped_column(index=True)
    end: Mapped[datetime] = mapped_column(index=True)
    duration_s: Mapped[float] = mapped_column(Float)
    weight: Mapped[float] = mapped_column(Float, default=1.0)
    tokens_in: Mapped[int | None] = mapped_column(Integer)
    tokens_out: Mapped[int | None] = mapped_column(Integer)
    items: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attrs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    energy_j: Mapped[float | None] = mapped_column(Float)
    self_energy_j: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(16))
    carbon_g: Mapped[float | None] = mapped_column(Float)
    carbon_market_g: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[float | None] = mapped_column(Float)
    currency: Mapped[str | None] = mapped_column(String(8))
    # Schema 2. Monotonic seconds on the recording process's clock (the clock of ``reads.t_mono``),
    # exactly as the meter saw them, so the run can be re-attributed offline.
    start_mono: Mapped[float | None] = mapped_column(Float)
    end_mono: Mapped[float | None] = mapped_column(Float)
    link_id: Mapped[str | None] = mapped_column(String(64))  # a batch share's request span
    # ± J of ``energy_j`` (inclusive, like it); NULL where none was stated or recorded before schema 2.
    uncertainty_j: Mapped[float | None] = mapped_column(Float)
    # Schema 3. Spans this row stands for: 1, or a rollup's count (greenmaas.aggregate); NULL in
    # rows stored before schema 3, read as 1.
    count: Mapped[int | None] = mapped_column(Integer)


class SpanDevice(Base):
    """Energy of one span on one device (see :class:`greenmaas.records.DeviceEnergy`).

    ``self_device_s`` is the span's own share of the device's time, shared among concurrent spans
    by the same rules as energy: what its hardware rental cost and embodied carbon are charged on.
    """

    __tablename__ = "span_devices"

    span_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("spans.span_id", ondelete="CASCADE"), primary_key=True
    )
    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    energy_j: Mapped[float | None] = mapped_column(Float)
    self_j: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(16))
    gap_s: Mapped[float] = mapped_column(Float, default=0.0)
    self_device_s: Mapped[float] = mapped_column(Float, default=0.0)
    uncertainty_j: Mapped[float | None] = mapped_column(Float)  # ± J of energy_j (schema 2)


class Sample(Base):
    """One point of a device's cumulative-energy curve (see :class:`SampleRecord`)."""

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_run_device_t", "run_id", "device", "t"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.run_id"))
    device: Mapped[str] = mapped_column(String(64))
    t: Mapped[datetime]
    energy_j: Mapped[float | None] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(16))


class DeviceTotal(Base):
    """Per run, device and attribution window: consumed, attributed to spans, and idle.

    A run may have several rows per device (one per window); reports sum them. ``idle_s`` is the
    device time in the window with no span running: the operator's own hardware line.
    """

    __tablename__ = "device_totals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.run_id"), index=True)
    device: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(16))
    start: Mapped[datetime | None]
    end: Mapped[datetime | None]
    total_j: Mapped[float | None] = mapped_column(Float)
    attributed_j: Mapped[float | None] = mapped_column(Float)
    idle_j: Mapped[float | None] = mapped_column(Float)
    gap_s: Mapped[float] = mapped_column(Float, default=0.0)
    idle_s: Mapped[float] = mapped_column(Float, default=0.0)
    uncertainty_j: Mapped[float | None] = mapped_column(Float)  # ± J of idle_j (schema 2)


class Read(Base):
    """One raw read of one device (see :class:`greenmaas.records.ReadRecord`): the run's trace.

    ``t_mono`` is the sampler's monotonic stamp (s, the clock of ``spans.start_mono``) when the
    read returned, ``t_start_mono`` when it began (NULL where not recorded), ``energy_j`` the
    cumulative counter exactly as read (before wrap or reset correction), and ``max_energy_j``
    where the counter wraps. A failed read has NULL values and an ``error``.
    """

    __tablename__ = "reads"
    __table_args__ = (Index("ix_reads_run_device_t", "run_id", "device", "t_mono"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), ForeignKey("runs.run_id"))
    device: Mapped[str] = mapped_column(String(64))
    t_mono: Mapped[float] = mapped_column(Float)
    energy_j: Mapped[float | None] = mapped_column(Float)
    power_w: Mapped[float | None] = mapped_column(Float)
    max_energy_j: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    t_start_mono: Mapped[float | None] = mapped_column(Float)


# ------------------------------------------------------------------------------ summaries (schema 4)
#
# What reports read instead of the spans themselves: per run, UTC hour of the span's start and
# the values a report groups or filters by, the sums it needs. The ledger keeps them as it writes
# spans (greenmaas.ledger.summary), in the same transaction; their size grows with hours and
# distinct groups, not with spans. Key columns hold '' where the span's value is NULL (a report
# treats both as "none"), so that they can be a primary key on every database.

#: The columns that key a summary row: run, UTC hour of the span's start (``YYYY-MM-DD HH``), the
#: span's method (the weakest of its devices'), kind, model, phase, tenant (pseudonym) and name.
SUMMARY_KEY = ("run_id", "hour", "method", "kind", "model", "phase", "tenant", "name")


class _SummaryKey:
    """The span values a summary row is keyed by (:data:`SUMMARY_KEY`): '' where the span's is NULL.
    First in their tables (``sort_order``), as the schema 4 revision creates them."""

    run_id: Mapped[str] = mapped_column(String(64), sort_order=-10)
    hour: Mapped[str] = mapped_column(String(13), sort_order=-10)
    method: Mapped[str] = mapped_column(String(16), sort_order=-10)
    kind: Mapped[str] = mapped_column(String(32), sort_order=-10)
    model: Mapped[str] = mapped_column(NAME_TEXT, sort_order=-10)
    phase: Mapped[str] = mapped_column(String(32), sort_order=-10)
    tenant: Mapped[str] = mapped_column(String(64), sort_order=-10)
    name: Mapped[str] = mapped_column(NAME_TEXT, sort_order=-10)


class SpanHour(_SummaryKey, Base):
    """The spans of one summary key (:data:`SUMMARY_KEY`), summed.

    ``spans`` counts what rows stand for (rollups count theirs); ``duration_s`` sums every row's
    duration (a report takes its groups' nested time off with :class:`SpanNesting`);
    ``hour_j``/``hour_n`` sum the ``self_energy_j`` of the spans that end within the hour they
    start in (and count those with one), ``cross_j``/``cross_n`` of those that end in a later
    hour (priced one by one from :class:`SpanCrossing`); ``own_u`` sums each span's own ± J (its
    ``uncertainty_j`` less its children's and linked batch shares', never below 0), ``own_u_n``
    counts the spans that recorded one; ``first``/``last`` the earliest start and latest end.
    """

    __tablename__ = "span_hours"
    __table_args__ = (PrimaryKeyConstraint(*SUMMARY_KEY, name="pk_span_hours"),)

    spans: Mapped[int] = mapped_column(Integer, default=0)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    hour_j: Mapped[float] = mapped_column(Float, default=0.0)
    hour_n: Mapped[int] = mapped_column(Integer, default=0)
    cross_j: Mapped[float] = mapped_column(Float, default=0.0)
    cross_n: Mapped[int] = mapped_column(Integer, default=0)
    own_u: Mapped[float] = mapped_column(Float, default=0.0)
    own_u_n: Mapped[int] = mapped_column(Integer, default=0)
    first: Mapped[datetime | None]
    last: Mapped[datetime | None]


class SpanHourDevice(_SummaryKey, Base):
    """The span devices of one summary key, per device, its method, and whether the span's energy
    (``measured``) and ± J (``recorded``) were stored: ``rows`` span devices, ``device_s`` their
    own device time, ``stated_j`` their own energy where the span recorded no ± J (``stated_n``
    how many had one), for the method's stated uncertainty."""

    __tablename__ = "span_hour_devices"
    __table_args__ = (
        PrimaryKeyConstraint(*SUMMARY_KEY, "device", "device_method", "measured", "recorded",
                             name="pk_span_hour_devices"),
    )

    device: Mapped[str] = mapped_column(String(64))
    device_method: Mapped[str] = mapped_column(String(16))
    measured: Mapped[int] = mapped_column(Integer)
    recorded: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    device_s: Mapped[float] = mapped_column(Float, default=0.0)
    stated_j: Mapped[float] = mapped_column(Float, default=0.0)
    stated_n: Mapped[int] = mapped_column(Integer, default=0)


_NEST_SIDE = ("hour", "kind", "model", "phase", "tenant", "name")


class SpanNesting(Base):
    """Time spent in spans under a parent that is in the ledger, by the child's and the parent's
    summary values (``c_*``, ``p_*``): a report's group does not count a child's time where the
    parent is selected and in the same group (it already covers it)."""

    __tablename__ = "span_nesting"
    __table_args__ = (
        PrimaryKeyConstraint("run_id", *(f"c_{c}" for c in _NEST_SIDE), *(f"p_{c}" for c in _NEST_SIDE),
                             name="pk_span_nesting"),
    )

    run_id: Mapped[str] = mapped_column(String(64))
    c_hour: Mapped[str] = mapped_column(String(13))
    c_kind: Mapped[str] = mapped_column(String(32))
    c_model: Mapped[str] = mapped_column(NAME_TEXT)
    c_phase: Mapped[str] = mapped_column(String(32))
    c_tenant: Mapped[str] = mapped_column(String(64))
    c_name: Mapped[str] = mapped_column(NAME_TEXT)
    p_hour: Mapped[str] = mapped_column(String(13))
    p_kind: Mapped[str] = mapped_column(String(32))
    p_model: Mapped[str] = mapped_column(NAME_TEXT)
    p_phase: Mapped[str] = mapped_column(String(32))
    p_tenant: Mapped[str] = mapped_column(String(64))
    p_name: Mapped[str] = mapped_column(NAME_TEXT)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)


class SpanCrossing(_SummaryKey, Base):
    """A span that ends in a later UTC hour than it starts in, with its summary values: priced
    over the hours it covers, one by one."""

    __tablename__ = "span_crossings"
    __table_args__ = (Index("ix_span_crossings_run_hour", "run_id", "hour"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True, sort_order=-20)
    start: Mapped[datetime]
    end: Mapped[datetime]
    energy_j: Mapped[float | None] = mapped_column(Float)
