"""The counter-interval shaper: intervals shaped many at once (as arrays) give the curve that
shaping them one at a time gives, however the intervals arrive.

``DeviceShaper`` shapes intervals one at a time where power samples may stand in for the model,
and many at once otherwise. A shaper told to use samples, given a single read long before the
trace, takes the one-at-a-time path and finds no sample in any interval: the same arithmetic,
computed the other way. Traces: a device drawing a known idle level plus a draw per class of
work, read through a 100, 50 or 20 ms counter, with overlapping work of up to four classes,
work of no length, work starting on a counter update, quiet stretches, and timing uncertainty;
and traces of one class of work that never stops (every interval's fit then runs at once).
"""

from __future__ import annotations

import numpy as np
import pytest

from greenmaas.attribution.shape import DeviceShaper
from greenmaas.attribution.structure import Intervals


def trace(seed: int, busy: bool = False):
    """A random trace; ``busy``: one class of work that never stops (a training loop), so no
    interval is quiet."""
    rng = np.random.default_rng(seed)
    seconds = float(rng.uniform(2, 20))
    period = float(rng.choice([0.1, 0.05, 0.02]))
    kt = np.arange(0.0, seconds, period)
    kt = kt + rng.uniform(0, 0.003, kt.size)
    n_cls = 1 if busy else int(rng.integers(1, 5))
    n = int(rng.integers(200, 600)) if busy else int(rng.integers(0, 400))
    ws = np.sort(rng.uniform(0, seconds, n))
    if busy:
        ws[0] = 0.0  # one piece of work runs throughout
    if n and rng.random() < 0.5:  # some work starting exactly on a counter update
        m = min(n, 20)
        ws[rng.choice(n, m, replace=False)] = kt[rng.integers(0, kt.size, m)]
        ws = np.sort(ws)
    dur = rng.exponential(float(rng.choice([0.01, 0.05, 0.3])), n)
    dur[rng.random(n) < 0.05] = 0.0
    we = ws + dur
    if busy:
        we[0] = seconds + 1.0
    wc = rng.integers(0, n_cls, n).astype(np.int64)
    draws = rng.uniform(20, 200, n_cls)
    # The counter: 60 W idle plus each running piece of work's draw, integrated exactly.
    edges = np.unique(np.concatenate(([0.0, seconds + 1], ws, we)))
    mid = (edges[:-1] + edges[1:]) / 2
    running = (ws[None, :] <= mid[:, None]) & (we[None, :] > mid[:, None])
    power = 60.0 + running.astype(float) @ draws[wc]
    cum = np.concatenate(([0.0], np.cumsum(power * np.diff(edges))))
    kv = np.interp(kt, edges, cum) + 1e5
    kh = np.full(kt.size, float(rng.choice([0.0, 0.001, 0.01])))
    work = Intervals(ws, we, np.ones(n), np.arange(n), wc, [f"step:c{i}" for i in range(n_cls)])
    return kt, kv, kh, work, rng


@pytest.mark.parametrize("busy", [False, True])
@pytest.mark.parametrize("seed", range(30))
def test_many_at_once_equals_one_at_a_time(seed, busy):
    kt, kv, kh, work, rng = trace(seed, busy)
    one = DeviceShaper(samples=True)
    far_read = (np.array([-1000.0]), np.array([-999.99]), np.array([100.0]))
    one.extend(kt, kv, kh, float(kt[-1]), work, far_read)
    many = DeviceShaper()
    # The live meter extends as intervals settle: a few at a time, at uneven points.
    for upto in [*np.sort(rng.uniform(kt[0], kt[-1], int(rng.integers(0, 6)))), float(kt[-1])]:
        many.extend(kt, kv, kh, float(upto), work)
    t1, e1, u1 = one.curve()
    t2, e2, u2 = many.curve()
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(e2, e1, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(u2, u1, rtol=1e-9, atol=1e-9)
    # Every interval ends on the counter's value (no drift), and its energy is the counter's.
    ends = np.searchsorted(t2, kt)
    np.testing.assert_allclose(e2[ends], kv - kv[0], rtol=0, atol=1e-9)
    assert np.all(np.diff(e2) >= -1e-9)
