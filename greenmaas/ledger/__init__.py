"""The ledger: where measured runs, spans, raw reads, samples and device totals are stored.

* :class:`Ledger` — open a SQLite file or any SQLAlchemy URL; write records; pseudonymise tenants.
* :class:`LedgerWriter` — writes records from a background thread so measuring never waits.
* :mod:`greenmaas.ledger.models` — the tables.
* :mod:`greenmaas.ledger.migrations` — upgrading a ledger of an older schema in place
  (``greenmaas migrate``).
* :mod:`greenmaas.ledger.query` — the queries reports and exports read with.

Read a ledger back with :func:`greenmaas.reporting.frames.read_ledger` or :mod:`greenmaas.reporting.summary`.
"""

from __future__ import annotations

from .models import SCHEMA_VERSION
from .store import DEFAULT_PATH, ENV_LEDGER, ENV_TENANT_KEY, Ledger
from .writer import LedgerWriter

__all__ = ["Ledger", "LedgerWriter", "SCHEMA_VERSION", "DEFAULT_PATH", "ENV_LEDGER", "ENV_TENANT_KEY"]
