"""Overhead benchmark: what measuring costs a training loop, and the meter's memory over time.

Writes ``reports/overhead.md``. Regenerate with::

    make bench            # or: .venv/bin/python examples/bench_overhead.py

1. Throughput. A small PyTorch MLP trained on the CPU, in rounds that alternate between plain
   (no greenmaas) and measured (a Meter with a ledger, ``track_module`` on the model,
   ``track_optimizer`` on the optimizer, an epoch span, and a device read every 10 ms — the NVML
   rate — through a stand-in source, since this machine has no GPU). Same seed, same work; the
   ratio of median steps per second is the overhead. Rounds alternate so machine noise hits both.
2. Memory. Python heap held by a meter (``tracemalloc``) after 10k, 100k and 200k requests
   with the background flush draining them, to show that finished spans do not accumulate.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

from greenmaas.clock import SystemClock
from greenmaas.integrations.torch import track_module, track_optimizer
from greenmaas.meter import Meter
from greenmaas.testing import FakeClock, StaticSource


def make_model(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(4096, 64)
    y = torch.randint(0, 10, (4096,))
    return model, opt, x, y


def train(model, opt, x, y, seconds: float) -> dict:
    """Training for ``seconds`` (batch 64): steps per second, and CPU microseconds per step
    spent by this thread and by all the process's other threads (the meter's)."""
    steps = 0
    t0 = time.perf_counter()
    c0, m0 = time.process_time(), time.thread_time()
    while time.perf_counter() - t0 < seconds:
        for i in range(0, x.shape[0], 64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            loss.backward()
            opt.step()
            steps += 1
    wall = time.perf_counter() - t0
    main = time.thread_time() - m0
    other = time.process_time() - c0 - main
    return {"steps_s": steps / wall, "main_us": main / steps * 1e6, "other_us": other / steps * 1e6}


def measured_round(seed: int, seconds: float, ledger) -> dict:
    model, opt, x, y = make_model(seed)
    clock = SystemClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300.0 * t, "power_w": lambda t: 300.0}})
    meter = Meter(sources=[src], ledger=ledger, clock=clock, accounting=False, period_s=0.01)
    with meter, track_module(model, name="mlp"), track_optimizer(opt, model="mlp"):
        with meter.measure(f"epoch-{seed}", model="mlp", phase="training"):
            return train(model, opt, x, y, seconds)


def throughput(rounds: int, seconds: float) -> dict:
    runs: dict[str, list[dict]] = {"plain": [], "measured, no ledger": [], "measured, SQLite ledger": []}
    with tempfile.TemporaryDirectory() as d:
        for r in range(rounds):
            model, opt, x, y = make_model(r)
            runs["plain"].append(train(model, opt, x, y, seconds))
            runs["measured, no ledger"].append(measured_round(r, seconds, False))
            runs["measured, SQLite ledger"].append(measured_round(r, seconds, str(Path(d, f"r{r}.db"))))
    med = {k: {f: statistics.median(r[f] for r in v) for f in v[0]} for k, v in runs.items()}
    return {"median": med, "runs": runs, "rounds": rounds, "seconds": seconds}


def memory() -> list[tuple[int, float]]:
    clock = FakeClock()
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300.0 * t, "power_w": lambda t: 300.0}})
    meter = Meter(sources=[src], ledger=False, clock=clock, background=False, accounting=False, period_s=0.01)
    meter.start()
    tracemalloc.start()
    out = []
    done = 0
    for target in (10_000, 100_000, 200_000):
        while done < target:
            with meter.request(str(done), tenant="acme", tokens_out=8):
                clock.advance(0.001)
            done += 1
            if done % 100 == 0:
                meter.tick()  # what the background threads do every 10 ms / 0.5 s
        meter.tick()
        current, _peak = tracemalloc.get_traced_memory()
        out.append((done, current / 1e6))
    tracemalloc.stop()
    meter.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/overhead.md")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tp = throughput(args.rounds, args.seconds)
    base = tp["median"]["plain"]
    mem = memory()
    lines = [
        "# Measurement overhead and memory",
        "",
        "Regenerate with `make bench` (runs `python examples/bench_overhead.py`).",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"1 torch thread; {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "## 1. Training-loop throughput, plain vs measured",
        "",
        f"{tp['rounds']} alternating rounds of {tp['seconds']:g} s each (a 64→256→10 MLP, batch 64, CPU).",
        "Measured = Meter with a SQLite ledger, one span per forward and per optimizer step, an",
        "epoch span, devices read every 10 ms.",
        "",
        "CPU time is the steadier figure on a shared machine: the training thread's own CPU per step,",
        "and the CPU of every other thread of the process (the meter's sampler, attribution and",
        "ledger writer) per step. Medians over the rounds.",
        "",
        "| | steps/s | training thread µs/step | other threads µs/step | added CPU µs/step | rounds (steps/s) |",
        "|---|---:|---:|---:|---:|---|",
        *[
            f"| {k} | {m['steps_s']:.0f} | {m['main_us']:.0f} | {m['other_us']:.0f} | "
            f"{m['main_us'] + m['other_us'] - base['main_us'] - base['other_us'] + 0.0:.0f} | "
            f"{', '.join(format(r['steps_s'], '.0f') for r in tp['runs'][k])} |"
            for k, m in tp["median"].items()
        ],
        "",
        f"A plain step here is ~{base['main_us']:.0f} µs of CPU with two spans (forward, optimizer step).",
        "The added cost per step is roughly fixed: two spans opened and closed by the hooks on the",
        "training thread, then attributed, recorded and (with a ledger) written to SQLite on the",
        "meter's background threads, which share the interpreter lock with the training loop. A",
        "10 ms GPU step would see well under 1%; tiny CPU steps like these see it in full.",
        "",
        "## 2. Meter memory as requests go by",
        "",
        "| requests so far | Python heap held (MB) |",
        "|---:|---:|",
        *[f"| {n:,} | {mb:.2f} |" for n, mb in mem],
        "",
        "Finished spans are handed to the ledger writer and dropped; timelines are trimmed behind",
        "the attribution watermark.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
