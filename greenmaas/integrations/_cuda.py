"""CUDA timing for spans: synchronising boundaries, and CUDA events resolved to host time.

CUDA is asynchronous: when a forward call returns on the host, its kernels may not have run
yet. Two ways to give a span the times its GPU work really ran:

``sync``
    ``torch.cuda.synchronize(device)`` before each boundary's timestamp. Exact, but it stalls
    the caller at every boundary.
``events``
    A timing event (``torch.cuda.Event(enable_timing=True)``) recorded on the current stream at
    each boundary; an :class:`EventResolver` thread polls ``event.query()`` and, once both have
    completed, converts them to host time and hands them back. The caller never waits.

Converting an event to host time needs an anchor per device: a reference event whose host time
is known. :meth:`EventResolver.anchor` records one on an idle side stream and spins on
``query()`` between two clock reads; the midpoint is its host time, to within half the spin
(microseconds). Then ``host(ev) = anchor.host_s + anchor.event.elapsed_time(ev) / 1000``. GPU and
host clocks drift apart by parts per million, so the resolver re-anchors every ``reanchor_s``;
each event pair keeps the anchor current when it was recorded, whose reference therefore
completed before the pair did (elapsed times are never negative).

Everything that talks to CUDA goes through a backend (:class:`CudaBackend`); tests inject one
over fake events. torch is imported only when a :class:`CudaBackend` is built.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Protocol, Sequence

from ..clock import Clock, SystemClock

__all__ = ["Anchor", "Backend", "CudaBackend", "EventResolver", "default_resolver"]

log = logging.getLogger("greenmaas")

#: An anchor whose spin took longer than twice this is retried (a busy driver, a preempted thread).
ANCHOR_TOLERANCE_S = 50e-6


class Backend(Protocol):
    """What the timing modes ask of CUDA. ``device`` is whatever the caller uses as a device key
    (a ``torch.device`` with an index, for :class:`CudaBackend`)."""

    def accepts(self, device: Any) -> bool:
        """Whether this device's work runs asynchronously and should be timed by this backend."""
        ...

    def synchronize(self, device: Any) -> None: ...

    def capturing(self, device: Any) -> bool:
        """Whether the current stream is being captured into a CUDA graph (nothing runs then)."""
        ...

    def record(self, device: Any) -> Any:
        """A timing event recorded now on the device's current stream."""
        ...

    def record_reference(self, device: Any) -> Any:
        """A timing event recorded on an idle side stream of the device (for anchors)."""
        ...


class CudaBackend:
    """The backend over ``torch.cuda``."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._side_streams: dict[Any, Any] = {}
        self._lock = threading.Lock()

    def accepts(self, device: Any) -> bool:
        return getattr(device, "type", None) == "cuda"

    def synchronize(self, device: Any) -> None:
        self._torch.cuda.synchronize(device)

    def capturing(self, device: Any) -> bool:
        with self._torch.cuda.device(device):
            return bool(self._torch.cuda.is_current_stream_capturing())

    def record(self, device: Any) -> Any:
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record(self._torch.cuda.current_stream(device))
        return ev

    def record_reference(self, device: Any) -> Any:
        with self._lock:
            stream = self._side_streams.get(device)
            if stream is None:
                # A stream of its own, never given work: the reference completes as soon as the
                # GPU reaches it, however busy the compute streams are.
                stream = self._side_streams[device] = self._torch.cuda.Stream(device)
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record(stream)
        return ev


@dataclass(frozen=True)
class Anchor:
    """A reference event on one device and the host time (clock seconds) at which it completed,
    to within ``uncertainty_s``."""

    device: Any
    event: Any
    host_s: float
    uncertainty_s: float

    def host_time(self, event: Any) -> float:
        """Host time at which ``event`` (recorded after this anchor, and completed) completed."""
        return self.host_s + float(self.event.elapsed_time(event)) / 1000.0


@dataclass
class _Pending:
    starts: list[tuple[Anchor, Any]]
    ends: list[tuple[Anchor, Any]]
    on_resolved: Callable[[float | None, float | None, str | None], None]
    submitted_s: float
    done: bool = field(default=False)


class EventResolver:
    """Turns pairs of CUDA events into host times, on one daemon thread started lazily.

    ``backend``
        Default :class:`CudaBackend`. ``clock`` gives host time (default
        :class:`~greenmaas.clock.SystemClock`, the same time base as a default meter's clock).
    ``poll_s``
        Pause between polls while events are pending.
    ``reanchor_s``
        Age after which a device's anchor is renewed.
    ``timeout_s``
        A pair still incomplete after this long is given up: its callback gets an error.
    ``stop_wait_s``
        How long a meter's ``stop()`` waits for pending events before closing their spans as
        interrupted (kernels still running at stop are rare; a hung one must not hang exit).
    ``thread``
        False keeps the resolver passive: call :meth:`poll` yourself (tests do).
    """

    def __init__(
        self,
        *,
        backend: Backend | None = None,
        clock: Clock | None = None,
        poll_s: float = 0.002,
        reanchor_s: float = 60.0,
        timeout_s: float = 600.0,
        stop_wait_s: float = 5.0,
        thread: bool = True,
    ) -> None:
        self.backend: Backend = backend if backend is not None else CudaBackend()
        self.clock = clock or SystemClock()
        self.poll_s = poll_s
        self.reanchor_s = reanchor_s
        self.timeout_s = timeout_s
        self.stop_wait_s = stop_wait_s
        self._use_thread = thread
        self._anchors: dict[Hashable, Anchor] = {}
        self._anchor_lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.resolved = 0
        self.failed = 0

    # ------------------------------------------------------------------ anchors

    def anchor(self, device: Any, *, synchronize: bool = True, tries: int = 5) -> Anchor:
        """Measure a fresh anchor for ``device`` and make it current. With ``synchronize`` the
        device is synchronised first (a one-time cost, at setup)."""
        if synchronize:
            self.backend.synchronize(device)
        best: Anchor | None = None
        for _ in range(max(1, tries)):
            t0 = self.clock.monotonic()
            ev = self.backend.record_reference(device)
            deadline = time.perf_counter() + 1.0
            while not ev.query():
                if time.perf_counter() > deadline:  # a stuck spin: wait for it, then retry
                    ev.synchronize()
                    break
            t1 = self.clock.monotonic()
            a = Anchor(device, ev, (t0 + t1) / 2.0, (t1 - t0) / 2.0)
            if best is None or a.uncertainty_s < best.uncertainty_s:
                best = a
            if a.uncertainty_s <= ANCHOR_TOLERANCE_S:
                break
        assert best is not None
        with self._anchor_lock:
            self._anchors[device] = best
        return best

    def current_anchor(self, device: Any) -> Anchor:
        """The device's anchor, measured (with a synchronize) if it has none yet."""
        a = self._anchors.get(device)
        if a is None:
            a = self.anchor(device)
        return a

    # ------------------------------------------------------------------ recording

    def record(self, device: Any) -> tuple[Anchor, Any]:
        """Record a timing event on the device's current stream, with the anchor to read it by."""
        a = self.current_anchor(device)  # read before recording: its reference completes first
        return a, self.backend.record(device)

    def submit(
        self,
        starts: Sequence[tuple[Anchor, Any]],
        ends: Sequence[tuple[Anchor, Any]],
        on_resolved: Callable[[float | None, float | None, str | None], None],
    ) -> None:
        """Resolve a pair (or several, one per device) later. ``on_resolved(start_s, end_s,
        error)`` runs on the resolver's thread: the earliest start and latest end in host
        seconds, or ``(None, None, reason)`` when the events could not be read."""
        p = _Pending(list(starts), list(ends), on_resolved, self.clock.monotonic())
        with self._cv:
            if self._closed:
                raise RuntimeError("the event resolver is closed")
            self._pending.append(p)
            if self._use_thread and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="greenmaas-cuda-events", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        with self._cv:
            return len(self._pending)

    # ------------------------------------------------------------------ resolving

    def poll(self) -> int:
        """Resolve every pending pair whose events have completed; returns how many."""
        with self._cv:
            items = list(self._pending)
        finished = []
        now = self.clock.monotonic()
        for p in items:
            try:
                ready = all(ev.query() for _, ev in p.ends) and all(ev.query() for _, ev in p.starts)
                if not ready:
                    if now - p.submitted_s > self.timeout_s:
                        self._finish(p, None, None, f"CUDA events incomplete after {self.timeout_s:g} s")
                        finished.append(p)
                    continue
                t_start = min(a.host_time(ev) for a, ev in p.starts)
                t_end = max(a.host_time(ev) for a, ev in p.ends)
            except Exception as exc:  # a CUDA error: give the span its host times, say why
                self._finish(p, None, None, f"CUDA events unreadable: {exc}")
            else:
                self._finish(p, t_start, max(t_start, t_end), None)
            finished.append(p)
        if finished:
            with self._cv:
                gone = {id(p) for p in finished}
                self._pending = [p for p in self._pending if id(p) not in gone]
                self._cv.notify_all()
        return len(finished)

    def _finish(self, p: _Pending, start: float | None, end: float | None, error: str | None) -> None:
        if p.done:
            return
        p.done = True
        if error is None:
            self.resolved += 1
        else:
            self.failed += 1
        try:
            p.on_resolved(start, end, error)
        except Exception as exc:  # a callback is ours; never let it kill the thread
            log.warning("greenmaas: applying CUDA event times failed: %s", exc)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until nothing is pending (polling here when there is no thread). True when
        drained, False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._use_thread:
                self.poll()
            with self._cv:
                if not self._pending:
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(min(self.poll_s * 5, left) if left is not None else self.poll_s * 5)

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._pending and not self._closed:
                    self._cv.wait(self.reanchor_s)
                busy, closed = bool(self._pending), self._closed
            if closed and not busy:
                return
            try:
                if busy:
                    self.poll()
                # Outside the lock: an anchor spins on the GPU, and submit() must never wait.
                self._maybe_reanchor()
            except Exception as exc:  # keep resolving whatever else is pending
                log.warning("greenmaas: CUDA event resolver: %s", exc)
            if busy:
                time.sleep(self.poll_s)

    def _maybe_reanchor(self) -> None:
        now = self.clock.monotonic()
        for dev, a in list(self._anchors.items()):
            if now - a.host_s > self.reanchor_s:
                try:
                    # No device-wide synchronize: the side stream is idle, so the reference
                    # completes at once even while the compute streams are busy.
                    self.anchor(dev, synchronize=False)
                except Exception as exc:
                    log.warning("greenmaas: re-anchoring CUDA events on %s failed: %s", dev, exc)

    def close(self, timeout: float | None = 5.0) -> None:
        """Resolve what is pending (up to ``timeout``) and stop the thread. Safe to call twice."""
        self.wait(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)


_default: EventResolver | None = None
_default_lock = threading.Lock()


def default_resolver() -> EventResolver:
    """The process's resolver over ``torch.cuda`` (one daemon thread), created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = EventResolver()
        return _default
