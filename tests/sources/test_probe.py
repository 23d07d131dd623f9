"""The hardware probe: pure analysis on synthetic arrays, and the runner against FakeNVML.

FakeNVML's readings are functions of ``clock.monotonic()``; :class:`TickingClock` moves on every
read of it, so a poll "as fast as it can" runs in fake time with no sleeping.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from greenmaas.sources.nvml import NvmlSource
from greenmaas.sources.probe import (
    compare_energy,
    counter_updates,
    field_refresh,
    latency,
    poll,
    probe_gpu,
)
from greenmaas.testing import FakeClock, TickingClock
from greenmaas.testing.nvml import NVMLError, FakeGPU, FakeNVML, step_counter, stepped


def _probe(gpu: FakeGPU, seconds: float = 2.0, **kw):
    clock = TickingClock()
    nvml = FakeNVML([gpu], clock=clock)
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    return probe_gpu(nvml, handle, seconds=seconds, clock=clock, **kw)


def _jittered_counter(power_w: float, period_s: float, phase_s: float, jitter_s: float, *,
                      skip=(), seed: int = 7, n: int = 200):
    """A counter (mJ) drawing ``power_w`` whose k-th update lands at ``phase + k*period`` plus
    seeded normal jitter; updates whose index is in ``skip`` never happen."""
    rng = np.random.default_rng(seed)
    at = phase_s + period_s * np.arange(n) + rng.normal(0.0, jitter_s, n)
    at = np.maximum.accumulate(at)  # updates stay in order
    keep = np.array([k not in set(skip) for k in range(n)])
    at = at[keep]
    nominal = (phase_s + period_s * np.arange(n))[keep]

    def counter(t: float) -> int:
        k = int(np.searchsorted(at, t, side="right")) - 1
        return 0 if k < 0 else int(power_w * nominal[k] * 1000.0)

    return counter


def _reads(instants, t):
    """What a counter read at ``t`` returns when it steps by one at each of ``instants``."""
    return np.searchsorted(np.asarray(instants), t, side="right").astype(float)


# ---------------------------------------------------------------------- pure functions


class TestCounterUpdates:
    def test_a_regular_grid_sampled_every_millisecond(self):
        t = np.arange(0.0, 2.0, 0.001)
        values = _reads(0.0373 + 0.1 * np.arange(20), t)
        up = counter_updates(t, values)
        assert up.updates == 20
        assert up.period_s == pytest.approx(0.1, abs=1e-6)
        assert up.phase_s == pytest.approx(0.0375, abs=1e-6)  # the middle of each 1 ms bound
        assert up.missed == 0
        assert up.jitter_std_ms < 0.01 and up.jitter_max_ms < 0.01
        assert up.resolution_ms == pytest.approx(1.0)
        assert np.all(up.lo_s <= up.at_s) and np.all(up.at_s <= up.hi_s)

    def test_bounds_come_from_the_stamps_before_and_after(self):
        before = np.array([0.0, 1.0, 2.0, 3.0])
        after = before + 0.25
        up = counter_updates(values=[5, 5, 7, 7], t_before=before, t_after=after)
        assert up.lo_s.tolist() == [1.0]  # the last read that saw 5 began at 1.0
        assert up.hi_s.tolist() == [2.25]  # the first that saw 7 ended at 2.25
        assert up.at_s.tolist() == [1.625] and up.value.tolist() == [7]

    def test_missed_updates_are_counted_and_do_not_stretch_the_period(self):
        grid = 0.0102 + 0.1 * np.arange(30)
        happened = np.delete(grid, [4, 10, 11, 20])  # one single miss, one double, one single
        t = np.arange(0.0, 3.0, 0.0005)
        up = counter_updates(t, _reads(happened, t))
        assert up.missed == 4 and up.updates == 26
        assert up.period_s == pytest.approx(0.1, abs=1e-6)
        assert up.phase_s == pytest.approx(0.01025, abs=1e-6)

    def test_jitter_is_the_spread_around_the_fitted_grid(self):
        rng = np.random.default_rng(1)
        at = 5.0 + 0.1 * np.arange(500) + rng.normal(0, 0.002, 500)
        t = np.arange(4.9, 55.0, 0.0001)
        up = counter_updates(t, _reads(at, t))
        assert up.period_s == pytest.approx(0.1, abs=1e-5)
        assert min(up.phase_s, 0.1 - up.phase_s) < 0.001  # the grid is 5.0 + k * 0.1
        assert up.jitter_std_ms == pytest.approx(2.0, rel=0.15)
        assert up.jitter_max_ms > up.jitter_std_ms

    def test_a_stalled_read_is_left_out_of_the_fit(self):
        t = np.arange(0.0, 2.0, 0.001)
        t = t[(t < 0.35) | (t > 0.52)]  # no read for 170 ms: the updates at 0.4 and 0.5 merge
        up = counter_updates(t, _reads(0.0003 + 0.1 * np.arange(20), t))
        assert up.updates == 19 and up.fitted == 18
        assert up.missed == 1
        assert up.period_s == pytest.approx(0.1, abs=1e-6) and up.jitter_max_ms < 0.01

    def test_failed_reads_are_skipped(self):
        t = np.arange(10.0)
        v = np.array([0, 0, np.nan, 1, 1, 1, np.nan, np.nan, 2, 2])
        up = counter_updates(t, v)
        assert up.updates == 2 and up.reads == 7
        assert up.lo_s.tolist() == [1.0, 5.0] and up.hi_s.tolist() == [3.0, 8.0]

    def test_too_few_updates_give_nan_not_an_error(self):
        up = counter_updates([0.0, 1.0, 2.0], [3, 3, 4])
        assert up.updates == 1 and math.isnan(up.period_s) and up.missed == 0
        assert counter_updates([], []).updates == 0
        assert up.as_dict()["period_ms"] is None

    def test_arguments_are_checked(self):
        with pytest.raises(ValueError):
            counter_updates([0.0, 1.0], [1, 2, 3])
        with pytest.raises(ValueError):
            counter_updates([0.0, 1.0], [1, 2], t_before=[0.0, 1.0])
        with pytest.raises(ValueError):
            counter_updates(values=[1, 2], t_before=[0.0, 1.0], t_after=[-1.0, 1.0])


class TestFieldRefresh:
    def test_instant_changes_on_every_read(self):
        t = np.arange(0.0, 1.0, 0.001)
        f = field_refresh(t, 300 + np.sin(t * 50))
        assert f.repeat_share == 0.0 and not f.held
        assert f.refresh_period_s == pytest.approx(0.001)

    def test_held_field_repeats(self):
        t = np.arange(0.0, 1.0, 0.001)
        values = 300 + (np.floor(t / 0.1) % 2)  # a new value every 100 ms
        f = field_refresh(t, values)
        assert f.held and f.changes == 9
        assert f.repeat_share == pytest.approx(1 - 9 / 999)
        assert f.refresh_period_s == pytest.approx(0.1)

    def test_nan_reads_are_skipped(self):
        f = field_refresh([0, 1, 2, 3], [1.0, np.nan, 2.0, 2.0])
        assert f.reads == 3 and f.changes == 1


def test_latency_summary_in_microseconds():
    lat = latency(np.concatenate([np.full(99, 10e-6), [1e-3]]))
    assert lat.count == 100 and lat.median_us == pytest.approx(10.0)
    assert 10.0 < lat.p99_us <= 1000.0 and lat.max_us == pytest.approx(1000.0)
    assert latency([]).count == 0


class TestCompareEnergy:
    def test_constant_power_agrees_with_the_counter(self):
        t = np.arange(0.0, 3.0, 0.001)
        counter_mj = stepped(250.0, period_s=0.1, phase_s=0.02)
        e = np.array([counter_mj(x) for x in t], dtype=float)
        cmp = compare_energy(t, e, t, np.full(t.size, 250.0))
        assert cmp.counter_j == pytest.approx(250.0 * cmp.duration_s, rel=0.01)
        assert abs(cmp.rel_diff) < 0.01
        assert cmp.as_dict()["method"] == "trapezoid"

    def test_hold_and_trapezoid_differ_on_a_ramp(self):
        t_c = np.arange(0.0, 2.0, 0.01)
        e = np.floor(t_c / 0.1) * 1000.0  # 1 J (1000 mJ) per 100 ms: 10 W
        t_p = np.array([0.0, 1.0, 2.0])
        p = np.array([0.0, 10.0, 20.0])
        trap = compare_energy(t_c, e, t_p, p, t0_s=0.5, t1_s=1.5)
        hold = compare_energy(t_c, e, t_p, p, t0_s=0.5, t1_s=1.5, method="hold")
        assert trap.power_j == pytest.approx(10.0)  # ∫ 10 t dt over [0.5, 1.5]
        assert hold.power_j == pytest.approx(0.0 * 0.5 + 10.0 * 0.5)
        assert trap.counter_j == pytest.approx(10.0, abs=0.1)
        assert trap.rel_diff == pytest.approx(0.0, abs=0.01)

    def test_window_outside_the_updates_is_nan(self):
        t = np.arange(0.0, 1.0, 0.01)
        e = np.floor(t / 0.1)
        cmp = compare_energy(t, e, t, np.ones_like(t), t0_s=-1.0, t1_s=0.5)
        assert math.isnan(cmp.counter_j) and math.isnan(cmp.rel_diff)
        with pytest.raises(ValueError):
            compare_energy(t, e, t, e, method="simpson")


def test_poll_refuses_a_clock_that_does_not_move():
    with pytest.raises(ValueError, match="does not advance"):
        poll({"x": lambda: 1.0}, seconds=1.0, clock=FakeClock())


def test_poll_records_errors_and_goes_on():
    calls = iter(range(1000))

    def flaky():
        n = next(calls)
        if n % 3 == 0:
            raise NVMLError(3)
        return float(n)

    out = poll({"x": flaky}, seconds=0.01, clock=TickingClock(0.0001), errors=(NVMLError,))["x"]
    assert out.failed == math.ceil(out.values.size / 3)
    assert sum(out.errors.values()) == out.failed
    assert np.all(out.t_after_s > out.t_before_s)


# ---------------------------------------------------------------------- the runner on FakeNVML


class TestProbeGpu:
    def test_recovers_the_counter_period_and_phase(self):
        gpu = FakeGPU(energy_mj=step_counter(lambda t: 300_000.0 * t, period_s=0.1, phase_s=0.037))
        res = _probe(gpu)
        up = res.counter
        assert up.updates >= 18
        assert up.period_s == pytest.approx(0.1, abs=0.001)
        assert up.phase_s == pytest.approx(0.037, abs=0.001)
        assert up.missed == 0
        assert up.jitter_std_ms < 0.5  # only the read resolution (~1.5 ms bounds)
        assert res.support("counter") == "ok" and res.not_supported == {}

    def test_reports_jitter_of_the_update_instants(self):
        gpu = FakeGPU(energy_mj=_jittered_counter(300.0, 0.1, 0.037, 0.003))
        res = _probe(gpu, seconds=4.0)
        assert res.counter.period_s == pytest.approx(0.1, abs=0.001)
        assert 2.0 < res.counter.jitter_std_ms < 4.0
        assert res.counter.jitter_max_ms > res.counter.jitter_std_ms
        assert res.counter.missed == 0

    def test_counts_missed_updates(self):
        gpu = FakeGPU(energy_mj=_jittered_counter(300.0, 0.1, 0.037, 0.0, skip={3, 8, 9, 14}))
        res = _probe(gpu)
        assert res.counter.missed == 4
        assert res.counter.period_s == pytest.approx(0.1, abs=0.001)

    def test_tells_an_instant_field_from_a_held_one(self):
        gpu = FakeGPU(
            instant_power_mw=lambda t: 300_000 + int(t * 1e6) % 997,  # a new value every read
            power_mw=lambda t: 250_000 + 1000 * (math.floor(t / 0.1) % 2),  # held for 100 ms
        )
        res = _probe(gpu)
        inst, usage = res.fields["instant"], res.fields["usage"]
        assert not inst.held and inst.repeat_share < 0.05
        assert usage.held and usage.refresh_period_s == pytest.approx(0.1, abs=0.002)
        assert res.power_field == "instant"
        assert res.power_refresh_s == inst.refresh_period_s < 0.005
        assert set(res.latency) == {"counter", "instant", "usage"}
        assert res.latency["counter"].median_us == pytest.approx(740.0)  # two ticks: the stamp before and FakeNVML's read
        assert res.failed == {"counter": 0, "instant": 0, "usage": 0}

    def test_counter_against_integrated_power(self):
        res = _probe(FakeGPU(energy_mj=stepped(300.0, phase_s=0.01)), seconds=2.0, field_seconds=2.0)
        for name in ("instant", "usage"):
            assert abs(res.energy[name].rel_diff) < 0.01
            assert res.energy[name].counter_j == pytest.approx(300.0 * res.energy[name].duration_s, rel=0.01)

    def test_no_counter_is_not_supported_not_an_error(self):
        res = _probe(FakeGPU(energy_mj=None, instant_power_mw=None))
        assert res.counter is None
        assert res.support("counter").startswith("not supported")
        assert res.support("instant").startswith("not supported")
        assert res.power_field == "usage"
        assert "counter" not in res.latency and "energy" in res.as_dict()
        assert res.energy == {}

    def test_nothing_readable(self):
        res = _probe(FakeGPU(energy_mj=None, instant_power_mw=None, power_mw=None))
        assert res.power_field is None and math.isnan(res.power_refresh_s)
        assert set(res.not_supported) == {"counter", "instant", "usage"}
        assert res.as_dict()["counter"] is None

    def test_reads_that_fail_midway_are_counted(self):
        gpu = FakeGPU(fail=lambda t: 15 if 0.5 < t < 0.6 else None)  # GPU_IS_LOST for 100 ms
        res = _probe(gpu)
        assert res.failed["counter"] > 0 and res.counter.period_s == pytest.approx(0.1, abs=0.001)
        assert "counter" not in res.not_supported

    def test_load_runs_during_polling_and_is_stopped(self):
        seen = {}

        def load(stop: threading.Event):
            seen["started"] = True
            stop.wait(10)
            seen["stopped"] = stop.is_set()

        _probe(FakeGPU(), seconds=0.2, load=load)
        assert seen == {"started": True, "stopped": True}

    def test_a_failing_load_is_raised(self):
        def load(stop):
            raise RuntimeError("CUDA out of memory")

        with pytest.raises(RuntimeError, match="out of memory"):
            _probe(FakeGPU(), seconds=0.2, load=load)

    def test_through_nvml_source_handles(self):
        clock = TickingClock()
        nvml = FakeNVML([FakeGPU(uuid="GPU-a"), FakeGPU(uuid="GPU-b", energy_mj=None)], clock=clock)
        with NvmlSource(nvml=nvml, visible_devices=None) as src:
            assert src.nvml is nvml
            results = {d.id: probe_gpu(src.nvml, src.handle(d.id), seconds=0.5, clock=clock) for d in src.devices()}
        assert results["gpu:0"].counter.period_s == pytest.approx(0.1, abs=0.002)
        assert results["gpu:1"].counter is None
