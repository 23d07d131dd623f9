"""Ledger: round trips, times in UTC, SQLite settings, tenants, transactions, error translation."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from ledger_records import T0, at, file_bytes, run, sample, span, totals
from sqlalchemy import select, text

from greenmaas.errors import ConfigError, LedgerError
from greenmaas.ledger import Ledger
from greenmaas.ledger.models import DeviceTotal, Run, Sample, Span, SpanDevice
from greenmaas.records import DeviceEnergy


def test_round_trip_of_every_record(ledger):
    ledger.start_run(run())
    parent = span("p", 0, 10, energy=100.0, self_j=20.0, device_s=2.0, kind="epoch", model="bert",
                  phase="training")
    child = span("c", 1, 9, energy=80.0, parent_id="p", kind="step", model="bert", phase="training",
                 tokens_in=12, tokens_out=34, items=8, attrs={"lr": 0.1, "tags": ["a"]})
    ledger.write_spans([child, parent])
    ledger.write_samples([sample(i) for i in range(5)])
    ledger.write_device_totals([totals(idle_s=2.5)])
    ledger.end_run("r1", at(20), "finished")

    with ledger.read() as conn:
        r = conn.execute(select(Run)).one()
        spans = {s.span_id: s for s in conn.execute(select(Span))}
        devices = conn.execute(select(SpanDevice).order_by(SpanDevice.span_id)).all()
        samples = conn.execute(select(Sample).order_by(Sample.t)).all()
        dt = conn.execute(select(DeviceTotal)).one()

    assert (r.host, r.pid, r.status, r.start, r.end) == ("node-1", 4242, "finished", T0, at(20))
    assert r.config == {"sample_interval_s": 0.1} and r.devices[0]["id"] == "gpu:0"
    assert r.greenmaas_version
    p, c = spans["p"], spans["c"]
    assert (p.energy_j, p.self_energy_j, p.method, p.kind) == (100.0, 20.0, "counter", "epoch")
    assert (c.parent_id, c.tokens_in, c.tokens_out, c.items) == ("p", 12, 34, 8)
    assert c.attrs == {"lr": 0.1, "tags": ["a"]}
    assert (c.start, c.end, c.duration_s) == (at(1), at(9), 8.0)
    assert [(d.span_id, d.device, d.energy_j, d.self_j, d.self_device_s) for d in devices] == [
        ("c", "gpu:0", 80.0, 80.0, 8.0),
        ("p", "gpu:0", 100.0, 20.0, 2.0),
    ]
    assert [s.energy_j for s in samples] == [0.0, 30.0, 60.0, 90.0, 120.0]
    assert (dt.total_j, dt.attributed_j, dt.idle_j, dt.start, dt.end) == (100.0, 70.0, 30.0, T0, at(10))
    assert dt.idle_s == 2.5  # device time no span used: the operator's hardware line


def test_times_come_back_timezone_aware_utc(ledger):
    plus2 = timezone(timedelta(hours=2))
    ledger.start_run(run())
    s = span("s")
    s.start = datetime(2024, 5, 1, 14, 0, tzinfo=plus2)  # 12:00 UTC
    s.end = datetime(2024, 5, 1, 12, 0, 1)  # naive: taken as UTC
    ledger.write_spans([s])
    with ledger.read() as conn:
        got = conn.execute(select(Span.start, Span.end)).one()
    assert got.start == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert got.start.tzinfo is timezone.utc and got.end.tzinfo is timezone.utc
    assert got.end == datetime(2024, 5, 1, 12, 0, 1, tzinfo=timezone.utc)


def test_unmeasurable_energy_is_null_not_zero(ledger):
    ledger.start_run(run())
    ledger.write_spans([span("u", energy=0.0, method="unmeasurable")])
    with ledger.read() as conn:
        row = conn.execute(select(Span.energy_j, Span.self_energy_j, Span.method)).one()
        dev = conn.execute(select(SpanDevice.energy_j)).scalar_one()
    assert tuple(row) == (None, None, "unmeasurable") and dev is None


def test_odd_values_are_stored_not_fatal(ledger):
    import numpy as np

    ledger.start_run(run())
    s = span("s", name="x'); DROP TABLE spans; --", tokens_in=np.int64(7), attrs={"p": np.float32(1.5)})
    s.devices = [DeviceEnergy("gpu:0", np.float64(3.0), "counter", float("nan"))]
    ledger.write_spans([s])
    with ledger.read() as conn:
        row = conn.execute(select(Span.name, Span.tokens_in, Span.self_energy_j, Span.attrs)).one()
    assert row.name == "x'); DROP TABLE spans; --" and row.tokens_in == 7
    assert row.self_energy_j is None and row.attrs == {"p": "1.5"}


def test_sqlite_runs_in_wal_mode_with_busy_timeout_and_foreign_keys(ledger, db_path):
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with ledger.read() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    with pytest.raises(LedgerError, match="FOREIGN KEY"):
        ledger.write_spans([span("orphan", run_id="no-such-run")])


def test_sqlalchemy_url_and_in_memory(tmp_path):
    with Ledger.open(f"sqlite:///{tmp_path / 'u.db'}") as led:
        led.start_run(run())
    assert (tmp_path / "u.db").exists()
    with Ledger.open("sqlite://") as mem:
        mem.start_run(run())
        mem.write_spans([span("s")])
        with mem.read() as conn:
            assert conn.execute(select(Span.span_id)).scalar_one() == "s"


def test_default_location_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GREENMAAS_LEDGER", str(tmp_path / "env.db"))
    with Ledger.open() as led:
        assert led.path == tmp_path / "env.db"
    monkeypatch.delenv("GREENMAAS_LEDGER")
    monkeypatch.chdir(tmp_path)
    with Ledger.open() as led:
        assert led.path.name == "greenmaas.db"
    assert (tmp_path / "greenmaas.db").exists()


def test_reopening_keeps_data(db_path):
    with Ledger.open(db_path) as led:
        led.start_run(run())
    with Ledger.open(db_path) as led, Ledger.open(db_path, readonly=True) as ro:
        for lg in (led, ro):
            with lg.read() as conn:
                assert conn.execute(select(Run.run_id)).scalar_one() == "r1"


def test_transaction_is_all_or_nothing(ledger):
    ledger.start_run(run())
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.write_spans([span("a")])
            ledger.write_samples([sample(1)])
            raise RuntimeError("boom")
    with ledger.read() as conn:
        assert conn.execute(select(Span)).first() is None
        assert conn.execute(select(Sample)).first() is None


def test_write_mixes_records_in_order(ledger):
    ledger.write([run(), span("a"), span("b"), sample(1), totals(),
                  lambda lg: lg.end_run("r1", at(5), "interrupted")])
    with ledger.read() as conn:
        assert conn.execute(select(Run.status)).scalar_one() == "interrupted"
        assert conn.execute(text("select count(*) from spans")).scalar() == 2
    with pytest.raises(ConfigError, match="cannot store"):
        ledger.write([object()])


def test_database_errors_become_one_line_ledger_errors(ledger, db_path):
    from sqlalchemy.exc import IntegrityError

    ledger.start_run(run())
    ledger.write_spans([span("dup")])
    with pytest.raises(LedgerError) as info:
        ledger.write_spans([span("dup")])
    assert isinstance(info.value.__cause__, IntegrityError)
    message = str(info.value)
    assert "\n" not in message and str(db_path) in message and "UNIQUE" in message
    with pytest.raises(LedgerError, match="no run 'nope'"):
        ledger.end_run("nope", at(1))
    with pytest.raises(ConfigError, match="unknown run status"):
        ledger.end_run("r1", at(1), "exploded")


def test_readonly_ledger_refuses_writes(ledger, db_path):
    with Ledger.open(db_path, readonly=True) as ro:
        with pytest.raises(LedgerError, match="read-only"):
            ro.start_run(run())


def test_closed_ledger_says_so(db_path):
    led = Ledger.open(db_path)
    led.close()
    led.close()
    with pytest.raises(LedgerError, match="closed"):
        led.start_run(run())


class TestTenants:
    def test_pseudonym_format_and_stability(self, ledger, monkeypatch):
        monkeypatch.delenv("GREENMAAS_TENANT_KEY", raising=False)
        p = ledger.pseudonymise("acme")
        assert p.startswith("t-") and len(p) == 18 and int(p[2:], 16) >= 0
        assert ledger.pseudonymise("acme") == p != ledger.pseudonymise("globex")

    def test_key_file_is_per_user_and_kept(self, tmp_path, monkeypatch):
        # The key lives outside the ledgers (see test_privacy.py): one user's ledgers agree.
        monkeypatch.delenv("GREENMAAS_TENANT_KEY", raising=False)
        with Ledger.open(tmp_path / "a.db") as a, Ledger.open(tmp_path / "b.db") as b:
            pa = a.pseudonymise("acme")
            assert pa == b.pseudonymise("acme")
        with Ledger.open(tmp_path / "a.db", readonly=True) as a:
            assert a.pseudonymise("acme") == pa
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "another-user"))
        with Ledger.open(tmp_path / "a.db", readonly=True) as a:
            assert a.pseudonymise("acme") != pa

    def test_env_key_makes_pseudonyms_portable(self, tmp_path, monkeypatch):
        monkeypatch.setenv("GREENMAAS_TENANT_KEY", "s3cret")
        with Ledger.open(tmp_path / "a.db") as a, Ledger.open(tmp_path / "b.db") as b:
            assert a.pseudonymise("acme") == b.pseudonymise("acme")

    def test_raw_tenant_never_reaches_the_file(self, ledger, db_path):
        secret = "acme-corp-very-secret-tenant"
        ledger.start_run(run())
        # The meter pseudonymises; the ledger does it again for anything that is not a pseudonym.
        ledger.write_spans([span("a", tenant=secret), span("b", tenant=ledger.pseudonymise(secret))])
        with ledger.read() as conn:
            stored = conn.execute(select(Span.tenant)).scalars().all()
        assert stored == [ledger.pseudonymise(secret)] * 2
        ledger.close()
        blob = b"".join(file_bytes(db_path).values())
        assert secret.encode() not in blob
