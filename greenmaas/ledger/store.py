"""The ledger: one SQLite file (or any SQLAlchemy database) holding runs, spans, samples and totals.

:meth:`Ledger.open` refuses, with a :class:`~greenmaas.errors.LedgerError` naming the path and the
problem, anything that is not a greenmaas ledger it can use: a missing file when reading, a text
file, a truncated or corrupt file, another application's database, a ledger written by a newer
greenmaas. Refusing changes nothing: tables are only created in an empty database, and SQLite's
WAL mode is only switched on once the file is known to be ours. A ledger of an older schema is
upgraded in place (a SQLite file automatically, after a backup; a server database only when asked:
see :mod:`greenmaas.ledger.migrations`).

SQLite connections run in WAL mode (readers never wait for the writer), with a busy timeout and
foreign keys on. Every SQLAlchemy or driver error is translated into ``LedgerError`` in one place,
:meth:`Ledger._translate`, and re-raised ``from`` the original. All values travel as bound
parameters. Spans, reads, samples and totals, written in bulk, go through INSERTs compiled once per
dialect with values the ledger converts itself (see "fast inserts" below); they store exactly
what SQLAlchemy's typed inserts store.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import sqlite3
import sys
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import ConfigError, GreenmaasError, LedgerError
from ..records import RUN_STATUSES, DeviceTotals, ReadRecord, RunRecord, SampleRecord, SpanRecord
from ..sources.base import UNMEASURABLE, weakest_method
from . import migrations
from .keys import ENV_TENANT_KEY, tenant_key
from .summary import Summariser
from .models import (
    APPLICATION,
    SCHEMA_VERSION,
    Base,
    DeviceTotal,
    Meta,
    Read,
    Run,
    Sample,
    Span,
    SpanDevice,
    UTCDateTime,
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
BUSY_TIMEOUT_MS = 5000

_SQLITE_MAGIC = b"SQLite format 3\x00"
# PRAGMA takes no bound parameters; this is built once from our own integer constant.
_BUSY_PRAGMA = f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}"


def _wal(raw: Any) -> None:
    """Switch a SQLite file to WAL. The switch needs the file to itself for a moment and, unlike
    other statements, does not wait for it: several processes opening one new ledger at once
    (the ranks of a job) retry until the busy timeout, and stop once any of them has switched it."""
    import sqlite3
    import time

    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000.0
    while True:
        try:
            raw.cursor().execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            try:
                mode = raw.cursor().execute("PRAGMA journal_mode").fetchone()
            except sqlite3.OperationalError:
                mode = None
            if mode is not None and str(mode[0]).lower() == "wal":
                return
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
_PSEUDONYM = re.compile(r"t-[0-9a-f]{16}")
_TABLES = frozenset(Base.metadata.tables)
#: Entries kept by each in-memory cache (tenant pseudonyms, time prefixes) before it starts afresh.
_CACHE_SIZE = 4096

#: A record the ledger knows how to write, or a callable ``fn(ledger)`` run in the same transaction.
Writable = SpanRecord | ReadRecord | SampleRecord | DeviceTotals | RunRecord | Callable[["Ledger"], Any]

logger = logging.getLogger("greenmaas")


def resolve_target(url_or_path: str | os.PathLike | None = None) -> str | os.PathLike:
    """What ``Ledger.open`` opens: the argument, else ``$GREENMAAS_LEDGER``, else ``./greenmaas.db``."""
    if url_or_path is None or url_or_path == "":
        return os.environ.get(ENV_LEDGER) or DEFAULT_PATH
    return url_or_path


# Attributes come from user code: never let an odd value (numpy scalar, Path) fail a batch.
# Built once: ``json.dumps`` with these options would build a new encoder for every value.
_JSON_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))


def _json_dumps(value: Any) -> str:
    """``json.dumps(value, default=str, separators=(",", ":"))``: the ledger's JSON text."""
    return _JSON_ENCODER.encode(value)


_STRICT_JSON_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"), allow_nan=False)


def _json_dumps_strict(value: Any) -> str:
    """The ledger's JSON text for a server database, which takes strict JSON only: NaN and
    infinities (a loss of NaN in a span's attributes) become null rather than the row being
    refused. SQLite keeps them (``_json_dumps``)."""
    try:
        return _STRICT_JSON_ENCODER.encode(value)
    except ValueError:  # a non-finite float (or a circular value, which fails again below)
        return _STRICT_JSON_ENCODER.encode(_finite(value))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float in its dicts, lists and tuples replaced by None."""
    if isinstance(value, float):
        return value if value - value == 0.0 else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip() or type(orig).__name__
    return text.splitlines()[0]


def _num(value: Any, null: Any = None) -> float | None:
    """A float, or ``null`` for None and NaN."""
    if value is None:
        return null
    value = float(value)
    return value if value == value else null  # NaN is the one float not equal to itself


def _int(value: Any, null: Any = None) -> int | None:
    return null if value is None else int(value)


#: The PostgreSQL advisory lock (one per database) under which a ledger is created or upgraded.
_PG_SETUP_LOCK = int.from_bytes(hashlib.sha256(b"greenmaas ledger setup").digest()[:8], "big", signed=True)


def _lock_for_setup(conn) -> None:
    """Make processes that create or upgrade the ledger at once take turns, in ``conn``'s
    transaction. SQLite's ``BEGIN IMMEDIATE`` does so already; PostgreSQL's DDL does not (hosts
    opening an empty database together would each create the tables, and all but one fail)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy import func, select

        conn.execute(select(func.pg_advisory_xact_lock(_PG_SETUP_LOCK)))


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


# ------------------------------------------------------------------------------- fast inserts
#
# Spans, their devices, reads, samples and totals are written in bulk from the writer thread, which
# shares the interpreter lock with the user's code. SQLAlchemy's typed ``insert()`` spends most of
# its time binding each row (a dict per row, a type processor per value), so these tables are
# written by an INSERT compiled once per dialect (bound parameters only), executed with rows of
# values already in the form the typed path hands the driver: UTC times as SQLite stores them
# (naive UTC text) or as the other dialects' own processors make them, JSON as the text of the
# engine's serializer, floats, ints. ``tests/ledger/test_fast_insert.py`` checks that what is
# stored is what the typed path stores.

_UTC = timezone.utc
#: Most rows per multi-row INSERT on SQLite, and the parameters per statement every SQLite allows.
_ROWS_PER_INSERT = 100
_SQLITE_MAX_PARAMS = 999
#: How NULL reaches SQLite. The sqlite3 module before Python 3.12 binds None by way of its adapter
#: lookup, which raises and clears an AttributeError every time (~0.4 µs, and a span has up to
#: 16 NULLs). There, nullable columns are bound as ``NULLIF(?, x'<mark>')`` and NULL travels as a
#: bytearray holding the mark, which binds at once and which the statement turns back into NULL.
#: Only a value of exactly these 16 bytes could be mistaken for NULL; greenmaas columns hold text
#: and numbers.
_SQLITE_NULL_MARK = b"\x00greenmaas:NULL\x00"
_SQLITE_NULL: bytearray | None = (
    bytearray(_SQLITE_NULL_MARK) if sys.version_info < (3, 12) else None
)
# Built once from our own constant, like _BUSY_PRAGMA: no value ever goes into SQL text.
_SQLITE_NULL_SQL = f"x'{_SQLITE_NULL_MARK.hex()}'"

#: Column order of the rows built below; it must be the order the compiled INSERT binds.
_SPAN_COLUMNS = (
    "span_id", "run_id", "parent_id", "kind", "name", "model", "phase", "request_id", "tenant",
    "start", "end", "duration_s", "weight", "tokens_in", "tokens_out", "items", "status", "attrs",
    "energy_j", "self_energy_j", "method", "carbon_g", "carbon_market_g", "cost", "currency",
    "start_mono", "end_mono", "link_id", "uncertainty_j", "count",
)  # fmt: skip
_SPAN_DEVICE_COLUMNS = (
    "span_id", "device", "energy_j", "self_j", "method", "gap_s", "self_device_s", "uncertainty_j",
)  # fmt: skip
_READ_COLUMNS = (
    "run_id", "device", "t_mono", "energy_j", "power_w", "max_energy_j", "error", "t_start_mono",
)  # fmt: skip
_SAMPLE_COLUMNS = ("run_id", "device", "t", "energy_j", "power_w", "method")
_DEVICE_TOTAL_COLUMNS = (
    "run_id", "device", "method", "start", "end", "total_j", "attributed_j", "idle_j", "gap_s",
    "idle_s", "uncertainty_j",
)  # fmt: skip
_FAST_TABLES = {
    Span.__tablename__: _SPAN_COLUMNS,
    SpanDevice.__tablename__: _SPAN_DEVICE_COLUMNS,
    Read.__tablename__: _READ_COLUMNS,
    Sample.__tablename__: _SAMPLE_COLUMNS,
    DeviceTotal.__tablename__: _DEVICE_TOTAL_COLUMNS,
}


def _bind_failed(exc: Exception):
    """What SQLAlchemy raises when a value cannot be bound (so it becomes a LedgerError)."""
    from sqlalchemy.exc import StatementError

    name = f"{type(exc).__module__}.{type(exc).__name__}"
    return StatementError(f"({name}) {exc}", None, None, exc)


def _guarded(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` (a typed bind processor), failing the way it fails inside SQLAlchemy."""

    def bind(value: Any) -> Any:
        try:
            return process(value)
        except Exception as exc:
            raise _bind_failed(exc) from exc

    return bind


@dataclass(frozen=True)
class _Insert:
    """One table's INSERT, compiled for one dialect. Rows are tuples in the table's
    ``_FAST_TABLES`` order; ``names`` (named paramstyles only) turns them into dicts, and
    ``procs`` are the dialect's bind processors the row builders do not already apply. Where
    ``per`` > 1, ``many_sql`` inserts ``per`` rows at once (a multi-row VALUES), in order."""

    sql: str
    names: tuple[str, ...] | None
    procs: tuple[tuple[int, Callable[[Any], Any]], ...]
    many_sql: str = ""
    per: int = 1

    def execute(self, conn, rows: list[Any]) -> None:
        """Insert ``rows`` (tuples), in order, as bound parameters."""
        if self.procs:
            rows = [self._process(row) for row in rows]
        if self.names is not None:
            names = self.names
            rows = [dict(zip(names, row)) for row in rows]
        per = self.per
        if per > 1 and len(rows) >= per:
            whole = len(rows) - len(rows) % per
            groups = [tuple(chain.from_iterable(rows[i : i + per])) for i in range(0, whole, per)]
            conn.exec_driver_sql(self.many_sql, groups)
            rows = rows[whole:]
        if rows:
            conn.exec_driver_sql(self.sql, rows)

    def _process(self, row: tuple) -> tuple:
        values = list(row)
        for i, process in self.procs:
            values[i] = process(values[i])
        return tuple(values)


class _FastInserts:
    """For one dialect: the compiled INSERTs, how times and JSON become driver values (``time``,
    ``json``), and what stands for NULL in a nullable column (``null``)."""

    def __init__(self, dialect):
        from sqlalchemy import JSON, Float

        self.dialect = dialect
        sqlite = dialect.name == "sqlite"
        self.null = _SQLITE_NULL if sqlite else None  # read when made: tests switch it
        processors = {}
        for name, columns in _FAST_TABLES.items():
            table = Base.metadata.tables[name]
            for key in columns:
                col_type = table.c[key].type
                process = col_type.dialect_impl(dialect).bind_processor(dialect)
                processors[name, key] = (col_type, process)
        time_process = processors["spans", "start"][1]
        json_process = processors["spans", "attrs"][1]
        if sqlite:
            self.time = _sqlite_time_factory(_guarded(time_process))
            self.json = _sqlite_json(dialect, json_process)
        else:
            self.time = _guarded(time_process) if time_process else (lambda v: v)
            self.json = _guarded(json_process) if json_process else (lambda v: v)
        self.inserts: dict[str, _Insert] = {}
        for name, columns in _FAST_TABLES.items():
            procs = []
            for i, key in enumerate(columns):
                col_type, process = processors[name, key]
                # Times and JSON are converted by the row builders (self.time, self.json); Float
                # values are already float or None (``_num``), all a Float processor would do.
                if process is None or isinstance(col_type, (UTCDateTime, JSON, Float)):
                    continue
                procs.append((i, _guarded(process)))
            self.inserts[name] = self._compile(Base.metadata.tables[name], columns, tuple(procs))

    def _compile(self, table, columns: tuple[str, ...], procs) -> _Insert:
        from sqlalchemy import bindparam, func, literal_column

        values: dict[str, Any] = {k: bindparam(k, type_=table.c[k].type) for k in columns}
        if self.null is not None:
            for k in columns:
                if table.c[k].nullable:
                    values[k] = func.nullif(values[k], literal_column(_SQLITE_NULL_SQL))
        compiled = table.insert().values(values).compile(dialect=self.dialect, for_executemany=True)
        sql = str(compiled)
        names = [compiled.escaped_bind_names.get(k, k) for k in columns]
        if compiled.positiontup is None:  # named parameters: rows go as dicts
            if set(compiled.binds) != set(columns):
                raise RuntimeError(f"{table.name}: unexpected parameters {sorted(compiled.binds)}")
            return _Insert(sql, tuple(names), procs)
        if list(compiled.positiontup) != names:
            raise RuntimeError(f"{table.name}: unexpected parameter order {compiled.positiontup}")
        if self.dialect.name != "sqlite":
            return _Insert(sql, None, procs)
        # SQLite runs a multi-row VALUES markedly faster than as many one-row INSERTs: the same
        # statement with its row of placeholders repeated, within the 999 parameters any SQLite
        # allows.
        head, _, row = sql.partition(" VALUES ")
        if not (row.startswith("(") and row.endswith(")") and row.count("?") == len(columns)):
            raise RuntimeError(f"{table.name}: unexpected INSERT {sql}")
        per = min(_ROWS_PER_INSERT, _SQLITE_MAX_PARAMS // len(columns))
        return _Insert(sql, None, procs, f"{head} VALUES {', '.join([row] * per)}", per)


_ZERO, _MINUTE = timedelta(0), timedelta(minutes=1)
_SECONDS = tuple("%02d." % i for i in range(60))
_DIGITS3 = tuple("%03d" % i for i in range(1000))


def _sqlite_time_factory(typed: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """UTC times as SQLite stores them: naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``.

    The common case (an aware ``datetime`` in ``timezone.utc``, as the meter makes them) is
    formatted here in SQLite DATETIME's format: the text up to the minute is kept from the last
    time in the same minute (a batch's times are close together), seconds and microseconds come
    from the difference. Anything else goes through the typed path's own processors
    (``UTCDateTime``, then SQLite's DATETIME).
    """
    # (the start of a minute, its text), kept as one: threads may share this
    last = [(datetime.min.replace(tzinfo=_UTC), "0001-01-01 00:00:")]

    def time(value: Any) -> Any:
        if type(value) is datetime and value.tzinfo is _UTC:
            minute, prefix = last[0]
            into = value - minute
            if not (_ZERO <= into < _MINUTE):
                minute = value.replace(second=0, microsecond=0)
                prefix = "%04d-%02d-%02d %02d:%02d:" % (
                    value.year, value.month, value.day, value.hour, value.minute
                )
                last[0] = (minute, prefix)
                into = value - minute
            us = into.microseconds
            return prefix + _SECONDS[into.seconds] + _DIGITS3[us // 1000] + _DIGITS3[us % 1000]
        if value is None:
            return None
        return typed(value)

    return time


def _sqlite_json(dialect, typed: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    """JSON as SQLite stores it: the text made by the engine's serializer (``_json_dumps``)."""
    if getattr(dialect, "_json_serializer", None) is not _json_dumps or typed is None:
        return _guarded(typed) if typed else (lambda v: v)
    slow = _guarded(typed)

    def to_json(value: Any) -> Any:
        if type(value) is dict:
            try:
                text = _flat_json(value)
            except Exception:  # let the typed path raise, as it would have
                text = None
            if text is not None:
                return text
        return slow(value)

    return to_json


_encode_str = json.encoder.encode_basestring_ascii  # what the encoder does to str (ensure_ascii)
_JSON_CONSTANTS = {None: "null", True: "true", False: "false"}


def _flat_json(value: dict) -> str | None:
    """``_json_dumps(value)`` for the usual span attributes (a flat dict of str keys to str, int,
    finite float, bool or None), built here without an encoder per call; None for anything else.

    Exact ``int`` and ``float`` format (``f"{v}"``) as ``repr``, which is what the encoder writes.
    """
    parts = []
    for k, v in value.items():
        if type(k) is not str:
            return None
        t = type(v)
        if t is str:
            parts.append(f"{_encode_str(k)}:{_encode_str(v)}")
        elif t is int or (t is float and v - v == 0.0):  # v - v is NaN for NaN and infinities
            parts.append(f"{_encode_str(k)}:{v}")
        elif v is None or t is bool:
            parts.append(f"{_encode_str(k)}:{_JSON_CONSTANTS[v]}")
        else:
            return None
    return "{" + ",".join(parts) + "}"


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
        self._pseudonyms: dict[str, str] = {}  # tenant -> pseudonym (see pseudonymise)
        self._tenants: dict[str, str] = {}  # tenant in a record -> as stored (_stored_tenant)
        self._fast_inserts: _FastInserts | None = None
        self._summaries = Summariser()  # the span summaries reports read (greenmaas.ledger.summary)
        #: What opening did to a ledger of an older schema (None: it was up to date, or new).
        self.upgraded: migrations.Upgrade | None = None
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
        upgrade: bool | None = None,
    ) -> Ledger:
        """Open (and, when ``create`` and not ``readonly``, create) a ledger.

        ``url_or_path`` is a filesystem path or a SQLAlchemy URL (``sqlite:///x.db``,
        ``postgresql+psycopg://...``); None means ``$GREENMAAS_LEDGER`` or ``./greenmaas.db``.
        ``readonly`` never creates or writes anything. A ledger of an older schema is upgraded in
        place (:mod:`~greenmaas.ledger.migrations`; :attr:`upgraded` says what was done): with
        ``upgrade`` None, a SQLite file only, after copying it to ``<name>.schema<N>.bak``; with
        True, any database (``greenmaas migrate``); with False, none. A read-only open refuses an
        older ledger. Raises :class:`LedgerError`.
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
                # Readable by this user only; SQLite gives its -wal and -shm the file's mode.
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                except FileExistsError:
                    pass  # another process made it meanwhile: it is theirs, mode and all
                except OSError as exc:
                    raise LedgerError(f"{display}: cannot create ({exc.strerror or exc})") from exc
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
        kwargs: dict[str, Any] = {"json_serializer": _json_dumps if is_sqlite else _json_dumps_strict}
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
            ledger._validate(create=create, upgrade=upgrade)
            if is_sqlite and path is not None and not readonly:
                with ledger._translate():
                    raw = engine.raw_connection()
                    try:
                        _wal(raw)
                    finally:
                        raw.close()
        except BaseException:
            engine.dispose()
            raise
        return ledger

    def _validate(self, *, create: bool, upgrade: bool | None = None) -> None:
        """Check this is a greenmaas ledger of a schema we know; initialise it if empty."""
        from sqlalchemy import inspect, select

        def state(conn) -> tuple[set[str], dict[str, str] | None, list[str] | None]:
            tables = set(inspect(conn).get_table_names())
            if "meta" not in tables:
                return tables, None, None
            rows = conn.execute(select(Meta.key, Meta.value)).all()
            # Alembic's stamp, where there is one (ledgers made before it have meta only).
            stamps = migrations.read_stamps(conn) if migrations.VERSION_TABLE in tables else None
            return tables, {k: v for k, v in rows}, stamps

        with self._translate("cannot be read as a greenmaas ledger"), self._engine.connect() as conn:
            tables, meta, stamps = state(conn)

        if not tables:
            if not create:
                raise LedgerError(f"{self.display}: empty database, not a greenmaas ledger")
            with self._translate(), self._write_engine.begin() as conn:
                _lock_for_setup(conn)
                tables, meta, stamps = state(conn)  # another process may have won the race
                if not tables:
                    Base.metadata.create_all(conn)
                    now = datetime.now(timezone.utc).isoformat()
                    from .. import __version__

                    meta = {
                        "application": APPLICATION,
                        "schema_version": str(SCHEMA_VERSION),
                        "created_at": now,
                        "greenmaas_version": __version__,
                    }
                    conn.execute(
                        Meta.__table__.insert(),
                        [{"key": k, "value": v} for k, v in meta.items()],
                    )
                    migrations.stamp(conn, SCHEMA_VERSION)
                    tables = set(_TABLES) | {migrations.VERSION_TABLE}
                    stamps = [migrations.revision_of(SCHEMA_VERSION)]

        if meta is None or meta.get("application") != APPLICATION:
            others = ", ".join(sorted(tables)[:5])
            raise LedgerError(f"{self.display}: not a greenmaas ledger (has tables {others})")
        version = migrations.stored_version(self.display, meta, stamps)
        if version < SCHEMA_VERSION:
            self._upgrade(version, tables, upgrade)
            tables |= _TABLES
        missing = _TABLES - tables
        if missing:
            raise LedgerError(
                f"{self.display}: damaged greenmaas ledger (missing tables {', '.join(sorted(missing))})"
            )

    def _upgrade(self, version: int, tables: set[str], upgrade: bool | None) -> None:
        """Upgrade this ledger from schema ``version`` in place, or refuse (see :meth:`open`)."""
        from sqlalchemy import inspect, select

        old = f"{self.display}: ledger schema version {version} is older than this greenmaas's ({SCHEMA_VERSION})"
        sqlite_file = self.path is not None
        if sqlite_file:
            how = f"run `greenmaas migrate --ledger {self.display}` (a backup is kept)"
        else:
            how = "back it up, then run `greenmaas migrate --ledger URL`"
        if self.readonly:
            raise LedgerError(f"{old} and a read-only open does not upgrade it: {how}"
                              + (" or open it for writing" if sqlite_file else ""))
        if upgrade is False:
            raise LedgerError(f"{old} and this open may not upgrade it: {how}")
        if upgrade is None and not migrations.auto_upgrade(sqlite_file):
            if sqlite_file:
                raise LedgerError(f"{old} and automatic upgrades are off ({migrations.ENV_AUTO_UPGRADE}): {how}")
            raise LedgerError(f"{old} and a server database is not upgraded automatically: {how}")
        missing = migrations.TABLES_AT.get(version, frozenset()) - tables
        if missing:
            raise LedgerError(
                f"{self.display}: damaged greenmaas ledger (missing tables {', '.join(sorted(missing))})"
            )
        if sqlite_file:
            # Fold the WAL into the file, so the backup is (usually) that one file.
            with self._translate("cannot checkpoint before upgrading"):
                raw = self._engine.raw_connection()
                try:
                    raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    raw.close()
        with (
            self._translate(f"cannot upgrade from schema version {version}"),
            self._write_engine.begin() as conn,
        ):
            # Under the write lock: another process may have upgraded it meanwhile.
            _lock_for_setup(conn)
            meta = {k: v for k, v in conn.execute(select(Meta.key, Meta.value))}
            has_stamps = migrations.VERSION_TABLE in inspect(conn).get_table_names()
            stamps = migrations.read_stamps(conn) if has_stamps else None
            current = migrations.stored_version(self.display, meta, stamps)
            if current >= SCHEMA_VERSION:
                return
            backup = None
            if sqlite_file:
                assert self.path is not None
                backup = migrations.backup_sqlite(self.path, current, display=self.display)
            migrations.upgrade(conn, current, SCHEMA_VERSION)
        self.upgraded = migrations.Upgrade(self.display, current, SCHEMA_VERSION, backup)
        logger.info(
            "upgraded ledger %s from schema version %d to %d%s", self.display, current,
            SCHEMA_VERSION, f" (backup: {backup})" if backup else "",
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
        try:
            with self._lock, self._translate(), self._write_engine.begin() as conn:
                self._local.conn = conn
                try:
                    yield
                finally:
                    self._local.conn = None
        except BaseException:
            self._summaries.rollback()
            raise
        self._summaries.commit()

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
            "heartbeat": run.start,
        }
        with self._writing() as conn:
            conn.execute(Run.__table__.insert(), [row])
        self._summaries.start_run(run.run_id)

    def heartbeat(self, run_id: str, t: datetime) -> None:
        """Record that the run was alive at ``t`` (UTC): see :mod:`greenmaas.ledger.liveness`.
        Never moves a heartbeat back, and leaves an ended run alone."""
        from sqlalchemy import or_, update

        with self._writing() as conn:
            conn.execute(
                update(Run)
                .where(Run.run_id == run_id, Run.status == "running")
                .where(or_(Run.heartbeat.is_(None), Run.heartbeat < t))
                .values(heartbeat=t)
            )

    def end_run(
        self,
        run_id: str,
        end: datetime,
        status: str = "finished",
        *,
        config: dict[str, Any] | None = None,
    ) -> None:
        """Record how and when a run ended (``finished``, ``interrupted`` or ``failed``); the end
        is its last heartbeat too. ``config`` entries (e.g. ``dropped_records``) are merged into
        the run's config."""
        from sqlalchemy import select, update

        if status not in RUN_STATUSES:
            raise ConfigError(f"unknown run status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
        values: dict[str, Any] = {"end": end, "status": status, "heartbeat": end}
        with self._writing() as conn:
            if config:
                old = conn.execute(select(Run.config).where(Run.run_id == run_id)).scalar_one_or_none()
                values["config"] = {**(old if isinstance(old, dict) else {}), **config}
            result = conn.execute(update(Run).where(Run.run_id == run_id).values(**values))
            if result.rowcount == 0:
                raise LedgerError(f"{self.display}: no run {run_id!r}")
        self._summaries.end_run(run_id)

    def write_spans(self, spans: Sequence[SpanRecord]) -> None:
        """Store spans and their per-device energy. Raw tenant names are pseudonymised first."""
        if not spans:
            return
        fast = self._fast()
        with self._translate():  # a value that cannot be bound fails as the typed insert would
            span_rows, device_rows = self._span_rows(spans, fast)
        with self._writing() as conn:
            summarised = self._summaries.add(conn, spans, span_rows, device_rows, fast.null)
            fast.inserts["spans"].execute(conn, span_rows)
            if device_rows:
                fast.inserts["span_devices"].execute(conn, device_rows)
            summarised(conn)

    def write_samples(self, samples: Sequence[SampleRecord]) -> None:
        """Store points of devices' cumulative-energy curves."""
        if not samples:
            return
        fast = self._fast()
        time, null = fast.time, fast.null
        with self._translate():
            rows = [
                (
                    s.run_id,
                    s.device,
                    time(s.t),
                    _num(s.energy_j, null),
                    _num(s.power_w, null),
                    s.method,
                )
                for s in samples
            ]
        with self._writing() as conn:
            fast.inserts["samples"].execute(conn, rows)

    def write_reads(self, reads: Sequence[ReadRecord]) -> None:
        """Store raw device reads (the run's trace), exact floats as read; NaN is stored as NULL."""
        if not reads:
            return
        fast = self._fast()
        null = fast.null
        with self._translate():
            rows = [
                (
                    r.run_id,
                    r.device,
                    _num(r.t_mono),
                    _num(r.energy_j, null),
                    _num(r.power_w, null),
                    _num(r.max_energy_j, null),
                    null if r.error is None else r.error,
                    _num(getattr(r, "t_start_mono", None), null),
                )
                for r in reads
            ]
        with self._writing() as conn:
            fast.inserts["reads"].execute(conn, rows)

    def write_device_totals(self, totals: Sequence[DeviceTotals]) -> None:
        """Store per-device consumed / attributed / idle energy, one row per attribution window."""
        if not totals:
            return
        fast = self._fast()
        time, null = fast.time, fast.null
        with self._translate():
            rows = [
                (
                    d.run_id,
                    d.device,
                    d.method,
                    null if (t := time(d.start)) is None else t,
                    null if (t := time(d.end)) is None else t,
                    _num(d.total_j, null),
                    _num(d.attributed_j, null),
                    _num(d.idle_j, null),
                    _num(d.gap_s) or 0.0,
                    _num(d.idle_s) or 0.0,
                    _num(d.uncertainty_j, null),
                )
                for d in totals
            ]
        with self._writing() as conn:
            fast.inserts["device_totals"].execute(conn, rows)

    def _fast(self) -> _FastInserts:
        self._check_open(write=True)  # fail as writing would, before converting anything
        fast = self._fast_inserts
        if fast is None:
            fast = self._fast_inserts = _FastInserts(self._engine.dialect)
        return fast

    def write(self, records: Iterable[Writable]) -> None:
        """Write a mix of records (and callables ``fn(ledger)``) in order, in one transaction.

        Spans, reads, samples and totals between two runs or callables are written kind by kind
        (each kind in its order), so that a meter's interleaved stream of them becomes a few bulk
        INSERTs: none of them refers to another, only to its run, which comes before.
        """
        writers: dict[type, Callable[[list[Any]], None]] = {
            SpanRecord: self.write_spans,
            ReadRecord: self.write_reads,
            SampleRecord: self.write_samples,
            DeviceTotals: self.write_device_totals,
        }
        with self.transaction():
            groups: dict[type, list] = {}
            for rec in records:
                rec_kind = type(rec)
                if rec_kind in writers:
                    group = groups.get(rec_kind)
                    if group is None:
                        group = groups[rec_kind] = []
                    group.append(rec)
                    continue
                if not (isinstance(rec, RunRecord) or callable(rec)):
                    raise ConfigError(f"the ledger cannot store a {rec_kind.__name__}")
                for kind, group in groups.items():
                    writers[kind](group)
                groups = {}
                if isinstance(rec, RunRecord):
                    self.start_run(rec)
                else:
                    rec(self)
            for kind, group in groups.items():
                writers[kind](group)

    # ----------------------------------------------------------------------------- tenants

    def pseudonymise(self, tenant: str) -> str:
        """A stable pseudonym ``t-<16 hex>`` for a tenant; the raw identity is never stored.

        HMAC-SHA256 keyed by a secret kept outside the ledger (:mod:`greenmaas.ledger.keys`):
        ``$GREENMAAS_TENANT_KEY`` when set, else this user's key file
        (``$XDG_CONFIG_HOME/greenmaas/tenant.key``, made on first use). The ledger alone cannot
        reverse a pseudonym; the same key gives the same pseudonyms in every ledger. Raises
        :class:`LedgerError` when there is no key and the key file cannot be created.

        Ledgers written before this (which kept a random ``tenant_salt`` in ``meta`` and keyed
        pseudonyms by it when the variable was unset) keep the pseudonyms already stored as they
        are; new rows use the key above, so one tenant may appear under two pseudonyms there.
        """
        text = tenant if type(tenant) is str else str(tenant)
        pseudonym = self._pseudonyms.get(text)
        if pseudonym is None:
            # Cached (in memory only): the key is fixed for the ledger's life, an HMAC is not free.
            digest = hmac.new(self._key(), text.encode("utf-8"), hashlib.sha256).hexdigest()
            pseudonym = "t-" + digest[:16]
            _remember(self._pseudonyms, text, pseudonym)
        return pseudonym

    def _key(self) -> bytes:
        """The tenant key, found (or made) on first use and kept for this ledger's life."""
        if self._tenant_key is None:
            self._tenant_key, _ = tenant_key()
        return self._tenant_key

    def _stored_tenant(self, tenant: Any) -> str:
        """The tenant as stored: a pseudonym is kept as is, anything else pseudonymised."""
        stored = self._tenants.get(tenant) if type(tenant) is str else None
        if stored is None:
            stored = tenant if _PSEUDONYM.fullmatch(tenant) else self.pseudonymise(tenant)
            _remember(self._tenants, tenant, stored)
        return stored

    def _span_rows(self, spans: Sequence[SpanRecord], fast: _FastInserts) -> tuple[list, list]:
        """Rows for ``spans`` and ``span_devices`` (in ``_SPAN_COLUMNS`` and
        ``_SPAN_DEVICE_COLUMNS`` order) holding what the typed insert would hand the driver.

        This runs for every span, on a thread that holds the interpreter lock, so it is one pass
        with as few calls as it takes: numbers are what ``_num`` / ``_int`` make of them (a float
        or an int; NULL for None and NaN) with the common cases checked inline, and the span's
        energies and method are what ``SpanRecord.energy_j`` / ``self_energy_j`` / ``method``
        compute. Energies, and ± J, are NULL where no device was measured (never 0 J). Nullable
        values that are None go as ``fast.null``.
        """
        span_rows: list[tuple] = []
        device_rows: list[tuple] = []
        add_span, add_device = span_rows.append, device_rows.append
        time, to_json, null = fast.time, fast.json, fast.null
        stored_tenant = self._stored_tenant
        weakest = _WEAKEST.get
        v: Any  # the walrus scratch below takes each field in turn, whatever its type
        for s in spans:
            span_id = s.span_id
            devices = s.devices
            methods = []
            measured = False
            stated = []  # uncertainties stated, as SpanRecord.uncertainty_j sums them
            for d in devices:
                method = d.method
                methods.append(method)
                u = d.uncertainty_j
                if u is not None:
                    stated.append(u)
                if method != UNMEASURABLE:
                    measured = True
                    e, e_self = _num(d.energy_j, null), _num(d.self_j, null)
                    u = null if u is None else _num(u, null)
                else:
                    e = e_self = u = null
                gap, busy = _num(d.gap_s) or 0.0, _num(d.self_device_s) or 0.0
                add_device((span_id, d.device, e, e_self, method, gap, busy, u))
            if not measured:
                energy = self_energy = uncertainty = null
            else:
                if len(devices) == 1:  # sum() of one item is 0 + item
                    energy = _num(0 + devices[0].energy_j, null)
                    self_energy = _num(0 + devices[0].self_j, null)
                else:
                    energy = _num(sum([d.energy_j for d in devices]), null)
                    self_energy = _num(sum([d.self_j for d in devices]), null)
                uncertainty = _num(sum(stated), null) if stated else null
            attrs = s.attrs
            add_span(
                (
                    span_id,
                    s.run_id,
                    null if (v := s.parent_id) is None else v,
                    s.kind,
                    s.name,
                    null if (v := s.model) is None else v,
                    null if (v := s.phase) is None else v,
                    null if (v := s.request_id) is None else v,
                    null if (v := s.tenant) is None else stored_tenant(v),
                    time(s.start),
                    time(s.end),
                    v if type(v := s.duration_s) is float and v == v else _num(v),
                    v if type(v := s.weight) is float and v == v else _num(v),
                    null if (v := s.tokens_in) is None else v if type(v) is int else int(v),
                    null if (v := s.tokens_out) is None else v if type(v) is int else int(v),
                    null if (v := s.items) is None else v if type(v) is int else int(v),
                    s.status,
                    to_json(attrs if type(attrs) is dict else dict(attrs)),
                    energy,
                    self_energy,
                    weakest(tuple(methods)) or _weakest(methods),
                    (
                        null if (v := s.carbon_g) is None
                        else v if type(v) is float and v == v else _num(v, null)
                    ),
                    (
                        null if (v := s.carbon_market_g) is None
                        else v if type(v) is float and v == v else _num(v, null)
                    ),
                    (
                        null if (v := s.cost) is None
                        else v if type(v) is float and v == v else _num(v, null)
                    ),
                    null if (v := s.currency) is None else v,
                    null if (v := s.start_mono) is None else v if type(v) is float and v == v else _num(v, null),
                    null if (v := s.end_mono) is None else v if type(v) is float and v == v else _num(v, null),
                    null if (v := s.link_id) is None else v,
                    uncertainty,
                    v if type(v := s.count) is int else int(v),
                )
            )
        return span_rows, device_rows

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


#: ``weakest_method`` of each combination of device methods seen (there are only a handful).
_WEAKEST: dict[tuple, str] = {}


def _weakest(methods: list) -> str:
    """``SpanRecord.method``: the weakest of its devices' methods (remembered in ``_WEAKEST``)."""
    method = weakest_method(methods)
    _remember(_WEAKEST, tuple(methods), method)
    return method


def _remember(cache: dict, key: Any, value: Any) -> None:
    """Add to one of the small in-memory caches, which start afresh when full."""
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


