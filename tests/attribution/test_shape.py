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


def solo_trace(seed: int, seconds: float = 30.0):
    """Requests one at a time (gaps 5–200 ms, 10–600 ms long) of three kinds drawing 130, 280 and
    430 W over a 70 W idle, the last kind rare; a 100 ms counter timed to ±0.5 ms. Returns the
    knots, the work, and the true cumulative energy as breakpoints."""
    rng = np.random.default_rng(seed)
    ws, we, wc = [], [], []
    t = 0.2
    while True:
        t += float(rng.uniform(0.005, 0.2))
        d = float(np.exp(rng.uniform(np.log(0.01), np.log(0.6))))
        if t + d > seconds - 0.2:
            break
        ws.append(t)
        we.append(t + d)
        wc.append(int(rng.choice(3, p=[0.45, 0.45, 0.1])))
        t += d
    ws, we, wc = np.array(ws), np.array(we), np.array(wc, dtype=np.int64)
    draws = np.array([130.0, 280.0, 430.0])
    edges = np.unique(np.concatenate(([0.0, seconds], ws, we)))
    mid = (edges[:-1] + edges[1:]) / 2
    k = np.searchsorted(ws, mid, side="right") - 1
    running = (k >= 0) & (mid < we[np.maximum(k, 0)])
    power = 70.0 + np.where(running, draws[wc[np.maximum(k, 0)]], 0.0)
    cum = np.concatenate(([0.0], np.cumsum(power * np.diff(edges))))
    kt = np.arange(0.037, seconds - 0.1, 0.1)
    kv = np.interp(kt, edges, cum) + 1e5
    kh = np.full(kt.size, 0.0005)
    n = ws.size
    work = Intervals(ws, we, np.ones(n), np.arange(n), wc, ["request:small", "request:medium", "request:large"])
    return kt, kv, kh, work, (edges, cum)


@pytest.mark.parametrize("seed", range(3, 8))
def test_a_rare_kind_of_work_keeps_its_own_draw(seed):
    # Each kind's draw is pulled towards the common draw only by a tie-breaker relative to what
    # the window says about that kind: a kind that runs in few intervals is not pulled harder, so
    # where it shares an update with another kind the two are split by their own draws. (A pull
    # relative to the window's length put single requests up to 38% off here.)
    kt, kv, kh, work, (edges, cum) = solo_trace(seed)
    shaper = DeviceShaper()
    shaper.extend(kt, kv, kh, float(kt[-1]), work)
    t, e, _u = shaper.curve()
    ok = (work.starts > 3.0) & (work.ends < kt[-1])  # after the first fit windows
    got = np.interp(work.ends[ok], t, e) - np.interp(work.starts[ok], t, e)
    true = np.interp(work.ends[ok], edges, cum) - np.interp(work.starts[ok], edges, cum)
    err = np.abs(got / true - 1)
    assert (work.classes[ok] == 2).sum() >= 5  # the rare kind ran
    assert np.quantile(err, 0.9) < 0.001
    assert err.max() < 0.005


def test_a_held_power_field_is_never_used_as_shape():
    # A part-time field (refreshed every 100 ms with the mean of the 25 ms before) repeats its value
    # between refreshes: from its very first reads it must not stand in for the power of whatever
    # ran when it was read, so the curve is the counter-only one.
    kt, kv, kh, work, (edges, cum) = solo_trace(5, seconds=12.0)
    r1 = np.arange(0.01, float(kt[-1]), 0.01) + 0.0002
    refresh = np.floor((r1 - 0.013) / 0.1) * 0.1 + 0.013
    held = (np.interp(refresh, edges, cum) - np.interp(refresh - 0.025, edges, cum)) / 0.025
    reads = (r1 - 0.0002, r1, held)
    assert np.mean(held[1:] == held[:-1]) > 0.8
    with_reads = DeviceShaper(samples=True)
    with_reads.extend(kt, kv, kh, float(kt[-1]), work, reads)
    counter_only = DeviceShaper()
    counter_only.extend(kt, kv, kh, float(kt[-1]), work)
    t1, e1, u1 = with_reads.curve()
    t2, e2, u2 = counter_only.curve()
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_allclose(e1, e2, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(u1, u2, rtol=1e-9, atol=1e-9)
