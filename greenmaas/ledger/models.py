"""The ledger schema: every table greenmaas stores, in one place.

SQLAlchemy Core tables, declared as classes whose columns are attributes (``Span.start``), in
:data:`Base.metadata`. The ledger reads and writes rows, never objects, so the ORM is not used
(importing it and mapping the classes was a sixth of every command's start). The same schema
serves SQLite (the default, one file) and PostgreSQL. Times are timezone-aware UTC ``datetime`` objects in Python; SQLite, which has no
time zones, stores them as naive UTC text and :class:`UTCDateTime` puts the zone back on read.
Units are in the column names (``energy_j``, ``duration_s``, ``power_w``, ``carbon_g``).

Bump :data:`SCHEMA_VERSION` whenever a table or column changes, and add an Alembic revision
``schema<N>`` (with ``schema_version = N``) under ``greenmaas/ledger/alembic/versions/`` (columns
added to an existing table go last, where ``ALTER TABLE ... ADD COLUMN`` puts them, so an upgraded
ledger and a new one are the same). A ledger written by a newer greenmaas is refused rather than half-understood.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
)
from sqlalchemy.sql.elements import ColumnElement

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

#: What a table class's column attributes are to a type checker (``Column`` itself types a class's
#: attribute as an ORM mapping would, which these classes are not).
_Col = ColumnElement[Any]

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


class Base:
    """A ledger table: a subclass naming ``__tablename__`` gets ``__table__``, made of its
    ``Column`` attributes in the order written, those of the mixins it derives from first
    (copied: a column belongs to one table), and ``__leading__`` before them all; its
    ``__table_args__`` (indexes, constraints) follow."""

    metadata: ClassVar[MetaData] = MetaData()
    __tablename__: ClassVar[str]
    __table__: ClassVar[Table]
    __table_args__: ClassVar[tuple[Any, ...]] = ()
    __leading__: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__tablename__" not in cls.__dict__:
            return  # a mixin: its columns go to the tables that derive from it
        columns: dict[str, Column[Any]] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, Column):
                    column = value if klass is cls else value._copy()
                    column.name = column.key = name
                    columns[name] = column
        ordered = [columns[n] for n in cls.__leading__] + [c for n, c in columns.items() if n not in cls.__leading__]
        cls.__table__ = Table(cls.__tablename__, cls.metadata, *ordered, *cls.__table_args__)
        for column in ordered:
            setattr(cls, column.key, column)

    @classmethod
    def __clause_element__(cls) -> Table:
        """The table, wherever a statement takes a class (``select(Span)``, ``update(Run)``)."""
        return cls.__table__


class Meta(Base):
    """Key/value facts about the ledger: application, schema_version, created_at, greenmaas_version
    (and, in ledgers made before tenant keys moved out of the ledger, the old ``tenant_salt``)."""

    __tablename__ = "meta"

    key: _Col = Column(String(64), primary_key=True)
    value: _Col = Column(Text, nullable=False)


class Run(Base):
    """One process session of a Meter (see :class:`greenmaas.records.RunRecord`)."""

    __tablename__ = "runs"

    run_id: _Col = Column(String(64), primary_key=True)
    host: _Col = Column(String(255), nullable=False)
    pid: _Col = Column(Integer, nullable=False)
    start: _Col = Column(UTCDateTime(), nullable=False)
    end: _Col = Column(UTCDateTime(), nullable=True)
    status: _Col = Column(String(16), nullable=False)
    config: _Col = Column(JSON, default=dict, nullable=False)
    devices: _Col = Column(JSON, default=list, nullable=False)
    greenmaas_version: _Col = Column(String(32), nullable=True)
    # Schema 2. The run's last sign of life (UTC, its last sample time), written at least once a
    # second while it runs: a ``running`` run whose heartbeat stopped was interrupted (see
    # :mod:`greenmaas.ledger.liveness`). NULL for runs recorded before schema 2.
    heartbeat: _Col = Column(UTCDateTime(), nullable=True)


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

    span_id: _Col = Column(String(64), primary_key=True)
    run_id: _Col = Column(String(64), ForeignKey("runs.run_id"), index=True, nullable=False)
    parent_id: _Col = Column(String(64), nullable=True)  # no FK: children finish first
    kind: _Col = Column(String(32), nullable=False)
    name: _Col = Column(NAME_TEXT, nullable=False)
    model: _Col = Column(NAME_TEXT, nullable=True)
    phase: _Col = Column(String(32), nullable=True)
    request_id: _Col = Column(NAME_TEXT, nullable=True)
    tenant: _Col = Column(String(64), nullable=True)  # pseudonym, never the raw identity
    start: _Col = Column(UTCDateTime(), index=True, nullable=False)
    end: _Col = Column(UTCDateTime(), index=True, nullable=False)
    duration_s: _Col = Column(Float, nullable=False)
    weight: _Col = Column(Float, default=1.0, nullable=False)
    tokens_in: _Col = Column(Integer, nullable=True)
    tokens_out: _Col = Column(Integer, nullable=True)
    items: _Col = Column(Integer, nullable=True)
    status: _Col = Column(String(16), nullable=False)
    attrs: _Col = Column(JSON, default=dict, nullable=False)
    energy_j: _Col = Column(Float, nullable=True)
    self_energy_j: _Col = Column(Float, nullable=True)
    method: _Col = Column(String(16), nullable=False)
    carbon_g: _Col = Column(Float, nullable=True)
    carbon_market_g: _Col = Column(Float, nullable=True)
    cost: _Col = Column(Float, nullable=True)
    currency: _Col = Column(String(8), nullable=True)
    # Schema 2. Monotonic seconds on the recording process's clock (the clock of ``reads.t_mono``),
    # exactly as the meter saw them, so the run can be re-attributed offline.
    start_mono: _Col = Column(Float, nullable=True)
    end_mono: _Col = Column(Float, nullable=True)
    link_id: _Col = Column(String(64), nullable=True)  # a batch share's request span
    # ± J of ``energy_j`` (inclusive, like it); NULL where none was stated or recorded before schema 2.
    uncertainty_j: _Col = Column(Float, nullable=True)
    # Schema 3. Spans this row stands for: 1, or a rollup's count (greenmaas.aggregate); NULL in
    # rows stored before schema 3, read as 1.
    count: _Col = Column(Integer, nullable=True)


class SpanDevice(Base):
    """Energy of one span on one device (see :class:`greenmaas.records.DeviceEnergy`).

    ``self_device_s`` is the span's own share of the device's time, shared among concurrent spans
    by the same rules as energy: what its hardware rental cost and embodied carbon are charged on.
    """

    __tablename__ = "span_devices"

    span_id: _Col = Column(String(64), ForeignKey("spans.span_id", ondelete="CASCADE"), primary_key=True)
    device: _Col = Column(String(64), primary_key=True)
    energy_j: _Col = Column(Float, nullable=True)
    self_j: _Col = Column(Float, nullable=True)
    method: _Col = Column(String(16), nullable=False)
    gap_s: _Col = Column(Float, default=0.0, nullable=False)
    self_device_s: _Col = Column(Float, default=0.0, nullable=False)
    uncertainty_j: _Col = Column(Float)  # ± J of energy_j (schema 2, nullable=True)


class Sample(Base):
    """One point of a device's cumulative-energy curve (see :class:`SampleRecord`)."""

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_run_device_t", "run_id", "device", "t"),)

    id: _Col = Column(Integer, primary_key=True, autoincrement=True)
    run_id: _Col = Column(String(64), ForeignKey("runs.run_id"), nullable=False)
    device: _Col = Column(String(64), nullable=False)
    t: _Col = Column(UTCDateTime(), nullable=False)
    energy_j: _Col = Column(Float, nullable=True)
    power_w: _Col = Column(Float, nullable=True)
    method: _Col = Column(String(16), nullable=False)


class DeviceTotal(Base):
    """Per run, device and attribution window: consumed, attributed to spans, and idle.

    A run may have several rows per device (one per window); reports sum them. ``idle_s`` is the
    device time in the window with no span running: the operator's own hardware line.
    """

    __tablename__ = "device_totals"

    id: _Col = Column(Integer, primary_key=True, autoincrement=True)
    run_id: _Col = Column(String(64), ForeignKey("runs.run_id"), index=True, nullable=False)
    device: _Col = Column(String(64), nullable=False)
    method: _Col = Column(String(16), nullable=False)
    start: _Col = Column(UTCDateTime(), nullable=True)
    end: _Col = Column(UTCDateTime(), nullable=True)
    total_j: _Col = Column(Float, nullable=True)
    attributed_j: _Col = Column(Float, nullable=True)
    idle_j: _Col = Column(Float, nullable=True)
    gap_s: _Col = Column(Float, default=0.0, nullable=False)
    idle_s: _Col = Column(Float, default=0.0, nullable=False)
    uncertainty_j: _Col = Column(Float)  # ± J of idle_j (schema 2, nullable=True)


class Read(Base):
    """One raw read of one device (see :class:`greenmaas.records.ReadRecord`): the run's trace.

    ``t_mono`` is the sampler's monotonic stamp (s, the clock of ``spans.start_mono``) when the
    read returned, ``t_start_mono`` when it began (NULL where not recorded), ``energy_j`` the
    cumulative counter exactly as read (before wrap or reset correction), and ``max_energy_j``
    where the counter wraps. A failed read has NULL values and an ``error``.
    """

    __tablename__ = "reads"
    __table_args__ = (Index("ix_reads_run_device_t", "run_id", "device", "t_mono"),)

    id: _Col = Column(Integer, primary_key=True, autoincrement=True)
    run_id: _Col = Column(String(64), ForeignKey("runs.run_id"), nullable=False)
    device: _Col = Column(String(64), nullable=False)
    t_mono: _Col = Column(Float, nullable=False)
    energy_j: _Col = Column(Float, nullable=True)
    power_w: _Col = Column(Float, nullable=True)
    max_energy_j: _Col = Column(Float, nullable=True)
    error: _Col = Column(Text, nullable=True)
    t_start_mono: _Col = Column(Float, nullable=True)


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
    First in their tables (a mixin's columns come first), as the schema 4 revision creates them."""

    run_id: _Col = Column(String(64), nullable=False)
    hour: _Col = Column(String(13), nullable=False)
    method: _Col = Column(String(16), nullable=False)
    kind: _Col = Column(String(32), nullable=False)
    model: _Col = Column(NAME_TEXT, nullable=False)
    phase: _Col = Column(String(32), nullable=False)
    tenant: _Col = Column(String(64), nullable=False)
    name: _Col = Column(NAME_TEXT, nullable=False)


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

    spans: _Col = Column(Integer, default=0, nullable=False)
    duration_s: _Col = Column(Float, default=0.0, nullable=False)
    hour_j: _Col = Column(Float, default=0.0, nullable=False)
    hour_n: _Col = Column(Integer, default=0, nullable=False)
    cross_j: _Col = Column(Float, default=0.0, nullable=False)
    cross_n: _Col = Column(Integer, default=0, nullable=False)
    own_u: _Col = Column(Float, default=0.0, nullable=False)
    own_u_n: _Col = Column(Integer, default=0, nullable=False)
    first: _Col = Column(UTCDateTime(), nullable=True)
    last: _Col = Column(UTCDateTime(), nullable=True)


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

    device: _Col = Column(String(64), nullable=False)
    device_method: _Col = Column(String(16), nullable=False)
    measured: _Col = Column(Integer, nullable=False)
    recorded: _Col = Column(Integer, nullable=False)
    rows: _Col = Column(Integer, default=0, nullable=False)
    device_s: _Col = Column(Float, default=0.0, nullable=False)
    stated_j: _Col = Column(Float, default=0.0, nullable=False)
    stated_n: _Col = Column(Integer, default=0, nullable=False)


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

    run_id: _Col = Column(String(64), nullable=False)
    c_hour: _Col = Column(String(13), nullable=False)
    c_kind: _Col = Column(String(32), nullable=False)
    c_model: _Col = Column(NAME_TEXT, nullable=False)
    c_phase: _Col = Column(String(32), nullable=False)
    c_tenant: _Col = Column(String(64), nullable=False)
    c_name: _Col = Column(NAME_TEXT, nullable=False)
    p_hour: _Col = Column(String(13), nullable=False)
    p_kind: _Col = Column(String(32), nullable=False)
    p_model: _Col = Column(NAME_TEXT, nullable=False)
    p_phase: _Col = Column(String(32), nullable=False)
    p_tenant: _Col = Column(String(64), nullable=False)
    p_name: _Col = Column(NAME_TEXT, nullable=False)
    duration_s: _Col = Column(Float, default=0.0, nullable=False)


class SpanCrossing(_SummaryKey, Base):
    """A span that ends in a later UTC hour than it starts in, with its summary values: priced
    over the hours it covers, one by one."""

    __tablename__ = "span_crossings"
    __table_args__ = (Index("ix_span_crossings_run_hour", "run_id", "hour"),)
    __leading__ = ("id",)

    id: _Col = Column(Integer, primary_key=True, autoincrement=True)
    start: _Col = Column(UTCDateTime(), nullable=False)
    end: _Col = Column(UTCDateTime(), nullable=False)
    energy_j: _Col = Column(Float, nullable=True)
