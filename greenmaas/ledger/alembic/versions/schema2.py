"""Schema 2: raw reads, monotonic span times, batch links, ± J, run heartbeats.

The raw reads of a run (table ``reads``); monotonic span times, the batch share's link and ± J on
spans; ± J on span devices and device totals; the runs' heartbeat; the indexes reports read a
span's children through. Additive only: rows already stored read back unchanged, with NULL in the
new columns. Columns go last in their tables, where ``ALTER TABLE ... ADD COLUMN`` puts them, so
an upgraded ledger has the same schema as a new one.

The tables and columns are spelt out as they are at this version rather than read from today's
models: a later change to a model must not change what this revision does.

Revision ID: schema2
Revises: schema1
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "schema2"
down_revision = "schema1"
branch_labels = None
depends_on = None

schema_version = 2


def upgrade() -> None:
    op.add_column("runs", sa.Column("heartbeat", sa.DateTime(timezone=True)))
    for column in ("start_mono", "end_mono"):
        op.add_column("spans", sa.Column(column, sa.Float()))
    op.add_column("spans", sa.Column("link_id", sa.String(64)))
    op.add_column("spans", sa.Column("uncertainty_j", sa.Float()))
    op.add_column("span_devices", sa.Column("uncertainty_j", sa.Float()))
    op.add_column("device_totals", sa.Column("uncertainty_j", sa.Float()))
    op.create_table(
        "reads",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("t_mono", sa.Float(), nullable=False),
        sa.Column("energy_j", sa.Float()),
        sa.Column("power_w", sa.Float()),
        sa.Column("max_energy_j", sa.Float()),
        sa.Column("error", sa.Text()),
        sa.Column("t_start_mono", sa.Float()),
    )
    op.create_index("ix_reads_run_device_t", "reads", ["run_id", "device", "t_mono"])
    op.create_index("ix_spans_parent_id", "spans", ["parent_id", "uncertainty_j"])
    op.create_index("ix_spans_link_id", "spans", ["link_id", "uncertainty_j"])


def downgrade() -> None:
    raise NotImplementedError("greenmaas ledgers are not downgraded: restore the backup made before upgrading")
