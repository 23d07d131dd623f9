"""The counter grid's timing of each update (:func:`greenmaas.sampling.grid.time_changes`).

The live meter times a change or two per flush (each row searched on its own, with floats) and an
offline re-attribution times them all at once (as arrays): both must give the same bits, or live
and offline would part. And on a regular grid the updates must land within what is stated."""

from __future__ import annotations

import numpy as np
import pytest

from greenmaas.sampling.grid import time_changes


def bounds(seed: int, n: int = 150):
    """Bounds of ``n`` counter updates seen by dithered reads: (lo, hi, reads, true instants)."""
    rng = np.random.default_rng(seed)
    period = float(rng.choice([0.1, 0.05, 0.02]))
    jitter = float(rng.choice([0.0, 0.0005, 0.003]))
    u = 5.0 + period * np.arange(n) + rng.uniform(0, period) + rng.normal(0, jitter, n)
    rp = float(rng.choice([0.01, 0.02, 0.05]))
    reads = np.cumsum(rng.uniform(0.7 * rp, 1.3 * rp, size=int(n * period / rp * 1.2) + 50)) + 4.9
    if rng.random() < 0.3:  # a few pauses: bounds that span several updates
        reads[rng.integers(0, reads.size, 5)] += 0.3
        reads = np.sort(reads)
    lo, hi, truth = [], [], []
    seen = -1
    for k in range(n):
        i = int(np.searchsorted(reads, u[k]))
        if i == 0 or i >= reads.size or i == seen:
            continue  # a read that saw two updates reports the later one (kept below)
        lo.append(reads[i - 1])
        hi.append(reads[i])
        truth.append(u[k])
        seen = i
    steps = max(1, int(round(period / rp)))
    return np.array(lo), np.array(hi), np.full(len(lo), float(steps)), np.array(truth)


@pytest.mark.parametrize("seed", range(12))
def test_one_change_at_a_time_gives_the_bits_of_all_at_once(seed):
    lo, hi, rd, _ = bounds(seed)
    u_all, h_all = time_changes(lo, hi, rd)
    for j in range(lo.size):
        u1, h1 = time_changes(lo[: j + 1], hi[: j + 1], rd[: j + 1], already=j)
        assert (u1[0], h1[0]) == (u_all[j], h_all[j]), j
    # and in small batches, as a flush takes the changes since the last one
    for j in range(0, lo.size - 3, 3):
        u3, h3 = time_changes(lo[: j + 3], hi[: j + 3], rd[: j + 3], already=j)
        np.testing.assert_array_equal(u3, u_all[j : j + 3])
        np.testing.assert_array_equal(h3, h_all[j : j + 3])


def test_a_regular_grid_is_timed_within_what_is_stated():
    rng = np.random.default_rng(7)
    n = 400
    u = 5.0 + 0.1 * np.arange(n) + 0.0371
    reads = np.cumsum(rng.uniform(0.007, 0.013, size=n * 12)) + 4.9
    i = np.searchsorted(reads, u)
    lo, hi = reads[i - 1], reads[i]
    got, half = time_changes(lo, hi, np.full(n, 10.0))
    err = np.abs(got - u)[64:]  # once the window is full
    assert np.median(err) < 0.0002 and np.quantile(err, 0.9) < 0.0005
    assert np.mean(err <= half[64:] + 1e-12) > 0.99


def test_a_counter_read_about_as_slowly_as_it_publishes_states_the_read_interval():
    # A 100 ms grid read every 70–130 ms: most changes are seen on the next read (the counter looks
    # as if it moved on every read) but some reads repeat a value. Each update is taken at the
    # read that saw it, and may lie anywhere since the read before: that is its stated ±.
    rng = np.random.default_rng(3)
    reads = np.cumsum(rng.uniform(0.07, 0.13, 400)) + 5.0
    grid = 5.0371 + 0.1 * np.arange(500)
    seen = np.searchsorted(grid, reads, side="right")  # updates published by each read
    changed = np.flatnonzero(np.diff(seen) > 0) + 1
    lo, hi = reads[changed - 1], reads[changed]
    gaps = np.diff(np.concatenate(([0], changed)))  # reads since the previous change
    u, h = time_changes(lo, hi, gaps.astype(float))
    assert np.any(gaps > 1)  # the counter held a value over two reads now and then
    ok = np.median(gaps) <= 1.5
    np.testing.assert_array_equal(u[64:], hi[64:])
    np.testing.assert_allclose(h[64:], (hi - lo)[64:])
    truth = grid[seen[changed] - 1]  # the last update before the read that saw the change
    assert ok and np.all(np.abs(truth - u)[64:] <= h[64:] + 1e-12)
    # A counter that moves between every two reads and never holds a value (RAPL): the read.
    u2, h2 = time_changes(lo, hi, np.ones(lo.size))
    np.testing.assert_array_equal(u2, hi)
    assert not np.any(h2)
