"""The live meter against the truth, on GPUs that behave like data-centre ones.

A simulated H200 (greenmaas.testing.sim) publishes its energy counter every 100 ms in whole mJ
and gives instantaneous, averaged or part-time power; the power it draws is planned, so every
span's true energy is known exactly. These tests run the path a user runs — a ``Meter`` with its
defaults, on a fake clock ticked irregularly (as real sampler threads are) or on real threads —
and compare what it records with that truth.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from greenmaas.meter import Meter
from greenmaas.sources.nvml import NvmlSource
from greenmaas.testing import FakeClock
from greenmaas.testing.nvml import FakeGPU, FakeNVML, stepped
from greenmaas.testing.sim import LivePower, PowerTrace, SimulatedGPU

IDLE_W = 80.0


def nvml_meter(gpu, clock, **kw) -> Meter:
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    return Meter(sources=[src], ledger=False, clock=clock, accounting=False, **kw)


# ---------------------------------------------------------------------- the reported failure


@pytest.mark.parametrize("tick_s", [0.005, 0.02])
@pytest.mark.parametrize("read_results", [False, True])
def test_a_counter_publishing_every_100_ms_loses_nothing(tick_s, read_results):
    # 300 W, counter published every 100 ms, read every 10 ms: 5 s of 20 ms spans.
    clock = FakeClock()
    clock.advance(1.0)  # the fake counter starts at 0 J at t = 0
    gpu = FakeGPU(energy_mj=stepped(300.0, period_s=0.1, phase_s=0.037))
    meter = nvml_meter(gpu, clock, background=False)
    meter.start()
    spans = []
    while clock.monotonic() < 6.0:
        with meter.measure("step") as s:
            for _ in range(round(0.02 / tick_s)):
                clock.advance(tick_s)
                meter.tick()
        spans.append(s)
        if read_results:
            s.result  # noqa: B018 - reading mid-run must not lose energy
    clock.advance(0.3)
    meter.tick()
    meter.stop()
    truth = 300.0 * (spans[-1].end - spans[0].start)
    got = sum(s.result.energy_j for s in spans)
    assert got == pytest.approx(truth, rel=0.01)
    per_span = np.array([s.result.energy_j / (300.0 * s.result.duration_s) for s in spans])
    assert np.median(np.abs(per_span - 1)) < 0.01
    tot = meter.totals["gpu:0"]
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"], rel=1e-12)
    # The device total is the counter's delta over the run, wherever the spans are.
    assert tot["total_j"] == pytest.approx(300.0 * (meter._attr._devices["gpu:0"].wm - 1.0 + 0.063), rel=0.02)
    assert all(s.result.final for s in spans)


# ---------------------------------------------------------------------- planned workloads


def plan_training(t0: float, epochs: int = 2):
    """Epochs of ~1 s of 20 ms steps (300 W over idle) with 2 ms between steps (the epoch's
    own work, 50 W)."""
    plan, bursts = [], []
    t = t0
    for _ in range(epochs):
        a = t
        steps = []
        t += 0.002
        while t < a + 1.0:
            steps.append((t, t + 0.02))
            bursts.append((t, t + 0.02, 300.0))
            t += 0.022
        bursts.append((a, t, 50.0))
        plan.append(("epoch", a, t, steps))
        t += 0.15
    return plan, bursts


def plan_requests(t0: float, n: int = 60, seed: int = 0):
    """20 ms requests drawing 250 W, one at a time, 5–50 ms apart."""
    rng = np.random.default_rng(seed)
    plan, bursts = [], []
    t = t0
    for _ in range(n):
        plan.append(("request", t, t + 0.02, []))
        bursts.append((t, t + 0.02, 250.0))
        t += 0.02 + rng.uniform(0.005, 0.05)
    return plan, bursts


def run_planned(plan, bursts, *, power_field, power_usage, read_results, seed=1):
    clock = FakeClock()
    clock.advance(5.0)
    gpu = SimulatedGPU(
        PowerTrace.from_bursts(IDLE_W, bursts),
        counter_phase_s=0.0371,
        start_mj=10**9,
        power_field=power_field,
        power_usage=power_usage,
        power_noise=0.02 if power_field == "instant" else 0.0,
        seed=seed,
    )
    meter = nvml_meter(gpu, clock, background=False)
    meter.start()
    rng = np.random.default_rng(seed)

    def until(t):
        while clock.monotonic() < t - 1e-12:
            clock.advance(min(rng.uniform(0.0005, 0.008), t - clock.monotonic()))
            meter.tick()

    out: dict[str, list] = {}
    for name, a, b, children in plan:
        until(a)
        with meter.measure(name) as span:
            for ca, cb in children:
                until(ca)
                with meter.measure("step") as step:
                    until(cb)
                out.setdefault("step", []).append(step)
                if read_results:
                    step.result  # noqa: B018
            until(b)
        out.setdefault(name, []).append(span)
        if read_results:
            span.result  # noqa: B018
    until(clock.monotonic() + 0.5)
    meter.stop()
    errors = {k: np.array([s.result.energy_j / gpu.true_energy_j(s.start, s.end) - 1 for s in v]) for k, v in out.items()}
    return meter, gpu, out, errors


BEHAVIOURS = [("instant", "average_1s"), (None, None), (None, "average_1s"), ("part_time", "average_1s")]


@pytest.mark.parametrize("power_field,power_usage", BEHAVIOURS)
@pytest.mark.parametrize("read_results", [False, True])
def test_training_on_every_power_behaviour(power_field, power_usage, read_results):
    plan, bursts = plan_training(5.3)
    meter, gpu, out, errors = run_planned(
        plan, bursts, power_field=power_field, power_usage=power_usage, read_results=read_results
    )
    tot = meter.totals["gpu:0"]
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"], rel=1e-12)
    assert np.all(np.abs(errors["epoch"]) < 0.01)  # 1 s epochs within 1% whatever the power field
    steps_j = sum(s.result.energy_j for s in out["step"])
    steps_true = sum(gpu.true_energy_j(s.start, s.end) for s in out["step"])
    if power_field == "instant":
        # Trusted instantaneous samples show what the 2 ms between steps draw.
        assert steps_j == pytest.approx(steps_true, rel=0.01)
        assert np.median(np.abs(errors["step"])) < 0.02
    else:
        # Counter only: steps and the epoch's own 2 ms run in nearly the same proportion in
        # every interval, so the first fits (a handful of intervals) cannot tell their draws
        # apart; later ones do (about 50 and 350 W). Over this 2 s run the first second's steps
        # carry that (measured: +0.9% and -4.5% with results read mid-run). The epochs, which
        # hold both, are right (above).
        assert steps_j == pytest.approx(steps_true, rel=0.06)


@pytest.mark.parametrize("power_field,power_usage", BEHAVIOURS)
def test_requests_on_every_power_behaviour(power_field, power_usage):
    plan, bursts = plan_requests(5.3)
    meter, gpu, out, errors = run_planned(plan, bursts, power_field=power_field, power_usage=power_usage, read_results=False)
    err = np.abs(errors["request"])
    req_j = sum(s.result.energy_j for s in out["request"])
    req_true = sum(gpu.true_energy_j(s.start, s.end) for s in out["request"])
    assert req_j == pytest.approx(req_true, rel=0.02)
    # With 2% read noise and one or two reads inside a 20 ms request, the instant field gives
    # each request its own power to ~1.5%; without it, the class's fitted draw.
    assert np.median(err) < (0.02 if power_field == "instant" else 0.03)
    # The stated ± J covers most requests.
    unc = np.array([s.result.uncertainty_j / s.result.energy_j for s in out["request"]])
    assert np.mean(err <= unc + 1e-12) > 0.6


# ---------------------------------------------------------------------- real threads


class ShiftedClock:
    """The system's monotonic clock, starting near 5 s (the simulator integrates from 0)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic() - 5.0

    def monotonic(self) -> float:
        return time.monotonic() - self._t0

    def to_utc(self, t: float) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=t - self.monotonic())

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def busy_until(clock, t):
    while clock.monotonic() < t:
        time.sleep(0.0005)


@pytest.mark.parametrize("read_results", [False, True])
def test_real_threads_with_default_settings(read_results):
    """Background sampler and flush threads, NVML read every 10 ms: a 1 s epoch of 20 ms steps,
    then 20 ms requests, on a simulated H200 with its instantaneous power field."""
    clock = ShiftedClock()
    power = LivePower(IDLE_W)
    gpu = SimulatedGPU(power, counter_phase_s=0.0371, start_mj=10**9, power_noise=0.02)
    meter = nvml_meter(gpu, clock)
    steps, requests = [], []

    def work(span_factory, draw_w, seconds, into):
        power.change(clock.monotonic(), draw_w)  # the device draws as the work starts
        with span_factory() as span:
            busy_until(clock, span.start + seconds)
        power.change(clock.monotonic(), -draw_w)
        into.append(span)
        if read_results:
            span.result  # noqa: B018

    with meter:
        busy_until(clock, clock.monotonic() + 0.4)
        power.change(clock.monotonic(), 50.0)
        with meter.measure("epoch") as epoch:
            while clock.monotonic() < epoch.start + 1.0:
                work(lambda: meter.measure("step"), 300.0, 0.02, steps)
                busy_until(clock, clock.monotonic() + 0.002)
        power.change(clock.monotonic(), -50.0)
        busy_until(clock, clock.monotonic() + 0.3)
        rng = np.random.default_rng(0)
        for i in range(40):
            work(lambda i=i: meter.request(str(i)), 250.0, 0.02, requests)
            busy_until(clock, clock.monotonic() + rng.uniform(0.005, 0.04))
    assert not meter.errors
    assert epoch.result.final and all(s.result.final for s in steps + requests)
    assert epoch.result.energy_j == pytest.approx(gpu.true_energy_j(epoch.start, epoch.end), rel=0.01)
    for group in (steps, requests):
        # Within 1% of the truth (the bar), steps as well: the epoch's own 2 ms between
        # them are rarely sampled, but the fit tells their draw from the steps' (measured here,
        # idle and under a CPU burner: at most 0.7% off over 12 runs).
        got = sum(s.result.energy_j for s in group)
        true = sum(gpu.true_energy_j(s.start, s.end) for s in group)
        assert got == pytest.approx(true, rel=0.01)
        err = np.abs([s.result.energy_j / gpu.true_energy_j(s.start, s.end) - 1 for s in group])
        assert np.median(err) < 0.02, f"median error {np.median(err):.2%} (p90 {np.percentile(err, 90):.2%})"
    tot = meter.totals["gpu:0"]
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"], rel=1e-12)


# ---------------------------------------------------------------------- one meter per process


def test_a_span_in_a_plain_thread_joins_the_active_meter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    clock.advance(1.0)
    meter = nvml_meter(FakeGPU(), clock, background=False)
    import greenmaas

    with meter:
        result = {}

        def worker():
            with greenmaas.measure("unbound") as s:  # no current span, no current meter here
                clock.advance(0.05)
            result["span"] = s

        th = threading.Thread(target=worker)
        th.start()
        th.join()
        clock.advance(0.3)
        meter.tick()
    span = result["span"]
    assert span._meter is meter and span.parent is None
    assert not (tmp_path / "greenmaas.db").exists()  # no second, implicit meter
    assert span.result.final and span.result.energy_j > 0
