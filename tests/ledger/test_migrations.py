"""Upgrading a schema-1 SQLite ledger in place: when, with which backup, and what is refused."""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
import schema1
from ledger_records import file_bytes, span

from greenmaas.analysis import read_ledger
from greenmaas.errors import LedgerError
from greenmaas.ledger import SCHEMA_VERSION, Ledger
from greenmaas.ledger.migrations import UPGRADES, Upgrade, migrate
from greenmaas.records import ReadRecord


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + ".schema1.bak")


def version(path) -> str:
    with sqlite3.connect(path) as raw:
        (value,) = raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    raw.close()
    return value


def test_every_older_version_has_a_step():
    assert sorted(UPGRADES) == list(range(1, SCHEMA_VERSION))


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
