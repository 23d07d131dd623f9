"""Attribution benchmark: accuracy on synthetic traces, span overhead, and scale.

Writes ``reports/attribution.md``. Regenerate with::

    make bench            # or: .venv/bin/python examples/bench_attribution.py

1. Accuracy. A synthetic GPU whose true power is known at 1 ms resolution: 60 W idle, and
   requests of 10–50 ms, one at a time, each drawing its own power (150–700 W), with random gaps.
   An NVML-like energy counter publishes the true cumulative energy every 100 ms (random phase),
   so a read returns the last published value; instantaneous power reads return the true power
   at the read 5% high with 3% noise. The sampler reads both every 20, 10 or 5 ms (±2 ms
   jitter). Each request's true energy is the integral of true power over its life. We compare
   greenmaas's curve (counter changes re-timed to the gap where they happened, energy between
   them shaped by the power reads, each read holding only up to the nearest span boundary) with
   the same without span boundaries, plain linear interpolation of the counter reads, and
   integrated power alone.
2. Overhead. Median cost of opening and closing a span (``with meter.measure(...)``) on this
   machine, side by side with an empty context manager in the same run.
3. Scale. Time to attribute 1,000,000 spans over a one-hour trace read every 100 ms
   (36,001 samples), both policies, and the conservation residual.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from greenmaas.attribution.engine import rates_for, share_energy
from greenmaas.meter import Meter
from greenmaas.sampling.timeline import Timeline
from greenmaas.sources.base import Reading
from greenmaas.testing import FakeClock, StaticSource


def synth(seed: int, seconds: float = 60.0, read_s: float = 0.01, update_s: float = 0.1, bias: float = 0.05):
    rng = np.random.default_rng(seed)
    dt = 0.001
    n = int(seconds / dt)
    power = np.full(n, 60.0)
    reqs = []
    t = 0.2
    while t < seconds - 0.5:
        d = rng.uniform(0.010, 0.050)
        p = rng.uniform(150.0, 700.0)
        a, b = int(round(t / dt)), int(round((t + d) / dt))
        power[a:b] = p
        reqs.append((a * dt, b * dt))
        t = b * dt + rng.uniform(0.005, 0.2)
    energy = np.concatenate(([0.0], np.cumsum(power * dt)))  # at k*dt
    grid = np.arange(n + 1) * dt
    phase = rng.uniform(0, update_s)
    reads_t = []
    x = rng.uniform(0, read_s)
    while x < seconds - 0.01:
        reads_t.append(x)
        x += read_s + rng.uniform(-0.002, 0.002)
    reads_t = np.asarray(reads_t)
    published_at = np.floor((reads_t - phase) / update_s) * update_s + phase
    published_at = np.clip(published_at, 0, None)
    counter = np.interp(published_at, grid, energy)
    # A power sensor with a calibration offset (published NVML studies report several percent)
    # and 3% read noise.
    inst = power[np.clip((reads_t / dt).astype(int), 0, n - 1)] * (1 + bias) * (1 + rng.normal(0, 0.03, reads_t.size))
    truth = np.array([np.interp(b, grid, energy) - np.interp(a, grid, energy) for a, b in reqs])
    return reqs, truth, reads_t, counter, inst


def exact_shares() -> list[tuple[str, str, float, float]]:
    """Known answers: a 100 W device for 10 s (1,000 J) read every 100 ms; A runs 0–10 s with
    weight 1, B 5–10 s with weight 3, C and D are one batch 2–4 s with weights 10 and 30."""
    import tempfile

    from greenmaas.attribution.offline import attribute_trace

    with tempfile.TemporaryDirectory() as d:
        trace = Path(d, "trace.csv")
        rows_csv = "".join(f"{i / 10:.1f},gpu:0,{i * 10.0},100\n" for i in range(101))
        trace.write_text("t,device,energy_j,power_w\n" + rows_csv)
        spans = Path(d, "spans.csv")
        spans.write_text("id,start,end,devices,weight\nA,0,10,gpu:0,1\nB,5,10,gpu:0,3\nC,2,4,gpu:0,10\nD,2,4,gpu:0,30\n")
        expected = {
            # time: every instant split equally among the spans running then
            "time": {"A": 200 + 200 / 3 + 100 + 500 / 2, "B": 500 / 2, "C": 200 / 3, "D": 200 / 3},
            # weighted: rates A 0.1/s, B 0.6/s, C 5/s, D 15/s
            "weighted": {
                "A": 200 + 200 * 0.1 / 20.1 + 100 + 500 * 0.1 / 0.7,
                "B": 500 * 0.6 / 0.7,
                "C": 200 * 5 / 20.1,
                "D": 200 * 15 / 20.1,
            },
        }
        rows = []
        for policy, exp in expected.items():
            res = attribute_trace(trace, spans, policy=policy)
            got = dict(zip(res.spans.ids, res.span_energy_j()))
            for sid in "ABCD":
                rows.append((policy, sid, exp[sid], float(got[sid])))
            rows.append((policy, "(idle)", 0.0, res.idle_j["gpu:0"]))
    return rows


def accuracy(seeds=range(5), read_s: float = 0.01) -> dict:
    errs = {
        "greenmaas: counter re-timed, power shape cut at span boundaries": [],
        "greenmaas without span boundaries": [],
        "counter, plain interpolation": [],
        "power only, integrated": [],
    }
    totals = {k: [0.0, 0.0] for k in errs}
    for seed in seeds:
        reqs, truth, rt, counter, inst = synth(seed, read_s=read_s)
        tl_g = Timeline("gpu:0")
        tl_p = Timeline("gpu:0", "power")
        for t, c, p in zip(rt, counter, inst):
            tl_g.append(float(t), Reading(energy_j=float(c), power_w=float(p)))
            tl_p.append(float(t), Reading(power_w=float(p)))
        ts = np.asarray(rt)
        starts = np.array([a for a, _ in reqs])
        ends = np.array([b for _, b in reqs])
        bps = np.concatenate([starts, ends])
        gt, ge = tl_g.curve(bps)
        est = {
            "greenmaas: counter re-timed, power shape cut at span boundaries": np.interp(ends, gt, ge)
            - np.interp(starts, gt, ge),
            "greenmaas without span boundaries": tl_g.energy_at(ends) - tl_g.energy_at(starts),
            "counter, plain interpolation": np.interp(ends, ts, counter) - np.interp(starts, ts, counter),
            "power only, integrated": tl_p.energy_at(ends) - tl_p.energy_at(starts),
        }
        for k, v in est.items():
            errs[k].extend(np.abs(v - truth) / truth)
            totals[k][0] += float(v.sum())
            totals[k][1] += float(truth.sum())
    out = {}
    for k, e in errs.items():
        e = np.asarray(e)
        out[k] = {
            "median": float(np.median(e)),
            "p90": float(np.percentile(e, 90)),
            "within_10pct": float(np.mean(e <= 0.10)),
            "sum_error": totals[k][0] / totals[k][1] - 1.0,
            "n": int(e.size),
        }
    return out


def overhead(n: int = 200_000) -> dict:
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300.0 * t}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False)
    meter.start()
    pc = time.perf_counter_ns

    def timed(make):
        samples = []
        for i in range(n):
            cm = make(i)
            t0 = pc()
            with cm:
                pass
            samples.append(pc() - t0)
            if i % 10_000 == 0:
                meter.tick()  # let the attributor drain, as the background flush would
        return samples

    null = contextlib.nullcontext()
    base = timed(lambda i: null)
    span = timed(lambda i: meter.measure("req", request_id=i))
    req = timed(lambda i: meter.request(str(i), tenant="acme", tokens_out=10))
    meter.stop()
    return {
        "nullcontext_us": statistics.median(base) / 1000,
        "measure_us": statistics.median(span) / 1000,
        "request_us": statistics.median(req) / 1000,
        "measure_p99_us": float(np.percentile(span, 99)) / 1000,
        "n": n,
    }


def live(n: int = 100_000) -> dict:
    """The live path: n closed requests finalised by one flush of the meter's attributor (the
    background thread's work: shares, records, results), on a device read every 10 ms."""
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300.0 * t, "power_w": lambda t: 300.0}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, period_s=0.01)
    meter.start()
    for i in range(n):
        with meter.request(str(i), tokens_out=5):
            clock.advance(0.0005)
        if i % 20 == 0:
            meter.sampler.tick()
    t0 = time.perf_counter()
    meter.tick()
    dt = time.perf_counter() - t0
    meter.stop()
    return {"n": n, "seconds": dt, "us_per_span": dt / n * 1e6}


def scale(n: int = 1_000_000) -> dict:
    rng = np.random.default_rng(1)
    T = 3600.0
    ct = np.linspace(0, T, 36001)
    ce = np.concatenate(([0.0], np.cumsum(rng.uniform(50, 700, 36000) * 0.1)))
    st = rng.uniform(0, T, n)
    en = np.minimum(st + rng.exponential(0.05, n), T)
    w = rng.integers(1, 500, n).astype(float)
    out = {}
    for policy in ("time", "weighted"):
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            r = rates_for(policy, w, en - st)
            sh = share_energy(ct, ce, st, en, r, np.arange(n), n, 0.0, T)
            best = min(best, time.perf_counter() - t0)
        out[policy] = {
            "seconds": best,
            "residual": abs(sh.by_owner.sum() + sh.idle_j - sh.total_j) / sh.total_j,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/attribution.md")
    ap.add_argument("--spans", type=int, default=1_000_000)
    args = ap.parse_args()
    exact = exact_shares()
    acc = {r: accuracy(read_s=r) for r in (0.02, 0.01, 0.005)}
    ov = overhead()
    sc = scale(args.spans)
    lv = live()
    lines = [
        "# Attribution: accuracy, overhead, scale",
        "",
        "Regenerate with `make bench` (runs `python examples/bench_attribution.py`).",
        f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}; {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "## 0. Exact shares on a known trace (`greenmaas attribute`, both policies)",
        "",
        "A 100 W device for 10 s (1,000 J), read every 100 ms. A runs 0–10 s (weight 1), B 5–10 s",
        "(weight 3), C and D are one batch at 2–4 s (weights 10 and 30). Expected values are worked",
        "by hand from the policy definitions (see `exact_shares` in the script).",
        "",
        "| policy | span | expected J | attributed J |",
        "|---|---|---:|---:|",
        *[f"| {p} | {sid} | {e:.6f} | {g:.6f} |" for p, sid, e, g in exact],
        "",
        "## 1. Per-request accuracy on synthetic traces",
        "",
        "Five seeded 60 s traces of an NVML-like GPU: 60 W idle, requests of 10–50 ms one at a time",
        "at 150–700 W each, a counter that publishes every 100 ms (random phase), instantaneous power",
        "reads 5% high with 3% noise, both read every P ± 2 ms. Truth is the integral of the 1 ms",
        "true power over each request. See the docstring of `examples/bench_attribution.py`.",
        "",
        "| read period | method | requests | median error | p90 error | within 10% | error of the sum |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r, res in acc.items():
        for k, v in res.items():
            lines.append(
                f"| {r * 1000:.0f} ms | {k} | {v['n']} | {v['median']:.1%} | {v['p90']:.1%} | "
                f"{v['within_10pct']:.0%} | {v['sum_error']:+.2%} |"
            )
    lines += [
        "",
        "## 2. Span open + close cost (median, this machine)",
        "",
        f"{ov['n']:,} spans each, measured side by side in one run with `time.perf_counter_ns`.",
        "",
        "| what | median µs |",
        "|---|---:|",
        f"| empty `contextlib.nullcontext()` (timer floor) | {ov['nullcontext_us']:.2f} |",
        f"| `with meter.measure(...)` | {ov['measure_us']:.2f} |",
        f"| `with meter.request(...)` | {ov['request_us']:.2f} |",
        "",
        f"p99 of `measure`: {ov['measure_p99_us']:.2f} µs. Target: ≤ 10 µs median.",
        "",
        "## 3. Attributing 1 M spans over a one-hour trace",
        "",
        f"{args.spans:,} spans (exponential durations, mean 50 ms) over 36,001 samples; best of 3.",
        "",
        "| policy | seconds | conservation residual |",
        "|---|---:|---:|",
    ]
    for p, v in sc.items():
        lines.append(f"| {p} | {v['seconds']:.2f} | {v['residual']:.1e} |")
    lines += [
        "",
        "Target: ≤ 5 s. This is the attribution engine alone (`share_energy`), as used by",
        "`greenmaas attribute` after parsing its CSV files and by the meter for every window.",
        "",
        f"Live path: {lv['n']:,} closed requests finalised in one flush of the meter (shares,",
        f"ledger records, results) took {lv['seconds']:.2f} s, {lv['us_per_span']:.0f} µs per span, on",
        "the meter's background thread, never the caller's.",
        "",
        "## Limits of this evidence",
        "",
        "- Section 1 is synthetic. On A100 and H100, NVML's power reading covers only ~25 ms of",
        "  every 100 ms (Yang et al., arXiv 2312.02741), so real power reads are noisier than the",
        "  3% modelled here; the counter still fixes the totals of every ~100 ms step. The check",
        "  against a real GPU is `examples/validate_gpu.py` (`reports/gpu-validation.md`).",
        "- The span-boundary shape assumes power changes where spans start and end. Work that",
        "  nobody marked (a background job on the same GPU) shows up as idle or is shared as if",
        "  it belonged to the spans running then.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
