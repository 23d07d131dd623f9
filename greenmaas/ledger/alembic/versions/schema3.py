"""Schema 3: how many spans a span row stands for (rollups).

``spans.count``: 1 for an ordinary span, the number of spans a rollup row stands for
(:mod:`greenmaas.aggregate`). NULL in rows stored before schema 3, read as 1. Additive only; the
column goes last in its table, where ``ALTER TABLE ... ADD COLUMN`` puts it.

Revision ID: schema3
Revises: schema2
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "schema3"
down_revision = "schema2"
branch_labels = None
depends_on = None

schema_version = 3


def upgrade() -> None:
    op.add_column("spans", sa.Column("count", sa.Integer()))


def downgrade() -> None:
    raise NotImplementedError("greenmaas ledgers are not downgraded: restore the backup made before upgrading")
