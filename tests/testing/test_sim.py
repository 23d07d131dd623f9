import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import greenmaas.testing as testing
from greenmaas.errors import DeviceReadError
from greenmaas.sources.base import COUNTER, POWER
from greenmaas.sources.nvml import NvmlSource
from greenmaas.testing import FakeClock
from greenmaas.testing import nvml as fake
from greenmaas.testing.nvml import FakeGPU, FakeNVML, NVMLError
from greenmaas.testing.sim import PowerTrace, SimulatedGPU

FAST = settings(max_examples=40, deadline=None)

# A trace with steps off the counter's grid: 100 W, then 400 W on [0.33, 0.71), then 150 W.
STEPS = PowerTrace([0.0, 0.33, 0.71], [100.0, 400.0, 150.0])


def true_mj(t):
    """True cumulative mJ of STEPS at t >= 0, by hand."""
    return 1000 * (100 * min(t, 0.33) + 400 * max(0.0, min(t, 0.71) - 0.33) + 150 * max(0.0, t - 0.71))


def nvml_of(gpu, clock=None):
    nv = FakeNVML([gpu], clock=clock or FakeClock())
    nv.nvmlInit()
    return nv, nv.nvmlDeviceGetHandleByIndex(0)


# ---------------------------------------------------------------------- public names


def test_exported_lazily_and_a_fake_gpu():
    assert testing.SimulatedGPU is SimulatedGPU and testing.PowerTrace is PowerTrace
    assert {"SimulatedGPU", "PowerTrace"} <= set(testing.__all__)
    gpu = SimulatedGPU(300.0)
    assert isinstance(gpu, FakeGPU)
    assert (gpu.name, gpu.arch) == ("NVIDIA H200", fake.NVML_DEVICE_ARCH_HOPPER)


# ---------------------------------------------------------------------- PowerTrace


def test_power_trace_holds_each_value_and_the_ends():
    assert STEPS.power_w(-5.0) == 100.0  # before the first time: the first value
    assert STEPS(0.33) == 400.0 and STEPS(0.7099) == 400.0 and STEPS(0.71) == 150.0
    assert STEPS(1e6) == 150.0
    assert list(STEPS.power_w(np.array([0.1, 0.5, 2.0]))) == [100.0, 400.0, 150.0]


def test_power_trace_energies_are_exact():
    assert STEPS.energy_j(0.0, 1.0) == pytest.approx(33.0 + 152.0 + 43.5, abs=1e-12)
    assert STEPS.cumulative_j(0.5) == pytest.approx(true_mj(0.5) / 1000, abs=1e-12)
    assert STEPS.energy_j(-1.0, 0.0) == pytest.approx(100.0, abs=1e-12)
    assert STEPS.energy_j(1.0, 0.0) == pytest.approx(-STEPS.energy_j(0.0, 1.0))
    ts = np.array([0.2, 0.5, 0.9])
    np.testing.assert_allclose(STEPS.cumulative_j(ts), [true_mj(t) / 1000 for t in ts], atol=1e-12)


def test_bursts_add_over_idle():
    trace = PowerTrace.from_bursts(80.0, [(1.0, 2.0, 100.0), (1.5, 3.0, 50.0), (2.5, 2.5, 999.0)])
    assert [trace(t) for t in (0.0, 0.99, 1.2, 1.7, 2.2, 2.7, 3.0)] == [80, 80, 180, 230, 130, 130, 80]
    assert trace.energy_j(0.0, 4.0) == pytest.approx(80 * 4 + 100 * 1 + 50 * 1.5)
    assert PowerTrace.from_bursts(60.0, []).energy_j(0.0, 2.0) == 120.0
    # A burst starting at or before 0 keeps idle before it.
    early = PowerTrace.from_bursts(10.0, [(0.0, 1.0, 5.0)])
    assert (early(-0.5), early(0.0), early(1.0)) == (10.0, 15.0, 10.0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PowerTrace([], []),
        lambda: PowerTrace([0.0, 1.0], [1.0]),
        lambda: PowerTrace([0.0, 0.0], [1.0, 2.0]),
        lambda: PowerTrace([0.0], [-1.0]),
        lambda: PowerTrace([0.0], [math.nan]),
        lambda: PowerTrace.from_bursts(10.0, [(2.0, 1.0, 5.0)]),
        lambda: PowerTrace.from_bursts(10.0, [(0.0, 1.0, -20.0)]),
    ],
)
def test_power_trace_rejects_nonsense(make):
    with pytest.raises(ValueError):
        make()


BURST = st.tuples(
    st.floats(0, 5, allow_nan=False), st.floats(0, 2, allow_nan=False), st.floats(0, 500, allow_nan=False)
).map(lambda b: (b[0], b[0] + b[1], b[2]))


@FAST
@given(idle=st.floats(0, 200), bursts=st.lists(BURST, max_size=6), end=st.floats(0, 8))
def test_overlapping_bursts_add_exactly(idle, bursts, end):
    trace = PowerTrace.from_bursts(idle, bursts)
    expected = idle * end + sum(x * max(0.0, min(t1, end) - min(t0, end)) for t0, t1, x in bursts)
    assert trace.energy_j(0.0, end) == pytest.approx(expected, rel=1e-9, abs=1e-6)


@FAST
@given(
    bursts=st.lists(BURST, max_size=5),
    ts=st.lists(st.floats(-2, 8, allow_nan=False), min_size=3, max_size=3),
)
def test_true_energy_is_additive(bursts, ts):
    gpu = SimulatedGPU(PowerTrace.from_bursts(50.0, bursts))
    a, b, c = ts
    whole = gpu.true_energy_j(a, c)
    assert whole == pytest.approx(gpu.true_energy_j(a, b) + gpu.true_energy_j(b, c), abs=1e-6)
    lo, hi = min(a, c), max(a, c)
    assert gpu.true_energy_j(lo, hi) >= 50.0 * (hi - lo) - 1e-6  # never below idle


# ---------------------------------------------------------------------- callable truth


def test_callable_power_is_integrated_on_a_fine_grid():
    gpu = SimulatedGPU(lambda t: 100.0 + 50.0 * np.sin(t))
    exact = 100.0 * 10 + 50.0 * (1 - math.cos(10.0))
    assert gpu.true_energy_j(0.0, 10.0) == pytest.approx(exact, rel=1e-9)
    assert gpu.true_energy_j(-1.0, 0.0) == pytest.approx(100.0 - 50.0 * (1 - math.cos(1.0)), rel=1e-9)
    assert gpu.true_power_w(0.5) == pytest.approx(100.0 + 50.0 * math.sin(0.5))
    both = gpu.true_cumulative_j(np.array([1.0, 2.0]))
    np.testing.assert_allclose(both, [gpu.true_cumulative_j(1.0), gpu.true_cumulative_j(2.0)])


def test_callable_of_scalars_only():
    gpu = SimulatedGPU(lambda t: 400.0 if t < 1.0 else 100.0)
    assert gpu.true_energy_j(0.0, 2.0) == pytest.approx(500.0, abs=1e-6)
    assert gpu.true_power_w(0.5) == 400.0
    assert gpu.counter_mj(1.5) == pytest.approx(450_000, abs=1)


# ---------------------------------------------------------------------- energy counter


def test_counter_publishes_floor_of_true_mj_on_its_grid():
    gpu = SimulatedGPU(STEPS, counter_period_s=0.1, counter_phase_s=0.037)
    nv, h = nvml_of(gpu)
    for k in range(12):
        u = 0.037 + k * 0.1
        nv.clock.set(u)
        value = nv.nvmlDeviceGetTotalEnergyConsumption(h)
        assert type(value) is int
        assert value == math.floor(true_mj(u) + 1e-6)
        # Between updates every read repeats it.
        for dt in (0.01, 0.05, 0.0999):
            assert gpu.counter_mj(u + dt) == value
    assert gpu.counter_mj(0.0369) == 0  # before the first update: start_mj
    assert gpu.counter_mj(0.2) == 100 * 137  # last update at 0.137 s, 100 W


def test_counter_starts_from_start_mj():
    gpu = SimulatedGPU(250.0, start_mj=9_876_543_210_000)
    assert gpu.counter_mj(0.05) == 9_876_543_210_000
    assert gpu.counter_mj(1.05) == 9_876_543_210_000 + 250_000


def test_counter_rounds_down_to_whole_mj():
    gpu = SimulatedGPU(0.0123, counter_period_s=0.5)  # 6.15 mJ per update
    assert [gpu.counter_mj(0.5 * k) for k in range(5)] == [0, 6, 12, 18, 24]


def test_jittered_updates_are_displaced_within_bounds_and_fixed_by_the_seed():
    gpu = SimulatedGPU(300.0, counter_jitter_s=0.02, seed=7)
    times = gpu.update_times_s(0.05, 10.0)
    grid = np.round(times / 0.1) * 0.1
    assert len(times) == 100
    assert np.all(np.abs(times - grid) <= 0.02) and np.std(times - grid) > 0.005
    again = SimulatedGPU(300.0, counter_jitter_s=0.02, seed=7).update_times_s(0.05, 10.0)
    other = SimulatedGPU(300.0, counter_jitter_s=0.02, seed=8).update_times_s(0.05, 10.0)
    np.testing.assert_array_equal(times, again)
    assert not np.array_equal(times, other)
    for u in times[:20]:
        assert gpu.counter_mj(u) == math.floor(300_000 * u + 1e-6)
        assert gpu.counter_mj(u - 1e-6) < gpu.counter_mj(u)


def test_jitter_must_keep_updates_in_order():
    with pytest.raises(ValueError):
        SimulatedGPU(300.0, counter_jitter_s=0.05)


def test_missed_updates_hold_the_value_until_the_next_one():
    gpu = SimulatedGPU(300.0, missed_updates=0.3, seed=3)
    times = gpu.update_times_s(0.05, 50.0)
    assert 0.6 * 500 < len(times) < 0.8 * 500
    again = SimulatedGPU(300.0, missed_updates=0.3, seed=3).update_times_s(0.05, 50.0)
    np.testing.assert_array_equal(times, again)
    gaps = np.diff(times)
    k = int(np.argmax(gaps))
    assert gaps[k] > 0.15  # at least one update missed here
    held = gpu.counter_mj(times[k])
    assert held == math.floor(300_000 * times[k] + 1e-6)
    for t in np.linspace(times[k], times[k + 1] - 1e-6, 7):
        assert gpu.counter_mj(t) == held
    assert gpu.counter_mj(times[k + 1]) == math.floor(300_000 * times[k + 1] + 1e-6)


def test_stale_reads_return_the_previous_update():
    always = SimulatedGPU(300.0, stale_reads=1.0)
    assert always.energy_mj(0.25) == 30_000  # should be 60_000 (update at 0.2 s)
    assert always.energy_mj(0.05) == 0  # nothing published earlier than start_mj

    def reads(seed):
        gpu = SimulatedGPU(300.0, stale_reads=0.3, seed=seed)
        ts = np.arange(0, 400) * 0.025
        return [gpu.energy_mj(t) for t in ts], [gpu.counter_mj(t) for t in ts]

    got, fresh = reads(5)
    stale = [g != f for g, f in zip(got, fresh)]
    assert 0.2 < np.mean(stale) < 0.4
    for g, f in zip(got, fresh):
        assert g == f or f - g == 30_000  # exactly one update (30 J) behind
    assert any(b < a for a, b in zip(got, got[1:]))  # a read can go backwards
    assert reads(5)[0] == got  # deterministic for a seed and a sequence of calls
    assert reads(6)[0] != got


def test_driver_reload_restarts_the_counter_from_zero():
    gpu = SimulatedGPU(STEPS, counter_phase_s=0.05, resets_at=(0.62,), start_mj=1_000_000, stale_reads=0.0)
    assert gpu.counter_mj(0.61) == 1_000_000 + math.floor(true_mj(0.55) + 1e-6)
    assert gpu.counter_mj(0.62) == 0  # reloaded, no update yet
    assert gpu.counter_mj(0.649) == 0
    assert gpu.counter_mj(0.65) == math.floor(true_mj(0.65) - true_mj(0.62) + 1e-6)
    assert gpu.counter_mj(1.26) == math.floor(true_mj(1.25) - true_mj(0.62) + 1e-6)
    # A stale read never shows the value from before the reload.
    stale = SimulatedGPU(STEPS, counter_phase_s=0.05, resets_at=(0.62,), start_mj=1_000_000, stale_reads=1.0)
    assert [stale.energy_mj(t) for t in (0.63, 0.66, 0.76)] == [0, 0, gpu.counter_mj(0.66)]


def test_no_counter_answers_not_supported():
    gpu = SimulatedGPU(300.0, counter=False)
    nv, h = nvml_of(gpu)
    with pytest.raises(NVMLError) as info:
        nv.nvmlDeviceGetTotalEnergyConsumption(h)
    assert info.value.value == fake.NVML_ERROR_NOT_SUPPORTED
    with NvmlSource(nvml=FakeNVML([gpu]), visible_devices=None) as src:
        (dev,) = src.devices()
        assert (dev.method, dev.power_field) == (POWER, "instant")
        assert src.read("gpu:0").power_w == 300.0


def test_fail_hook_still_fails_calls():
    gpu = SimulatedGPU(300.0, fail=lambda t: fake.NVML_ERROR_GPU_IS_LOST if t >= 1.0 else None)
    nv, h = nvml_of(gpu)
    nv.clock.set(1.0)
    with pytest.raises(NVMLError):
        nv.nvmlDeviceGetTotalEnergyConsumption(h)


READ_TIMES = st.lists(st.floats(0, 5, allow_nan=False), min_size=2, max_size=40).map(sorted)


@FAST
@given(
    bursts=st.lists(BURST, max_size=4),
    period=st.sampled_from([0.01, 0.02, 0.05, 0.1]),
    phase=st.floats(0, 0.1),
    jitter_frac=st.floats(0, 0.49),
    missed=st.floats(0, 0.9),
    seed=st.integers(0, 2**32),
    ts=READ_TIMES,
)
def test_counter_never_decreases_and_never_exceeds_the_truth(
    bursts, period, phase, jitter_frac, missed, seed, ts
):
    gpu = SimulatedGPU(
        PowerTrace.from_bursts(30.0, bursts),
        counter_period_s=period,
        counter_phase_s=phase,
        counter_jitter_s=jitter_frac * period,
        missed_updates=missed,
        seed=seed,
    )
    nv, h = nvml_of(gpu)
    values = []
    for t in ts:
        nv.clock.set(t)
        values.append(nv.nvmlDeviceGetTotalEnergyConsumption(h))
    assert values == sorted(values)
    for t, v in zip(ts, values):
        assert v <= 1000 * gpu.true_cumulative_j(t) + 1e-3


# ---------------------------------------------------------------------- power readings


def field(nv, h, fid):
    (fv,) = nv.nvmlDeviceGetFieldValues(h, [fid])
    return fv


def test_instant_field_is_the_true_power():
    gpu = SimulatedGPU(STEPS)
    nv, h = nvml_of(gpu)
    for t, watts in ((0.1, 100), (0.33, 400), (0.5, 400), (0.71, 150)):
        nv.clock.set(t)
        fv = field(nv, h, fake.NVML_FI_DEV_POWER_INSTANT)
        assert (fv.nvmlReturn, fv.value.uiVal) == (0, watts * 1000)


def test_average_1s_is_the_trailing_mean_at_every_read():
    gpu = SimulatedGPU(STEPS)  # power_usage defaults to average_1s
    nv, h = nvml_of(gpu)
    for t in (0.5, 1.0, 1.2, 1.7):
        nv.clock.set(t)
        expected_w = (true_mj(t) - true_mj(t - 1.0) if t >= 1.0 else true_mj(t) + 100_000 * (1.0 - t)) / 1000
        assert nv.nvmlDeviceGetPowerUsage(h) == round(expected_w * 1000)
        assert field(nv, h, fake.NVML_FI_DEV_POWER_AVERAGE).value.uiVal == round(expected_w * 1000)


def test_average_1s_refreshed_on_a_grid_is_held():
    gpu = SimulatedGPU(STEPS, power_refresh_s=0.25, power_phase_s=0.05)
    assert gpu.reported_power_w("average_1s", 1.3) == pytest.approx((true_mj(1.3) - true_mj(0.3)) / 1000)
    assert gpu.reported_power_w("average_1s", 1.54) == gpu.reported_power_w("average_1s", 1.3)


def test_part_time_holds_a_25ms_mean_refreshed_every_100ms():
    trace = PowerTrace.from_bursts(100.0, [(0.41, 0.43, 400.0), (0.45, 0.47, 800.0)])
    gpu = SimulatedGPU(trace, power_field="part_time", power_phase_s=0.03)
    nv, h = nvml_of(gpu)

    def read(t):
        nv.clock.set(t)
        return field(nv, h, fake.NVML_FI_DEV_POWER_INSTANT).value.uiVal

    # Refresh at 0.43 s: the window [0.405, 0.43) saw 400 W extra for 20 of its 25 ms.
    first = read(0.43)
    assert first == round(1000 * (100 + 400 * 20 / 25))
    assert read(0.46) == read(0.5299) == first  # held until the next refresh
    # The 800 W burst falls between windows ([0.405, 0.43) and [0.505, 0.53)): never seen.
    assert read(0.53) == 100_000
    assert gpu.true_energy_j(0.45, 0.47) == pytest.approx(18.0)


def test_missing_power_answers_not_supported():
    gpu = SimulatedGPU(300.0, power_field=None, power_usage=None)
    nv, h = nvml_of(gpu)
    assert field(nv, h, fake.NVML_FI_DEV_POWER_INSTANT).nvmlReturn == fake.NVML_ERROR_NOT_SUPPORTED
    with pytest.raises(NVMLError):
        nv.nvmlDeviceGetPowerUsage(h)
    with pytest.raises(ValueError):
        SimulatedGPU(300.0, power_field="average")


def test_noise_and_bias_of_instant_power():
    biased = SimulatedGPU(300.0, power_bias=0.05, power_usage="instant")
    assert biased.instant_power_mw(1.0) == 315_000 and biased.power_mw(1.0) == 315_000
    assert SimulatedGPU(300.0, power_bias=-0.1).power_mw(2.0) == 270_000  # bias scales averages too

    def noisy(seed):
        gpu = SimulatedGPU(300.0, power_noise=0.02, seed=seed)
        return np.array([gpu.instant_power_mw(0.01 * i) for i in range(400)]) / 1000

    w = noisy(1)
    assert abs(w.mean() - 300) < 1.5 and 4.5 < w.std() < 7.5
    np.testing.assert_array_equal(w, noisy(1))
    assert not np.array_equal(w, noisy(2))
    assert SimulatedGPU(300.0, power_noise=0.02).power_mw(1.5) == 300_000  # the average is not noisy


# ---------------------------------------------------------------------- through NvmlSource


@pytest.mark.parametrize(
    "power_field, power_usage, label",
    [
        ("instant", "average_1s", "instant"),
        ("part_time", "average_1s", "instant"),  # NVML cannot tell part-time from instant
        (None, "average_1s", "average_1s"),
        (None, None, None),
    ],
)
def test_nvml_source_reads_a_simulated_gpu(power_field, power_usage, label):
    clock = FakeClock()
    gpu = SimulatedGPU(STEPS, power_field=power_field, power_usage=power_usage, counter_phase_s=0.02)
    with NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None) as src:
        (dev,) = src.devices()
        assert (dev.method, dev.power_field, dev.name) == (COUNTER, label, "NVIDIA H200")
        clock.set(0.5)
        r = src.read("gpu:0")
    assert r.energy_j == pytest.approx(math.floor(true_mj(0.42) + 1e-6) / 1000)
    expected_w = {
        "instant": 400.0,
        "average_1s": (true_mj(0.5) + 100_000 * 0.5) / 1000,
        None: None,
    }[label]
    if power_field == "part_time":
        expected_w = 400.0  # refresh at 0.5 s, window [0.475, 0.5) all at 400 W
    assert r.power_w == (pytest.approx(expected_w, abs=1e-3) if expected_w is not None else None)


def test_a_failing_simulated_gpu_is_a_read_error():
    gpu = SimulatedGPU(300.0, fail=lambda t: fake.NVML_ERROR_GPU_IS_LOST if t >= 1.0 else None)
    clock = FakeClock()
    with NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None) as src:
        clock.set(1.0)
        with pytest.raises(DeviceReadError, match="GPU is lost"):
            src.read("gpu:0")
