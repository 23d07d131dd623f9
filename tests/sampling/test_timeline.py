import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenmaas.sampling.timeline import Timeline, build_curve
from greenmaas.sources.base import Reading


def stepping_counter(tl, watts, update_s=0.1, read_s=0.01, seconds=1.0, start_j=5000.0):
    """Feed a counter that publishes every ``update_s`` with constant power, read every ``read_s``."""
    n = int(round(seconds / read_s))
    for i in range(n + 1):
        t = i * read_s
        published = math.floor(t / update_s + 1e-9) * update_s
        tl.append(t, Reading(energy_j=start_j + watts * published, power_w=watts))


def test_counter_total_and_window():
    tl = Timeline("gpu:0")
    stepping_counter(tl, 200.0)
    assert tl.total_j == pytest.approx(200.0)
    # re-timed steps: a 100 ms window in the middle holds 100 ms of energy
    assert tl.energy_between(0.3, 0.4) == pytest.approx(20.0, rel=0.05)


def test_counter_reset_is_not_negative():
    tl = Timeline("gpu:0")
    tl.append(0.0, Reading(energy_j=1000.0))
    tl.append(1.0, Reading(energy_j=1100.0))
    tl.append(2.0, Reading(energy_j=30.0))  # driver reload: counter restarted
    tl.append(3.0, Reading(energy_j=130.0))
    assert tl.resets == 1
    assert tl.energy_between(1.0, 2.0) == pytest.approx(30.0)
    assert tl.total_j == pytest.approx(230.0)


def test_rapl_wraparound():
    tl = Timeline("cpu:0")
    tl.append(0.0, Reading(energy_j=990.0, max_energy_j=1000.0))
    tl.append(1.0, Reading(energy_j=10.0, max_energy_j=1000.0))
    assert tl.total_j == pytest.approx(20.0)
    assert tl.resets == 0


def test_power_only_integrates_sample_to_sample():
    tl = Timeline("gpu:0", "power")
    for i, p in enumerate([100, 100, 300, 300]):
        tl.append(float(i), Reading(power_w=p))
    # trapezoid between consecutive reads: 100 + 200 + 300
    assert tl.total_j == pytest.approx(600.0)


def test_power_not_integrated_across_failure():
    tl = Timeline("gpu:0", "power")
    tl.append(0.0, Reading(power_w=100))
    tl.append(1.0, Reading(power_w=100))
    tl.mark_failed(1.5, "GPU is lost")
    tl.append(5.0, Reading(power_w=100))
    tl.append(6.0, Reading(power_w=100))
    assert tl.total_j == pytest.approx(200.0)
    assert tl.gaps[0].reason == "GPU is lost"
    assert tl.gaps[0].end == 5.0


def test_stepping_counter_knots_sit_on_its_update_grid():
    # A counter publishing every 100 ms at phase 37 ms, read every ~10 ms with jitter: every
    # update becomes a knot at its true instant, within the stated uncertainty.
    rng = np.random.default_rng(3)
    period, phase = 0.1, 0.037
    tl = Timeline("gpu:0")
    t = 0.0
    while t < 6.0:
        k = np.floor((t - phase) / period)
        tl.append(t, Reading(energy_j=300.0 * max(0.0, k * period + phase)))
        t += rng.uniform(0.008, 0.012)
    kt, kv, kh = tl.knots()
    assert np.all(np.diff(kt) > 0)
    true_t = kv / 300.0  # the published value is the energy at the update instant
    late = slice(40, None)  # once the grid has a window of changes
    assert np.all(np.abs(kt[late] - true_t[late]) <= kh[late] + 1e-9)
    assert np.median(np.abs(kt[late] - true_t[late])) < 0.001  # the read gaps alone give 2.5 ms
    assert tl.settled() == kt[-1]


def test_a_stale_read_is_dropped_not_taken_for_a_reset():
    tl = Timeline("gpu:0")
    for t, v in [(0.0, 100.0), (0.1, 130.0), (0.2, 160.0), (0.25, 130.0), (0.3, 190.0)]:
        tl.append(t, Reading(energy_j=v))
    assert tl.resets == 0 and tl.stale_reads == 1
    assert tl.total_j == pytest.approx(90.0)


def test_rapl_counter_standing_exactly_at_its_maximum_wraps():
    # The case from Zeus's tests: the counter reads its maximum, then restarts from 0.
    tl = Timeline("cpu:0")
    tl.append(0.0, Reading(energy_j=990.0, max_energy_j=1000.0))
    tl.append(1.0, Reading(energy_j=1000.0, max_energy_j=1000.0))
    tl.append(2.0, Reading(energy_j=40.0, max_energy_j=1000.0))
    assert tl.resets == 0
    assert tl.total_j == pytest.approx(50.0)


def test_averaged_power_is_integrated_at_the_middle_of_its_window():
    tl = Timeline("gpu:0", "power", power_field="average_1s")
    for i in range(11):
        tl.append(float(i), Reading(power_w=100.0))
    assert tl.power_lag_s == pytest.approx(0.5)
    assert tl.settled() == pytest.approx(9.5)
    xs, _ = tl.curve()
    assert xs[0] == pytest.approx(-0.5)


def e_true(t):
    full = math.floor(t / 0.1 + 1e-9)
    return full * (300 * 0.05 + 100 * 0.05)


def test_trim_keeps_cumulative_values():
    tl = Timeline("gpu:0", "power")
    for i in range(100):
        tl.append(float(i), Reading(power_w=10.0))
    before = tl.energy_between(80.0, 90.0)
    at90 = float(tl.energy_at([90.0])[0])
    tl.trim(50.0)
    assert tl.energy_between(80.0, 90.0) == pytest.approx(before)
    assert float(tl.energy_at([90.0])[0]) == pytest.approx(at90)
    assert len(tl) < 100


def test_late_or_repeated_reads_ignored():
    tl = Timeline("gpu:0")
    tl.append(1.0, Reading(energy_j=10.0))
    tl.append(1.0, Reading(energy_j=20.0))
    tl.append(0.5, Reading(energy_j=30.0))
    assert len(tl) == 1


reads = st.lists(
    st.tuples(st.floats(0.001, 1.0), st.floats(0.0, 500.0), st.floats(0.0, 1e4)),
    min_size=2,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(reads, st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.booleans(), st.booleans())
def test_windows_add_up_and_never_negative(rs, a, b, c, use_counter, use_power):
    if not (use_counter or use_power):
        use_counter = True
    tl = Timeline("d")
    t = 0.0
    e = 0.0
    for dt, p, de in rs:
        t += dt
        e += de
        tl.append(t, Reading(energy_j=e if use_counter else None, power_w=p if use_power else None))
    lo, hi = tl.t_first, tl.t_last
    x0, x1, x2 = sorted(lo + (hi - lo) * v for v in (a, b, c))
    e01 = tl.energy_between(x0, x1)
    e12 = tl.energy_between(x1, x2)
    e02 = tl.energy_between(x0, x2)
    assert e01 >= 0 and e12 >= 0
    assert e01 + e12 == pytest.approx(e02, rel=1e-9, abs=1e-9)
    ts, es = tl.curve()
    assert np.all(np.diff(ts) > 0)
    assert np.all(np.diff(es) >= 0)


def test_build_curve_empty_and_single():
    ts, es = build_curve(np.array([]), np.array([]), np.array([]))
    assert ts.size == 0
    ts, es = build_curve(np.array([1.0]), np.array([np.nan]), np.array([5.0]))
    assert es.tolist() == [0.0]
