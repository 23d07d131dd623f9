"""Upgrading a schema-1 SQLite ledger in place: when, with which backup, and what is refused."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import schema1
from compare import same
from ledger_records import file_bytes, span

from greenmaas.analysis import read_ledger
from greenmaas.errors import ConfigError, LedgerError
from greenmaas.ledger import SCHEMA_VERSION, Ledger
from greenmaas.ledger.migrations import Upgrade, migrate, revisions
from greenmaas.records import ReadRecord, RunRecord


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + ".schema1.bak")


def version(path) -> str:
    with sqlite3.connect(path) as raw:
        (value,) = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    raw.close()
    return value


def test_every_version_has_a_revision_and_the_newest_is_the_head():
    assert revisions() == {v: f"schema{v}" for v in range(1, SCHEMA_VERSION + 1)}


def test_a_schema1_ledger_is_upgraded_on_open_after_a_byte_identical_backup(db_path):
    schema1.create_sqlite(db_path)
    assert not Path(f"{db_path}-wal").exists()
    original = db_path.read_bytes()
    os.chmod(db_path, 0o600)

    with Ledger.open(db_path) as led:
        assert led.upgraded == Upgrade(str(db_path), 1, SCHEMA_VERSION, backup_of(db_path))
    assert backup_of(db_path).read_bytes() == original
    assert stat.S_IMODE(os.stat(backup_of(db_path)).st_mode) == 0o600  # as private as the ledger
    assert not Path(f"{backup_of(db_path)}-wal").exists()
    assert version(db_path) == str(SCHEMA_VERSION) and version(backup_of(db_path)) == "1"

    spans = read_ledger(db_path).set_index("span_id")
    assert spans.loc["e", "self_energy_j"] == 100.0 and spans.loc["s", "parent_id"] == "e"
    assert spans.loc["q", "start"] == schema1.at(110)
    for column in ("start_mono", "end_mono", "link_id", "uncertainty_j"):
        assert spans[column].isna().all(), column
    assert read_ledger(db_path, "span_devices")["uncertainty_j"].isna().all()
    devices = read_ledger(db_path, "devices")
    assert devices.loc[0, "idle_s"] == 20.0 and devices["uncertainty_j"].isna().all()
    assert read_ledger(db_path, "reads").empty
    assert read_ledger(db_path, "samples").loc[0, "energy_j"] == 30.0

    with Ledger.open(db_path) as led:  # up to date now: nothing more is done
        assert led.upgraded is None
        led.write([ReadRecord("r1", "gpu:0", 12.25, 1.5), span("new", start_mono=0.5, end_mono=1.5)])
    assert read_ledger(db_path, "reads")["t_mono"].tolist() == [12.25]
    assert backup_of(db_path).read_bytes() == original


def test_an_upgraded_ledger_has_the_schema_of_a_new_one(db_path, tmp_path):
    schema1.create_sqlite(db_path)
    Ledger.open(db_path).close()
    fresh = tmp_path / "fresh.db"
    Ledger.open(fresh).close()
    assert schema1.schema(f"sqlite:///{db_path}") == schema1.schema(f"sqlite:///{fresh}")


def test_a_wal_with_frames_not_yet_in_the_file_is_in_the_backup(db_path):
    schema1.create_sqlite(db_path)
    other = sqlite3.connect(db_path, isolation_level=None)  # an old writer, still open
    other.execute("PRAGMA wal_autocheckpoint = 0")
    other.execute("UPDATE runs SET host = 'moved' WHERE run_id = 'r1'")
    assert Path(f"{db_path}-wal").stat().st_size > 0
    reader = sqlite3.connect(db_path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM spans").fetchone()  # holds a snapshot: no WAL reset
    try:
        with Ledger.open(db_path) as led:
            assert led.upgraded is not None
    finally:
        reader.execute("COMMIT")
        reader.close()
        other.close()
    backup = backup_of(db_path)
    with sqlite3.connect(backup) as raw:
        assert raw.execute("SELECT host FROM runs").fetchone() == ("moved",)
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()
    assert read_ledger(db_path, "runs")["host"].tolist() == ["moved"]


@pytest.mark.parametrize("how", ["readonly", "upgrade=False"])
def test_opens_that_may_not_upgrade_refuse_and_change_nothing(db_path, how):
    schema1.create_sqlite(db_path)
    before = file_bytes(db_path)
    kwargs = {"readonly": True} if how == "readonly" else {"upgrade": False}
    with pytest.raises(LedgerError) as info:
        Ledger.open(db_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(db_path) in message and "greenmaas migrate" in message
    assert "schema version 1 is older" in message
    assert file_bytes(db_path) == before and not backup_of(db_path).exists()
    with pytest.raises(LedgerError, match="greenmaas migrate"):
        read_ledger(db_path)


def test_when_the_backup_cannot_be_written_nothing_is_upgraded(db_path):
    schema1.create_sqlite(db_path)
    backup_of(db_path).mkdir()  # in the way: a file cannot replace a directory
    before = file_bytes(db_path)
    with pytest.raises(LedgerError) as info:
        Ledger.open(db_path)
    message = str(info.value)
    assert "\n" not in message and str(backup_of(db_path)) in message and "not upgraded" in message
    assert file_bytes(db_path) == before and version(db_path) == "1"
    assert set(db_path.parent.iterdir()) == {db_path, backup_of(db_path)}  # no temporary file left


def test_a_stale_backup_wal_is_not_left_beside_a_new_backup(db_path):
    schema1.create_sqlite(db_path)
    stale = Path(f"{backup_of(db_path)}-wal")
    stale.write_bytes(b"not ours")
    Ledger.open(db_path).close()
    assert not stale.exists()
    with sqlite3.connect(backup_of(db_path)) as raw:
        assert raw.execute("SELECT count(*) FROM spans").fetchone() == (3,)
    raw.close()


def test_a_damaged_schema1_ledger_is_refused_before_any_backup(db_path):
    schema1.create_sqlite(db_path)
    with sqlite3.connect(db_path) as raw:
        raw.execute("DROP TABLE samples")
    raw.close()
    before = file_bytes(db_path)
    with pytest.raises(LedgerError, match="damaged greenmaas ledger.*samples"):
        Ledger.open(db_path)
    assert file_bytes(db_path) == before and not backup_of(db_path).exists()


def test_two_processes_opening_at_once_upgrade_once(db_path):
    schema1.create_sqlite(db_path)
    results, errors = [], []

    def open_it():
        try:
            with Ledger.open(db_path) as led:
                results.append(led.upgraded)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r is not None for r in results) == 1
    assert version(db_path) == str(SCHEMA_VERSION)


def test_migrate_upgrades_then_says_there_is_nothing_to_do(db_path):
    schema1.create_sqlite(db_path)
    done = migrate(db_path)
    assert done == Upgrade(str(db_path), 1, SCHEMA_VERSION, backup_of(db_path)) and done.done
    again = migrate(db_path)
    assert again == Upgrade(str(db_path), SCHEMA_VERSION, SCHEMA_VERSION) and not again.done
    with pytest.raises(LedgerError, match="no ledger at"):
        migrate(db_path.with_name("missing.db"))
    assert not db_path.with_name("missing.db").exists()


def test_greenmaas_migrate(db_path):
    from click.testing import CliRunner

    from greenmaas_cli.main import cli

    schema1.create_sqlite(db_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["migrate", "--ledger", str(db_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (f"Upgraded {db_path} from schema version 1 to {SCHEMA_VERSION}; "
                             f"the old ledger is kept as {backup_of(db_path)}.\n")
    result = runner.invoke(cli, ["migrate", "--ledger", str(db_path)])
    assert result.exit_code == 0
    assert result.stdout == f"{db_path} is up to date (schema version {SCHEMA_VERSION}); nothing to do.\n"
    missing = db_path.with_name("missing.db")
    result = runner.invoke(cli, ["migrate", "--ledger", str(missing)])
    assert result.exit_code == 2 and result.stderr == f"Error: no ledger at {missing}\n"
    assert not missing.exists()


# ------------------------------------------------------------------------------ Alembic stamps

def stamps(path) -> list[str] | None:
    with sqlite3.connect(path) as raw:
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        found = [v for (v,) in raw.execute("SELECT version_num FROM alembic_version")] \
            if "alembic_version" in tables else None
    raw.close()
    return found


def dump(path) -> list[str]:
    """Every table, index and row of a SQLite file, as SQL text."""
    with sqlite3.connect(path) as raw:
        lines = list(raw.iterdump())
    raw.close()
    return lines


def test_new_and_upgraded_ledgers_carry_the_alembic_stamp_of_their_version(db_path, tmp_path):
    fresh = tmp_path / "fresh.db"
    Ledger.open(fresh).close()
    assert stamps(fresh) == [f"schema{SCHEMA_VERSION}"] and version(fresh) == str(SCHEMA_VERSION)
    schema1.create_sqlite(db_path)
    assert stamps(db_path) is None  # greenmaas 0.1 knew nothing of Alembic
    Ledger.open(db_path).close()
    assert stamps(db_path) == [f"schema{SCHEMA_VERSION}"]
    assert stamps(backup_of(db_path)) is None  # the backup is the ledger as it was


def test_a_current_ledger_made_before_stamps_is_recognised_by_its_meta_version(db_path):
    Ledger.open(db_path).close()
    with sqlite3.connect(db_path) as raw:  # as the release before Alembic left a schema-2 ledger
        raw.execute("DROP TABLE alembic_version")
    raw.close()
    with Ledger.open(db_path, readonly=True) as led:
        assert led.upgraded is None
    with Ledger.open(db_path) as led:
        assert led.upgraded is None
        led.write([RunRecord("r1", "node-1", 4242, schema1.T0), ReadRecord("r1", "gpu:0", 1.0, 2.0)])
    assert read_ledger(db_path, "reads")["t_mono"].tolist() == [1.0]
    assert stamps(db_path) is None and not backup_of(db_path).exists()


def make_newer(path, *, stamped: bool) -> None:
    """A ledger as a later greenmaas (schema SCHEMA_VERSION + 1) would leave it."""
    newer = SCHEMA_VERSION + 1
    Ledger.open(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(newer),))
        raw.execute("ALTER TABLE spans ADD COLUMN something_new FLOAT")
        if stamped:
            raw.execute("UPDATE alembic_version SET version_num = ?", (f"schema{newer}",))
        else:
            raw.execute("DROP TABLE alembic_version")
    raw.close()


@pytest.mark.parametrize("stamped", [True, False], ids=["stamped", "meta-only"])
def test_a_newer_ledger_is_refused_by_every_open_and_migrate_and_left_byte_identical(db_path, stamped):
    from click.testing import CliRunner

    from greenmaas_cli.main import cli

    make_newer(db_path, stamped=stamped)
    before = file_bytes(db_path)
    expected = f"{db_path}: ledger schema version {SCHEMA_VERSION + 1} is newer than this greenmaas supports"
    for kwargs in ({}, {"readonly": True}, {"upgrade": True}, {"upgrade": False}):
        with pytest.raises(LedgerError) as info:
            Ledger.open(db_path, **kwargs)
        assert str(info.value).startswith(expected) and "upgrade greenmaas" in str(info.value)
    with pytest.raises(LedgerError, match="is newer than"):
        migrate(db_path)
    result = CliRunner().invoke(cli, ["migrate", "--ledger", str(db_path)])
    assert result.exit_code == 2 and result.stderr.startswith(f"Error: {expected}")
    assert result.stderr.count("\n") == 1
    assert file_bytes(db_path) == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == [db_path.name]


def test_a_stamp_disagreeing_with_meta_or_unknown_is_refused_unchanged(db_path):
    Ledger.open(db_path).close()
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = 'schema1'")
    raw.close()
    before = file_bytes(db_path)
    with pytest.raises(LedgerError, match=rf"damaged greenmaas ledger \(meta says schema version {SCHEMA_VERSION}, "
                                          r"alembic_version says schema1\)"):
        Ledger.open(db_path)
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE alembic_version SET version_num = 'f00dcafe'")
    raw.close()
    with pytest.raises(LedgerError, match="unknown ledger schema revision 'f00dcafe'"):
        Ledger.open(db_path, readonly=True)
    assert file_bytes(db_path)[""] != before[""]  # (our own edit above)
    assert version(db_path) == str(SCHEMA_VERSION)


def test_a_failure_mid_upgrade_leaves_the_original_intact(db_path):
    # A schema-1 ledger that already holds a table named like one schema 2 adds: the revision
    # fails at CREATE TABLE reads, after it has added columns to four tables.
    schema1.create_sqlite(db_path)
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE reads (note TEXT)")
        raw.execute("INSERT INTO reads VALUES ('kept')")
    raw.close()
    before, main_bytes = dump(db_path), db_path.read_bytes()
    with pytest.raises(LedgerError) as info:
        Ledger.open(db_path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{db_path}: cannot upgrade from schema version 1")
    assert "reads" in message
    assert dump(db_path) == before  # no column added, no stamp, meta still 1
    assert db_path.read_bytes() == main_bytes
    assert version(db_path) == "1" and stamps(db_path) is None
    assert dump(backup_of(db_path)) == before  # the copy made first is whole
    # Once the user moves the table away, the same ledger upgrades.
    with sqlite3.connect(db_path) as raw:
        raw.execute("ALTER TABLE reads RENAME TO my_notes")
    raw.close()
    with Ledger.open(db_path) as led:
        assert led.upgraded is not None and led.upgraded.done
    assert read_ledger(db_path).set_index("span_id").loc["e", "self_energy_j"] == 100.0


def test_automatic_upgrades_follow_greenmaas_auto_upgrade(db_path, monkeypatch):
    schema1.create_sqlite(db_path)
    before = file_bytes(db_path)
    monkeypatch.setenv("GREENMAAS_AUTO_UPGRADE", "0")
    with pytest.raises(LedgerError, match=r"automatic upgrades are off \(GREENMAAS_AUTO_UPGRADE\).*greenmaas migrate"):
        Ledger.open(db_path)
    assert file_bytes(db_path) == before and not backup_of(db_path).exists()
    assert migrate(db_path).done  # asking explicitly still upgrades
    monkeypatch.setenv("GREENMAAS_AUTO_UPGRADE", "sometimes")
    other = db_path.with_name("other.db")
    schema1.create_sqlite(other)
    with pytest.raises(ConfigError, match="GREENMAAS_AUTO_UPGRADE='sometimes': expected 1 or 0"):
        Ledger.open(other)
    assert version(other) == "1"


def alembic_config(path):
    """The configuration the ``alembic`` command would run with against the ledger at ``path``."""
    import io

    from alembic.config import Config

    from greenmaas.ledger.migrations import SCRIPT_LOCATION

    config = Config(stdout=io.StringIO())  # (its default is the sys.stdout of import time)
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    return config


def test_the_models_and_an_upgraded_ledger_agree_as_alembic_sees_them(db_path, tmp_path):
    # What a developer runs before writing the next revision: `alembic check` compares the models
    # with the database, through env.py's own connection as the alembic command makes it.
    from alembic import command
    from alembic.util.exc import AutogenerateDiffsDetected

    fresh = tmp_path / "fresh.db"
    Ledger.open(fresh).close()
    schema1.create_sqlite(db_path)
    Ledger.open(db_path).close()
    for path in (db_path, fresh):
        command.check(alembic_config(path))  # raises when autogenerate finds a difference
    with sqlite3.connect(db_path) as raw:  # ... and it does find one
        raw.execute("ALTER TABLE spans ADD COLUMN stray FLOAT")
    raw.close()
    with pytest.raises(AutogenerateDiffsDetected, match="stray"):
        command.check(alembic_config(db_path))


# ------------------------------------------------------------------------------ PostgreSQL

PG_URL = os.environ.get("GREENMAAS_TEST_POSTGRES_URL")


@pytest.fixture
def pg_schema1():
    """A schema-1 ledger in the (emptied) database GREENMAAS_TEST_POSTGRES_URL names."""
    if not PG_URL:
        pytest.skip("GREENMAAS_TEST_POSTGRES_URL not set")
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    with engine.begin() as conn:
        schema1.create(conn)
    engine.dispose()
    return PG_URL


def pg_state(url) -> tuple[dict, list]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT key, value FROM meta ORDER BY key")).all()
    finally:
        engine.dispose()
    return schema1.schema(url), [tuple(r) for r in rows]


def test_postgres_is_upgraded_only_by_greenmaas_migrate(pg_schema1, monkeypatch):
    from click.testing import CliRunner

    from greenmaas_cli.main import cli

    monkeypatch.delenv("GREENMAAS_AUTO_UPGRADE", raising=False)
    before = pg_state(pg_schema1)
    for kwargs in ({}, {"readonly": True}):
        with pytest.raises(LedgerError) as info:
            Ledger.open(pg_schema1, **kwargs)
        assert "schema version 1 is older" in str(info.value) and "greenmaas migrate" in str(info.value)
    assert pg_state(pg_schema1) == before
    result = CliRunner().invoke(cli, ["migrate", "--ledger", pg_schema1])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Upgraded ") and f"from schema version 1 to {SCHEMA_VERSION}." in result.stdout
    upgraded, meta = pg_state(pg_schema1)
    assert ("schema_version", str(SCHEMA_VERSION)) in meta
    spans = read_ledger(pg_schema1).set_index("span_id")
    assert spans.loc["e", "self_energy_j"] == 100.0 and spans["uncertainty_j"].isna().all()
    # The same schema as a ledger created new on the server.
    import sqlalchemy as sa

    engine = sa.create_engine(pg_schema1)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()
    Ledger.open(pg_schema1).close()
    assert schema1.schema(pg_schema1) == upgraded


def test_postgres_auto_upgrade_when_turned_on(pg_schema1, monkeypatch):
    monkeypatch.setenv("GREENMAAS_AUTO_UPGRADE", "1")
    with Ledger.open(pg_schema1) as led:
        assert led.upgraded is not None and led.upgraded.backup is None
        assert led.upgraded.from_version == 1 and led.upgraded.to_version == SCHEMA_VERSION


def test_an_upgraded_ledger_reports_from_its_summaries_as_span_by_span(db_path):
    """The upgrade to schema 4 computes the summaries of the spans already stored; spans written
    afterwards (a late child of an old span, whose parent only the ledger knows) join them, and
    every report reads the same figures from them as from the spans one by one."""
    from greenmaas.report import summary

    schema1.create_sqlite(db_path)
    with Ledger.open(db_path) as led:
        assert led.upgraded is not None
        led.write_spans([span("late", 60.0, 70.0, energy=40.0, model="bert", parent_id="e"),
                         span("other", 130.0, 4000.0, energy=70.0, model="llama")])  # crosses an hour
    for by in ("model", "name", "run", "day", "phase"):
        fast, reference = summary(db_path, by=by, accounting=False), summary(db_path, by=by, accounting=False,
                                                                                 in_sql=False)
        same({r["group"]: r for r in fast.rows}, {r["group"]: r for r in reference.rows}, by)
    bert = {r["group"]: r for r in summary(db_path, by="model", accounting=False).rows}["bert"]
    assert bert["duration_s"] == pytest.approx(100.0)  # the epoch's time: its children are inside it
