"""The live meter and offline re-attribution give the same figures on the same reads.

The live meter attributes energy window by window as it settles, on whatever schedule its ticks
and result reads give; offline re-attribution sees the whole recorded trace at once. Every
span's energy must agree to 1e-9 relative, for any span set and any tick timing.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenmaas.attribution.offline import SpanTable, attribute_trace
from greenmaas.meter import Meter
from greenmaas.sources.nvml import NvmlSource
from greenmaas.sources.replay import TraceData
from greenmaas.testing import FakeClock
from greenmaas.testing.nvml import FakeNVML
from greenmaas.testing.sim import PowerTrace, SimulatedGPU


class Recorder:
    """Keeps every raw read the meter's sampler makes (the trace the ledger would hold)."""

    def __init__(self, meter: Meter) -> None:
        self.rows: dict[str, list[tuple]] = {}
        self._next = meter.sampler.on_read
        meter.sampler.on_read = self

    def __call__(self, device, t, reading, error, t_start):
        e = p = m = math.nan
        if reading is not None:
            e = math.nan if reading.energy_j is None else reading.energy_j
            p = math.nan if reading.power_w is None else reading.power_w
            m = math.nan if reading.max_energy_j is None else reading.max_energy_j
        self.rows.setdefault(device, []).append((t, e, p, m, error, t_start))
        if self._next is not None:
            self._next(device, t, reading, error, t_start)

    def trace(self, meter: Meter) -> dict[str, TraceData]:
        out = {}
        fields = {d.id: d for d in meter.sampler.devices}
        for dev, rows in self.rows.items():
            a = np.array([(r[0], r[1], r[2], r[3], r[5]) for r in rows], dtype=float)
            errors = {i: r[4] for i, r in enumerate(rows) if r[4] is not None}
            d = fields[dev]
            out[dev] = TraceData(a[:, 0], a[:, 1], a[:, 2], a[:, 3], errors or None, d.method, d.power_field, a[:, 4])
        return out


def span_table(spans, devices) -> SpanTable:
    """The spans as ``greenmaas export`` writes them: times, structure, weights."""
    ids = {id(s): f"s{i}" for i, s in enumerate(spans)}
    return SpanTable(
        [ids[id(s)] for s in spans],
        np.array([s.start for s in spans]),
        np.array([s.end for s in spans]),
        np.array([s.weight if s.weight is not None else 1.0 for s in spans]),
        [tuple(s.devices) if s.devices is not None else tuple(devices) for s in spans],
        [None] * len(spans),
        [None] * len(spans),
        [None] * len(spans),
        [ids.get(id(s.parent)) if s.parent is not None else None for s in spans],
        [s.kind for s in spans],
        [ids.get(id(s.link)) if s.link is not None else None for s in spans],
        [s.name for s in spans],
    )


def simulated(power: PowerTrace, *, power_field="instant", power_usage="average_1s", seed=0, phase=0.0371):
    clock = FakeClock()
    clock.advance(10.0)
    gpu = SimulatedGPU(
        power,
        counter_phase_s=phase,
        start_mj=10**9,
        power_field=power_field,
        power_usage=power_usage,
        power_noise=0.02 if power_field == "instant" else 0.0,
        seed=seed,
    )
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    return clock, gpu, src


def assert_live_equals_offline(meter, recorder, spans, policy="time"):
    devices = [d.id for d in meter.sampler.devices]
    res = attribute_trace(recorder.trace(meter), span_table(spans, devices), policy=policy)
    offline = res.span_energy_j()
    live = np.array([s.result.energy_j for s in spans])
    assert all(s.result.final for s in spans)
    np.testing.assert_allclose(live, offline, rtol=1e-9, atol=1e-9 * max(1.0, float(np.max(np.abs(live)))))
    unc_live = np.array([s.result.uncertainty_j for s in spans])
    np.testing.assert_allclose(unc_live, res.span_uncertainty_j(), rtol=1e-9, atol=1e-9)
    tot = meter.totals[devices[0]]
    assert tot["attributed_j"] + tot["idle_j"] == pytest.approx(tot["total_j"], rel=1e-12)
    assert res.total_j[devices[0]] == pytest.approx(tot["total_j"], rel=1e-12)


plans = st.lists(
    st.tuples(
        st.floats(0.0, 1.5),  # start offset (s)
        st.floats(0.002, 0.6),  # duration (s)
        st.sampled_from(["fwd", "step", "req"]),
        st.booleans(),  # nested under the previous span?
        st.floats(50.0, 500.0),  # draw (W)
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=plans,
    ticks=st.lists(st.floats(0.0003, 0.03), min_size=5, max_size=40),
    read_results=st.booleans(),
    power_field=st.sampled_from(["instant", None, "part_time"]),
    policy=st.sampled_from(["time", "weighted"]),
)
def test_live_equals_offline_for_any_spans_and_tick_timing(plan, ticks, read_results, power_field, policy):
    base = 10.3
    events = []
    bursts = []
    for i, (off, dur, name, nested, draw) in enumerate(plan):
        a = base + off
        b = a + dur
        events.append((a, b, name, nested and i > 0))
        bursts.append((a, b, draw))
    power = PowerTrace.from_bursts(70.0, bursts)
    clock, gpu, src = simulated(power, power_field=power_field, power_usage=None if power_field else "average_1s")
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, policy=policy)
    rec = Recorder(meter)
    meter.start()
    k = 0

    def until(t):
        nonlocal k
        while clock.monotonic() < t - 1e-12:
            clock.advance(min(ticks[k % len(ticks)], t - clock.monotonic()))
            k += 1
            meter.tick()

    # Open and close spans in time order; a nested span is opened in its predecessor's context.
    import contextvars

    timeline = sorted(
        [(a, 0, i) for i, (a, b, _, _) in enumerate(events)] + [(b, 1, i) for i, (a, b, _, _) in enumerate(events)]
    )
    spans = [None] * len(events)
    ctxs = [None] * len(events)
    for t, closing, i in timeline:
        until(t)
        a, b, name, nested = events[i]
        if not closing:
            parent_ctx = ctxs[i - 1] if nested and ctxs[i - 1] is not None and spans[i - 1].end is None else None
            ctx = parent_ctx.copy() if parent_ctx is not None else contextvars.copy_context()
            span = meter.measure(name, weight=1.0 + i)
            ctx.run(span.__enter__)
            spans[i], ctxs[i] = span, ctx
        else:
            ctxs[i].run(spans[i].__exit__, None, None, None)
            if read_results:
                spans[i].result  # noqa: B018 - reading mid-run must not change the figures
    until(clock.monotonic() + 0.4)
    meter.stop()
    assert_live_equals_offline(meter, rec, spans, policy)


def test_live_equals_offline_with_batches_and_requests():
    bursts = [(10.5, 10.62, 400.0), (10.7, 10.75, 300.0), (11.0, 11.4, 250.0)]
    clock, gpu, src = simulated(PowerTrace.from_bursts(80.0, bursts))
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False)
    rec = Recorder(meter)
    meter.start()
    rng = np.random.default_rng(5)

    def until(t):
        while clock.monotonic() < t - 1e-12:
            clock.advance(min(rng.uniform(0.0005, 0.004), t - clock.monotonic()))
            meter.tick()

    import contextvars

    until(10.48)
    reqs = [meter.request(f"r{i}", tokens_out=n) for i, n in enumerate((10, 30, 60))]
    ctxs = [contextvars.copy_context() for _ in reqs]
    for r, c in zip(reqs, ctxs):
        c.run(r.__enter__)
    until(10.5)
    with meter.batch(reqs) as b:
        until(10.62)
    until(10.7)
    with meter.batch(reqs[1:]) as b2:
        until(10.75)
    for r, c in zip(reqs, ctxs):
        c.run(r.__exit__, None, None, None)
    until(11.0)
    steps = []
    with meter.measure("epoch") as ep:
        for _ in range(10):
            with meter.measure("step") as st_:
                until(clock.monotonic() + 0.038)
            steps.append(st_)
            until(clock.monotonic() + 0.002)
    until(clock.monotonic() + 0.5)
    meter.stop()
    spans = [*reqs, b.span, *b.members, b2.span, *b2.members, ep, *steps]
    assert_live_equals_offline(meter, rec, spans)
    # Requests get their batches' shares by weight; the books close.
    assert sum(r.result.energy_j for r in reqs) == pytest.approx(b.result.energy_j + b2.result.energy_j, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    spans=st.lists(st.tuples(st.floats(10.0, 13.0), st.floats(0.0, 0.5)), min_size=0, max_size=15),
    power_field=st.sampled_from(["instant", None]),
)
def test_the_device_total_does_not_depend_on_where_spans_are(spans, power_field):
    """Per device, spans + idle = the counter's delta over the trace, whatever the spans."""
    rng = np.random.default_rng(0)
    t = 10.0 + np.cumsum(rng.uniform(0.007, 0.013, 350))
    power = PowerTrace.from_bursts(90.0, [(10.5, 11.2, 300.0), (12.0, 12.04, 500.0)])
    gpu = SimulatedGPU(power, counter_phase_s=0.021, start_mj=5 * 10**8)
    counter = np.array([gpu.counter_mj(x) / 1000.0 for x in t])
    watts = np.array([power.power_w(x) for x in t])
    trace = {"gpu:0": TraceData(t, counter, watts, None, None, "counter", power_field, None)}
    n = len(spans)
    table = SpanTable(
        [f"s{i}" for i in range(n)],
        np.array([a for a, _ in spans]),
        np.array([a + d for a, d in spans]),
        np.ones(n),
        [("gpu:0",)] * n,
        [None] * n, [None] * n, [None] * n, [None] * n, ["span"] * n, [None] * n, ["work"] * n,
    )
    res = attribute_trace(trace, table)
    assert res.total_j["gpu:0"] == pytest.approx(counter[-1] - counter[0], rel=1e-12)
    assert float(res.span_energy_j().sum()) + res.idle_j["gpu:0"] == pytest.approx(res.total_j["gpu:0"], rel=1e-9)
