"""Per-device cumulative-energy timelines.

A :class:`Timeline` takes the raw reads of one device (cumulative counter, instantaneous power or
both, each stamped with monotonic seconds) and answers "how many joules did this device consume
between t0 and t1". Internally it builds a piecewise-linear cumulative-energy curve:

* **counter** — the counter values, corrected for wraparound (``max_energy_j``; a counter that
  reads exactly its maximum and then restarts has wrapped too), stale reads (a value that goes
  back to one published just before is an old value, dropped) and resets (any other value that
  goes backwards is a driver reload: the new value is energy since the reload, never a negative
  delta). Each change of the counter is an update of the hardware's figure; :meth:`knots` times
  every update on the counter's learnt grid (:mod:`greenmaas.sampling.grid`), giving exact points
  (time ± uncertainty, cumulative J) on the true curve. Attribution shapes the energy between
  them (:mod:`greenmaas.attribution.shape`); the plain :meth:`curve` joins them linearly.
* **power only** — power integrated sample to sample, each read holding for the half-intervals
  on either side of it (every read is kept, so no value is held past its neighbours), never
  across a gap where the device failed.
* **power fields** — what a power value means depends on the field (``power_field``): an
  ``instant`` sample is power at the read; averaged and part-time fields describe the power some
  time before the read, so they are integrated at the middle of their window.

The curve is rebuilt lazily after new reads and cached; appends are O(1) and thread-safe.
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..sources.base import COUNTER, ESTIMATE, POWER, POWER_FIELDS, REPLAY, Reading
from .grid import WINDOW, time_changes

__all__ = ["Timeline", "Gap"]

_NAN = float("nan")

#: A counter that repeats its previous value on at least this share of reads is treated as
#: stepping (slower than the sampler), and its changes are re-timed to the middle of the gap.
STEPPING_SHARE = 0.2
#: A counter that goes back to at most this share of its last value restarted (driver reload);
#: a smaller step back is a glitch of the read.
_RESET_SHARE = 0.5


@dataclass(frozen=True)
class Gap:
    """An interval where a device could not be read, with the reason (energy there is unknown
    for power-only devices; for counter devices the counter spans it and the total is known)."""

    start: float
    end: float | None
    reason: str


class Timeline:
    """Cumulative energy of one device over monotonic time.

    ``method`` is what the figures rest on: ``counter``, ``power``, ``estimate`` or ``replay``.
    """

    def __init__(self, device_id: str, method: str = COUNTER, power_field: str | None = None) -> None:
        self.device_id = device_id
        self.method = method
        self.power_field = power_field
        #: Seconds by which a power value lags the read (the middle of the field's window).
        self.power_lag_s = POWER_FIELDS.get(power_field or "instant", 0.0) * 0.5
        self._lock = threading.Lock()
        self._t = array("d")
        self._counter = array("d")  # corrected cumulative J, NaN where the read had none
        self._power = array("d")  # W, NaN where the read had none
        self._t0 = array("d")  # when each read began (its value was taken in [t0, t])
        self._raw_last: float | None = None  # last raw counter value, for wrap/reset
        self._counter_offset = 0.0
        self._gaps: list[Gap] = []
        self._open_gap: Gap | None = None
        self._resets = 0
        self._version = 0
        self._cache_version = -1
        self._cache: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))
        # Energy before the first retained read, after trim(); keeps cumulative values stable.
        self._base_j = 0.0
        self._stale = 0
        self._recent_raw: list[float] = []  # the last distinct raw counter values
        # Counter changes: bounds of each update instant, reads it took, value after it.
        self._chg_lo = array("d")
        self._chg_hi = array("d")
        self._chg_reads = array("d")
        self._chg_v = array("d")
        self._chg_first = 0  # index (in all changes ever) of _chg_*[0], after trims
        self._last_c_t: float | None = None  # time of the last read with a counter value
        self._last_c_start: float | None = None  # ... and when that read began
        self._last_c_v = _NAN
        self._reads_since = 0
        # Knots: first counter read, then one per timed change (strictly increasing times).
        self._kt = array("d")
        self._kv = array("d")
        self._kh = array("d")
        self._timed = 0  # changes timed so far (index in all changes ever)

    # ------------------------------------------------------------------ recording

    def append(self, t: float, reading: Reading, t_start: float | None = None) -> None:
        """Record one read that returned at monotonic time ``t`` (seconds) and began at
        ``t_start`` (default ``t``): the value it saw was taken somewhere in between."""
        energy = reading.energy_j
        power = reading.power_w
        if energy is None and power is None:
            return
        with self._lock:
            if self._t and t <= self._t[-1]:
                return  # a read stamped no later than the last one carries no new information
            if self._open_gap is not None:
                self._gaps.append(Gap(self._open_gap.start, t, self._open_gap.reason))
                self._open_gap = None
            corrected = _NAN
            if energy is not None and math.isfinite(energy):
                corrected = self._correct_counter(float(energy), reading.max_energy_j)
                if not math.isnan(corrected):
                    self._note_counter(t, corrected, t if t_start is None else min(t_start, t))
            p = _NAN
            if power is not None and math.isfinite(power) and power >= 0:
                p = float(power)
            self._t.append(t)
            self._t0.append(t if t_start is None else min(t_start, t))
            self._counter.append(corrected)
            self._power.append(p)
            self._version += 1

    def _correct_counter(self, raw: float, max_energy_j: float | None) -> float:
        last = self._raw_last
        if last is None:
            self._raw_last = raw
            self._recent_raw = [raw]
            self._counter_offset = -raw  # cumulative starts at 0 on the first read
            return 0.0
        if raw < last:
            if raw in self._recent_raw:
                # A stale read: the driver returned a value it had already published (seen on
                # real GPUs under load). It says nothing new; the counter did not go back.
                self._stale += 1
                return _NAN
            if max_energy_j and max_energy_j >= last:
                # RAPL wraparound: the counter went past max_energy_range (or stood exactly at
                # it) and restarted from 0.
                self._counter_offset += max_energy_j
            elif raw <= last * _RESET_SHARE:
                # Driver reload: the counter restarted from 0; raw is energy since then.
                self._counter_offset += last
                self._resets += 1
            else:
                # A small step back that is no value we saw: a glitch, not a restart (which
                # would start again near 0). Dropped like a stale read.
                self._stale += 1
                return _NAN
        self._raw_last = raw
        if raw != self._recent_raw[-1]:
            self._recent_raw.append(raw)
            del self._recent_raw[:-4]
        return raw + self._counter_offset

    def _note_counter(self, t: float, value: float, t_start: float) -> None:
        """Track the counter's changes (each one bounds an update instant)."""
        self._reads_since += 1
        if self._last_c_t is None:
            self._kt.append(t)
            self._kv.append(value)
            self._kh.append(0.0)
            self._reads_since = 0
        elif value != self._last_c_v:
            self._chg_lo.append(self._last_c_start)  # type: ignore[arg-type]
            self._chg_hi.append(t)
            self._chg_reads.append(float(self._reads_since))
            self._chg_v.append(value)
            self._reads_since = 0
        self._last_c_t = t
        self._last_c_start = t_start
        self._last_c_v = value

    def mark_failed(self, t: float, reason: str) -> None:
        """The device stopped answering at ``t``. The gap closes at the next successful read."""
        with self._lock:
            if self._open_gap is None:
                self._open_gap = Gap(t, None, reason)
                self._version += 1

    # ------------------------------------------------------------------ queries

    @property
    def gaps(self) -> list[Gap]:
        with self._lock:
            return list(self._gaps) + ([self._open_gap] if self._open_gap else [])

    def gap_seconds(self, a: float, b: float) -> float:
        """Seconds of [a, b] during which the device could not be read."""
        if not self._gaps and self._open_gap is None:
            return 0.0
        total = 0.0
        for g in self.gaps:
            ge = b if g.end is None else g.end
            total += max(0.0, min(b, ge) - max(a, g.start))
        return total

    @property
    def stale_reads(self) -> int:
        """How many counter reads returned a value the driver had already published."""
        return self._stale

    @property
    def has_counter(self) -> bool:
        return len(self._kt) > 0

    def knots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact points on the cumulative curve from the counter: (times s, cumulative J,
        time uncertainty ± s), strictly increasing in time. The first is the first counter read;
        each other is one update of the counter, timed on its learnt grid. Empty without a
        counter. New changes are timed here, each from the changes up to it only, so a knot
        never moves once made — except the first, which moves back to one counter period before
        the first change once three changes are known (shapers wait for that)."""
        with self._lock:
            n_chg = len(self._chg_lo)
            todo = self._chg_first + n_chg - self._timed
            if todo > 0:
                first = n_chg - todo  # index in the retained change arrays
                ctx = max(0, first - (WINDOW - 1))
                lo = np.frombuffer(self._chg_lo, dtype=np.float64)[ctx:].copy()
                hi = np.frombuffer(self._chg_hi, dtype=np.float64)[ctx:].copy()
                rd = np.frombuffer(self._chg_reads, dtype=np.float64)[ctx:].copy()
                u, h = time_changes(lo, hi, rd, window=WINDOW, already=first - ctx)
                vals = self._chg_v[first:]
                prev = self._kt[-1]
                for i in range(todo):
                    ui = float(u[i])
                    if not ui > prev:  # never two knots at one instant
                        ui = min(float(hi[first - ctx + i]), math.nextafter(prev, math.inf))
                    self._kt.append(ui)
                    self._kv.append(vals[i])
                    self._kh.append(float(h[i]))
                    prev = ui
                self._timed += todo
                if self._chg_first == 0 and first < 3 <= n_chg and len(self._kt) >= 4 and self._chg_reads[0] > 1:
                    # The first read's value was published one update before the first change:
                    # its knot goes one period (from the first updates) before that change.
                    u0, u2 = self._kt[1], self._kt[3]
                    self._kt[0] = min(self._kt[0], u0 - (u2 - u0) * 0.5)
            return (
                np.frombuffer(self._kt, dtype=np.float64).copy(),
                np.frombuffer(self._kv, dtype=np.float64).copy() + self._base_j,
                np.frombuffer(self._kh, dtype=np.float64).copy(),
            )

    @property
    def first_knot_final(self) -> bool:
        """Whether the first knot's time is fixed: a counter that moved on the very next read
        is timed by its reads; a stepping one once three changes have placed the grid."""
        with self._lock:
            if self._chg_first > 0 or self._timed >= 3:
                return True
            return len(self._chg_reads) > 0 and self._chg_reads[0] <= 1

    def settled(self) -> float | None:
        """The latest time up to which this device's energy is known and will not change: the
        last counter update for a counter, the last read (less the power field's lag) for power."""
        if self.has_counter:
            kt, _, _ = self.knots()
            return float(kt[-1])
        last = self.t_last
        return None if last is None else last - self.power_lag_s

    @property
    def resets(self) -> int:
        """How many times the hardware counter restarted (driver reloads)."""
        return self._resets

    def __len__(self) -> int:
        return len(self._t)

    @property
    def t_first(self) -> float | None:
        return self._t[0] if self._t else None

    @property
    def t_last(self) -> float | None:
        return self._t[-1] if self._t else None

    def covers(self, t: float) -> bool:
        """Whether the timeline has a read at or after ``t`` (so energy up to ``t`` is known)."""
        return bool(self._t) and self._t[-1] >= t

    def curve(self, breakpoints: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The piecewise-linear cumulative energy curve: (times in s, cumulative J).

        With ``breakpoints`` (span boundaries) the power shape respects them; that curve is
        built afresh, the plain one is cached until the next read. A counter's curve joins its
        :meth:`knots` (cumulative J since the first read)."""
        if self._kt:
            kt, kv, _ = self.knots()
            return kt, kv
        if breakpoints is not None and breakpoints.size:
            with self._lock:
                t = np.frombuffer(self._t, dtype=np.float64).copy()
                c = np.frombuffer(self._counter, dtype=np.float64).copy()
                p = np.frombuffer(self._power, dtype=np.float64).copy()
                gaps = list(self._gaps)
                base = self._base_j
            ts, es = build_curve(t - self.power_lag_s, c, p, gaps, breakpoints)
            return ts, es + base
        with self._lock:
            if self._cache_version != self._version:
                t = np.frombuffer(self._t, dtype=np.float64).copy()
                c = np.frombuffer(self._counter, dtype=np.float64).copy()
                p = np.frombuffer(self._power, dtype=np.float64).copy()
                gaps = list(self._gaps)
                ts, es = build_curve(t - self.power_lag_s, c, p, gaps)
                self._cache = (ts, es + self._base_j)
                self._cache_version = self._version
            return self._cache

    def energy_at(self, ts: np.ndarray | Iterable[float]) -> np.ndarray:
        """Cumulative J at each time, clamped to the covered range."""
        xs, es = self.curve()
        q = np.asarray(ts, dtype=np.float64)
        if xs.size == 0:
            return np.zeros_like(q)
        return np.interp(q, xs, es)

    def energy_between(self, t0: float, t1: float) -> float:
        """Joules consumed between ``t0`` and ``t1`` (clamped to what has been read)."""
        if t1 <= t0:
            return 0.0
        e0, e1 = self.energy_at([t0, t1])
        return max(0.0, float(e1 - e0))

    @property
    def total_j(self) -> float:
        xs, es = self.curve()
        return float(es[-1] - es[0]) if xs.size else 0.0

    def power_reads(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw power reads: (began s, returned s, W); the value was taken in between."""
        with self._lock:
            t = np.frombuffer(self._t, dtype=np.float64).copy()
            t0 = np.frombuffer(self._t0, dtype=np.float64).copy()
            p = np.frombuffer(self._power, dtype=np.float64).copy()
        ok = ~np.isnan(p)
        return t0[ok], t[ok], p[ok]

    def power_samples(self) -> tuple[np.ndarray, np.ndarray]:
        """The raw (t, W) power samples, for reports and the ledger."""
        with self._lock:
            t = np.frombuffer(self._t, dtype=np.float64).copy()
            p = np.frombuffer(self._power, dtype=np.float64).copy()
        ok = ~np.isnan(p)
        return t[ok], p[ok]

    def trim(self, before: float) -> None:
        """Forget reads and knots before ``before`` (keeping one at or before it), so long runs
        stay small. Cumulative values after the cut are unchanged."""
        if self.has_counter:
            self.knots()  # time every change before dropping the reads around it
        with self._lock:
            i = bisect_right(self._t, before) - 1
            if i <= 0:
                return
        xs, es = self.curve()
        with self._lock:
            keep_from = i
            t_keep = self._t[keep_from]
            base = float(np.interp(t_keep, xs, es)) if xs.size and not self._kt else 0.0
            self._t = self._t[keep_from:]
            self._t0 = self._t0[keep_from:]
            self._counter = self._counter[keep_from:]
            self._power = self._power[keep_from:]
            self._gaps = [g for g in self._gaps if g.end is None or g.end > t_keep]
            if self._kt:
                k = bisect_right(self._kt, before) - 1
                if k > 0:
                    self._kt = self._kt[k:]
                    self._kv = self._kv[k:]
                    self._kh = self._kh[k:]
                # The grid needs the last WINDOW changes as context for the next ones.
                drop = max(0, len(self._chg_lo) - WINDOW)
                if drop:
                    self._chg_lo = self._chg_lo[drop:]
                    self._chg_hi = self._chg_hi[drop:]
                    self._chg_reads = self._chg_reads[drop:]
                    self._chg_v = self._chg_v[drop:]
                    self._chg_first += drop
            else:
                self._base_j = base
            self._version += 1


# ---------------------------------------------------------------------- curve construction


def build_curve(
    t: np.ndarray,
    counter: np.ndarray,
    power: np.ndarray,
    gaps: list[Gap] | None = None,
    breakpoints: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Build a cumulative-energy curve (times, J from 0) from raw reads.

    ``counter`` holds corrected cumulative joules (NaN where a read had none), ``power`` watts
    (NaN where none). ``breakpoints``: span boundaries, where power is expected to change (see
    :func:`_power_curve`). Pure function of its inputs; exposed for offline re-attribution.
    """
    n = t.size
    if n == 0:
        return np.empty(0), np.empty(0)
    has_c = ~np.isnan(counter)
    has_p = ~np.isnan(power)
    if has_c.sum() >= 2:
        tc, vc = t[has_c], counter[has_c]
        kt, kv = _counter_knots(tc, vc)
        if has_p.sum() >= 2:
            return _shape_by_power(kt, kv, t[has_p], power[has_p], gaps or [], breakpoints)
        return kt, kv - kv[0]
    if has_p.sum() >= 1:
        return _power_curve(t[has_p], power[has_p], gaps or [], breakpoints)
    return t[:1].copy(), np.zeros(1)


def _counter_knots(t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points on the true cumulative curve from counter reads, re-timing stepped changes."""
    dv = np.diff(v)
    repeats = np.count_nonzero(dv == 0)
    if v.size < 3 or repeats < STEPPING_SHARE * dv.size:
        return t.copy(), v.copy()
    # Stepping counter: keep the first read, each change re-timed to the middle of the gap
    # between the read before it and the read that saw it, and the last read (a lower bound
    # of the energy at that time; the next update moves it).
    changed = np.nonzero(dv != 0)[0] + 1
    kt = [t[0]]
    kv = [v[0]]
    kt.extend(((t[changed - 1] + t[changed]) / 2.0).tolist())
    kv.extend(v[changed].tolist())
    if t[-1] > kt[-1]:
        kt.append(t[-1])
        kv.append(v[-1])
    return np.asarray(kt), np.asarray(kv)


def _power_curve(
    t: np.ndarray, p: np.ndarray, gaps: list[Gap], breakpoints: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative energy of power samples, each read holding over the time nearer to it than to
    any other read (a centred hold). GPU power is close to piecewise constant at these scales,
    and a hold keeps a burst's energy inside the burst where a trapezoid would smear half of it
    into the neighbouring intervals.

    ``breakpoints`` are instants where power is expected to change: the starts and ends of the
    spans being attributed. A read then holds only up to the nearest breakpoint, so a request's
    interval takes its power from the reads inside it, not from the idle read just before it.
    (Intervals with no read inside fall back to the nearest read.) Nothing is integrated across
    an interval where the device was failing.
    """
    if t.size == 1:
        return t.copy(), np.zeros(1)
    mid = (t[1:] + t[:-1]) * 0.5
    parts = [t, mid]
    if breakpoints is not None and breakpoints.size:
        bp = np.unique(breakpoints)
        parts.append(bp[(bp > t[0]) & (bp < t[-1])])
    else:
        bp = None
    knots = np.unique(np.concatenate(parts))
    x = (knots[1:] + knots[:-1]) * 0.5  # one point inside each elementary interval
    left = np.clip(np.searchsorted(t, x) - 1, 0, t.size - 1)
    right = np.minimum(left + 1, t.size - 1)
    d_left = x - t[left]
    d_right = t[right] - x
    if bp is None:
        owner = np.where(d_left <= d_right, left, right)
    else:
        seg = np.searchsorted(bp, x)
        ok_l = np.searchsorted(bp, t[left]) == seg
        ok_r = np.searchsorted(bp, t[right]) == seg
        nearest = np.where(d_left <= d_right, left, right)
        same_seg = np.where(np.where(ok_l, d_left, np.inf) <= np.where(ok_r, d_right, np.inf), left, right)
        owner = np.where(ok_l | ok_r, same_seg, nearest)
    seg_e = p[owner] * np.diff(knots)
    for g in gaps:
        end = g.end if g.end is not None else math.inf
        # no read during a failure: the holds of the reads around it do not reach into it
        seg_e[(x > g.start) & (x < end)] = 0.0
    out = np.empty(knots.size)
    out[0] = 0.0
    np.cumsum(seg_e, out=out[1:])
    return knots, out




def _shape_by_power(
    kt: np.ndarray,
    kv: np.ndarray,
    pt: np.ndarray,
    pw: np.ndarray,
    gaps: list[Gap],
    breakpoints: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spread each counter step between knots in proportion to integrated power."""
    pt, ip = _power_curve(pt, pw, gaps, breakpoints)
    # Power integral at the knots (clamped: outside the power samples the shape is flat).
    ipk = np.interp(kt, pt, ip)
    inner = (pt > kt[0]) & (pt < kt[-1])
    st = pt[inner]
    sip = ip[inner]
    seg = np.searchsorted(kt, st, side="right") - 1  # knot segment of each inner sample
    dv = kv[seg + 1] - kv[seg]
    dip = ipk[seg + 1] - ipk[seg]
    frac = np.where(dip > 0, (sip - ipk[seg]) / np.where(dip > 0, dip, 1.0), (st - kt[seg]) / (kt[seg + 1] - kt[seg]))
    frac = np.clip(frac, 0.0, 1.0)
    sv = kv[seg] + dv * frac
    ts = np.concatenate([kt, st])
    vs = np.concatenate([kv, sv])
    order = np.argsort(ts, kind="stable")
    ts, vs = ts[order], vs[order]
    # Equal times (a sample exactly on a knot) would make np.interp ambiguous: keep the knot.
    keep = np.concatenate([[True], np.diff(ts) > 0])
    ts, vs = ts[keep], vs[keep]
    vs = np.maximum.accumulate(vs)  # guard against rounding: cumulative energy never decreases
    return ts, vs - vs[0]


def method_of(has_counter: bool, has_power: bool, estimate: bool = False, replay: bool = False) -> str:
    if replay:
        return REPLAY
    if estimate:
        return ESTIMATE
    if has_counter:
        return COUNTER
    if has_power:
        return POWER
    raise ValueError("a timeline needs a counter or power")
