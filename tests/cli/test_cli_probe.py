"""``greenmaas devices --probe`` on FakeNVML GPUs, injected through click's ``obj``.

``detect`` gives the command its sources and ``clock`` the clock the probe times reads with; a
clock that moves on every read lets the probe poll "as fast as it can" in fake time.
"""

from __future__ import annotations

import json

import pytest

from greenmaas.sources.base import Detection, Unused
from greenmaas.sources.nvml import NvmlSource
from greenmaas.testing import TickingClock
from greenmaas.testing.nvml import FakeGPU, FakeNVML, step_counter
from greenmaas_cli.main import cli


def _gpus():
    return [
        FakeGPU(uuid="GPU-aaaa", energy_mj=step_counter(lambda t: 300_000.0 * t, period_s=0.1, phase_s=0.037)),
        FakeGPU(uuid="GPU-bbbb", name="NVIDIA T4", energy_mj=None, instant_power_mw=None,
                power_mw=lambda t: 70_000 + 1000 * (int(t / 0.1) % 2)),
    ]


@pytest.fixture
def obj():
    clock = TickingClock()
    made = []

    def detect():
        source = NvmlSource(nvml=FakeNVML(_gpus(), clock=clock), visible_devices=None)
        made.append(source)
        return Detection([source], [Unused("rapl", "no powercap")])

    return {"detect": detect, "clock": clock, "made": made}


def _run(runner, args, obj):
    result = runner.invoke(cli, ["devices", *args], obj=obj, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_table_has_the_probe_figures(runner, obj):
    out = _run(runner, ["--probe", "--probe-seconds", "1"], obj).stdout
    for text in ("NVML readings", "Counter period (ms)", "Jitter sd/max (ms)", "Missed", "Power field",
                 "Refresh (ms)", "Read p50 (µs)", "Read p99 (µs)", "100.0", "instant", "usage", "counter: not"):
        assert text in out, text
    assert obj["made"][0]._closed  # sources are closed after probing


def test_json_has_a_probe_per_gpu(runner, obj):
    result = _run(runner, ["--probe", "--probe-seconds", "1", "--format", "json"], obj)
    data = json.loads(result.stdout)
    assert [d["id"] for d in data["devices"]] == ["gpu:0", "gpu:1"]
    first, second = data["probe"]
    assert first["id"] == "gpu:0" and first["counter"]["period_ms"] == pytest.approx(100.0, abs=1.0)
    assert first["counter"]["phase_ms"] == pytest.approx(37.0, abs=1.0)
    assert first["counter"]["missed_updates"] == 0 and first["counter"]["jitter_std_ms"] < 1.0
    assert first["power_field"] == "instant" and first["support"]["counter"] == "ok"
    assert first["latency"]["counter"]["median_us"] > 0
    assert second["counter"] is None and second["support"]["counter"].startswith("not supported")
    assert second["power_field"] == "usage"
    assert second["power_refresh_ms"] == pytest.approx(100.0, abs=2.0)
    assert "Probing gpu:0" in result.stderr


def test_without_probe_nothing_is_polled(runner, obj):
    data = json.loads(_run(runner, ["--format", "json"], obj).stdout)
    assert "probe" not in data
    assert obj["made"][0].nvml.calls["nvmlDeviceGetTotalEnergyConsumption"] < 10  # the source's own checks


def test_no_nvml_gpu_is_said_in_one_line(runner):
    det = {"detect": lambda: Detection([], [Unused("nvml", "NVML library not found")])}
    result = _run(runner, ["--probe"], det)
    assert result.stdout.count("No NVML GPU to probe.") == 1
    result = _run(runner, ["--probe", "--format", "json"], det)
    assert json.loads(result.stdout)["probe"] == []
    assert result.stderr.strip() == "No NVML GPU to probe."


def test_probe_seconds_must_be_positive(runner, obj):
    result = runner.invoke(cli, ["devices", "--probe", "--probe-seconds", "0"], obj=obj)
    assert result.exit_code == 2 and "Traceback" not in result.output
