"""A background writer so that measuring never waits on the disk.

The meter hands records to :meth:`LedgerWriter.submit`, which only appends to an in-memory queue.
A daemon thread writes them in batches, each batch in one transaction. A batch that fails is
retried a few times; after that it is dropped, the error kept in :attr:`LedgerWriter.errors` and
logged as a warning on the ``greenmaas`` logger. When the storage itself is out (disk full, a
read-only or vanished file, an unreachable server: see :func:`_is_outage`), records are not
dropped after a few tries: the writer keeps the batch and retries it, backing off to one attempt
every ``outage_retry_s``, while new records wait in the queue; when the storage is back, writing
resumes with them, in order, and :attr:`LedgerWriter.errors` says how long it was out. Nothing
the writer does ever raises into, or blocks, the caller's thread. Memory is bounded: past
``max_queue`` waiting records new ones are dropped, counted in ``stats["dropped"]``, with one
warning (the first time) rather than one per record; closing the writer during an outage drops
what is still held, counted the same way.

The writer is closed (queue flushed, thread stopped) by :meth:`close`, by ``with``, when it is
garbage collected, or at interpreter exit, whichever comes first.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from datetime import datetime, timezone
from typing import Any

from ..errors import ConfigError
from ..records import DeviceTotals, ReadRecord, RunRecord, SampleRecord, SpanRecord

__all__ = ["LedgerWriter"]

logger = logging.getLogger("greenmaas")

_ACCEPTED = (SpanRecord, ReadRecord, SampleRecord, DeviceTotals, RunRecord)
_MAX_ERRORS = 100


class _State:
    """Everything the thread needs, kept apart from :class:`LedgerWriter` so the writer object
    itself can be garbage collected (and its finalizer run) while the thread is alive."""

    def __init__(
        self,
        ledger: Any,
        flush_interval_s: float,
        max_batch: int,
        max_retries: int,
        retry_delay_s: float,
        max_queue: int,
        outage_retry_s: float = 2.0,
    ) -> None:
        self.ledger = ledger
        self.outage_retry_s = outage_retry_s
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_retries = max_retries
        self.retry_delay_s = retry_delay_s
        self.max_queue = max_queue
        self.cond = threading.Condition()
        self.pending: deque = deque()
        self.first_at = 0.0  # monotonic time the oldest pending record arrived
        self.submitted = 0
        self.done = 0  # written or dropped
        self.written = 0
        self.dropped = 0
        self.flush_wanted = 0  # flush() waits until ``done`` reaches this
        self.stopping = False
        self.stopped = False
        self.overflowing = False
        self.outage_since: float | None = None  # monotonic time the storage went out, while it is
        self.errors: list[tuple[datetime, str]] = []
        self.error_count = 0  # every error so far, including those no longer kept in ``errors``
        self.thread: threading.Thread | None = None

    # -- caller side ---------------------------------------------------------------------

    def submit(self, record: Any) -> bool:
        problem = None
        with self.cond:
            if self.stopping:
                problem = f"record submitted after close was dropped: {type(record).__name__}"
            elif len(self.pending) >= self.max_queue and not callable(record):
                # Callables (a run's end, its heartbeat) are few and carry the run's state: they
                # are always queued, so a flood of records cannot leave the run unended.
                self.dropped += 1
                if not self.overflowing:
                    self.overflowing = True  # warned once per writer; the count says the rest
                    problem = (
                        f"writer queue full ({self.max_queue} records): records are being dropped "
                        "(counted in stats['dropped'])"
                    )
                else:
                    return False
        if problem is not None:
            self._error(problem)
            return False
        with self.cond:
            self.pending.append(record)
            self.submitted += 1
            if len(self.pending) == 1:
                self.first_at = time.monotonic()
                self.cond.notify_all()
            elif len(self.pending) == self.max_batch:
                self.cond.notify_all()
            return True

    def flush(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            target = self.submitted
            self.flush_wanted = max(self.flush_wanted, target)
            self.cond.notify_all()
            while self.done < target:
                if self.stopped:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def close(self, timeout: float | None = None) -> None:
        with self.cond:
            if self.stopping:
                thread = None if self.stopped else self.thread
            else:
                self.stopping = True
                self.cond.notify_all()
                thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- thread side ---------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._write(batch)
                with self.cond:
                    self.done += len(batch)
                    self.cond.notify_all()
        except BaseException as exc:  # never die silently; flush() must not wait forever
            self._error(f"writer thread stopped: {exc!r}")
        finally:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()

    def _next_batch(self) -> list | None:
        with self.cond:
            while not self.pending:
                if self.stopping:
                    return None
                self.cond.wait()
            # Let a batch build up, unless someone is waiting for it or it is full already.
            while (
                len(self.pending) < self.max_batch
                and not self.stopping
                and self.flush_wanted <= self.done
            ):
                remaining = self.first_at + self.flush_interval_s - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            n = min(len(self.pending), self.max_batch)
            batch = [self.pending.popleft() for _ in range(n)]
            if self.pending:
                self.first_at = time.monotonic()
            return batch

    def _write(self, batch: list) -> None:
        delay = self.retry_delay_s
        attempts = 0
        first_failure = 0.0
        while True:
            attempts += 1
            try:
                self.ledger.write(batch)
            except Exception as exc:
                last = exc
                if attempts == 1:
                    first_failure = time.monotonic()
                if _is_record_error(exc):
                    if len(batch) > 1:
                        # One bad record (duplicate id, unknown run) must not sink its batch.
                        for rec in batch:
                            self._write([rec])
                        return
                    break
                outage = _is_outage(exc)
                if self.stopping or (attempts > self.max_retries and not outage):
                    break
                if outage and attempts > self.max_retries and self.outage_since is None:
                    # Past the retries that ride out a dropped connection or a brief lock: say so once.
                    self.outage_since = first_failure
                    self._error(f"ledger unavailable ({_first_line(exc)}): holding records (up to "
                                f"{self.max_queue} queued) and retrying every {self.outage_retry_s:g} s at most")
                deadline = time.monotonic() + delay
                with self.cond:  # wait before retrying, but stop waiting when closing
                    while not self.stopping and (left := deadline - time.monotonic()) > 0:
                        self.cond.wait(left)
                delay = min(delay * 2, self.outage_retry_s) if outage else delay * 2
                continue
            if self.outage_since is not None:
                lasted = time.monotonic() - self.outage_since
                self.outage_since = None
                self._error(f"ledger writable again after {lasted:.1f} s; held records written")
            with self.cond:
                self.written += len(batch)
            return
        with self.cond:
            self.dropped += len(batch)
        self._error(f"dropped {len(batch)} record(s) after {attempts} attempt(s): {last}")

    def _error(self, message: str) -> None:
        with self.cond:
            self.errors.append((datetime.now(timezone.utc), message))
            del self.errors[:-_MAX_ERRORS]
            self.error_count += 1
        logger.warning("greenmaas ledger writer: %s", message)  # outside the lock: handlers may be slow


#: What SQLite says when its storage, not a record, is at fault.
_OUTAGE_MESSAGES = ("disk is full", "readonly database", "disk i/o error", "unable to open database",
                    "database is locked", "no such table")


def _is_outage(exc: BaseException | None) -> bool:
    """True when the storage is out (disk full, a read-only or vanished file, a database server
    that cannot be reached) rather than a record or the code at fault: worth holding records for."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (OperationalError, InterfaceError)) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated
        ):
            return True
        if isinstance(exc, OSError):
            return True
        text = str(exc).lower()
        if any(m in text for m in _OUTAGE_MESSAGES):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_record_error(exc: BaseException | None) -> bool:
    """True when the records themselves are at fault (retrying cannot help), not the database."""
    from sqlalchemy.exc import DataError, IntegrityError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (IntegrityError, DataError, ConfigError, TypeError, ValueError)):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


class LedgerWriter:
    """Writes records to a :class:`~greenmaas.ledger.Ledger` from a background thread.

    ``submit(record)`` takes a :class:`SpanRecord`, :class:`ReadRecord` (a raw device read, ~100
    a second per device: they are written in bulk with the rest of their batch),
    :class:`SampleRecord`, :class:`DeviceTotals`, :class:`RunRecord` (start of a run) or a
    callable ``fn(ledger)`` (e.g. to end a run), returns at once and never raises. Records are
    written in submission order (see :meth:`Ledger.write`), at most ``max_batch`` per
    transaction, at least every ``flush_interval_s`` seconds. A failing batch is retried
    ``max_retries`` times, ``retry_delay_s`` apart (doubling), then dropped and noted in
    :attr:`errors`; a batch refused because of one bad record (duplicate id, unknown run) is
    written record by record so only that one is lost. While the storage is out (disk full,
    read-only or vanished file, unreachable server) a batch is held and retried, at most
    ``outage_retry_s`` apart, until it is written or the writer closes; :attr:`errors` notes
    when the outage began and how long it lasted. At most ``max_queue`` records wait in
    memory; beyond that new ones (callables excepted) are dropped, counted in ``stats["dropped"]``
    and warned about once. A writer that is garbage collected or still open at
    interpreter exit flushes for at most ``exit_timeout_s`` seconds.
    """

    def __init__(
        self,
        ledger,
        *,
        flush_interval_s: float = 0.5,
        max_batch: int = 1000,
        max_retries: int = 3,
        retry_delay_s: float = 0.1,
        max_queue: int = 100_000,
        exit_timeout_s: float = 30.0,
        outage_retry_s: float = 2.0,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ConfigError("max_batch and max_queue must be at least 1")
        self.ledger = ledger
        self._state = _State(
            ledger, flush_interval_s, max_batch, max_retries, retry_delay_s, max_queue, outage_retry_s
        )
        thread = threading.Thread(
            target=self._state.run, name="greenmaas-ledger-writer", daemon=True
        )
        self._state.thread = thread
        thread.start()
        # Runs at garbage collection or interpreter exit: queued records are not lost, and a
        # ledger that never answers cannot hold the interpreter hostage.
        self._finalizer = weakref.finalize(self, self._state.close, exit_timeout_s)

    def submit(self, record: Any) -> bool:
        """Queue a record for writing. Returns False (and never raises) if it was refused."""
        try:
            if not (isinstance(record, _ACCEPTED) or callable(record)):
                self._state._error(f"cannot write a {type(record).__name__}; record dropped")
                return False
            return self._state.submit(record)
        except Exception:  # pragma: no cover - a bug here must still not reach the caller
            logger.exception("greenmaas ledger writer: submit failed")
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far is written (or dropped). False on timeout."""
        return self._state.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop the thread. Safe to call twice. Does not close the ledger."""
        self._finalizer.detach()
        self._state.close(timeout)

    @property
    def errors(self) -> list[tuple[datetime, str]]:
        """(UTC time, message) of each failure, most recent last (the last 100 are kept)."""
        return list(self._state.errors)

    @property
    def error_count(self) -> int:
        """How many failures there have been in all (:attr:`errors` keeps the last 100)."""
        return self._state.error_count

    @property
    def stats(self) -> dict[str, int]:
        """Counts of records submitted, written, dropped, and still pending."""
        s = self._state
        with s.cond:
            return {
                "submitted": s.submitted,
                "written": s.written,
                "dropped": s.dropped,
                "pending": s.submitted - s.done,
            }

    @property
    def closed(self) -> bool:
        return self._state.stopping

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LedgerWriter {self.stats}>"
