"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None

#: The ``meta.schema_version`` a ledger has once this revision is applied (its revision id is
#: ``schema<N>``). Bump ``greenmaas.ledger.models.SCHEMA_VERSION`` to match.
schema_version = None


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    raise NotImplementedError("greenmaas ledgers are not downgraded: restore the backup made before upgrading")
