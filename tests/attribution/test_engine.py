import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from greenmaas.attribution.engine import rates_for, share_energy, share_time
from greenmaas.errors import AttributionError


def flat(watts, t0=0.0, t1=10.0):
    return np.array([t0, t1]), np.array([0.0, watts * (t1 - t0)])


def shares(curve, spans, policy="time", window=(0.0, 10.0)):
    s = np.array([x[0] for x in spans], float)
    e = np.array([x[1] for x in spans], float)
    w = np.array([x[2] if len(x) > 2 else 1.0 for x in spans], float)
    r = rates_for(policy, w, e - s)
    return share_energy(*curve, s, e, r, np.arange(len(spans)), len(spans), *window)


def test_time_policy_exact_shares():
    # 100 W; A runs 0-10, B runs 5-10: A alone 5 s (500 J) + half of 5 s (250 J)
    res = shares(flat(100), [(0, 10), (5, 10)])
    assert res.by_owner.tolist() == pytest.approx([750.0, 250.0])
    assert res.idle_j == pytest.approx(0.0)


def test_idle_is_explicit():
    res = shares(flat(100), [(2, 4)])
    assert res.by_owner[0] == pytest.approx(200.0)
    assert res.idle_j == pytest.approx(800.0)
    assert res.total_j == pytest.approx(1000.0)


def test_weighted_batch_members_split_by_weight():
    # two members of one batch, 2-4 s, output tokens 10 and 30
    res = shares(flat(100), [(2, 4, 10), (2, 4, 30)], policy="weighted")
    assert res.by_owner.tolist() == pytest.approx([50.0, 150.0])


def test_weighted_spreads_weight_over_life():
    # A: weight 2 over 0-2 s (rate 1/s); B: weight 1 over 1-2 s (rate 1/s): they split 1-2 equally
    res = shares(flat(100, 0, 2), [(0, 2, 2), (1, 2, 1)], policy="weighted", window=(0, 2))
    assert res.by_owner.tolist() == pytest.approx([150.0, 50.0])


def test_power_shape_matters():
    # 0-5 s at 50 W, 5-10 s at 150 W
    curve = (np.array([0.0, 5.0, 10.0]), np.array([0.0, 250.0, 1000.0]))
    res = shares(curve, [(0, 5), (5, 10)])
    assert res.by_owner.tolist() == pytest.approx([250.0, 750.0])


def test_zero_duration_and_out_of_window():
    res = shares(flat(100), [(3, 3), (20, 30), (-5, 1)])
    assert res.by_owner.tolist() == pytest.approx([0.0, 0.0, 100.0])


def test_owner_with_several_intervals():
    s = np.array([0.0, 6.0])
    e = np.array([2.0, 8.0])
    res = share_energy(*flat(100), s, e, np.ones(2), np.array([0, 0]), 1, 0.0, 10.0)
    assert res.by_owner[0] == pytest.approx(400.0)


def test_unknown_policy():
    with pytest.raises(AttributionError):
        rates_for("nope", np.ones(1), np.ones(1))


def test_share_time_splits_seconds():
    res = share_time(np.array([0.0, 5.0]), np.array([10.0, 10.0]), np.ones(2), np.arange(2), 2, 0.0, 10.0)
    assert res.by_owner.tolist() == pytest.approx([7.5, 2.5])


span_st = st.tuples(st.floats(0, 100), st.floats(0, 30), st.floats(0.0, 1000.0))


@settings(max_examples=300, deadline=None)
@example(powers=[1.3080839920936], spans=[(0.0, 2.0, 1e-12), (1.0, 1.0, 4.0)], policy="weighted")
@given(
    st.lists(st.floats(0.0, 800.0), min_size=1, max_size=50),
    st.lists(span_st, min_size=0, max_size=40),
    st.sampled_from(["time", "weighted"]),
)
def test_conservation(powers, spans, policy):
    n = len(powers)
    t = np.linspace(0, 100, n + 1)
    e = np.concatenate([[0.0], np.cumsum(np.asarray(powers) * np.diff(t))])
    s = np.array([x[0] for x in spans], float)
    en = np.array([x[0] + x[1] for x in spans], float)
    w = np.array([x[2] for x in spans], float)
    r = rates_for(policy, w, en - s)
    res = share_energy(t, e, s, en, r, np.arange(len(spans)), len(spans), 0.0, 100.0)
    assert np.all(res.by_owner >= 0)
    assert res.idle_j >= 0
    total = e[-1] - e[0]
    assert res.total_j == pytest.approx(total, rel=1e-12, abs=1e-9)
    got = res.by_owner.sum() + res.idle_j
    assert abs(got - total) <= 1e-9 * max(total, 1.0)
