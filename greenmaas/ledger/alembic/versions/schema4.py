"""Schema 4: the span summaries reports read (``span_hours``, ``span_hour_devices``,
``span_nesting``, ``span_crossings``; see :mod:`greenmaas.ledger.summary`).

The four tables are created as they are at this version and filled from the spans already
stored (and spans get an index on ``request_id``, which a report by request pages through; on
PostgreSQL, span names, models and request ids become unbounded text), in SQL (:func:`greenmaas.ledger.summary.rebuild`): a report on an upgraded ledger gives
what it gave before. Nothing already stored changes.

Revision ID: schema4
Revises: schema3
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "schema4"
down_revision = "schema3"
branch_labels = None
depends_on = None

schema_version = 4

_SIDE = (("hour", 13), ("kind", 32), ("model", 255), ("phase", 32), ("tenant", 64), ("name", 255))
#: Names users give: unbounded text on PostgreSQL (at most 255 characters where a length is enforced).
_NAME = sa.String(255).with_variant(sa.Text(), "postgresql")


def _key(prefix: str = "", *, method: bool = True) -> list[sa.Column]:
    columns = [sa.Column(f"{prefix}{name}", _NAME if width == 255 else sa.String(width), nullable=False)
               for name, width in _SIDE]
    if method:
        columns.insert(1, sa.Column("method", sa.String(16), nullable=False))
    return columns


def upgrade() -> None:
    from greenmaas.ledger.summary import rebuild

    key = ["run_id", "hour", "method", "kind", "model", "phase", "tenant", "name"]
    op.create_table(
        "span_hours",
        sa.Column("run_id", sa.String(64), nullable=False),
        *_key(),
        sa.Column("spans", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("hour_j", sa.Float(), nullable=False),
        sa.Column("hour_n", sa.Integer(), nullable=False),
        sa.Column("cross_j", sa.Float(), nullable=False),
        sa.Column("cross_n", sa.Integer(), nullable=False),
        sa.Column("own_u", sa.Float(), nullable=False),
        sa.Column("own_u_n", sa.Integer(), nullable=False),
        sa.Column("first", sa.DateTime(timezone=True)),
        sa.Column("last", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint(*key, name="pk_span_hours"),
    )
    op.create_table(
        "span_hour_devices",
        sa.Column("run_id", sa.String(64), nullable=False),
        *_key(),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("device_method", sa.String(16), nullable=False),
        sa.Column("measured", sa.Integer(), nullable=False),
        sa.Column("recorded", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("device_s", sa.Float(), nullable=False),
        sa.Column("stated_j", sa.Float(), nullable=False),
        sa.Column("stated_n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(*key, "device", "device_method", "measured", "recorded",
                                name="pk_span_hour_devices"),
    )
    sides = [f"c_{n}" for n, _ in _SIDE] + [f"p_{n}" for n, _ in _SIDE]
    op.create_table(
        "span_nesting",
        sa.Column("run_id", sa.String(64), nullable=False),
        *_key("c_", method=False),
        *_key("p_", method=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", *sides, name="pk_span_nesting"),
    )
    op.create_table(
        "span_crossings",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        *_key(),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("energy_j", sa.Float()),
    )
    op.create_index("ix_span_crossings_run_hour", "span_crossings", ["run_id", "hour"])
    op.create_index("ix_spans_request_id", "spans", ["request_id"])
    if op.get_bind().dialect.name == "postgresql":  # SQLite enforces no length: nothing to change
        for column in ("name", "model", "request_id"):
            op.alter_column("spans", column, type_=sa.Text(), existing_type=sa.String(255))
    rebuild(op.get_bind())


def downgrade() -> None:
    raise NotImplementedError("greenmaas ledgers are not downgraded: restore the backup made before upgrading")
