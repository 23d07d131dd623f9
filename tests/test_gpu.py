"""NvmlSource on a real NVIDIA GPU. Skipped (by tests/conftest.py) where NVML finds none."""

import time

import pytest

from greenmaas.sources.base import COUNTER, POWER
from greenmaas.sources.nvml import NvmlSource

pytestmark = pytest.mark.gpu


def _busy(seconds: float) -> bool:
    """Keep GPU 0 busy with matmuls for ``seconds``; False (and just wait) without torch CUDA."""
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        time.sleep(seconds)
        return False
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(8):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    return True


def test_devices_have_uuids_and_a_measuring_method():
    with NvmlSource() as src:
        devs = src.devices()
        assert devs, "NVML initialised but NvmlSource lists no GPU (check CUDA_VISIBLE_DEVICES)"
        for d in devs:
            assert d.id.startswith("gpu:") and d.name
            assert d.uuid and d.uuid.startswith("GPU-")
            assert d.method in (COUNTER, POWER), d


def test_counter_increases_under_load_and_power_is_positive():
    with NvmlSource() as src:
        dev = src.devices()[0]
        if dev.method != COUNTER:
            pytest.skip(f"{dev.name} has no energy counter (method {dev.method})")
        _busy(0.3)  # wake the GPU up
        t0 = time.perf_counter()
        r0 = src.read(dev.id)
        _busy(1.5)
        r1 = src.read(dev.id)
        t1 = time.perf_counter()
        assert r1.energy_j > r0.energy_j
        mean_w = (r1.energy_j - r0.energy_j) / (t1 - t0)
        assert 5.0 < mean_w < 2000.0  # plausible for any data-centre or desktop GPU
        assert r1.power_w is not None and r1.power_w > 0


def test_close_and_reopen():
    for _ in range(2):
        src = NvmlSource()
        src.read(src.devices()[0].id)
        src.close()
        src.close()
