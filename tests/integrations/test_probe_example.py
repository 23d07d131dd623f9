"""examples/probe_gpu.py: the "not run" report where there is no GPU, the report of a run (on
FakeNVML, in process), and a real run where a GPU is lent (``@pytest.mark.gpu``)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from greenmaas.sources.nvml import NvmlSource
from greenmaas.testing import TickingClock
from greenmaas.testing.nvml import FakeGPU, FakeNVML, step_counter

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "probe_gpu.py"
NOT_RUN = "has not been run on a GPU yet"


def _run(*args: str, hide_gpus: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""  # NVML lists no GPU even where there is one
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _load():
    spec = importlib.util.spec_from_file_location("example_probe_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_writes_the_not_run_report_with_the_reason(tmp_path):
    out = tmp_path / "reports" / "gpu-validation.md"
    proc = _run("--output", str(out), "--seconds", "0.5")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    if not text.startswith("<!-- greenmaas probe_gpu: not run"):
        assert "## Energy counter" in text  # a GPU is here: it ran
        return
    assert NOT_RUN in text and "python examples/probe_gpu.py" in text
    (reason,) = re.findall(r"^Reason: (.+)\.$", text, re.M)
    assert reason and f"not run on a GPU: {reason}" in proc.stderr  # the exact reason, as printed


def test_require_gpu_exits_2_and_still_says_why(tmp_path):
    out = tmp_path / "gpu.md"
    proc = _run("--output", str(out), "--require-gpu", hide_gpus=True)
    assert proc.returncode == 2
    assert NOT_RUN in out.read_text(encoding="utf-8")
    assert "Traceback" not in proc.stderr


def test_a_report_of_a_real_run_is_not_replaced(tmp_path):
    out = tmp_path / "gpu.md"
    out.write_text("<!-- greenmaas probe_gpu: ran on a GPU -->\n# measured\n", encoding="utf-8")
    proc = _run("--output", str(out), hide_gpus=True)
    assert proc.returncode == 0
    assert out.read_text(encoding="utf-8").endswith("# measured\n")
    assert "kept" in proc.stderr


class FakeLoads:
    """Stands in for the CUDA loads: runs until told to stop, records bursts."""

    a = SimpleNamespace(shape=(4096, 4096))
    per_mm_s = 0.004
    chunk = 1

    def __init__(self):
        self.bursts: list[float] = []
        self.ran: set[str] = set()

    def steady(self, stop: threading.Event) -> None:
        self.ran.add("steady")
        stop.wait(30)

    def bursty(self, stop: threading.Event) -> None:
        self.ran.add("bursty")
        while not stop.is_set():
            self.bursts.append(0.05)
            stop.wait(0.01)


def test_the_gpu_report_from_fake_nvml():
    mod = _load()
    clock = TickingClock()
    gpu = FakeGPU(
        uuid="GPU-abcd",
        name="NVIDIA H200",
        energy_mj=step_counter(lambda t: 400_000.0 * t, period_s=0.1, phase_s=0.037),
        instant_power_mw=lambda t: 400_000 + int(t * 1e6) % 13,
        power_mw=lambda t: 400_000 + 1000 * (int(t / 0.1) % 2),
    )
    loads = FakeLoads()
    torch = SimpleNamespace(__version__="2.5.0", version=SimpleNamespace(cuda="12.4"))
    with NvmlSource(nvml=FakeNVML([gpu], clock=clock), visible_devices=None) as source:
        device = source.devices()[0]
        results = mod.probe_loads(source, device, loads, 1.0, clock=clock)
        info = mod.describe(source, device, loads, torch)
    assert loads.ran == {"steady", "bursty"} and set(results) == {"idle", "steady", "bursty"}
    text = mod.gpu_report(info, results, 1.0)
    assert text.startswith(mod.RAN)
    for heading in ("## Energy counter", "## Power readings", "## NVML call latency", "## Counter against integrated power"):
        assert heading in text
    assert "NVIDIA H200" in text and "550.54.15" in text and "python examples/probe_gpu.py" in text
    counter_rows = [line for line in text.splitlines() if re.match(r"\| (idle|steady|bursty) \| [\d,]+ \|", line)]
    assert len(counter_rows) == 3
    for row in counter_rows:
        cells = [c.strip() for c in row.split("|")]
        period, jitter_sd, missed = float(cells[4]), float(cells[5]), int(cells[7])
        assert period == pytest.approx(100.0, abs=1.0) and jitter_sd < 1.0 and missed == 0
    energy_rows = [line for line in text.splitlines() if re.match(r"\| (steady|bursty) \| (instant|usage) \| [\d.]+ \|", line)]
    assert len(energy_rows) == 4
    assert "instant (used)" in text


@pytest.mark.gpu
def test_runs_on_a_real_gpu(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "gpu-validation.md"
    proc = _run("--output", str(out), "--seconds", "1", "--require-gpu")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!-- greenmaas probe_gpu: ran on a GPU -->") and NOT_RUN not in text
    idle = next(line for line in text.splitlines() if line.startswith("| idle | "))
    cells = [c.strip() for c in idle.split("|")]
    if "not supported" not in idle:
        assert 1.0 < float(cells[4]) < 1000.0  # the counter's update period, ms
