"""What a GPU's NVML readings really are: how often they update, how regularly, at what cost.

NVML's energy counter does not change on every read: it publishes a new value on a grid (about
every 100 ms on recent data-centre GPUs), and its power readings are held or averaged values
refreshed on their own schedules. greenmaas re-times counter steps and shapes them by power, so
it needs those schedules measured, not assumed. This module measures them.

* Pure analysis on arrays of reads (numpy; times in seconds from one monotonic clock):
  :func:`counter_updates` (update period, phase on its grid, jitter, missed updates),
  :func:`field_refresh` (how often a power field's value changes), :func:`latency`
  (cost of a call) and :func:`compare_energy` (counter delta against integrated power).
* A runner, :func:`probe_gpu`, that polls one GPU through a pynvml-like module as fast as it
  can and returns a :class:`ProbeResult`. NVML errors (NOT_SUPPORTED and the rest) are recorded
  in the result as "not supported", never raised.

Nothing here is imported by ``import greenmaas``; numpy is loaded when this module is.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "CALLS",
    "CounterUpdates",
    "FieldRefresh",
    "Latency",
    "EnergyComparison",
    "Series",
    "ProbeResult",
    "counter_updates",
    "field_refresh",
    "latency",
    "compare_energy",
    "poll",
    "probe_gpu",
]

#: The NVML call behind each name a probe uses.
CALLS = {
    "counter": "nvmlDeviceGetTotalEnergyConsumption",
    "instant": "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)",
    "usage": "nvmlDeviceGetPowerUsage",
}

_NVML_SUCCESS = 0
_NVML_FI_DEV_POWER_INSTANT = 186
# c_nvmlFieldValue_t.value is a union; valueType says which member holds the number.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

# An update whose bounding interval is this many times wider than the median (a read that
# stalled) is left out of the grid fit: it would pull the fit by up to half its width.
_WIDE_BOUND = 4.0
# A stuck clock (a FakeClock nobody advances) would make a timed poll loop forever.
_STUCK_READS = 1000

_NAN = float("nan")


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


# ---------------------------------------------------------------------- counter updates


@dataclass(frozen=True, eq=False)
class CounterUpdates:
    """When a cumulative counter changed, and the grid its updates sit on.

    Arrays have one entry per observed change: ``lo_s``/``hi_s`` bound the instant of the
    update (s), ``at_s`` is its estimate (the middle), ``value`` the counter's new value (the
    counter's unit, mJ for NVML). ``period_s`` and ``origin_s`` give the fitted grid
    ``origin_s + k * period_s`` (``origin_s`` is the grid instant of the first update fitted);
    ``phase_s`` is ``origin_s`` modulo the period, meaningful when the clock's zero is nearby
    (a :class:`~greenmaas.testing.FakeClock`, or times taken relative to the poll's start).
    ``jitter_std_ms``/``jitter_max_ms`` are the standard deviation and largest absolute residual
    of the update instants around the grid (ms); they include the reads' own resolution,
    ``resolution_ms`` (median width of the bounding intervals). ``missed`` counts grid updates
    for which no change of their own was seen (gaps of about 2x, 3x ... the period), ``fitted``
    the updates the grid was fitted to. Figures that need two updates or more are NaN without
    them.
    """

    reads: int
    lo_s: np.ndarray
    hi_s: np.ndarray
    at_s: np.ndarray
    value: np.ndarray
    period_s: float
    origin_s: float
    phase_s: float
    jitter_std_ms: float
    jitter_max_ms: float
    missed: int
    resolution_ms: float
    fitted: int  # updates used in the grid fit (well bounded ones)

    @property
    def updates(self) -> int:
        """Number of changes observed."""
        return int(self.at_s.size)

    @property
    def period_ms(self) -> float:
        return self.period_s * 1e3

    def as_dict(self) -> dict[str, Any]:
        """The figures (no arrays), JSON-ready: NaN becomes None."""
        return {
            "reads": self.reads,
            "updates": self.updates,
            "period_ms": _finite_or_none(self.period_ms),
            "phase_ms": _finite_or_none(self.phase_s * 1e3),
            "jitter_std_ms": _finite_or_none(self.jitter_std_ms),
            "jitter_max_ms": _finite_or_none(self.jitter_max_ms),
            "missed_updates": self.missed,
            "resolution_ms": _finite_or_none(self.resolution_ms),
        }


def _stamps(
    t_s: Any, t_before: Any, t_after: Any, n: int
) -> tuple[np.ndarray, np.ndarray]:
    if t_s is not None:
        if t_before is not None or t_after is not None:
            raise ValueError("give either t_s or t_before/t_after, not both")
        tb = ta = np.asarray(t_s, dtype=float)
    else:
        if t_before is None and t_after is None:
            raise ValueError("give the read times: t_s, or t_before and/or t_after")
        tb = np.asarray(t_before if t_before is not None else t_after, dtype=float)
        ta = np.asarray(t_after if t_after is not None else t_before, dtype=float)
    if tb.shape != (n,) or ta.shape != (n,):
        raise ValueError(f"read times and values differ in length ({tb.shape}, {ta.shape}, {n})")
    if np.any(ta < tb):
        raise ValueError("a read ends before it starts (t_after < t_before)")
    return tb, ta


def counter_updates(
    t_s: Sequence[float] | np.ndarray | None = None,
    values: Sequence[float] | np.ndarray | None = None,
    *,
    t_before: Sequence[float] | np.ndarray | None = None,
    t_after: Sequence[float] | np.ndarray | None = None,
) -> CounterUpdates:
    """Find the updates of a cumulative counter in a fast poll of it, and fit their grid.

    ``values`` are the reads in order (any unit; NaN marks a failed read, which is skipped).
    Times (s, one monotonic clock) are either one stamp per read, ``t_s``, or the stamps taken
    just before and just after each call, ``t_before``/``t_after``. A change first seen by read
    ``i`` happened after read ``i-1`` sampled the counter and before read ``i`` did, so the
    update instant is bounded by (start of read ``i-1``, end of read ``i``); its estimate is the
    middle of that interval.

    The period is first taken as the median spacing of consecutive updates; each spacing is then
    given a whole number of periods (a gap near 2x or 3x the period means 1 or 2 updates were
    missed: the counter did not change, or changed between reads by two steps), and the grid
    ``origin + k * period`` is fitted by least squares. Only well-bounded updates take part:
    one whose bounding interval is over 4x the median width (a read that stalled or failed) is
    left out of the period, the fit and the jitter. The median spacing is robust as long as
    fewer than half the updates are missed.
    """
    if values is None:
        raise TypeError("counter_updates() needs the values read")
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError("values must be one-dimensional")
    tb, ta = _stamps(t_s, t_before, t_after, v.size)
    ok = np.isfinite(v) & np.isfinite(tb) & np.isfinite(ta)
    tb, ta, v = tb[ok], ta[ok], v[ok]
    reads = int(v.size)
    changed = np.nonzero(v[1:] != v[:-1])[0] + 1 if v.size > 1 else np.zeros(0, dtype=int)
    lo = tb[changed - 1]
    hi = ta[changed]
    at = (lo + hi) / 2.0
    width = hi - lo
    resolution_ms = float(np.median(width)) * 1e3 if width.size else _NAN

    period = origin = phase = std = worst = _NAN
    missed = 0
    fitted = 0
    if at.size >= 2:
        good = width <= _WIDE_BOUND * float(np.median(width))
        if np.count_nonzero(good) < 2:
            good = np.ones_like(at, dtype=bool)
        fit_at = at[good]
        gaps = np.diff(fit_at)
        positive = gaps[gaps > 0]
        p0 = float(np.median(positive)) if positive.size else _NAN
        if math.isfinite(p0) and p0 > 0:
            steps = np.maximum(1, np.rint(gaps / p0)).astype(int)
            k = np.concatenate([[0], np.cumsum(steps)]).astype(float)
            fitted = int(fit_at.size)
            # Grid updates in the fitted span that no change was seen for. Updates left out of
            # the fit still count as seen: one that stands for two updates leaves one missed.
            seen = np.count_nonzero((at >= fit_at[0]) & (at <= fit_at[-1]))
            missed = max(0, int(k[-1]) + 1 - int(seen))
            # Centred indices keep the fit well conditioned on large clock values.
            kc = k - k.mean()
            period = float(np.sum(kc * (fit_at - fit_at.mean())) / np.sum(kc * kc))
            origin = float(fit_at.mean() - period * k.mean())  # grid instant of k = 0
            phase = math.fmod(origin, period)
            if phase < 0:
                phase += period
            residual = fit_at - (origin + period * k)
            std = float(np.std(residual)) * 1e3
            worst = float(np.max(np.abs(residual))) * 1e3
    return CounterUpdates(
        reads=reads,
        lo_s=lo,
        hi_s=hi,
        at_s=at,
        value=v[changed],
        period_s=period,
        origin_s=origin,
        phase_s=phase,
        jitter_std_ms=std,
        jitter_max_ms=worst,
        missed=missed,
        resolution_ms=resolution_ms,
        fitted=fitted,
    )


# ---------------------------------------------------------------------- power fields


@dataclass(frozen=True)
class FieldRefresh:
    """How often a polled value changes.

    ``reads`` valid reads, ``changes`` of them differed from the read before; ``repeat_share``
    is the share of reads (after the first) that repeat the previous value, and
    ``refresh_period_s`` the median spacing (s) of the reads that saw a new value. A held
    field (a part-time or averaged power, refreshed on its own schedule) repeats; an
    instantaneous one changes on nearly every read. Both are relative to the poll: a field
    read slower than it refreshes looks instantaneous. A refresh that happens to give the same
    value is invisible, so the period is an upper bound.
    """

    reads: int
    changes: int
    repeat_share: float
    refresh_period_s: float

    @property
    def held(self) -> bool:
        """True when most reads repeat the previous value."""
        return bool(self.repeat_share >= 0.5)

    @property
    def refresh_period_ms(self) -> float:
        return self.refresh_period_s * 1e3

    def as_dict(self) -> dict[str, Any]:
        return {
            "reads": self.reads,
            "changes": self.changes,
            "repeat_share": _finite_or_none(self.repeat_share),
            "refresh_period_ms": _finite_or_none(self.refresh_period_ms),
            "held": self.held,
        }


def field_refresh(t_s: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> FieldRefresh:
    """How often the value of a polled field changes (``t_s`` read times in s; NaN values,
    failed reads, are skipped). See :class:`FieldRefresh`."""
    t = np.asarray(t_s, dtype=float)
    v = np.asarray(values, dtype=float)
    if t.shape != v.shape or v.ndim != 1:
        raise ValueError(f"times and values differ in shape ({t.shape}, {v.shape})")
    ok = np.isfinite(t) & np.isfinite(v)
    t, v = t[ok], v[ok]
    if v.size < 2:
        return FieldRefresh(int(v.size), 0, _NAN, _NAN)
    change = v[1:] != v[:-1]
    changes = int(np.count_nonzero(change))
    when = t[1:][change]
    period = float(np.median(np.diff(when))) if when.size >= 2 else _NAN
    return FieldRefresh(int(v.size), changes, 1.0 - changes / (v.size - 1), period)


# ---------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Latency:
    """How long calls took: ``count`` calls, median, 99th percentile and maximum in µs."""

    count: int
    median_us: float
    p99_us: float
    max_us: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "median_us": _finite_or_none(self.median_us),
            "p99_us": _finite_or_none(self.p99_us),
            "max_us": _finite_or_none(self.max_us),
        }


def latency(durations_s: Sequence[float] | np.ndarray) -> Latency:
    """Summary of call durations given in seconds (NaN skipped)."""
    d = np.asarray(durations_s, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Latency(0, _NAN, _NAN, _NAN)
    us = d * 1e6
    return Latency(int(d.size), float(np.median(us)), float(np.percentile(us, 99)), float(np.max(us)))


# ---------------------------------------------------------------------- energy


@dataclass(frozen=True)
class EnergyComparison:
    """Energy over ``[t0_s, t1_s]`` from the counter and from integrated power (J).

    ``method`` is how power was integrated (``trapezoid`` or ``hold``); ``rel_diff`` is
    ``(power_j - counter_j) / counter_j``.
    """

    t0_s: float
    t1_s: float
    counter_j: float
    power_j: float
    method: str

    @property
    def duration_s(self) -> float:
        return self.t1_s - self.t0_s

    @property
    def rel_diff(self) -> float:
        if not (math.isfinite(self.counter_j) and math.isfinite(self.power_j)) or self.counter_j == 0:
            return _NAN
        return (self.power_j - self.counter_j) / self.counter_j

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration_s": _finite_or_none(self.duration_s),
            "counter_j": _finite_or_none(self.counter_j),
            "power_j": _finite_or_none(self.power_j),
            "method": self.method,
            "rel_diff": _finite_or_none(self.rel_diff),
        }


def _trapezoid(t: np.ndarray, p: np.ndarray, t0: float, t1: float) -> float:
    inside = (t > t0) & (t < t1)
    ts = np.concatenate([[t0], t[inside], [t1]])
    ps = np.concatenate([[np.interp(t0, t, p)], p[inside], [np.interp(t1, t, p)]])
    return float(np.sum((ps[1:] + ps[:-1]) * 0.5 * np.diff(ts)))


def _hold(t: np.ndarray, p: np.ndarray, t0: float, t1: float) -> float:
    # Each read's value holds until the next read; before the first read, the first value.
    edges = np.concatenate([[t0], t[(t > t0) & (t < t1)], [t1]])
    idx = np.clip(np.searchsorted(t, edges[:-1], side="right") - 1, 0, t.size - 1)
    return float(np.sum(p[idx] * np.diff(edges)))


def compare_energy(
    counter_t_s: Sequence[float] | np.ndarray,
    counter_mj: Sequence[float] | np.ndarray,
    power_t_s: Sequence[float] | np.ndarray,
    power_w: Sequence[float] | np.ndarray,
    *,
    t0_s: float | None = None,
    t1_s: float | None = None,
    method: str = "trapezoid",
) -> EnergyComparison:
    """Counter energy against integrated power over one window.

    The counter reads (``counter_mj``, NVML's mJ, at ``counter_t_s``) are reduced to their
    updates (:func:`counter_updates`); the counter's energy at any instant is interpolated
    linearly between update instants. The default window runs from the first to the last
    update seen, where the counter delta is exact; give ``t0_s``/``t1_s`` for another (within
    the updates seen; NaN outside). Power reads (W; NaN skipped) are integrated over the same
    window, ``trapezoid`` (linear between reads) or ``hold`` (each read's value until the next).
    """
    if method not in ("trapezoid", "hold"):
        raise ValueError(f"method must be 'trapezoid' or 'hold', not {method!r}")
    up = counter_updates(counter_t_s, counter_mj)
    t0 = float(up.at_s[0]) if t0_s is None and up.updates else t0_s
    t1 = float(up.at_s[-1]) if t1_s is None and up.updates else t1_s
    if t0 is None or t1 is None or up.updates < 2 or not t1 > t0:
        return EnergyComparison(_NAN if t0 is None else t0, _NAN if t1 is None else t1, _NAN, _NAN, method)
    if t0 < up.at_s[0] or t1 > up.at_s[-1]:
        counter_j = _NAN
    else:
        e0, e1 = np.interp([t0, t1], up.at_s, up.value)
        counter_j = float(e1 - e0) / 1000.0
    t = np.asarray(power_t_s, dtype=float)
    p = np.asarray(power_w, dtype=float)
    ok = np.isfinite(t) & np.isfinite(p)
    t, p = t[ok], p[ok]
    if t.size < 2:
        power_j = _NAN
    else:
        order = np.argsort(t, kind="stable")
        t, p = t[order], p[order]
        power_j = _trapezoid(t, p, t0, t1) if method == "trapezoid" else _hold(t, p, t0, t1)
    return EnergyComparison(t0, t1, counter_j, power_j, method)


# ---------------------------------------------------------------------- polling


@dataclass(eq=False)
class Series:
    """The reads of one call during a poll: stamps before and after each call (s), the value
    (NaN where the call failed or gave no valid value), and the failures by message."""

    name: str
    t_before_s: np.ndarray
    t_after_s: np.ndarray
    values: np.ndarray
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def t_mid_s(self) -> np.ndarray:
        return (self.t_before_s + self.t_after_s) / 2.0

    @property
    def duration_s(self) -> np.ndarray:
        return self.t_after_s - self.t_before_s

    @property
    def failed(self) -> int:
        return int(np.count_nonzero(~np.isfinite(self.values)))


def poll(
    calls: Mapping[str, Callable[[], float]],
    *,
    seconds: float,
    clock: Any,
    errors: tuple[type[BaseException], ...] = (),
    max_rounds: int = 2_000_000,
) -> dict[str, Series]:
    """Call each of ``calls`` in turn, back to back, for ``seconds`` of ``clock`` time.

    Every call is stamped with ``clock.monotonic()`` just before and just after. A call that
    raises one of ``errors`` records NaN and the error's text; other exceptions propagate.
    Stops after ``max_rounds`` rounds, and raises :class:`ValueError` if the clock has not
    moved after 1,000 (a fake clock nobody advances).
    """
    names = list(calls)
    tb: dict[str, list[float]] = {n: [] for n in names}
    ta: dict[str, list[float]] = {n: [] for n in names}
    vals: dict[str, list[float]] = {n: [] for n in names}
    errs: dict[str, dict[str, int]] = {n: {} for n in names}
    mono = clock.monotonic
    start = mono()
    end = start + float(seconds)
    rounds = 0
    while names:
        for name in names:
            fn = calls[name]
            a = mono()
            try:
                value = float(fn())
            except errors as exc:
                value = _NAN
                text = _error_text(exc)
                errs[name][text] = errs[name].get(text, 0) + 1
            b = mono()
            tb[name].append(a)
            ta[name].append(b)
            vals[name].append(value)
        rounds += 1
        if b >= end or rounds >= max_rounds:
            break
        if rounds == _STUCK_READS and b == start:
            raise ValueError("the clock does not advance: give poll() a clock that moves with each read")
    return {
        n: Series(n, np.asarray(tb[n]), np.asarray(ta[n]), np.asarray(vals[n]), errs[n]) for n in names
    }


class _NoValue(Exception):
    """A call that succeeded but gave no valid value (a field's own error, 0 W)."""


def _error_text(exc: BaseException) -> str:
    """An error's text; pynvml's ``str()`` can itself call into the library."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a description must never raise
        text = ""
    return text or f"NVML error {getattr(exc, 'value', '?')}"


def _nvml_calls(nvml: Any, handle: Any) -> dict[str, Callable[[], float]]:
    """The three readings as functions: counter (mJ), instant field (W), usage (W)."""
    field_id = getattr(nvml, "NVML_FI_DEV_POWER_INSTANT", _NVML_FI_DEV_POWER_INSTANT)
    success = getattr(nvml, "NVML_SUCCESS", _NVML_SUCCESS)

    def counter() -> float:
        return float(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))

    def instant() -> float:
        fv = nvml.nvmlDeviceGetFieldValues(handle, [field_id])[0]
        if fv.nvmlReturn != success:
            raise _NoValue(f"the field answers NVML return {fv.nvmlReturn}")
        member = _VALUE_MEMBERS.get(int(fv.valueType))
        if member is None:
            raise _NoValue(f"unknown field value type {fv.valueType}")
        mw = float(getattr(fv.value, member))
        if not math.isfinite(mw) or mw <= 0:
            raise _NoValue(f"no valid value ({mw:g} mW)")
        return mw / 1000.0

    def usage() -> float:
        mw = float(nvml.nvmlDeviceGetPowerUsage(handle))
        if not math.isfinite(mw) or mw <= 0:
            raise _NoValue(f"no valid value ({mw:g} mW)")
        return mw / 1000.0

    return {"counter": counter, "instant": instant, "usage": usage}


# ---------------------------------------------------------------------- the probe


@dataclass(eq=False)
class ProbeResult:
    """What :func:`probe_gpu` measured on one GPU.

    ``counter`` — the energy counter's updates (None when not supported); ``fields`` — the
    refresh of each power reading that works (``instant``: the NVML_FI_DEV_POWER_INSTANT field;
    ``usage``: nvmlDeviceGetPowerUsage); ``latency`` — the cost of each call (µs);
    ``not_supported`` — each reading that does not work here, with NVML's reason; ``failed`` —
    reads that failed after the first one worked; ``energy`` — counter against integrated power
    (trapezoid) over the field phase, per power reading; ``series`` — the raw reads by phase
    (``counter``: the counter alone; ``fields``: power readings and counter interleaved).
    """

    seconds: float
    field_seconds: float
    counter: CounterUpdates | None
    fields: dict[str, FieldRefresh]
    latency: dict[str, Latency]
    not_supported: dict[str, str]
    failed: dict[str, int]
    energy: dict[str, EnergyComparison]
    series: dict[str, dict[str, Series]] = field(repr=False, default_factory=dict)

    @property
    def power_field(self) -> str | None:
        """The power reading greenmaas would use: ``instant``, else ``usage``, else None."""
        for name in ("instant", "usage"):
            if name in self.fields:
                return name
        return None

    @property
    def power_refresh_s(self) -> float:
        """Refresh period (s) of the power reading in use; NaN without one."""
        name = self.power_field
        return self.fields[name].refresh_period_s if name else _NAN

    def support(self, name: str) -> str:
        """``"ok"`` or ``"not supported (<reason>)"`` for ``counter``, ``instant`` or ``usage``."""
        if name in self.not_supported:
            return f"not supported ({self.not_supported[name]})"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        """Everything but the raw reads, JSON-ready (NaN becomes None)."""
        return {
            "seconds": self.seconds,
            "field_seconds": self.field_seconds,
            "support": {name: self.support(name) for name in CALLS},
            "counter": self.counter.as_dict() if self.counter is not None else None,
            "power_field": self.power_field,
            "power_refresh_ms": _finite_or_none(self.power_refresh_s * 1e3),
            "fields": {k: v.as_dict() for k, v in self.fields.items()},
            "latency": {k: v.as_dict() for k, v in self.latency.items()},
            "failed": dict(self.failed),
            "energy": {k: v.as_dict() for k, v in self.energy.items()},
        }


def probe_gpu(
    nvml: Any,
    handle: Any,
    *,
    seconds: float = 2.0,
    field_seconds: float | None = None,
    clock: Any = None,
    load: Callable[[threading.Event], Any] | None = None,
    settle_s: float = 0.0,
) -> ProbeResult:
    """Measure one GPU's NVML readings.

    ``nvml`` is pynvml (initialised) or a stand-in such as
    :class:`~greenmaas.testing.FakeNVML`; ``handle`` the GPU's NVML handle
    (:meth:`NvmlSource.handle <greenmaas.sources.nvml.NvmlSource.handle>`). Each reading is
    tried once; one that fails is recorded as not supported and not polled. Then:

    1. the energy counter alone, read back to back for ``seconds`` (its update grid);
    2. the power readings that work, with the counter, read in turn for ``field_seconds``
       (default ``seconds / 2``): their refresh cadence, and energy from the counter against
       integrated power over the same time.

    Every call is timed with ``clock.monotonic()`` before and after (default
    :class:`~greenmaas.clock.SystemClock`; tests pass a clock that moves on each read).
    ``load``, if given, runs in a thread from before polling (after ``settle_s`` of
    ``clock.sleep``) until the end; it receives a :class:`threading.Event` set when it should
    stop. An exception in ``load`` is re-raised once polling ends.
    """
    if clock is None:
        from ..clock import SystemClock  # noqa: PLC0415

        clock = SystemClock()
    seconds = float(seconds)
    field_seconds = seconds / 2.0 if field_seconds is None else float(field_seconds)
    if seconds <= 0 or field_seconds < 0:
        raise ValueError("seconds must be positive and field_seconds not negative")
    calls = _nvml_calls(nvml, handle)
    errors: tuple[type[BaseException], ...] = (nvml.NVMLError, _NoValue)

    not_supported: dict[str, str] = {}
    for name, fn in calls.items():
        try:
            fn()
        except errors as exc:
            not_supported[name] = _error_text(exc)
    works = {n: fn for n, fn in calls.items() if n not in not_supported}

    stop = threading.Event()
    failure: list[BaseException] = []
    worker: threading.Thread | None = None
    if load is not None:

        def run_load() -> None:
            try:
                load(stop)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
                failure.append(exc)

        worker = threading.Thread(target=run_load, name="greenmaas-probe-load", daemon=True)
        worker.start()
        clock.sleep(settle_s)

    series: dict[str, dict[str, Series]] = {}
    try:
        if "counter" in works:
            series["counter"] = poll({"counter": works["counter"]}, seconds=seconds, clock=clock, errors=errors)
        power_calls: dict[str, Callable[[], float]] = {
            n: works[n] for n in ("instant", "usage", "counter") if n in works
        }
        if field_seconds > 0 and (set(power_calls) - {"counter"}):
            series["fields"] = poll(power_calls, seconds=field_seconds, clock=clock, errors=errors)
    finally:
        stop.set()
        if worker is not None:
            worker.join()
    if failure:
        raise failure[0]

    counter = None
    if "counter" in series:
        s = series["counter"]["counter"]
        counter = counter_updates(values=s.values, t_before=s.t_before_s, t_after=s.t_after_s)
    fields: dict[str, FieldRefresh] = {}
    energy: dict[str, EnergyComparison] = {}
    for name in ("instant", "usage"):
        f = series.get("fields", {}).get(name)
        if f is None:
            continue
        fields[name] = field_refresh(f.t_mid_s, f.values)
        c = series["fields"].get("counter")
        if c is not None:
            energy[name] = compare_energy(c.t_mid_s, c.values, f.t_mid_s, f.values)
    lat: dict[str, Latency] = {}
    failed: dict[str, int] = {}
    for name in CALLS:
        runs = [phase[name] for phase in series.values() if name in phase]
        if runs:
            lat[name] = latency(np.concatenate([r.duration_s for r in runs]))
            failed[name] = sum(r.failed for r in runs)
    return ProbeResult(
        seconds=seconds,
        field_seconds=field_seconds,
        counter=counter,
        fields=fields,
        latency=lat,
        not_supported=not_supported,
        failed=failed,
        energy=energy,
        series=series,
    )
