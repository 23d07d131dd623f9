"""Alembic's environment for greenmaas ledgers.

greenmaas runs it itself (:mod:`greenmaas.ledger.migrations`), handing it the connection of the
transaction the upgrade runs in (``config.attributes["connection"]``): the revisions, the version
stamp and greenmaas's own ``meta.schema_version`` are committed together, or not at all. Run
through the ``alembic`` command instead (to write a new revision), it connects to the
``sqlalchemy.url`` of that command's configuration.
"""

from __future__ import annotations

from alembic import context

from greenmaas.ledger.migrations import VERSION_TABLE
from greenmaas.ledger.models import Base


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise SystemExit("greenmaas ledger migrations run against a database, not as SQL text")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from sqlalchemy import create_engine

    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database: set sqlalchemy.url, or upgrade with `greenmaas migrate --ledger URL`")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


_main()
