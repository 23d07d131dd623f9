"""Characterise a real NVIDIA GPU's NVML readings, and write ``reports/gpu-validation.md``.

greenmaas re-times the energy counter's steps and shapes them by power; this measures, on the
GPU at hand, what that relies on (:func:`greenmaas.sources.probe.probe_gpu`), idle, under a steady
load (back-to-back fp16 matmuls) and under a bursty one (50 ms busy, 150 ms idle):

* how often ``nvmlDeviceGetTotalEnergyConsumption`` updates, the phase jitter of its updates
  around their grid, and how many updates a fast poll misses;
* how often the ``NVML_FI_DEV_POWER_INSTANT`` field and ``nvmlDeviceGetPowerUsage`` refresh;
* what each NVML call costs (median and p99, µs);
* energy from the counter against integrated power (trapezoid and hold), steady and bursty.

    python examples/probe_gpu.py                       # about 30 s on a GPU
    python examples/probe_gpu.py --seconds 5 --output /tmp/gpu.md

Needs pynvml, an NVIDIA driver and PyTorch with CUDA. Without them it writes a report that says
the probe has not been run on a GPU, and the exact reason, and exits 0 (2 with ``--require-gpu``).
A report of a real run already at the output path is kept rather than replaced by that notice.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

# torch's cuda:N must be NvmlSource's gpu:N: both then number GPUs in PCI bus order.
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python examples/probe_gpu.py"
RAN = "<!-- greenmaas probe_gpu: ran on a GPU -->"
NOT_RUN = "<!-- greenmaas probe_gpu: not run -->"
BURST_ON_S = 0.05
BURST_OFF_S = 0.15
SETTLE_S = 0.5  # let a load reach steady power before polling


def say(message: str) -> None:
    print(f"probe_gpu: {message}", file=sys.stderr, flush=True)


def now_utc() -> str:
    return f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}"


def machine() -> str:
    return f"{platform.node() or 'unknown host'} ({platform.platform()}, Python {platform.python_version()})"


# ---------------------------------------------------------------------- what is missing


class NoGpu(Exception):
    """Why the probe cannot run here."""


def find_gpu():
    """``(source, device, torch)`` for the GPU torch uses; raises :class:`NoGpu` with the reason."""
    try:
        import pynvml  # noqa: F401
    except ImportError:
        raise NoGpu("the nvidia-ml-py package (pynvml) is not installed") from None
    from greenmaas.errors import GreenmaasError
    from greenmaas.sources.nvml import NvmlSource

    try:
        source = NvmlSource()
    except GreenmaasError as exc:
        raise NoGpu(str(exc)) from None
    try:
        devices = source.devices()
        if not devices:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = "NVML initialises but finds no GPU"
            raise NoGpu(why if visible is None else f"{why} visible (CUDA_VISIBLE_DEVICES={visible!r})")
        try:
            import torch
        except ImportError:
            raise NoGpu("PyTorch is not installed (the loads are CUDA matmuls)") from None
        if not torch.cuda.is_available():
            raise NoGpu(f"PyTorch {torch.__version__} sees no CUDA GPU (built with CUDA {torch.version.cuda})")
        index = torch.cuda.current_device()
        if index >= len(devices):
            raise NoGpu(f"torch uses cuda:{index} but NVML lists {len(devices)} GPU(s)")
        device = devices[index]
        if source.handle(device.id) is None:
            raise NoGpu(f"NVML could not open {device.id}: {device.note}")
    except BaseException:
        source.close()
        raise
    return source, device, torch


def not_run_report(reason: str) -> str:
    return "\n".join([
        NOT_RUN,
        "# GPU validation: NVML readings",
        "",
        "**The probe has not been run on a GPU yet.**",
        "",
        f"Reason: {reason}.",
        "",
        "| | |",
        "|---|---|",
        f"| Machine | {machine()} |",
        f"| Date | {now_utc()} |",
        f"| Command | `{COMMAND}` |",
        "",
        "Until it runs on a GPU, the figures greenmaas relies on (the energy counter updating about",
        "every 100 ms, `nvmlDeviceGetPowerUsage` averaging over about 1 s on Ampere and newer, power",
        "fields covering about 25 ms of every 100 ms on A100/H100) are published figures, not ones",
        "measured here. Regenerate this report on a machine with an NVIDIA GPU, its driver,",
        f"nvidia-ml-py and a CUDA build of PyTorch: `{COMMAND}`.",
        "",
    ])


# ---------------------------------------------------------------------- loads


def pick_matmul(torch, device):
    """Square fp16 matrices whose matmul takes at most ~5 ms here, and that time (s)."""
    for n in (8192, 4096, 2048, 1024):
        a = torch.randn(n, n, device=device, dtype=torch.float16)
        b = torch.randn(n, n, device=device, dtype=torch.float16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize(device)
        reps = 20
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        torch.cuda.synchronize(device)
        per_mm_s = (time.perf_counter() - start) / reps
        if per_mm_s <= 0.005 or n == 1024:
            return a, b, per_mm_s
        del a, b
    raise AssertionError("unreachable")


class Loads:
    """The steady and bursty loads, as ``probe_gpu`` runs them: callables taking a stop event."""

    def __init__(self, torch, device) -> None:
        self.torch, self.device = torch, device
        self.a, self.b, self.per_mm_s = pick_matmul(torch, device)
        self.chunk = max(1, int(round(0.005 / self.per_mm_s)))
        self.bursts: list[float] = []

    def _busy(self, seconds: float, stop: threading.Event) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and not stop.is_set():
            for _ in range(self.chunk):
                self.a @ self.b
            self.torch.cuda.synchronize(self.device)

    def steady(self, stop: threading.Event) -> None:
        self.torch.cuda.set_device(self.device)
        while not stop.is_set():
            self._busy(1.0, stop)

    def bursty(self, stop: threading.Event) -> None:
        self.torch.cuda.set_device(self.device)
        while not stop.is_set():
            start = time.perf_counter()
            self._busy(BURST_ON_S, stop)
            busy = time.perf_counter() - start
            self.bursts.append(busy)
            stop.wait(max(0.0, BURST_ON_S + BURST_OFF_S - busy))


# ---------------------------------------------------------------------- the report


def num(x, digits: int = 1) -> str:
    return "n/a" if x is None or x != x else f"{x:,.{digits}f}"


def pct(x) -> str:
    return "n/a" if x is None or x != x else f"{x * 100:+.1f}%"


def energy_rows(name: str, result) -> list[str]:
    from greenmaas.sources.probe import compare_energy

    rows = []
    fields = result.series.get("fields", {})
    counter = fields.get("counter")
    for reading in ("instant", "usage"):
        power = fields.get(reading)
        if counter is None or power is None:
            continue
        trap = compare_energy(counter.t_mid_s, counter.values, power.t_mid_s, power.values)
        hold = compare_energy(counter.t_mid_s, counter.values, power.t_mid_s, power.values, method="hold")
        rows.append(
            f"| {name} | {reading} | {num(trap.duration_s, 2)} | {num(trap.counter_j)} | {num(trap.power_j)} "
            f"| {pct(trap.rel_diff)} | {num(hold.power_j)} | {pct(hold.rel_diff)} |"
        )
    return rows


def gpu_report(info: dict, results: dict, seconds: float) -> str:
    from greenmaas.sources.probe import CALLS

    counter_rows, field_rows, latency_rows, energy = [], [], [], []
    for name, r in results.items():
        c = r.counter
        if c is None:
            counter_rows.append(f"| {name} | {r.support('counter')} | | | | | | |")
        else:
            counter_rows.append(
                f"| {name} | {c.reads:,} | {c.updates} | {num(c.period_ms, 2)} "
                f"| {num(c.jitter_std_ms, 2)} | {num(c.jitter_max_ms, 2)} | {c.missed} | {num(c.resolution_ms, 3)} |"
            )
        for reading in ("instant", "usage"):
            f = r.fields.get(reading)
            if f is None:
                field_rows.append(f"| {name} | {reading} | {r.support(reading)} | | | |")
            else:
                used = " (used)" if r.power_field == reading else ""
                field_rows.append(
                    f"| {name} | {reading}{used} | ok | {num(f.refresh_period_ms, 1)} | {f.repeat_share:.3f} "
                    f"| {f.reads:,} |"
                )
        for call, lat in r.latency.items():
            latency_rows.append(
                f"| {name} | `{CALLS[call]}` | {num(lat.median_us)} | {num(lat.p99_us)} | {num(lat.max_us)} "
                f"| {lat.count:,} |"
            )
        if name != "idle":
            energy += energy_rows(name, r)

    periods = [r.counter.period_ms for r in results.values() if r.counter is not None]
    findings = []
    if periods:
        findings.append(
            f"- The energy counter updated every {num(min(periods), 1)}–{num(max(periods), 1)} ms"
            " across the three loads; NvmlSource samples every 10 ms, so each update is re-timed to"
            " within about 5 ms plus the jitter above."
        )
    else:
        findings.append("- This GPU has no energy counter: greenmaas integrates power for it.")
    used = {r.power_field for r in results.values()}
    findings.append(f"- Power reading in use: {', '.join(sorted(str(u) for u in used))}.")
    burst = info.get("burst_ms")
    if burst is not None:
        findings.append(f"- Bursts ran a median {num(burst)} ms busy, then idled to {num((BURST_ON_S + BURST_OFF_S) * 1e3, 0)} ms.")

    return "\n".join([
        RAN,
        "# GPU validation: NVML readings",
        "",
        f"Generated {now_utc()} by `{COMMAND}` (counter polled {seconds:g} s, power fields {seconds:g} s, per load).",
        "",
        "| | |",
        "|---|---|",
        f"| Machine | {machine()} |",
        f"| GPU | {info['name']} (`{info['device_id']}`, `{info['uuid']}`, NVML architecture {info['arch']}) |",
        f"| Driver | {info['driver']} (NVML {info['nvml_version']}, CUDA driver {info['cuda_driver']}) |",
        f"| PyTorch | {info['torch']} (CUDA {info['torch_cuda']}) |",
        f"| Load | fp16 matmul {info['n']}×{info['n']}, {num(info['per_mm_ms'], 2)} ms each, "
        f"{info['chunk']} per synchronised chunk; bursty: {BURST_ON_S * 1e3:.0f} ms on, {BURST_OFF_S * 1e3:.0f} ms off |",
        "",
        "## Energy counter (`nvmlDeviceGetTotalEnergyConsumption`)",
        "",
        "Read back to back; each change is bounded by the start of the last read that saw the old value"
        " and the end of the first that saw the new one. The period is a least-squares fit of a regular"
        " grid to the update instants; jitter is their spread around that grid (sd and largest), which"
        " includes the reads' resolution; missed counts grid updates no change was seen for.",
        "",
        "| Load | Reads | Updates | Period (ms) | Jitter sd (ms) | Jitter max (ms) | Missed | Resolution (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *counter_rows,
        "",
        "## Power readings",
        "",
        "`instant` is the `NVML_FI_DEV_POWER_INSTANT` field, `usage` is `nvmlDeviceGetPowerUsage`; both"
        " read in turn with the counter. Refresh is the median time between reads that saw a new value;"
        " repeat share is the share of reads that returned the previous value (a held or averaged"
        " reading repeats).",
        "",
        "| Load | Reading | Support | Refresh (ms) | Repeat share | Reads |",
        "|---|---|---|---:|---:|---:|",
        *field_rows,
        "",
        "## NVML call latency",
        "",
        "| Load | Call | Median (µs) | p99 (µs) | Max (µs) | Calls |",
        "|---|---|---:|---:|---:|---:|",
        *latency_rows,
        "",
        "## Counter against integrated power",
        "",
        "Over the power-field poll of each load, from the first to the last counter update seen (where"
        " the counter's delta is exact). Δ is relative to the counter.",
        "",
        "| Load | Reading | Window (s) | Counter (J) | ∫ trapezoid (J) | Δ | ∫ hold (J) | Δ |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *energy,
        "",
        "## Findings",
        "",
        *findings,
        "",
        f"Regenerate with `{COMMAND}`.",
        "",
    ])


def nvml_info(nvml, handle) -> dict:
    def ask(fn, *args):
        try:
            value = getattr(nvml, fn)(*args)
        except Exception:  # noqa: BLE001 - an unanswered detail is written as n/a
            return "n/a"
        return value.decode() if isinstance(value, bytes) else value

    return {
        "driver": ask("nvmlSystemGetDriverVersion"),
        "nvml_version": ask("nvmlSystemGetNVMLVersion"),
        "cuda_driver": ask("nvmlSystemGetCudaDriverVersion_v2"),
        "arch": ask("nvmlDeviceGetArchitecture", handle),
    }


def probe_loads(source, device, loads, seconds: float, clock=None) -> dict:
    """``probe_gpu`` results for ``device`` idle, under ``loads.steady`` and ``loads.bursty``."""
    from greenmaas.sources.probe import probe_gpu

    nvml, handle = source.nvml, source.handle(device.id)
    results = {}
    for name, load in (("idle", None), ("steady", loads.steady), ("bursty", loads.bursty)):
        say(f"probing {name} for about {2 * seconds + (SETTLE_S if load else 0):g} s…")
        results[name] = probe_gpu(
            nvml, handle, seconds=seconds, field_seconds=seconds, load=load,
            settle_s=SETTLE_S if load else 0.0, clock=clock,
        )
    return results


def describe(source, device, loads, torch) -> dict:
    """What the report's header says about the GPU, its driver and the load."""
    bursts = sorted(loads.bursts)
    return {
        "name": device.name,
        "uuid": device.uuid,
        "device_id": device.id,
        "torch": getattr(torch, "__version__", "n/a"),
        "torch_cuda": getattr(getattr(torch, "version", None), "cuda", "n/a"),
        "n": loads.a.shape[0],
        "per_mm_ms": loads.per_mm_s * 1e3,
        "chunk": loads.chunk,
        "burst_ms": bursts[len(bursts) // 2] * 1e3 if bursts else None,
        **nvml_info(source.nvml, source.handle(device.id)),
    }


# ---------------------------------------------------------------------- main


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    say(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "reports" / "gpu-validation.md",
                        help="where to write the report (default reports/gpu-validation.md)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="seconds of counter polling, and of power-field polling, per load (default 3)")
    parser.add_argument("--require-gpu", action="store_true",
                        help="exit with status 2 when there is no GPU to probe (the report is still written)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60:
        parser.error("--seconds must be in (0, 60]")

    try:
        source, device, torch = find_gpu()
    except NoGpu as exc:
        reason = str(exc)
        say(f"not run on a GPU: {reason}")
        existing = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if existing.startswith(RAN):
            say(f"kept {args.output}: it holds a real GPU run")
        else:
            write(args.output, not_run_report(reason))
        return 2 if args.require_gpu else 0

    with source:
        say(f"{device.name} ({device.uuid}); calibrating the load…")
        loads = Loads(torch, torch.device("cuda", torch.cuda.current_device()))
        results = probe_loads(source, device, loads, args.seconds)
        info = describe(source, device, loads, torch)
    text = gpu_report(info, results, args.seconds)
    write(args.output, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
