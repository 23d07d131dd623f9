"""The ledger's fast insert path stores exactly what the typed SQLAlchemy path stored.

Spans, span devices, reads, samples and totals are written through INSERTs compiled once per dialect
with values converted by the ledger itself. Here the same records go through both paths (the
typed one as it was, see ``fast_insert_cases.typed_write``) and every table must come back the
same: byte for byte from SQLite (value and storage class, row order included), through
``read_ledger`` and through the ORM models.
"""

from __future__ import annotations

import json
import random
import sqlite3
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from fast_insert_cases import T0, reads, run, samples, spans, totals, typed_write
from sqlalchemy import select
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import StatementError

import greenmaas.ledger.store as store
from greenmaas.analysis import TABLES, read_ledger
from greenmaas.errors import LedgerError
from greenmaas.ledger import Ledger
from greenmaas.ledger.models import DeviceTotal, Read, Run, Sample, Span, SpanDevice

# How NULL is bound to SQLite depends on the Python version; both ways are checked on any.
NULL_MODES = {"none": None, "mark": bytearray(store._SQLITE_NULL_MARK)}
ORM = {"runs": Run, "spans": Span, "span_devices": SpanDevice, "reads": Read, "samples": Sample,
       "device_totals": DeviceTotal}


@pytest.fixture(params=list(NULL_MODES))
def null_mode(request, monkeypatch):
    monkeypatch.setattr(store, "_SQLITE_NULL", NULL_MODES[request.param])
    return request.param


@pytest.fixture(autouse=True)
def same_pseudonyms(monkeypatch):
    monkeypatch.setenv("GREENMAAS_TENANT_KEY", "test-key")


def records():
    """Spans interleaved with reads (as a meter submits them), then samples and totals."""
    out = []
    rs = reads()
    for i, s in enumerate(spans()):
        out.append(s)
        out += rs[2 * i : 2 * i + 2]
    return out + rs[2 * len(spans()) :] + samples() + totals()


def raw(path) -> dict[str, list]:
    """Every table as SQLite holds it: each value's repr and storage class, in rowid order."""
    out = {}
    with sqlite3.connect(path) as conn:
        for table in ORM:
            cols = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            select_ = ", ".join(f'"{c}", typeof("{c}")' for c in cols)
            rows = conn.execute(f"SELECT rowid, {select_} FROM {table} ORDER BY rowid").fetchall()
            out[table] = [tuple(repr(v) for v in row) for row in rows]
    return out


def frames(path) -> dict[str, pd.DataFrame]:
    out = {}
    for table in TABLES:
        df = read_ledger(path, table)
        for col in ("attrs", "config", "devices"):  # JSON: NaN inside would not equal itself
            if col in df:
                df[col] = df[col].map(lambda v: json.dumps(v, default=str))
        out[table] = df
    return out


def orm(path) -> dict[str, list]:
    """Every table read back through its column types (which turn values back into Python)."""
    out = {}
    with Ledger.open(path, readonly=True) as led, led.engine.connect() as conn:
        for table, model in ORM.items():
            cols = [c.key for c in model.__table__.c]
            query = select(model.__table__).order_by(*model.__table__.primary_key)
            out[table] = [repr({c: r._mapping[c] for c in cols}) for r in conn.execute(query)]
    return out


def write_both(tmp_path, recs, *, one_by_one: bool = False):
    typed, fast = tmp_path / "typed.db", tmp_path / "fast.db"
    with Ledger.open(typed) as led:
        led.start_run(run())
        typed_write(led, recs)
    with Ledger.open(fast) as led:
        led.start_run(run())
        if one_by_one:
            for rec in recs:
                led.write([rec])
        else:
            led.write(recs)
    return typed, fast


@pytest.mark.parametrize("one_by_one", [False, True], ids=["batched", "one-by-one"])
def test_fast_path_stores_what_the_typed_path_stored(tmp_path, null_mode, one_by_one):
    typed, fast = write_both(tmp_path, records(), one_by_one=one_by_one)
    got, want = raw(fast), raw(typed)
    assert {t: len(rows) for t, rows in got.items()} == {
        "runs": 1, "spans": 260, "span_devices": 333, "reads": 500, "samples": 400, "device_totals": 3}
    for table in ORM:
        assert got[table] == want[table], table
    got_frames, want_frames = frames(fast), frames(typed)
    for table in TABLES:
        pd.testing.assert_frame_equal(got_frames[table], want_frames[table])
    assert orm(fast) == orm(typed)


def test_stored_forms(tmp_path, null_mode):
    """Spot checks of what the comparison above relies on: SQLite's naive UTC text, JSON text,
    NULL (not 0, not the NULL mark) for what was not measured, empty strings and blobs kept."""
    _, fast = write_both(tmp_path, records())
    with sqlite3.connect(fast) as conn:
        first = conn.execute(
            "SELECT start, typeof(start), attrs, energy_j, model, typeof(model) FROM spans "
            "WHERE span_id = 's00000'"
        ).fetchone()
        assert first == ("2024-05-01 23:59:58.999000", "text", "{}", None, None, "null")
        assert conn.execute("SELECT count(*) FROM spans WHERE model = ''").fetchone() == (65,)
        assert conn.execute("SELECT count(*) FROM spans WHERE typeof(model) = 'blob'").fetchone() == (65,)
        mark = store._SQLITE_NULL_MARK
        for table, cols in store._FAST_TABLES.items():
            for col in cols:
                hits = conn.execute(f'SELECT count(*) FROM {table} WHERE "{col}" = ?', (mark,))
                assert hits.fetchone() == (0,), (table, col)
        unmeasured = conn.execute(
            "SELECT energy_j, self_j FROM span_devices WHERE method = 'unmeasurable'").fetchall()
        assert unmeasured and set(unmeasured) == {(None, None)}


def test_bad_values_fail_as_the_typed_path_does(tmp_path, null_mode):
    with Ledger.open(tmp_path / "l.db") as led:
        led.start_run(run())
        (s,) = spans(1)
        s.name = None
        with pytest.raises(LedgerError, match="NOT NULL constraint failed: spans.name"):
            led.write([s])
        (s,) = spans(1)
        s.start = "yesterday"
        with pytest.raises(LedgerError) as info:
            led.write([s])
        assert isinstance(info.value.__cause__, StatementError)
        (s,) = spans(1)
        s.attrs = {"cycle": []}
        s.attrs["cycle"].append(s.attrs)
        with pytest.raises(LedgerError, match="Circular reference"):
            led.write([s])
        with led.read() as conn:
            assert conn.execute(select(Span)).first() is None


def test_times_convert_as_the_typed_processors_do():
    dialect = sqlite_dialect.dialect()
    fast = store._FastInserts(dialect)
    typed = Span.__table__.c.start.type.dialect_impl(dialect).bind_processor(dialect)
    rnd = random.Random(7)
    t = T0
    values = [datetime.min.replace(tzinfo=timezone.utc), datetime.max.replace(tzinfo=timezone.utc),
              datetime(2024, 1, 1), datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=14))),
              None]
    for _ in range(8_000):
        step = rnd.choice([
            timedelta(microseconds=rnd.randrange(3_000_000)),
            -timedelta(microseconds=rnd.randrange(100_000_000)),
            timedelta(seconds=rnd.choice([59, 60, 61, 3600, 86_400]), microseconds=rnd.choice([0, 1])),
        ])
        t = t + step
        values.append(t)
        values.append(datetime(rnd.randrange(1, 10_000), rnd.randrange(1, 13), rnd.randrange(1, 29),
                               rnd.randrange(24), rnd.randrange(60), rnd.randrange(60),
                               rnd.randrange(1_000_000), tzinfo=timezone.utc))
    assert [fast.time(v) for v in values] == [typed(v) for v in values]


def test_json_converts_as_the_engine_serializer_does():
    fast = store._FastInserts(sqlite_dialect.dialect(json_serializer=store._json_dumps))
    rnd = random.Random(3)
    scalars = [0, -1, 2**70, 0.1, -0.0, 1e-310, 1e300, float("nan"), float("inf"), True, False,
               None, "", "ascii", "é ⚡ \U0001f600", 'q"\\/\n\x7f', 1.5j, [1], {"a": 1}]
    cases = [{}] + [
        {rnd.choice(["a", "b", "ü", "k" * 40, 1, None]): rnd.choice(scalars) for _ in range(rnd.randrange(6))}
        for _ in range(3000)
    ]
    assert [fast.json(c) for c in cases] == [store._json_dumps(c) for c in cases]


def test_pseudonyms_are_cached_and_unchanged(tmp_path):
    import hashlib
    import hmac

    with Ledger.open(tmp_path / "l.db") as led:
        want = "t-" + hmac.new(b"test-key", b"acme", hashlib.sha256).hexdigest()[:16]
        assert led.pseudonymise("acme") == want == led.pseudonymise("acme")
        assert led.pseudonymise(42) == led.pseudonymise("42")
        assert led._stored_tenant(want) == want and led._stored_tenant("acme") == want
