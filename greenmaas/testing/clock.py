"""A clock you advance by hand."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

__all__ = ["FakeClock", "TickingClock"]


class FakeClock:
    """Monotonic time that moves only when told to.

    ``sleep(s)`` advances the clock by ``s`` (so code under test that sleeps runs instantly);
    ``advance(s)`` does the same from the test. ``to_utc`` maps monotonic 0 to ``utc0``.
    """

    def __init__(self, start: float = 0.0, utc0: datetime | None = None) -> None:
        self._t = float(start)
        self._utc0 = utc0 or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._start = float(start)
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._t += seconds
            return self._t

    def set(self, t: float) -> None:
        with self._lock:
            if t < self._t:
                raise ValueError("a clock does not go backwards")
            self._t = float(t)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.advance(seconds)

    def to_utc(self, t: float) -> datetime:
        return self._utc0 + timedelta(seconds=t - self._start)


class TickingClock(FakeClock):
    """A :class:`FakeClock` that moves ``step_s`` forward each time it is read: for code that
    polls as fast as it can (a hardware probe), so it sees time pass without sleeping."""

    def __init__(self, step_s: float = 0.00037, start: float = 0.0) -> None:
        super().__init__(start)
        self.step_s = step_s

    def monotonic(self) -> float:
        t = super().monotonic()
        self.advance(self.step_s)
        return t
