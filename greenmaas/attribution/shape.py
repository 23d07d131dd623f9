"""The shape of a device's power between two counter updates.

Between two updates of an energy counter the energy is known exactly (the difference of the two
published values) but not *when* inside the interval it was drawn. Spans mark where power
changes, so the device's power is modelled as

    power(t) = idle + sum of the draws of the kinds of work running at t

with one draw per *class* of work (span kind and name: every forward pass of one model draws
alike). The idle level and the draws are fitted, with non-negativity, to the energies of the last
:data:`FIT_WINDOW` intervals (least squares, :func:`scipy.optimize.nnls`). Where the source gives
trusted instantaneous power samples (the ``instant`` field, changing on most reads, agreeing with
the counter), the mean of the samples inside a stretch of constant work replaces the model there,
scaled by their measured bias against the counter.

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
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass

import numpy as np

from .structure import Intervals

__all__ = ["DeviceShaper", "FIT_WINDOW"]

#: Intervals in a fit window: about 3 s of a 100 ms counter.
FIT_WINDOW = 30
#: Power samples are used as shape only when fewer than this share of them repeat the previous
#: value (a held, averaged or part-time field repeats) ...
_HELD_SHARE = 0.5
#: ... counted once this many pairs of reads across a change of work have been seen.
_HELD_MIN_PAIRS = 5
#: ... and when their energy over recent intervals is within this factor of the counter's.
_AGREE = 2.0
#: Weight of the prior that pulls each class's draw towards the common draw, relative to the
#: window's intervals together (a tie-breaker, not a constraint).
_PRIOR = 0.01
#: Quiet intervals remembered for the idle level, and how many are needed before it is trusted.
_IDLE_MEMORY = 100
_IDLE_MIN = 2
#: A quiet interval measures idle only when its ends are timed to within this share of it.
_IDLE_TIMING = 0.05
#: Stretches shorter than this need no sample for the interval's samples to cover it (s).
_UNSAMPLED_S = 0.001
#: A draw below this share of the idle level is rounding, not power (see ``_shape``).
_DRAW_EPS = 1e-9
#: Weight of one power sample's equation relative to one interval's energy.
_SAMPLE_WEIGHT = 0.3


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
        # Consecutive power reads across a change of work, and how many of them repeated.
        self._pairs = 0
        self._held_pairs = 0

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
        for k in range(i, j):
            a, b = float(kt[k]), float(kt[k + 1])
            lo = int(np.searchsorted(reach, a, side="right"))
            hi = int(np.searchsorted(ws, b, side="left"))
            self._shape(
                a, b, float(kv[k + 1] - kv[k]), float(kh[k] + kh[k + 1]), ws[lo:hi], we[lo:hi], wc[lo:hi], names, reads
            )
            self._e[-1] = float(kv[k + 1]) - self._e0  # type: ignore[operator]  # no drift

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
                held = self._pairs >= _HELD_MIN_PAIRS and self._held_pairs >= _HELD_SHARE * self._pairs
                if not held:
                    sums = np.bincount(seg, weights=pw, minlength=nseg)
                    n = np.bincount(seg, minlength=nseg)
                    seg_samples = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
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
            measured = seg_samples / bias
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
            self._idle.append(row.energy_j / row.length_s)
        elif bias is not None:
            for vec, watts, n in row.samples:
                if not vec:  # samples where nothing ran: the idle level, as the field reads it
                    self._idle.extend([watts / bias] * min(n, 3))
        rows = list(self._hist) + [row]
        names = sorted({c for r in rows for c in r.busy_s})
        lengths = np.array([r.length_s for r in rows])
        energy = np.array([r.energy_j for r in rows])
        ok = lengths > 0
        if not ok.any():
            return 0.0, {}
        y = energy[ok] / lengths[ok]
        idle_known = float(np.median(self._idle)) if len(self._idle) >= _IDLE_MIN else None
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
        prior = np.sqrt(_PRIOR * float(np.sum(weights**2)))
        busy = busy * weights[:, None]
        if idle_known is not None:
            # Idle fixed: the rows say how much more than idle the work drew.
            y = (y - idle_known) * weights
            one = busy.sum(axis=1)[:, None]
            (draw0,), _ = _nnls(nnls, one, y)
            A = np.vstack([busy, np.eye(len(names)) * prior])
            b = np.concatenate([y, np.full(len(names), draw0 * prior)])
            x, _ = _nnls(nnls, A, b)
            return idle_known, {c: float(x[col[c]]) for c in names}
        ones = weights
        y = y * weights
        one = np.column_stack([ones, busy.sum(axis=1)])
        (idle0, draw0), _ = _nnls(nnls, one, y)
        A = np.vstack([np.column_stack([ones, busy]), np.column_stack([np.zeros(len(names)), np.eye(len(names)) * prior])])
        b = np.concatenate([y, np.full(len(names), draw0 * prior)])
        x, _ = _nnls(nnls, A, b)
        return float(x[0]), {c: float(x[col[c] + 1]) for c in names}

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


def _nnls(nnls, A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    try:
        return nnls(A, b, maxiter=50 * A.shape[1])
    except RuntimeError:  # no convergence: the mean power, flat
        x = np.zeros(A.shape[1])
        x[0] = max(0.0, float(np.mean(b)))
        return x, float("nan")
