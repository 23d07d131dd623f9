"""Overhead benchmark: what measuring costs a training loop, span by span, against CodeCarbon.

Writes ``reports/overhead.md``. Regenerate with::

    make bench-overhead        # or: .venv/bin/python examples/bench_overhead.py

Everything is measured in one run, so the ratios compare like with like:

1. A small training step (Linear(256,512)-ReLU-Linear(512,10), batch 64, SGD, one torch thread):
   bare; greenmaas with ``track_module`` + ``track_optimizer`` and the defaults a user gets (SQLite
   ledger, carbon and cost priced at record time); one ``measure`` span per step; one span around
   the loop; CodeCarbon around the loop; CodeCarbon ``start_task``/``stop_task`` per step. Rounds
   interleave the variants (in a rotating order) so machine noise hits all of them; medians.
2. The same on a ~10 ms step (the batch is sized at run time to ~10 ms of CPU per step).
3. Caller-thread cost per span boundary: a timed microbenchmark, and instruction counts from
   ``valgrind --tool=callgrind`` (stable on a noisy machine) of N spans against 0 spans.
4. Background CPU per span (attribution, records or rollups, pricing, ledger writing), with
   ``rollup="auto"`` (the default) and ``rollup=False``.
5. A hot loop: 1,000,000 spans opened and closed as fast as possible, with the defaults, in a
   fresh process: peak memory, ``stop()`` time, and every span accounted for.
6. Meter memory as requests go by.

greenmaas measures a stand-in device (``greenmaas.testing.StaticSource``: a 300 W counter that
publishes every 100 ms, read every 10 ms, as NVML's) since this machine has no GPU; one extra row of table 1 uses what
``greenmaas.sources.detect`` finds here instead. Wall time on a shared machine is noisy, so every
table also gives CPU time: the training thread's own (``time.thread_time``) and the rest of the
process's (``time.process_time`` minus it: the meter's threads, or CodeCarbon's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import logging
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

# Carbon and cost are priced at record time with the defaults; a location keeps the meter from
# warning that it has none (and prices like a French deployment, as CodeCarbon is told below).
os.environ.setdefault("GREENMAAS_LOCATION", "FR")

from greenmaas.clock import SystemClock  # noqa: E402
from greenmaas.meter import Meter  # noqa: E402
from greenmaas.testing import FakeClock, StaticSource  # noqa: E402

HERE = Path(__file__).resolve()
#: The issue's targets: ratios to bare, µs, s.
STEP_TARGET, STEP_FLOOR, STEP10_TARGET = 1.01, 1.03, 1.005
BOUNDARY_TARGET_US, BACKGROUND_TARGET_US, STOP_TARGET_S = 1.0, 3.0, 2.0
STAND_IN_PERIOD_S = 0.01


# ---------------------------------------------------------------------- helpers


#: The stand-in counter publishes on a grid, as an NVIDIA energy counter does (every 100 ms).
STAND_IN_UPDATE_S = 0.1


def _default(name: str) -> Any:
    """A ``Meter`` argument's default, as a user gets it."""
    import inspect

    return inspect.signature(Meter).parameters[name].default


def stand_in(clock) -> StaticSource:
    """A 300 W device whose energy counter publishes every 100 ms (as NVML's does) and is read
    every 10 ms, standing in for a GPU read through NVML; reads cost what a Python call costs."""
    def energy_j(t: float) -> float:
        return 300.0 * math.floor(t / STAND_IN_UPDATE_S) * STAND_IN_UPDATE_S

    return StaticSource(clock, {"gpu:0": {"energy_j": energy_j, "power_w": lambda t: 300.0}})


def make_meter(ledger: str | bool, *, detected: bool = False, **kwargs: Any) -> Meter:
    """A meter as a user makes one (``Meter(ledger=path)``: accounting from the environment,
    rollups automatic), measuring the stand-in device, or what detection finds."""
    if detected:
        return Meter(ledger=ledger, **kwargs)
    clock = SystemClock()
    return Meter(ledger=ledger, sources=[stand_in(clock)], clock=clock, period_s=STAND_IN_PERIOD_S, **kwargs)


def clocks() -> tuple[float, float, float]:
    return time.perf_counter(), time.thread_time(), time.process_time()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KiB on Linux


def spread(values: list[float]) -> float:
    """(max - min) / median: how far apart the rounds were."""
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else 0.0


def status(value: float, bound: float) -> str:
    return "met" if value <= bound else "not met"


class Collect(logging.Handler):
    """Keeps the greenmaas logger's warnings, to show what the meter told the user."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def collecting():
    handler = Collect()
    logger = logging.getLogger("greenmaas")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def ledger_accounts(db: str, run_id: str) -> dict[str, Any]:
    """What a run's ledger holds: span rows of one span each, rollup rows and the spans they
    stand for (``attrs["rollup"]["count"]``), and the run's dropped counts."""
    con = sqlite3.connect(db)
    try:
        rows, rollup_rows, rolled = con.execute(
            "SELECT coalesce(sum(json_extract(attrs, '$.rollup') IS NULL), 0),"
            " coalesce(sum(json_extract(attrs, '$.rollup') IS NOT NULL), 0),"
            " coalesce(sum(json_extract(attrs, '$.rollup.count')), 0)"
            " FROM spans WHERE run_id = ?",
            (run_id,),
        ).fetchone()
        (config,) = con.execute("SELECT config FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    finally:
        con.close()
    config = json.loads(config) if isinstance(config, str) else (config or {})
    return {
        "rows": int(rows),
        "rollup_rows": int(rollup_rows),
        "rolled": int(rolled),
        "dropped_spans": int(config.get("dropped_spans", 0)),
        "dropped_records": int(config.get("dropped_records", 0)),
        "config_rollups": config.get("rollups"),
    }


# ---------------------------------------------------------------------- training variants


def make_data(batch: int, nbatches: int = 8):
    import torch

    g = torch.Generator().manual_seed(1234)
    return torch.randn(nbatches, batch, 256, generator=g), torch.randint(0, 10, (nbatches, batch), generator=g)


def make_model(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def steps_fn(model, opt, data, steps: int, around: Callable[[], Any] | None = None, before=None, after=None):
    """The training loop; ``around()`` gives a context per step, ``before``/``after`` are
    called around each step (CodeCarbon's task calls)."""
    import torch

    ce = torch.nn.functional.cross_entropy
    xs, ys = data
    nb = xs.shape[0]

    def one(i: int) -> None:
        opt.zero_grad()
        ce(model(xs[i % nb]), ys[i % nb]).backward()
        opt.step()

    if around is not None:

        def loop() -> None:
            for i in range(steps):
                with around():
                    one(i)

    elif before is not None:

        def loop() -> None:
            for i in range(steps):
                before()
                one(i)
                after()

    else:

        def loop() -> None:
            for i in range(steps):
                one(i)

    return loop


def v_bare(stack, model, opt, data, steps, tmp, info):
    return steps_fn(model, opt, data, steps)


def _meter(stack, tmp, info, **kwargs) -> Meter:
    meter = make_meter(str(Path(tmp, f"ledger-{time.monotonic_ns()}.db")), **kwargs)
    stack.callback(_meter_info, meter, info)  # registered first, so it runs after the meter stops
    stack.enter_context(meter)
    return meter


def _meter_info(meter: Meter, info: dict) -> None:
    info.setdefault("errors", []).extend(m for _, m in meter.errors)
    info["rolled"] = info.get("rolled", 0) + meter.rollups.rolled_spans
    info["classes"] = sorted(set(info.get("classes", [])) | set(meter.rollups.rolled_classes))
    info["dropped"] = info.get("dropped", 0) + meter.dropped_spans
    info["sources"] = sorted({f"{d.id} ({d.method})" for d in meter.sampler.devices})
    info["accounting"] = meter.accounting is not None


def v_tracked(stack, model, opt, data, steps, tmp, info, detected=False):
    from greenmaas.integrations.torch import track_module, track_optimizer

    meter = _meter(stack, tmp, info, detected=detected)
    stack.enter_context(track_module(model, name="mlp", meter=meter))
    stack.enter_context(track_optimizer(opt, model="mlp", meter=meter))
    return steps_fn(model, opt, data, steps)


def v_tracked_detected(stack, model, opt, data, steps, tmp, info):
    return v_tracked(stack, model, opt, data, steps, tmp, info, detected=True)


def v_span_per_step(stack, model, opt, data, steps, tmp, info):
    meter = _meter(stack, tmp, info)
    measure = meter.measure
    return steps_fn(model, opt, data, steps, around=lambda: measure("step", model="mlp", phase="training"))


def v_span_around(stack, model, opt, data, steps, tmp, info):
    meter = _meter(stack, tmp, info)
    inner = steps_fn(model, opt, data, steps)

    def loop() -> None:
        with meter.measure("train", model="mlp", phase="training"):
            inner()

    return loop


def _tracker():
    from codecarbon import OfflineEmissionsTracker

    return OfflineEmissionsTracker(country_iso_code="FRA", save_to_file=False, log_level="error")


def v_cc_around(stack, model, opt, data, steps, tmp, info):
    tracker = _tracker()
    tracker.start()
    stack.callback(tracker.stop)
    return steps_fn(model, opt, data, steps)


def v_cc_tasks(stack, model, opt, data, steps, tmp, info):
    tracker = _tracker()
    # The first task initialises CodeCarbon's hardware tracking (about 2 s): not a step's cost.
    tracker.start_task("warm-up")
    tracker.stop_task("warm-up")
    stack.callback(tracker.stop)
    return steps_fn(model, opt, data, steps, before=tracker.start_task, after=tracker.stop_task)


TRACKED = "greenmaas, `track_module` + `track_optimizer` + SQLite ledger"
AROUND = "greenmaas around the whole loop"
CC_TASKS = "CodeCarbon `start_task`/`stop_task` per step"
STEP_VARIANTS: dict[str, Callable] = {
    "bare": v_bare,
    TRACKED: v_tracked,
    "greenmaas, one `measure` span per step": v_span_per_step,
    AROUND: v_span_around,
    "CodeCarbon `OfflineEmissionsTracker` around the whole loop": v_cc_around,
    CC_TASKS: v_cc_tasks,
    "greenmaas, `track_module` + `track_optimizer` + SQLite ledger, detected sources": v_tracked_detected,
}


def run_variant(fn, data, steps: int, tmp: str, info: dict) -> dict[str, float]:
    """One round of one variant: wall and CPU per step for the loop, and what starting and
    stopping cost (wall and CPU, ms)."""
    model, opt = make_model()
    w0, _t0, p0 = clocks()
    with contextlib.ExitStack() as stack:
        loop = fn(stack, model, opt, data, steps, tmp, info)
        w1, t1, p1 = clocks()
        loop()
        w2, t2, p2 = clocks()
    w3, _t3, p3 = clocks()
    per = 1e6 / steps
    return {
        "other_ms_s": ((p2 - p1) - (t2 - t1)) / (w2 - w1) * 1e3,
        "wall_us": (w2 - w1) * per,
        "main_us": (t2 - t1) * per,
        "other_us": ((p2 - p1) - (t2 - t1)) * per,
        "edges_ms": ((w1 - w0) + (w3 - w2)) * 1e3,
        "edges_cpu_ms": ((p1 - p0) + (p3 - p2)) * 1e3,
    }


def interleaved(variants: dict[str, Callable], data, steps: int, rounds: int, tmp: str, log=print) -> dict:
    names = list(variants)
    info: dict[str, dict] = {k: {} for k in names}
    for k in names:  # warm-up: imports, first-use costs, CodeCarbon's hardware probe
        run_variant(variants[k], data, 20, tmp, {})
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            runs[k].append(run_variant(variants[k], data, steps, tmp, info[k]))
        log(f"  round {r + 1}/{rounds}: " + ", ".join(f"{runs[k][-1]['wall_us']:.0f}" for k in names) + " µs/step")
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in runs.items()}
    return {"median": med, "runs": runs, "info": info, "steps": steps, "rounds": rounds}


def table_rows(tp: dict) -> list[str]:
    base = tp["median"]["bare"]
    base_cpu = base["main_us"] + base["other_us"]
    out = [
        "| variant | wall µs/step | vs bare | rounds' spread | training thread CPU µs/step "
        "| other threads CPU µs/step (ms per s) | CPU vs bare | start + stop: wall ms / CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, m in tp["median"].items():
        cpu = m["main_us"] + m["other_us"]
        out.append(
            f"| {k} | {m['wall_us']:,.0f} | {m['wall_us'] / base['wall_us']:.3f} "
            f"| {spread([r['wall_us'] for r in tp['runs'][k]]):.0%} | {m['main_us']:,.0f} "
            f"| {m['other_us']:,.1f} ({m['other_ms_s']:.1f}) "
            f"| {cpu / base_cpu:.3f} | {m['edges_ms']:,.0f} / {m['edges_cpu_ms']:,.0f} |"
        )
    return out


def ratio(tp: dict, k: str) -> tuple[float, float]:
    """(wall ratio, CPU ratio) of variant ``k`` against bare, from the medians."""
    m, b = tp["median"][k], tp["median"]["bare"]
    return m["wall_us"] / b["wall_us"], (m["main_us"] + m["other_us"]) / (b["main_us"] + b["other_us"])


def size_ten_ms_batch(target_s: float = 0.010) -> int:
    """A batch giving ~``target_s`` of training-thread CPU per step (multiple of 64)."""
    model, opt = make_model()
    data = make_data(512, 2)
    loop = steps_fn(model, opt, data, 10)
    loop()
    t = time.thread_time()
    loop()
    per = (time.thread_time() - t) / 10
    return max(64, int(round(512 * target_s / per / 64)) * 64)


# ---------------------------------------------------------------------- spans: caller and background


def caller_cost(n: int, repeats: int, tmp: str) -> dict:
    """Training-thread CPU of ``with meter.measure("x"): pass`` against an empty loop, on a
    running meter with the defaults; also the span object's construction alone."""
    res: dict[str, list[float]] = {"empty": [], "span": [], "ctor": [], "wall_span": [], "wall_empty": []}
    dropped = 0
    for r in range(repeats):
        meter = make_meter(str(Path(tmp, f"caller-{r}.db"))).start()
        measure = meter.measure
        w0, t0, _ = clocks()
        for _ in range(n):
            pass
        w1, t1, _ = clocks()
        for _ in range(n):
            with measure("x"):
                pass
        w2, t2, _ = clocks()
        for _ in range(n):
            measure("x")
        t3 = time.thread_time()
        meter.stop()
        dropped += meter.dropped_spans
        res["empty"].append((t1 - t0) / n * 1e6)
        res["span"].append((t2 - t1) / n * 1e6)
        res["ctor"].append((t3 - t2) / n * 1e6)
        res["wall_empty"].append((w1 - w0) / n * 1e6)
        res["wall_span"].append((w2 - w1) / n * 1e6)
    med = {k: statistics.median(v) for k, v in res.items()}
    med["boundary"] = (med["span"] - med["empty"]) / 2
    med["boundary_min"] = (min(res["span"]) - min(res["empty"])) / 2
    med["wall_boundary"] = (med["wall_span"] - med["wall_empty"]) / 2
    med["dropped"] = dropped
    med["n"], med["repeats"] = n, repeats
    return med


def callgrind_child(n: int) -> None:
    """Run under callgrind: a started meter (no background threads, no ledger, so every
    instruction counted is the caller's), 2,000 warm-up spans, then ``n`` spans; exit at once,
    without stopping the meter (its final attribution is not the caller's cost)."""
    clock = SystemClock()
    meter = Meter(ledger=False, background=False, handle_signals=False, sources=[stand_in(clock)], clock=clock)
    meter.start()
    measure = meter.measure
    for _ in range(2_000):  # the interpreter specialises the path first
        with measure("x"):
            pass
    for _ in range(n):
        with measure("x"):
            pass
    sys.stdout.flush()
    os._exit(0)


def callgrind(n: int, tmp: str) -> dict:
    """Instructions of ``n`` spans against 0 spans, from callgrind; the 0-span run twice, since
    the whole process's count still moves a little from run to run."""
    if shutil.which("valgrind") is None:
        return {"error": "valgrind not installed (apt-get install -y valgrind)"}
    out: dict[str, Any] = {"n": n, "commands": []}
    env = dict(os.environ, PYTHONHASHSEED="0")
    for label, count in (("zero", 0), ("spans", n), ("zero2", 0)):
        f = Path(tmp, f"callgrind.{label}.out")
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={f}",
            sys.executable, str(HERE), "--child", "callgrind", "--n", str(count),
        ]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        command = (
            f"PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file={f.name} "
            f".venv/bin/python examples/bench_overhead.py --child callgrind --n {count}"
        )
        if command not in out["commands"]:
            out["commands"].append(command)
        out[label] = _callgrind_total(f)
    zero = (out["zero"] + out["zero2"]) / 2
    out["per_span"] = (out["spans"] - zero) / n
    out["noise_per_span"] = abs(out["zero"] - out["zero2"]) / 2 / n
    out["per_boundary"] = out["per_span"] / 2
    out["version"] = subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()
    return out


def _callgrind_total(path: Path) -> int:
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"{path}: no instruction total")


def background_cpu(n: int, rollup: Any, repeats: int, tmp: str) -> dict:
    """CPU per span spent off the caller's loop (the meter's threads, and the final flush in
    ``stop()``), less what the same meter spends idle for as long: attribution, records or
    rollups, pricing and ledger writing."""
    per: list[float] = []
    drops = {"dropped_spans": 0, "dropped_records": 0, "rows": 0, "rolled": 0}
    for r in range(repeats):
        db = str(Path(tmp, f"bg-{rollup}-{r}.db"))
        meter = make_meter(db, rollup=rollup).start()
        measure = meter.measure
        w0, t0, p0 = clocks()
        for _ in range(n):
            with measure("x"):
                pass
        w1, t1, _ = clocks()
        meter.stop()
        p2 = time.process_time()
        busy = (p2 - p0) - (t1 - t0)
        acc = ledger_accounts(db, meter.run_id)
        for k in drops:
            drops[k] += acc[k]
        idle_meter = make_meter(str(Path(tmp, f"bg-idle-{rollup}-{r}.db")), rollup=rollup).start()
        _, ti0, pi0 = clocks()
        time.sleep(w1 - w0)
        ti1 = time.thread_time()
        idle_meter.stop()
        idle = (time.process_time() - pi0) - (ti1 - ti0)
        per.append((busy - idle) / n * 1e6)
    return {"per_span_us": statistics.median(per), "runs": per, "n": n, **drops}


def idle_cost(seconds: float, tmp: str) -> dict[str, float]:
    """CPU a started meter spends with no spans at all (reading devices, writing the reads and
    samples, the heartbeat, attributing idle windows), in ms per second of wall time."""
    out = {}
    for label, detected in (("stand-in", False), ("detected sources", True)):
        meter = make_meter(str(Path(tmp, f"idle-{detected}.db")), detected=detected).start()
        time.sleep(0.5)
        w0, t0, p0 = clocks()
        time.sleep(seconds)
        w1, t1, p1 = clocks()
        meter.stop()
        periods = meter.run.config.get("periods_s", {}) if meter.run is not None else {}
        devices = ", ".join(
            f"{d.id} ({d.method}, read every {periods.get(d.id, float('nan')) * 1e3:g} ms)"
            for d in meter.sampler.devices
        )
        out[f"{label}: {devices}"] = ((p1 - p0) - (t1 - t0)) / (w1 - w0) * 1e3
    return out


# ---------------------------------------------------------------------- hot loop (own process)


def hotloop_child(n: int) -> None:
    """1 M spans as fast as possible on a meter with the defaults; prints JSON. A thread reads
    the resident set every 20 ms to tell where its peak falls (loop or ``stop()``)."""
    import threading

    phase = ["start"]
    peaks: dict[str, float] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peaks[phase[0]] = max(peaks.get(phase[0], 0.0), rss_mb())

    with tempfile.TemporaryDirectory() as tmp, collecting() as warnings:
        db = str(Path(tmp, "hot.db"))
        rss0 = rss_mb()
        meter = make_meter(db).start()
        rss1 = rss_mb()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        measure = meter.measure
        phase[0] = "loop"
        t0 = time.perf_counter()
        for _ in range(n):
            with measure("x"):
                pass
        t1 = time.perf_counter()
        peak_loop = peak_rss_mb()
        phase[0] = "stop"
        meter.stop()
        t2 = time.perf_counter()
        done.set()
        watcher.join()
        peak = peak_rss_mb()
        acc = ledger_accounts(db, meter.run_id)
        print(
            json.dumps(
                {
                    "n": n,
                    "loop_s": t1 - t0,
                    "stop_s": t2 - t1,
                    "rss_before_mb": rss0,
                    "rss_started_mb": rss1,
                    "rss_loop_peak_mb": peaks.get("loop", rss1),
                    "rss_stop_peak_mb": peaks.get("stop", rss1),
                    "peak_rss_mb": peak,
                    "peak_rss_loop_mb": peak_loop,
                    "rss_after_mb": rss_mb(),
                    "meter_rolled": meter.rollups.rolled_spans,
                    "meter_dropped": meter.dropped_spans,
                    "errors": [m for _, m in meter.errors],
                    "warnings": warnings,
                    **acc,
                }
            )
        )


def hotloop(n: int) -> dict:
    proc = subprocess.run(
        [sys.executable, str(HERE), "--child", "hotloop", "--n", str(n)], capture_output=True, text=True, check=True
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["accounted"] = out["rows"] + out["rolled"] + out["dropped_spans"]
    return out


# ---------------------------------------------------------------------- memory as requests go by


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


# ---------------------------------------------------------------------- report


def machine() -> str:
    import torch

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        import codecarbon

        cc = codecarbon.__version__
    except Exception:  # reported, not needed
        cc = "not installed"
    return (
        f"{cpu}, {os.cpu_count()} CPUs (shared), {platform.machine()}, Python {platform.python_version()}, "
        f"torch {torch.__version__} (1 thread), CodeCarbon {cc}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def report(r: dict) -> list[str]:
    t1, t2, cc, cg, bg, hot, mem = (r[k] for k in ("steps", "ten_ms", "caller", "callgrind", "background", "hot", "mem"))
    tr_wall, tr_cpu = ratio(t1, TRACKED)
    tr10_wall, tr10_cpu = ratio(t2, TRACKED)
    bg_auto, bg_off = bg["auto"], bg[False]
    info = t1["info"][TRACKED]
    idle_ms_s = next(iter(r["idle"].values()))
    bare, tracked = t1["median"]["bare"], t1["median"][TRACKED]
    bare_spread = spread([x["wall_us"] for x in t1["runs"]["bare"]])
    reading = [
        "**Reading the figures.** This machine is shared (load average above): the bare loop's training thread "
        f"was on a CPU {bare['main_us'] / bare['wall_us']:.0%} of the wall time, and its rounds' wall times spread "
        f"by {bare_spread:.0%}. The CPU columns are steadier and are the figures to compare. Of the tracked "
        f"variant's extra {tracked['main_us'] + tracked['other_us'] - bare['main_us'] - bare['other_us']:,.0f} µs "
        f"of CPU per step, {tracked['other_us']:,.0f} µs is on the meter's threads; what a meter costs with no "
        f"spans at all (section 4: {idle_ms_s:.1f} ms of CPU per second with the 10 ms stand-in, "
        f"{idle_ms_s / 1e3:.1%} of a core) comes to {idle_ms_s * tracked['wall_us'] / 1e3:,.0f} µs of that per "
        f"{tracked['wall_us']:,.0f} µs step by itself. The other "
        f"{tracked['main_us'] - bare['main_us']:,.0f} µs is the training thread's own CPU rising, against "
        f"{4 * cc['boundary']:.1f} µs for its two spans' opens and closes (section 3): the hooks' own work and "
        "running beside the meter's threads, which this benchmark does not separate.",
    ]
    detected_info = t1["info"][list(STEP_VARIANTS)[-1]]
    warned = not hot["dropped_spans"] or any("dropped" in w for w in hot["warnings"])
    hot_ok = hot["accounted"] == hot["n"] and warned
    lost_note = ""
    if not hot_ok:
        lost_note = (
            f" ({hot['n'] - hot['accounted']:,} not in the ledger; the writer counted "
            f"{hot['dropped_records']:,} dropped record(s))"
        )
    cg_line = (
        f"{cg['per_boundary']:,.0f} instructions per boundary" if "error" not in cg else cg["error"]
    )
    lines = [
        "# Measurement overhead",
        "",
        "Regenerate with `make bench-overhead` (runs `.venv/bin/python examples/bench_overhead.py`; "
        f"about {r['elapsed_s'] / 60:.0f} minutes here).",
        f"Machine: {machine()}. Load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.1f}' for x in r['load_before'])}, at the end {', '.join(f'{x:.1f}' for x in r['load_after'])}: "
        "other work shares these CPUs, which stretches wall times (CPU times much less). No GPU: greenmaas measures a stand-in device (`greenmaas.testing.StaticSource`, "
        "a 300 W energy counter that publishes every 100 ms, read every 10 ms — as NVML's); the row marked *detected sources* measures "
        f"what `greenmaas.sources.detect` finds here instead ({', '.join(detected_info.get('sources', [])) or '?'}). "
        "Meters are made as a user makes them, `Meter(ledger=path)`: SQLite ledger, carbon and cost priced at "
        f"record time (`GREENMAAS_LOCATION={os.environ.get('GREENMAAS_LOCATION')}`), `rollup=\"auto\"`.",
        "",
        "## Against the issue's targets",
        "",
        "| target | measured | status |",
        "|---|---|---|",
        f"| `track_module` + `track_optimizer` + SQLite ledger, ~{t1['median']['bare']['wall_us']:,.0f} µs step: "
        f"≤ 1% slower than bare (≤ 3% floor) | wall ×{tr_wall:.3f}, CPU ×{tr_cpu:.3f} "
        f"| wall: {status(tr_wall, STEP_TARGET)} (floor {status(tr_wall, STEP_FLOOR)}); "
        f"CPU: {status(tr_cpu, STEP_TARGET)} (floor {status(tr_cpu, STEP_FLOOR)}) |",
        f"| the same on a ~10 ms step: ≤ 0.5% | wall ×{tr10_wall:.4f}, CPU ×{tr10_cpu:.4f} "
        f"| wall: {status(tr10_wall, STEP10_TARGET)}; CPU: {status(tr10_cpu, STEP10_TARGET)} |",
        f"| caller-thread cost ≤ 1 µs per span boundary | {cc['boundary']:.2f} µs CPU, median "
        f"({cc['boundary_min']:.2f} µs best repeat; timed); {cg_line} (callgrind) "
        f"| median: {status(cc['boundary'], BOUNDARY_TARGET_US)}; best: {status(cc['boundary_min'], BOUNDARY_TARGET_US)} |",
        f"| background CPU ≤ 3 µs per span, attribution and writing included | {bg_auto['per_span_us']:.2f} µs "
        f"(rollups auto), {bg_off['per_span_us']:.2f} µs (`rollup=False`) "
        f"| auto: {status(bg_auto['per_span_us'], BACKGROUND_TARGET_US)}; "
        f"off: {status(bg_off['per_span_us'], BACKGROUND_TARGET_US)} |",
        f"| 1 M spans as fast as possible: `stop()` ≤ 2 s after the loop | {hot['stop_s']:.2f} s "
        f"| {status(hot['stop_s'], STOP_TARGET_S)} |",
        f"| … memory bounded (stated) | peak RSS {hot['peak_rss_mb']:,.0f} MB, "
        f"+{hot['peak_rss_mb'] - hot['rss_started_mb']:,.0f} MB over the started meter (bounds: `max_pending` "
        f"{_default('max_pending'):,} spans waiting for attribution; `max_queue` {_default('max_queue'):,} records "
        f"waiting for the writer) | stated |",
        f"| … every span accounted for | {hot['rows']:,} rows + {hot['rolled']:,} in rollups + "
        f"{hot['dropped_spans']:,} dropped{' (warned)' if hot['dropped_spans'] and warned else ''} = "
        f"{hot['accounted']:,} of {hot['n']:,}{lost_note} "
        f"| {'met' if hot_ok else 'not met'} |",
        "",
        f"## 1. A small training step ({t1['rounds']} interleaved rounds of {t1['steps']:,} steps)",
        "",
        "Linear(256,512)-ReLU-Linear(512,10), batch 64, SGD, `torch.set_num_threads(1)`, on the CPU. Each round "
        "runs every variant once, the order rotating from round to round; figures are medians over the rounds. "
        "Per step: wall time of the loop, and CPU time of the training thread and of the process's other threads "
        "(the meter's sampler, attribution and ledger writer; CodeCarbon's scheduler threads) while the loop ran. "
        "*Rounds' spread* is (max − min) / median of the rounds' wall times: differences smaller than that are noise. "
        "*Start + stop* is the fixed cost outside the loop (creating and starting the meter or tracker, and "
        "stopping it: the last attribution and ledger writes, or CodeCarbon's final measurement).",
        "",
        *table_rows(t1),
        "",
        *reading,
        "",
        f"`track_module` + `track_optimizer` record two spans a step (forward, optimizer step); the meter rolled "
        f"them up ({', '.join(info.get('classes', [])) or 'none'}; {info.get('rolled', 0):,} spans in rollups over "
        f"the rounds, {info.get('dropped', 0):,} dropped). Errors the meters reported: "
        f"{'; '.join(sorted(set(info.get('errors', [])))) or 'none'}.",
        "CodeCarbon: `OfflineEmissionsTracker(country_iso_code=\"FRA\", save_to_file=False, log_level=\"error\")`; "
        "`start()` before the loop and `stop()` after it, or `start_task()` / `stop_task()` around each step "
        "(CodeCarbon 3.3.2 API as documented; one warm-up task outside the timing, since the first one "
        "initialises its hardware tracking).",
        "",
        f"## 2. A ~10 ms step ({t2['rounds']} interleaved rounds of {t2['steps']:,} steps, batch {r['batch10']})",
        "",
        f"The same model with batch {r['batch10']}, sized at run time to ~10 ms of training-thread CPU per step.",
        "",
        *table_rows(t2),
        "",
        "## 3. Caller-thread cost per span boundary",
        "",
        f"`with meter.measure(\"x\"): pass` in a loop of {cc['n']:,} on a started meter with the defaults (its "
        f"background threads running), minus an empty loop of as many iterations, divided by 2 (a span is an open "
        f"and a close); training-thread CPU (`time.thread_time`), median of {cc['repeats']} repeats.",
        "",
        "| | µs |",
        "|---|---:|",
        f"| empty loop iteration | {cc['empty']:.3f} |",
        f"| `with meter.measure(\"x\"): pass` | {cc['span']:.3f} |",
        f"| of which building the span (`meter.measure(\"x\")` alone) | {cc['ctor']:.3f} |",
        f"| **per boundary (open or close), CPU** | **{cc['boundary']:.3f}** |",
        f"| per boundary, CPU, best repeat | {cc['boundary_min']:.3f} |",
        f"| per boundary, wall | {cc['wall_boundary']:.3f} |",
        "",
        f"Spans dropped at intake during these loops: {cc['dropped']:,}.",
        "",
    ]
    if "error" in cg:
        lines += [f"Instruction counts: not measured ({cg['error']}).", ""]
    else:
        lines += [
            f"Instruction counts ({cg['version']}; whole process, `PYTHONHASHSEED=0`): a started meter without "
            "background threads or ledger, so every instruction counted is the caller's (the path is the same "
            "with them: open and close only stamp the span and hand it to the intake); 2,000 warm-up spans, then "
            "the loop, then the process exits without stopping the meter. The 0-span run is made twice: the "
            "whole process's count moves a little from run to run.",
            "",
            "| run | instructions |",
            "|---|---:|",
            f"| 0 spans | {cg['zero']:,} |",
            f"| 0 spans, again | {cg['zero2']:,} |",
            f"| {cg['n']:,} spans | {cg['spans']:,} |",
            f"| per span: ({cg['n']:,} spans − 0 spans) / {cg['n']:,} | {cg['per_span']:,.0f} ± {cg['noise_per_span']:,.0f} |",
            f"| **per boundary (open or close)** | **{cg['per_boundary']:,.0f}** |",
            "",
            "Commands (run from the repository root):",
            "",
            "```",
            *cg["commands"],
            "```",
            "",
        ]
    lines += [
        "## 4. Background CPU per span",
        "",
        f"{bg_auto['n']:,} spans (`with meter.measure(\"x\"): pass`) on a started meter with the defaults; the "
        "process's CPU from the loop's start to the end of `stop()`, minus the training thread's CPU in the "
        "loop, minus the same for an idle meter over as long (its sampling and heartbeat), divided by the spans: "
        "attribution, records or rollups, pricing and ledger writing, whether on the meter's threads or in the "
        f"final flush of `stop()`. Median of {len(bg_auto['runs'])} repeats.",
        "",
        "| rollup | µs per span | repeats (µs) | rows | spans in rollups | dropped spans | dropped records |",
        "|---|---:|---|---:|---:|---:|---:|",
        *[
            f"| `{k!r}` | {v['per_span_us']:.2f} | {', '.join(f'{x:.2f}' for x in v['runs'])} | {v['rows']:,} "
            f"| {v['rolled']:,} | {v['dropped_spans']:,} | {v['dropped_records']:,} |"
            for k, v in (("auto", bg_auto), (False, bg_off))
        ],
        "",
        "A started meter with no spans at all (reading its devices, writing every read and the samples to the "
        "ledger, the heartbeat, attributing idle windows) spends, per second of wall time:",
        "",
        "| meter | CPU ms per s |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in r["idle"].items()],
        "",
        f"This cost goes with time, not with spans: the whole-loop row of table 1, whose meter has one span, shows "
        f"{t1['median'][AROUND]['other_ms_s']:.1f} ms per s on its other threads.",
        "",
        f"## 5. Hot loop: {hot['n']:,} spans as fast as possible",
        "",
        "In a fresh process (`--child hotloop`), a meter with the defaults and a SQLite ledger; "
        "`with meter.measure(\"x\"): pass` in a loop, then `meter.stop()`.",
        "",
        "| | |",
        "|---|---:|",
        f"| loop | {hot['loop_s']:.2f} s ({hot['n'] / hot['loop_s']:,.0f} spans/s) |",
        f"| `stop()` | {hot['stop_s']:.2f} s |",
        f"| RSS before the meter started / once started | {hot['rss_before_mb']:,.0f} / "
        f"{hot['rss_started_mb']:,.0f} MB |",
        f"| highest RSS read during the loop / during `stop()` | {hot['rss_loop_peak_mb']:,.0f} / "
        f"{hot['rss_stop_peak_mb']:,.0f} MB |",
        f"| peak RSS of the process (`ru_maxrss`) by the loop's end / after `stop()` | "
        f"{hot['peak_rss_loop_mb']:,.0f} / {hot['peak_rss_mb']:,.0f} MB |",
        f"| RSS after `stop()` | {hot['rss_after_mb']:,.0f} MB |",
        f"| span rows (one span each) | {hot['rows']:,} |",
        f"| rollup rows / spans they stand for | {hot['rollup_rows']:,} / {hot['rolled']:,} |",
        f"| dropped at intake (`dropped_spans`) | {hot['dropped_spans']:,} |",
        f"| records the writer dropped (`dropped_records`) | {hot['dropped_records']:,} |",
        f"| **accounted for** | **{hot['accounted']:,} of {hot['n']:,}** |",
        "",
        f"Warnings the meter logged: {'; '.join(hot['warnings']) or 'none'}. "
        f"Errors it kept: {'; '.join(hot['errors']) or 'none'}.",
        "",
        "## 6. Meter memory as requests go by",
        "",
        "Python heap held by a meter (`tracemalloc`, no ledger, driven by a fake clock) as requests go by.",
        "",
        "| requests so far | Python heap held (MB) |",
        "|---:|---:|",
        *[f"| {n:,} | {mb:.2f} |" for n, mb in mem],
        "",
        "Finished spans are handed to the ledger writer and dropped; timelines are trimmed behind the "
        "attribution watermark.",
        "",
    ]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="reports/overhead.md")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per table (default 5)")
    ap.add_argument("--steps", type=int, default=2000, help="steps per round, small step (default 2000)")
    ap.add_argument("--steps-10ms", type=int, default=150, help="steps per round, ~10 ms step (default 150)")
    ap.add_argument("--spans", type=int, default=100_000, help="spans per loop in section 4")
    ap.add_argument("--micro-spans", type=int, default=30_000, help="spans per timed loop in section 3")
    ap.add_argument("--callgrind-n", type=int, default=20_000, help="spans counted under callgrind")
    ap.add_argument("--hot-spans", type=int, default=1_000_000, help="spans in the hot loop")
    ap.add_argument("--child", choices=("hotloop", "callgrind"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "hotloop":
        hotloop_child(args.n)
        return 0
    if args.child == "callgrind":
        callgrind_child(args.n)
        return 0

    import torch

    torch.set_num_threads(1)
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    started = time.perf_counter()
    r: dict[str, Any] = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        print("1. small step", flush=True)
        r["steps"] = interleaved(STEP_VARIANTS, make_data(64), args.steps, args.rounds, tmp)
        print(*table_rows(r["steps"]), sep="\n", flush=True)
        r["batch10"] = size_ten_ms_batch()
        print(f"2. ~10 ms step (batch {r['batch10']})", flush=True)
        ten = {k: STEP_VARIANTS[k] for k in ("bare", TRACKED, "greenmaas, one `measure` span per step")}
        r["ten_ms"] = interleaved(ten, make_data(r["batch10"]), args.steps_10ms, args.rounds, tmp)
        print(*table_rows(r["ten_ms"]), sep="\n", flush=True)
        print("3. caller-thread cost", flush=True)
        r["caller"] = caller_cost(args.micro_spans, 7, tmp)
        r["callgrind"] = callgrind(args.callgrind_n, tmp)
        print(r["caller"], {k: v for k, v in r["callgrind"].items() if k != "commands"}, flush=True)
        print("4. background CPU per span", flush=True)
        r["background"] = {m: background_cpu(args.spans, m, 3, tmp) for m in ("auto", False)}
        r["idle"] = idle_cost(3.0, tmp)
        print(r["background"], flush=True)
    print("5. hot loop", flush=True)
    r["hot"] = hotloop(args.hot_spans)
    print(r["hot"], flush=True)
    print("6. memory", flush=True)
    r["mem"] = memory()
    r["elapsed_s"] = time.perf_counter() - started
    r["load_after"] = os.getloadavg()
    lines = report(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
