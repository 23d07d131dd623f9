"""The ledger: one SQLite file (or any SQLAlchemy database) holding runs, spans, samples and totals.

:meth:`Ledger.open` refuses, with a :class:`~greenmaas.errors.LedgerError` naming the path and the
problem, anything that is not a greenmaas ledger it can use: a missing file when reading, a text
file, a truncated or corrupt file, another application's database, a ledger written by a newer
greenmaas. Refusing changes nothing: tables are only created in an empty database, and SQLite's
WAL mode is only switched on once the file is known to be ours.

SQLite connections run in WAL mode (readers never wait for the writer), with a busy timeout and
foreign keys on. Every SQLAlchemy or driver error is translated into ``LedgerError`` in one place,
:meth:`Ledger._translate`, and re-raised ``from`` the original. All values travel as bound
parameters.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import threading
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError, GreenmaasError, LedgerError
from ..records import RUN_STATUSES, DeviceTotals, RunRecord, SampleRecord, SpanRecord
from ..sources.base import UNMEASURABLE
from .models import (
    APPLICATION,
    SCHEMA_VERSION,
    Base,
    DeviceTotal,
    Meta,
    Run,
    Sample,
    Span,
    SpanDevice,
)

__all__ = [
    "Ledger",
    "DEFAULT_PATH",
    "ENV_LEDGER",
    "ENV_TENANT_KEY",
    "BUSY_TIMEOUT_MS",
    "resolve_target",
]

#: Where the ledger lives when neither an argument nor ``$GREENMAAS_LEDGER`` says.
DEFAULT_PATH = "greenmaas.db"
ENV_LEDGER = "GREENMAAS_LEDGER"
#: Secret for tenant pseudonyms; when unset, a random salt stored in the ledger is used.
ENV_TENANT_KEY = "GREENMAAS_TENANT_KEY"
BUSY_TIMEOUT_MS = 5000

_SQLITE_MAGIC = b"SQLite format 3\x00"
# PRAGMA takes no bound parameters; this is built once from our own integer constant.
_BUSY_PRAGMA = f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}"
_PSEUDONYM = re.compile(r"t-[0-9a-f]{16}")
_TABLES = frozenset(Base.metadata.tables)

#: A record the ledger knows how to write, or a callable ``fn(ledger)`` run in the same transaction.
Writable = SpanRecord | SampleRecord | DeviceTotals | RunRecord | Callable[["Ledger"], Any]


def resolve_target(url_or_path: str | os.PathLike | None = None) -> str | os.PathLike:
    """What ``Ledger.open`` opens: the argument, else ``$GREENMAAS_LEDGER``, else ``./greenmaas.db``."""
    if url_or_path is None or url_or_path == "":
        return os.environ.get(ENV_LEDGER) or DEFAULT_PATH
    return url_or_path


def _json_dumps(value: Any) -> str:
    # Attributes come from user code: never let an odd value (numpy scalar, Path) fail a batch.
    return json.dumps(value, default=str, separators=(",", ":"))


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip() or type(orig).__name__
    return text.splitlines()[0]


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _sqlite_file_problem(path: Path) -> str | None:
    """Why the existing file at ``path`` cannot be a SQLite database, or None if it may be one.

    Reads the 100-byte header only; an empty file is a valid (empty) database.
    """
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        header = f.read(100)
    if not header.startswith(_SQLITE_MAGIC):
        return "not a greenmaas ledger (not a SQLite database)"
    if len(header) < 100:
        return "truncated or corrupt SQLite file (incomplete header)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    # The in-header page count is only valid when the two change counters agree.
    if header[24:28] == header[92:96] and pages and size < pages * page_size:
        return f"truncated or corrupt SQLite file ({size} bytes, header says {pages * page_size})"
    return None


class Ledger:
    """A greenmaas ledger. Open it with :meth:`Ledger.open`; close it (or use ``with``) when done.

    Safe to share between threads: each write runs in its own transaction on a pooled connection.
    """

    def __init__(self, engine, *, display: str, path: Path | None, readonly: bool):
        # Use Ledger.open(); this only wires an engine that has already been validated.
        from sqlalchemy.pool import StaticPool

        self._engine = engine
        self._write_engine = engine.execution_options(greenmaas_write=True)
        self.display = display
        self.path = path
        self.readonly = readonly
        self._closed = False
        self._local = threading.local()
        self._tenant_key: bytes | None = None
        # One shared connection (in-memory SQLite) must not run two transactions at once.
        self._lock = threading.RLock() if isinstance(engine.pool, StaticPool) else nullcontext()

    # ----------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        url_or_path: str | os.PathLike | None = None,
        *,
        create: bool = True,
        readonly: bool = False,
    ) -> Ledger:
        """Open (and, when ``create`` and not ``readonly``, create) a ledger.

        ``url_or_path`` is a filesystem path or a SQLAlchemy URL (``sqlite:///x.db``,
        ``postgresql+psycopg://...``); None means ``$GREENMAAS_LEDGER`` or ``./greenmaas.db``.
        ``readonly`` never creates or writes anything. Raises :class:`LedgerError`.
        """
        from sqlalchemy import create_engine, event
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError
        from sqlalchemy.pool import StaticPool

        target = resolve_target(url_or_path)
        create = create and not readonly
        path: Path | None = None
        if isinstance(target, str) and "://" in target:
            try:
                url = make_url(target)
            except ArgumentError as exc:
                raise LedgerError(f"{target}: not a valid database URL") from exc
            display = url.render_as_string(hide_password=True)
            if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
                path = Path(url.database).expanduser()
        else:
            path = Path(os.fspath(target)).expanduser()
            display = str(target)
            url = make_url("sqlite+pysqlite://").set(database=str(path.absolute()))

        if path is not None:
            if not path.exists():
                if not create:
                    raise LedgerError(f"no ledger at {display}")
                if not path.absolute().parent.is_dir():
                    raise LedgerError(f"{display}: directory {path.absolute().parent} does not exist")
            elif path.is_dir():
                raise LedgerError(f"{display}: is a directory, not a greenmaas ledger")
            else:
                try:
                    problem = _sqlite_file_problem(path)
                except OSError as exc:
                    raise LedgerError(f"{display}: cannot read ({exc.strerror or exc})") from exc
                if problem:
                    raise LedgerError(f"{display}: {problem}")

        is_sqlite = url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps}
        if is_sqlite and path is None:
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        try:
            engine = create_engine(url, **kwargs)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise LedgerError(f"{display}: cannot open ({_first_line(exc)})") from exc

        if is_sqlite:

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_conn, _record):
                # We issue BEGIN ourselves (below) so that transactions mean what they say.
                dbapi_conn.isolation_level = None
                cur = dbapi_conn.cursor()
                cur.execute(_BUSY_PRAGMA)
                cur.execute("PRAGMA foreign_keys = ON")
                cur.execute("PRAGMA synchronous = NORMAL")
                if readonly:
                    cur.execute("PRAGMA query_only = ON")
                cur.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn):
                # Writers take the write lock up front: a deferred transaction that reads first
                # cannot wait for the lock later and fails with "database is locked".
                write = conn.get_execution_options().get("greenmaas_write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        ledger = cls(engine, display=display, path=path, readonly=readonly)
        try:
            ledger._validate(create=create)
            if is_sqlite and path is not None and not readonly:
                with ledger._translate():
                    raw = engine.raw_connection()
                    try:
                        raw.cursor().execute("PRAGMA journal_mode = WAL")
                    finally:
                        raw.close()
        except BaseException:
            engine.dispose()
            raise
        return ledger

    def _validate(self, *, create: bool) -> None:
        """Check this is a greenmaas ledger of a schema we know; initialise it if empty."""
        from sqlalchemy import inspect, select

        def state(conn) -> tuple[set[str], dict[str, str] | None]:
            tables = set(inspect(conn).get_table_names())
            if "meta" not in tables:
                return tables, None
            rows = conn.execute(select(Meta.key, Meta.value)).all()
            return tables, {k: v for k, v in rows}

        with self._translate("cannot be read as a greenmaas ledger"), self._engine.connect() as conn:
            tables, meta = state(conn)

        if not tables:
            if not create:
                raise LedgerError(f"{self.display}: empty database, not a greenmaas ledger")
            with self._translate(), self._write_engine.begin() as conn:
                tables, meta = state(conn)  # another process may have won the race
                if not tables:
                    Base.metadata.create_all(conn)
                    now = datetime.now(timezone.utc).isoformat()
                    from .. import __version__

                    meta = {
                        "application": APPLICATION,
                        "schema_version": str(SCHEMA_VERSION),
                        "created_at": now,
                        "greenmaas_version": __version__,
                        "tenant_salt": secrets.token_hex(32),
                    }
                    conn.execute(
                        Meta.__table__.insert(), [{"key": k, "value": v} for k, v in meta.items()]
                    )
                    tables = set(_TABLES)

        if meta is None or meta.get("application") != APPLICATION:
            others = ", ".join(sorted(tables)[:5])
            raise LedgerError(f"{self.display}: not a greenmaas ledger (has tables {others})")
        version = meta.get("schema_version", "")
        if not version.isdigit():
            raise LedgerError(f"{self.display}: unknown ledger schema version {version!r}")
        if int(version) > SCHEMA_VERSION:
            raise LedgerError(
                f"{self.display}: ledger schema version {version} is newer than this greenmaas "
                f"supports ({SCHEMA_VERSION}); upgrade greenmaas"
            )
        if int(version) < SCHEMA_VERSION:
            raise LedgerError(
                f"{self.display}: ledger schema version {version} is older than {SCHEMA_VERSION} "
                "and cannot be migrated"
            )
        missing = _TABLES - tables
        if missing:
            raise LedgerError(
                f"{self.display}: damaged greenmaas ledger (missing tables {', '.join(sorted(missing))})"
            )

    # ------------------------------------------------------------------- transactions & errors

    @contextmanager
    def _translate(self, doing: str | None = None) -> Iterator[None]:
        """The one place where database errors become :class:`LedgerError`: one line, naming the
        ledger, ``doing`` (what failed) and the driver's message."""
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except GreenmaasError:
            raise
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            problem = getattr(exc, "strerror", None) or _first_line(exc)
            message = f"{doing} ({problem})" if doing else problem
            raise LedgerError(f"{self.display}: {message}") from exc

    def _check_open(self, *, write: bool) -> None:
        if self._closed:
            raise LedgerError(f"{self.display}: ledger is closed")
        if write and self.readonly:
            raise LedgerError(f"{self.display}: ledger was opened read-only")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes into one transaction: all of them are stored, or none.

        Nested uses (and the write methods called inside) join the outer transaction.
        """
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        self._check_open(write=True)
        with self._lock, self._translate(), self._write_engine.begin() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def _writing(self) -> Iterator[Any]:
        with self.transaction():
            yield self._local.conn

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A SQLAlchemy ``Connection`` for reading, with errors translated to ``LedgerError``."""
        self._check_open(write=False)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            with self._translate():
                yield conn
            return
        with self._lock, self._translate(), self._engine.connect() as conn:
            yield conn

    @property
    def engine(self):
        """The SQLAlchemy engine (for ad-hoc queries; prefer :meth:`read`)."""
        return self._engine

    # ----------------------------------------------------------------------------- writing

    def start_run(self, run: RunRecord) -> None:
        """Record the start of a run."""
        from .. import __version__

        row = {
            "run_id": run.run_id,
            "host": run.host,
            "pid": _int(run.pid),
            "start": run.start,
            "end": run.end,
            "status": run.status,
            "config": dict(run.config),
            "devices": list(run.devices),
            "greenmaas_version": __version__,
        }
        with self._writing() as conn:
            conn.execute(Run.__table__.insert(), [row])

    def end_run(self, run_id: str, end: datetime, status: str = "finished") -> None:
        """Record how and when a run ended (``finished``, ``interrupted`` or ``failed``)."""
        from sqlalchemy import update

        if status not in RUN_STATUSES:
            raise ConfigError(f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
        with self._writing() as conn:
            result = conn.execute(
                update(Run).where(Run.run_id == run_id).values(end=end, status=status)
            )
            if result.rowcount == 0:
                raise LedgerError(f"{self.display}: no run {run_id!r}")

    def write_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Store spans and their per-device energy. Raw tenant names are pseudonymised first."""
        if not spans:
            return
        with self._writing() as conn:
            span_rows = [self._span_row(s) for s in spans]
            device_rows = [_device_row(s.span_id, d) for s in spans for d in s.devices]
            conn.execute(Span.__table__.insert(), span_rows)
            if device_rows:
                conn.execute(SpanDevice.__table__.insert(), device_rows)

    def write_samples(self, samples: Sequence[SampleRecord]) -> None:
        """Store points of devices' cumulative-energy curves."""
        if not samples:
            return
        rows = [
            {
                "run_id": s.run_id,
                "device": s.device,
                "t": s.t,
                "energy_j": _num(s.energy_j),
                "power_w": _num(s.power_w),
                "method": s.method,
            }
            for s in samples
        ]
        with self._writing() as conn:
            conn.execute(Sample.__table__.insert(), rows)

    def write_device_totals(self, totals: Sequence[DeviceTotals]) -> None:
        """Store per-device consumed / attributed / idle energy, one row per attribution window."""
        if not totals:
            return
        rows = [
            {
                "run_id": d.run_id,
                "device": d.device,
                "method": d.method,
                "start": d.start,
                "end": d.end,
                "total_j": _num(d.total_j),
                "attributed_j": _num(d.attributed_j),
                "idle_j": _num(d.idle_j),
                "gap_s": _num(d.gap_s) or 0.0,
                "idle_s": _num(d.idle_s) or 0.0,
            }
            for d in totals
        ]
        with self._writing() as conn:
            conn.execute(DeviceTotal.__table__.insert(), rows)

    def write(self, records: Iterable[Writable]) -> None:
        """Write a mix of records (and callables ``fn(ledger)``) in order, in one transaction."""
        writers = {
            SpanRecord: self.write_spans,
            SampleRecord: self.write_samples,
            DeviceTotals: self.write_device_totals,
        }
        with self.transaction():
            kind, group = None, []
            for rec in list(records) + [None]:
                rec_kind = type(rec)
                if group and rec_kind is not kind:
                    writers[kind](group)
                    group = []
                if rec is None:
                    break
                if rec_kind in writers:
                    kind = rec_kind
                    group.append(rec)
                elif isinstance(rec, RunRecord):
                    self.start_run(rec)
                elif callable(rec):
                    rec(self)
                else:
                    raise ConfigError(f"the ledger cannot store a {rec_kind.__name__}")

    # ----------------------------------------------------------------------------- tenants

    def pseudonymise(self, tenant: str) -> str:
        """A stable pseudonym ``t-<16 hex>`` for a tenant; the raw identity is never stored.

        HMAC-SHA256 keyed by ``$GREENMAAS_TENANT_KEY`` when set, else by a random salt kept in the
        ledger (so pseudonyms are stable within one ledger and unlinkable across ledgers).
        """
        digest = hmac.new(self._key(), str(tenant).encode("utf-8"), hashlib.sha256).hexdigest()
        return "t-" + digest[:16]

    def _key(self) -> bytes:
        if self._tenant_key is None:
            env = os.environ.get(ENV_TENANT_KEY)
            if env:
                self._tenant_key = env.encode("utf-8")
            else:
                self._tenant_key = bytes.fromhex(self._salt())
        return self._tenant_key

    def _salt(self) -> str:
        from sqlalchemy import select

        query = select(Meta.value).where(Meta.key == "tenant_salt")
        with self.read() as conn:
            salt = conn.execute(query).scalar_one_or_none()
        if salt is None:
            with self._writing() as conn:
                salt = conn.execute(query).scalar_one_or_none()
                if salt is None:
                    salt = secrets.token_hex(32)
                    conn.execute(Meta.__table__.insert(), [{"key": "tenant_salt", "value": salt}])
        return salt

    def _span_row(self, s: SpanRecord) -> dict[str, Any]:
        measured = any(d.method != UNMEASURABLE for d in s.devices)
        tenant = s.tenant
        if tenant is not None and not _PSEUDONYM.fullmatch(tenant):
            tenant = self.pseudonymise(tenant)
        return {
            "span_id": s.span_id,
            "run_id": s.run_id,
            "parent_id": s.parent_id,
            "kind": s.kind,
            "name": s.name,
            "model": s.model,
            "phase": s.phase,
            "request_id": s.request_id,
            "tenant": tenant,
            "start": s.start,
            "end": s.end,
            "duration_s": _num(s.duration_s),
            "weight": _num(s.weight),
            "tokens_in": _int(s.tokens_in),
            "tokens_out": _int(s.tokens_out),
            "items": _int(s.items),
            "status": s.status,
            "attrs": dict(s.attrs),
            "energy_j": _num(s.energy_j) if measured else None,
            "self_energy_j": _num(s.self_energy_j) if measured else None,
            "method": s.method,
            "carbon_g": _num(s.carbon_g),
            "carbon_market_g": _num(s.carbon_market_g),
            "cost": _num(s.cost),
            "currency": s.currency,
        }

    # ----------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Release connections (SQLite checkpoints its WAL). Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "readwrite"
        return f"<Ledger {self.display} {mode}{' closed' if self._closed else ''}>"


def _device_row(span_id: str, d) -> dict[str, Any]:
    measured = d.method != UNMEASURABLE
    return {
        "span_id": span_id,
        "device": d.device,
        "energy_j": _num(d.energy_j) if measured else None,
        "self_j": _num(d.self_j) if measured else None,
        "method": d.method,
        "gap_s": _num(d.gap_s) or 0.0,
        "self_device_s": _num(d.self_device_s) or 0.0,
    }
