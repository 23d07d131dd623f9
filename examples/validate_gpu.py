"""Check NVML's GPU energy figures against each other on a real GPU, and write a report.

Runs a steady load (back-to-back matmuls) and a bursty one (about 50 ms busy, 50 ms idle), with
idle gaps around them, while a thread samples the GPU every 10 ms through greenmaas's NvmlSource
(energy counter + instantaneous power) and ``nvmlDeviceGetPowerUsage``. For each phase it compares
the counter's energy with the integral of each power reading, and writes
``reports/gpu-validation.md``: device, driver, the table, the counter's update period.

    python examples/validate_gpu.py                  # about 50 s
    python examples/validate_gpu.py --steady-s 30 --bursty-s 30

Needs PyTorch with CUDA; exits with status 2 and a one-line reason otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# torch's cuda:N must be NvmlSource's gpu:N: both then number GPUs in PCI bus order.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python examples/validate_gpu.py"
SAMPLE_PERIOD_S = 0.01
BURST_S = 0.05
MAX_TOTAL_S = 170.0  # keep the whole run under 3 minutes


def fail(message: str) -> int:
    print(f"validate_gpu: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------- sampling


@dataclass
class Samples:
    """What the sampling thread recorded; times are time.perf_counter() seconds."""

    t: list[float] = field(default_factory=list)
    energy_j: list[float] = field(default_factory=list)  # counter, NaN when the read failed
    instant_w: list[float] = field(default_factory=list)  # NvmlSource's power (instant field)
    usage_w: list[float] = field(default_factory=list)  # nvmlDeviceGetPowerUsage
    read_s: list[float] = field(default_factory=list)  # cost of NvmlSource.read
    usage_read_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class SamplerThread(threading.Thread):
    """Reads one GPU every ``period_s`` until stopped."""

    def __init__(self, source, device_id: str, nvml, handle, period_s: float = SAMPLE_PERIOD_S):
        super().__init__(name="validate-gpu-sampler", daemon=True)
        self.source, self.device_id, self.nvml, self.handle = source, device_id, nvml, handle
        self.period_s = period_s
        self.samples = Samples()
        self._stop_event = threading.Event()

    def run(self) -> None:
        s = self.samples
        nan = float("nan")
        next_t = time.perf_counter()
        while not self._stop_event.is_set():
            a = time.perf_counter()
            try:
                r = self.source.read(self.device_id)
                energy, power = r.energy_j, r.power_w
            except Exception as exc:  # noqa: BLE001 - record and go on
                s.errors.append(str(exc))
                energy = power = None
            b = time.perf_counter()
            try:
                usage = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            except Exception as exc:  # noqa: BLE001
                s.errors.append(f"nvmlDeviceGetPowerUsage: {exc}")
                usage = None
            c = time.perf_counter()
            s.t.append(b)  # the counter and instant power were read just before b
            s.energy_j.append(nan if energy is None else float(energy))
            s.instant_w.append(nan if power is None else float(power))
            s.usage_w.append(nan if usage is None else float(usage))
            s.read_s.append(b - a)
            s.usage_read_s.append(c - b)
            next_t += self.period_s
            delay = next_t - time.perf_counter()
            if delay > 0:
                self._stop_event.wait(delay)
            else:
                next_t = time.perf_counter()  # fell behind: do not try to catch up in a burst

    def stop(self) -> Samples:
        self._stop_event.set()
        self.join(5.0)
        return self.samples


# ---------------------------------------------------------------------- workload


def pick_matmul(torch, device):
    """Square fp16 matrices whose matmul takes at most ~5 ms here, and that time in seconds."""
    for n in (8192, 4096, 2048, 1024):
        a = torch.randn(n, n, device=device, dtype=torch.float16)
        b = torch.randn(n, n, device=device, dtype=torch.float16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        reps = 20
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize()
        per_mm_s = (time.perf_counter() - start) / reps
        if per_mm_s <= 0.005 or n == 1024:
            return a, b, per_mm_s
        del a, b
    raise AssertionError("unreachable")


def busy_for(torch, a, b, chunk: int, seconds: float) -> None:
    """Matmuls in ~5 ms chunks, synchronised, until ``seconds`` of wall time have passed."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(chunk):
            a @ b
        torch.cuda.synchronize()


def run_phases(torch, a, b, chunk: int, steady_s: float, bursty_s: float, idle_s: float):
    """Run idle / steady / idle / bursty / idle; returns [(name, t0, t1)] and burst stats."""
    phases = []
    bursts: list[float] = []

    def mark(name, body):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        body()
        torch.cuda.synchronize()  # a window ends when the GPU's work has, not when it was queued
        phases.append((name, t0, time.perf_counter()))

    def bursty():
        end = time.perf_counter() + bursty_s
        while time.perf_counter() < end:
            start = time.perf_counter()
            busy_for(torch, a, b, chunk, BURST_S)
            busy_end = time.perf_counter()
            bursts.append(busy_end - start)
            time.sleep(max(0.0, start + 2 * BURST_S - busy_end))

    mark("idle (before)", lambda: time.sleep(idle_s))
    mark("steady", lambda: busy_for(torch, a, b, chunk, steady_s))
    mark("idle (between)", lambda: time.sleep(idle_s))
    mark("bursty 50/50 ms", bursty)
    mark("idle (after)", lambda: time.sleep(idle_s))
    return phases, bursts


# ---------------------------------------------------------------------- analysis


def integrate(t: np.ndarray, p: np.ndarray, t0: float, t1: float) -> float:
    """Trapezoid integral (J) of power samples (W) over [t0, t1], interpolated at the ends;
    NaN samples are left out. NaN when fewer than two samples remain."""
    ok = ~np.isnan(p)
    t, p = t[ok], p[ok]
    if t.size < 2:
        return float("nan")
    inside = (t > t0) & (t < t1)
    ts = np.concatenate([[t0], t[inside], [t1]])
    ps = np.concatenate([[np.interp(t0, t, p)], p[inside], [np.interp(t1, t, p)]])
    return float(np.sum((ps[1:] + ps[:-1]) * 0.5 * np.diff(ts)))


def counter_update_period_s(t: np.ndarray, e: np.ndarray) -> float:
    """Median interval between the reads that first saw a new counter value."""
    ok = ~np.isnan(e)
    t, e = t[ok], e[ok]
    changed = np.nonzero(np.diff(e) != 0)[0] + 1
    if changed.size < 2:
        return float("nan")
    return float(np.median(np.diff(t[changed])))


def timelines(device_id: str, s: Samples):
    """Two greenmaas timelines from the samples: counter only, and counter shaped by power."""
    from greenmaas.sampling.timeline import Timeline
    from greenmaas.sources.base import COUNTER, Reading

    counter_only = Timeline(device_id, COUNTER)
    shaped = Timeline(device_id, COUNTER)
    for t, e, p in zip(s.t, s.energy_j, s.instant_w):
        if np.isnan(e):
            continue
        counter_only.append(t, Reading(energy_j=e))
        shaped.append(t, Reading(energy_j=e, power_w=None if np.isnan(p) else p))
    return counter_only, shaped


def rel(x: float, ref: float) -> str:
    if not (np.isfinite(x) and np.isfinite(ref)) or ref == 0:
        return "n/a"
    return f"{(x - ref) / ref * 100:+.1f}%"


def joules(x: float) -> str:
    return f"{x:.1f}" if np.isfinite(x) else "n/a"


def report(info: dict, phases, s: Samples, bursts: list[float], device_id: str) -> str:
    t = np.asarray(s.t)
    e = np.asarray(s.energy_j)
    pi = np.asarray(s.instant_w)
    pu = np.asarray(s.usage_w)
    counter_only, shaped = timelines(device_id, s)
    period_s = counter_update_period_s(t, e)
    intervals = np.diff(t) if t.size > 1 else np.array([float("nan")])
    burst_ms = float(np.median(bursts)) * 1e3 if bursts else float("nan")

    rows = []
    for name, t0, t1 in phases:
        e_c = counter_only.energy_between(t0, t1)
        e_s = shaped.energy_between(t0, t1)
        e_i = integrate(t, pi, t0, t1)
        e_u = integrate(t, pu, t0, t1)
        rows.append(
            f"| {name} | {t1 - t0:.2f} | {joules(e_c)} | {e_c / (t1 - t0):.0f} | {joules(e_s)} | {rel(e_s, e_c)} "
            f"| {joules(e_i)} | {rel(e_i, e_c)} | {joules(e_u)} | {rel(e_u, e_c)} |"
        )

    lines = [
        "# GPU energy validation",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `{COMMAND}`"
        f" (steady {info['steady_s']:g} s, bursty {info['bursty_s']:g} s).",
        "",
        "| | |",
        "|---|---|",
        f"| Device | {info['name']} (`{device_id}`, `{info['uuid']}`) |",
        f"| Driver | {info['driver']} |",
        f"| NVML_FI_DEV_POWER_INSTANT | {info['instant_field']} |",
        f"| Samples | {t.size} reads, median interval {np.median(intervals) * 1e3:.1f} ms, {len(s.errors)} failed |",
        f"| Counter update period (median interval between counter changes) | {period_s * 1e3:.1f} ms |",
        f"| Read cost (median) | counter + instant power {np.median(s.read_s) * 1e3:.2f} ms, "
        f"nvmlDeviceGetPowerUsage {np.median(s.usage_read_s) * 1e3:.2f} ms |",
        f"| Load | fp16 matmul {info['n']}×{info['n']}, {info['per_mm_ms']:.2f} ms each, "
        f"{info['chunk']} per synchronised chunk |",
        f"| Bursts | {len(bursts)} busy periods, median {burst_ms:.1f} ms busy, "
        f"then idle to {2 * BURST_S * 1e3:.0f} ms |",
        "",
        "## Energy per phase",
        "",
        "Relative differences are against the counter.",
        "",
        "| Phase | Duration (s) | Counter (J) | Mean power (W) | Counter shaped by power (J) | Δ "
        "| ∫ instantaneous power (J) | Δ | ∫ nvmlDeviceGetPowerUsage (J) | Δ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "## How the columns are computed",
        "",
        "- **Counter**: `nvmlDeviceGetTotalEnergyConsumption` read every "
        f"{SAMPLE_PERIOD_S * 1e3:.0f} ms; greenmaas's `Timeline` re-times each counter change to the"
        " middle of the gap between the reads that saw it, and interpolates at the phase edges.",
        "- **Counter shaped by power**: the same counter, with the energy inside each counter step"
        " distributed by the instantaneous power samples (what greenmaas attributes with). Over a"
        " whole phase it equals the counter up to the edge steps.",
        "- **∫ instantaneous power**: trapezoid integral of `NVML_FI_DEV_POWER_INSTANT` samples (W).",
        "- **∫ nvmlDeviceGetPowerUsage**: trapezoid integral of `nvmlDeviceGetPowerUsage`, which is a"
        " ~1 s trailing average on Ampere and newer: it lags phase edges and smooths bursts.",
        "- Phase edges are taken after `torch.cuda.synchronize()`.",
        "",
        f"Regenerate with `{COMMAND}`.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steady-s", type=float, default=15.0, help="seconds of steady load (default 15)")
    parser.add_argument("--bursty-s", type=float, default=15.0, help="seconds of bursty load (default 15)")
    parser.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle between phases (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "gpu-attribution.md")
    args = parser.parse_args(argv)
    if min(args.steady_s, args.bursty_s, args.idle_s) <= 0:
        return fail("phase lengths must be positive")
    if args.steady_s + args.bursty_s + 3 * args.idle_s > MAX_TOTAL_S:
        return fail(f"phases add up to more than {MAX_TOTAL_S:g} s; keep the run under 3 minutes")

    try:
        import torch
    except ImportError:
        return fail("needs PyTorch with CUDA (pip install torch); torch is not installed")
    if not torch.cuda.is_available():
        return fail("PyTorch sees no CUDA GPU; run this on a machine with an NVIDIA GPU and a CUDA build of torch")

    from greenmaas.errors import GreenmaasError
    from greenmaas.sources.nvml import NvmlSource

    try:
        source = NvmlSource()
    except GreenmaasError as exc:
        return fail(str(exc))
    with source:
        cuda_index = torch.cuda.current_device()
        devices = source.devices()
        if cuda_index >= len(devices):
            return fail(f"torch uses cuda:{cuda_index} but NvmlSource lists {len(devices)} GPU(s)")
        dev = devices[cuda_index]
        if dev.method != "counter":
            return fail(f"{dev.name} has no energy counter (method {dev.method}): nothing to validate against")

        import pynvml  # NvmlSource has initialised NVML in this process

        handle = pynvml.nvmlDeviceGetHandleByUUID(dev.uuid)
        driver = pynvml.nvmlSystemGetDriverVersion()
        try:
            fv = pynvml.nvmlDeviceGetFieldValues(handle, [pynvml.NVML_FI_DEV_POWER_INSTANT])[0]
            instant = "supported"
            if fv.nvmlReturn != pynvml.NVML_SUCCESS:
                instant = f"not supported (NVML return {fv.nvmlReturn}); power is nvmlDeviceGetPowerUsage"
        except pynvml.NVMLError as exc:
            instant = f"not supported ({exc}); power is nvmlDeviceGetPowerUsage"

        device = torch.device("cuda", cuda_index)
        print(f"validate_gpu: {dev.name} ({dev.uuid}), driver {driver}; calibrating…", flush=True)
        a, b, per_mm_s = pick_matmul(torch, device)
        chunk = max(1, int(round(0.005 / per_mm_s)))

        sampler = SamplerThread(source, dev.id, pynvml, handle)
        sampler.start()
        try:
            print(
                f"validate_gpu: running {args.steady_s:g} s steady + {args.bursty_s:g} s bursty load…", flush=True
            )
            phases, bursts = run_phases(torch, a, b, chunk, args.steady_s, args.bursty_s, args.idle_s)
        finally:
            samples = sampler.stop()

    if len(samples.t) < 10:
        return fail(f"only {len(samples.t)} samples recorded ({'; '.join(samples.errors[:3])})")
    info = {
        "name": dev.name,
        "uuid": dev.uuid,
        "driver": driver,
        "instant_field": instant,
        "steady_s": args.steady_s,
        "bursty_s": args.bursty_s,
        "n": a.shape[0],
        "per_mm_ms": per_mm_s * 1e3,
        "chunk": chunk,
    }
    text = report(info, phases, samples, bursts, dev.id)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    print(f"validate_gpu: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
