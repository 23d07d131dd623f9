"""Upgrading a ledger written by an older greenmaas to this one's schema, in place, with Alembic.

The revisions live in the package (``greenmaas/ledger/alembic/versions``), one per schema
version: revision ``schema<N>`` takes a ledger to ``meta.schema_version`` N. greenmaas runs them
itself, through :mod:`alembic.command`, on the connection of one transaction that also stamps
Alembic's version table (``alembic_version``) and sets ``meta.schema_version``: a ledger is
upgraded completely or not at all. No ``alembic.ini`` is needed.

Two records of the version, kept equal: ``meta.schema_version``, which every greenmaas reads
(an older one refuses a newer ledger by it), and Alembic's stamp. Ledgers made before the stamp
existed have ``meta`` only; their version is read from it, and they are stamped to it (in the
upgrade's transaction) before the first revision runs. New ledgers are created from the models
and stamped with the newest revision.

When a ledger is upgraded (see :meth:`greenmaas.ledger.Ledger.open`):

* a SQLite file, automatically when opened for writing, after copying it (checkpointed first)
  to ``<name>.schema<N>.bak`` beside it, file mode kept; when that copy cannot be written nothing
  is upgraded;
* a server database (PostgreSQL), only by ``greenmaas migrate --ledger URL`` (:func:`migrate`):
  back it up first, with the database's own tools;
* never by a read-only open, which refuses an older ledger, naming ``greenmaas migrate``.

``$GREENMAAS_AUTO_UPGRADE`` changes the default of the second point: ``0`` turns automatic
upgrades off for SQLite files too, ``1`` turns them on for server databases as well.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, LedgerError

__all__ = [
    "TABLES_AT",
    "VERSION_TABLE",
    "SCRIPT_LOCATION",
    "ENV_AUTO_UPGRADE",
    "Upgrade",
    "revisions",
    "revision_of",
    "version_of",
    "stored_version",
    "read_stamps",
    "auto_upgrade",
    "stamp",
    "upgrade",
    "backup_path",
    "backup_sqlite",
    "migrate",
]

#: The tables each schema version has (a damaged ledger is refused before anything is changed).
TABLES_AT: dict[int, frozenset[str]] = {
    1: frozenset({"meta", "runs", "spans", "span_devices", "samples", "device_totals"}),
}
#: Alembic's version table in a ledger (Alembic's default name).
VERSION_TABLE = "alembic_version"
#: The Alembic environment shipped with the package: ``env.py`` and ``versions/``.
SCRIPT_LOCATION = Path(__file__).with_name("alembic")
#: ``0`` / ``1``: whether opening a ledger for writing upgrades it (default: SQLite files only).
ENV_AUTO_UPGRADE = "GREENMAAS_AUTO_UPGRADE"

_REVISION = re.compile(r"schema([0-9]+)")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


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


# ------------------------------------------------------------------------------ versions

def revision_of(version: int) -> str:
    """The Alembic revision that brings a ledger to schema ``version``: ``schema<N>``."""
    return f"schema{int(version)}"


def version_of(revision: str) -> int | None:
    """The schema version revision ``schema<N>`` stands for, or None for any other text."""
    match = _REVISION.fullmatch(revision.strip())
    return int(match.group(1)) if match else None


@lru_cache(maxsize=1)
def revisions() -> dict[int, str]:
    """``{schema version: revision id}`` of the revisions shipped, checked to form one chain
    ``schema1 -> schema2 -> ...`` whose head is :data:`~greenmaas.ledger.models.SCHEMA_VERSION`."""
    from .models import SCHEMA_VERSION

    script = _script()
    out: dict[int, str] = {}
    for rev in script.walk_revisions():
        declared = getattr(rev.module, "schema_version", None)
        if not isinstance(declared, int) or declared != version_of(rev.revision) or declared in out:
            raise LedgerError(f"ledger migration {rev.revision}: declares schema version {declared!r}")
        expected_down = None if declared == 1 else revision_of(declared - 1)
        if rev.down_revision != expected_down:
            raise LedgerError(f"ledger migration {rev.revision}: revises {rev.down_revision!r}, not {expected_down!r}")
        out[declared] = rev.revision
    if script.get_heads() != [revision_of(SCHEMA_VERSION)]:
        raise LedgerError(f"ledger migrations end at {script.get_heads()}, not schema {SCHEMA_VERSION}")
    return dict(sorted(out.items()))


def stored_version(display: str, meta: Mapping[str, str], stamps: list[str] | None) -> int:
    """The schema version of a ledger from its ``meta`` rows and Alembic stamps (None: no version
    table). Raises :class:`LedgerError` naming the ledger for a version this greenmaas does not
    know (newer: "upgrade greenmaas"), or when the two records disagree."""
    from .models import SCHEMA_VERSION

    text = meta.get("schema_version", "")
    if not text.isdigit():
        raise LedgerError(f"{display}: unknown ledger schema version {text!r}")
    version = int(text)
    stamped = None
    if stamps is not None and stamps:
        if len(stamps) > 1:
            raise LedgerError(f"{display}: damaged greenmaas ledger (several {VERSION_TABLE} stamps: "
                              f"{', '.join(sorted(stamps))})")
        stamped = version_of(stamps[0])
        if stamped is None:
            raise LedgerError(f"{display}: unknown ledger schema revision {stamps[0]!r}")
    newest = max(version, stamped or 0)
    if newest > SCHEMA_VERSION:
        raise LedgerError(
            f"{display}: ledger schema version {newest} is newer than this greenmaas "
            f"supports ({SCHEMA_VERSION}); upgrade greenmaas"
        )
    if stamps and stamped is not None and stamped != version:
        raise LedgerError(f"{display}: damaged greenmaas ledger (meta says schema version {version}, "
                          f"{VERSION_TABLE} says {stamps[0]})")
    return version


def read_stamps(conn) -> list[str]:
    """The revisions in the ledger's Alembic version table (which must exist)."""
    from sqlalchemy import Column, MetaData, String, Table, select

    table = Table(VERSION_TABLE, MetaData(), Column("version_num", String(32)))
    return [row[0] for row in conn.execute(select(table.c.version_num))]


def auto_upgrade(sqlite_file: bool, environ: Mapping[str, str] | None = None) -> bool:
    """Whether opening for writing upgrades an older ledger when the caller did not say:
    ``$GREENMAAS_AUTO_UPGRADE`` (``1``/``0``) if set, else yes for a SQLite file, no for a server
    database. Raises :class:`ConfigError` for another value."""
    raw = (os.environ if environ is None else environ).get(ENV_AUTO_UPGRADE, "").strip().lower()
    if not raw:
        return sqlite_file
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{ENV_AUTO_UPGRADE}={raw!r}: expected 1 or 0")


# ------------------------------------------------------------------------------ running

def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(SCRIPT_LOCATION))


def _config(conn) -> Any:
    import io

    from alembic.config import Config

    # Alembic's default output is the sys.stdout of when alembic was imported; a library prints
    # nothing, and that stream may be closed by now.
    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = conn
    return config


def stamp(conn, version: int) -> None:
    """Stamp the ledger on ``conn`` as being at schema ``version`` (creating Alembic's version
    table), in ``conn``'s transaction. Runs no revision."""
    from alembic import command

    command.stamp(_config(conn), revisions()[version], purge=True)


def upgrade(conn, from_version: int, to_version: int) -> None:
    """Run every revision from ``from_version`` to ``to_version`` on ``conn`` (stamping a ledger
    made before stamps first), then set ``meta.schema_version``; the caller's transaction makes it
    all or nothing."""
    from alembic import command
    from sqlalchemy import inspect, update

    from .models import Meta

    known = revisions()
    if from_version not in known or to_version not in known:
        raise LedgerError(f"no upgrade from ledger schema version {from_version} to {to_version}")
    if VERSION_TABLE not in inspect(conn).get_table_names() or not read_stamps(conn):
        stamp(conn, from_version)  # made before stamps: its meta version is where the chain starts
    command.upgrade(_config(conn), known[to_version])
    conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(to_version)))

# ------------------------------------------------------------------------------ backups

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
