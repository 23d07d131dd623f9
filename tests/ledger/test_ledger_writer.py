"""LedgerWriter: batching, flushing, closing, and never raising into or blocking the caller."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from ledger_records import at, run, sample, span, totals
from sqlalchemy import select, text

from greenmaas.errors import ConfigError, LedgerError
from greenmaas.ledger import Ledger, LedgerWriter
from greenmaas.ledger.models import Run


class RecordingLedger:
    """Stands in for a Ledger: remembers each batch; ``fail`` decides whether a write raises."""

    def __init__(self, fail=lambda batch, attempt: None):
        self.batches: list[list] = []
        self.attempts = 0
        self.fail = fail

    def write(self, records):
        records = list(records)
        self.attempts += 1
        error = self.fail(records, self.attempts)
        if error is not None:
            raise error
        self.batches.append(records)


def test_batches_respect_max_batch_and_keep_order():
    fake = RecordingLedger()
    with LedgerWriter(fake, flush_interval_s=60, max_batch=10) as w:
        records = [sample(i) for i in range(25)]
        for r in records:
            assert w.submit(r) is True
        assert w.flush(timeout=5)
    assert all(len(b) <= 10 for b in fake.batches)
    assert [r for b in fake.batches for r in b] == records
    assert w.stats == {"submitted": 25, "written": 25, "dropped": 0, "pending": 0}


def test_records_wait_for_the_interval_or_a_flush():
    fake = RecordingLedger()
    w = LedgerWriter(fake, flush_interval_s=60)
    w.submit(sample(1))
    w.submit(sample(2))
    time.sleep(0.05)
    assert fake.batches == []
    assert w.flush(timeout=5)
    assert [len(b) for b in fake.batches] == [2]  # one batch, one transaction
    w.close()


def test_short_interval_writes_without_flush():
    fake = RecordingLedger()
    w = LedgerWriter(fake, flush_interval_s=0.01)
    w.submit(sample(1))
    deadline = time.monotonic() + 5
    while not fake.batches and time.monotonic() < deadline:
        time.sleep(0.005)
    assert fake.batches
    w.close()


def test_real_ledger_gets_everything_in_order(db_path):
    with Ledger.open(db_path) as led:
        with LedgerWriter(led, flush_interval_s=0.01, max_batch=7) as w:
            w.submit(run())
            for i in range(20):
                w.submit(span(f"s{i}"))
                w.submit(sample(i))
            w.submit(totals())
            w.submit(lambda lg: lg.end_run("r1", at(30), "finished"))
            assert w.flush(timeout=5)
            assert w.errors == []
        with led.read() as conn:
            assert conn.execute(select(Run.status)).scalar_one() == "finished"
            assert conn.execute(text("select count(*) from spans")).scalar() == 20
            assert conn.execute(text("select count(*) from samples")).scalar() == 20


def test_failing_ledger_never_raises_into_the_caller(caplog):
    # A failure that is not the storage being out (see the full-disk tests below): retried, then dropped.
    boom = LedgerError("ledger.db: malformed statement")
    fake = RecordingLedger(fail=lambda batch, attempt: boom)
    w = LedgerWriter(fake, flush_interval_s=0.01, max_retries=2, retry_delay_s=0.001)
    with caplog.at_level(logging.WARNING, logger="greenmaas"):
        for i in range(5):
            assert w.submit(sample(i)) is True
        assert w.flush(timeout=5)
        w.close()
    assert fake.attempts >= 3  # first try + 2 retries for the batch
    assert w.stats["dropped"] == 5 and w.stats["written"] == 0
    when, message = w.errors[-1]
    assert when.tzinfo is not None and "malformed statement" in message and "dropped" in message
    assert any("malformed statement" in r.getMessage() for r in caplog.records if r.name == "greenmaas")


def test_transient_failures_are_retried():
    fake = RecordingLedger(fail=lambda batch, attempt: LedgerError("locked") if attempt <= 2 else None)
    with LedgerWriter(fake, flush_interval_s=0.01, max_retries=3, retry_delay_s=0.001) as w:
        w.submit(sample(1))
        assert w.flush(timeout=5)
    assert fake.batches == [[sample(1)]] and w.errors == []


def test_one_bad_record_does_not_sink_its_batch(db_path):
    with Ledger.open(db_path) as led:
        led.start_run(run())
        led.write_spans([span("dup")])
        with LedgerWriter(led, flush_interval_s=60, retry_delay_s=0.001) as w:
            for r in [span("a"), span("dup"), span("b")]:
                w.submit(r)
            assert w.flush(timeout=5)
        assert w.stats["written"] == 2 and w.stats["dropped"] == 1
        assert "UNIQUE" in w.errors[-1][1]
        with led.read() as conn:
            assert conn.execute(text("select count(*) from spans")).scalar() == 3


def test_submit_is_quick_while_the_database_is_stuck():
    release = threading.Event()
    fake = RecordingLedger(fail=lambda batch, attempt: release.wait(5) and None)
    w = LedgerWriter(fake, flush_interval_s=0.001, max_batch=10)
    start = time.perf_counter()
    for i in range(5000):
        w.submit(sample(i))
    assert time.perf_counter() - start < 1.0
    release.set()
    assert w.flush(timeout=5)
    w.close()


def test_odd_submissions_are_refused_quietly():
    w = LedgerWriter(RecordingLedger())
    assert w.submit("not a record") is False
    assert "cannot write a str" in w.errors[-1][1]
    w.close()
    w.close()  # twice is fine
    assert w.submit(sample(1)) is False
    assert w.closed and "after close" in w.errors[-1][1]


def test_close_flushes_what_is_queued():
    fake = RecordingLedger()
    w = LedgerWriter(fake, flush_interval_s=60)
    for i in range(3):
        w.submit(sample(i))
    w.close()
    assert sum(len(b) for b in fake.batches) == 3


def test_garbage_collection_flushes_what_is_queued():
    fake = RecordingLedger()
    w = LedgerWriter(fake, flush_interval_s=60)
    w.submit(sample(1))
    del w
    gc.collect()
    assert fake.batches == [[sample(1)]]


def test_interpreter_exit_does_not_lose_queued_records(db_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        from ledger_records import run, span
        from greenmaas.ledger import Ledger, LedgerWriter
        led = Ledger.open({str(db_path)!r})
        w = LedgerWriter(led, flush_interval_s=600)
        w.submit(run())
        for i in range(50):
            w.submit(span(f"s{{i}}"))
        # no flush, no close: exit with records still queued
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with Ledger.open(db_path, readonly=True) as led, led.read() as conn:
        assert conn.execute(text("select count(*) from spans")).scalar() == 50


def test_flush_times_out_rather_than_hang():
    release = threading.Event()
    fake = RecordingLedger(fail=lambda batch, attempt: release.wait(5) and None)
    w = LedgerWriter(fake, flush_interval_s=0.001)
    w.submit(sample(1))
    assert w.flush(timeout=0.05) is False
    release.set()
    assert w.flush(timeout=5) is True
    w.close()


def test_bad_arguments():
    with pytest.raises(ConfigError):
        LedgerWriter(RecordingLedger(), max_batch=0)


def test_a_full_queue_drops_new_records_instead_of_growing():
    release = threading.Event()
    fake = RecordingLedger(fail=lambda batch, attempt: release.wait(5) and None)
    w = LedgerWriter(fake, flush_interval_s=0.001, max_batch=1, max_queue=3)
    w.submit(sample(0))
    deadline = time.monotonic() + 5
    while fake.attempts == 0 and time.monotonic() < deadline:  # the writer is now stuck on it
        time.sleep(0.001)
    results = [w.submit(sample(i)) for i in range(1, 7)]
    assert results == [True] * 3 + [False] * 3
    assert "queue full" in w.errors[-1][1] and len(w.errors) == 1
    release.set()
    assert w.flush(timeout=5)
    w.close()
    assert w.stats["written"] == 4 and w.stats["dropped"] == 3


def test_raw_reads_interleaved_with_spans_are_written_in_bulk(db_path):
    """A meter's stream: ~100 reads a second per device between spans. They are written with
    their batch, few statements per kind, and read back in order with exact floats."""
    from greenmaas.records import ReadRecord

    statements = []
    with Ledger.open(db_path) as led:
        from sqlalchemy import event

        event.listen(led.engine, "before_cursor_execute",
                     lambda conn, cursor, sql, *a: statements.append(sql.split(" ")[2] if sql.startswith("INSERT") else ""))
        w = LedgerWriter(led, flush_interval_s=60, max_batch=5000)
        w.submit(run())
        t0 = 81234.56789012345
        expected = []
        for i in range(1000):
            rec = ReadRecord("r1", f"gpu:{i % 2}", t0 + i * 0.01, 1e6 + i / 3, 250.0 + i % 7)
            expected.append(rec)
            assert w.submit(rec)
            if i % 50 == 49:
                w.submit(span(f"s{i}", i * 0.01, i * 0.01 + 0.5))
        assert w.flush(timeout=10)
        w.close()
        assert w.stats["written"] == 1 + 1000 + 20 and w.errors == []
        with led.read() as conn:
            got = conn.execute(text("SELECT device, t_mono, energy_j, power_w FROM reads ORDER BY id")).all()
    assert got == [(r.device, r.t_mono, r.energy_j, r.power_w) for r in expected]
    # Grouped by kind within the batch: the 1,000 reads go as one executemany (of multi-row
    # INSERTs), not as 21 runs of reads between spans; so do the 20 spans.
    assert statements.count("reads") == 1 and statements.count("spans") == 1


def test_a_full_disk_holds_records_and_writing_resumes_when_it_has_room(db_path):
    """SQLite's own "database or disk is full" (the file capped with ``max_page_count``): nothing
    is dropped while records fit in the queue, submit stays quick, the outage and its end are
    noted, and once there is room again every record is written, in order."""
    from sqlalchemy import event

    cap = [None]
    with Ledger.open(db_path) as led:
        @event.listens_for(led.engine, "begin")
        def _cap(conn):
            if cap[0] is not None:
                conn.exec_driver_sql(f"PRAGMA max_page_count = {cap[0]}")

        writer = LedgerWriter(led, flush_interval_s=0.01, max_batch=50, retry_delay_s=0.01, outage_retry_s=0.05,
                              max_queue=10_000)
        writer.submit(run())
        assert writer.flush(10)
        with led.read() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
        cap[0] = pages  # the disk is full: not one more page
        started = time.monotonic()
        for i in range(400):
            assert writer.submit(span(f"s{i}", i, i + 1, energy=1.0 + i))
        assert time.monotonic() - started < 1.0
        assert not writer.flush(0.5)  # held, not written, not dropped
        assert writer.stats["dropped"] == 0
        assert any("ledger unavailable" in m and "full" in m for _, m in writer.errors)
        cap[0] = 1_000_000  # room again
        assert writer.flush(10)
        writer.close()
        assert writer.stats["dropped"] == 0 and writer.stats["written"] == 401
        assert any("writable again" in m for _, m in writer.errors)
    from greenmaas.analysis import read_ledger

    spans = read_ledger(db_path)
    assert sorted(spans["span_id"], key=lambda s: int(s[1:])) == [f"s{i}" for i in range(400)]


def test_closing_during_an_outage_drops_what_is_held_and_counts_it(db_path):
    from sqlalchemy import event

    with Ledger.open(db_path) as led:
        writer = LedgerWriter(led, flush_interval_s=0.01, max_batch=10, retry_delay_s=0.01, outage_retry_s=0.05)
        writer.submit(run())
        assert writer.flush(10)
        with led.read() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()

        @event.listens_for(led.engine, "begin")
        def _cap(conn):
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")

        for i in range(400):
            writer.submit(span(f"s{i}", i, i + 1))
        assert not writer.flush(0.3)
        writer.close(timeout=5)
        stats = writer.stats
        assert stats["dropped"] > 0 and stats["dropped"] + stats["written"] == 401 and stats["pending"] == 0
        assert any("dropped" in m for _, m in writer.errors)
