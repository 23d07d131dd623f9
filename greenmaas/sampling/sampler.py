"""The background sampler: one thread that reads every device on its own period.

A thread, not a process: spawned processes re-import the user's ``__main__`` (and with it their
model). Reads are stamped with the sampler's monotonic clock right after they return. A device
that starts failing is marked on its timeline with the time and reason, retried with back-off,
and the others go on. Nothing here raises into the user's thread or blocks it.
"""

from __future__ import annotations

import logging
import random
import threading
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

from ..clock import Clock, SystemClock
from ..errors import GreenmaasError
from ..sources.base import UNMEASURABLE, Device, Reading, Source
from .timeline import Timeline

__all__ = ["Sampler", "DeviceFailure", "DEFAULT_PERIOD_S"]

log = logging.getLogger("greenmaas")

#: Period used for a source that does not state its own.
DEFAULT_PERIOD_S = 0.1
#: Relative spread of the read period (uniform), see Sampler._read.
DITHER = 0.3
#: A failing device is retried at most this often.
RETRY_PERIOD_S = 1.0


@dataclass
class DeviceFailure:
    device: str
    t: float  # monotonic
    reason: str
    count: int = 1


class _Channel:
    __slots__ = ("source", "device", "timeline", "period_s", "next_t", "failing", "last_t")

    def __init__(self, source: Source, device: Device, period_s: float):
        self.source = source
        self.device = device
        self.timeline = Timeline(device.id, device.method, device.power_field)
        self.period_s = period_s
        self.next_t = 0.0
        self.failing = False
        self.last_t: float | None = None  # when the last read began


class Sampler:
    """Reads devices into per-device :class:`Timeline` objects.

    ``period_s`` overrides every source's ``default_period_s`` (NVML 20 ms, RAPL 100 ms, the CPU
    estimate 500 ms). Use :meth:`start`/:meth:`stop` for the background thread, or drive it by
    hand with :meth:`tick` (tests with a fake clock do).
    """

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        clock: Clock | None = None,
        period_s: float | None = None,
        on_read: Callable[[str, float, Reading | None, str | None, float], None] | None = None,
    ) -> None:
        self.clock = clock or SystemClock()
        #: Called after every read with (device id, t, reading or None, error or None, the
        #: time the read began): the meter records the raw trace through it. Must not raise.
        self.on_read = on_read
        self._channels: list[_Channel] = []
        self.failures: dict[str, DeviceFailure] = {}
        self.unmeasurable: list[Device] = []
        for src in sources:
            own_period_s: float = getattr(src, "default_period_s", DEFAULT_PERIOD_S)
            p = period_s or own_period_s
            try:
                devices = list(src.devices())
            except GreenmaasError as exc:
                log.warning("greenmaas: source %s listed no devices: %s", getattr(src, "name", src), exc)
                continue
            for dev in devices:
                if dev.method == UNMEASURABLE:
                    self.unmeasurable.append(dev)
                    continue
                self._channels.append(_Channel(src, dev, p))
        self._lock = threading.Lock()  # one read of a device at a time
        self._rng = random.Random(0x6D)  # the dither: seeded, so a run's reads are reproducible
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finalizer = weakref.finalize(self, _stop_thread, self._stop, None)

    # ------------------------------------------------------------------ devices and timelines

    @property
    def devices(self) -> list[Device]:
        return [c.device for c in self._channels]

    @property
    def timelines(self) -> dict[str, Timeline]:
        return {c.device.id: c.timeline for c in self._channels}

    def coverage(self) -> float | None:
        """The latest time up to which every healthy device has been read (None before any)."""
        lasts = [c.timeline.t_last for c in self._channels if not c.failing]
        if not lasts or any(t is None for t in lasts):
            return None
        return min(lasts)  # type: ignore[type-var]

    # ------------------------------------------------------------------ reading

    def tick(self, force: bool = False) -> None:
        """Read every device that is due now (every device when ``force``)."""
        with self._lock:
            for ch in self._channels:
                now = self.clock.monotonic()
                if not force and now < ch.next_t:
                    continue
                self._read(ch)

    def sample_now(self) -> None:
        """Read every device at once (used at span-result time and at start/stop)."""
        self.tick(force=True)

    def _read(self, ch: _Channel) -> None:
        t_start = self.clock.monotonic()
        if t_start == ch.last_t:  # no time has passed since the last read (a fake clock):
            return  # the same read again would only repeat a time, which no trace allows
        ch.last_t = t_start
        try:
            reading = ch.source.read(ch.device.id)
        except Exception as exc:  # a device failing must never stop the others or the user
            t = self.clock.monotonic()
            reason = str(exc) or type(exc).__name__
            ch.timeline.mark_failed(t, reason)
            f = self.failures.get(ch.device.id)
            if f is None or not ch.failing:
                self.failures[ch.device.id] = DeviceFailure(ch.device.id, t, reason)
                log.warning("greenmaas: %s stopped answering: %s", ch.device.id, reason)
            else:
                f.count += 1
            ch.failing = True
            ch.next_t = t + max(RETRY_PERIOD_S, ch.period_s)
            if self.on_read is not None:
                self.on_read(ch.device.id, t, None, reason, t_start)
            return
        t = self.clock.monotonic()
        ch.timeline.append(t, reading, t_start)
        if self.on_read is not None:
            self.on_read(ch.device.id, t, reading, None, t_start)
        if ch.failing:
            ch.failing = False
            log.warning("greenmaas: %s answers again", ch.device.id)
        # Reads are dithered around the period (±DITHER): reads that fall at every offset from
        # a counter's updates pin its update grid (greenmaas.sampling.grid) far more tightly
        # than reads locked in step with it.
        ch.next_t = t + ch.period_s * (1.0 + DITHER * (2.0 * self._rng.random() - 1.0))

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        if self._thread is not None or not self._channels:
            return
        self.sample_now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="greenmaas-sampler", daemon=True)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop_thread, self._stop, self._thread)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # never let the thread die silently mid-run
                log.exception("greenmaas: sampler error")
            now = self.clock.monotonic()
            due = min((c.next_t for c in self._channels), default=now + DEFAULT_PERIOD_S)
            self._stop.wait(max(0.0005, due - now))

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread after a last read of every device. Safe to call twice."""
        th = self._thread
        if th is None:
            return
        self._stop.set()
        th.join(timeout)
        self._thread = None
        self.sample_now()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def _stop_thread(event: threading.Event, thread: threading.Thread | None) -> None:
    event.set()
