"""The shape of a device's power between two counter updates.

Between two updates of an energy counter the energy is known exactly (the difference of the two
published values) but not *when* inside the interval it was drawn. Spans mark where power
changes, so the device's power is modelled as

    power(t) = idle + sum of the draws of the kinds of work running at t

with one draw per *class* of work (span kind and name: every forward pass of one model draws
alike). The idle level and the draws are fitted, with non-negativity, to the energies of the last
:data:`FIT_WINDOW` intervals (least squares, :func:`scipy.optimize.nnls`). Where the source gives
trusted instantaneous power samples (the ``instant`` field, changing on most reads, agreeing with
the counter), the mean of the samples inside a stretch of constant work (scaled by their measured
bias against the counter) replaces the model there, the model counting as :data:`_SHRINK`
samples beside them.

Inside each interval the modelled energies are then rescaled to the counter's energy exactly, so
conservation holds to rounding. The correction goes to the draws, not to idle: the idle level is
the best-known part of the model (every quiet stretch measures it), and a request alone in an
interval with idle around it then gets exactly the energy the counter saw beyond idle.

Each interval also gets an uncertainty (a share of its energy): the update instants' timing
uncertainty over its length, plus — where the interval mixes stretches of different power — how
far the model missed the counter's energy. Energy attributed inside the interval carries that
share as ± J.

An interval is shaped once, when both its ends are known and every span that ran in it is known,
from that interval and the ones before it only. So the live meter (which shapes intervals as
they settle) and an offline re-attribution (which shapes them all at once) compute the same curve.
Without power samples, the intervals at hand are shaped together as arrays (a chunk at a time);
only each interval's fit runs on its own, in order. With samples, one interval at a time.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass

import numpy as np

from .structure import Intervals

__all__ = ["DeviceShaper", "FIT_WINDOW"]

#: Intervals in a fit window: about 3 s of a 100 ms counter.
FIT_WINDOW = 30
#: Power samples are used as shape only when fewer than this share of them repeat the previous
#: value (a held, averaged or part-time field repeats) ...
_HELD_SHARE = 0.2
#: ... counted once this many pairs of reads across a change of work have been seen. Before that,
#: only when at least this many consecutive pairs of any reads were seen and at most this share of
#: them repeated a value ...
_HELD_MIN_PAIRS = 5
_FRESH_MIN_PAIRS = 8
_FRESH_REPEATS = 0.05
#: ... and when their energy over recent intervals is within this factor of the counter's.
_AGREE = 2.0
#: Weight of the prior that pulls each class's draw towards the common draw, relative to what the
#: window's intervals say about that class (the sum of squares of its column): a tie-breaker for
#: classes the window cannot tell apart, not a constraint. Relative to each class, so a class
#: that ran in few intervals of the window is pulled no harder than one that ran in all.
_PRIOR = 0.001
#: Quiet intervals remembered for the idle level, and how many are needed before it is trusted.
_IDLE_MEMORY = 100
_IDLE_MIN = 2
#: A quiet interval measures idle only when its ends are timed to within this share of it. Its
#: two ends come from one grid, so their errors mostly move both ends alike (the length errs far
#: less than the ends' sum), and the median over many quiet intervals absorbs the rest.
_IDLE_TIMING = 0.2
#: Stretches shorter than this need no sample for the interval's samples to cover it (s).
_UNSAMPLED_S = 0.001
#: A draw below this share of the idle level is rounding, not power (see ``_shape``).
_DRAW_EPS = 1e-9
#: Weight of one power sample's equation relative to one interval's energy.
_SAMPLE_WEIGHT = 0.3
#: Where samples give a stretch's power, the fitted model counts as this many samples beside them
#: (a stretch with one noisy sample leans on the fit; one with many, on its samples).
_SHRINK = 3.0
#: Intervals shaped together (at most), and the most class-count cells a chunk may hold.
_CHUNK = 256
_CHUNK_CELLS = 2_000_000


@dataclass
class _Row:
    length_s: float
    busy_s: dict[str, float]  # class -> seconds x active count in the interval
    energy_j: float
    sample_ratio: float | None  # samples' energy / counter energy, where samples cover the interval
    # Per stretch of constant work with samples in it: (class -> active count, mean W, samples).
    samples: list[tuple[dict[str, float], float, int]]
    timing_s: float = 0.0  # uncertainty of the interval's two ends (s)


class DeviceShaper:
    """Shapes one device's counter intervals into a cumulative curve, causally.

    ``samples``: whether the device's power samples may be used as shape (its source says they
    are instantaneous); each interval still checks them. The curve is :attr:`t`, :attr:`e`
    (cumulative J since the first knot) and :attr:`u` (cumulative ± J).
    """

    def __init__(self, *, samples: bool = False, window: int = FIT_WINDOW) -> None:
        self.use_samples = samples
        self.window = window
        self._t: list[float] = []
        self._e: list[float] = []
        self._u: list[float] = []
        self._e0: float | None = None  # counter value at the first knot
        self._hist: deque[_Row] = deque(maxlen=max(1, window - 1))
        self._idle: deque[float] = deque(maxlen=_IDLE_MEMORY)  # mean W of quiet intervals
        self._idle_sorted: list[float] = []  # the same, in order (for the median)
        # Consecutive power reads across a change of work, and how many of them repeated.
        self._pairs = 0
        self._held_pairs = 0
        # Consecutive power reads of any kind, and how many repeated the value before.
        self._any_pairs = 0
        self._any_repeats = 0

    # ------------------------------------------------------------------ the curve

    @property
    def t_end(self) -> float | None:
        return self._t[-1] if self._t else None

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.asarray(self._t), np.asarray(self._e), np.asarray(self._u)

    def trim(self, before: float) -> None:
        """Drop curve points before ``before`` (keeping one at or before it)."""
        i = bisect_left(self._t, before) - 1
        if i > 0:
            del self._t[:i], self._e[:i], self._u[:i]

    # ------------------------------------------------------------------ shaping

    def extend(
        self,
        kt: np.ndarray,
        kv: np.ndarray,
        kh: np.ndarray,
        upto: float,
        work: Intervals,
        reads: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """Shape every interval between knots ``kt``/``kv`` (± ``kh`` s) that ends at or before
        ``upto`` and is not shaped yet. ``work``: the competing intervals on this device over
        that range (classes by name). ``reads``: power reads (began s, returned s, W).
        """
        if kt.size == 0:
            return
        if not self._t:
            self._t.append(float(kt[0]))
            self._e.append(0.0)
            self._u.append(0.0)
            self._e0 = float(kv[0])
        i = int(np.searchsorted(kt, self._t[-1]))
        if i >= kt.size or kt[i] != self._t[-1]:
            return  # the knot we ended at was trimmed away: nothing consistent to add
        j = int(np.searchsorted(kt, upto, side="right")) - 1  # last knot we may end at
        if j <= i:
            return
        order = np.argsort(work.starts, kind="stable")
        ws, we, wc = work.starts[order], work.ends[order], work.classes[order]
        names = work.class_names
        # Each interval looks only at the work that can reach it: starts sorted, and the running
        # maximum of ends says where work ending before it stops.
        reach = np.maximum.accumulate(we) if we.size else we
        if self.use_samples and reads is not None and reads[1].size:
            # Samples may stand in for the model inside an interval: one interval at a time.
            for k in range(i, j):
                a, b = float(kt[k]), float(kt[k + 1])
                lo = int(np.searchsorted(reach, a, side="right"))
                hi = int(np.searchsorted(ws, b, side="left"))
                self._shape(
                    a, b, float(kv[k + 1] - kv[k]), float(kh[k] + kh[k + 1]), ws[lo:hi], we[lo:hi], wc[lo:hi], names,
                    reads,
                )
                self._e[-1] = float(kv[k + 1]) - self._e0  # type: ignore[operator]  # no drift
            return
        # Otherwise many intervals at once (the same arithmetic, as arrays), a chunk at a time so
        # that the matrix of class counts per stretch stays small.
        k = i
        while k < j:
            step = min(_CHUNK, j - k)
            while True:
                lo = int(np.searchsorted(reach, float(kt[k]), side="right"))
                hi = int(np.searchsorted(ws, float(kt[k + step]), side="left"))
                cells = (2 * (hi - lo) + step + 1) * max(1, np.unique(wc[lo:hi]).size)
                if cells <= _CHUNK_CELLS or step == 1:
                    break
                step = max(1, step // 2)
            self._shape_many(kt[k : k + step + 1], kv[k : k + step + 1], kh[k : k + step + 1], ws[lo:hi], we[lo:hi],
                             wc[lo:hi], names)
            k += step

    def _shape_many(self, kt, kv, kh, ws, we, wc, names) -> None:
        """:meth:`_shape` without power samples, for the intervals between consecutive knots
        ``kt`` at once: the stretches of constant work, class counts and busy seconds of every
        interval as arrays, then each interval's fit (in order: each adds to the history the next
        one fits), then the division of each interval's energy among its stretches as arrays."""
        a_all, b_all = kt[:-1], kt[1:]
        n = a_all.size
        A, B = float(kt[0]), float(kt[-1])
        length = b_all - a_all
        energy = np.maximum(np.diff(kv), 0.0)
        timing = kh[:-1] + kh[1:]
        live = (ws < B) & (we > A)
        ws, we, wc = ws[live], we[live], wc[live]
        # Stretches: every knot and every start and end strictly inside (A, B).
        inner = np.concatenate((ws[(ws > A) & (ws < B)], we[(we > A) & (we < B)]))
        bp = np.unique(np.concatenate((kt, inner)))
        seg_len = np.diff(bp)
        p = np.searchsorted(bp, kt)  # interval k is stretches p[k] .. p[k+1]-1
        nseg = np.diff(p)
        kseg = np.repeat(np.arange(n), nseg)
        # Classes by name (codes are the caller's; names are what the fit and history use).
        if wc.size:
            uniq_codes, inv = np.unique(wc, return_inverse=True)
            used = sorted({names[c] for c in uniq_codes.tolist()})
            col_of = {c: i for i, c in enumerate(used)}
            col = np.asarray([col_of[names[c]] for c in uniq_codes.tolist()], dtype=np.int64)[inv]
        else:
            used, col = [], np.zeros(0, dtype=np.int64)
        u = len(used)
        nb = bp.size
        if u:
            si = np.searchsorted(bp, np.maximum(ws, A))
            ei = np.searchsorted(bp, np.minimum(we, B))
            delta = (np.bincount(si * u + col, minlength=nb * u) - np.bincount(ei * u + col, minlength=nb * u))
            counts = np.cumsum(delta.reshape(nb, u), axis=0)[:-1].astype(np.float64)
            busy_s = np.add.reduceat(counts * seg_len[:, None], p[:-1], axis=0)
            # Which classes run in each interval (a span of no length included): its first and
            # last interval, as a difference over intervals.
            k_first = np.searchsorted(b_all, ws, side="right")
            k_last = np.searchsorted(a_all, we, side="left") - 1
            ok = k_first <= k_last
            pres = (np.bincount(k_first[ok] * u + col[ok], minlength=(n + 1) * u)
                    - np.bincount((k_last[ok] + 1) * u + col[ok], minlength=(n + 1) * u))
            present = np.cumsum(pres.reshape(n + 1, u), axis=0)[:-1] > 0
            seg_busy = counts.sum(axis=1) > 0
        else:
            counts = np.zeros((nb - 1, 0))
            busy_s = np.zeros((n, 0))
            present = np.zeros((n, 0), dtype=bool)
            seg_busy = np.zeros(nb - 1, dtype=bool)

        # The fit of each interval, in order: its window is the history before the chunk and the
        # chunk's rows up to it, as arrays over every class either holds (sorted by name).
        hist = list(self._hist)
        h = len(hist)
        all_names = sorted(set(used).union(*(r.busy_s for r in hist)))
        index = {c: i for i, c in enumerate(all_names)}
        n_cls = len(all_names)
        L = np.concatenate((np.fromiter((r.length_s for r in hist), float, h), length))
        E = np.concatenate((np.fromiter((r.energy_j for r in hist), float, h), energy))
        S = np.zeros((h + n, n_cls))
        P = np.zeros((h + n, n_cls), dtype=bool)
        for i, old in enumerate(hist):
            for c, v in old.busy_s.items():
                S[i, index[c]] = v
                P[i, index[c]] = True
        col_in_used = [index[c] for c in used]
        if u:
            S[h:, col_in_used] = busy_s
            P[h:, col_in_used] = present
        rated = np.cumsum([0] + [r.sample_ratio is not None for r in hist] + [0] * n)  # rows with a samples' ratio
        back = self._hist.maxlen or 1
        idle = np.empty(n)
        draws = np.zeros((n, u))
        quiet = ~P[h:].any(axis=1) & (length > 0) & (timing <= _IDLE_TIMING * length)

        def row_of(k: int) -> _Row:
            r = h + k
            return _Row(float(L[r]), {all_names[c]: float(S[r, c]) for c in np.flatnonzero(P[r]).tolist()},
                        float(E[r]), None, [], float(timing[k]))

        def window_fit(k: int) -> tuple[float, dict[str, float]]:
            r = h + k
            w0 = max(0, r - back)
            return self._fit_arrays(L[w0 : r + 1], E[w0 : r + 1], S[w0 : r + 1], P[w0 : r + 1], all_names)

        one_class = n_cls == 1 and u == 1 and not rated[-1] and not quiet.any() and bool((L > 0).all())
        single = self._fit_single(L, E, S[:, 0], P[:, 0], h, n, back) if one_class else None
        if single is not None:
            # One class of work throughout and nothing that changes the idle memory: every
            # interval's fit at once, from sums over its window (the same closed forms).
            idle, draws[:, 0], by_one = single
            for k in np.flatnonzero(by_one).tolist():  # near-parallel columns: the general solver
                idle[k], fitted = window_fit(k)
                draws[k, 0] = fitted.get(all_names[0], 0.0)
            for k in range(max(0, n - back), n):  # the history keeps only the last rows
                self._hist.append(row_of(k))
        else:
            for k in range(n):
                row = row_of(k)
                if rated[h + k] - rated[max(0, h + k - back)]:  # samples' equations in the window
                    idle_w, fitted = self._fit(row, self._bias(None))
                else:
                    if quiet[k]:
                        self._add_idle(float(E[h + k] / L[h + k]))
                    idle_w, fitted = window_fit(k)
                self._hist.append(row)
                idle[k] = idle_w
                if fitted:
                    draws[k] = [fitted.get(all_names[c], 0.0) for c in col_in_used]

        # Each interval's energy among its stretches (as :meth:`_shape`).
        idle_seg = idle[kseg]
        power = idle_seg + (counts * draws[kseg]).sum(axis=1) if u else idle_seg.copy()
        modelled = power * seg_len
        predicted = np.add.reduceat(modelled, p[:-1])
        residual = energy - predicted
        excess = power - idle_seg
        excess = np.where(excess > _DRAW_EPS * np.maximum(np.abs(idle), 1.0)[kseg], excess, 0.0)
        draw = np.where(seg_busy, excess * seg_len, 0.0)
        dsum = np.add.reduceat(draw, p[:-1])
        by_draw = (dsum > 0) & (residual > -dsum)
        by_model = ~by_draw & (predicted > 0)
        safe_dsum = np.where(dsum > 0, dsum, 1.0)
        safe_pred = np.where(predicted > 0, predicted, 1.0)
        safe_len = np.where(length > 0, length, 1.0)
        seg_e = np.where(
            by_draw[kseg], modelled + residual[kseg] * draw / safe_dsum[kseg],
            np.where(by_model[kseg], modelled * (energy / safe_pred)[kseg], energy[kseg] * seg_len / safe_len[kseg]),
        )
        seg_e = np.maximum(seg_e, 0.0)
        total = np.add.reduceat(seg_e, p[:-1])
        seg_e = np.where((total > 0)[kseg], seg_e * (energy / np.where(total > 0, total, 1.0))[kseg], seg_e)
        spread = np.maximum.reduceat(power, p[:-1]) - np.minimum.reduceat(power, p[:-1])
        mixed = (nseg > 1) & (spread > _DRAW_EPS * np.maximum(np.maximum.reduceat(np.abs(power), p[:-1]), 1.0))
        share = np.where(length > 0, timing / safe_len, 1.0)
        share = share + np.where(mixed & (energy > 0), np.abs(residual) / np.where(energy > 0, energy, 1.0), 0.0)
        share = np.minimum(share, 1.0)

        # The curve: each interval from where the last one ended, its end at the counter's value.
        e_base = kv[:-1] - self._e0
        e_base[0] = self._e[-1]
        cum = np.cumsum(seg_e)
        before = np.concatenate(([0.0], cum))[p[:-1]]  # cumulative energy before each interval
        e_pts = e_base[kseg] + (cum - before[kseg])
        e_pts[p[1:] - 1] = kv[1:] - self._e0  # no drift
        u_pts = self._u[-1] + np.cumsum(seg_e * share[kseg])
        self._t.extend(bp[1:].tolist())
        self._e.extend(e_pts.tolist())
        self._u.extend(u_pts.tolist())

    def _shape(self, a, b, energy, timing_s, ws, we, wc, names, reads) -> None:
        length = b - a
        energy = max(0.0, energy)
        # Stretches of constant work inside [a, b].
        live = (ws < b) & (we > a)
        s_a = np.maximum(ws[live], a)
        s_b = np.minimum(we[live], b)
        cls = wc[live]
        bp = np.unique(np.concatenate(([a, b], s_a, s_b)))
        seg_len = np.diff(bp)
        nseg = seg_len.size
        used = np.unique(cls)
        counts = np.zeros((nseg, used.size))
        if used.size:
            si = np.searchsorted(bp, s_a)
            ei = np.searchsorted(bp, s_b)
            col = np.searchsorted(used, cls)
            delta = np.zeros((nseg + 1, used.size))
            np.add.at(delta, (si, col), 1.0)
            np.add.at(delta, (ei, col), -1.0)
            counts = np.cumsum(delta, axis=0)[:nseg]
        busy = counts.sum(axis=1) > 0
        busy_s = {names[c]: float(v) for c, v in zip(used.tolist(), (counts * seg_len[:, None]).sum(axis=0))}

        # Power samples inside the interval, and whether they can be trusted as shape.
        seg_samples: np.ndarray | None = None
        seg_n = np.zeros(nseg)  # samples per stretch
        ratio = None
        sample_rows: list[tuple[dict[str, float], float, int]] = []
        if self.use_samples and reads is not None and reads[1].size and energy > 0:
            r0, r1, rw = reads
            lo, hi = np.searchsorted(r1, a, side="right"), np.searchsorted(r1, b, side="right")
            pt0, pt, pw = r0[lo:hi], r1[lo:hi], rw[lo:hi]
            # A read is placed in the stretch of work it began and returned in; one that
            # straddles a change of work could have seen either side and is left out.
            seg = np.searchsorted(bp, pt, side="right") - 1
            inside = (np.searchsorted(bp, pt0, side="right") - 1 == seg) & (pt0 >= a)
            seg, pt, pw = np.clip(seg[inside], 0, nseg - 1), pt[inside], pw[inside]
            if pt.size >= 2:
                # A held field (averaged, part-time) keeps its value across changes of work;
                # an instantaneous one follows them.
                changed = np.any(counts[seg[1:]] != counts[seg[:-1]], axis=1) if used.size else np.zeros(pt.size - 1, bool)
                # Counted over the run so far: a few pairs per interval say little.
                self._pairs += int(changed.sum())
                self._held_pairs += int(np.sum(pw[1:][changed] == pw[:-1][changed]))
                self._any_pairs += pt.size - 1
                self._any_repeats += int(np.sum(pw[1:] == pw[:-1]))
                # Trusted only on evidence that it follows the work: enough pairs across changes
                # of work, most of them differing; or, before there are enough of those, reads
                # that (nearly) never repeat a value — a held field repeats between refreshes
                # whatever the work. Until then a held field's first values would pass for the
                # power of whatever ran when they were read.
                if self._pairs >= _HELD_MIN_PAIRS:
                    follows = self._held_pairs < _HELD_SHARE * self._pairs
                else:
                    follows = self._any_pairs >= _FRESH_MIN_PAIRS and self._any_repeats <= _FRESH_REPEATS * self._any_pairs
                if follows:
                    sums = np.bincount(seg, weights=pw, minlength=nseg)
                    n = np.bincount(seg, minlength=nseg)
                    seg_samples = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
                    seg_n = n.astype(np.float64)
                    # How the samples read against the counter (the field's bias), where they
                    # cover every stretch of the interval: independent of the model.
                    covered = (n > 0) | (seg_len < _UNSAMPLED_S)
                    if covered.all():
                        predicted_j = float(np.sum(np.where(n > 0, seg_samples, 0.0) * seg_len))
                        if predicted_j > 0:
                            ratio = predicted_j / energy
                    for i in np.nonzero(n)[0].tolist():
                        vec = {names[c]: float(counts[i, j]) for j, c in enumerate(used.tolist()) if counts[i, j]}
                        sample_rows.append((vec, float(seg_samples[i]), int(n[i])))

        row = _Row(length, busy_s, energy, ratio, sample_rows, timing_s)
        bias = self._bias(ratio)
        idle_w, draws = self._fit(row, bias)
        model = idle_w + counts @ np.array([draws.get(names[c], 0.0) for c in used.tolist()]) if used.size else np.full(nseg, idle_w)
        power = np.asarray(model, dtype=np.float64)
        if seg_samples is not None and bias is not None:
            # Samples give the shape where work runs (a stretch's own samples); idle keeps the
            # fitted level (every quiet stretch measures it better than a few samples here).
            measured = (seg_n * (seg_samples / bias) + _SHRINK * power) / (seg_n + _SHRINK)
            power = np.where(~np.isnan(measured) & busy, measured, power)
        modelled = power * seg_len
        predicted = float(modelled.sum())
        residual = energy - predicted
        # Power above idle where work runs. A difference at rounding level (samples that read
        # the idle level, say) is no draw: whether it is 0 or 1e-14 must not decide where the
        # residual goes, or two computations of the same interval could differ (live, offline).
        excess = power - idle_w
        excess = np.where(excess > _DRAW_EPS * max(abs(idle_w), 1.0), excess, 0.0)
        draw = np.where(busy, excess * seg_len, 0.0)
        dsum = float(draw.sum())
        if dsum > 0 and residual > -dsum:
            seg_e = modelled + residual * draw / dsum
        elif predicted > 0:
            seg_e = modelled * (energy / predicted)
        else:
            seg_e = energy * seg_len / length
        seg_e = np.maximum(seg_e, 0.0)
        total = float(seg_e.sum())
        if total > 0:
            seg_e *= energy / total  # exact to rounding

        mixed = nseg > 1 and float(np.ptp(power)) > _DRAW_EPS * max(float(np.max(np.abs(power))), 1.0)
        share = timing_s / length if length > 0 else 1.0
        if mixed and energy > 0:
            share += abs(residual) / energy
        share = min(1.0, share)

        self._hist.append(row)
        e_cum = self._e[-1] + np.cumsum(seg_e)
        u_cum = self._u[-1] + np.cumsum(seg_e * share)
        self._t.extend(bp[1:].tolist())
        self._e.extend(e_cum.tolist())
        self._u.extend(u_cum.tolist())

    def _fit(self, row: _Row, bias: float | None) -> tuple[float, dict[str, float]]:
        """Idle W and the draw of each class (W) from this interval and the window before it.

        Idle is the device's own level, measured wherever nothing runs: the median mean power
        of the last :data:`_IDLE_MEMORY` quiet intervals, once there are a few (before that it
        is fitted with the draws). Each interval is then one equation in mean power (W) beyond
        idle. Two steps: one draw for all work alike; then a draw per class, pulled towards that
        common draw by a weak prior (:data:`_PRIOR`), so classes the window cannot tell apart
        (they always run together) share alike instead of one taking everything. Trusted power
        samples add equations of their own (the power of the work running at each, scaled by
        their bias against the counter), each worth :data:`_SAMPLE_WEIGHT` of an interval."""
        if not row.busy_s and row.length_s > 0 and row.timing_s <= _IDLE_TIMING * row.length_s:
            self._add_idle(row.energy_j / row.length_s)
        elif bias is not None:
            for vec, watts, n in row.samples:
                if not vec:  # samples where nothing ran: the idle level, as the field reads it
                    for _ in range(min(n, 3)):
                        self._add_idle(watts / bias)
        rows = list(self._hist) + [row]
        names = sorted({c for r in rows for c in r.busy_s})
        lengths = np.array([r.length_s for r in rows])
        energy = np.array([r.energy_j for r in rows])
        ok = lengths > 0
        if not ok.any():
            return 0.0, {}
        y = energy[ok] / lengths[ok]
        idle_known = self._idle_level()
        if not names:
            return (idle_known if idle_known is not None else float(energy[ok].sum() / lengths[ok].sum())), {}
        from scipy.optimize import nnls

        busy = np.zeros((len(rows), len(names)))
        col = {c: i for i, c in enumerate(names)}
        for i, r in enumerate(rows):
            for c, v in r.busy_s.items():
                busy[i, col[c]] = v
        busy = busy[ok] / lengths[ok, None]
        weights = np.ones(y.size)
        if bias is not None:
            extra, ys, ws = [], [], []
            for r in rows:
                for vec, watts, n in r.samples:
                    extra.append([vec.get(c, 0.0) for c in names])
                    ys.append(watts / bias)
                    ws.append(_SAMPLE_WEIGHT * np.sqrt(n))
            if extra:
                busy = np.vstack([busy, np.asarray(extra)])
                y = np.concatenate([y, ys])
                weights = np.concatenate([weights, ws])
        busy = busy * weights[:, None]
        prior = np.sqrt(_PRIOR * np.sum(busy * busy, axis=0))
        if idle_known is not None:
            # Idle fixed: the rows say how much more than idle the work drew.
            y = (y - idle_known) * weights
            one = busy.sum(axis=1)[:, None]
            (draw0,), _ = _nnls(nnls, one, y)
            A = np.vstack([busy, np.diag(prior)])
            b = np.concatenate([y, draw0 * prior])
            x, _ = _nnls(nnls, A, b)
            return idle_known, {c: float(x[col[c]]) for c in names}
        ones = weights
        y = y * weights
        one = np.column_stack([ones, busy.sum(axis=1)])
        (idle0, draw0), _ = _nnls(nnls, one, y)
        A = np.vstack([np.column_stack([ones, busy]), np.column_stack([np.zeros(len(names)), np.diag(prior)])])
        b = np.concatenate([y, draw0 * prior])
        x, _ = _nnls(nnls, A, b)
        return float(x[0]), {c: float(x[col[c] + 1]) for c in names}

    def _add_idle(self, watts: float) -> None:
        idle, ordered = self._idle, self._idle_sorted
        if len(idle) == idle.maxlen:
            del ordered[bisect_left(ordered, idle[0])]
        idle.append(watts)
        insort(ordered, watts)

    def _idle_level(self) -> float | None:
        """The median of the remembered quiet intervals (as ``np.median``), once there are enough."""
        s = self._idle_sorted
        n = len(s)
        if n < _IDLE_MIN:
            return None
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0

    def _fit_arrays(self, L, E, S, P, names: list[str]) -> tuple[float, dict[str, float]]:
        """:meth:`_fit` with no power samples in the window, from its rows as arrays (lengths,
        energies, busy seconds and presence per class ``names``, the current interval last)."""
        ok = L > 0
        if not ok.any():
            return 0.0, {}
        idle_known = self._idle_level()
        cols = np.flatnonzero(P.any(axis=0))
        if not cols.size:
            return (idle_known if idle_known is not None else float(E[ok].sum() / L[ok].sum())), {}
        from scipy.optimize import nnls

        lo = L[ok]
        y = E[ok] / lo
        busy = S[ok][:, cols] / lo[:, None]
        m, k = busy.shape
        prior = np.sqrt(_PRIOR * np.sum(busy * busy, axis=0))
        picked = [names[c] for c in cols.tolist()]
        if idle_known is not None:
            y = y - idle_known
            one = busy.sum(axis=1)
            draw0 = _nnls1(one, y)
            if k == 1:
                x = np.array([_nnls1(np.concatenate((busy[:, 0], prior)), np.concatenate((y, draw0 * prior)))])
            else:
                A = np.vstack([busy, np.diag(prior)])
                b = np.concatenate([y, draw0 * prior])
                x, _ = _nnls(nnls, A, b)
            return idle_known, dict(zip(picked, x.tolist()))
        ones = np.ones(m)
        one = busy.sum(axis=1)
        first = _nnls2(ones, one, y)
        if first is None:  # idle and the common draw cannot be told apart here: the general solver
            (idle0, draw0), _ = _nnls(nnls, np.column_stack([ones, one]), y)
        else:
            idle0, draw0 = first
        if k == 1:
            got = _nnls2(np.append(ones, 0.0), np.append(busy[:, 0], prior), np.append(y, draw0 * prior[0]))
            if got is not None:
                return got[0], {picked[0]: got[1]}
        A = np.zeros((m + k, k + 1))
        A[:m, 0] = 1.0
        A[:m, 1:] = busy
        A[m:, 1:] = np.diag(prior)
        b = np.concatenate([y, draw0 * prior])
        x, _ = _nnls(nnls, A, b)
        return float(x[0]), dict(zip(picked, x[1:].tolist()))

    def _fit_single(self, L, E, B, present, h: int, n: int, back: int):
        """:meth:`_fit_arrays` for intervals ``h .. h+n-1`` of rows with one class of work
        (busy seconds ``B``, present where ``present``), all at once: each interval's sums over
        its window from prefix sums, then the one- and two-unknown closed forms. The idle memory
        must not change over these intervals (no quiet one among them). Returns idle W, the
        class's draw W, and which intervals need the general solver (near-parallel columns)."""
        rows = np.arange(h, h + n)
        w0 = np.maximum(0, rows - back)

        def window(x):
            c = np.concatenate(([0.0], np.cumsum(x)))
            return c[rows + 1] - c[w0]

        y = E / L
        b = B / L
        m = (rows - w0 + 1).astype(np.float64)
        seen = window(present.astype(np.float64)) > 0
        sy, sb, sbb, sby = window(y), window(b), window(b * b), window(b * y)
        prior2 = _PRIOR * sbb
        idle_known = self._idle_level()
        if idle_known is None:
            idle0, draw0, ok0 = _nnls2_many(m, sb, sbb, sy, sby)
            idle, draw, ok = _nnls2_many(m, sb, sbb + prior2, sy, sby + prior2 * draw0)
            general = ~(ok0 & ok)
            fallback = window(E) / window(L)
        else:
            sby = sby - idle_known * sb
            draw0 = np.where(sbb > 0, np.maximum(0.0, sby / np.where(sbb > 0, sbb, 1.0)), 0.0)
            den = sbb + prior2  # 0 where the class ran no time in its window: no draw to fit
            draw = np.where(den > 0, np.maximum(0.0, (sby + prior2 * draw0) / np.where(den > 0, den, 1.0)), 0.0)
            idle = np.full(n, idle_known)
            general = np.zeros(n, dtype=bool)
            fallback = idle
        # A window in which the class never ran: idle only, as the general fit says.
        return np.where(seen, idle, fallback), np.where(seen, draw, 0.0), general & seen

    def _bias(self, ratio: float | None) -> float | None:
        """How much the samples over-read the counter (median over the window), or None when
        they disagree too much to be used."""
        rs = [r.sample_ratio for r in self._hist if r.sample_ratio is not None]
        if ratio is not None:
            rs.append(ratio)
        if not rs:
            return None
        m = float(np.median(rs))
        if not (1.0 / _AGREE <= m <= _AGREE):
            return None
        return m


def _nnls1(a: np.ndarray, b: np.ndarray) -> float:
    """Non-negative least squares in one unknown: ``max(0, a·b / a·a)`` (0 where ``a`` is 0)."""
    aa = float(a @ a)
    return max(0.0, float(a @ b) / aa) if aa > 0 else 0.0


#: Two columns closer to parallel than this (1 - cos² of their angle) go to the general solver.
_PARALLEL = 1e-6


def _nnls2(a1: np.ndarray, a2: np.ndarray, b: np.ndarray) -> tuple[float, float] | None:
    """Non-negative least squares in two unknowns, or None where the columns are (nearly)
    parallel. With independent columns the problem has one minimum: the unconstrained one if
    both values are non-negative, else the better of the two with one value at 0."""
    s11, s12, s22 = float(a1 @ a1), float(a1 @ a2), float(a2 @ a2)
    det = s11 * s22 - s12 * s12
    if not (s11 > 0 and s22 > 0) or det <= _PARALLEL * s11 * s22:
        return None
    r1, r2 = float(a1 @ b), float(a2 @ b)
    x1, x2 = (s22 * r1 - s12 * r2) / det, (s11 * r2 - s12 * r1) / det
    if x1 >= 0 and x2 >= 0:
        return x1, x2
    # On an edge: f(x) = |b|² - 2 x·r + xᵀSx, compared without |b|².
    c1 = max(0.0, r1 / s11)
    c2 = max(0.0, r2 / s22)
    return (c1, 0.0) if c1 * c1 * s11 - 2 * c1 * r1 <= c2 * c2 * s22 - 2 * c2 * r2 else (0.0, c2)


def _nnls2_many(s11, s12, s22, r1, r2):
    """:func:`_nnls2` for many problems given by their sums (``a1·a1``, ``a1·a2``, ``a2·a2``,
    ``a1·b``, ``a2·b``): the two values, and where the columns were independent enough."""
    det = s11 * s22 - s12 * s12
    ok = (s11 > 0) & (s22 > 0) & (det > _PARALLEL * s11 * s22)
    d = np.where(ok, det, 1.0)
    x1, x2 = (s22 * r1 - s12 * r2) / d, (s11 * r2 - s12 * r1) / d
    inside = (x1 >= 0) & (x2 >= 0)
    c1 = np.maximum(0.0, r1 / np.where(s11 > 0, s11, 1.0))
    c2 = np.maximum(0.0, r2 / np.where(s22 > 0, s22, 1.0))
    first = c1 * c1 * s11 - 2 * c1 * r1 <= c2 * c2 * s22 - 2 * c2 * r2
    return (np.where(inside, x1, np.where(first, c1, 0.0)), np.where(inside, x2, np.where(first, 0.0, c2)), ok)


def _nnls(nnls, A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    try:
        return nnls(A, b, maxiter=50 * A.shape[1])
    except RuntimeError:  # no convergence: the mean power, flat
        x = np.zeros(A.shape[1])
        x[0] = max(0.0, float(np.mean(b)))
        return x, float("nan")
