"""The meter: sources, sampler, spans, attribution and ledger, tied together.

::

    meter = greenmaas.Meter()                    # auto-detects devices, ledger ./greenmaas.db
    with meter:                                  # a run: starts sampling, ends the run on exit
        with meter.measure("epoch-1", model="resnet50", phase="training"):
            train_one_epoch()

Everything is passed in (``Meter(sources=..., ledger=..., clock=...)``); auto-detection only
happens when nothing is. ``greenmaas.measure(...)`` outside any meter uses a process default
created on first use (never at import) and stopped at interpreter exit.

Failure policy: measuring never crashes or stalls the user's code. Background errors (a device
failing, the ledger unwritable, records dropped because the writer fell behind) are logged to
``logging.getLogger("greenmaas")``, kept in ``meter.errors`` and ``meter.sampler.failures``, and
show in results as gaps.

Crash safety: the run's heartbeat is written at least once a second, so a run whose process was
killed reads as ``interrupted`` (:mod:`greenmaas.ledger.liveness`); a span is final about 0.15 s
after it ends and in the ledger within another ``flush_interval_s`` plus the writer's (0.25 s
each), so every span closed a second before a SIGKILL is stored. SIGTERM and SIGINT stop the meter
first (see :class:`Meter`).
"""

from __future__ import annotations

import contextvars
import itertools
import math
import logging
import os
import signal
import socket
import sys
import threading
import uuid
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .attribution.engine import POLICIES
from .attribution.live import LiveAttributor, WindowTotals
from .clock import Clock, SystemClock
from .errors import ConfigError, GreenmaasError
from .records import DeviceEnergy, DeviceTotals, ReadRecord, RunRecord, SampleRecord, SpanRecord
from .processes import ACTIVITY_S as _ACTIVITY_S
from .processes import CHECK_S as _PROCESS_CHECK_S
from .processes import ProcessWatch
from .sampling.sampler import Sampler
from .sources.base import Source, weakest_method
from .batch import Batch
from .spans import Span, SpanResult

if TYPE_CHECKING:
    from .accounting.config import AccountingConfig
    from .ledger.store import Ledger
    from .ledger.writer import LedgerWriter

__all__ = ["Meter", "get_meter", "measure", "request", "batch"]

#: A background meter never ends a window closer to now than this: a span is stamped, then
#: registered, and a window must not pass a stamp whose span is not registered yet.
_SETTLE_MARGIN_S = 0.02
#: The run's heartbeat is written at least this often (s); readers allow much more (liveness).
_HEARTBEAT_S = 0.5
#: With no span in flight, the background flush attributes idle windows this often (s).
_IDLE_FLUSH_S = 1.0
#: Signals that stop a meter started in the main thread before the process acts on them.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("greenmaas")

_current_meter: contextvars.ContextVar["Meter | None"] = contextvars.ContextVar("greenmaas_meter", default=None)
_default_meter: "Meter | None" = None
_default_lock = threading.Lock()
# Meters started and not yet stopped in this process, oldest first: a span opened where no meter
# is current (a thread pool without greenmaas.bind) joins the most recent one.
_active: "weakref.WeakValueDictionary[int, Meter]" = weakref.WeakValueDictionary()
_active_order = itertools.count()


class Meter:
    """Measures device energy and attributes it to spans.

    Parameters (all keyword-only):

    ``sources``
        Energy sources; default: :func:`greenmaas.sources.detect.detect`.
    ``ledger``
        A :class:`~greenmaas.ledger.Ledger`, a path or SQLAlchemy URL, ``None`` for the default
        (``GREENMAAS_LEDGER`` or ``./greenmaas.db``), or ``False`` for no ledger.
    ``clock``
        Default :class:`~greenmaas.clock.SystemClock`; tests pass a ``FakeClock`` and
        ``background=False``, then drive time with :meth:`tick`.
    ``period_s``
        Sampling period for every source (default: each source's own — 20 ms for NVML).
    ``policy``
        ``"time"`` (default) or ``"weighted"``; see :mod:`greenmaas.attribution`.
    ``accounting``
        An :class:`~greenmaas.accounting.AccountingConfig` for carbon and cost at record time;
        default from the environment (``GREENMAAS_LOCATION``, ``GREENMAAS_PRICE``, …).
    ``sample_interval_s``
        Spacing of the cumulative-energy points written to the ledger's samples table.
    ``result_wait_s``
        How long ``span.result`` may wait for a span's energy to settle (an energy counter
        reveals energy at its next update); past it the result is provisional.
    ``record_reads``
        Write every raw read to the ledger (default True), so ``greenmaas export`` and
        ``greenmaas attribute`` can re-attribute the run offline to the same figures.
    ``flush_interval_s``
        How often finished spans are attributed and handed to the ledger writer (default 0.25 s;
        the writer commits at the same pace). With the defaults a span is in the ledger within a
        second of ending, so a SIGKILL loses at most the last second. With no span in flight,
        idle time is attributed once a second instead.
    ``max_queue``
        Records that may wait for the ledger writer (default 100,000). When spans end faster
        than the ledger takes them, new records are dropped rather than memory growing: counted,
        warned about once, listed in :attr:`errors` and recorded in the run's
        ``config["dropped_records"]`` when it ends.
    ``handle_signals``
        When True (default) and :meth:`start` runs in the main thread, SIGTERM and SIGINT stop
        the meter first (spans flushed and attributed, the run marked ``interrupted``), then go
        on to the handler that was there before: yours, Python's ``KeyboardInterrupt`` for
        SIGINT, or, for the default action, that action (the process terminates by the signal).
        A signal that was ignored stays ignored. :meth:`stop` puts the previous handlers back.
        Started from another thread, nothing is installed (Python allows handlers only in the
        main thread). Pass False to leave signals alone.

    ``max_pending``
        Spans opened and not yet taken in by the background attribution (default 100,000;
        ``reports/overhead.md`` measures the memory a full backlog takes). A loop
        that opens spans faster than they can be attributed for long enough to fill it does not
        grow memory or slow down: further spans are *dropped* — they
        still nest and time their children, but are not measured; ``span.dropped`` is True, their
        result says so, the count is warned about once, listed in :attr:`errors` and recorded
        in the run's ``config["dropped_spans"]``. Their device energy goes to their parents or
        to idle, so the books still balance.
    ``rollup``, ``rollup_above_hz``, ``rollup_interval_s``
        Many short spans (forward calls, steps) are recorded as per-interval rollups once one
        class of them closes faster than ``rollup_above_hz`` per second (default 200): one row
        per class per ``rollup_interval_s`` (default 1 s) with their count, summed energy and
        duration statistics, instead of a row each. ``rollup=True`` rolls up every eligible
        span, ``False`` none. See :mod:`greenmaas.aggregate`.

    The run writes a heartbeat (its last sample time) at least once a second; a run whose process
    is gone reads as ``interrupted`` (:mod:`greenmaas.ledger.liveness`). :attr:`errors` also
    collects the ledger writer's failures (disk full, read-only, file gone) at each flush and at
    :meth:`stop`.
    """

    def __init__(
        self,
        *,
        sources: Sequence[Source] | None = None,
        ledger: Any = None,
        clock: Clock | None = None,
        period_s: float | None = None,
        policy: str = "time",
        accounting: Any = None,
        background: bool = True,
        flush_interval_s: float = 0.25,
        sample_interval_s: float = 1.0,
        config: Mapping[str, Any] | None = None,
        result_wait_s: float = 0.3,
        record_reads: bool = True,
        max_queue: int = 100_000,
        handle_signals: bool = True,
        max_pending: int = 100_000,
        rollup: Any = "auto",
        rollup_above_hz: float | None = None,
        rollup_interval_s: float | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
        if rollup not in ("auto", True, False):
            raise ConfigError(f"rollup must be 'auto', True or False, not {rollup!r}")
        self.clock = clock or SystemClock()
        self._mono = self.clock.monotonic
        self._intake: Any = None  # the attributor's intake (a bound append) once started
        self._backlog: Any = ()  # spans opened and not taken in by the attributor yet
        self.max_pending = max_pending
        self._drops = 0  # spans dropped at intake (see max_pending)
        self._drops_lock = threading.Lock()
        self._drops_told = 0
        self.policy = policy
        self.background = background
        self.flush_interval_s = flush_interval_s
        self.sample_interval_s = sample_interval_s
        self.unused: list = []
        given_sources = sources is not None
        from .distributed import detect_rank

        #: This process's place in a distributed job (torchrun, Slurm), or None.
        try:
            self.rank = detect_rank()
        except ConfigError as exc:  # a launcher's variable we cannot read: measure as one process
            log.warning("greenmaas: %s; measuring as a single process", exc)
            self.rank = None
        if sources is None:
            from .sources.detect import detect

            if self.rank is not None and self.rank.world_size > 1:
                # Each device of the job once: this rank's own GPU, host devices by local rank 0.
                from .distributed import own_gpu

                found = detect(visible_devices=own_gpu(self.rank), host_devices=self.rank.measures_host)
            else:
                found = detect()
            sources = found.sources
            self.unused = list(found.unused)
        self.sources = list(sources)
        self._owns_sources = not given_sources
        self.result_wait_s = result_wait_s
        self.record_reads = record_reads
        self.sampler = Sampler(self.sources, clock=self.clock, period_s=period_s, on_read=self._on_read)
        self._ledger_arg = ledger
        self._owns_ledger = False
        self.ledger: Ledger | None = None
        self._writer: LedgerWriter | None = None
        self._accounting_arg = accounting
        self.accounting: AccountingConfig | None = None
        self.run_id = uuid.uuid4().hex
        self._ids = itertools.count(1)
        self._id_prefix = self.run_id[:12]
        self._attr: LiveAttributor | None = None
        self._claims: Any = None  # this process's claims on its devices (greenmaas.claims), once started
        self._procs: ProcessWatch | None = None  # who else uses the GPUs, once started
        self._procs_last: float | None = None
        self._activity_last: float | None = None
        self._lock = threading.RLock()
        self._settled = threading.Condition(threading.Lock())  # notified after every attribution pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._stopped = False
        self._t_start: float | None = None
        self._sample_next: dict[str, float] = {}
        self._sample_base: dict[str, float] = {}  # cumulative energy at each device's first sample
        self.errors: list[tuple[datetime, str]] = []
        self.totals: dict[str, dict[str, float]] = {}
        self.run: RunRecord | None = None
        self._config = dict(config or {})
        self._finalizer: weakref.finalize | None = None
        self._on_stop: list = []
        self._on_final: list = []  # callbacks given the spans each flush finalises, with their records
        self.max_queue = max_queue
        self.handle_signals = handle_signals
        self._signal_handlers: dict[int, Any] = {}  # signal -> (our handler, the previous one)
        self._writer_errors_seen = 0
        self._last_beat = -math.inf
        from .aggregate import ROLLUP_ABOVE_HZ, ROLLUP_INTERVAL_S, Rollups, ShareRows

        self._share_rows = ShareRows(enabled=rollup is not False)
        self.rollups = Rollups(
            rollup,
            ROLLUP_ABOVE_HZ if rollup_above_hz is None else rollup_above_hz,
            ROLLUP_INTERVAL_S if rollup_interval_s is None else rollup_interval_s,
            on_first=self._say_rollup,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Meter":
        """Open the run and start sampling. Safe to call twice."""
        if self._started:
            return self
        self._started = True
        self._open_ledger()
        self._load_accounting()
        self._t_start = self.clock.monotonic()
        self._attr = LiveAttributor(
            self.policy, self._t_start, settle_margin_s=_SETTLE_MARGIN_S if self.background else 0.0
        )
        self._intake = self._attr.intake_append
        self._backlog = self._attr.backlog
        devices = [
            {
                "id": d.id,
                "kind": d.kind,
                "name": d.name,
                "method": d.method,
                "uuid": d.uuid,
                "note": d.note,
                "power_field": d.power_field,
            }
            for d in list(self.sampler.devices) + list(self.sampler.unmeasurable)
        ]
        from .claims import Claims

        self._claims = Claims(self.run_id)
        try:
            shared = self._claims.take(devices)  # an unmeasurable device is never claimed
        except Exception as exc:  # knowing who else measures a device must not stop measuring it
            self._error(f"device claims not made: {exc}")
            shared = []
        for h in shared:
            log.warning(
                "greenmaas: %s is already measured by another meter on this host (pid %s, run %s): each "
                "counts the whole device's energy among its own spans, so a report over both counts it twice "
                "and charges each one's spans for the other's work; measure it with one meter",
                h.device, h.pid if h.pid is not None else "?", h.run_id or "?",
            )
        self._procs = ProcessWatch.for_sampler(self.sampler)
        self._check_processes()
        config = {
            "policy": self.policy,
            "periods_s": {c.device.id: c.period_s for c in self.sampler._channels},
            **({"shared_devices": [h.to_dict() for h in shared]} if shared else {}),
            "t0_mono": self._t_start,
            "unused": [{"source": u.source, "reason": u.reason} for u in self.unused],
            **({"distributed": self.rank.to_dict()} if self.rank is not None else {}),
            **self._config,
        }
        if self.accounting is not None:
            try:
                config["accounting"] = self.accounting.to_dict()
            except Exception as exc:  # accounting must not stop measuring
                self._error(f"accounting config not recorded: {exc}")
        self.run = RunRecord(
            run_id=self.run_id,
            host=os.environ.get("GREENMAAS_HOST", "").strip() or socket.gethostname(),
            pid=os.getpid(),
            start=self.clock.to_utc(self._t_start),
            status="running",
            config=config,
            devices=devices,
        )
        self._submit(self.run)
        self.sampler.sample_now()
        _active[next(_active_order)] = self
        if self.background:
            self.sampler.start()
            self._thread = threading.Thread(target=self._flush_loop, name="greenmaas-flush", daemon=True)
            self._thread.start()
        self._finalizer = weakref.finalize(self, _at_exit_stop, weakref.ref(self))
        self._finalizer.atexit = True
        if self.handle_signals:
            self._install_signal_handlers()
        return self

    def stop(self, status: str = "finished") -> None:
        """Close open spans, attribute everything, write it, end the run. Safe to call twice."""
        if not self._started or self._stopped:
            return
        for fn in list(self._on_stop):
            try:
                fn()
            except Exception as exc:  # a hook must not keep the run from ending
                self._error(f"stop hook {fn!r} failed: {exc}")
        self._stopped = True
        self._uninstall_signal_handlers()
        self._intake = _discard  # spans opened on a stopped meter are not measured
        for key, m in list(_active.items()):
            if m is self:
                _active.pop(key, None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        self.sampler.stop()
        now = self.clock.monotonic()
        with self._lock:
            for s in self._attr.open_spans():  # type: ignore[union-attr]
                s._interrupt(now)
        self._settle(now)
        with self._lock:
            self._flush(self.clock.monotonic(), force=True)
        if self._claims is not None:
            self._claims.release()  # its devices are no longer read here
        if self.run is not None:
            self.run.end = self.clock.to_utc(now)
            self.run.status = status
            writer = self._writer
            dropped = (lambda: writer.stats["dropped"]) if writer is not None else (lambda: 0)
            extra: dict[str, Any] = {}
            if self.dropped_spans:
                extra["dropped_spans"] = self.dropped_spans
                self.errors.append(
                    (datetime.now(timezone.utc), f"{self.dropped_spans} span(s) dropped at intake (see max_pending)")
                )
            if self._procs:
                self._check_processes(force=True)
                extra["gpu_processes"] = self._procs.record()
            if self.rollups.rolled_classes:
                extra["rollups"] = {
                    "classes": list(self.rollups.rolled_classes),
                    "spans": self.rollups.rolled_spans,
                    "interval_s": self.rollups.interval_s,
                }
            self.run.config.update(extra)  # as the ledger's run record will say
            self._submit(_RunEnd(self.run_id, self.run.end, status, dropped, extra))
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:
                self._error(f"ledger writer did not close cleanly: {exc}")
            self._sync_writer_errors()
            dropped_n = self._writer.stats["dropped"]
            if dropped_n:
                self.errors.append(
                    (datetime.now(timezone.utc), f"ledger writer dropped {dropped_n} record(s) in this run")
                )
        if self.ledger is not None and self._owns_ledger:
            try:
                self.ledger.close()
            except Exception as exc:
                self._error(f"ledger did not close cleanly: {exc}")
        if self._owns_sources:
            for src in self.sources:
                try:
                    src.close()
                except Exception as exc:  # closing must not keep the run from ending
                    self._error(f"source {getattr(src, 'name', src)} did not close: {exc}")
        if self._finalizer is not None:
            self._finalizer.detach()

    def _settle(self, t: float) -> None:
        """Read until every counter has published past ``t`` (at most ``result_wait_s`` plus a
        counter period; at once without a background thread, where time does not pass)."""
        import time as _time

        deadline = _time.monotonic() + max(self.result_wait_s, 0.0) + 0.2
        while True:
            self.sampler.sample_now()
            pending = [
                tl for tl in self.sampler.timelines.values() if tl.has_counter and (tl.settled() or -math.inf) < t
            ]
            if not pending or not self.background or _time.monotonic() >= deadline:
                return
            _time.sleep(0.005)

    def __enter__(self) -> "Meter":
        self.start()
        self._token = _current_meter.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            _current_meter.reset(self._token)
        except (ValueError, AttributeError):
            pass
        if exc_type is None:
            self.stop("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.stop("interrupted")
        else:
            self.stop("failed")

    # ------------------------------------------------------------------ spans

    def measure(self, name: str, **tags: Any) -> Span:
        """A span on this meter: a context manager or decorator. Tags: model, phase
        (training/inference/other), request_id, tenant, weight, devices, attrs, …"""
        return Span(name, meter=self, **tags)

    def request(
        self,
        request_id: str,
        *,
        tenant: str | None = None,
        model: str | None = None,
        tokens_in: int | None = None,
        tokens_out: int | None = None,
        name: str = "request",
        **tags: Any,
    ) -> Span:
        """A span for one request. Its weight defaults to ``tokens_out`` (or 1)."""
        weight = tags.pop("weight", None)
        if weight is None:
            weight = float(tokens_out) if tokens_out else 1.0
        return Span(
            name,
            meter=self,
            kind="request",
            request_id=request_id,
            tenant=tenant,
            model=model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            weight=weight,
            phase=tags.pop("phase", "inference"),
            **tags,
        )

    def batch(
        self,
        requests: Iterable[Any],
        *,
        weights: Sequence[float] | None = None,
        name: str = "batch",
        model: str | None = None,
        **tags: Any,
    ) -> "Batch":
        """Mark one forward pass that serves several requests.

        ``requests`` holds request spans (from :meth:`request`, possibly still open in their
        handlers), request ids, or mappings with ``request_id`` and optionally ``tenant``,
        ``tokens_out``, ``items``. Each member gets a share of the batch's energy in proportion
        to its weight: ``weights`` if given, else its output tokens, else its items, else 1.
        """
        return Batch(self, list(requests), weights=weights, name=name, model=model, **tags)

    def on_final(self, fn: Callable[[list[Span], list[Any]], None]) -> None:
        """Call ``fn(spans, records)`` on the meter's flush thread with the spans each flush
        finalises and their ledger records, before their results read as final (e.g. for a
        serving engine to sum a request's shares as they settle). It must be quick and must
        not raise; an error is recorded in :attr:`errors` and the flush goes on."""
        self._on_final.append(fn)

    def on_stop(self, fn) -> None:
        """Call ``fn()`` at the start of :meth:`stop`, before the last attribution (e.g. to let
        pending CUDA events resolve)."""
        self._on_stop.append(fn)

    def retime(self, span: Span, start: float | None, end: float | None) -> None:
        """Settle a held span's times (monotonic s) once they are known, e.g. from CUDA events,
        and release it. Times before what has already been attributed are clamped to it."""
        with self._lock:
            attr = self._attr
            wm = attr.watermark if attr is not None else -math.inf
            new_start = None
            if start is not None and span.start is not None and span.start >= wm:
                new_start = max(start, wm)
            new_end = None
            if end is not None:
                first = new_start if new_start is not None else span.start
                new_end = max(end, wm, first if first is not None else end)
            span._retime(new_start, new_end)
            if attr is not None:
                attr.release(span)

    def hold(self, span: Span) -> None:
        """Hold attribution at ``span``'s start until :meth:`retime` settles its times."""
        if self._attr is not None:
            self._attr.hold(span)

    def _is_held(self, span: Span) -> bool:
        return self._attr is not None and self._attr.is_held(span)

    def _now(self) -> float:
        return self.clock.monotonic()

    def _result(self, span: Span) -> SpanResult:
        """A closed span's result: final once its energy has settled (waiting for that at most
        ``result_wait_s``), else provisional."""
        attr = self._attr
        if span.dropped:
            return SpanResult(
                duration_s=(span.end or self.clock.monotonic()) - span.start,  # type: ignore[operator]
                energy_j=math.nan, by_device_j={}, self_energy_j=math.nan, method="dropped", final=True,
            )
        if attr is None:
            return self._result_of(span)
        if attr.is_final(span):
            return self._result_of(span)
        import time as _time

        deadline = _time.monotonic() + max(self.result_wait_s, 0.0)
        try:
            while True:
                with self._lock:
                    self.sampler.sample_now()
                    self._flush(self.clock.monotonic())
                if attr.is_final(span) or not self.background or self._stopped or _time.monotonic() >= deadline:
                    break
                _time.sleep(0.005)
        except Exception as exc:  # a result is never worth crashing the caller
            self._error(f"result of {span.name!r}: {exc}")
        return self._result_of(span)

    # ------------------------------------------------------------------ background work

    def tick(self) -> None:
        """Read due devices and attribute what can be attributed (for ``background=False``)."""
        self.sampler.tick()
        with self._lock:
            self._flush(self.clock.monotonic())
        self._check_processes()

    def _check_processes(self, force: bool = False) -> None:
        """Look at the processes on the GPUs (:mod:`greenmaas.processes`) when due, warning at
        the first sighting of others on each. Never raises (:class:`ProcessWatch` records a
        listing that fails as its reason; the rest is arithmetic)."""
        procs = self._procs
        if not procs:
            return
        now = self.clock.monotonic()
        if force or self._activity_last is None or now - self._activity_last >= _ACTIVITY_S:
            self._activity_last = now
            procs.sample_activity()
        if not force and self._procs_last is not None and now - self._procs_last < _PROCESS_CHECK_S:
            return
        self._procs_last = now
        for message in procs.check(self.clock.to_utc(now)):
            log.warning("%s", message)

    def flush(self, timeout: float | None = 10.0) -> None:
        """Attribute everything measurable so far and wait until the ledger has it."""
        self.sampler.sample_now()
        with self._lock:
            self._flush(self.clock.monotonic())
        if self._writer is not None:
            self._writer.flush(timeout)
            self._sync_writer_errors()

    def _flush_loop(self) -> None:
        import time as _time

        wait = min(self.flush_interval_s, _HEARTBEAT_S)
        idle_s = max(self.flush_interval_s, _IDLE_FLUSH_S)

        def every() -> float:
            # With no span in flight there is only idle to attribute: do it less often (timing
            # the counter's updates and shaping cost about the same for a few intervals as for
            # one). A span opened meanwhile brings the usual pace back at the next wake-up.
            attr = self._attr
            return self.flush_interval_s if attr is None or attr.pending else idle_s

        last = _time.monotonic()
        while not self._stop.wait(max(min(wait, last + every() - _time.monotonic()), 0.0)):
            self._heartbeat()
            self._sync_writer_errors()
            self._check_processes()
            now = _time.monotonic()
            if now < last + every():
                continue
            last = now
            try:
                with self._lock:
                    self._flush(self.clock.monotonic())
            except Exception as exc:
                self._error(f"attribution failed: {exc}")

    def _heartbeat(self) -> None:
        """Hand the writer the run's last sample time (UTC), at most every ``_HEARTBEAT_S``."""
        now = self.clock.monotonic()
        if self._writer is None or now - self._last_beat < _HEARTBEAT_S:
            return
        self._last_beat = now
        lasts = [tl.t_last for tl in list(self.sampler.timelines.values()) if tl.t_last is not None]
        self._submit(_Heartbeat(self.run_id, self.clock.to_utc(max(lasts) if lasts else now)))

    def _flush(self, now: float, force: bool = False) -> None:
        attr = self._attr
        if attr is None:
            return
        timelines = self.sampler.timelines
        done, totals = attr.advance(now, timelines, force=force)
        if totals:
            self._record_totals(totals)
        records: list[Any] = []
        if done.spans:
            records = [self._record_of(s, timelines) for s in done.spans]
        if done.leaves:
            records.extend(self._leaf_records(done, timelines))
        buckets = self.rollups.due(attr.watermark, force)
        if buckets:
            records.extend(self._rollup_record(b, timelines) for b in buckets)
        if records or (force and self._share_rows.held):
            self._price(records)
            n = len(done.spans)
            for r in self._share_rows.route(done.spans, records[:n], force) + records[n:]:
                self._submit(r)
            for fn in self._on_final if n else ():
                try:
                    fn(done.spans, records[:n])
                except Exception as exc:  # a listener never stops attribution
                    self._error(f"a final-figures listener failed: {exc}")
            for s, r in zip(done.spans, records):
                attr.set_record(s, r)
            attr.forget(done.spans)
        self._record_samples(attr.watermark)
        if not force:
            for tl in timelines.values():
                tl.trim(attr.watermark - 5.0)
        self._tell_drops()
        with self._settled:
            self._settled.notify_all()

    def wait_settled(self, span: Span, timeout: float) -> bool:
        """Wait until ``span``'s figures are final, at most ``timeout`` seconds, without reading
        the devices or attributing: the background flush does that, every ``flush_interval_s``
        (reading ``span.result`` instead drives both, every few ms, until the figures settle).
        Whether they are final. For code that reads many spans' results and can wait, such as
        a server's exporters."""
        import time as _time

        if span.dropped:
            return True
        attr = self._attr
        if attr is None or span.end is None:
            return False
        deadline = _time.monotonic() + max(timeout, 0.0)
        with self._settled:
            while not attr.is_final(span):
                left = deadline - _time.monotonic()
                if left <= 0 or self._stopped or not self.background:
                    return attr.is_final(span)
                self._settled.wait(left)
        return True

    @property
    def dropped_spans(self) -> int:
        """Spans dropped at intake so far (see ``max_pending``)."""
        return self._drops

    def _drop(self) -> None:
        with self._drops_lock:
            self._drops += 1

    def _tell_drops(self) -> None:
        n = self.dropped_spans
        if n and not self._drops_told:
            log.warning(
                "greenmaas: spans are opened faster than they can be attributed; %d dropped so far "
                "(not measured; counted in the run). Fewer spans, or rollups, or a larger "
                "Meter(max_pending=...) avoid it", n,
            )
        self._drops_told = n

    def _leaf_records(self, done: Any, timelines: dict) -> list[SpanRecord]:
        """Records of the leaves finalised in bulk: one each, except those rolled up."""
        import numpy as np

        leaves = done.leaves
        rolled = self.rollups.split(done)
        if rolled.any():
            self.rollups.add(done, rolled)
        out = []
        attr = self._attr
        for i in np.nonzero(~rolled)[0].tolist():
            s = leaves[i]
            r = self._record_of(s, timelines, done.leaf_accumulator(i))
            attr.set_record(s, r)  # type: ignore[union-attr]
            out.append(r)
        return out

    def _rollup_record(self, b: Any, timelines: dict) -> SpanRecord:
        s = b.first
        # A rollup's members are leaves: their energy is all their own.
        devs = _device_energies(s.devices, timelines, b.j, b.j, b.s, b.u, b.start, b.end)
        tenant = self._stored_tenant(s.tenant)
        stats = b.stats()
        return SpanRecord(
            span_id=f"{self._id_prefix}-{next(self._ids):x}",
            run_id=self.run_id,
            name=s.name,
            start=self.clock.to_utc(b.start),
            end=self.clock.to_utc(b.end),
            duration_s=stats.get("duration_s", {}).get("sum", 0.0),
            parent_id=s.parent.span_id if s.parent is not None else None,
            kind=s.kind,
            model=s.model,
            phase=s.phase,
            request_id=s.request_id,
            tenant=tenant,
            weight=b.weight,
            tokens_in=b.tokens_in or None,
            tokens_out=b.tokens_out or None,
            items=b.items or None,
            status=s.status,
            attrs={"rollup": stats},
            devices=devs,
            start_mono=b.start,
            end_mono=b.end,
            count=b.count,
        )

    def _stored_tenant(self, tenant: str | None) -> str | None:
        """A tenant as the ledger stores it: its keyed pseudonym (as given without a ledger)."""
        if tenant is not None and self.ledger is not None:
            return self.ledger.pseudonymise(tenant)
        return tenant

    def _say_rollup(self, label: str) -> None:
        log.warning(
            "greenmaas: %s spans close faster than %g/s; recording them (and any other class that "
            "does) as rollups, one row per %g s (Meter(rollup=False) records every span)",
            label, self.rollups.above_hz, self.rollups.interval_s,
        )

    def _on_read(self, device: str, t: float, reading: Any, error: str | None, t_start: float) -> None:
        if not self.record_reads or self._writer is None:
            return
        if reading is None:
            rec = ReadRecord(self.run_id, device, t, error=error, t_start_mono=t_start)
        else:
            rec = ReadRecord(
                self.run_id, device, t, reading.energy_j, reading.power_w, reading.max_energy_j, t_start_mono=t_start
            )
        self._submit(rec)

    def _record_of(self, s: Span, timelines: dict, acc: Any = None) -> SpanRecord:
        if acc is None:
            acc = self._attr.accumulator(s)  # type: ignore[union-attr]
        assert acc is not None
        devs = _device_energies(
            s.devices, timelines, acc.inclusive(), acc.self_j, acc.self_s, acc.inclusive_u(),
            s.start, s.end,  # type: ignore[arg-type]
        )
        tenant = self._stored_tenant(s.tenant)
        return SpanRecord(
            span_id=s.span_id,  # type: ignore[arg-type]
            run_id=self.run_id,
            name=s.name,
            start=self.clock.to_utc(s.start),  # type: ignore[arg-type]
            end=self.clock.to_utc(s.end),  # type: ignore[arg-type]
            duration_s=s.end - s.start,  # type: ignore[operator]
            parent_id=s.parent.span_id if s.parent is not None else None,
            kind=s.kind,
            model=s.model,
            phase=s.phase,
            request_id=s.request_id,
            tenant=tenant,
            weight=s.weight if s.weight is not None else 1.0,
            tokens_in=s.tokens_in,
            tokens_out=s.tokens_out,
            items=s.items,
            status=s.status,
            attrs=s.attrs,
            devices=devs,
            start_mono=s.start,
            end_mono=s.end,
            link_id=s.link.span_id if s.link is not None else None,
        )

    def _result_of(self, s: Span) -> SpanResult:
        """A span's result: from its ledger record once final, else from the running sums."""
        attr = self._attr
        rec = attr.record(s) if attr is not None else None
        if rec is not None:
            by_dev = {d.device: d.energy_j for d in rec.devices}
            methods = {d.device: d.method for d in rec.devices}
            self_j = rec.self_energy_j
            gap = max((d.gap_s for d in rec.devices), default=0.0)
            unc = rec.uncertainty_j
            dev_s = {d.device: d.self_device_s for d in rec.devices}
        else:
            acc = attr.accumulator(s) if attr is not None else None
            inc = acc.inclusive() if acc is not None else {}
            inc_u = acc.inclusive_u() if acc is not None else {}
            methods = {d: tl.method for d, tl in self.sampler.timelines.items()}
            by_dev = {d: inc.get(d, 0.0) for d in methods if s.devices is None or d in s.devices}
            self_j = sum(acc.self_j.values()) if acc is not None else 0.0
            gap = 0.0
            unc = sum(inc_u.get(d, 0.0) for d in by_dev)
            dev_s = {d: acc.self_s.get(d, 0.0) for d in by_dev} if acc is not None else {}
        end = s.end if s.end is not None else self.clock.monotonic()
        return SpanResult(
            duration_s=end - s.start,  # type: ignore[operator]
            energy_j=sum(by_dev.values()),
            by_device_j=by_dev,
            self_energy_j=self_j,
            method=weakest_method(methods[d] for d in by_dev),
            methods={d: methods[d] for d in by_dev},
            gap_s=gap,
            final=rec is not None or (attr is not None and attr.is_final(s)),
            carbon_g=rec.carbon_g if rec is not None else None,
            cost=rec.cost if rec is not None else None,
            currency=rec.currency if rec is not None else None,
            uncertainty_j=unc,
            device_s=dev_s,
        )

    def _record_totals(self, totals: list[WindowTotals]) -> None:
        for w in totals:
            agg = self.totals.setdefault(w.device, {"total_j": 0.0, "attributed_j": 0.0, "idle_j": 0.0})
            agg["total_j"] += w.total_j
            agg["attributed_j"] += w.attributed_j
            agg["idle_j"] += w.idle_j
            tl = self.sampler.timelines.get(w.device)
            self._submit(
                DeviceTotals(
                    run_id=self.run_id,
                    device=w.device,
                    method=w.method,
                    total_j=w.total_j,
                    attributed_j=w.attributed_j,
                    idle_j=w.idle_j,
                    gap_s=tl.gap_seconds(w.t0, w.t1) if tl is not None else 0.0,
                    idle_s=w.idle_s,
                    start=self.clock.to_utc(w.t0),
                    end=self.clock.to_utc(w.t1),
                    uncertainty_j=w.uncertainty_j,
                )
            )

    def _record_samples(self, upto: float) -> None:
        if self._writer is None or self.sample_interval_s <= 0:
            return
        import numpy as np

        for dev, tl in self.sampler.timelines.items():
            first = tl.t_first
            if first is None:
                continue
            nxt = self._sample_next.get(dev, max(first, self._t_start or first))
            if nxt > upto:
                continue
            grid = np.arange(nxt, upto + 1e-12, self.sample_interval_s)
            if grid.size == 0:
                continue
            base = self._sample_base.get(dev)
            if base is None:  # the run's zero, once: the timeline is trimmed behind the watermark
                base = self._sample_base[dev] = float(tl.energy_at([max(first, self._t_start or first)])[0])
            e = tl.energy_at(grid) - base
            pt, pw = tl.power_samples()
            if pt.size:
                idx = np.clip(np.searchsorted(pt, grid, side="right") - 1, 0, pt.size - 1)
                p = pw[idx]
            else:
                p = None
            for i, g in enumerate(grid):
                self._submit(
                    SampleRecord(
                        run_id=self.run_id,
                        device=dev,
                        t=self.clock.to_utc(float(g)),
                        energy_j=float(e[i]),
                        power_w=float(p[i]) if p is not None else None,
                        method=tl.method,
                    )
                )
            self._sample_next[dev] = float(grid[-1]) + self.sample_interval_s

    def _price(self, records: list[SpanRecord]) -> None:
        """Carbon and cost at record time, with the accounting configured now."""
        if self.accounting is None or not records:
            return
        try:
            from .accounting.config import price_records

            price_records(records, self.accounting)
        except Exception as exc:
            self._error(f"carbon/cost not computed: {exc}")

    # ------------------------------------------------------------------ ledger plumbing

    def _open_ledger(self) -> None:
        arg = self._ledger_arg
        if arg is False:
            return
        from .ledger.store import Ledger
        from .ledger.writer import LedgerWriter

        # A ledger that cannot be opened (not a ledger, newer schema) is the user's to fix: it
        # raises LedgerError here, at start, rather than measuring into nothing.
        self._owns_ledger = not isinstance(arg, Ledger)
        self.ledger = arg if isinstance(arg, Ledger) else Ledger.open(arg)
        self._writer = LedgerWriter(self.ledger, flush_interval_s=0.25, max_queue=self.max_queue)

    def _load_accounting(self) -> None:
        arg = self._accounting_arg
        if arg is False:
            return
        if arg is not None:
            self.accounting = arg
            return
        try:
            from .accounting.config import AccountingConfig

            self.accounting = AccountingConfig.from_env()
        except GreenmaasError:
            raise
        except Exception as exc:
            self._error(f"accounting unavailable: {exc}")

    def _submit(self, record: Any) -> None:
        if self._writer is None:
            return
        try:
            self._writer.submit(record)
        except Exception as exc:
            self._error(f"ledger submit failed: {exc}")

    def _error(self, message: str) -> None:
        self.errors.append((datetime.now(timezone.utc), message))
        log.warning("greenmaas: %s", message)

    def _sync_writer_errors(self) -> None:
        """Copy the ledger writer's new failures into :attr:`errors` (it has logged them)."""
        writer = self._writer
        if writer is None:
            return
        with self._lock:  # the flush thread and the caller's both call this
            count = writer.error_count
            new = count - self._writer_errors_seen
            if new <= 0:
                return
            self._writer_errors_seen = count
            for when, message in writer.errors[-new:]:
                self.errors.append((when, f"ledger: {message}"))

    # ------------------------------------------------------------------ signals

    def _install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop this meter, then do what they did before (see :class:`Meter`)."""
        if threading.current_thread() is not threading.main_thread():
            return
        ref = weakref.ref(self)
        for sig in _STOP_SIGNALS:
            try:
                previous = signal.getsignal(sig)
                if previous in (signal.SIG_IGN, None):  # ignored, or not set from Python: leave it
                    continue
                handler = _signal_handler(ref, previous)
                signal.signal(sig, handler)
            except (ValueError, OSError):  # not the main interpreter, or no such signal here
                continue
            self._signal_handlers[sig] = (handler, previous)

    def _uninstall_signal_handlers(self) -> None:
        """Put back the handlers :meth:`_install_signal_handlers` replaced, where ours is still
        the one installed (a handler installed after ours is its owner's to remove)."""
        handlers, self._signal_handlers = self._signal_handlers, {}
        for sig, (handler, previous) in handlers.items():
            try:
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, previous)
            except (ValueError, OSError):  # stopped from another thread: cannot touch handlers
                pass


def _signal_handler(ref, previous):
    """A handler that stops the meter behind ``ref`` (run ``interrupted``), then hands the
    signal to ``previous``: a callable is called; the default action is restored and the signal
    raised again, so the process ends as it would have without greenmaas."""

    def handler(signum, frame):
        meter = ref()
        if meter is not None and not meter._stopped:
            try:
                meter.stop("interrupted")
            except Exception:  # the signal must still do what it was sent to do
                log.exception("greenmaas: meter did not stop cleanly on signal %s", signum)
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return None

    return handler


class _RunEnd:
    """A run-end record for the ledger writer; ``dropped()`` is how many records the writer has
    dropped by the time this is written (all records of the run were submitted before it)."""

    __slots__ = ("run_id", "end", "status", "dropped", "extra")

    def __init__(self, run_id: str, end: datetime, status: str, dropped=lambda: 0, extra=None):
        self.run_id, self.end, self.status, self.dropped = run_id, end, status, dropped
        self.extra = extra or {}

    def __call__(self, ledger) -> None:
        n = self.dropped()
        config = dict(self.extra)
        if n:
            config["dropped_records"] = n
        ledger.end_run(self.run_id, self.end, self.status, config=config or None)


class _Heartbeat:
    """A heartbeat record for the ledger writer: the run was alive at ``t`` (UTC)."""

    __slots__ = ("run_id", "t")

    def __init__(self, run_id: str, t: datetime):
        self.run_id, self.t = run_id, t

    def __call__(self, ledger) -> None:
        ledger.heartbeat(self.run_id, self.t)


def _device_energies(
    devices: Sequence[str] | None,
    timelines: Mapping[str, Any],
    energy: Mapping[str, float],
    own: Mapping[str, float],
    seconds: Mapping[str, float],
    uncertainty: Mapping[str, float],
    t0: float,
    t1: float,
) -> list[DeviceEnergy]:
    """A record's per-device figures over ``[t0, t1]``: every measured device, or those of
    ``devices`` where the span was limited to some; each device's method and its gaps then."""
    out = []
    for dev, tl in timelines.items():
        if devices is not None and dev not in devices:
            continue
        out.append(
            DeviceEnergy(
                device=dev,
                energy_j=energy.get(dev, 0.0),
                self_j=own.get(dev, 0.0),
                self_device_s=seconds.get(dev, 0.0),
                method=tl.method,
                gap_s=tl.gap_seconds(t0, t1),
                uncertainty_j=uncertainty.get(dev, 0.0),
            )
        )
    return out


def _discard(span: Any) -> None:
    """The intake of a stopped meter."""


def _at_exit_stop(ref) -> None:
    meter = ref()
    if meter is None or meter._stopped:
        return
    status = "finished"
    last = getattr(sys, "last_type", None)
    if last is not None:
        status = "interrupted" if issubclass(last, KeyboardInterrupt) else "failed"
    try:
        meter.stop(status)
    except Exception:  # interpreter exit: nothing left to tell
        pass


# ---------------------------------------------------------------------- process-level helpers


def get_meter() -> Meter:
    """The meter of the current context (``with meter:``), else the process default, created and
    started on first use with auto-detected sources and the default ledger."""
    m = _current_meter.get()
    if m is not None:
        return m
    active = _active_meter()
    if active is not None:
        return active
    global _default_meter
    with _default_lock:
        if _default_meter is None or _default_meter._stopped:
            log.info("greenmaas: no meter active; starting the process default meter")
            try:
                _default_meter = Meter().start()
            except GreenmaasError as exc:
                # The implicit meter sits inside the user's training loop or server: a ledger
                # that cannot be opened must not crash it. Measure without one and say so.
                log.error("greenmaas: %s; measuring without a ledger (span results only)", exc)
                _default_meter = Meter(ledger=False).start()
                _default_meter._error(f"ledger not opened: {exc}")
        return _default_meter


def _active_meter() -> Meter | None:
    """The most recently started meter of this process that has not stopped."""
    items = sorted(_active.items())
    for _, m in reversed(items):
        if m._started and not m._stopped:
            return m
    return None


def measure(name: str, **tags: Any) -> Span:
    """A span on the current meter: ``with greenmaas.measure("epoch-3", model="resnet50",
    phase="training"):`` or ``@greenmaas.measure("step")``. The meter is looked up when the span
    opens, so decorating at import time starts nothing."""
    return Span(name, **tags)


def request(request_id: str, **tags: Any) -> Span:
    """A request span on the current meter; see :meth:`Meter.request`."""
    return get_meter().request(request_id, **tags)


def batch(requests: Iterable[Any], **kwargs: Any) -> Batch:
    """A batch on the current meter; see :meth:`Meter.batch`."""
    return get_meter().batch(requests, **kwargs)
