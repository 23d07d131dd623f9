"""Per-request accuracy of the live meter on a simulated data-centre GPU, against the truth.

Writes ``reports/accuracy.md``. Regenerate with::

    make accuracy         # or: .venv/bin/python examples/bench_accuracy.py

Each case runs the path a user runs: a :class:`~greenmaas.meter.Meter` over an
:class:`~greenmaas.sources.nvml.NvmlSource` reading a simulated H200
(:class:`~greenmaas.testing.sim.SimulatedGPU`: a counter that publishes every 100 ms in whole mJ
at a random phase, and one of four power behaviours) on a fake clock stepped irregularly
(0.5–3 ms, the meter ticked after each step, as a real sampler thread jitters). The power the GPU
draws is planned in advance from the workload (idle plus the draws of what runs), so every
request's true energy is known exactly; it is computed here from the plan's breakpoints,
independently of greenmaas.

Methods compared per request: greenmaas live (``span.result``), greenmaas offline
(``attribute_trace`` on every raw read the meter made, with the same span structure), plain
counter interpolation (the raw counter reads joined linearly), and, where the GPU gives power,
power-only integration (trapezoid of the power reads). Baselines split each instant's energy by
the same rule as the truth (equal shares among the requests running; a batch by output tokens).

Options: ``--seconds`` (simulated seconds per case), ``--seeds``, ``--periods`` (ms),
``--behaviours``, ``--workloads``, ``--jobs`` (processes), ``--out``.
"""

from __future__ import annotations

import argparse
import contextvars
import math
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from greenmaas.attribution.offline import SpanTable, attribute_trace, timeline_of
from greenmaas.meter import Meter
from greenmaas.sources.nvml import NvmlSource
from greenmaas.sources.replay import TraceData
from greenmaas.testing import FakeClock
from greenmaas.testing.nvml import FakeNVML
from greenmaas.testing.sim import PowerTrace, SimulatedGPU

# ---------------------------------------------------------------------- settings

IDLE_W = 70.0
#: Solo requests: the extra draw (W) of each model's forward pass.
MODELS = {"small": 200.0, "medium": 350.0, "large": 500.0}
#: Overlapping requests share one GPU: smaller draws each, so four at once stay near an H200's
#: 700 W board power (70 + 4 x 160 = 710 W).
MODELS_CONCURRENT = {"small": 80.0, "medium": 120.0, "large": 160.0}
VARIATION = 0.05  # each request's draw: its model's x (1 + U(-v, v))
BATCH_BASE_W, BATCH_PER_REQ_W = 150.0, 40.0
DUR_S = (0.010, 0.600)  # request / forward-pass durations: log-uniform
GAP_S = (0.005, 0.200)  # gaps between requests / batches: uniform
OVERLAP_SLOTS = 4  # overlapping: this many independent request streams ...
OVERLAP_GAP_S = (0.005, 0.060)  # ... each pausing this long between requests
BATCH_SIZE = (2, 8)
TOKENS_OUT = (16, 512)
LEAD_S = 0.0005  # batched: requests open this long before their batch and close this long after
STEP_S = (0.0005, 0.003)  # fake-clock steps (uniform); the meter ticks after each
T0 = 10.0  # the clock starts here (the simulated counter counts from t = 0)
WORK_T0 = 10.5  # the workload starts here
TAIL_S = 1.0  # after the workload, before meter.stop()
COUNTER_PERIOD_S = 0.1
POWER_NOISE = 0.02  # instant field: relative gaussian noise per read

BEHAVIOURS = {
    # name: SimulatedGPU power_field, power_usage
    "none": (None, None),
    "instant": ("instant", None),
    "average_1s": (None, "average_1s"),
    "part_time": ("part_time", None),
}
WORKLOADS = ("solo", "solo_v0", "batched", "overlapping")
#: Counters less regular than the main tables' (SimulatedGPU settings): each update off its grid by
#: a gaussian jitter, some updates missed, some reads returning the value before the last update.
COUNTERS = {
    "regular": {},
    "jitter-0.5ms": {"counter_jitter_s": 0.0005, "missed_updates": 0.05, "stale_reads": 0.01},
    "jitter-2ms": {"counter_jitter_s": 0.002},
}
COUNTER_TEXT = {
    "regular": "regular",
    "jitter-0.5ms": "jitter 0.5 ms, 5% missed, 1% stale",
    "jitter-2ms": "jitter 2 ms",
}
IMPERFECT_PERIODS_MS = (10, 20)
PERIODS_MS = (10, 20, 50, 100)
TARGET_MEDIAN = 0.005
TARGET_P90 = 0.02
TARGET_LIVE_OFFLINE = 1e-9
TARGET_PERIODS_MS = (10, 20)

METHODS = ("live", "offline", "counter_interp", "power_trapz")
METHOD_LABEL = {
    "live": "greenmaas live",
    "offline": "greenmaas offline",
    "counter_interp": "counter interpolation",
    "power_trapz": "power trapezoid",
}

#: The header of the per-method table (the smoke test looks for it).
TABLE_HEADER = (
    "| workload | power behaviour | greenmaas sees | read ms | method | requests "
    "| median abs err | p90 abs err | sum err | ±J coverage |"
)
TARGET_HEADER = (
    "| workload | power behaviour | read ms | requests | median abs err | p90 abs err | sum err "
    "| ±J coverage | live vs offline | target |"
)


# ---------------------------------------------------------------------- workloads


@dataclass
class Plan:
    """A workload planned in advance: requests, batches (for ``batched``) and the power drawn."""

    workload: str
    seed: int
    # Requests: start, end (s), extra draw (W; 0 when the draw belongs to a batch), model,
    # output tokens, batch index (or -1).
    start: np.ndarray
    end: np.ndarray
    draw: np.ndarray
    model: list[str]
    tokens: np.ndarray
    batch: np.ndarray
    # Batches: start, end (s), draw (W).
    b_start: np.ndarray = field(default_factory=lambda: np.empty(0))
    b_end: np.ndarray = field(default_factory=lambda: np.empty(0))
    b_draw: np.ndarray = field(default_factory=lambda: np.empty(0))
    t_end: float = 0.0

    @property
    def bursts(self) -> list[tuple[float, float, float]]:
        """(start, end, extra W) of everything that draws power."""
        if self.b_start.size:
            return list(zip(self.b_start.tolist(), self.b_end.tolist(), self.b_draw.tolist()))
        return list(zip(self.start.tolist(), self.end.tolist(), self.draw.tolist()))


def _duration(rng: np.random.Generator) -> float:
    return float(math.exp(rng.uniform(math.log(DUR_S[0]), math.log(DUR_S[1]))))


def _ms(x: float) -> float:
    """Times on a 1 µs grid: plans print and compare cleanly."""
    return round(x, 6)


def plan_workload(workload: str, seed: int, seconds: float) -> Plan:
    # solo and solo_v0 share one plan (durations, gaps, models), differing only in the variation.
    stream = WORKLOADS.index("solo" if workload == "solo_v0" else workload)
    rng = np.random.default_rng([seed, stream, 7])
    names = list(MODELS)
    t_stop = WORK_T0 + seconds
    if workload in ("solo", "solo_v0"):
        v = VARIATION if workload == "solo" else 0.0
        rows = []
        t = WORK_T0
        while True:
            t = _ms(t + rng.uniform(*GAP_S))
            d = _duration(rng)
            if t + d > t_stop:
                break
            m = names[int(rng.integers(len(names)))]
            w = MODELS[m] * (1.0 + v * rng.uniform(-1.0, 1.0))
            rows.append((t, _ms(t + d), w, m))
            t = _ms(t + d)
        st, en, dr, md = zip(*rows)
        n = len(rows)
        return Plan(workload, seed, np.array(st), np.array(en), np.array(dr), list(md),
                    np.ones(n), np.full(n, -1), t_end=max(en))
    if workload == "overlapping":
        rows = []
        for _slot in range(OVERLAP_SLOTS):
            t = _ms(WORK_T0 + rng.uniform(0, 0.1))
            while True:
                d = _duration(rng)
                if t + d > t_stop:
                    break
                m = names[int(rng.integers(len(names)))]
                w = MODELS_CONCURRENT[m] * (1.0 + rng.uniform(-VARIATION, VARIATION))
                rows.append((t, _ms(t + d), w, m))
                t = _ms(t + d + rng.uniform(*OVERLAP_GAP_S))
        rows.sort()
        st, en, dr, md = zip(*rows)
        n = len(rows)
        return Plan(workload, seed, np.array(st), np.array(en), np.array(dr), list(md),
                    np.ones(n), np.full(n, -1), t_end=max(en))
    if workload == "batched":
        st, en, tok, bix = [], [], [], []
        bs, be, bd = [], [], []
        t = WORK_T0
        while True:
            t = _ms(t + rng.uniform(*GAP_S))
            d = _duration(rng)
            if t + d + LEAD_S > t_stop:
                break
            size = int(rng.integers(BATCH_SIZE[0], BATCH_SIZE[1] + 1))
            b = len(bs)
            bs.append(t)
            be.append(_ms(t + d))
            bd.append(BATCH_BASE_W + BATCH_PER_REQ_W * size)
            for _ in range(size):
                st.append(_ms(t - LEAD_S))
                en.append(_ms(t + d + LEAD_S))
                tok.append(int(rng.integers(TOKENS_OUT[0], TOKENS_OUT[1] + 1)))
                bix.append(b)
            t = _ms(t + d + LEAD_S)
        n = len(st)
        return Plan(workload, seed, np.array(st), np.array(en), np.zeros(n), ["batch"] * n,
                    np.array(tok, dtype=float), np.array(bix), np.array(bs), np.array(be), np.array(bd),
                    t_end=max(en))
    raise ValueError(f"unknown workload {workload!r}")


# ---------------------------------------------------------------------- truth and baselines


def exact_curve(plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The true cumulative energy (J) at every breakpoint of the plan's piecewise-constant power,
    from the plan itself (not from the simulator)."""
    bursts = plan.bursts
    a = np.array([b[0] for b in bursts])
    b = np.array([b[1] for b in bursts])
    w = np.array([b[2] for b in bursts])
    edges = np.unique(np.concatenate(([T0], a, b, [plan.t_end + TAIL_S])))
    delta = np.zeros(edges.size)
    np.add.at(delta, np.searchsorted(edges, a), w)
    np.add.at(delta, np.searchsorted(edges, b), -w)
    level = IDLE_W + np.cumsum(delta)  # power on [edges[i], edges[i+1])
    cum = np.concatenate(([0.0], np.cumsum(level[:-1] * np.diff(edges))))
    return edges, cum


def split_equally(curve_t: np.ndarray, curve_e: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Energy of each unit ``[starts[i], ends[i]]`` when every instant's energy (of the piecewise
    linear cumulative curve) is shared equally among the units active then."""
    bp = np.unique(np.concatenate((curve_t[(curve_t > starts.min()) & (curve_t < ends.max())], starts, ends)))
    e = np.interp(bp, curve_t, curve_e)
    seg = np.diff(e)
    si = np.searchsorted(bp, starts)
    ei = np.searchsorted(bp, ends)
    n = np.cumsum(np.bincount(si, minlength=bp.size) - np.bincount(ei, minlength=bp.size))[:-1]
    per = np.where(n > 0, seg / np.maximum(n, 1), 0.0)
    prefix = np.concatenate(([0.0], np.cumsum(per)))
    return prefix[ei] - prefix[si]


def per_request(plan: Plan, curve_t: np.ndarray, curve_e: np.ndarray) -> np.ndarray:
    """Each request's energy from a cumulative curve, by the rule greenmaas applies under the
    ``time`` policy: instants shared equally among the requests running (solo, overlapping);
    a batch's energy split among its members by output tokens."""
    if plan.b_start.size:
        eb = split_equally(curve_t, curve_e, plan.b_start, plan.b_end)
        tok_sum = np.bincount(plan.batch, weights=plan.tokens, minlength=plan.b_start.size)
        return eb[plan.batch] * plan.tokens / tok_sum[plan.batch]
    return split_equally(curve_t, curve_e, plan.start, plan.end)


def power_curve(t: np.ndarray, p: np.ndarray, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trapezoid integral of power reads (joined linearly, held past the ends), with nodes at
    ``extra`` too, so energy between any two nodes is exact for that piecewise-linear power."""
    nodes = np.unique(np.concatenate((t, extra)))
    pn = np.interp(nodes, t, p)
    cum = np.concatenate(([0.0], np.cumsum(np.diff(nodes) * (pn[1:] + pn[:-1]) * 0.5)))
    return nodes, cum


# ---------------------------------------------------------------------- one case


class Recorder:
    """Keeps every raw read the meter's sampler makes (what the ledger's reads table holds)."""

    def __init__(self, meter: Meter) -> None:
        self.rows: list[tuple[float, float, float, float, str | None]] = []
        self._next = meter.sampler.on_read
        meter.sampler.on_read = self

    def __call__(self, device, t, reading, error, t_start):
        e = p = math.nan
        if reading is not None:
            e = math.nan if reading.energy_j is None else float(reading.energy_j)
            p = math.nan if reading.power_w is None else float(reading.power_w)
        self.rows.append((float(t), float(t_start), e, p, error))
        if self._next is not None:
            self._next(device, t, reading, error, t_start)

    def trace(self, method: str, power_field: str | None) -> TraceData:
        a = np.array([r[:4] for r in self.rows], dtype=float)
        errors = {i: r[4] for i, r in enumerate(self.rows) if r[4] is not None}
        return TraceData(a[:, 0], a[:, 2], a[:, 3], None, errors or None, method, power_field, a[:, 1])


def span_table(spans: list, device: str) -> SpanTable:
    """The spans as the ledger records them: times, weights, kind, name, parent and link."""
    ids = {id(s): f"s{i}" for i, s in enumerate(spans)}
    n = len(spans)
    return SpanTable(
        [ids[id(s)] for s in spans],
        np.array([s.start for s in spans], dtype=float),
        np.array([s.end for s in spans], dtype=float),
        np.array([s.weight if s.weight is not None else 1.0 for s in spans], dtype=float),
        [tuple(s.devices) if s.devices is not None else (device,) for s in spans],
        [s.model for s in spans],
        [s.request_id for s in spans],
        [None] * n,
        [ids[id(s.parent)] if s.parent is not None else None for s in spans],
        [s.kind for s in spans],
        [ids[id(s.link)] if s.link is not None else None for s in spans],
        [s.name for s in spans],
    )


def run_case(workload: str, behaviour: str, period_ms: int, seed: int, seconds: float,
             counter: str = "regular") -> dict:
    """Run one case; return per-request estimates and truth, and what went wrong, if anything."""
    plan = plan_workload(workload, seed, seconds)
    out: dict = {"workload": workload, "behaviour": behaviour, "period_ms": period_ms, "seed": seed,
                 "counter": counter}
    wall = time.perf_counter()
    try:
        out.update(_run(plan, behaviour, period_ms / 1000.0, seed, COUNTERS[counter]))
    except Exception as exc:  # a crash is a result to report, not to hide
        import traceback

        out["crash"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
    out["wall_s"] = time.perf_counter() - wall
    return out


def _run(plan: Plan, behaviour: str, period_s: float, seed: int, counter: dict | None = None) -> dict:
    rng = np.random.default_rng([seed, 11])
    field_kind, usage_kind = BEHAVIOURS[behaviour]
    clock = FakeClock()
    clock.advance(T0)
    trace = PowerTrace.from_bursts(IDLE_W, plan.bursts)
    gpu = SimulatedGPU(
        trace,
        counter_period_s=COUNTER_PERIOD_S,
        counter_phase_s=float(rng.uniform(0.0, COUNTER_PERIOD_S)),
        start_mj=int(rng.integers(10**9, 10**12)),
        power_field=field_kind,
        power_usage=usage_kind,
        power_noise=POWER_NOISE if field_kind == "instant" else 0.0,
        seed=seed,
        **(counter or {}),
    )
    src = NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None)
    device = src.devices()[0]
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, period_s=period_s)
    rec = Recorder(meter)
    meter.start()
    steps = np.random.default_rng([seed, 13])

    def until(t: float) -> None:
        while clock.monotonic() < t:
            step = float(steps.uniform(*STEP_S))
            if clock.monotonic() + step >= t:
                clock.set(t)
            else:
                clock.advance(step)
            meter.tick()

    # Events in time order: (t, order, action, index). At one instant: requests close, batches
    # close, batches open, requests open (a request ending as another starts never overlaps it).
    n = plan.start.size
    events = [(float(plan.end[i]), 0, "close_req", i) for i in range(n)]
    events += [(float(plan.start[i]), 3, "open_req", i) for i in range(n)]
    for b in range(plan.b_start.size):
        events += [(float(plan.b_end[b]), 1, "close_batch", b), (float(plan.b_start[b]), 2, "open_batch", b)]
    events.sort()
    reqs: list = [None] * n
    ctxs: list = [None] * n
    batches: list = [None] * plan.b_start.size
    members: dict[int, list[int]] = {}
    for i in range(n):
        if plan.batch[i] >= 0:
            members.setdefault(int(plan.batch[i]), []).append(i)
    for t, _, action, i in events:
        until(t)
        if action == "open_req":
            if plan.batch[i] >= 0:
                span = meter.request(f"r{i}", tokens_out=int(plan.tokens[i]))
            else:
                span = meter.request(f"r{i}", model=plan.model[i], name=plan.model[i])
            ctx = contextvars.copy_context()  # each request in its own context, as in a server
            ctx.run(span.__enter__)
            reqs[i], ctxs[i] = span, ctx
        elif action == "close_req":
            ctxs[i].run(reqs[i].__exit__, None, None, None)
        elif action == "open_batch":
            bt = meter.batch([reqs[j] for j in members[i]])
            bt.__enter__()
            batches[i] = bt
        else:
            batches[i].__exit__(None, None, None)
    until(plan.t_end + TAIL_S)
    meter.stop()

    # Spans open and close exactly at the planned times.
    starts = np.array([s.start for s in reqs])
    ends = np.array([s.end for s in reqs])
    assert np.array_equal(starts, plan.start) and np.array_equal(ends, plan.end), "span times moved"

    results = [s.result for s in reqs]
    live = np.array([r.energy_j for r in results])
    unc = np.array([r.uncertainty_j if r.uncertainty_j is not None else math.nan for r in results])
    not_final = sum(1 for r in results if not r.final)

    # Offline: the same reads, the same spans (batches with their share members).
    spans = list(reqs)
    for bt in batches:
        spans += [bt.span, *bt.members]
    td = rec.trace(device.method, device.power_field)
    res = attribute_trace({device.id: td}, span_table(spans, device.id), policy=meter.policy)
    offline = res.span_energy_j()[:n]
    offline_u = res.span_uncertainty_j()[:n]

    # Truth, from the plan; checked against the simulator's own integral.
    ct, ce = exact_curve(plan)
    truth = per_request(plan, ct, ce)
    sim_total = float(trace.energy_j(plan.start.min(), plan.end.max()))
    plan_total = float(np.interp(plan.end.max(), ct, ce) - np.interp(plan.start.min(), ct, ce))
    assert abs(sim_total - plan_total) <= 1e-9 * sim_total, (sim_total, plan_total)

    # Baselines on the raw reads.
    t_read, e_read, p_read = td.t, td.energy_j, td.power_w
    ok = ~np.isnan(e_read)
    counter_interp = per_request(plan, t_read[ok], e_read[ok]) if ok.sum() >= 2 else np.full(n, math.nan)
    okp = ~np.isnan(p_read)
    if okp.sum() >= 2:
        extra = np.concatenate((plan.start, plan.end, plan.b_start, plan.b_end))
        pt, pe = power_curve(t_read[okp], p_read[okp], extra)
        power_trapz = per_request(plan, pt, pe)
    else:
        power_trapz = None

    # Diagnostics: how far greenmaas' counter grid places each update from the true instant.
    kt, _kv, kh = timeline_of(device.id, td).knots()
    true_u = gpu.update_times_s(float(kt[0]) - 1.0, float(kt[-1]) + 1.0)
    j = np.clip(np.searchsorted(true_u, kt[1:]), 1, true_u.size - 1)
    knot_err = np.minimum(np.abs(true_u[j] - kt[1:]), np.abs(true_u[j - 1] - kt[1:]))
    dur = (plan.b_end - plan.b_start)[plan.batch] if plan.b_start.size else plan.end - plan.start
    # A request is "crossed" when an update was placed on the other side of one of its energy
    # boundaries (its start or end; a batch member's: its pass's) from where it really happened.
    nearest = np.where(np.abs(true_u[j] - kt[1:]) < np.abs(true_u[j - 1] - kt[1:]), true_u[j], true_u[j - 1])
    lo_k, hi_k = np.minimum(kt[1:], nearest), np.maximum(kt[1:], nearest)
    order = np.argsort(lo_k)
    lo_k, hi_k = lo_k[order], hi_k[order]
    reach = np.maximum.accumulate(hi_k) if hi_k.size else hi_k

    def crosses(x: np.ndarray) -> np.ndarray:
        i = np.searchsorted(lo_k, x, side="left") - 1  # last misplacement starting before x
        return (i >= 0) & (reach[np.maximum(i, 0)] > x)

    if plan.b_start.size:
        edges_a, edges_b = plan.b_start[plan.batch], plan.b_end[plan.batch]
    else:
        edges_a, edges_b = plan.start, plan.end
    crossed = crosses(edges_a) | crosses(edges_b)

    return {
        "knot_err": knot_err,
        "knot_h": kh[1:],
        "crossed": crossed,
        "dur": dur,
        "greenmaas_sees": device.power_field,
        "method": device.method,
        "truth": truth,
        "live": live,
        "live_u": unc,
        "offline": offline,
        "offline_u": offline_u,
        "counter_interp": counter_interp,
        "power_trapz": power_trapz,
        "not_final": not_final,
        "reads": int(len(td)),
        "live_total_j": float(meter.totals[device.id]["total_j"]),
        "offline_total_j": float(res.total_j[device.id]),
    }


# ---------------------------------------------------------------------- metrics and report


@dataclass
class Row:
    workload: str
    behaviour: str
    sees: str
    period_ms: int
    method: str
    n: int
    median: float
    p90: float
    sum_err: float
    coverage: float | None
    live_offline: float | None = None


def metrics(truth: np.ndarray, est: np.ndarray, unc: np.ndarray | None) -> tuple[float, float, float, float | None]:
    err = est - truth
    rel = np.abs(err) / truth
    cov = float(np.mean(np.abs(err) <= unc)) if unc is not None else None
    return float(np.median(rel)), float(np.percentile(rel, 90)), float(err.sum() / truth.sum()), cov


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)
    return float(np.max(np.abs(a - b) / scale)) if a.size else 0.0


def summarise(cases: list[dict]) -> tuple[list[Row], list[dict]]:
    rows: list[Row] = []
    crashes = [c for c in cases if "crash" in c]
    groups: dict[tuple, list[dict]] = {}
    for c in cases:
        if "crash" not in c:
            groups.setdefault((c["workload"], c["behaviour"], c["period_ms"]), []).append(c)
    for (wl, bh, pm), cs in groups.items():
        truth = np.concatenate([c["truth"] for c in cs])
        sees = cs[0]["greenmaas_sees"] or "none"
        lo = max(rel_diff(c["live"], c["offline"]) for c in cs)
        for m in METHODS:
            if m == "power_trapz" and any(c["power_trapz"] is None for c in cs):
                continue
            est = np.concatenate([c[m] for c in cs])
            unc = None
            if m in ("live", "offline"):
                unc = np.concatenate([c["live_u" if m == "live" else "offline_u"] for c in cs])
            med, p90, se, cov = metrics(truth, est, unc)
            rows.append(Row(wl, bh, sees, pm, m, truth.size, med, p90, se, cov, lo if m == "live" else None))
    order = {w: i for i, w in enumerate(WORKLOADS)}
    border = {b: i for i, b in enumerate(BEHAVIOURS)}
    rows.sort(key=lambda r: (order[r.workload], border[r.behaviour], r.period_ms, METHODS.index(r.method)))
    return rows, crashes


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _spct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def verdict(r: Row) -> str:
    if r.period_ms not in TARGET_PERIODS_MS:
        return "—"
    ok = r.median <= TARGET_MEDIAN and r.p90 <= TARGET_P90 and (r.live_offline or 0.0) <= TARGET_LIVE_OFFLINE
    return "MET" if ok else "NOT MET"


WORKLOAD_TEXT = {
    "solo": f"solo, v = {VARIATION:g}",
    "solo_v0": "solo, v = 0",
    "batched": "batched",
    "overlapping": "overlapping",
}


def build_report(args, cases: list[dict], wall_s: float,
                 others: dict[str, list[dict]] | None = None) -> tuple[str, list[Row], list[dict]]:
    import scipy

    rows, crashes = summarise(cases)
    other_rows = {name: summarise(cs) for name, cs in (others or {}).items()}
    diag = diagnose(cases)
    live_rows = [r for r in rows if r.method == "live"]
    max_lo = max((r.live_offline for r in live_rows if r.live_offline is not None), default=float("nan"))
    ok_cases = [c for c in cases if "crash" not in c]
    max_lo_u = max((rel_diff(c["live_u"], c["offline_u"]) for c in ok_cases), default=float("nan"))
    max_total = max(
        (abs(c["live_total_j"] - c["offline_total_j"]) / c["live_total_j"] for c in ok_cases), default=float("nan")
    )
    not_final = sum(c.get("not_final", 0) for c in cases if "crash" not in c)
    reads = sum(c.get("reads", 0) for c in cases if "crash" not in c)
    sees = {}
    for c in cases:
        if "crash" not in c:
            sees[c["behaviour"]] = c["greenmaas_sees"]
    cmd = f".venv/bin/python examples/bench_accuracy.py {args.options}" if args.options else "make accuracy"
    L: list[str] = []
    L += [
        "# Per-request accuracy: greenmaas live and offline against the truth",
        "",
        f"Regenerate with `{cmd}` (runs `.venv/bin/python examples/bench_accuracy.py`"
        + (" with the options shown" if args.options else "")
        + f"; {wall_s / 60:.1f} min with {args.jobs} processes here).",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "## Headline",
        "",
    ]
    tgt = [r for r in live_rows if r.period_ms in TARGET_PERIODS_MS]
    met = sum(1 for r in tgt if verdict(r) == "MET")
    L += [
        f"- Targets (from the issue): at 10–20 ms reads, per-request median |error| ≤ "
        f"{_pct(TARGET_MEDIAN)} and p90 ≤ {_pct(TARGET_P90)} for every power behaviour, "
        f"including none; live = offline (≤ {TARGET_LIVE_OFFLINE:g} relative).",
        f"- Greenmaas live meets them in **{met} of {len(tgt)}** (workload, power behaviour, read "
        f"period) rows at 10–20 ms on a regular counter; the table below says which.",
        *_imperfect_headline(other_rows),
        f"- Live vs offline: largest relative difference over every request of every case "
        f"**{max_lo:.1e}** (target ≤ {TARGET_LIVE_OFFLINE:g})"
        + (" — met" if max_lo <= TARGET_LIVE_OFFLINE else " — **NOT met**, see below")
        + f"; their ± J differ by at most {max_lo_u:.1e}, the device totals by {max_total:.1e}.",
        f"- Cases run: {len(cases)} ({len(crashes)} crashed), {sum(r.n for r in rows if r.method == 'live'):,} "
        f"requests, {reads:,} reads; results not final after `meter.stop()`: {not_final}.",
        "",
    ]
    if crashes:
        L += ["## Crashes", ""]
        for c in crashes:
            L += [
                f"- {c['workload']} / {c['behaviour']} / {c['period_ms']} ms / seed {c['seed']}: `{c['crash']}`",
                "",
                "```",
                c["traceback"].rstrip(),
                "```",
                "",
            ]
    bad_lo = [r for r in live_rows if r.live_offline is not None and r.live_offline > TARGET_LIVE_OFFLINE]
    if bad_lo:
        L += ["## Live ≠ offline", ""]
        for r in bad_lo:
            L.append(f"- {r.workload} / {r.behaviour} / {r.period_ms} ms: max relative difference {r.live_offline:.2e}")
        L.append("")
    L += [
        "## Set-up",
        "",
        f"- Device: `SimulatedGPU` (an H200, Hopper) behind `FakeNVML` and `NvmlSource(visible_devices=None)`. "
        f"Energy counter publishes every {COUNTER_PERIOD_S * 1000:g} ms in whole mJ, at a random phase per seed "
        f"(uniform in one period), from a large random start value; no jitter, missed updates or stale reads.",
        "- Power behaviours (what the simulated GPU gives, and what greenmaas' `NvmlSource` says the power values "
        "are, `devices()[0].power_field`):",
        "",
        "  | behaviour | simulated | greenmaas sees |",
        "  |---|---|---|",
        f"  | none | no power at all (counter only) | {sees.get('none') or 'none'} |",
        f"  | instant | `NVML_FI_DEV_POWER_INSTANT` = true power at the read, × (1 + {POWER_NOISE:g}·N(0,1)) "
        f"| {sees.get('instant') or 'none'} |",
        f"  | average_1s | only `nvmlDeviceGetPowerUsage`: mean of the last 1 s | {sees.get('average_1s') or 'none'} |",
        f"  | part_time | instant field refreshed every 100 ms with the mean of the 25 ms before it "
        f"| {sees.get('part_time') or 'none'} |",
        "",
        f"- Meter: `Meter(sources=[src], ledger=False, clock=FakeClock, background=False, accounting=False, "
        f"period_s=<read period>)`, default `time` policy. The fake clock starts at {T0:g} s (the simulated counter "
        f"counts from 0 s) and is stepped by uniform {STEP_S[0] * 1000:g}–{STEP_S[1] * 1000:g} ms, the meter ticked after "
        "each step, so reads land at irregular times (a read is taken at the first tick at or after it is due, and the "
        "sampler dithers its period by ±30%). Spans open and close exactly at the planned instants (checked). After "
        f"the workload the clock runs {TAIL_S:g} s more, then `meter.stop()`; every request's `span.result` is read then.",
        f"- Workloads: {args.seconds:g} simulated seconds each, seeds {', '.join(map(str, args.seed_list))} "
        f"(the plan, counter phase and clock steps depend on the seed; the same plan runs under every behaviour and "
        f"read period). Idle {IDLE_W:g} W. Durations log-uniform {DUR_S[0] * 1000:g}–{DUR_S[1] * 1000:g} ms.",
        f"  - `solo`: one request at a time, gaps uniform {GAP_S[0] * 1000:g}–{GAP_S[1] * 1000:g} ms; model chosen at "
        f"random among {', '.join(f'{k} {v:g} W' for k, v in MODELS.items())}; each request draws its model's power × "
        f"(1 + U(−v, v)), v = {VARIATION:g} (`solo_v0`: v = 0, every request of a model draws alike). Span: "
        "`meter.request(rid, model=m, name=m)`.",
        f"  - `batched`: batches of {BATCH_SIZE[0]}–{BATCH_SIZE[1]} requests, one forward pass each, gaps "
        f"{GAP_S[0] * 1000:g}–{GAP_S[1] * 1000:g} ms; the pass draws {BATCH_BASE_W:g} W + {BATCH_PER_REQ_W:g} W × batch "
        f"size over idle. Each member's `meter.request(rid, tokens_out=k)` (k uniform {TOKENS_OUT[0]}–{TOKENS_OUT[1]}) opens "
        f"{LEAD_S * 1000:g} ms before the pass (each in its own context) and closes {LEAD_S * 1000:g} ms after it; the pass "
        "is `with meter.batch([request spans])`.",
        f"  - `overlapping`: {OVERLAP_SLOTS} independent request streams on one GPU (gaps "
        f"{OVERLAP_GAP_S[0] * 1000:g}–{OVERLAP_GAP_S[1] * 1000:g} ms), so 0–{OVERLAP_SLOTS} requests run at once "
        + (f"({args.concurrency})" if getattr(args, "concurrency", None) else "")
        + f"; each request draws its model's power × (1 + U(−{VARIATION:g}, {VARIATION:g})) with "
        f"{', '.join(f'{k} {v:g} W' for k, v in MODELS_CONCURRENT.items())} (smaller than solo so four at once stay "
        "near an H200's 700 W), and the GPU draws idle + the sum of the draws of the requests running. Each request is "
        "opened and closed on its own, in its own context.",
        "",
        "## How the truth is computed",
        "",
        "From the plan alone, not from greenmaas or the simulator: the power is piecewise constant (idle + the draws "
        "of what runs), so the cumulative energy at each breakpoint is an exact sum of watts × seconds; between "
        "breakpoints it is linear. (Its total is checked against the simulator's own `PowerTrace` integral to 1e-9.)",
        "",
        "- `solo`, `overlapping`: the rule of greenmaas' default `time` policy, true energy of request i = "
        "∫ P(t) / n(t) dt over its life, n(t) the number of requests running at t (solo: n = 1), computed exactly "
        "breakpoint to breakpoint.",
        "- `batched`: true energy of request i = true energy over its batch's forward pass × tokens_out_i / Σ tokens_out "
        "of the batch (the rule greenmaas applies: members split their batch by weight, output tokens by default; "
        "a request's own time outside its batch takes nothing).",
        "",
        "Methods:",
        "",
        "- **greenmaas live**: `span.result.energy_j` (all final); ±J coverage = share of requests with "
        "|error| ≤ `span.result.uncertainty_j`.",
        "- **greenmaas offline**: `attribute_trace` on every raw read the meter made (captured by wrapping "
        "`meter.sampler.on_read`, as the ledger's reads table holds them) and a `SpanTable` of the same spans — "
        "requests, and for batches the batch span and its `share` members with their parent and link.",
        "- **counter interpolation**: the raw counter reads (value, time the read returned) joined linearly; each "
        "instant's energy of that curve split by the same rule as the truth (equal shares among running requests; "
        "a batch's by tokens).",
        "- **power trapezoid** (behaviours with power only): the power reads joined linearly and integrated "
        "(trapezoid), stamped at the read, split by the same rule.",
        "",
        "Errors are relative to each request's truth: median and p90 of |error|; *sum err* = (Σ estimate − Σ truth) "
        "/ Σ truth over every request of the row.",
        "",
        "## Greenmaas live against the targets",
        "",
        TARGET_HEADER,
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in live_rows:
        cov = "—" if r.coverage is None else _pct(r.coverage)
        lo = "—" if r.live_offline is None else f"{r.live_offline:.1e}"
        L.append(
            f"| {WORKLOAD_TEXT[r.workload]} | {r.behaviour} | {r.period_ms} | {r.n} | {_pct(r.median)} | {_pct(r.p90)} "
            f"| {_spct(r.sum_err)} | {cov} | {lo} | {verdict(r)} |"
        )
    L += [
        "",
        "Target column: MET when median ≤ 0.5%, p90 ≤ 2% and live = offline to 1e-9, judged at 10 and 20 ms reads "
        "only (— at 50 and 100 ms, shown for how accuracy falls with slower reads).",
        "",
        "## Where the error remains, and why",
        "",
        misses_paragraph(rows, diag),
        "",
        *diagnostics_section(diag),
        "## Every method",
        "",
        TABLE_HEADER,
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cov = "—" if r.coverage is None else _pct(r.coverage)
        L.append(
            f"| {WORKLOAD_TEXT[r.workload]} | {r.behaviour} | {r.sees} | {r.period_ms} | {METHOD_LABEL[r.method]} "
            f"| {r.n} | {_pct(r.median)} | {_pct(r.p90)} | {_spct(r.sum_err)} | {cov} |"
        )
    more_crashes: list[dict] = []
    if other_rows:
        section, more_crashes = imperfect_section(other_rows)
        L += ["", *section]
    crashes = crashes + more_crashes
    L += [
        "",
        "## Limits of this evidence",
        "",
        "- A simulation: the power is piecewise constant and changes exactly where spans start and end, which is "
        "the shape greenmaas' model assumes. Work nobody marked, ramps, and CUDA's asynchrony (spans stamped at enqueue "
        "time) are not simulated here.",
        "- The main tables' counter is perfectly regular (no jitter, missed updates or stale reads; the section on "
        "less regular counters runs some); read times are jittered by the clock steps and the sampler's dither only. "
        "How regular a real GPU's counter is, is what `examples/probe_gpu.py` measures "
        "(`reports/gpu-validation.md`).",
        "- Truth follows greenmaas' own division rules (equal shares under `time`, tokens in a batch): this measures "
        "how well it *measures* under its rules, not whether those rules are the right ones.",
        "",
    ]
    return "\n".join(L), rows, crashes


def _imperfect_headline(others: dict[str, tuple[list[Row], list[dict]]]) -> list[str]:
    """A headline line per less regular counter (its :func:`summarise` rows): rows meeting the
    targets, worst p90, ±J coverage."""
    out = []
    for name, (rows, _) in others.items():
        live = [r for r in rows if r.method == "live" and r.period_ms in TARGET_PERIODS_MS]
        if not live:
            continue
        met = sum(1 for r in live if verdict(r) == "MET")
        out.append(
            f"- On a less regular counter ({COUNTER_TEXT[name]}, counter only): {met} of {len(live)} rows meet "
            f"them; p90 up to {_pct(max(r.p90 for r in live))}, the stated ± J covering "
            f"{_pct(min(r.coverage for r in live if r.coverage is not None))} of requests or more "
            "(section *A less regular counter*)."
        )
    return out


def imperfect_section(others: dict[str, tuple[list[Row], list[dict]]]) -> tuple[list[str], list[dict]]:
    """The section on counters less regular than the main tables' (their :func:`summarise`
    rows and crashes): greenmaas live, counter only."""
    L = [
        "## A less regular counter",
        "",
        "The same workloads and seeds, counter only (no power field), at 10 and 20 ms reads, on counters whose "
        "updates are off their grid by a gaussian jitter (sd as named), some of them missed (the next update "
        "publishes both), and some reads stale (they return the value before the last update). The targets are "
        "the main tables'; greenmaas live.",
        "",
        "| counter | workload | read ms | requests | median abs err | p90 abs err | sum err | ±J coverage "
        "| live vs offline | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    crashes: list[dict] = []
    for name, (rows, bad) in others.items():
        crashes += bad
        for r in rows:
            if r.method != "live":
                continue
            cov = "—" if r.coverage is None else _pct(r.coverage)
            lo = "—" if r.live_offline is None else f"{r.live_offline:.1e}"
            L.append(f"| {COUNTER_TEXT[name]} | {WORKLOAD_TEXT[r.workload]} | {r.period_ms} | {r.n} | {_pct(r.median)} "
                     f"| {_pct(r.p90)} | {_spct(r.sum_err)} | {cov} | {lo} | {verdict(r)} |")
    if crashes:
        L += ["", f"Cases that crashed here: {len(crashes)} (listed on stderr)."]
    return L, crashes


BUCKETS_MS = (0, 30, 100, 300, math.inf)


def _bucket_label(i: int) -> str:
    lo, hi = BUCKETS_MS[i], BUCKETS_MS[i + 1]
    return f"≥ {lo:g} ms" if math.isinf(hi) else f"{lo:g}–{hi:g} ms"


@dataclass
class Diagnostics:
    """What explains the errors: the counter grid's timing, and errors by request duration."""

    # period -> (median, p90 |knot error| s, median stated ± s, updates, share off by > 3 ms, share within ±)
    knots: dict[int, tuple[float, float, float, int, float, float]]
    # (workload, behaviour, period) -> per duration bucket: (n, median |err|, p90 |err|, mean signed err)
    by_duration: dict[tuple, list[tuple[int, float, float, float]]]
    averaged_is_counter_only: bool | None  # average_1s gave bit-identical live figures to none
    # (workload, period) -> counter-only live: (share crossed, n crossed, p90 crossed, n rest, p90 rest)
    crossed: dict[tuple, tuple[float, int, float, int, float]] = field(default_factory=dict)


def diagnose(cases: list[dict]) -> Diagnostics:
    ok = [c for c in cases if "crash" not in c]
    knots: dict[int, tuple[float, float, float, int, float, float]] = {}
    for pm in sorted({c["period_ms"] for c in ok}):
        # Read times do not depend on the power behaviour: one behaviour's cases suffice.
        cs = [c for c in ok if c["period_ms"] == pm]
        first = cs[0]["behaviour"]
        err = np.concatenate([c["knot_err"] for c in cs if c["behaviour"] == first])
        h = np.concatenate([c["knot_h"] for c in cs if c["behaviour"] == first])
        knots[pm] = (
            float(np.median(err)),
            float(np.percentile(err, 90)),
            float(np.median(h)),
            int(err.size),
            float(np.mean(err > 0.003)),
            float(np.mean(err <= h + 1e-9)),
        )
    groups: dict[tuple, list[dict]] = {}
    for c in ok:
        groups.setdefault((c["workload"], c["behaviour"], c["period_ms"]), []).append(c)
    by_duration: dict[tuple, list[tuple[int, float, float, float]]] = {}
    for key, cs in groups.items():
        truth = np.concatenate([c["truth"] for c in cs])
        rel = (np.concatenate([c["live"] for c in cs]) - truth) / truth
        dur = np.concatenate([c["dur"] for c in cs]) * 1000.0
        cells = []
        for i in range(len(BUCKETS_MS) - 1):
            m = (dur >= BUCKETS_MS[i]) & (dur < BUCKETS_MS[i + 1])
            if m.any():
                a = np.abs(rel[m])
                cells.append((int(m.sum()), float(np.median(a)), float(np.percentile(a, 90)), float(np.mean(rel[m]))))
            else:
                cells.append((0, math.nan, math.nan, math.nan))
        by_duration[key] = cells
    same = None
    for c in ok:
        if c["behaviour"] != "average_1s":
            continue
        twin = [d for d in ok if d["behaviour"] == "none" and (d["workload"], d["period_ms"], d["seed"])
                == (c["workload"], c["period_ms"], c["seed"])]
        if twin:
            same = (same is not False) and bool(np.array_equal(c["live"], twin[0]["live"]))
    crossed: dict[tuple, tuple[float, int, float, int, float]] = {}
    for (wl, bh, pm), cs in groups.items():
        if bh != "none":
            continue
        truth = np.concatenate([c["truth"] for c in cs])
        a = np.abs(np.concatenate([c["live"] for c in cs]) - truth) / truth
        x = np.concatenate([c["crossed"] for c in cs])

        def p90(v: np.ndarray) -> float:
            return float(np.percentile(v, 90)) if v.size else math.nan

        crossed[(wl, pm)] = (float(x.mean()), int(x.sum()), p90(a[x]), int((~x).sum()), p90(a[~x]))
    return Diagnostics(knots, by_duration, same, crossed)


def diagnostics_section(diag: Diagnostics) -> list[str]:
    L = [
        "## Diagnostics",
        "",
        "Counter grid: where greenmaas places each counter update (its knots, from `timeline_of(...).knots()` on the "
        "recorded reads) against the simulator's true update instants, and the ± it states for them.",
        "",
        "| read ms | updates | median abs timing error | p90 abs timing error | off by > 3 ms | median stated ± "
        "| within stated ± |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pm, (med, p90, h, n, off, within) in diag.knots.items():
        L.append(
            f"| {pm} | {n} | {med * 1000:.2f} ms | {p90 * 1000:.2f} ms | {_pct(off)} | {h * 1000:.2f} ms "
            f"| {_pct(within)} |"
        )
    if diag.crossed:
        L += [
            "",
            "Counter-only (none), greenmaas live: requests with an update placed on the other side of one of their "
            "boundaries (start or end; a batch member's: its pass's) from the true update, against the rest.",
            "",
            "| workload | read ms | crossed | p90 abs err, crossed | p90 abs err, the rest |",
            "|---|---:|---:|---:|---:|",
        ]
        order_w = {w: i for i, w in enumerate(WORKLOADS)}
        for (wl, pm), (share, nx, px, nr, pr) in sorted(diag.crossed.items(), key=lambda kv: (order_w[kv[0][0]], kv[0][1])):
            fx = "—" if nx == 0 else _pct(px)
            fr = "—" if nr == 0 else _pct(pr)
            L.append(f"| {WORKLOAD_TEXT[wl]} | {pm} | {nx} ({_pct(share)}) | {fx} | {fr} |")
    L += [
        "",
        "Greenmaas live by request duration (batched: the forward pass's duration), at 10–20 ms reads: median / p90 "
        "of |error|, and the mean signed error (a bias).",
        "",
        "| workload | power behaviour | read ms | " + " | ".join(_bucket_label(i) for i in range(len(BUCKETS_MS) - 1)) + " |",
        "|---|---|---:|" + "---|" * (len(BUCKETS_MS) - 1),
    ]
    order = {w: i for i, w in enumerate(WORKLOADS)}
    border = {b: i for i, b in enumerate(BEHAVIOURS)}
    for key in sorted(diag.by_duration, key=lambda k: (order[k[0]], border[k[1]], k[2])):
        wl, bh, pm = key
        if pm not in TARGET_PERIODS_MS:
            continue
        cells = []
        for n, med, p90, bias in diag.by_duration[key]:
            cells.append("—" if n == 0 else f"{_pct(med)} / {_pct(p90)} ({_spct(bias)}, n={n})")
        L.append(f"| {WORKLOAD_TEXT[wl]} | {bh} | {pm} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def misses_paragraph(rows: list[Row], diag: Diagnostics) -> str:
    """One paragraph on where greenmaas live misses the targets and why, from the numbers."""
    live_rows = [r for r in rows if r.method == "live"]
    tgt = [r for r in live_rows if r.period_ms in TARGET_PERIODS_MS]
    missed = [r for r in tgt if verdict(r) != "MET"]
    if not tgt:
        return "No row at 10–20 ms reads was run."
    R = {(r.workload, r.behaviour, r.period_ms): r for r in live_rows}
    out = [f"Greenmaas live misses the targets in {len(missed)} of {len(tgt)} rows at 10–20 ms reads."]
    for pm in TARGET_PERIODS_MS:
        at = [r for r in tgt if r.period_ms == pm]
        if not at:
            continue
        miss = [r for r in at if verdict(r) != "MET"]
        names = ", ".join(f"{WORKLOAD_TEXT[r.workload]}/{r.behaviour}" for r in miss)
        if len(miss) == len(at) and len(at) > 1:
            names = "all of them"
        out.append(
            f"At {pm} ms reads it meets them in {len(at) - len(miss)} of {len(at)} rows"
            + (f" (missed: {names}; p90 {min(r.p90 for r in miss) * 100:.1f}–{max(r.p90 for r in miss) * 100:.1f}%, "
               f"median {min(r.median for r in miss) * 100:.2f}–{max(r.median for r in miss) * 100:.2f}%)." if miss else ".")
        )
    # Why: the errors sit in short requests, and the counter grid's timing sets them.
    k10, k20 = diag.knots.get(10), diag.knots.get(20)
    s10, s20 = diag.by_duration.get(("solo", "none", 10)), diag.by_duration.get(("solo", "none", 20))
    if k10 and k20 and s10 and s20:
        ratio = k20[1] / k10[1] if k10[1] > 0 else math.inf
        out.append(
            "Counter-only, the errors sit in short requests (solo, none: p90 "
            f"{_pct(s10[0][2])} below 30 ms against {_pct(s10[-1][2])} from 300 ms at 10 ms reads; "
            f"{_pct(s20[0][2])} against {_pct(s20[-1][2])} at 20 ms). Inside a 100 ms counter update the counter gives "
            "only the update's total, and greenmaas places each update on the counter's grid from the reads that saw "
            "it change. An update placed δ away from where it happened, on the other side of a request's start or "
            "end, moves up to (power − idle) × δ between that request and its neighbour: about 4% of a 20 ms, 500 W "
            "request per millisecond. From 10 to 20 ms reads that placement's error goes from median "
            f"{k10[0] * 1000:.2f} to {k20[0] * 1000:.2f} ms and p90 {k10[1] * 1000:.2f} to {k20[1] * 1000:.2f} ms "
            f"(×{ratio:.1f} while the read interval doubles); updates off by more than 3 ms go from {_pct(k10[4])} "
            f"to {_pct(k20[4])}."
        )
        c10, c20 = diag.crossed.get(("solo", 10)), diag.crossed.get(("solo", 20))
        if c10 and c20 and c20[1] and c20[3]:
            worse = c20[2] > 1.5 * c20[4]
            rest_degrades = c20[4] > 1.5 * c10[4]
            if worse and rest_degrades:
                why = ("; misplaced updates are one cause, but the rest degrade too, so the shape fitted inside "
                       "updates (idle level and draws) is another.")
            elif worse:
                why = "; misplaced updates explain much of it."
            else:
                why = ("; the few requests with a misplaced update are not the problem, so what remains lies in how "
                       "the energy is shaped inside an update (the fitted idle level and draws), not in where the "
                       "updates are placed.")
            out.append(
                f"At 20 ms the {c20[1]} solo requests ({_pct(c20[0])}) with an update misplaced across one of their "
                f"boundaries have p90 {_pct(c20[2])} against {_pct(c20[4])} for the rest ({_pct(c10[4])} for the rest "
                f"at 10 ms){why}"
            )
        if s10[0][3] < -0.005 or s20[0][3] < -0.005:
            out.append(
                f"Counter-only, short requests also come out low on average (solo below 30 ms: {_spct(s10[0][3])} at "
                f"10 ms, {_spct(s20[0][3])} at 20 ms reads): a bias, their missing energy going to idle or their "
                "neighbours."
            )
    a, b = R.get(("solo", "none", 10)), R.get(("solo_v0", "none", 10))
    if a and b:
        little = abs(a.p90 - b.p90) < 0.005 and abs(a.median - b.median) < 0.001
        out.append(
            f"Per-request variation of the draw (v = {VARIATION:g}) {'costs little' if little else 'has a cost'} here: "
            f"solo counter-only at 10 ms has median {_pct(a.median)} / p90 {_pct(a.p90)} with it and "
            f"{_pct(b.median)} / {_pct(b.p90)} without; a counter cannot see it, but a request alone in an update "
            "with idle around it gets exactly what the counter saw beyond idle, so it matters only where requests "
            "share an update."
        )
    bn = [R.get(("batched", "none", pm)) for pm in TARGET_PERIODS_MS]
    bi = [R.get(("batched", "instant", pm)) for pm in TARGET_PERIODS_MS]
    if all(bn) and all(bi):
        helps = bi[0].p90 < bn[0].p90 and bi[1].p90 < bn[1].p90
        out.append(
            f"Batched forward passes draw more with more requests ({BATCH_BASE_W + BATCH_PER_REQ_W * BATCH_SIZE[0]:g}–"
            f"{BATCH_BASE_W + BATCH_PER_REQ_W * BATCH_SIZE[1]:g} W over idle); where short passes share an update the "
            "counter alone splits it by fitted draws"
            + (", while the instant field's samples see each pass's own power: p90 " if helps else
               ", and the instant field's samples (a few per pass, each with 2% noise) do not improve on that fit"
               + (" (they make it worse)" if bi[0].p90 > 1.2 * bn[0].p90 and bi[1].p90 > 1.2 * bn[1].p90 else "")
               + ": p90 ")
            + f"{_pct(bn[0].p90)} counter-only against {_pct(bi[0].p90)} with the instant field at 10 ms reads, "
            f"{_pct(bn[1].p90)} against {_pct(bi[1].p90)} at 20 ms."
        )
    if diag.averaged_is_counter_only:
        out.append(
            "The 1 s averaged power is labelled `average_1s` and not used as shape, so those figures are "
            "bit-identical to counter-only: it neither helps nor hurts."
        )
    pts = [R.get(("solo", "part_time", pm)) for pm in TARGET_PERIODS_MS]
    pns = [R.get(("solo", "none", pm)) for pm in TARGET_PERIODS_MS]
    short_pt = diag.by_duration.get(("solo", "part_time", 10))
    short_none = diag.by_duration.get(("solo", "none", 10))
    if all(pts) and all(pns) and short_pt and short_none:
        cov = _pct(pts[0].coverage) if pts[0].coverage is not None else "—"
        out.append(
            "NVML cannot tell a part-time field from an instantaneous one, so greenmaas labels it `instant` and uses "
            "its samples as shape only once the reads show that they follow the work (an instantaneous field changes "
            "on nearly every read and across every change of work; a part-time one repeats its value until its next "
            "refresh). Solo, it "
            f"ends up at p90 {_pct(pts[0].p90)} at 10 ms reads and {_pct(pts[1].p90)} at 20 ms (counter-only: "
            f"{_pct(pns[0].p90)} and {_pct(pns[1].p90)}), with requests below 30 ms at median {_pct(short_pt[0][1])} "
            f"against {_pct(short_none[0][1])} counter-only, sum {_spct(pts[0].sum_err)} and the stated ± covering "
            f"{cov} at 10 ms."
        )
    k100 = diag.knots.get(100)
    r100 = [r for r in live_rows if r.period_ms == 100 and r.coverage is not None]
    if k100 and r100:
        honest = k100[2] >= k100[0]
        out.append(
            "At 100 ms reads (the counter's own period) nearly every read sees a new value, so the counter is taken "
            "as one that moves on every read and each update is placed at the read that saw it, "
            + (f"with the read interval before it as its ± (median {k100[2] * 1000:.0f} ms; it is off by "
               f"{k100[0] * 1000:.1f} ms): the stated ± J covers "
               f"{min(r.coverage for r in r100) * 100:.0f}–{max(r.coverage for r in r100) * 100:.0f}% of requests, "
               "and is wide." if honest else
               f"with a stated ± of {k100[2] * 1000:.2f} ms (median) while it is off by {k100[0] * 1000:.1f} ms; the "
               f"stated ± J then covers only {min(r.coverage for r in r100) * 100:.0f}–"
               f"{max(r.coverage for r in r100) * 100:.0f}% of requests.")
        )
    return " ".join(out)


# ---------------------------------------------------------------------- main


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/accuracy.md")
    ap.add_argument("--seconds", type=float, default=60.0, help="simulated seconds per case (default 60)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per case (default 2)")
    ap.add_argument("--periods", default=",".join(map(str, PERIODS_MS)), help="read periods, ms, comma-separated")
    ap.add_argument("--behaviours", default=",".join(BEHAVIOURS), help="power behaviours, comma-separated")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="workloads, comma-separated")
    ap.add_argument("--counters", default=",".join(c for c in COUNTERS if c != "regular"),
                    help="less regular counters for their own section (names of COUNTERS, comma-separated; empty: none)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="processes (default min(2, CPUs))")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    args = ap.parse_args(argv)
    # The options that change the report, for the command that regenerates it.
    opts = []
    for name in ("out", "seconds", "seeds", "periods", "behaviours", "workloads"):
        value = getattr(args, name)
        if value != ap.get_default(name):
            opts.append(f"--{name} {value:g}" if isinstance(value, float) else f"--{name} {value}")
    args.options = " ".join(opts)
    args.seed_list = list(range(args.seeds))
    args.period_list = [int(p) for p in args.periods.split(",") if p]
    args.behaviour_list = [b for b in args.behaviours.split(",") if b]
    args.workload_list = [w for w in args.workloads.split(",") if w]
    args.counter_list = [c for c in args.counters.split(",") if c]
    for c in args.counter_list:
        if c not in COUNTERS:
            ap.error(f"unknown counter {c!r}: expected {', '.join(COUNTERS)}")
    for b in args.behaviour_list:
        if b not in BEHAVIOURS:
            ap.error(f"unknown behaviour {b!r}: expected {', '.join(BEHAVIOURS)}")
    for w in args.workload_list:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}: expected {', '.join(WORKLOADS)}")
    return args


def concurrency_share(seconds: float, seeds: list[int]) -> str:
    """Time-weighted share of the overlapping workload spent at each number of running requests."""
    acc = np.zeros(OVERLAP_SLOTS + 1)
    for s in seeds:
        p = plan_workload("overlapping", s, seconds)
        edges = np.unique(np.concatenate((p.start, p.end)))
        n = np.cumsum(np.bincount(np.searchsorted(edges, p.start), minlength=edges.size)
                      - np.bincount(np.searchsorted(edges, p.end), minlength=edges.size))[:-1]
        np.add.at(acc, n, np.diff(edges))
    acc /= acc.sum()
    return ", ".join(f"{k} running {100 * v:.0f}% of the time" for k, v in enumerate(acc))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if "overlapping" in args.workload_list:
        args.concurrency = concurrency_share(args.seconds, args.seed_list)
    jobs = [
        (w, b, p, s, args.seconds)
        for w in args.workload_list
        for b in args.behaviour_list
        for p in args.period_list
        for s in args.seed_list
    ]
    jobs += [
        (w, "none", p, s, args.seconds, c)
        for c in args.counter_list
        for w in args.workload_list
        for p in args.period_list
        if p in IMPERFECT_PERIODS_MS
        for s in args.seed_list
    ]
    # Long cases first, so the processes finish together.
    jobs.sort(key=lambda j: j[2])
    t0 = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            all_cases = list(ex.map(_run_job, jobs))
    else:
        all_cases = [_run_job(j) for j in jobs]
    wall = time.perf_counter() - t0
    cases = [c for c in all_cases if c["counter"] == "regular"]
    others = {name: [c for c in all_cases if c["counter"] == name] for name in args.counter_list}
    text, rows, crashes = build_report(args, cases, wall, others)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if not args.quiet:
        print(text)
    for c in crashes:
        print(f"CRASH {c['workload']}/{c['behaviour']}/{c['period_ms']} ms/seed {c['seed']}: {c['crash']}", file=sys.stderr)
    return 0


def _run_job(job: tuple) -> dict:
    return run_case(*job)


if __name__ == "__main__":
    sys.exit(main())
