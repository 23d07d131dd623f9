"""What measuring costs a continuous-batching engine, in-process, per forward pass and per span.

Writes ``reports/serving-cost.md``. Regenerate with::

    .venv/bin/python examples/bench_serving_cost.py

The server benchmark (``examples/bench_serving.py``) measures a real server's CPU per request
under load, where rounds of one server differ by 10% or more. This one takes the engine's side
alone, without HTTP, on a fake clock, so the figures are steady enough to follow from change to
change: a :class:`~greenmaas.serving.ServingMeter` over passes of 8 requests (a request admitted
when one finishes, 12 passes each, the first a prefill) of 2 ms each, a device whose energy
counter publishes every 100 ms read every 10 ms of fake time, the meter's flush every 20 ms.

* *engine*: the engine thread's part, timed around ``serving.prefill/decode``, ``iteration``
  and the request's ``finish`` (what delays the next pass);
* *flush*: the meter's background part, timed around ``meter.tick()`` (reading the device,
  attributing, records, pricing off), per span it finalised (a pass is one batch span and a
  share per request; each request one more), with no ledger and with a SQLite ledger (whose
  writer thread's work is not in this figure).

Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import contextvars
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

from greenmaas.meter import Meter
from greenmaas.serving import ServingMeter
from greenmaas.testing import FakeClock, StaticSource

ROOT = Path(__file__).resolve().parent.parent
BATCH = 8
TOKENS = 12


def run(passes: int, ledger) -> dict:
    clock = FakeClock()
    # An energy counter that publishes every 100 ms, as data-centre GPUs' do.
    src = StaticSource(clock, {"gpu:0": {"energy_j": lambda t: 300.0 * 0.1 * math.floor(t / 0.1)}})
    meter = Meter(sources=[src], ledger=ledger, clock=clock, background=False, accounting=False, period_s=0.01,
                  handle_signals=False)
    meter.start()
    serving = ServingMeter(meter, model="m")
    engine = flush = 0.0
    jobs: list[list] = []
    admitted = 0

    def admit():
        nonlocal admitted
        admitted += 1
        ctx = contextvars.Context()  # each request in a context of its own, as a server's tasks
        span = ctx.run(lambda: meter.request(f"r{admitted}", model="m").__enter__())
        return [serving.admit(span=span, prompt_tokens=20), ctx, span, 0]

    for p in range(passes):
        while len(jobs) < BATCH:
            jobs.append(admit())
        t0 = time.perf_counter()
        work = [serving.prefill(j[0]) if j[3] == 0 else serving.decode(j[0]) for j in jobs]
        it = serving.iteration(work)
        it.__enter__()
        clock.advance(0.002)
        it.__exit__(None, None, None)
        done = []
        for j in jobs:
            j[3] += 1
            if j[3] >= TOKENS:
                serving.finish(j[0], output_tokens=TOKENS)
                j[1].run(j[2].__exit__, None, None, None)
                done.append(j)
        engine += time.perf_counter() - t0
        for j in done:
            jobs.remove(j)
        if p % 10 == 9:
            t0 = time.perf_counter()
            meter.tick()
            flush += time.perf_counter() - t0
    meter.stop()
    spans = passes * (BATCH + 1) + admitted
    return {"passes": passes, "requests": admitted, "spans": spans, "engine_us_per_pass": engine / passes * 1e6,
            "engine_us_per_share": engine / (passes * BATCH) * 1e6, "flush_us_per_span": flush / spans * 1e6}


def best(passes: int, ledger_dir: Path | None, repeat: int) -> dict:
    run(500, False)  # warm up: first imports (scipy's fit) and caches are a server's start, not its passes
    results = []
    for i in range(repeat):
        ledger = str(ledger_dir / f"cost{i}.db") if ledger_dir is not None else False
        results.append(run(passes, ledger))
    return {k: min(r[k] for r in results) if k.endswith(("pass", "share", "span")) else results[0][k]
            for k in results[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=6000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "reports" / "serving-cost.md"))
    args = ap.parse_args(argv)
    plain = best(args.passes, None, args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        led = best(args.passes, Path(tmp), args.repeat)
    lines = [
        "# What measuring costs a batching engine, in-process",
        "",
        "Regenerate with `.venv/bin/python examples/bench_serving_cost.py` (about 20 s).",
        f"Machine: {platform.machine()}, Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}. Method: see the script's docstring; best of {args.repeat}.",
        "",
        f"{plain['passes']:,} passes of {BATCH} requests ({plain['requests']:,} requests of {TOKENS} passes each; "
        f"{plain['spans']:,} spans: a batch span and a share per request each pass, and the requests).",
        "",
        "| ledger | engine µs per pass | engine µs per share | flush µs per span |",
        "|---|---:|---:|---:|",
        f"| none | {plain['engine_us_per_pass']:.1f} | {plain['engine_us_per_share']:.2f} | "
        f"{plain['flush_us_per_span']:.1f} |",
        f"| SQLite | {led['engine_us_per_pass']:.1f} | {led['engine_us_per_share']:.2f} | "
        f"{led['flush_us_per_span']:.1f} |",
        "",
        f"Per request ({TOKENS} passes, {(plain['spans'] / plain['requests']):.1f} spans): about "
        f"{plain['engine_us_per_share'] * TOKENS / 1000:.2f} ms on the engine's thread and "
        f"{plain['flush_us_per_span'] * plain['spans'] / plain['requests'] / 1000:.2f} ms on the meter's "
        "(no ledger), besides the ledger writer's.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
