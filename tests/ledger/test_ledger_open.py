"""Opening: what is refused, with which message, and that refusing changes nothing."""

from __future__ import annotations

import os
import sqlite3

import pytest
from ledger_records import file_bytes, run, span

from greenmaas.errors import LedgerError
from greenmaas.ledger import Ledger


def refused(path, *, readonly=False, match=None) -> str:
    before = file_bytes(path)
    with pytest.raises(LedgerError, match=match) as info:
        Ledger.open(path, readonly=readonly)
    assert file_bytes(path) == before, "refusing to open a file must not change it"
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def populated(path) -> None:
    with Ledger.open(path) as led:
        led.start_run(run())
        led.write_spans([span(f"s{i}", name="x" * 200) for i in range(200)])


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_schema_is_refused_and_untouched(db_path, readonly):
    populated(db_path)
    with sqlite3.connect(db_path) as raw:
        raw.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    raw.close()
    message = refused(db_path, readonly=readonly, match="newer")
    assert "99" in message


def test_another_apps_sqlite_database_is_refused_and_untouched(db_path):
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        raw.execute("INSERT INTO customers (name) VALUES ('alice')")
    raw.close()
    message = refused(db_path, match="not a greenmaas ledger")
    assert "customers" in message
    with sqlite3.connect(db_path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    raw.close()
    assert tables == {"customers"}


def test_another_apps_meta_table_is_not_mistaken_for_ours(db_path):
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        raw.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    raw.close()
    refused(db_path, match="not a greenmaas ledger")


@pytest.mark.parametrize(
    "content",
    [b"hello, I am a text file\n", os.urandom(4096), b"SQLite format 3\x00" + b"\x00" * 20],
    ids=["text", "random", "short-header"],
)
@pytest.mark.parametrize("readonly", [False, True])
def test_garbage_is_refused_and_untouched(db_path, content, readonly):
    db_path.write_bytes(content)
    refused(db_path, readonly=readonly)


def test_truncated_ledger_is_refused_and_untouched(db_path):
    populated(db_path)
    data = db_path.read_bytes()
    assert len(data) > 8192
    db_path.write_bytes(data[: len(data) // 2])
    refused(db_path, match="truncated")


def test_corrupt_ledger_is_refused_and_untouched(db_path):
    populated(db_path)
    data = bytearray(db_path.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # the schema page, header left intact
    db_path.write_bytes(bytes(data))
    refused(db_path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(LedgerError, match="directory"):
        Ledger.open(tmp_path)


def test_readonly_open_of_a_missing_path_creates_nothing(tmp_path):
    missing = tmp_path / "nope.db"
    with pytest.raises(LedgerError, match=f"no ledger at {missing}"):
        Ledger.open(missing, readonly=True)
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.open(missing, create=False)
    with pytest.raises(LedgerError, match="no ledger at"):
        Ledger.open(f"sqlite:///{missing}", readonly=True)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.open(tmp_path / "no" / "such" / "dir" / "x.db")


def test_empty_file_becomes_a_ledger_but_is_not_one_for_readers(db_path):
    db_path.write_bytes(b"")
    refused(db_path, readonly=True, match="empty")
    with Ledger.open(db_path) as led:
        led.start_run(run())


def test_bad_url_is_a_ledger_error():
    with pytest.raises(LedgerError, match="cannot open"):
        Ledger.open("nosuchdialect://x/y")


def test_two_ledgers_on_one_file_write_concurrently(db_path):
    import threading

    with Ledger.open(db_path) as a, Ledger.open(db_path) as b:
        a.start_run(run("ra"))
        b.start_run(run("rb"))

        def write(led, run_id):
            for i in range(20):
                led.write_spans([span(f"{run_id}-{i}", run_id=run_id)])

        threads = [threading.Thread(target=write, args=(a, "ra")), threading.Thread(target=write, args=(b, "rb"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with a.read() as conn:
            from sqlalchemy import text

            assert conn.execute(text("select count(*) from spans")).scalar() == 40
