import pytest

from greenmaas.sources.base import COUNTER, ESTIMATE, Unused
from greenmaas.sources.cpu_estimate import CpuEstimateSource
from greenmaas.sources.detect import detect
from greenmaas.sources.nvml import NvmlSource
from greenmaas.sources.rapl import RaplSource
from greenmaas.testing import FakeClock
from greenmaas.testing.nvml import NVML_ERROR_DRIVER_NOT_LOADED, FakeGPU, FakeNVML
from greenmaas.testing.rapl import make_rapl_tree


@pytest.fixture(autouse=True)
def all_gpus_visible(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def close_all(found):
    for s in found.sources:
        s.close()


def test_gpu_and_rapl_make_the_estimate_unneeded(tmp_path):
    tree = make_rapl_tree(tmp_path, packages=1, dram=True)
    nv = FakeNVML([FakeGPU(uuid="GPU-a")], clock=FakeClock())
    found = detect(nvml=nv, rapl_root=tree.root)
    assert [type(s) for s in found.sources] == [NvmlSource, RaplSource]
    assert [d.id for d in found.devices()] == ["gpu:0", "cpu:0", "dram:0"]
    assert found.unused == [Unused("cpu-estimate", "not needed: RAPL measures the CPU")]
    close_all(found)
    assert nv.shutdown_count == 1


def test_nothing_but_the_estimate(tmp_path):
    nv = FakeNVML(library_missing=True)
    found = detect(nvml=nv, rapl_root=tmp_path / "none", cpu_model="AMD EPYC 7763 64-Core Processor")
    assert [type(s) for s in found.sources] == [CpuEstimateSource]
    (dev,) = found.devices()
    assert (dev.id, dev.method) == ("cpu:0", ESTIMATE)
    assert found.unused == [
        Unused("nvml", "NVML library not found (libnvidia-ml.so.1)"),
        Unused("rapl", f"RAPL: no powercap tree at {tmp_path / 'none'}"),
    ]


def test_rapl_permission_denied_is_reported_and_the_estimate_used(tmp_path, monkeypatch):
    tree = make_rapl_tree(tmp_path, readable=False)
    # Tests run as root; make RaplSource read as an unprivileged user would.
    import greenmaas.sources.rapl as rapl

    monkeypatch.setattr(rapl, "_read_file", tree.read_text)
    found = detect(nvml=FakeNVML(init_error=NVML_ERROR_DRIVER_NOT_LOADED), rapl_root=tree.root, cpu_model="x")
    reasons = {u.source: u.reason for u in found.unused}
    assert reasons["nvml"] == "NVML: driver not loaded"
    denied = f"RAPL: permission denied on {tree.root}/intel-rapl:0/energy_uj — grant read access"
    assert reasons["rapl"].startswith(denied)
    assert [d.method for d in found.devices()] == [ESTIMATE]


def test_no_estimate_when_not_asked(tmp_path):
    found = detect(nvml=FakeNVML(library_missing=True), rapl_root=tmp_path / "none", include_estimate=False)
    assert found.sources == []
    assert found.devices() == []
    assert Unused("cpu-estimate", "not requested (include_estimate=False)") in found.unused


def test_no_visible_gpu_is_reported_and_nvml_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    tree = make_rapl_tree(tmp_path)
    nv = FakeNVML([FakeGPU()])
    found = detect(nvml=nv, rapl_root=tree.root)
    assert [d.method for d in found.devices()] == [COUNTER, COUNTER]  # RAPL cpu, dram
    assert Unused("nvml", "NVML: no GPU visible (CUDA_VISIBLE_DEVICES='')") in found.unused
    assert nv.shutdown_count == 1


def test_default_detection_never_raises_here():
    """Whatever this machine has, detection returns, and each method is either used or listed as
    unused with a reason, exactly once."""
    found = detect()
    try:
        names = [s.name for s in found.sources] + [u.source for u in found.unused]
        assert sorted(names) == ["cpu-estimate", "nvml", "rapl"]
        assert all(u.reason for u in found.unused)
    finally:
        close_all(found)
