"""Schema 1: the ledger as greenmaas 0.1 created it.

The base of the chain. Ledgers of this version were created by greenmaas 0.1 from its models,
before ledgers carried an Alembic version stamp; such a ledger is stamped with this revision
(from its ``meta.schema_version``) before the revisions after it run. Nothing to do here.

Revision ID: schema1
Revises:
"""

from __future__ import annotations

revision = "schema1"
down_revision = None
branch_labels = None
depends_on = None

schema_version = 1


def upgrade() -> None:
    pass


def downgrade() -> None:
    raise NotImplementedError("greenmaas ledgers are not downgraded: restore the backup made before upgrading")
