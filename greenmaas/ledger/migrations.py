"""Upgrading a ledger written by an older greenmaas to this one's schema, in place.

``UPGRADES[n]`` takes a ledger from schema ``n`` to ``n + 1``. Every step needed runs in one
transaction, which then sets ``meta.schema_version``: a ledger is upgraded completely or not at
all. Steps are additive (new tables, new nullable columns), so rows already stored read back
unchanged, with NULL in the new columns.

Each step spells out the tables and columns as they were at its version, rather than reading
today's models: a later change to a model must not change what an old step does. DDL is built by
SQLAlchemy from those definitions (names quoted by the dialect, never formatted from input).

When a ledger is upgraded (see :meth:`greenmaas.ledger.Ledger.open`):

* a SQLite file, automatically when opened for writing, after copying it (checkpointed first)
  to ``<name>.schema<N>.bak`` beside it; when that copy cannot be written nothing is upgraded;
* a server database (PostgreSQL), only by ``greenmaas migrate --ledger URL`` (:func:`migrate`):
  back it up first, with the database's own tools;
* never by a read-only open, which refuses an older ledger, naming ``greenmaas migrate``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Column, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import ExecutableDDLElement

from ..errors import LedgerError

__all__ = ["UPGRADES", "TABLES_AT", "Upgrade", "upgrade", "backup_path", "backup_sqlite", "migrate"]

#: The tables each schema version has (a damaged ledger is refused before anything is changed).
TABLES_AT: dict[int, frozenset[str]] = {
    1: frozenset({"meta", "runs", "spans", "span_devices", "samples", "device_totals"}),
}


@dataclass(frozen=True)
class Upgrade:
    """What upgrading did to ``ledger`` (as displayed, password hidden): the schema versions it
    went from and to (equal when it was up to date), and the backup made (None for a server
    database, or when nothing was done)."""

    ledger: str
    from_version: int
    to_version: int
    backup: Path | None = None

    @property
    def done(self) -> bool:
        return self.from_version < self.to_version


class _AddColumn(ExecutableDDLElement):
    """``ALTER TABLE <table> ADD COLUMN <column spec>``, both rendered by the dialect."""

    def __init__(self, column: Column):
        self.column = column


@compiles(_AddColumn)
def _compile_add_column(element: _AddColumn, compiler, **kw) -> str:
    column = element.column
    return (
        f"ALTER TABLE {compiler.preparer.format_table(column.table)} "
        f"ADD COLUMN {compiler.get_column_specification(column)}"
    )


def _upgrade_1_to_2(conn) -> None:
    """Schema 2: the raw reads of a run (``reads``); monotonic span times, the batch share's link
    and ± J on spans; ± J on span devices and device totals; the runs' heartbeat."""
    md = MetaData()
    reads = Table(
        "reads",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(64), ForeignKey("runs.run_id"), nullable=False),
        Column("device", String(64), nullable=False),
        Column("t_mono", Float, nullable=False),
        Column("energy_j", Float),
        Column("power_w", Float),
        Column("max_energy_j", Float),
        Column("error", Text),
        Column("t_start_mono", Float),
        Index("ix_reads_run_device_t", "run_id", "device", "t_mono"),
    )
    added = {
        "runs": (Column("heartbeat", DateTime(timezone=True)),),
        "spans": (
            Column("start_mono", Float),
            Column("end_mono", Float),
            Column("link_id", String(64)),
            Column("uncertainty_j", Float),
        ),
        "span_devices": (Column("uncertainty_j", Float),),
        "device_totals": (Column("uncertainty_j", Float),),
    }
    for name, columns in added.items():
        if name == "runs":  # also named by the foreign key of ``reads``
            columns = (Column("run_id", String(64), primary_key=True), *columns)
        Table(name, md, *columns)  # gives each column its table, which the DDL names
        for column in columns:
            if not column.primary_key:
                conn.execute(_AddColumn(column))
    md.create_all(conn, tables=[reads], checkfirst=False)
    # Indexes the reports' roll-ups read a span's children through (separate metadata: ``spans``
    # above names only the columns added).
    indexed = MetaData()
    spans = Table("spans", indexed, Column("parent_id", String(64)), Column("link_id", String(64)),
                  Column("uncertainty_j", Float))
    for index in (Index("ix_spans_parent_id", spans.c.parent_id, spans.c.uncertainty_j),
                  Index("ix_spans_link_id", spans.c.link_id, spans.c.uncertainty_j)):
        index.create(conn)


#: ``UPGRADES[n](conn)`` takes a ledger from schema ``n`` to ``n + 1`` within ``conn``'s transaction.
UPGRADES: dict[int, Callable[[Any], None]] = {1: _upgrade_1_to_2}


def upgrade(conn, from_version: int, to_version: int) -> None:
    """Run every step from ``from_version`` to ``to_version`` on ``conn``, then set
    ``meta.schema_version``; the caller's transaction makes it all or nothing."""
    from sqlalchemy import update

    from .models import Meta

    for version in range(from_version, to_version):
        step = UPGRADES.get(version)
        if step is None:  # pragma: no cover - a missing step is a bug caught by the tests
            raise LedgerError(f"no upgrade from ledger schema version {version}")
        step(conn)
    conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(to_version)))


def backup_path(path: Path, version: int) -> Path:
    """Where the copy of a schema-``version`` SQLite ledger goes: ``<name>.schema<N>.bak``."""
    return path.with_name(f"{path.name}.schema{version}.bak")


def backup_sqlite(path: Path, version: int, *, display: str) -> Path:
    """Copy the SQLite ledger at ``path`` (and its ``-wal``, if it holds anything) to
    :func:`backup_path`, each through a temporary file renamed into place.

    Called with the ledger's write lock held (no other writer can change it meanwhile) and after
    a checkpoint, so the ``-wal`` is usually empty and the backup is one file. Raises
    :class:`LedgerError` naming the backup when it cannot be written.
    """
    target = backup_path(path, version)
    copies = [(path, target)]
    wal, target_wal = Path(f"{path}-wal"), Path(f"{target}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        copies.append((wal, target_wal))
    done: list[Path] = []
    try:
        # A stale -wal beside an older backup would be replayed into the new one when opened.
        for stale in (target_wal, Path(f"{target}-shm")):
            if stale.exists() and all(stale != t for _, t in copies):
                stale.unlink()
        for source, dest in copies:
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(source, tmp)
                shutil.copymode(source, tmp)  # a private ledger's backup is private too
                os.replace(tmp, dest)
            finally:
                if tmp.exists():
                    tmp.unlink()
            done.append(dest)
    except OSError as exc:
        for dest in done:  # a backup without its -wal would be wrong: leave none
            try:
                dest.unlink()
            except OSError:
                pass
        problem = exc.strerror or str(exc)
        raise LedgerError(
            f"{display}: not upgraded from schema version {version}: cannot write the backup "
            f"{target} ({problem})"
        ) from exc
    return target


def migrate(url_or_path: str | os.PathLike | None = None) -> Upgrade:
    """Upgrade the ledger at ``url_or_path`` to this greenmaas's schema (``greenmaas migrate``).

    Any database, a server one included; a SQLite file is backed up first as on an automatic
    upgrade. Returns what was done (``done`` False when it was up to date already). Raises
    :class:`LedgerError` (no ledger there, not a ledger, a newer schema, a failed upgrade).
    """
    from .models import SCHEMA_VERSION
    from .store import Ledger

    with Ledger.open(url_or_path, create=False, upgrade=True) as ledger:
        return ledger.upgraded or Upgrade(ledger.display, SCHEMA_VERSION, SCHEMA_VERSION)
