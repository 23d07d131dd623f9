"""Clocks: monotonic seconds inside a process, UTC wall time for the ledger.

Everything that reads time takes a clock, so tests drive time by hand with
:class:`greenmaas.testing.FakeClock` instead of sleeping.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time. ``monotonic()`` in seconds; ``to_utc()`` maps it to wall time."""

    def monotonic(self) -> float: ...

    def to_utc(self, t: float) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: ``time.perf_counter`` anchored once to UTC at construction."""

    def __init__(self) -> None:
        self._mono0 = time.perf_counter()
        self._utc0 = datetime.now(timezone.utc)

    #: ``time.perf_counter`` itself (no Python frame: spans read it twice each).
    monotonic = staticmethod(time.perf_counter)

    def to_utc(self, t: float) -> datetime:
        return self._utc0 + timedelta(seconds=t - self._mono0)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
