"""The counter grid: when an energy counter publishes, learnt from the reads that saw it change.

NVML's energy counter publishes the device's cumulative energy on a regular grid (about every
100 ms on data-centre GPUs); a read returns the value of the last update. The value published at
update instant ``u`` is the device's energy up to ``u``, so each update is an exact point on the
true cumulative-energy curve — if we know *when* it happened. A read that sees a new value bounds
that instant: after the previous read, no later than this one. One read bounds it to a read
period (10 ms); a grid ``u_k = phase + k * period`` fitted through many such bounds pins each
instant far more tightly (the bounds of 64 consecutive updates usually leave well under a
millisecond).

:func:`time_changes` times each change from the bounds of the changes before it and itself, never
after: a change's time is fixed as soon as it is seen, so the live meter (which times changes as
they arrive) and an offline re-attribution (which times them all at once) compute the same
numbers. Per change it

1. decides whether the counter steps (most changes come after two or more reads of the same
   value) or moves on every read (RAPL, a replayed counter: the read itself is the knot; its
   uncertainty is the read interval before it where some change in the window did wait for a
   second read, i.e. a grid read about as slowly as it publishes);
2. for a stepping counter, estimates the period from the window's span and the median spacing,
   numbers each change on the grid (missed updates just skip a number), and searches the period
   that leaves the widest common phase (the bounds, shifted by ``k * period``, intersected);
3. takes the phase over every period that leaves a common phase (the middle of its range, and
   the range's half-width as the uncertainty), or — where the bounds disagree (jitter, a changed
   period, a stale read) — the median of the shifted midpoints clipped to the change's own
   bounds, with the change's own half-width as its uncertainty.

Only elementwise arithmetic and exact reductions (min, max, median) are used, so a row gives the
same bits whether it is computed alone or among a million.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["time_changes", "WINDOW"]

#: Changes per fit window (about 6 s of a 100 ms counter): long enough to pin the phase to well
#: under a millisecond at 20 ms reads (the intersection of the bounds narrows as 1/changes), short
#: enough to follow drift (the period is fitted) or a changed period.
WINDOW = 64
#: The period search spans ±2% around the first estimate.
_SEARCH = 0.02
#: Golden-section steps: the ±2% range shrinks to ~1e-6 of itself (a few ns on a 100 ms grid).
_ITERATIONS = 28
_GOLDEN = (5**0.5 - 1) / 2
#: Bounds wider than this share of a period are not used to pin the grid.
_WIDE = 0.75
_BISECT = 18
_SCAN = 9
#: Up to this many rows are searched one by one (:func:`_fit_row`), more as arrays.
_ONE_BY_ONE = 8


def time_changes(
    lo: np.ndarray, hi: np.ndarray, reads: np.ndarray, *, window: int = WINDOW, already: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Time every counter change: ``(u, h)`` — the estimated update instant of each change (s)
    and its half-width uncertainty (s).

    ``lo[j]``/``hi[j]`` bound change ``j``'s update instant (the read before it and the read
    that saw it); ``reads[j]`` is how many reads it took to see it (1 when the counter changed
    on the very next read). Arrays in change order. Change ``j`` is timed from changes
    ``j - window + 1 .. j`` only. With ``already``, the first ``already`` changes are context
    only (timed before) and the result covers the rest.
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    reads = np.asarray(reads, dtype=np.float64)
    n = lo.size
    if n == 0:
        return np.empty(0), np.empty(0)
    w = max(2, int(window))
    pad = np.full(w - 1, np.nan)
    LO = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, lo]), w)
    HI = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, hi]), w)
    RD = np.lib.stride_tricks.sliding_window_view(np.concatenate([pad, reads]), w)
    return time_rows(LO[already:], HI[already:], RD[already:])


def time_rows(LO: np.ndarray, HI: np.ndarray, RD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`time_changes` on windows given as rows (NaN-padded on the left); the change to
    time is each row's last column."""
    LO = np.asarray(LO, dtype=np.float64)
    HI = np.asarray(HI, dtype=np.float64)
    lo_j = LO[:, -1]
    hi_j = HI[:, -1]
    half = (hi_j - lo_j) * 0.5
    mid = LO * 0.5 + HI * 0.5
    valid = ~np.isnan(mid)
    nvalid = valid.sum(axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows (the first changes)
        steps = _nanmedian(np.where(valid, RD, np.nan)) > 1.5
        u = np.where(steps, lo_j * 0.5 + hi_j * 0.5, hi_j)
        # A counter that moves on (nearly) every read is taken at the read that saw it move. One
        # that never held a value across two reads may count continuously (RAPL): the read is its
        # time. One that did hold one publishes on a grid read about as slowly as it publishes:
        # its update lies anywhere since the read before, and the stated ± says so.
        held = np.any(valid & (RD > 1.5), axis=1)
        h = np.where(steps, half, np.where(held, hi_j - lo_j, 0.0))
        fit = steps & (nvalid >= 3)
        if not fit.any():
            return u, h
        rows = np.nonzero(fit)[0]
        M = mid[rows]
        L = LO[rows]
        H = HI[rows]
        p0 = _nanmedian(np.diff(M, axis=1))
        # A change seen after a long pause (no read for more than most of a period) may span
        # several updates; the read saw the last of them. Such bounds do not pin the grid.
        wide = (H - L) > _WIDE * p0[:, None]
        L = np.where(wide, np.nan, L)
        H = np.where(wide, np.nan, H)
        M = np.where(wide, np.nan, M)
        narrow = ~np.isnan(M)
        width_ = M.shape[1]
        refcol = width_ - 1 - np.argmax(narrow[:, ::-1], axis=1)  # the latest narrow change
        pick = np.arange(rows.size)
        ref = M[pick, refcol]
        ok = np.isfinite(p0) & (p0 > 0) & (narrow.sum(axis=1) >= 2)
        # The median spacing of bounds a read period wide can be a few percent off: number the
        # near changes first (where that error cannot add up to half a period), fit the period
        # through them, then number farther ones with it.
        for reach in (8.0, 16.0, 64.0):
            k = np.round((M - ref[:, None]) / np.where(ok, p0, 1.0)[:, None])
            near = np.abs(k) <= reach
            kx = np.where(near, k, np.nan)
            my = np.where(near, M, np.nan)
            kc = kx - np.nanmean(kx, axis=1)[:, None]
            var = np.nansum(kc * kc, axis=1)
            slope = np.nansum(kc * (my - np.nanmean(my, axis=1)[:, None]), axis=1) / np.where(var > 0, var, 1.0)
            p0 = np.where(ok & (var > 0) & (slope > 0), slope, p0)
        k = np.round((M - ref[:, None]) / np.where(ok, p0, 1.0)[:, None])  # <= 0, NaN where unused
        lj, hj = lo_j[rows], hi_j[rows]
        target_wide = wide[:, -1]
        if rows.size <= _ONE_BY_ONE:
            # A few rows (the live meter times a change or two per flush): the same search row by
            # row with plain floats, where numpy's per-call cost would be most of the work.
            for i in np.nonzero(ok)[0].tolist():
                u[rows[i]], h[rows[i]] = _fit_row(L[i], H[i], k[i], M[i], float(p0[i]), int(refcol[i]),
                                                  float(lj[i]), float(hj[i]), bool(target_wide[i]))
            return u, h
        a = p0 * (1.0 - _SEARCH)
        b = p0 * (1.0 + _SEARCH)

        def width(p: np.ndarray) -> np.ndarray:
            shift = k * p[:, None]
            return np.fmin.reduce(H - shift, axis=1) - np.fmax.reduce(L - shift, axis=1)

        # Golden-section search for the widest common phase (the width is concave in the
        # period): one new width per step, rows moving independently.
        c = b - _GOLDEN * (b - a)
        d = a + _GOLDEN * (b - a)
        fc, fd = width(c), width(d)
        for _ in range(_ITERATIONS):
            low = fc >= fd  # the best lies in [a, d]: d becomes the old c
            b = np.where(low, d, b)
            a = np.where(low, a, c)
            new = np.where(low, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
            f_new = width(new)
            d, fd = np.where(low, c, d), np.where(low, fc, fd)
            c, fc = np.where(low, new, d), np.where(low, f_new, fd)
            d, fd = np.where(low, d, new), np.where(low, fd, f_new)
        best = (a + b) * 0.5
        feasible = ok & (width(best) >= 0)
        # The feasible periods form an interval around the best one (the width is concave):
        # find its ends, then take the phase over the whole of it — the truth may sit at any
        # feasible period, so the uncertainty is the phase's full range there, not one slice.
        edges = []
        for far in (p0 * (1.0 - _SEARCH), p0 * (1.0 + _SEARCH)):
            inside, outside = best.copy(), far.copy()
            for _ in range(_BISECT):
                m = (inside + outside) * 0.5
                good = width(m) >= 0
                inside = np.where(good, m, inside)
                outside = np.where(good, outside, m)
            edges.append(inside)
        lows, highs, mids = [], [], []
        for f in np.linspace(0.0, 1.0, _SCAN):
            pf = edges[0] + (edges[1] - edges[0]) * f
            shift = k * pf[:, None]
            lower = np.fmax.reduce(L - shift, axis=1)
            upper = np.fmin.reduce(H - shift, axis=1)
            lows.append(lower)
            highs.append(upper)
            mids.append((lower + upper) * 0.5)
        phi_lo = np.min(lows, axis=0)
        phi_hi = np.max(highs, axis=0)
        centre = _nanmedian(M - k * best[:, None])
        lr, hr = L[pick, refcol], H[pick, refcol]
        robust = np.clip(centre, lr, hr)
        u_ref = np.where(feasible, np.mean(mids, axis=0), robust)
        h_ref = np.where(feasible, np.maximum(phi_hi - u_ref, u_ref - phi_lo), (hr - lr) * 0.5)
        # The change itself: the reference when its bounds are narrow; else the last update of
        # the grid at or before the read that saw it.
        last_on_grid = u_ref + np.floor((hj - u_ref) / best + 1e-9) * best
        u_fit = np.where(target_wide, np.clip(last_on_grid, lj, hj), u_ref)
        h_fit = np.where(target_wide, np.minimum(h_ref, (hj - lj) * 0.5), h_ref)
        use = ok
    u[rows] = np.where(use, u_fit, u[rows])
    h[rows] = np.where(use, h_fit, h[rows])
    return u, h


def _fit_row(L: np.ndarray, H: np.ndarray, k: np.ndarray, M: np.ndarray, p0: float, refcol: int, lj: float,
             hj: float, target_wide: bool) -> tuple[float, float]:
    """The search of :func:`time_rows` for one row whose period estimate is usable, with the
    same arithmetic in the same order on plain floats (numpy only for the window's reductions):
    ``(u, h)`` of the change."""
    fmin, fmax = np.fmin.reduce, np.fmax.reduce

    def width(p: float) -> float:
        shift = k * p
        return float(fmin(H - shift)) - float(fmax(L - shift))

    a, b = p0 * (1.0 - _SEARCH), p0 * (1.0 + _SEARCH)
    c = b - _GOLDEN * (b - a)
    d = a + _GOLDEN * (b - a)
    fc, fd = width(c), width(d)
    for _ in range(_ITERATIONS):
        if fc >= fd:  # the best lies in [a, d]: d becomes the old c
            b = d
            new = b - _GOLDEN * (b - a)
            d, fd = c, fc
            c, fc = new, width(new)
        else:
            a = c
            new = a + _GOLDEN * (b - a)
            c, fc = d, fd
            d, fd = new, width(new)
    best = (a + b) * 0.5
    if width(best) >= 0:
        edges = []
        for far in (p0 * (1.0 - _SEARCH), p0 * (1.0 + _SEARCH)):
            inside, outside = best, far
            for _ in range(_BISECT):
                m = (inside + outside) * 0.5
                if width(m) >= 0:
                    inside = m
                else:
                    outside = m
            edges.append(inside)
        phi_lo = phi_hi = total = math.nan
        for j, f in enumerate(np.linspace(0.0, 1.0, _SCAN).tolist()):
            shift = k * (edges[0] + (edges[1] - edges[0]) * f)
            lower, upper = float(fmax(L - shift)), float(fmin(H - shift))
            mid = (lower + upper) * 0.5
            phi_lo = lower if j == 0 else min(phi_lo, lower)
            phi_hi = upper if j == 0 else max(phi_hi, upper)
            total = mid if j == 0 else total + mid  # in order, as numpy sums the rows' column
        u_ref = total / _SCAN
        h_ref = max(phi_hi - u_ref, u_ref - phi_lo)
    else:
        lr, hr = float(L[refcol]), float(H[refcol])
        centre = float(_nanmedian((M - k * best)[None, :])[0])
        u_ref = min(max(centre, lr), hr)
        h_ref = (hr - lr) * 0.5
    if not target_wide:
        return u_ref, h_ref
    last_on_grid = u_ref + math.floor((hj - u_ref) / best + 1e-9) * best
    return min(max(last_on_grid, lj), hj), min(h_ref, (hj - lj) * 0.5)


def _nanmedian(x: np.ndarray) -> np.ndarray:
    """``np.nanmedian(x, axis=1)`` for the small windows here, without its masked-array path
    (which costs more than the rest of the timing): NaN sorts last, so the middle of each row's
    valid values is found by their count. A row with none gives NaN."""
    s = np.sort(x, axis=1)
    n = x.shape[1] - np.isnan(x).sum(axis=1)
    out = np.full(x.shape[0], np.nan)
    ok = n > 0
    rows = np.nonzero(ok)[0]
    i, j = (n[ok] - 1) // 2, n[ok] // 2
    out[rows] = (s[rows, i] + s[rows, j]) / 2.0
    return out
