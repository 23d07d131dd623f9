"""Divide measured device energy among the spans that ran, with nothing lost.

Pure functions, no I/O. The input is a device's cumulative-energy curve (times in seconds,
joules; piecewise linear, see :mod:`greenmaas.sampling.timeline`) and a set of intervals, each
owned by a span and carrying a *rate*. At every instant the device's power is split among the
intervals active at that instant in proportion to their rates; energy at instants with no
active interval is ``idle``. So for every device::

    sum(energy of every owner) + idle == energy of the device over the window

up to floating-point rounding: the summed rate of each instant is computed exactly in fixed
point, so the books close to ~1e-15 relative however many spans come and go.

Policies map a span to a rate:

* ``time``     — rate 1: active spans share each instant equally.
* ``weighted`` — rate = weight / duration: a span's weight (say, its output tokens) spread evenly
  over its life. For members of one batch that share an interval this is plain
  proportional-to-weight.

The sweep is O((intervals + samples) log(intervals + samples)) and fully vectorised: one sort of
the breakpoints, cumulative sums, and a prefix-sum difference per interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AttributionError

__all__ = ["POLICIES", "Shares", "share_energy", "share_curves", "share_time", "rates_for"]

POLICIES = ("time", "weighted")

_LD = np.longdouble


@dataclass
class Shares:
    """Result of :func:`share_energy` for one device over one window (all joules)."""

    by_owner: np.ndarray  # energy per owner index, length n_owners
    idle_j: float
    total_j: float  # device energy over the window, from the curve
    busy_s: np.ndarray | None = None  # seconds each owner was active (for hardware-time shares)

    @property
    def attributed_j(self) -> float:
        return float(self.by_owner.sum())


def rates_for(policy: str, weights: np.ndarray, durations_s: np.ndarray) -> np.ndarray:
    """Per-span rates for a policy. Zero-duration spans get rate 0 (they hold no energy)."""
    weights = np.asarray(weights, dtype=np.float64)
    durations_s = np.asarray(durations_s, dtype=np.float64)
    if policy == "time":
        return np.where(durations_s > 0, 1.0, 0.0)
    if policy == "weighted":
        if np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise AttributionError("weights must be finite and non-negative")
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.where(durations_s > 0, weights / np.where(durations_s > 0, durations_s, 1.0), 0.0)
        # A weight over a vanishing duration overflows; cap it (it still dwarfs every other rate).
        return np.minimum(r, 1e300)
    raise AttributionError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")


def share_energy(
    curve_t: np.ndarray,
    curve_e: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    rates: np.ndarray,
    owners: np.ndarray,
    n_owners: int,
    t0: float,
    t1: float,
) -> Shares:
    """Split a device's energy over ``[t0, t1]`` among intervals.

    ``curve_t``/``curve_e``: the device's cumulative-energy curve (strictly increasing times).
    ``starts``/``ends``/``rates``/``owners``: one entry per interval; an owner (a span) may own
    several intervals (a parent's time outside its children). Intervals are clipped to the
    window; rates of zero take nothing. Returns energy per owner plus idle.
    """
    return share_curves(curve_t, [curve_e], starts, ends, rates, owners, n_owners, t0, t1)[0]


def share_curves(
    curve_t: np.ndarray,
    curves: list[np.ndarray],
    starts: np.ndarray,
    ends: np.ndarray,
    rates: np.ndarray,
    owners: np.ndarray,
    n_owners: int,
    t0: float,
    t1: float,
    *,
    with_time: bool = False,
) -> list[Shares]:
    """:func:`share_energy` for several curves on the same times (energy, its uncertainty, ...)
    at once, the intervals' bookkeeping done once; with ``with_time`` one more result splits
    device time (seconds) as :func:`share_time` does."""
    curve_t = np.asarray(curve_t, dtype=np.float64)
    starts = np.clip(np.asarray(starts, dtype=np.float64), t0, t1)
    ends = np.clip(np.asarray(ends, dtype=np.float64), t0, t1)
    rates = np.asarray(rates, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    if not (starts.shape == ends.shape == rates.shape == owners.shape):
        raise AttributionError("starts, ends, rates and owners must have one entry per interval")
    n_out = len(curves) + (1 if with_time else 0)
    if curve_t.size == 0 or t1 <= t0:
        return [Shares(np.zeros(n_owners), 0.0, 0.0, np.zeros(n_owners)) for _ in range(n_out)]

    live = (ends > starts) & (rates > 0)
    starts, ends, rates, owners = starts[live], ends[live], rates[live], owners[live]

    inner = curve_t[(curve_t > t0) & (curve_t < t1)]
    bp = np.unique(np.concatenate(([t0, t1], inner, starts, ends)))
    segs = [np.diff(np.interp(bp, curve_t, np.asarray(ce, dtype=np.float64))).astype(_LD) for ce in curves]
    if with_time:
        segs.append(np.diff(bp - t0).astype(_LD))
    for seg_e in segs:
        np.maximum(seg_e, 0, out=seg_e)  # a curve never decreases; guard against rounding
    nseg = bp.size - 1
    if starts.size == 0:
        return [Shares(np.zeros(n_owners), float(g.sum()), float(g.sum()), np.zeros(n_owners)) for g in segs]

    si = np.searchsorted(bp, starts)  # exact hits: bp contains every start and end
    ei = np.searchsorted(bp, ends)

    # Number of active intervals per segment, exact.
    count = np.cumsum(np.bincount(si, minlength=nseg + 1) - np.bincount(ei, minlength=nseg + 1))[:nseg]
    # Rates as integers (fixed point relative to the largest), so the summed rate of each
    # segment is exact and conservation cannot drift however many spans come and go. The scale
    # leaves headroom for the largest number of concurrent intervals.
    headroom = int(np.ceil(np.log2(int(count.max()) + 1)))
    scale = float(2 ** (62 - headroom))
    q = np.floor(rates / rates.max() * scale).astype(np.int64)
    rsum = np.cumsum(_bincount_int(si, q, nseg + 1) - _bincount_int(ei, q, nseg + 1))[:nseg]
    idle = count == 0
    busy_seg = rsum > 0
    # A busy segment whose intervals all have rates below the fixed-point resolution (rates
    # more than ~1e18 times smaller than the largest) is split equally among them instead.
    tiny = ~idle & ~busy_seg
    # energy_i = q_i * (sum of per_rate over its segments), taken as a prefix-sum difference. A
    # plain prefix over all segments would lose a large-rate interval's tiny per-rate terms
    # against the large terms of segments where only small rates ran. So intervals are grouped
    # by the magnitude of their rate (2**16 apart), and each group's prefix runs only over the
    # segments where one of its members is active: there every term is at most E_k / q_min.
    bucket = np.floor(np.log2(np.maximum(q, 1))).astype(np.int64) // 16
    groups = []
    for b in np.unique(bucket):
        m = bucket == b
        sb, eb = si[m], ei[m]
        active = np.cumsum(np.bincount(sb, minlength=nseg + 1) - np.bincount(eb, minlength=nseg + 1))[:nseg] > 0
        groups.append((m, sb, eb, active))
    rsum_ld = rsum[busy_seg].astype(_LD)
    busy = np.bincount(owners, weights=ends - starts, minlength=n_owners)[:n_owners]
    out = []
    for seg_e in segs:
        per_rate = np.zeros(nseg, dtype=_LD)
        per_rate[busy_seg] = seg_e[busy_seg] / rsum_ld
        energy = np.zeros(q.size, dtype=_LD)
        for m, sb, eb, active in groups:
            prefix = np.zeros(nseg + 1, dtype=_LD)
            np.cumsum(np.where(active, per_rate, _LD(0)), out=prefix[1:])
            energy[m] = q[m].astype(_LD) * (prefix[eb] - prefix[sb])
        if tiny.any():
            per_count = np.zeros(nseg, dtype=_LD)
            per_count[tiny] = seg_e[tiny] / count[tiny]
            prefix2 = np.zeros(nseg + 1, dtype=_LD)
            np.cumsum(per_count, out=prefix2[1:])
            energy += prefix2[ei] - prefix2[si]
        by_owner = np.bincount(owners, weights=energy.astype(np.float64), minlength=n_owners)[:n_owners]
        out.append(Shares(by_owner, float(seg_e[idle].sum()), float(seg_e.sum()), busy))
    return out


def _bincount_int(idx: np.ndarray, w: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount`` with int64 weights, summed exactly (sorted, then reduceat)."""
    out = np.zeros(n, dtype=np.int64)
    if idx.size == 0:
        return out
    order = np.argsort(idx, kind="stable")
    si, sw = idx[order], w[order]
    heads = np.concatenate(([0], np.nonzero(np.diff(si))[0] + 1))
    out[si[heads]] = np.add.reduceat(sw, heads)
    return out


def share_time(
    starts: np.ndarray, ends: np.ndarray, rates: np.ndarray, owners: np.ndarray, n_owners: int, t0: float, t1: float
) -> Shares:
    """Split *device time* (seconds) the same way energy is split: used to charge a device's
    rental price by the same rules. Equivalent to :func:`share_energy` on a curve that grows one
    joule per second."""
    return share_energy(np.array([t0, t1]), np.array([0.0, t1 - t0]), starts, ends, rates, owners, n_owners, t0, t1)
