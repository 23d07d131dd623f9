import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenmaas.errors import DeviceReadError, InputError
from greenmaas.sampling.timeline import Timeline
from greenmaas.sources.base import REPLAY
from greenmaas.sources.replay import ReplaySource, TraceData, load_trace
from greenmaas.testing import FakeClock

TRACE = """t,device,energy_j,power_w,note
10.0,gpu:0,1000.0,100.0,start
10.0,cpu:0,,50.0,
10.5,gpu:0,,300.0,
11.0,gpu:0,1200.0,300.0,
11.0,cpu:0,,70.0,
12.0,gpu:0,1500.0,,end
"""


def write(tmp_path, text, name="trace.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_load_trace_columns_and_blanks(tmp_path):
    data = load_trace(write(tmp_path, TRACE))
    assert set(data) == {"gpu:0", "cpu:0"}
    g = data["gpu:0"]
    assert isinstance(g, TraceData) and len(g) == 4
    np.testing.assert_array_equal(g.t, [10.0, 10.5, 11.0, 12.0])
    np.testing.assert_array_equal(g.energy_j, [1000.0, np.nan, 1200.0, 1500.0])
    np.testing.assert_array_equal(g.power_w, [100.0, 300.0, 300.0, np.nan])
    c = data["cpu:0"]
    assert np.isnan(c.energy_j).all()
    np.testing.assert_array_equal(c.power_w, [50.0, 70.0])


def test_a_single_value_column_is_enough(tmp_path):
    data = load_trace(write(tmp_path, "device,t,power_w\ngpu:0,0,10\ngpu:0,1,20\n"))
    assert np.isnan(data["gpu:0"].energy_j).all()
    np.testing.assert_array_equal(data["gpu:0"].power_w, [10.0, 20.0])


@pytest.mark.parametrize(
    "text, line, problem",
    [
        ("", 1, "empty file"),
        ("t,energy_j,power_w\n0,1,2\n", 1, "missing column device"),
        ("time,device,energy_j\n0,gpu:0,1\n", 1, "missing column t"),
        ("t,device,watts\n0,gpu:0,1\n", 1, "missing column: a trace needs energy_j or power_w"),
        ("t,device,energy_j,power_w\n", 2, "no data rows"),
        ("t,device,energy_j,power_w\n0,gpu:0,1,2\nabc,gpu:0,1,2\n", 3, "t is not a number: 'abc'"),
        ("t,device,energy_j,power_w\n0,gpu:0,1,2\n1,gpu:0,x,2\n", 3, "energy_j is not a number"),
        ("t,device,energy_j,power_w\n0,gpu:0,1,2\n\n1,gpu:0,2,nan\n", 4, "power_w is not a finite number: 'nan'"),
        ("t,device,energy_j,power_w\n0,gpu:0,inf,2\n", 2, "energy_j is not a finite number"),
        ("t,device,energy_j,power_w\n0,gpu:0,1,2\n1,gpu:0,,\n", 3, "energy_j and power_w are both blank"),
        ("t,device,energy_j,power_w\n0,gpu:0,1,-5\n", 2, "power_w is negative"),
        ("t,device,energy_j,power_w\n0,gpu:0,-1,5\n", 2, "energy_j is negative"),
        (
            "t,device,energy_j,power_w\n1,gpu:0,1,2\n0,cpu:0,1,2\n0.5,gpu:0,2,2\n",
            4,
            "time 0.5 goes backwards from 1 for device gpu:0",
        ),
        ("t,device,energy_j,power_w\n1,gpu:0,1,2\n1,gpu:0,2,2\n", 3, "time 1 repeats 1 for device gpu:0"),
        ("t,device,energy_j,power_w\n1,gpu:0\n", 2, "row has 2 fields, the header needs 4"),
        ("t,device,energy_j,power_w\n1, ,1,2\n", 2, "device is blank"),
    ],
)
def test_malformed_traces_name_the_line(tmp_path, text, line, problem):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_trace(path)
    err = info.value
    assert err.line == line
    assert err.path == str(path)
    assert err.problem.startswith(problem), err.problem
    assert str(err).startswith(f"{path}, line {line}: ")


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot open trace"):
        load_trace(tmp_path / "missing.csv")


def test_large_trace_streams_quickly(tmp_path):
    n = 100_000
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write("t,device,energy_j,power_w\n")
        f.writelines(f"{i * 0.01:.2f},gpu:{i % 2},{i * 3.0},{300 + i % 5}\n" for i in range(n))
    start = time.perf_counter()
    data = load_trace(path)
    elapsed = time.perf_counter() - start
    assert len(data["gpu:0"]) + len(data["gpu:1"]) == n
    assert elapsed < 2.0  # about 0.2 s here: 1M rows take a couple of seconds


# ---------------------------------------------------------------------- ReplaySource


def test_replay_follows_the_clock_and_interpolates(tmp_path):
    clock = FakeClock(start=100.0)
    src = ReplaySource(write(tmp_path, TRACE), clock)
    assert src.t0 == 10.0 and src.duration_s == 2.0
    assert [(d.id, d.kind, d.method) for d in src.devices()] == [("gpu:0", "gpu", REPLAY), ("cpu:0", "cpu", REPLAY)]
    r = src.read("gpu:0")
    assert (r.energy_j, r.power_w) == (1000.0, 100.0)
    clock.advance(0.25)  # trace time 10.25
    r = src.read("gpu:0")
    assert r.energy_j == pytest.approx(1050.0)  # between 1000 @10 and 1200 @11 (blank at 10.5 skipped)
    assert r.power_w == pytest.approx(200.0)
    clock.advance(1.25)  # 11.5
    r = src.read("gpu:0")
    assert r.energy_j == pytest.approx(1350.0)
    assert r.power_w == pytest.approx(300.0)  # last power held (12.0 has none)
    assert src.read("cpu:0").energy_j is None
    clock.advance(10.0)  # past the end: held
    r = src.read("gpu:0")
    assert (r.energy_j, r.power_w) == (1500.0, 300.0)
    assert src.read("cpu:0").power_w == 70.0


def test_replay_from_a_dict_with_t0(tmp_path):
    data = load_trace(write(tmp_path, TRACE))
    clock = FakeClock()
    src = ReplaySource(data, clock, t0=11.0)
    assert src.read("gpu:0").energy_j == 1200.0
    clock.advance(0.5)
    assert src.read("gpu:0").energy_j == pytest.approx(1350.0)
    with pytest.raises(DeviceReadError, match="gpu:9"):
        src.read("gpu:9")


def test_replay_through_a_timeline_gives_the_recorded_energy(tmp_path):
    clock = FakeClock()
    src = ReplaySource(write(tmp_path, TRACE), clock)
    tl = Timeline("gpu:0", REPLAY)
    for _ in range(25):
        tl.append(clock.monotonic(), src.read("gpu:0"))
        clock.advance(0.1)
    assert tl.energy_between(0.0, 2.0) == pytest.approx(500.0)
    assert tl.energy_between(1.0, 2.0) == pytest.approx(300.0)


@settings(max_examples=50, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.001, 10.0), st.floats(0.0, 1e4), st.floats(0.0, 1e3)), min_size=1, max_size=30
    ),
    start=st.floats(-1e6, 1e6),
)
def test_round_trip_and_replay_stays_within_recorded_values(tmp_path_factory, steps, start):
    """Any well-formed trace loads back exactly, and the replayed energy never leaves the
    recorded range nor decreases when the recorded counter does not."""
    t, e = start, 0.0
    rows = []
    for dt, de, p in steps:
        t, e = t + dt, e + de
        rows.append((t, e, p))
    path = tmp_path_factory.mktemp("h") / "trace.csv"
    path.write_text("t,device,energy_j,power_w\n" + "".join(f"{a!r},gpu:0,{b!r},{c!r}\n" for a, b, c in rows))
    data = load_trace(path)["gpu:0"]
    np.testing.assert_array_equal(data.t, [r[0] for r in rows])
    np.testing.assert_array_equal(data.energy_j, [r[1] for r in rows])
    clock = FakeClock()
    src = ReplaySource({"gpu:0": data}, clock)
    last = -math.inf
    eps = 1e-9 * max(1.0, rows[-1][1])  # interpolation rounding
    for _ in range(20):
        r = src.read("gpu:0")
        assert rows[0][1] - eps <= r.energy_j <= rows[-1][1] + eps
        assert r.energy_j >= last - eps
        last = r.energy_j
        clock.advance(sum(s[0] for s in steps) / 15)
